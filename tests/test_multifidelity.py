"""Multi-fidelity inputs and out-of-family folds: real MEGNet weights, real sources, real structures."""

from __future__ import annotations

import pytest
import torch
from matgl.graph.data import collate_fn_graph
from pymatgen.core import Lattice, Structure

from paraisite.data.datamodule import LTCDataModule, fidelity_state
from paraisite.data.graphs import MEGNetGraphBuilder, collate_item
from paraisite.data.groups import assign_folds, crystal_groups, family_key, shared_groups, source_families
from paraisite.models.megnet import MEGNetBackbone

FIDELITIES = ["agl", "ab-initio", "measured"]
HOLDOUT_OVER = ["dataset1", "dataset2", "measured"]


def rocksalt(a: str, b: str, lattice: float) -> Structure:
    return Structure.from_spacegroup("Fm-3m", Lattice.cubic(lattice), [a, b], [[0, 0, 0], [0.5, 0.5, 0.5]])


def test_fidelity_state_encoding():
    default = torch.zeros(2)
    assert fidelity_state(0, default).tolist() == [0.0, 0.0]  # the published model's own state
    assert fidelity_state(1, default).tolist() == [1.0, 0.0]
    assert fidelity_state(2, default).tolist() == [0.0, 1.0]
    with pytest.raises(ValueError, match="at least 3"):
        fidelity_state(3, default)


def test_one_crystal_at_three_fidelities_gives_three_outputs_in_one_forward_pass():
    backbone = MEGNetBackbone()
    backbone.load_published("MEGNet-MP-2018.6.1-Eform")
    backbone.eval()
    item = collate_item(MEGNetGraphBuilder().build(rocksalt("Pb", "Te", 6.46)))
    batch = [(item[0], item[1], fidelity_state(level, item[2]), item[3]) for level in range(3)]
    graph, lattice, state, _ = collate_fn_graph(batch)
    assert state.tolist() == [[0, 0], [1, 0], [0, 1]]
    with torch.no_grad():
        features = backbone(graph, lattice, state)
        alone = backbone(*collate_fn_graph([item])[:3])  # the graph's own state: fidelity 0
    assert features.shape == (3, backbone.out_dim)
    for a in range(3):
        for b in range(a + 1, 3):
            assert not torch.allclose(features[a], features[b], atol=1e-5), (a, b)
    torch.testing.assert_close(features[0], alone[0], atol=1e-5, rtol=1e-5)


def test_each_source_gets_its_fidelity_in_the_global_state():
    dm = LTCDataModule("MF", ["dataset1", "measured"], fidelities=FIDELITIES)
    dm.setup()
    assert dm.train_set is not None
    seen = {}
    for i, sample in enumerate(dm.train_set.samples):
        seen.setdefault(sample.source, dm.train_set[i][2].tolist())
    assert seen == {"dataset1": [1.0, 0.0], "measured": [0.0, 1.0]}


def test_a_source_whose_fidelity_is_not_listed_is_refused():
    dm = LTCDataModule("MF", ["dataset1", "measured"], fidelities=["agl", "measured"])
    with pytest.raises(ValueError, match="'dataset1' has fidelity 'ab-initio'"):
        dm.setup()


def test_oversampling_repeats_a_sources_training_rows_and_nothing_else():
    plain = LTCDataModule("MF", ["dataset1", "measured"], fidelities=FIDELITIES, max_per_source=40)
    weighted = LTCDataModule(
        "MF", ["dataset1", "measured"], fidelities=FIDELITIES, max_per_source=40, oversample={"measured": 3}
    )
    plain.setup()
    weighted.setup()
    count = {s: sum(x.source == s for x in plain.train_set.samples) for s in ("dataset1", "measured")}
    assert count["measured"] > 0
    assert len(weighted.train_set) == count["dataset1"] + 3 * count["measured"]
    assert set(weighted.train_set.samples) == set(plain.train_set.samples)
    assert weighted.val_set.samples == plain.val_set.samples
    assert weighted.target_stats == plain.target_stats  # the statistics see each crystal once
    for bad, message in (({"aflow": 2}, "not one of the sources"), ({"measured": 0}, "whole number from 1")):
        with pytest.raises(ValueError, match=message):
            LTCDataModule("MF", ["dataset1", "measured"], oversample=bad)


