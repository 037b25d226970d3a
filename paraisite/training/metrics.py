"""Regression metrics of thermal conductivity, computed over a whole split."""

from __future__ import annotations

import torch

#: Floor (W/mK) applied to predictions before taking log10, so a badly wrong prediction stays finite.
LOG_FLOOR = 1e-6


def ltc_metrics(pred_tc: torch.Tensor, true_tc: torch.Tensor) -> dict[str, float]:
    """MAPE of TC (a fraction), MAE and RMSE of log10 TC, and R2 of log10 TC."""
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
    }
