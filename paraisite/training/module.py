"""The name runs give the model: ``paraisite.training.module.LTCRegressor``, the ``_target_`` in ``conf/train.yaml``.

The class lives in :mod:`paraisite.models.regressor` (below the zoo and the checkpoint loader, which build it). This
name stays because the ``_target_`` is part of every run's resolved config and so of its hash
(:func:`paraisite.training.record.config_sha256`): another path would make every completed run look new and
restart every interrupted one.
"""

from __future__ import annotations

from paraisite.models.regressor import LTCRegressor

__all__ = ["LTCRegressor"]
