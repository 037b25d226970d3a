"""Ensembles shipped in the package: compact int8 members, calibrated intervals, offline prediction."""

from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf
from pymatgen.core import Lattice, Structure
from scipy.stats import spearmanr

from paraisite.checkpoints import dequantised
from paraisite.cli.main import main
from paraisite.data.datamodule import LTCDataModule
from paraisite.evaluation.uncertainty import (
    Calibration,
    HeldOutRows,
    conformal_quantile,
    coverage,
    cross_fitted_coverage,
    spearman,
)
from paraisite.models.regressor import load_ltc_checkpoint
from paraisite.training.train import train
from paraisite.zoo import shipped as shipped_module
from paraisite.zoo.bundle import BundleIntegrityError, read_bundle
from paraisite.zoo.cards import CARD, read_card
from paraisite.zoo.catalog import catalog, get_entry, model_card
from paraisite.zoo.files import RECOMMENDED_LTC_MODEL, pin_manifest
from paraisite.zoo.predictors import load_predictor
from paraisite.zoo.shipped import SHIPPED_DIR, shipped_manifests
from paraisite.zoo.shipping import GROUP_SIZE, quantise_state_dict
from tests.helpers import FAST, compose_train, predict_with_cli, read_rows

NAME = "ltc-test-dataset1"
USE_FOR = "testing the zoo"
#: Crystals of Dataset1 in the tiny sweep: 3 seeds x 12 validation crystals leave >= 19 held-out rows, the fewest a
#: 95 % conformal quantile needs.
CRYSTALS = 60


@pytest.fixture(scope="module")
def sweep(tmp_path_factory) -> Path:
    """Three tiny runs on Dataset1 (seeds 1-3, scratch MEGNet, one epoch) laid out as a sweep."""
    root = tmp_path_factory.mktemp("sweep")
    for seed in (1, 2, 3):
        overrides = ("data=dataset1", "model/backbone=megnet_scratch", f"max_per_source={CRYSTALS}", *FAST)
        run_dir = root / "step2" / "Dataset1" / f"seed{seed}"
        cfg = compose_train(run_dir, *overrides, "task_name=step2", f"seed={seed}")
        train(cfg)
        (run_dir / "config_resolved.yaml").write_text(OmegaConf.to_yaml(cfg, resolve=True))  # as paraisite-train does
    return root


@pytest.fixture(scope="module")
def shipped(sweep, tmp_path_factory) -> Path:
    """The tiny sweep packed as a shipped ensemble with its card (in a temporary directory, not the package)."""
    target = tmp_path_factory.mktemp("ship") / NAME
    evidence = tmp_path_factory.mktemp("evidence")
    command = ["zoo", "ship", str(sweep), "--step", "step2", "--dataset", "Dataset1", "--name", NAME, "-o", str(target)]
    card = ["--use-for", USE_FOR, "--not-for", "real crystals", "--data-reference", "Dataset1 (60 crystals)"]
    assert main([*command, "--cross", "Dataset2", "--evidence", str(evidence), *card]) == 0
    return target


@pytest.fixture(scope="module")
def crystals(tmp_path_factory) -> list[str]:
    """Two CIF files written here (no mirror needed): rocksalt NaCl and half-Heusler TiNiSn."""
    folder = tmp_path_factory.mktemp("cifs")
    nacl = Structure.from_spacegroup("Fm-3m", Lattice.cubic(5.64), ["Na", "Cl"], [[0, 0, 0], [0.5, 0.5, 0.5]])
    tinisn = Structure.from_spacegroup(
        "F-43m", Lattice.cubic(5.94), ["Ti", "Ni", "Sn"], [[0, 0, 0], [0.25, 0.25, 0.25], [0.5, 0.5, 0.5]]
    )
    paths = [folder / "NaCl.cif", folder / "TiNiSn.cif"]
    for structure, path in zip((nacl, tinisn), paths, strict=True):
        structure.to(filename=str(path))
    return [str(path) for path in paths]


def test_compact_weights_are_within_half_a_step_of_their_group():
    weights = torch.randn(40, 70) * torch.logspace(-3, 1, 70)[None, :]  # columns of very different scales
    bias = torch.randn(40)
    kept, quantised = quantise_state_dict({"head.w": weights, "head.b": bias, "backbone.w": weights})
    assert set(quantised) == {"head.w"}
    assert kept["backbone.w"].dtype == torch.float16
    torch.testing.assert_close(kept["head.b"], bias)  # small tensors stay float32
    assert quantised["head.w"]["q"].dtype == torch.int8
    restored = dequantised(quantised)["head.w"]  # what the checkpoint loader does
    for start in range(0, 70, GROUP_SIZE):  # each group of input columns has its own step
        group = slice(start, start + GROUP_SIZE)
        step = weights[:, group].abs().amax(dim=1, keepdim=True) / 127
        assert bool(((restored[:, group] - weights[:, group]).abs() <= step / 2 + 1e-7).all())


