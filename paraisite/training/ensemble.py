"""Train the seeds of one job together: one process, every layer batched over the members.

Member ``k`` behaves as the plain run with ``seed=k``: the same split, per-epoch order
(:class:`~paraisite.data.sampling.EpochShuffleSampler`), initialisation, batch size, loss, optimiser and
schedule, and its own best checkpoint chosen by its own validation MAPE. The loss is the sum of the
members' losses and Adam is element-wise, so the members never influence each other; only float
summation order differs from the plain runs. Each member is written as an ordinary run directory.
"""

from __future__ import annotations

import functools
import logging
import math
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
from matgl.graph.data import collate_fn_graph
from pytorch_lightning.callbacks import Callback
from torch.utils.data import DataLoader, Dataset

from paraisite.data.datamodule import GraphDataset, LTCDataModule
from paraisite.data.sampling import epoch_order
from paraisite.data.target import decode_tc
from paraisite.evaluation.metrics import PredictionProblem, ltc_metrics, prediction_problem, reference_tc
from paraisite.models.regressor import LTCRegressor, build_optimizers, ltc_loss, step_schedule
from paraisite.models.stacked import StackedParameters, stacked_sequential
from paraisite.safety import atomic_write

log = logging.getLogger(__name__)

#: Hyper-parameters that may differ between members (everything else must be equal to stack them).
PER_MEMBER_HPARAMS = ("target_stats",)


class MemberOrders:
    """Per-member sample orders of one epoch (shuffled from ``(seed, epoch)``, or in order)."""

    def __init__(self, count: int, seeds: Sequence[int], shuffle: bool) -> None:
        self.count, self.seeds, self.shuffle, self.epoch = count, list(seeds), shuffle, 0

    def set_epoch(self, epoch: int) -> None:
        """Called by Lightning before every epoch."""
        self.epoch = int(epoch)

    def orders(self) -> list[list[int]]:
        """One order per member."""
        if not self.shuffle:
            return [list(range(self.count))] * len(self.seeds)
        return [epoch_order(self.count, seed, self.epoch) for seed in self.seeds]


class MemberBatchSampler:
    """Batches of ``batch_size`` positions; each position holds one sample index per member."""

    def __init__(self, orders: MemberOrders, batch_size: int) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got {batch_size}")
        self.sampler, self.batch_size = orders, batch_size  # Lightning calls sampler.set_epoch

    def __iter__(self) -> Iterator[list[tuple[int, ...]]]:
        per_position = list(zip(*self.sampler.orders(), strict=True))
        for start in range(0, len(per_position), self.batch_size):
            yield per_position[start : start + self.batch_size]

    def __len__(self) -> int:
        return math.ceil(self.sampler.count / self.batch_size)


class MemberSets(Dataset):
    """The members' datasets side by side: item ``(i_1, ..., i_M)`` is member ``m``'s sample ``i_m`` for each m."""

    def __init__(self, sets: Sequence[GraphDataset]) -> None:
        sizes = {len(s) for s in sets}
        if len(sizes) != 1:
            raise ValueError(f"ensemble members need splits of one size, got {sorted(sizes)}")
        self.sets = list(sets)

    def __len__(self) -> int:
        return len(self.sets[0])

    def __getitem__(self, indices: tuple[int, ...]) -> tuple:
        return tuple(dataset[i] for dataset, i in zip(self.sets, indices, strict=True))


def collate_members(items: list[tuple]) -> list[tuple]:
    """One ``collate_fn_graph`` batch per member."""
    return [collate_fn_graph([item[m] for item in items]) for m in range(len(items[0]))]


class EnsembleDataModule(pl.LightningDataModule):
    """The members' datamodules (set up), served as lists of per-member batches."""

    def __init__(self, members: Sequence[LTCDataModule]) -> None:
        super().__init__()
        self.members = list(members)
        self.seeds = [dm.seed for dm in self.members]
        sizes = {dm.batch_size for dm in self.members}
        if len(sizes) != 1:
            raise ValueError(f"ensemble members need one batch size, got {sorted(sizes)}")
        self.batch_size = sizes.pop()

    def _loader(self, sets: Sequence[GraphDataset | None], shuffle: bool) -> DataLoader:
        ready = [s for s in sets if s is not None]
        if len(ready) != len(sets):
            raise RuntimeError("ensemble members are not set up (call setup() first)")
        data = MemberSets(ready)
        sampler = MemberBatchSampler(MemberOrders(len(data), self.seeds, shuffle), self.batch_size)
        return DataLoader(data, batch_sampler=sampler, collate_fn=collate_members)

    def train_dataloader(self) -> DataLoader:
        """Training batches, member ``k`` in the order of the plain run with its seed."""
        return self._loader([dm.train_set for dm in self.members], shuffle=True)

    def val_dataloader(self) -> DataLoader:
        """Validation batches in split order."""
        return self._loader([dm.val_set for dm in self.members], shuffle=False)


def _shared_hparams(member: LTCRegressor) -> dict[str, Any]:
    return {k: v for k, v in member.hparams.items() if k not in PER_MEMBER_HPARAMS}


