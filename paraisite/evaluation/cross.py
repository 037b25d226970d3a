"""Evaluate a trained model on the validation split of other datasets (the paper's cross-dataset table)."""

from __future__ import annotations

from typing import Any, Protocol

import torch

from paraisite.data.datamodule import LTCDataModule
from paraisite.data.target import TargetScaler
from paraisite.evaluation.metrics import ltc_metrics, reference_tc


class TCModel(Protocol):
    """What evaluation needs of a model (e.g. :class:`~paraisite.models.regressor.LTCRegressor`)."""

    @property
    def scaler(self) -> TargetScaler:
        """Target statistics the model predicts with."""

    @property
    def device(self) -> torch.device:
        """Where the model's weights are."""

    def eval(self) -> Any:
        """Switch to evaluation mode."""

    def predict_tc(self, graph: Any, lattice: torch.Tensor, state_attr: torch.Tensor) -> torch.Tensor:
        """TC in W/mK per structure."""


@torch.no_grad()
def predict_loader(model: TCModel, loader: Any, label_scaling: str = "consistent") -> dict[str, torch.Tensor]:
    """Predicted TC, true TC and the reference TC scored against (see ``reference_tc``), in loader order."""
    model.eval()
    out: dict[str, list[torch.Tensor]] = {"pred_tc": [], "true_tc": [], "reference_tc": []}
    device = model.device
    for graph, lattice, state_attr, tc in loader:
        pred = model.predict_tc(graph.to(device), lattice.to(device), state_attr.to(device))
        out["pred_tc"].append(pred.cpu())
        out["true_tc"].append(tc)
        out["reference_tc"].append(
            reference_tc(tc, graph.label_stats.cpu(), model.scaler.mean.cpu(), model.scaler.std.cpu(), label_scaling)
        )
    return {k: torch.cat(v).double() for k, v in out.items()}


def evaluate_on(model: TCModel, datamodule: LTCDataModule, label_scaling: str = "consistent") -> dict[str, Any]:
    """Metrics of ``model`` on ``datamodule``'s validation split (same seed as the datamodule's).

    ``label_scaling="paper"`` scores against the original code's distorted reference TC (labels
    standardised with their own source's statistics, de-standardised with the model's), and adds
    ``true_tc_mape``: the same predictions' MAPE against the true TC.
    """
    datamodule.setup()
    predictions = predict_loader(model, datamodule.val_dataloader(), label_scaling)
    metrics: dict[str, Any] = ltc_metrics(predictions["pred_tc"], predictions["reference_tc"])
    metrics.update({"count": len(predictions["true_tc"]), "label_scaling": label_scaling})
    if label_scaling != "consistent":
        metrics["true_tc_mape"] = ltc_metrics(predictions["pred_tc"], predictions["true_tc"])["mape"]
    return metrics
