"""Checks of the values a run's config must have, made before any data is loaded; errors name the key.

:func:`check_run_config` checks one composed config: types and ranges (with the valid range in the message) and the
keys of every node built from a ``_target_`` (a misspelt key added with ``+`` names the nearest valid ones).
:func:`check_command_line` runs it on every job of a ``paraisite-train`` command line before Hydra starts anything,
names the nearest valid keys of a misspelt override, and tries writing where the jobs write (under ``paths.log_dir``
by default: a read-only or full folder is refused, naming it).
"""

from __future__ import annotations

import difflib
import inspect
import math
from collections.abc import Sequence
from typing import Any

from omegaconf import DictConfig, OmegaConf

from paraisite.safety import WriteError, check_writable_folder

#: Widest hidden layer of a head (a wider one is built until the kernel kills the process).
MAX_HEAD_WIDTH = 65536
#: Most hidden layers of a head.
MAX_HEAD_LAYERS = 64
#: Largest graph cutoff radius in Å (the neighbour list grows with its cube).
MAX_CUTOFF = 20.0
#: Most jobs of one sweep whose configs are composed and checked before it starts.
MAX_CHECKED_JOBS = 256
#: Nodes built from their ``_target_`` with their keys as keyword arguments (plus each ``callbacks``/``logger`` entry).
TARGET_NODES = (
    "trainer",
    "data",
    "model",
    "model.optimizer",
    "model.scheduler",
    "model.head",
    "model.backbone.net",
    "model.backbone.graph",
)
#: Keys of a target node that Hydra or paraisite consume (never passed as arguments).
_NOT_ARGUMENTS = {"_target_", "_partial_", "_recursive_", "_convert_", "_args_", "backbone", "head"}


class ConfigValueError(ValueError):
    """A config value that would train nothing, train forever, or fail deep inside torch."""


def _get(cfg: DictConfig, key: str) -> Any:
    value = OmegaConf.select(cfg, key, default=None)
    return OmegaConf.to_container(value) if OmegaConf.is_config(value) else value


