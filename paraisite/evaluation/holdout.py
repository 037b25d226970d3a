"""Out-of-family scores: a model's predictions on a held-out fold of crystal groups, per fidelity.

A grouped fold (``data.holdout``) holds crystals whose near twins the model never trained on. Every held-out
crystal is predicted at every fidelity the model knows; each is scored at its own. The scores are what a user
predicting a new crystal should expect: MAE of log10 TC, the share within a factor of 2, Spearman's rank
correlation, the mean signed log10 error (the scale bias), and the same for the best constant.
"""

from __future__ import annotations

import csv
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from scipy.stats import spearmanr

from paraisite.data.datamodule import LTCDataModule
from paraisite.evaluation.cross import TCModel, predict_loader
from paraisite.evaluation.metrics import FIDELITIES_KEY
from paraisite.safety import atomic_write

__all__ = ["FIDELITIES_KEY", "fidelity_scores", "holdout_result", "predict_holdout", "score_rows"]


def fidelity_scores(pred_tc: Sequence[float], true_tc: Sequence[float]) -> dict[str, float]:
    """MAE(log10), within x2, Spearman, mean signed log10 error, count; and the oracle constant's MAE and within x2.

    The constant is the median of the true log10 values themselves: the best any constant can do on these rows
    (an optimistic baseline).
    """
    pred, true = np.log10(np.asarray(pred_tc, float).clip(1e-6)), np.log10(np.asarray(true_tc, float))
    if len(true) == 0:
        return {"count": 0}
    error = pred - true
    constant = np.median(true)
    spearman = float(spearmanr(pred, true).statistic) if len(true) > 2 and np.ptp(true) > 0 else math.nan
    return {
        "count": len(true),
        "mae_log10": float(np.abs(error).mean()),
        "within_x2": float((np.abs(error) <= math.log10(2)).mean()),
        "spearman": spearman,
        "mean_signed_log10": float(error.mean()),
        "mape": float(np.mean(np.abs(10**pred - 10**true) / 10**true)),
        "constant_tc": float(10**constant),
        "constant_mae_log10": float(np.abs(true - constant).mean()),
        "constant_within_x2": float((np.abs(true - constant) <= math.log10(2)).mean()),
    }


def predict_holdout(model: TCModel, datamodule: LTCDataModule) -> list[dict[str, Any]]:
    """One row per held-out sample: id, source, fidelity, formula, true TC, prediction at each fidelity."""
    datamodule.setup()
    test = datamodule.test_set
    if test is None:
        raise ValueError("this datamodule holds nothing out (data.holdout is not set)")
    from paraisite.data.sources import source_spec

    sources = {s.source for s in test.samples}
    own = {source: source_spec(source).fidelity for source in sources}
    if datamodule.fidelities is None and len(set(own.values())) > 1:
        raise ValueError(f"a single-fidelity model cannot be scored on sources of several fidelities: {own}")
    fidelities = datamodule.fidelities or sorted(set(own.values()))
    rows = [
        {
            "id": s.id,
            "source": s.source,
            "fidelity": own[s.source],
            "formula": s.formula,
            "group": datamodule.groups.get(s.id, ""),
            "tc_true": float(test.graph_sets[s.source].tc[s.index]),
        }
        for s in test.samples
    ]
    loader = datamodule.test_dataloader()
    for level, name in enumerate(fidelities):
        test.force_fidelity = level if datamodule.fidelities else None
        try:
            pred = predict_loader(model, loader)["pred_tc"].tolist()
        finally:
            test.force_fidelity = None
        for row, value in zip(rows, pred, strict=True):
            row[f"pred_{name}"] = value
    return rows


def score_rows(rows: Sequence[dict[str, Any]], column: str = "pred") -> dict[str, dict[str, float]]:
    """:func:`fidelity_scores` per fidelity, each row predicted at its own fidelity (``pred_<fidelity>``)."""
    by_fidelity: dict[str, tuple[list[float], list[float]]] = {}
    for row in rows:
        pred, true = by_fidelity.setdefault(row["fidelity"], ([], []))
        pred.append(float(row[f"{column}_{row['fidelity']}"]))
        true.append(float(row["tc_true"]))
    return {name: fidelity_scores(pred, true) for name, (pred, true) in sorted(by_fidelity.items())}


def write_rows(path: Path, rows: Sequence[dict[str, Any]]) -> None:
    """Write held-out predictions as CSV (atomically)."""

    def write(tmp: Path) -> None:
        with open(tmp, "w", newline="", encoding="utf-8") as stream:
            writer = csv.DictWriter(stream, fieldnames=list(rows[0]) if rows else ["id"])
            writer.writeheader()
            writer.writerows(rows)

    atomic_write(path, write)


def holdout_result(model: TCModel, datamodule: LTCDataModule, output_dir: Path) -> dict[str, Any]:
    """Predict the held-out fold, write ``holdout_predictions.csv``, return the scores per fidelity."""
    rows = predict_holdout(model, datamodule)
    write_rows(output_dir / "holdout_predictions.csv", rows)
    assert datamodule.holdout is not None
    return {**datamodule.holdout, "scores": score_rows(rows), "file": "holdout_predictions.csv"}


def read_rows(path: Path) -> list[dict[str, Any]]:
    """Rows of a ``holdout_predictions.csv`` (numbers as floats)."""
    with open(path, newline="", encoding="utf-8") as stream:
        rows = list(csv.DictReader(stream))
    for row in rows:
        for key, value in row.items():
            if key == "tc_true" or key.startswith("pred_"):
                row[key] = float(value)
    return rows


def ensemble_rows(member_rows: Sequence[Sequence[dict[str, Any]]]) -> list[dict[str, Any]]:
    """Rows of one ensemble from its members' rows (same order).

    ``pred_*`` become the geometric mean over members (mean of log10), ``spread_*`` the members' population std of
    log10 TC.
    """
    first = member_rows[0]
    for rows in member_rows[1:]:
        if [r["id"] for r in rows] != [r["id"] for r in first]:
            raise ValueError("ensemble members were scored on different held-out rows")
    columns = [key for key in first[0] if key.startswith("pred_")] if first else []
    result = []
    for i, row in enumerate(first):
        merged = {k: v for k, v in row.items() if not k.startswith("pred_")}
        for column in columns:
            logs = np.log10(np.clip([rows[i][column] for rows in member_rows], 1e-6, None))
            merged[column] = float(10 ** logs.mean())
            merged["spread_" + column[len("pred_") :]] = float(logs.std())
        result.append(merged)
    return result
