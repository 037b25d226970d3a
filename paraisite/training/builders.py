"""How a run is put together from its config: data, model, initial weights, loggers, and what every record carries.

:mod:`paraisite.training.train` (the ``paraisite-train`` entry point) wires these into a fit and its evaluation.
"""

from __future__ import annotations

import copy
import logging
import platform
import subprocess
from pathlib import Path
from typing import Any, cast

import pytorch_lightning as pl
import torch
from hydra.utils import get_class, instantiate
from omegaconf import DictConfig, OmegaConf, open_dict
from pytorch_lightning.loggers import CSVLogger

from paraisite.checkpoints import load_checkpoint, resolve_run_checkpoint
from paraisite.config import load_group_option
from paraisite.data.datamodule import LTCDataModule
from paraisite.models.backbone import backbone_class
from paraisite.models.regressor import LTCRegressor
from paraisite.record import run_label

log = logging.getLogger(__name__)


def provenance() -> dict[str, Any]:
    """Git revision and package versions, recorded with every run."""
    import matgl
    import pymatgen.core

    import paraisite

    def git(*args: str) -> str:
        root = Path(__file__).resolve().parents[2]
        return subprocess.run(["git", "-C", str(root), *args], capture_output=True, text=True, check=True).stdout

    try:
        revision, dirty = git("rev-parse", "HEAD").strip(), bool(git("status", "--porcelain").strip())
    except (OSError, subprocess.CalledProcessError):
        revision, dirty = None, None
    return {
        "git_revision": revision,
        "git_dirty": dirty,
        "python": platform.python_version(),
        "versions": {
            "paraisite": paraisite.__version__,
            "torch": torch.__version__,
            "pytorch_lightning": pl.__version__,
            "matgl": matgl.__version__,
            "pymatgen": pymatgen.core.__version__,
        },
    }


def build_datamodule(cfg: DictConfig, data_name: str | None = None) -> LTCDataModule:
    """The training datamodule, or (``data_name``) the same settings on another dataset of ``conf/data``."""
    if data_name is not None:
        other = load_group_option("data", data_name)
        cfg = copy.deepcopy(cfg)
        with open_dict(cfg):
            cfg.data.name, cfg.data.sources = other.name, other.sources
    datamodule: LTCDataModule = instantiate(cfg.data)
    physics = cfg.model.get("physics")
    if physics is not None:  # +features=eos or kappa_bte: per-crystal inputs from a universal potential, cached
        from paraisite.kappa.features import feature_settings, source_features

        settings = feature_settings(cast(dict[str, Any], OmegaConf.to_container(physics, resolve=True)))
        datamodule.attach_features(source_features(settings, str(cfg.data.get("on_bad_structure", "skip"))))
    return datamodule


def build_model(
    cfg: DictConfig, target_stats: dict[str, float], feature_stats: dict[str, list[float]] | None = None
) -> LTCRegressor:
    """The LightningModule from ``cfg.model`` (architecture only; weights are loaded by :func:`init_weights`).

    ``feature_stats``: the training split's statistics of the extra features (``model.physics``: ``+features=eos`` or
    ``kappa_bte``); the checkpoint stores the features' settings resolved, with their names and these statistics.
    """
    model_cfg = cast(dict[str, Any], OmegaConf.to_container(cfg.model, resolve=True))
    backbone_cfg, head_cfg = model_cfg.pop("backbone"), model_cfg.pop("head")
    if model_cfg.get("physics") is not None:
        if feature_stats is None:
            raise ValueError("model.physics is set but the datamodule computed no feature statistics")
        from paraisite.kappa.features import feature_names, feature_settings

        settings = feature_settings(model_cfg["physics"])
        model_cfg["physics"] = {**settings.to_dict(), "names": list(feature_names(settings)), **feature_stats}
    module_cls = get_class(model_cfg.pop("_target_"))
    return module_cls(
        backbone=backbone_cfg["net"], head=head_cfg, graph=backbone_cfg["graph"], target_stats=target_stats, **model_cfg
    )


