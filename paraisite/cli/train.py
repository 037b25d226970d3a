"""The ``paraisite-train`` console script: ``--help`` from the configs alone, the rest by the training code.

``--help`` does not import the training code (torch, Lightning, matgl: tens of seconds on a busy machine); anything
else runs :func:`paraisite.training.train.main`.
"""

from __future__ import annotations

import sys

import hydra
from omegaconf import DictConfig

from paraisite.config import config_dir

#: Arguments that make Hydra print help and exit before the task runs.
HELP_FLAGS = frozenset({"--help", "-h", "--hydra-help"})


@hydra.main(version_base="1.3", config_path=str(config_dir()), config_name="train")
def _help(cfg: DictConfig) -> None:  # pragma: no cover - Hydra prints the help and exits before calling it
    """Never called: Hydra answers ``--help`` itself."""


def main() -> None:
    """``paraisite-train``: the help from the configs, or a training run."""
    if HELP_FLAGS.intersection(sys.argv[1:]):
        _help()
        return
    from paraisite.training.train import main as train_main

    train_main()


if __name__ == "__main__":
    main()
