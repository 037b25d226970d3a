"""A multi-fidelity ensemble shipped with intervals calibrated out of family: per-fidelity intervals, no domain flag."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
from omegaconf import OmegaConf
from pymatgen.core import Lattice, Structure

from paraisite.cli.main import main
from paraisite.training.train import train
from paraisite.zoo.bundle import BundleError
from paraisite.zoo.catalog import model_card
from paraisite.zoo.predictors import load_predictor
from paraisite.zoo.shipping import read_out_of_family
from tests.helpers import FAST, compose_train, read_rows

NAME = "ltc-test-mf"
#: Written by hand, as build_tables.py writes them from grouped cross-validation (values chosen for the test).
INTERVALS = {
    "space": "log10(TC)",
    "by_fidelity": {
        "measured": {
            "space": "log10(TC)", "floor": 0.1, "quantiles": {"0.68": 1.0, "0.95": 2.0}, "fitted_on": "test folds",
            "rows": 155, "cross_fitted": {"coverage_68": 0.67, "coverage_95": 0.95, "width_68": 1.0, "width_95": 2.0},
        },
        "ab-initio": {
            "space": "log10(TC)", "floor": 0.3, "quantiles": {"0.68": 0.8, "0.95": 1.5}, "fitted_on": "test folds",
            "rows": 238, "cross_fitted": {"coverage_68": 0.68, "coverage_95": 0.94, "width_68": 0.9, "width_95": 1.9},
        },
    },
    "domain_signals": {
        "member spread": {"flagged_out": 29, "mae_in": 0.40, "mae_out": 0.52, "ratio": 1.30},
        "unseen element": {"flagged_out": 0, "mae_in": 0.42, "mae_out": math.nan, "ratio": math.nan},
        "latent kNN percentile": {"flagged_out": 31, "mae_in": 0.40, "mae_out": 0.50, "ratio": 1.23},
    },
}  # fmt: skip


@pytest.fixture(scope="module")
def shipped_mf(tmp_path_factory) -> Path:
    """Three tiny multi-fidelity runs (Dataset1 and measured values, scratch MEGNet) shipped with INTERVALS."""
    root = tmp_path_factory.mktemp("mf-sweep")
    for seed in (1, 2, 3):
        run_dir = root / "mf" / "MF" / f"seed{seed}"
        overrides = (
            "data=mf",
            "data.sources=[dataset1,measured]",
            "model/backbone=megnet_scratch",
            "max_per_source=40",
        )
        cfg = compose_train(run_dir, *overrides, *FAST, "task_name=mf", f"seed={seed}")
        train(cfg)
        (run_dir / "config_resolved.yaml").write_text(OmegaConf.to_yaml(cfg, resolve=True))
    intervals = root / "intervals.json"
    intervals.write_text(json.dumps(INTERVALS))
    target = tmp_path_factory.mktemp("ship") / NAME
    command = ["zoo", "ship", str(root), "--step", "mf", "--dataset", "MF", "--name", NAME, "-o", str(target)]
    assert main([*command, "--intervals", str(intervals), "--use-for", "testing"]) == 0
    return target


def test_the_manifest_keeps_the_out_of_family_intervals_and_drops_the_domain_flag(shipped_mf):
    manifest = json.loads((shipped_mf / "manifest.json").read_text())
    assert manifest["calibration"] == {"space": "log10(TC)", "by_fidelity": INTERVALS["by_fidelity"]}
    assert manifest["domain_flag"] is False  # no signal it could use reached twice the error
    assert manifest["out_of_family"]["intervals"]["measured"]["coverage_95"] == 0.95


def test_predict_gives_each_fidelity_its_own_interval_and_no_in_domain_column(shipped_mf, tmp_path):
    path = tmp_path / "PbTe.cif"
    Structure.from_spacegroup("Fm-3m", Lattice.cubic(6.46), ["Pb", "Te"], [[0, 0, 0], [0.5, 0.5, 0.5]]).to(
        filename=str(path)
    )
    predictor = load_predictor(str(shipped_mf))
    graph = predictor.graph_builder()(Structure.from_file(path), str(path))
    expected = {"measured": (2.0, 0.1), "ab-initio": (1.5, 0.3), "agl": None}
    for fidelity, quantile_floor in expected.items():
        output = tmp_path / f"{fidelity}.csv"
        command = ["predict", "--model", str(shipped_mf), str(path), "-o", str(output), "--fidelity", fidelity]
        assert main([*command, "--workers", "0"]) == 0
        (row,) = read_rows(output)
        assert "in_domain" not in row
        assert row["latent_percentile"] != ""
        if quantile_floor is None:  # no calibration for this fidelity: no interval rather than a wrong one
            assert row["tc_low_W_per_mK"] == row["tc_high_W_per_mK"] == ""
            continue
        predictor.use_fidelity(fidelity)
        logs = np.log10(predictor.predict([graph]).member_tc[:, 0])
        quantile, floor = quantile_floor
        half = quantile * (logs.std() + floor)
        assert float(row["tc_low_W_per_mK"]) == pytest.approx(10 ** (logs.mean() - half), rel=1e-4)
        assert float(row["tc_high_W_per_mK"]) == pytest.approx(10 ** (logs.mean() + half), rel=1e-4)


def test_the_card_shows_the_out_of_family_coverage_and_why_there_is_no_flag(shipped_mf, monkeypatch):
    from paraisite.zoo import shipped as shipped_module
    from paraisite.zoo.catalog import get_entry
    from paraisite.zoo.files import pin_manifest

    monkeypatch.setattr(shipped_module, "SHIPPED_DIR", shipped_mf.parent)
    pin_manifest(shipped_mf / "manifest.json")
    text = model_card(get_entry(NAME))
    assert "No `in_domain` column" in text
    assert "| measured | 155 | 0.1 | 2.00 | 67 % | 95 % | 2.00 |" in text
    assert "| unseen element | 0 | 0.420 | nan | never flags |" in text


def test_a_signal_at_twice_the_error_keeps_the_flag_and_a_bad_file_is_named(tmp_path):
    signals = {**INTERVALS["domain_signals"], "latent kNN percentile": {"flagged_out": 31, "ratio": 2.4}}
    good = tmp_path / "good.json"
    good.write_text(json.dumps({**INTERVALS, "domain_signals": signals}))
    assert read_out_of_family(good)["domain_flag"] is True
    spread_only = {**INTERVALS["domain_signals"], "member spread": {"flagged_out": 31, "ratio": 3.0}}
    good.write_text(json.dumps({**INTERVALS, "domain_signals": spread_only}))
    assert read_out_of_family(good)["domain_flag"] is False  # in_domain does not use the spread
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({**INTERVALS, "by_fidelity": {"measured": {"space": "log10(TC+1)"}}}))
    with pytest.raises(BundleError, match=r"bad\.json: not an out-of-family interval file"):
        read_out_of_family(bad)