def test_compact_members_predict_like_their_float32_checkpoints(sweep, shipped):
    bundle = read_bundle(shipped)
    datamodule = LTCDataModule("Dataset1", ["dataset1"], seed=1, max_per_source=CRYSTALS)
    datamodule.setup()
    graph, lattice, state_attr, _ = next(iter(datamodule.val_dataloader()))
    for member, path in zip(bundle.members, bundle.member_paths, strict=True):
        source = sweep / "step2" / "Dataset1" / f"seed{member.seed}" / "checkpoints" / "best.ckpt"
        full, _ = load_ltc_checkpoint(source)
        compact, _ = load_ltc_checkpoint(path)
        expected = full.predict_tc(graph, lattice, state_attr)
        torch.testing.assert_close(compact.predict_tc(graph, lattice, state_attr), expected, rtol=0.02, atol=1e-3)
        assert path.stat().st_size < 0.4 * source.stat().st_size


def test_manifest_records_measured_figures(sweep, shipped):
    manifest = json.loads((shipped / "manifest.json").read_text())
    figures = manifest["figures"]
    for member, figure in zip(manifest["members"], figures["members"], strict=True):
        recorded = json.loads((sweep / "step2" / "Dataset1" / f"seed{member['seed']}" / "metrics.json").read_text())
        # the float32 member scored again on its own split is the training record's best score
        assert figure["val_mape_float32"] == pytest.approx(recorded["best"]["mape"], rel=1e-5)
        assert member["val_mape"] == figure["val_mape_stored"]
    assert figures["max_abs_change"] < 0.005
    assert set(manifest["uncertainty"]) == {"Dataset1 (own validation)", "Dataset2 (cross-dataset)"}
    own = manifest["uncertainty"]["Dataset1 (own validation)"]
    # rows some member never trained on: its validation split, and crystals outside its seeded subset
    assert 19 <= own["rows"] <= 95
    assert manifest["calibration"]["rows"] == own["rows"]
    cross = manifest["domain"]["Dataset2 (cross-dataset)"]
    assert cross["rows_in"] + cross["rows_out"] == manifest["uncertainty"]["Dataset2 (cross-dataset)"]["rows"]


def test_zoo_ship_writes_the_card_and_the_new_name_is_listed_carded_and_predicts(
    shipped, crystals, tmp_path, monkeypatch, capsys
):
    """A shipped folder no code names: `zoo list` and `zoo card` describe it from its card.json, `predict` runs it."""
    manifest = json.loads((shipped / "manifest.json").read_text())
    card = read_card(shipped, manifest)  # pinned by the manifest, checked
    assert card is not None
    assert card.path == shipped / CARD
    assert card.validation["mape_mean"] == manifest["figures"]["val_mape_mean"]
    assert card.validation["members"] == 3
    assert card.measured is None  # no --measured evidence given
    monkeypatch.setattr(shipped_module, "SHIPPED_DIR", shipped.parent)
    pin_manifest(shipped / "manifest.json")  # what `zoo ship` does when it ships into the package
    assert main(["zoo", "list"]) == 0
    assert NAME in capsys.readouterr().out
    entry = catalog()[NAME]
    assert entry.data_reference == "Dataset1 (60 crystals)"
    assert f"MAPE {manifest['figures']['val_mape_mean']:.3f}" in entry.published_error
    assert main(["zoo", "card", NAME]) == 0
    text = capsys.readouterr().out
    assert f"**Use it for.** {USE_FOR}." in text
    assert "**Not for.** real crystals." in text
    rows = predict_with_cli(NAME, crystals, tmp_path / "by-name.csv")
    assert [row["error"] for row in rows] == ["", ""]


def test_predict_gives_calibrated_interval_around_the_mean(shipped, crystals, tmp_path):
    output = tmp_path / "out.csv"
    assert main(["predict", "--model", str(shipped), *crystals, "-o", str(output), "--workers", "0"]) == 0
    rows = read_rows(output)
    quantile = json.loads((shipped / "manifest.json").read_text())["calibration"]["quantiles"]["0.95"]
    predictor = load_predictor(str(shipped))
    assert predictor.calibration is not None
    for row in rows:
        structure = Structure.from_file(row["path"])
        member_tc = predictor.predict([predictor.graph_builder()(structure, row["path"])]).member_tc[:, 0]
        member_log = np.log10(member_tc + 1)  # the interval: mean +- q * std of log10(TC + 1), back in W/mK
        expected_low = max(10 ** (member_log.mean() - quantile * member_log.std()) - 1, 0.0)
        expected_high = 10 ** (member_log.mean() + quantile * member_log.std()) - 1
        assert float(row["tc_low_W_per_mK"]) == pytest.approx(expected_low, rel=1e-4, abs=1e-6)
        assert float(row["tc_high_W_per_mK"]) == pytest.approx(expected_high, rel=1e-4)
        assert float(row["tc_W_per_mK"]) == pytest.approx(member_tc.mean(), rel=1e-4)
        assert float(row["tc_low_W_per_mK"]) <= float(row["tc_W_per_mK"]) <= float(row["tc_high_W_per_mK"])
        assert row["interval_level"] == "0.95"


