"""``last.ckpt`` after every epoch, so an interrupted single run resumes from where it stopped.

Lightning's ``ModelCheckpoint(save_last=True)`` (2.6) writes ``last.ckpt`` only at a step where it also saved a best
checkpoint: a run stopped on a plateau resumed from its last improvement and trained its later epochs again
(a tiny run stopped by SIGTERM at epoch 51 resumed at epoch 0).
"""

from __future__ import annotations

import functools
from pathlib import Path

import pytorch_lightning as pl

from paraisite.safety import atomic_write


class LastEpochCheckpoint(pl.Callback):
    """Write ``path`` (a run's ``last.ckpt``) at the end of every validation, atomically.

    Lightning runs its checkpoint callbacks after the others, so at an epoch that improves, ``ModelCheckpoint``
    writes ``best.ckpt`` and then ``last.ckpt`` again, with its new best score in it.
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Save the whole training state (weights, optimizer, loops, callbacks) to :attr:`path`.

        Every process calls ``trainer.save_checkpoint`` (it ends with a barrier: with DDP, rank 0 alone would wait
        for the others for ever); only rank 0 writes, through a temporary file.
        """
        if trainer.sanity_checking or getattr(trainer, "fast_dev_run", False):
            return
        if trainer.is_global_zero:
            atomic_write(self.path, functools.partial(trainer.save_checkpoint, weights_only=False))
        else:
            trainer.save_checkpoint(self.path, weights_only=False)  # writes nothing on this rank; joins the barrier
