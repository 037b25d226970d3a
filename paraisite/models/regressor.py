"""LightningModule: backbone + head predicting standardised log10(TC+1); TC in W/mK out.

:class:`LTCRegressor` is the model every LTC run trains and every LTC checkpoint rebuilds
(:func:`load_ltc_checkpoint`). Runs name it through ``paraisite.training.module.LTCRegressor``, the ``_target_`` in
``conf/train.yaml`` (kept there because it is part of each run's config hash).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, cast

import pytorch_lightning as pl
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from torch import nn

if TYPE_CHECKING:
    from lightning_fabric.utilities.data import AttributeDict

from paraisite.checkpoints import INT8_KEY, CheckpointTrustError, check_targets, dequantised, load_checkpoint
from paraisite.data.target import TargetScaler, decode_tc, encode_tc
from paraisite.evaluation.metrics import LABEL_SCALINGS, ltc_metrics, reference_tc
from paraisite.models.backbone import Backbone

log = logging.getLogger(__name__)

LOSSES = ("mape", "l1", "mse")


def ltc_loss(kind: str, z_pred: torch.Tensor, tc: torch.Tensor, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    """Training loss over the last dimension: ``mape`` on TC, ``l1``/``mse`` on the standardised log target.

    ``z_pred``/``tc`` are ``[B]`` (one model) or ``[M, B]`` (ensemble members, one loss each: ``[M]``).
    """
    if kind == "mape":
        return torch.mean(torch.abs(decode_tc(z_pred, mean, std) - tc) / tc, dim=-1)
    z_true = encode_tc(tc, mean, std)
    if kind == "l1":
        return torch.mean(torch.abs(z_pred - z_true), dim=-1)
    return torch.mean((z_pred - z_true) ** 2, dim=-1)


def step_schedule(scheduler: Any, metric: Any, times: int) -> None:
    """One epoch's schedule steps: ``times`` is 1, or 2 to reproduce the paper's code."""
    for _ in range(times):
        scheduler.step() if metric is None else scheduler.step(metric)


def build_optimizers(hparams: Any, head_params: list, backbone_params: list) -> Any:
    """Optimizer (optional backbone learning rate) and a scheduler stepped per epoch, from the hyper-parameters."""
    default_optimizer = {"_target_": "torch.optim.Adam", "_partial_": True}
    optimizer_factory: Callable = instantiate(hparams.optimizer or default_optimizer)
    groups: list[dict[str, Any]] = [{"params": [p for p in head_params if p.requires_grad]}]
    backbone_params = [p for p in backbone_params if p.requires_grad]
    if backbone_params:
        backbone_group: dict[str, Any] = {"params": backbone_params}
        if hparams.backbone_lr is not None:
            backbone_group["lr"] = hparams.backbone_lr
        groups.append(backbone_group)
    optimizer = optimizer_factory(groups)
    if not hparams.scheduler:
        return optimizer
    scheduler = instantiate(hparams.scheduler)(optimizer)
    return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "epoch", "frequency": 1}}


def _plain(config: Any) -> Any:
    """Config -> plain containers, so hyper-parameters pickle-free into checkpoints."""
    return OmegaConf.to_container(config, resolve=True) if isinstance(config, DictConfig) else config


class LTCRegressor(pl.LightningModule):
    """A crystal-graph backbone and an MLP head trained on standardised log10(TC+1).

    Everything needed to rebuild and use the model (backbone and head configs, graph settings, target
    statistics) is saved as hyper-parameters, so ``LTCRegressor.load_from_checkpoint(path)`` alone predicts
    TC in W/mK.

    Args:
        backbone: config (``_target_`` + arguments) of a :class:`~paraisite.models.backbone.Backbone` mapping
            ``(graph, lattice, state)`` to ``[B, out_dim]`` features; only the architecture is built here
            (pretrained weights are loaded by the training entry point, not on reload).
        head: config of the head; ``in_dim`` is filled from the backbone's ``out_dim``.
        target_stats: ``{"mean", "std"}`` of log10(TC+1) used to standardise the target.
        graph: config of the graph builder the backbone expects (kept for prediction).
        loss: ``mape`` on TC in W/mK (the paper's), or ``l1`` / ``mse`` on the standardised log target.
        optimizer: partial optimizer config (``_partial_: true``).
        scheduler: partial LR-scheduler config, or ``None``.
        scheduler_steps_per_epoch: 1 (correct); the paper's code stepped its cosine schedule twice per epoch.
        freeze_backbone: train only the head.
        backbone_lr: learning rate of the backbone parameters (default: the optimizer's).
        label_scaling: ``consistent`` (default) or ``paper`` (see :func:`reference_tc`).
        physics: extra per-crystal inputs of the head (``+features=eos``): the scan settings of
            :class:`~paraisite.models.physics.ScanSettings` plus ``mean`` and ``std`` (training split) of the
            features; each graph's ``extra_features`` are standardised with them (unknown ones become 0, the
            mean) and concatenated to the backbone's output. ``None`` (default): no extra inputs.
    """

    def __init__(
        self,
        backbone: dict,
        head: dict,
        target_stats: dict[str, float],
        graph: dict | None = None,
        loss: str = "mape",
        optimizer: dict | None = None,
        scheduler: dict | None = None,
        scheduler_steps_per_epoch: int = 1,
        freeze_backbone: bool = False,
        backbone_lr: float | None = None,
        label_scaling: str = "consistent",
        physics: dict | None = None,
    ) -> None:
        super().__init__()
        if loss not in LOSSES:
            raise ValueError(f"loss={loss!r}; valid: {', '.join(LOSSES)}")
        if label_scaling not in LABEL_SCALINGS:
            raise ValueError(f"label_scaling={label_scaling!r}; valid: {', '.join(LABEL_SCALINGS)}")
        backbone, head, graph = _plain(backbone), _plain(head), _plain(graph)
        optimizer, scheduler, physics = _plain(optimizer), _plain(scheduler), _plain(physics)
        # Only models with extra inputs carry the key: every other checkpoint's hyper-parameters stay as they were.
        extra_hparams = {} if physics is None else {"physics": physics}
        self.save_hyperparameters(
            {
                **extra_hparams,
                "backbone": backbone,
                "head": head,
                "target_stats": dict(target_stats),
                "graph": graph,
                "loss": loss,
                "optimizer": optimizer,
                "scheduler": scheduler,
                "scheduler_steps_per_epoch": scheduler_steps_per_epoch,
                "freeze_backbone": freeze_backbone,
                "backbone_lr": backbone_lr,
                "label_scaling": label_scaling,
            }
        )
        built = instantiate(backbone)
        if not isinstance(built, Backbone):
            raise TypeError(f"{backbone['_target_']} is not a paraisite.models.backbone.Backbone")
        self.backbone: Backbone = built
        extra = 0
        if physics is not None:
            if "mean" not in physics or "std" not in physics or len(physics["mean"]) != len(physics["std"]):
                raise ValueError(
                    "physics needs the training split's feature statistics 'mean' and 'std' (equal length)"
                )
            extra = len(physics["mean"])
            self.register_buffer("extra_mean", torch.tensor(physics["mean"], dtype=torch.float32), persistent=False)
            self.register_buffer("extra_std", torch.tensor(physics["std"], dtype=torch.float32), persistent=False)
        self.extra_inputs = extra
        self.head: nn.Module = instantiate(head, in_dim=self.backbone.out_dim + extra)
        self.scaler = TargetScaler(target_stats["mean"], target_stats["std"])
        if freeze_backbone:
            self.backbone.requires_grad_(False)
        self._outputs: dict[str, list[tuple[torch.Tensor, torch.Tensor]]] = {"train": [], "val": []}

    if TYPE_CHECKING:  # Lightning types it as a MutableMapping; save_hyperparameters makes it an AttributeDict

        @property
        def hparams(self) -> AttributeDict:
            """The hyper-parameters saved in ``__init__``."""

    def forward(self, graph: Any, lattice: torch.Tensor, state_attr: torch.Tensor) -> torch.Tensor:
        """Standardised log10(TC+1) per structure, shape [B]."""
        features = self.backbone(graph, lattice, state_attr)
        if self.extra_inputs:
            features = torch.cat([features, self.standardised_extra(graph, features.shape[0])], dim=1)
        return self.head(features).reshape(-1)

    def standardised_extra(self, graph: Any, count: int) -> torch.Tensor:
        """``[B, k]`` standardised ``extra_features`` of the graphs; unknown (NaN) values become 0 (the mean)."""
        raw = getattr(graph, "extra_features", None)
        if raw is None:
            raise ValueError(
                "this model takes physics features (hparams 'physics') but the graphs carry no extra_features: "
                "build them with paraisite.models.physics (training: +features=eos; prediction: paraisite predict)"
            )
        raw = raw.reshape(count, -1).to(self.extra_mean)
        return torch.nan_to_num((raw - self.extra_mean) / self.extra_std, nan=0.0)

    def predict_tc(self, graph: Any, lattice: torch.Tensor, state_attr: torch.Tensor) -> torch.Tensor:
        """TC in W/mK per structure."""
        return self.scaler.decode(self(graph, lattice, state_attr))

    def _loss(self, z_pred: torch.Tensor, tc: torch.Tensor) -> torch.Tensor:
        return ltc_loss(self.hparams.loss, z_pred, tc, self.scaler.mean, self.scaler.std)

    def _step(self, batch: tuple, split: str) -> torch.Tensor:
        graph, lattice, state_attr, tc = batch
        tc = reference_tc(tc, graph.label_stats, self.scaler.mean, self.scaler.std, self.hparams.label_scaling)
        z_pred = self(graph, lattice, state_attr)
        loss = self._loss(z_pred, tc)
        # Rank-local loss: a synced value would be reduced when rank 0's progress bar reads it, a collective
        # the other ranks never join (deadlock). Epoch metrics below are gathered from every rank instead.
        self.log(f"{split}/loss", loss, batch_size=tc.numel(), on_step=False, on_epoch=True)
        self._outputs[split].append((self.scaler.decode(z_pred.detach()), tc.detach()))
        return loss

    def training_step(self, batch: tuple, batch_idx: int) -> torch.Tensor:
        """One optimisation step."""
        return self._step(batch, "train")

    def validation_step(self, batch: tuple, batch_idx: int) -> torch.Tensor:
        """Validation loss; metrics are computed over the whole split at epoch end."""
        return self._step(batch, "val")

    def predict_step(self, batch: tuple, batch_idx: int) -> dict[str, torch.Tensor]:
        """Predicted and true TC (W/mK) and the dataset indices of the batch."""
        graph, lattice, state_attr, tc = batch
        return {"pred_tc": self.predict_tc(graph, lattice, state_attr), "true_tc": tc, "index": graph.sample_index}

    def _log_epoch_metrics(self, split: str) -> None:
        outputs = self._outputs[split]
        self._outputs[split] = []
        if not outputs:
            return
        # all_gather of a tensor is a tensor (Lightning types it for every collection it accepts)
        pred = cast(torch.Tensor, self.all_gather(torch.cat([p for p, _ in outputs]))).reshape(-1)
        true = cast(torch.Tensor, self.all_gather(torch.cat([t for _, t in outputs]))).reshape(-1)
        # all_gather gives every rank the same values, so every rank logs them (callbacks read them on all ranks).
        for name, value in ltc_metrics(pred, true).items():
            self.log(f"{split}/{name}", value, on_epoch=True, sync_dist=False)

    def on_train_epoch_end(self) -> None:
        """Training metrics over the epoch's batches."""
        self._log_epoch_metrics("train")

    def on_validation_epoch_end(self) -> None:
        """Validation metrics over the whole validation split."""
        self._log_epoch_metrics("val")

    def configure_optimizers(self) -> Any:
        """Optimizer (optional backbone learning rate) and a scheduler stepped per epoch."""
        return build_optimizers(self.hparams, list(self.head.parameters()), list(self.backbone.parameters()))

    def lr_scheduler_step(self, scheduler: Any, metric: Any) -> None:
        """Step the schedule ``scheduler_steps_per_epoch`` times per epoch (1 unless reproducing the paper)."""
        step_schedule(scheduler, metric, self.hparams.scheduler_steps_per_epoch)


def load_ltc_checkpoint(
    path: str | os.PathLike, *, expected_sha256: str | None = None
) -> tuple[LTCRegressor, dict[str, Any]]:
    """An :class:`LTCRegressor` from a checkpoint, loaded by the rules of :mod:`paraisite.checkpoints`.

    The file is read once (:func:`~paraisite.checkpoints.load_checkpoint`: weights only, the bytes checked are the
    bytes loaded) and every ``_target_`` of its hyper-parameters is checked
    (:func:`~paraisite.checkpoints.check_targets`) before the model is built. Returns the model (CPU, eval mode) and
    the checkpoint dictionary (for its other entries, e.g. the applicability reference).

    Raises:
        CheckpointTrustError: see :func:`~paraisite.checkpoints.load_checkpoint` and
            :func:`~paraisite.checkpoints.check_targets`; also a file that is not an LTC checkpoint (no
            ``state_dict``/``hyper_parameters``, or weights that do not fit).
    """
    checkpoint = load_checkpoint(path, expected_sha256=expected_sha256)
    hyper_parameters = checkpoint.get("hyper_parameters")
    state_dict = checkpoint.get("state_dict")
    if not isinstance(hyper_parameters, dict) or not isinstance(state_dict, dict):
        raise CheckpointTrustError(f"{path}: not a paraisite LTC checkpoint (no hyper_parameters/state_dict)")
    check_targets(hyper_parameters, path)
    try:
        state_dict = {**state_dict, **dequantised(checkpoint.get(INT8_KEY, {}))}
        model = LTCRegressor(**hyper_parameters)
        model.load_state_dict(state_dict, strict=True)
    except Exception as error:
        raise CheckpointTrustError(
            f"{path}: not a paraisite LTC checkpoint ({type(error).__name__}: {error})"
        ) from None
    return model.eval(), checkpoint