def test_substitution_family_links_column_twins_not_other_structures():
    pbte, pbse, snte = rocksalt("Pb", "Te", 6.46), rocksalt("Pb", "Se", 6.12), rocksalt("Sn", "Te", 6.31)
    nacl = rocksalt("Na", "Cl", 5.64)
    zincblende = Structure.from_spacegroup("F-43m", Lattice.cubic(6.46), ["Pb", "Te"], [[0, 0, 0], [0.25] * 3])
    assert family_key(pbte) == family_key(pbse) == family_key(snte) == "225:14x1,16x1"
    assert family_key(nacl) != family_key(pbte)
    groups = crystal_groups(
        [
            ("pbte", "PbTe", family_key(pbte)),
            ("pbse", "PbSe", family_key(pbse)),
            ("nacl", "NaCl", family_key(nacl)),
            ("pbte-zb", "PbTe", family_key(zincblende)),  # another polymorph: linked through its formula
        ]
    )
    assert groups["pbte"] == groups["pbse"] == groups["pbte-zb"]
    assert groups["nacl"] != groups["pbte"]


def test_folds_balance_the_weighted_crystals_and_never_split_a_group():
    groups = {f"c{i}": f"g{i // 3}" for i in range(60)}  # 20 groups of 3
    weight = {f"c{i}": 1.0 for i in range(0, 60, 2)}  # 30 weighted crystals
    folds = assign_folds(groups, 5, seed=3, weight=weight)
    assert shared_groups(folds, groups) == []
    per_fold = [sum(weight.get(k, 0) for k, f in folds.items() if f == fold) for fold in range(5)]
    assert max(per_fold) - min(per_fold) <= 2
    assert assign_folds(groups, 5, seed=3, weight=weight) == folds  # deterministic
    assert assign_folds(groups, 5, seed=4, weight=weight) != folds  # the seed matters


def test_real_folds_keep_every_group_and_every_crystal_on_one_side():
    """Dataset1, Dataset2 and the measured source: the ids they share, and near twins, never straddle folds."""
    families: dict[str, tuple[str, str]] = {}
    for source in HOLDOUT_OVER:
        families.update(source_families(source))
    groups = crystal_groups((key, formula, family) for key, (formula, family) in families.items())
    folds = assign_folds(groups, 5, 0, dict.fromkeys(source_families("measured"), 1.0))
    assert shared_groups(folds, groups) == []
    by_formula = {formula: key for key, (formula, _) in families.items()}
    twins = [("ZrNiSn", "HfNiSn"), ("PbTe", "PbSe")]
    for a, b in twins:
        if a in by_formula and b in by_formula:
            assert groups[by_formula[a]] == groups[by_formula[b]], (a, b)

    test_ids: set[str] = set()
    for fold in range(5):
        dm = LTCDataModule("MF", HOLDOUT_OVER, fidelities=FIDELITIES, holdout={"folds": 5, "fold": fold, "seed": 0})
        dm.setup()
        assert dm.train_set is not None
        assert dm.val_set is not None
        assert dm.test_set is not None
        held = {s.id for s in dm.test_set.samples}
        trained = {s.id for s in dm.train_set.samples} | {s.id for s in dm.val_set.samples}
        assert held
        assert not held & trained
        assert not {groups[i] for i in held} & {groups[i] for i in trained}
        assert not held & test_ids  # each crystal is held out once
        test_ids |= held
    assert test_ids == set(families)


