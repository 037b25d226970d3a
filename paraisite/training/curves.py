"""``curves.png`` of a run: its training loss and validation MAPE per epoch, one line per ensemble member.

The values drawn are written beside it too (``curves.csv``).

The values are taken from the run itself (no logger needed) once each epoch is complete, kept in the callback's
state (so a resumed run keeps the epochs before the interruption), and drawn when training ends.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Any

import pytorch_lightning as pl

from paraisite.evaluation.plots import plot_curves

log = logging.getLogger(__name__)


def _value(metrics: dict[str, Any], key: str) -> float:
    value = metrics.get(key)
    return float(value) if value is not None else math.nan


class TrainingCurves(pl.Callback):
    """Record each finished epoch's training loss and validation MAPE; write ``path`` when fitting ends.

    Ensembles (a module with ``member_metrics``) get one line per member, named by ``names``.
    """

    def __init__(self, path: str | Path, names: list[str] | None = None, title: str = "") -> None:
        self.path = Path(path)
        self.names = names or []
        self.title = title
        self.train_loss: list[list[float]] = []
        self.val_mape: list[list[float]] = []
        self._recorded = 0

    def _record(self, trainer: pl.Trainer, module: pl.LightningModule, epochs: int) -> None:
        """Append the last completed epoch, once (``epochs``: how many epochs are complete)."""
        if epochs <= self._recorded:
            return
        members = getattr(module, "member_metrics", None)
        if members is not None:
            train = [_value(m, "loss") for m in members.get("train", [])]
            val = [_value(m, "mape") for m in members.get("val", [])]
        else:
            metrics = trainer.callback_metrics
            train, val = [_value(metrics, "train/loss")], [_value(metrics, "val/mape")]
        size = max(len(train), len(val), len(self.train_loss), 1)
        while len(self.train_loss) < size:
            self.train_loss.append([math.nan] * self._recorded)
            self.val_mape.append([math.nan] * self._recorded)
        for member in range(size):
            self.train_loss[member].append(train[member] if member < len(train) else math.nan)
            self.val_mape[member].append(val[member] if member < len(val) else math.nan)
        self._recorded = epochs

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """The epoch before this one is complete (its training and validation metrics are final)."""
        self._record(trainer, pl_module, trainer.current_epoch)

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Record the last epoch and write the picture (rank 0 only)."""
        self._record(trainer, pl_module, trainer.current_epoch)
        if not trainer.is_global_zero or not self.train_loss:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        plot_curves(self.train_loss, self.val_mape, self.path, self.names, self.title)
        self.write_table(self.path.with_suffix(".csv"))
        log.info("training curves in %s (values in %s)", self.path, self.path.with_suffix(".csv"))

    def write_table(self, path: Path) -> None:
        """The values drawn: ``epoch,member,train_loss,val_mape``, one row per epoch and member."""
        lines = ["epoch,member,train_loss,val_mape"]
        for member, (losses, mapes) in enumerate(zip(self.train_loss, self.val_mape, strict=True)):
            name = self.names[member] if member < len(self.names) else str(member)
            lines += [
                f"{epoch},{name},{loss:.6g},{mape:.6g}"
                for epoch, (loss, mape) in enumerate(zip(losses, mapes, strict=True))
            ]
        path.write_text("\n".join(lines) + "\n")

    def state_dict(self) -> dict[str, Any]:
        """The epochs recorded so far (saved in the resume checkpoint)."""
        return {"train_loss": self.train_loss, "val_mape": self.val_mape, "recorded": self._recorded}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Continue the curves of a resumed run."""
        self.train_loss = [list(v) for v in state_dict.get("train_loss", [])]
        self.val_mape = [list(v) for v in state_dict.get("val_mape", [])]
        self._recorded = int(state_dict.get("recorded", 0))
