"""Scoring thermal conductivity: the reference TC a prediction is scored against, and the metrics over a split."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

import torch

from paraisite.data.target import decode_tc

#: Floor (W/mK) applied to predictions before taking log10, so a badly wrong prediction stays finite.
LOG_FLOOR = 1e-6
#: Below this standard deviation of log10 predicted TC over a split, a model predicts one constant (collapsed).
#: Measured: a fresh MEGNet after 2 epochs spreads 8e-5, collapsed full-budget AFLOW members about 1e-7, and a
#: head whose ReLUs all died exactly 0.
COLLAPSED_SPREAD_LOG10 = 1e-6
#: How labels are scored: against the true TC, or the paper's distorted reference (see :func:`reference_tc`).
LABEL_SCALINGS = ("consistent", "paper")


def reference_tc(
    tc: torch.Tensor, label_stats: torch.Tensor, model_mean: torch.Tensor, model_std: torch.Tensor, label_scaling: str
) -> torch.Tensor:
    """The TC a prediction is scored against.

    ``consistent``: the true TC. ``paper``: the original code's flaw, reproduced on request: each label is
    standardised with its own source's whole-dataset statistics (``label_stats`` [B, 2]) but
    de-standardised with the model's (``model_mean``, ``model_std``), i.e.
    ``10**(mu_model + s_model * (log10(TC+1) - mu_src) / s_src) - 1``.
    It distorts cross-dataset tests, MIX training (per-source labels, MIX scaler) and Step III (AFLOW scaler).
    """
    if label_scaling == "consistent":
        return tc
    if label_scaling != "paper":
        raise ValueError(f"label_scaling={label_scaling!r}; valid: {', '.join(LABEL_SCALINGS)}")
    mean, std = label_stats[:, 0].to(tc), label_stats[:, 1].to(tc)
    return decode_tc((torch.log10(tc + 1.0) - mean) / std, model_mean, model_std)


#: Checkpoint entry: the fidelity names of a multi-fidelity model, in encoding order (``data.fidelities``).
FIDELITIES_KEY = "paraisite_fidelities"
#: Fidelity a multi-fidelity model predicts unless told otherwise.
DEFAULT_FIDELITY = "measured"

#: Checkpoint entry: the training sources whose labels :func:`reference_tc` distorted (protocol=paper), by name.
DISTORTED_SOURCES_KEY = "paraisite_distorted_label_sources"


def distorted_sources(
    label_scaling: str, source_stats: Mapping[str, Mapping[str, float]], model_stats: Mapping[str, float]
) -> list[str]:
    """Sources whose labels a model learned on a distorted scale (see :func:`reference_tc`).

    Under ``paper`` scaling, those whose statistics differ from the model's: MIX's two sources under the MIX scaler,
    Step III's dataset under AFLOW's. None for a single-source Step I or II, whose statistics are the model's, and
    none under ``consistent`` scaling.
    """
    if label_scaling != "paper":
        return []
    return sorted(
        source
        for source, stats in source_stats.items()
        if not all(math.isclose(stats[key], model_stats[key], rel_tol=1e-9) for key in ("mean", "std"))
    )


def ltc_metrics(pred_tc: torch.Tensor, true_tc: torch.Tensor) -> dict[str, float]:
    """MAPE of TC (a fraction), MAE and RMSE of log10 TC, R2 of log10 TC, and the spread of the predictions.

    ``pred_spread_log10`` is the standard deviation of log10 predicted TC over the split: about 0 for a model
    that predicts one value for every crystal (see :func:`prediction_problem`).
    """
    pred_tc, true_tc = pred_tc.double().flatten(), true_tc.double().flatten()
    mape = torch.mean(torch.abs(pred_tc - true_tc) / true_tc)
    log_pred, log_true = torch.log10(pred_tc.clamp_min(LOG_FLOOR)), torch.log10(true_tc)
    error = log_pred - log_true
    total = torch.sum((log_true - log_true.mean()) ** 2)
    r2 = 1.0 - torch.sum(error**2) / total if total > 0 else torch.tensor(float("nan"))
    return {
        "mape": float(mape),
        "mae_log10": float(error.abs().mean()),
        "rmse_log10": float(torch.sqrt(torch.mean(error**2))),
        "r2_log10": float(r2),
        "pred_spread_log10": float(log_pred.std(unbiased=False)),
    }


@dataclass(frozen=True)
class PredictionProblem:
    """What is wrong with a model's predictions: its ``kind`` (:data:`NOT_FINITE` or :data:`CONSTANT`) and ``detail``.

    The detail is the measured figure, which changes every epoch; the kind does not, so the ensemble warns once
    per change of kind and ``paraisite status`` groups seeds by it. ``str()`` reads ``kind (detail)``.
    """

    kind: str
    detail: str = ""

    def __str__(self) -> str:
        return f"{self.kind} ({self.detail})" if self.detail else self.kind


NOT_FINITE = "not finite predictions"
CONSTANT = "constant predictions"


def prediction_problem(metrics: Mapping[str, float]) -> PredictionProblem | None:
    """What is wrong with the predictions these :func:`ltc_metrics` were computed from, or ``None``.

    :data:`NOT_FINITE` (a diverged model: NaN or inf somewhere), or :data:`CONSTANT` (the same TC for every
    crystal: a collapsed model, e.g. a head whose units no longer fire). Records written before the spread was
    measured can only show the first.
    """
    mape, spread = metrics.get("mape"), metrics.get("pred_spread_log10")
    if mape is None:
        return None
    if not math.isfinite(mape) or (spread is not None and not math.isfinite(spread)):
        return PredictionProblem(NOT_FINITE)
    if spread is not None and spread < COLLAPSED_SPREAD_LOG10:
        return PredictionProblem(CONSTANT, f"log10 spread {spread:.1e}")
    return None


def final_problem(final: Mapping[str, float]) -> PredictionProblem | None:
    """:func:`prediction_problem` of a run record's ``final`` (the last epoch's ``val/...`` metrics)."""
    prefix = "val/"
    return prediction_problem({k[len(prefix) :]: v for k, v in final.items() if k.startswith(prefix)})