@pytest.fixture(scope="module")
def tiny_mf_run(tmp_path_factory):
    """A real run on data=mf (two of its sources), fold 1 of 5 held out; its directory and result."""
    from paraisite.training.train import train
    from tests.helpers import FAST, compose_train

    run_dir = tmp_path_factory.mktemp("mf-run")
    overrides = ["data=mf", "data.sources=[dataset1,measured]", "+data.holdout={folds:5,fold:1}"]
    cfg = compose_train(run_dir, *overrides, "model/backbone=megnet_scratch", "max_per_source=30", *FAST)
    return run_dir, train(cfg)


def test_a_tiny_multifidelity_run_scores_its_held_out_fold_per_fidelity(tiny_mf_run):
    import csv
    import json

    from paraisite.checkpoints import load_checkpoint
    from paraisite.evaluation.holdout import FIDELITIES_KEY

    run_dir, result = tiny_mf_run
    record = json.loads((run_dir / "metrics.json").read_text())
    assert record["holdout"]["fold"] == 1
    assert set(record["holdout"]["scores"]) == {"ab-initio", "measured"}
    held = record["holdout"]["scores"]
    assert held["measured"]["count"] + held["ab-initio"]["count"] == record["data"]["holdout"]["test"]
    for figures in held.values():
        assert 0 <= figures["within_x2"] <= 1
        assert figures["mae_log10"] > 0
    with open(run_dir / "holdout_predictions.csv", newline="") as stream:
        rows = list(csv.DictReader(stream))
    assert list(rows[0])[-3:] == ["pred_agl", "pred_ab-initio", "pred_measured"]
    assert {r["fidelity"] for r in rows} == {"ab-initio", "measured"}
    assert len({(r["pred_agl"], r["pred_measured"]) for r in rows}) == len(rows)
    checkpoint = load_checkpoint(result["best_checkpoint"])
    assert checkpoint[FIDELITIES_KEY] == FIDELITIES


def test_predict_fidelity_picks_the_output_and_defaults_to_measured(tiny_mf_run, tmp_path):
    from paraisite.cli.main import main
    from tests.helpers import read_rows

    run_dir, _ = tiny_mf_run
    paths = []
    for name, (a, b, size) in {"PbTe": ("Pb", "Te", 6.46), "MgO": ("Mg", "O", 4.21)}.items():
        paths.append(str(tmp_path / f"{name}.cif"))
        rocksalt(a, b, size).to(filename=paths[-1])
    values = {}
    for fidelity in (None, "measured", "ab-initio", "agl"):
        output = tmp_path / f"{fidelity}.csv"
        extra = [] if fidelity is None else ["--fidelity", fidelity]
        assert main(["predict", "--model", str(run_dir), *paths, "-o", str(output), "--workers", "0", *extra]) == 0
        values[fidelity] = [float(row["tc_W_per_mK"]) for row in read_rows(output)]
    assert values[None] == values["measured"]
    assert len({tuple(v) for v in values.values()}) == 3  # measured, ab-initio and agl all differ


def test_predict_fidelity_is_refused_for_a_single_fidelity_model(tmp_path):
    from paraisite.cli.main import main
    from tests.helpers import tiny_ltc_run

    tiny_ltc_run(tmp_path / "run")
    rocksalt("Pb", "Te", 6.46).to(filename=str(tmp_path / "PbTe.cif"))
    command = ["predict", "--model", str(tmp_path / "run"), str(tmp_path / "PbTe.cif"), "-o", str(tmp_path / "x.csv")]
    assert main([*command, "--fidelity", "agl"]) != 0
    assert not (tmp_path / "x.csv").exists()


def test_fidelities_with_a_backbone_that_ignores_the_state_are_refused(tmp_path):
    from paraisite.training.train import train
    from tests.helpers import FAST, compose_train

    cfg = compose_train(tmp_path, "data=mf", "data.sources=[dataset1]", "model/backbone=cgcnn_scratch", *FAST)
    with pytest.raises(ValueError, match="ignores it"):
        train(cfg)
