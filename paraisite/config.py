"""Where the Hydra configs live (in the package when installed, ``conf/`` in a checkout)."""

from __future__ import annotations

import os
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from paraisite.record import run_label, run_path


def wandb_offline() -> bool:
    """Whether wandb stays offline: yes unless ``WANDB_MODE=online`` or ``WANDB_API_KEY`` enables it."""
    return os.environ.get("WANDB_MODE", "") != "online" and not os.environ.get("WANDB_API_KEY")


OmegaConf.register_new_resolver("wandb_offline", wandb_offline, replace=True)
# The run layout, in conf/hydra/default.yaml and conf/experiment/step3.yaml, from paraisite.record's one definition.
OmegaConf.register_new_resolver("run_label", run_label, replace=True)
OmegaConf.register_new_resolver("run_path", run_path, replace=True)


def config_dir() -> Path:
    """The directory of ``train.yaml``: ``paraisite/conf`` in a wheel, the repository's ``conf/`` otherwise."""
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
