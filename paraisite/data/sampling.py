"""Shuffling that is a pure function of (seed, epoch): exact re-runs, resumes and ensemble members."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
from torch.utils.data import Sampler


def epoch_order(count: int, seed: int, epoch: int) -> list[int]:
    """The training order of epoch ``epoch`` for ``seed``: ``numpy.random.default_rng([seed, epoch]).permutation``."""
    return np.random.default_rng([int(seed), int(epoch)]).permutation(count).tolist()


class EpochShuffleSampler(Sampler[int]):
    """Shuffles ``count`` indices anew each epoch from ``(seed, epoch)`` alone.

    Lightning calls :meth:`set_epoch` before every epoch (also after resuming from a checkpoint), so a
    resumed run sees the very order the uninterrupted run would have seen, and ensemble member ``k`` the
    order of the plain run with seed ``k``.
    """

    def __init__(self, count: int, seed: int) -> None:
        self.count, self.seed, self.epoch = int(count), int(seed), 0

    def set_epoch(self, epoch: int) -> None:
        """Select the order of ``epoch``."""
        self.epoch = int(epoch)

    def __iter__(self) -> Iterator[int]:
        return iter(epoch_order(self.count, self.seed, self.epoch))

    def __len__(self) -> int:
        return self.count
