"""Shared test helpers: compose the real Hydra config with overrides."""

from __future__ import annotations

from pathlib import Path

from hydra import compose, initialize_config_dir
from omegaconf import DictConfig

from paraisite.config import config_dir

#: Settings that make a run tiny and quiet on CPU.
FAST = ["trainer.max_epochs=1", "logger=none", "callbacks.progress_bar=null", "cross_eval=[]"]


def compose_train(output_dir: Path, *overrides: str) -> DictConfig:
    """The ``train`` config as ``paraisite-train`` composes it, writing to ``output_dir``."""
    with hydra_configs():
        return compose(config_name="train", overrides=[f"paths.output_dir={output_dir}", *overrides])


def hydra_configs():
    """Context in which ``hydra.compose`` sees paraisite's config directory."""
    return initialize_config_dir(config_dir=str(config_dir()), version_base="1.3")