class EnsembleRegressor(pl.LightningModule):
    """M :class:`LTCRegressor` members with one architecture, trained as one module.

    Args:
        members: the members as initialised for training (their weights are copied; the objects are kept
            as shells to write each member's checkpoint).

    Raises:
        ValueError: members differ in anything but their target statistics.
        TypeError: the backbone has no stacked form (not ``stackable``).
    """

    target_mean: torch.Tensor
    target_std: torch.Tensor

    def __init__(self, members: Sequence[LTCRegressor]) -> None:
        super().__init__()
        if any(_shared_hparams(m) != _shared_hparams(members[0]) for m in members):
            raise ValueError("ensemble members must share every hyper-parameter but their target statistics")
        backbone_cls = type(members[0].backbone)
        if not backbone_cls.stackable:
            raise TypeError(f"{backbone_cls.__name__} has no stacked form; train its seeds one by one (seed=...)")
        self.shells = list(members)  # a plain list: not submodules, not optimised
        self.backbone: Any = backbone_cls.stack([m.backbone for m in members])  # e.g. a StackedMEGNet
        self.head = StackedParameters([m.head for m in members])
        self._head_template: list[Any] = [members[0].head]  # a head module with ``layers`` (e.g. MLPHead)
        self.register_buffer("target_mean", torch.stack([m.scaler.mean for m in members]).unsqueeze(1))
        self.register_buffer("target_std", torch.stack([m.scaler.std for m in members]).unsqueeze(1))
        self.settings = members[0].hparams
        self.size = len(members)
        self._outputs: dict[str, list[tuple[torch.Tensor, ...]]] = {"train": [], "val": []}
        #: The last epoch's metrics per member and split, e.g. ``member_metrics["val"][m]["mape"]``.
        self.member_metrics: dict[str, list[dict[str, float]]] = {"train": [], "val": []}

    def forward(self, batches: Sequence[tuple]) -> torch.Tensor:
        """Standardised log10(TC+1), ``[M, B]``, for one batch per member."""
        graphs = self.backbone.graphs([(b[0], b[1], b[2]) for b in batches])
        features = self.backbone(graphs)
        head = self._head_template[0].layers
        return stacked_sequential(head, "layers", self.head, features, self.training).squeeze(-1)

    def member_state(self, member: int) -> dict[str, torch.Tensor]:
        """Member ``member``'s ``LTCRegressor`` state dict."""
        state = {f"backbone.{k}": v for k, v in self.backbone.params.member_state(member).items()}
        state.update({f"head.{k}": v for k, v in self.head.member_state(member).items()})
        state["scaler.mean"] = self.target_mean[member, 0].detach().clone()
        state["scaler.std"] = self.target_std[member, 0].detach().clone()
        return state

    def member_module(self, member: int) -> LTCRegressor:
        """The shell of ``member`` holding its current weights (CPU)."""
        shell = self.shells[member].cpu()
        shell.load_state_dict({k: v.cpu() for k, v in self.member_state(member).items()}, strict=False)
        return shell

    def _step(self, batches: Sequence[tuple], split: str) -> torch.Tensor:
        scaling = self.settings.label_scaling
        tc = torch.stack(
            [
                reference_tc(b[3], b[0].label_stats, self.target_mean[m, 0], self.target_std[m, 0], scaling)
                for m, b in enumerate(batches)
            ]
        )
        z_pred = self(batches)
        losses = ltc_loss(self.settings.loss, z_pred, tc, self.target_mean, self.target_std)
        self.log(f"{split}/loss", losses.mean(), batch_size=tc.shape[1], on_step=False, on_epoch=True)
        pred = decode_tc(z_pred.detach(), self.target_mean, self.target_std)
        selected = torch.stack([_select_mask(b[0], tc.shape[1]) for b in batches]).to(tc.device)
        self._outputs[split].append((pred, tc.detach(), losses.detach() * tc.shape[1], selected))
        return losses.sum()

    def training_step(self, batch: Sequence[tuple], batch_idx: int) -> torch.Tensor:
        """One optimisation step of every member."""
        return self._step(batch, "train")

    def validation_step(self, batch: Sequence[tuple], batch_idx: int) -> torch.Tensor:
        """Validation losses; metrics over the whole split at epoch end."""
        return self._step(batch, "val")

    def _epoch_metrics(self, split: str) -> None:
        outputs, self._outputs[split] = self._outputs[split], []
        if not outputs:
            return
        pred = torch.cat([o[0] for o in outputs], dim=1)
        true = torch.cat([o[1] for o in outputs], dim=1)
        loss = torch.stack([o[2] for o in outputs]).sum(0) / true.shape[1]
        selected = torch.cat([o[3] for o in outputs], dim=1) > 0.5
        metrics = []
        for m in range(self.size):
            rows = selected[m] if bool(selected[m].any()) else torch.ones_like(selected[m])
            member = {"loss": float(loss[m]), **ltc_metrics(pred[m][rows], true[m][rows])}
            metrics.append(member)
            self.log(f"{split}/mape_member{m}", member["mape"], on_epoch=True)
        self.member_metrics[split] = metrics
        self.log(f"{split}/mape", sum(x["mape"] for x in metrics) / self.size, on_epoch=True)

    def on_train_epoch_end(self) -> None:
        """Training metrics per member."""
        self._epoch_metrics("train")

    def on_validation_epoch_end(self) -> None:
        """Validation metrics per member (each member's best checkpoint is chosen from these)."""
        self._epoch_metrics("val")

    def configure_optimizers(self) -> Any:
        """The members' optimiser and schedule, over the stacked parameters (element-wise: members stay apart)."""
        return build_optimizers(self.settings, list(self.head.parameters()), list(self.backbone.parameters()))

    def lr_scheduler_step(self, scheduler: Any, metric: Any) -> None:
        """Step the schedule ``scheduler_steps_per_epoch`` times per epoch, as each member would."""
        step_schedule(scheduler, metric, self.settings.scheduler_steps_per_epoch)


