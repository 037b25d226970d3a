"""Checks of the values a run's config must have, made before any data is loaded; errors name the key."""

from __future__ import annotations

from typing import Any

from omegaconf import DictConfig, OmegaConf


class ConfigValueError(ValueError):
    """A config value that would train nothing, train forever, or fail deep inside torch."""


def _get(cfg: DictConfig, key: str) -> Any:
    value = OmegaConf.select(cfg, key, default=None)
    return OmegaConf.to_container(value) if OmegaConf.is_config(value) else value


def _integer(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _positive_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and value > 0


def check_run_config(cfg: DictConfig) -> None:
    """Refuse values that cannot make a meaningful run.

    Raises:
        ConfigValueError: the first offending key, its value and what is expected.
    """
    problems: list[str] = []

    def need(ok: bool, key: str, expected: str) -> None:
        if not ok:
            problems.append(f"{key}={_get(cfg, key)!r}: {expected}")

    epochs = _get(cfg, "trainer.max_epochs")
    need(_integer(epochs) and epochs >= 1, "trainer.max_epochs", "an integer >= 1 (0 trains nothing, -1 never stops)")
    min_epochs = _get(cfg, "trainer.min_epochs")
    if min_epochs is not None and _integer(epochs):
        need(_integer(min_epochs) and 0 <= min_epochs <= epochs, "trainer.min_epochs", "an integer in [0, max_epochs]")
    hidden = _get(cfg, "model.head.hidden")
    if hidden is not None:
        sizes = hidden if isinstance(hidden, list) else None
        need(
            sizes is not None and all(_integer(s) and s >= 1 for s in sizes),
            "model.head.hidden",
            "a list of integers >= 1",
        )
    dropout = _get(cfg, "model.head.dropout")
    if dropout is not None:
        need(isinstance(dropout, (int, float)) and 0 <= dropout < 1, "model.head.dropout", "a number in [0, 1)")
    need(_positive_number(_get(cfg, "model.optimizer.lr")), "model.optimizer.lr", "a number > 0")
    if _get(cfg, "model.backbone_lr") is not None:
        need(_positive_number(_get(cfg, "model.backbone_lr")), "model.backbone_lr", "null or a number > 0")
    batch = _get(cfg, "data.batch_size")
    need(_integer(batch) and batch >= 1, "data.batch_size", "an integer >= 1")
    need(_integer(_get(cfg, "seed")), "seed", "an integer")
    seeds = _get(cfg, "seeds")
    if seeds is not None:
        values: list[Any] = seeds if isinstance(seeds, list) else []  # not a list: refused below
        need(
            bool(values) and all(_integer(s) for s in values) and len(set(values)) == len(values),
            "seeds",
            "null or a non-empty list of distinct integers",
        )
        callbacks = _get(cfg, "callbacks") or {}
        for name, callback in callbacks.items():
            target = str(callback.get("_target_", "")) if isinstance(callback, dict) else ""
            if target.rsplit(".", 1)[-1] == "EarlyStopping":
                problems.append(
                    f"callbacks.{name} with seeds={values}: it would stop every member at once on their mean "
                    "val/mape; train the seeds one by one (seeds=null seed=...) to stop each on its own"
                )
    threads = _get(cfg, "threads")
    if threads is not None:
        need(_integer(threads) and threads >= 1, "threads", "null or an integer >= 1")
    if problems:
        raise ConfigValueError("invalid config: " + "; ".join(problems))
