"""Where the Hydra configs live (in the package when installed, ``conf/`` in a checkout), and their resolvers.

Importing this module does no work: the resolvers the configs use are registered by :func:`register_resolvers`,
which :func:`config_dir` calls, so whatever finds the configs (``paraisite-train``, ``hydra.compose`` in tests and
benchmarks, :func:`load_group_option`) can resolve them.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from paraisite.record import run_label, run_path


def wandb_offline() -> bool:
    """Whether wandb stays offline: yes unless ``WANDB_MODE=online`` or ``WANDB_API_KEY`` enables it."""
    return os.environ.get("WANDB_MODE", "") != "online" and not os.environ.get("WANDB_API_KEY")


#: The OmegaConf resolvers of paraisite's configs: wandb's mode (``conf/logger/wandb.yaml``) and the run layout
#: (``conf/hydra/default.yaml``, ``conf/experiment/step3.yaml``) from :mod:`paraisite.record`'s one definition.
RESOLVERS: dict[str, Callable[..., Any]] = {
    "wandb_offline": wandb_offline,
    "run_label": run_label,
    "run_path": run_path,
}


def register_resolvers() -> None:
    """Register :data:`RESOLVERS` with OmegaConf, once per process (a later call leaves them as they are)."""
    for name, resolver in RESOLVERS.items():
        if not OmegaConf.has_resolver(name):
            OmegaConf.register_new_resolver(name, resolver)


def config_dir() -> Path:
    """The directory of ``train.yaml``: ``paraisite/conf`` in a wheel, the repository's ``conf/`` otherwise.

    Registers the configs' resolvers first (:func:`register_resolvers`).
    """
    register_resolvers()
    packaged = Path(__file__).resolve().parent / "conf"
    return packaged if packaged.is_dir() else Path(__file__).resolve().parent.parent / "conf"


def group_options(group: str) -> list[str]:
    """Names of the options of a config group (e.g. ``data``)."""
    return sorted(p.stem for p in (config_dir() / group).glob("*.yaml"))


def load_group_option(group: str, name: str) -> DictConfig:
    """The raw YAML of one option of a config group; unknown names list the valid ones."""
    path = config_dir() / group / f"{name}.yaml"
    if not path.is_file():
        raise KeyError(f"no {group} config {name!r}; valid: {', '.join(group_options(group))}")
    option = OmegaConf.load(path)
    if not isinstance(option, DictConfig):
        raise TypeError(f"{path}: a config option must be a mapping, not a list")
    return option