def test_a_tampered_shipped_member_is_refused(shipped, tmp_path):
    copy = Path(shutil.copytree(shipped, tmp_path / NAME))
    member = copy / "seed2.ckpt.xz"
    data = bytearray(member.read_bytes())
    data[len(data) // 2] ^= 0xFF
    member.write_bytes(bytes(data))
    with pytest.raises(BundleIntegrityError, match=r"seed2\.ckpt\.xz: sha256 mismatch"):
        load_predictor(str(copy))


def test_uncertainty_statistics_against_references():
    rng = np.random.default_rng(0)
    x = rng.integers(0, 8, 50).astype(float)  # ties
    y = x + rng.normal(size=50)
    assert spearman(x, y) == pytest.approx(spearmanr(x, y).statistic, abs=1e-12)
    scores = np.arange(1.0, 20.0)  # 19 scores: the 95 % conformal quantile is the ceil(20 * 0.95) = 19th
    assert conformal_quantile(scores, 0.95) == 19.0
    assert conformal_quantile(scores[:10], 0.95) == math.inf
    member_y = rng.normal(size=(9, 400))
    true_y = rng.normal(size=400) * member_y.std(axis=0)  # errors exactly as wide as the spread: Gaussian holds
    ids, everyone, known = [str(i) for i in range(400)], np.ones((9, 400), bool), np.zeros(400, bool)
    rows = HeldOutRows("r", ids, true_y, member_y, everyone, None, known)
    rows.member_y = member_y - member_y.mean(axis=0)  # centre 0, same spread
    assert coverage(rows, 1.959964) == pytest.approx(0.95, abs=0.03)
    assert cross_fitted_coverage(rows, 0.95) == pytest.approx(0.95, abs=0.03)
    member_tc = 10 ** np.array([[0.0], [1.0]]) - 1  # log10(TC+1) of 0 and 1: centre 0.5, spread 0.5
    low, high = Calibration({0.95: 0.5}, "r", 400).interval(member_tc)
    np.testing.assert_allclose([low[0], high[0]], [10**0.25 - 1, 10**0.75 - 1])
    low, high = Calibration({0.95: 2.0}, "r", 400).interval(member_tc)  # below TC = 0: clipped
    np.testing.assert_allclose([low[0], high[0]], [0.0, 10**1.5 - 1])


def test_the_package_ships_the_ltc_ensembles_with_cards():
    manifests = shipped_manifests()
    assert manifests, f"no LTC ensemble shipped in {SHIPPED_DIR}"
    size = sum(path.stat().st_size for path in SHIPPED_DIR.rglob("*") if path.is_file())
    assert size <= 25 * 1024**2
    for name, manifest in manifests.items():
        read_bundle(SHIPPED_DIR / name)  # every sha256
        assert len(manifest["members"]) == 9
        assert manifest["figures"]["max_abs_change"] < 0.005
        card = model_card(get_entry(name))
        for text in ("Shipped in the package", "Use it for", "95 % interval", "in_domain"):
            assert text in card
        headline = get_entry(name).published_error  # ltc-mf: judged on measured values out of family
        assert f"{manifest['figures']['val_mape_mean']:.3f}" in headline or "out of family: MAE" in headline


def test_every_shipped_ensemble_predicts_offline_on_an_empty_cache(crystals, tmp_path):
    """As on a fresh clone: no mirror, no cache, no network; only the package's files."""
    names = sorted(shipped_manifests())
    assert RECOMMENDED_LTC_MODEL in names  # `paraisite predict` without --model uses it
    env = {key: value for key, value in os.environ.items() if not key.startswith("PARAISITE_")}
    env["PARAISITE_CACHE"] = str(tmp_path / "empty-cache")
    script = (
        "import sys\nfrom paraisite.cli.main import main\n"
        "for name in sys.argv[1:]:\n"
        f"    assert main(['predict', '--model', name, *{crystals!r}, '-o', '{tmp_path}/' + name + '.csv']) == 0\n"
        f"assert main(['predict', *{crystals!r}, '-o', '{tmp_path}/default.csv']) == 0\n"
    )
    command = [sys.executable, "-c", script, *names]
    done = subprocess.run(command, env=env, timeout=600, capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "protocol=paper" not in done.stderr  # the shipped models are clean: no distorted-scale warning
    for name in names:
        rows = read_rows(tmp_path / f"{name}.csv")
        assert [row["error"] for row in rows] == ["", ""]
        for row in rows:
            low, mean, high = (float(row[f"tc_{c}W_per_mK"]) for c in ("low_", "", "high_"))
            assert 0 <= low <= mean <= high < math.inf
            if shipped_manifests()[name].get("domain_flag", True):
                assert row["in_domain"] in {"True", "False"}
            else:  # no signal backed the flag out of family: no column
                assert "in_domain" not in row
    assert read_rows(tmp_path / "default.csv") == read_rows(tmp_path / f"{RECOMMENDED_LTC_MODEL}.csv")
    assert not (tmp_path / "empty-cache").exists() or not any((tmp_path / "empty-cache").rglob("*.ckpt"))