def _integer(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _positive_number(value: Any) -> bool:
    return _number(value) and value > 0


def nearest(name: str, valid: Sequence[str], count: int = 3) -> str:
    """The valid names closest to ``name`` (difflib), as text for an error; all of them (up to 12) if none is close."""
    close = difflib.get_close_matches(name, list(valid), n=count, cutoff=0.6)
    if close:
        return "nearest: " + ", ".join(close)
    shown = sorted(valid)[:12]
    return "valid: " + (", ".join(shown) + (", ..." if len(valid) > len(shown) else "") if shown else "none")


#: Validation metrics that can choose the best checkpoint (``select_metric``; lower is better for each).
SELECT_METRICS = ("mape", "mae_log10", "rmse_log10")


def check_run_config(cfg: DictConfig) -> None:
    """Refuse values that cannot make a meaningful run, and keys no built object accepts.

    Raises:
        ConfigValueError: every offending key, its value and what is expected.
    """
    problems: list[str] = []

    def need(ok: bool, key: str, expected: str) -> None:
        if not ok:
            problems.append(f"{key}={_get(cfg, key)!r}: {expected}")

    def optional(key: str, ok: Any, expected: str) -> None:
        value = _get(cfg, key)
        if value is not None:
            need(bool(ok(value)), key, expected)

    need(_integer(_get(cfg, "seed")), "seed", "an integer")
    optional("select_metric", lambda v: v in SELECT_METRICS, f"one of {', '.join(SELECT_METRICS)}")
    epochs = _get(cfg, "trainer.max_epochs")
    need(_integer(epochs) and epochs >= 1, "trainer.max_epochs", "an integer >= 1 (0 trains nothing, -1 never stops)")
    min_epochs = _get(cfg, "trainer.min_epochs")
    if min_epochs is not None and _integer(epochs):
        need(_integer(min_epochs) and 0 <= min_epochs <= epochs, "trainer.min_epochs", "an integer in [0, max_epochs]")
    hidden = _get(cfg, "model.head.hidden")
    if hidden is not None:
        sizes = hidden if isinstance(hidden, list) else None
        need(
            sizes is not None
            and len(sizes) <= MAX_HEAD_LAYERS
            and all(_integer(s) and 1 <= s <= MAX_HEAD_WIDTH for s in sizes),
            "model.head.hidden",
            f"a list of at most {MAX_HEAD_LAYERS} integers in [1, {MAX_HEAD_WIDTH}]",
        )
    width = f"an integer in [1, {MAX_HEAD_WIDTH}]"
    optional("model.head.out_dim", lambda v: _integer(v) and 1 <= v <= MAX_HEAD_WIDTH, width)
    optional("model.head.dropout", lambda v: _number(v) and 0 <= v < 1, "a number in [0, 1)")
    need(_positive_number(_get(cfg, "model.optimizer.lr")), "model.optimizer.lr", "a finite number > 0")
    optional("model.backbone_lr", _positive_number, "null or a finite number > 0")
    optional("model.scheduler.T_max", lambda v: _integer(v) and v >= 1, "an integer >= 1")
    optional("model.scheduler.eta_min", lambda v: _number(v) and v >= 0, "a finite number >= 0")
    optional("model.scheduler_steps_per_epoch", lambda v: _integer(v) and v >= 1, "an integer >= 1")
    for key in ("model.backbone.net.cutoff", "model.backbone.net.threebody_cutoff", "model.backbone.graph.cutoff"):
        optional(key, lambda v: _number(v) and 0 < v <= MAX_CUTOFF, f"a number in (0, {MAX_CUTOFF:g}] (Å)")
    need(_integer(batch := _get(cfg, "data.batch_size")) and batch >= 1, "data.batch_size", "an integer >= 1")
    optional("data.val_fraction", lambda v: _number(v) and 0 < v < 1, "a number in (0, 1)")
    optional("data.num_workers", lambda v: _integer(v) and v >= 0, "an integer >= 0")
    optional("max_per_source", lambda v: _integer(v) and v >= 1, "null (all) or an integer >= 1")
    optional("threads", lambda v: _integer(v) and v >= 1, "null or an integer >= 1")
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
    physics = _get(cfg, "model.physics")
    if physics is not None:  # +features=eos or kappa_bte
        from paraisite.kappa.features import physics_problems

        problems += physics_problems(physics) if isinstance(physics, dict) else ["model.physics: a mapping"]
    problems += unknown_keys(cfg)
    if problems:
        raise ConfigValueError("invalid config: " + "; ".join(problems))


def unknown_keys(cfg: DictConfig) -> list[str]:
    """Keys of :data:`TARGET_NODES` (and each callback and logger) that their ``_target_`` does not accept."""
    nodes = [key for key in TARGET_NODES if isinstance(OmegaConf.select(cfg, key, default=None), DictConfig)]
    for group in ("callbacks", "logger"):
        entries = OmegaConf.select(cfg, group, default=None)
        if isinstance(entries, DictConfig):
            nodes += [f"{group}.{name!s}" for name, entry in entries.items() if isinstance(entry, DictConfig)]
    problems = []
    for key in nodes:
        node = OmegaConf.select(cfg, key)
        target = node.get("_target_")
        if not isinstance(target, str):
            continue
        accepted = _parameters(target)
        if accepted is None:
            continue
        names = [str(name) for name in node if str(name) not in _NOT_ARGUMENTS and str(name) not in accepted]
        problems += [f"{key}.{name}: not a setting of {target} ({nearest(name, sorted(accepted))})" for name in names]
    return problems


def _parameters(target: str) -> set[str] | None:
    """The keyword arguments ``target`` accepts; ``None`` if any are (``**kwargs``) or it cannot be inspected."""
    from hydra.utils import get_object

    try:
        signature = inspect.signature(get_object(target))
    except Exception:  # an unimportable target fails where it is built, with Hydra's own message
        return None
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in signature.parameters.values()):
        return None
    return {name for name, p in signature.parameters.items() if p.kind is not inspect.Parameter.VAR_POSITIONAL}


