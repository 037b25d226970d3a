"""Known noise of the libraries a training run uses, filtered.

Lightning's advertising tips, and deprecations that only a library (not the user) can act on.

Only messages matched exactly are dropped; every other warning and log line is left as it was.
"""

from __future__ import annotations

import logging
import warnings

#: Loggers through which Lightning prints its ``rank_zero_info`` lines: the last of ``pytorch_lightning``,
#: ``lightning_fabric`` and the unified ``lightning`` package imported decides (matgl imports ``lightning``).
LIGHTNING_INFO_LOGGERS = (
    "pytorch_lightning.utilities.rank_zero",
    "lightning_fabric.utilities.rank_zero",
    "lightning.pytorch.utilities.rank_zero",
    "lightning.fabric.utilities.rank_zero",
)
#: The prefix of Lightning's advertising tips (litlogger, litmodels).
TIP_PREFIX = "💡 Tip:"
#: (message regex, category) of warnings raised inside the libraries about their own use of other libraries.
KNOWN_WARNINGS: tuple[tuple[str, type[Warning]], ...] = (
    # Lightning 2.6's pytree helper on torch 2.13.
    (r"`isinstance\(treespec, LeafSpec\)` is deprecated", FutureWarning),
)


class _DropTips(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith(TIP_PREFIX)


def quiet_known_noise() -> None:
    """Drop :data:`TIP_PREFIX` lines and :data:`KNOWN_WARNINGS` for the rest of this process (idempotent)."""
    for name in LIGHTNING_INFO_LOGGERS:
        logger = logging.getLogger(name)
        if not any(isinstance(f, _DropTips) for f in logger.filters):
            logger.addFilter(_DropTips())
    for message, category in KNOWN_WARNINGS:
        warnings.filterwarnings("ignore", message=message, category=category)