def check_pretrained_name(cfg: DictConfig) -> None:
    """Refuse an unknown ``model.backbone.pretrained`` before any data is loaded (the message lists valid names)."""
    name = cfg.model.backbone.get("pretrained")
    backbone_cls = backbone_class(cfg.model.backbone.net._target_)
    if name and name not in backbone_cls.published_names():
        valid = ", ".join(backbone_cls.published_names()) or "none (pretrained must be null)"
        kind = backbone_cls.__name__
        raise ValueError(f"model.backbone.pretrained={name!r} is not a published {kind}; valid: {valid}")


def init_weights(module: LTCRegressor, cfg: DictConfig) -> dict[str, Any]:
    """Load published backbone weights and/or a previous paraisite checkpoint (not its target statistics)."""
    report: dict[str, Any] = {"pretrained": cfg.model.backbone.get("pretrained"), "init_from": None}
    if report["pretrained"]:
        module.backbone.load_published(report["pretrained"])
    if cfg.get("init_from"):
        try:
            path = resolve_run_checkpoint(cfg.init_from)
        except (FileNotFoundError, RuntimeError) as error:
            hint = cfg.get("init_from_hint")
            raise FileNotFoundError(f"{error}; produce it with: {hint}" if hint else str(error)) from None
        state = load_checkpoint(path)["state_dict"]
        keep_stats = bool(cfg.protocol.get("keep_init_target_stats", False))
        weights = state if keep_stats else {k: v for k, v in state.items() if not k.startswith("scaler.")}
        result = module.load_state_dict(weights, strict=False)
        missing = [k for k in result.missing_keys if not k.startswith("scaler.")]
        if missing or result.unexpected_keys:
            unexpected = result.unexpected_keys
            raise RuntimeError(f"{path} does not fit this model: missing {missing}, unexpected {unexpected}")
        if keep_stats:  # the paper's Step III kept the first dataset's scaler
            module.hparams.target_stats = {"mean": float(module.scaler.mean), "std": float(module.scaler.std)}
        report["init_from"] = str(path)
        report["kept_init_target_stats"] = keep_stats
        log.info("initialised %d tensors from %s", len(weights), path)
    return report


def instantiate_group(group: DictConfig | None) -> list[Any]:
    """Instantiate each entry of a callbacks/logger group; entries set to null are left out."""
    return [instantiate(entry) for entry in (group or {}).values() if entry is not None and "_target_" in entry]


def build_loggers(cfg: DictConfig, resume: bool) -> list[Any]:
    """The run's loggers; on ``resume`` a CSV logger's earlier ``metrics.csv`` is first kept as ``metrics.part<k>.csv``.

    Lightning's CSVLogger deletes an existing ``metrics.csv`` when it starts, which would throw away the training
    curve of every epoch before the interruption.
    """
    loggers = instantiate_group(cfg.get("logger"))
    if not resume:
        return loggers
    for logger in loggers:
        if not isinstance(logger, CSVLogger):
            continue
        path = Path(logger.log_dir) / "metrics.csv"
        if path.is_file():
            part = len(list(path.parent.glob("metrics.part*.csv"))) + 1
            path.rename(path.with_name(f"metrics.part{part}.csv"))
    return loggers


def prepare_run(cfg: DictConfig) -> tuple[LTCDataModule, LTCRegressor, dict[str, Any]]:
    """Seed, data (set up), model and initial weights of one run, in the order every run uses."""
    pl.seed_everything(cfg.seed, workers=True)
    datamodule = build_datamodule(cfg)
    datamodule.setup()
    if datamodule.target_stats is None:
        raise RuntimeError(f"{datamodule.name}: no target statistics after setup()")
    model = build_model(cfg, datamodule.target_stats, datamodule.feature_stats)
    if datamodule.fidelities is not None and not type(model.backbone).reads_state:
        name = type(model.backbone).__name__
        raise ValueError(f"data.fidelities needs a backbone that reads the global state (MEGNet); {name} ignores it")
    initialised = init_weights(model, cfg)
    return datamodule, model, initialised


def member_config(cfg: DictConfig, seed: int) -> DictConfig:
    """The config of the plain run with ``seed`` that ensemble member ``seed`` stands for.

    Its directory is the ensemble job's sibling ``seed<k>``: where a sweep puts the plain run of that seed.
    """
    member = copy.deepcopy(cfg)
    with open_dict(member):
        member.seed = int(seed)
        member.seeds = None
        member.paths.output_dir = str(Path(cfg.paths.output_dir).parent / run_label(int(seed)))
    return member
