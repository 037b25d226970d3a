"""Pictures: each run's curves.png (and the values in curves.csv), its validation predictions, and `plot parity`."""

from __future__ import annotations

import csv
import math
from pathlib import Path

import numpy as np
import pytest

from paraisite.cli.main import main
from paraisite.training.train import train
from tests.helpers import TINY_LTC, compose_train, read_rows

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def logged(run_dir: Path, key: str) -> list[float]:
    """Per epoch, the value of ``key`` the CSV logger wrote (its own file, not ours)."""
    (table,) = run_dir.glob("csv/**/metrics.csv")
    with open(table, newline="") as stream:
        rows = [row for row in csv.DictReader(stream) if row.get(key)]
    return [float(row[key]) for row in sorted(rows, key=lambda row: int(row["epoch"]))]


def test_a_run_writes_its_curves_and_validation_predictions(tmp_path, capsys):
    run_dir = tmp_path / "run"
    cfg = compose_train(run_dir, *TINY_LTC, "trainer.max_epochs=3", "logger=csv")
    result = train(cfg)
    assert (run_dir / "curves.png").read_bytes().startswith(PNG_SIGNATURE)
    curves = read_rows(run_dir / "curves.csv")
    assert [row["epoch"] for row in curves] == ["0", "1", "2"]
    np.testing.assert_allclose([float(r["val_mape"]) for r in curves], logged(run_dir, "val/mape"), rtol=1e-5)
    np.testing.assert_allclose([float(r["train_loss"]) for r in curves], logged(run_dir, "train/loss"), rtol=1e-5)

    predictions = read_rows(run_dir / "val_predictions.csv")
    assert len(predictions) == result["best"]["count"] == result["data"]["val"]
    true = np.array([float(row["true_tc_W_per_mK"]) for row in predictions])
    predicted = np.array([float(row["tc_W_per_mK"]) for row in predictions])
    assert np.mean(np.abs(predicted - true) / true) == pytest.approx(result["best"]["mape"], rel=1e-4)

    assert main(["plot", "parity", str(run_dir)]) == 0
    assert (run_dir / "parity.png").read_bytes().startswith(PNG_SIGNATURE)
    assert f"-> {run_dir / 'parity.png'}" in capsys.readouterr().out


def test_an_ensemble_draws_one_line_per_member(tmp_path):
    job = tmp_path / "g" / "train" / "Dataset1" / "seeds1-2"
    cfg = compose_train(job, *TINY_LTC, "trainer.max_epochs=2", "seeds=[1,2]")
    train(cfg)
    assert (job / "curves.png").read_bytes().startswith(PNG_SIGNATURE)
    curves = read_rows(job / "curves.csv")
    assert [(row["epoch"], row["member"]) for row in curves] == [
        ("0", "seed 1"), ("1", "seed 1"), ("0", "seed 2"), ("1", "seed 2")
    ]  # fmt: skip
    assert all(math.isfinite(float(row["val_mape"])) for row in curves)
    by_member = {row["member"]: row["val_mape"] for row in curves if row["epoch"] == "1"}
    assert by_member["seed 1"] != by_member["seed 2"]  # each member's own line
    for seed in (1, 2):
        assert (job.parent / f"seed{seed}" / "val_predictions.csv").is_file()


def test_parity_from_a_csv_and_its_errors(tmp_path, capsys):
    table = tmp_path / "mine.csv"
    table.write_text("formula,tc_W_per_mK,true_tc_W_per_mK\nSi,120,140\nPbTe,2.1,2.0\nNaCl,,6.5\nX,-1,3\n")
    assert main(["plot", "parity", str(table)]) == 0
    assert (tmp_path / "mine.parity.png").read_bytes().startswith(PNG_SIGNATURE)
    assert main(["plot", "parity", str(table), "--true", "measured"]) == 1
    assert "no column measured (columns: formula, tc_W_per_mK, true_tc_W_per_mK)" in capsys.readouterr().err
    assert main(["plot", "parity", str(tmp_path)]) == 1
    assert "no val_predictions.csv" in capsys.readouterr().err
    table.write_text("tc_W_per_mK,true_tc_W_per_mK\n,1\n0,2\n")
    assert main(["plot", "parity", str(table)]) == 1
    assert "no structure has both a positive true and a positive predicted value" in capsys.readouterr().err