def _select_mask(graph: Any, count: int) -> torch.Tensor:
    """Rows of a batch that choose the best checkpoint (``data.select_on``; all when the graphs do not say)."""
    mask = getattr(graph, "select_mask", None)
    return torch.ones(count) if mask is None else mask.reshape(-1).float()


class MemberCheckpoint(Callback):
    """Write member ``m``'s checkpoint to ``paths[m]`` whenever its validation ``metric`` (MAPE by default) improves.

    The file is what a plain run's best checkpoint holds for inference and re-training: ``state_dict`` and
    ``hyper_parameters`` of an :class:`LTCRegressor`, plus ``epoch`` and ``global_step``. After each
    validation it also writes the ensemble's resume state to ``resume_path`` (atomically, after the
    members' files, so the two always agree); the best scores are part of that state, so a resumed
    ensemble keeps choosing as the uninterrupted one would.

    A member whose validation predictions turn constant or not finite (:func:`prediction_problem`) is named in a
    warning the first epoch it does so (and again if it recovers), with the best checkpoint it keeps.
    """

    def __init__(
        self,
        paths: Sequence[Path],
        resume_path: Path | None = None,
        names: Sequence[str] | None = None,
        metric: str = "mape",
    ) -> None:
        self.metric = metric
        self.resume_path = None if resume_path is None else Path(resume_path)
        self.paths = [Path(p) for p in paths]
        self.names = list(names) if names is not None else [f"member {m}" for m in range(len(self.paths))]
        self.best: list[float] = [math.inf] * len(self.paths)
        self.best_epoch: list[int | None] = [None] * len(self.paths)
        self.problems: list[str | None] = [None] * len(self.paths)

    @property
    def state_key(self) -> str:
        """One state per ensemble."""
        return "MemberCheckpoint"

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Save each member that improved."""
        if not isinstance(pl_module, EnsembleRegressor):
            kind = type(pl_module).__name__
            raise TypeError(f"MemberCheckpoint saves the members of an EnsembleRegressor, not a {kind}")
        if trainer.sanity_checking or not pl_module.member_metrics["val"]:
            return
        for m, metrics in enumerate(pl_module.member_metrics["val"]):
            if self.metric not in metrics:
                raise ValueError(f"select_metric={self.metric!r} is not a validation metric; valid: {sorted(metrics)}")
            score = metrics[self.metric]
            if not math.isnan(score) and score < self.best[m]:
                self._save_member(trainer, pl_module, m, score)
            self._report_problem(m, prediction_problem(metrics), trainer.current_epoch)
        if self.resume_path is not None and trainer.is_global_zero:
            atomic_write(self.resume_path, functools.partial(trainer.save_checkpoint, weights_only=False))

    def _save_member(self, trainer: pl.Trainer, pl_module: EnsembleRegressor, m: int, score: float) -> None:
        self.best[m], self.best_epoch[m] = score, trainer.current_epoch
        shell = pl_module.member_module(m)
        checkpoint = {
            "state_dict": shell.state_dict(),
            "hyper_parameters": dict(shell.hparams),
            "epoch": trainer.current_epoch,
            "global_step": trainer.global_step,
            "pytorch-lightning_version": pl.__version__,
        }
        atomic_write(self.paths[m], functools.partial(torch.save, checkpoint))

    def _report_problem(self, member: int, problem: PredictionProblem | None, epoch: int) -> None:
        kind = None if problem is None else problem.kind
        if kind == self.problems[member]:
            return
        self.problems[member] = kind
        name = self.names[member]
        if problem is None:
            log.warning("%s: validation predictions are healthy again at epoch %d", name, epoch)
            return
        kept = (
            f"its best checkpoint (epoch {self.best_epoch[member]}, val {self.metric} {self.best[member]:.4f}) is kept"
            if self.best_epoch[member] is not None
            else "it has no best checkpoint yet"
        )
        log.warning("%s: %s at epoch %d; %s", name, problem, epoch, kept)

    def state_dict(self) -> dict[str, Any]:
        """Best scores so far (restored on resume)."""
        return {"best": list(self.best), "best_epoch": list(self.best_epoch)}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Restore the best scores."""
        self.best, self.best_epoch = list(state_dict["best"]), list(state_dict["best_epoch"])