def check_command_line(argv: Sequence[str]) -> str | None:
    """What is wrong with a ``paraisite-train`` command line's configs (every job of a sweep), or ``None``.

    Each job's config is composed as Hydra will compose it and checked by :func:`check_run_config`; an override of
    a key that does not exist names the nearest valid keys of its group; a job folder (``hydra.run.dir``, or
    ``hydra.sweep.dir`` with ``-m``: under ``paths.log_dir`` by default) that cannot be written into (read-only, full,
    under a file) is named. Command lines this cannot judge
    (``--help``, ``--cfg``, another config name or directory, a syntax error) are left to Hydra (``None``).
    """
    from hydra import compose, initialize_config_dir
    from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
    from hydra._internal.utils import get_args_parser
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import HydraException

    from paraisite.config import config_dir

    try:
        args = get_args_parser().parse_args(list(argv))
        overrides = OverridesParser.create().parse_overrides(args.overrides)
    except (SystemExit, HydraException):
        return None
    special = ("help", "hydra_help", "cfg", "shell_completion", "config_path", "config_name", "config_dir", "info")
    if any(getattr(args, name, None) for name in special) or getattr(args, "experimental_rerun", None):
        return None
    if args.multirun:
        jobs = [job for batch in BasicSweeper.split_arguments(overrides, None) for job in batch][:MAX_CHECKED_JOBS]
    elif any(override.is_sweep_override() for override in overrides):
        return None  # Hydra refuses a sweep without --multirun
    else:
        jobs = [list(args.overrides)]
    folders: dict[str, str] = {}
    with initialize_config_dir(config_dir=str(config_dir()), version_base="1.3"):
        for job in jobs:
            label = f"job {' '.join(job)}: " if args.multirun else ""
            try:
                cfg = compose(config_name="train", overrides=job, return_hydra_config=True)
            except HydraException:
                problem = _misspelt_override(job, compose)
                return label + problem if problem else None
            try:
                check_run_config(cfg)
            except ConfigValueError as error:
                return f"{label}{error}"
            folder = OmegaConf.select(cfg, "hydra.sweep.dir" if args.multirun else "hydra.run.dir", default=None)
            if folder is not None:
                folders.setdefault(str(folder), str(OmegaConf.select(cfg, "paths.log_dir", default="")))
    return _unwritable_folder(folders)


def _unwritable_folder(folders: dict[str, str]) -> str | None:
    """Why one of the jobs' folders (to their ``paths.log_dir``) cannot be written into, or ``None``.

    Where the jobs write: a read-only or full folder is refused before any job runs.
    """
    for folder, log_dir in folders.items():
        try:
            check_writable_folder(folder, what=f"the job folder {folder} (paths.log_dir={log_dir})", create=True)
        except WriteError as error:
            return str(error)
    return None


def _misspelt_override(job: list[str], compose: Any) -> str | None:
    """The first override of ``job`` that sets a key its config does not have, with the nearest valid keys."""
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import HydraException

    from paraisite.config import config_dir

    parsed = OverridesParser.create().parse_overrides(job)

    def plain(override: Any) -> bool:  # a value for a key, as opposed to a group's option, an addition or a deletion
        key = str(override.key_or_group)
        is_group = (
            "/" in key or (config_dir() / key.replace(".", "/")).is_dir() or key.split(".", maxsplit=1)[0] == "hydra"
        )
        return not (override.is_add() or override.is_force_add() or override.is_delete() or is_group)

    try:
        base = compose(config_name="train", overrides=[o.input_line for o in parsed if not plain(o)])
    except HydraException:
        return None
    for override in parsed:
        if not plain(override):
            continue
        node: Any = base
        parts = str(override.key_or_group).split(".")
        for depth, part in enumerate(parts):
            group = ".".join(parts[:depth]) or "the config"
            if not isinstance(node, DictConfig):
                return f"{override.input_line}: {group} is a value, not a group of keys"
            if part not in node:
                advice = nearest(part, [str(key) for key in node])
                return f"{override.input_line}: {group} has no key {part!r} ({advice}; +{override.input_line} adds one)"
            node = node[part]
    return None
