"""Hydra entry point ``paraisite-train``: data -> model -> callbacks -> loggers -> trainer -> fit -> evaluate."""

from __future__ import annotations

import copy
import logging
import math
import os
import platform
import subprocess
import time
import traceback
from pathlib import Path
from typing import Any, cast

import hydra
import pytorch_lightning as pl
import torch
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from hydra.utils import get_class, instantiate
from omegaconf import DictConfig, OmegaConf, open_dict
from pytorch_lightning.callbacks import LearningRateMonitor, ModelCheckpoint
from pytorch_lightning.loggers import CSVLogger

from paraisite.checkpoints import load_checkpoint, resolve_run_checkpoint
from paraisite.config import config_dir, load_group_option
from paraisite.data import registry
from paraisite.data.datamodule import LTCDataModule
from paraisite.evaluation.applicability import attach_applicability
from paraisite.evaluation.cross import evaluate_on
from paraisite.models.backbone import backbone_class
from paraisite.models.regressor import LTCRegressor, load_ltc_checkpoint
from paraisite.record import RunRecord, run_label, write_run_record
from paraisite.training import record
from paraisite.training.checks import check_run_config

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
    if physics is not None:  # +features=eos: the crystals' physics descriptors, computed (or cached) by models
        from paraisite.models.physics import SourceFeatures

        settings = cast(dict[str, Any], OmegaConf.to_container(physics, resolve=True))
        datamodule.attach_features(SourceFeatures(settings, str(cfg.data.get("on_bad_structure", "skip"))))
    return datamodule


def build_model(
    cfg: DictConfig, target_stats: dict[str, float], feature_stats: dict[str, list[float]] | None = None
) -> LTCRegressor:
    """The LightningModule from ``cfg.model`` (architecture only; weights are loaded by :func:`init_weights`).

    ``feature_stats``: the training split's statistics of the extra features (``model.physics``, ``+features=eos``).
    """
    model_cfg = cast(dict[str, Any], OmegaConf.to_container(cfg.model, resolve=True))
    backbone_cfg, head_cfg = model_cfg.pop("backbone"), model_cfg.pop("head")
    if model_cfg.get("physics") is not None:
        if feature_stats is None:
            raise ValueError("model.physics is set but the datamodule computed no feature statistics")
        from paraisite.models.physics import FEATURE_NAMES

        model_cfg["physics"] = {**model_cfg["physics"], "names": list(FEATURE_NAMES), **feature_stats}
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


def _metrics(logged: dict[str, Any], prefix: str) -> dict[str, float]:
    return {k: float(v) for k, v in logged.items() if k.startswith(prefix)}


def train(cfg: DictConfig) -> dict[str, Any]:
    """Fit one model and evaluate it; returns the content of ``metrics.json``.

    The config's cache and mirror apply to this run only (``registry.configured``).
    """
    check_run_config(cfg)
    with registry.configured(cfg.paths.get("cache_dir"), cfg.paths.get("mirror_dir")):
        return _train(cfg)


def _train(cfg: DictConfig) -> dict[str, Any]:
    if cfg.get("seeds"):
        return _train_ensemble(cfg)
    output_dir = Path(cfg.paths.output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    if cfg.get("threads"):
        torch.set_num_threads(int(cfg.threads))
    start = time.perf_counter()
    code = provenance()  # the code the run starts with (the checkout may change while it trains)
    check_pretrained_name(cfg)
    last = output_dir / "checkpoints" / "last.ckpt"
    resume = record.resumable(cfg) and last.is_file()
    record.mark_running(cfg)
    datamodule, model, initialised = prepare_run(cfg)
    loggers = instantiate_group(cfg.get("logger"))
    if resume:
        keep_logged_history(loggers)
    callbacks = instantiate_group(cfg.get("callbacks"))
    if not loggers:  # a learning-rate monitor needs somewhere to log
        callbacks = [c for c in callbacks if not isinstance(c, LearningRateMonitor)]
    trainer: pl.Trainer = instantiate(cfg.trainer, callbacks=callbacks, logger=loggers or False)
    trainer.fit(model, datamodule=datamodule, ckpt_path=str(last) if resume else None, weights_only=True)

    checkpoint = trainer.checkpoint_callback
    best_path = checkpoint.best_model_path if isinstance(checkpoint, ModelCheckpoint) else ""
    final = _metrics(trainer.callback_metrics, "val/")
    result = run_record(cfg, datamodule, initialised, trainer.current_epoch, final)
    if not trainer.is_global_zero:
        return {**result, **code}
    return finish_run(cfg, datamodule, best_path or None, model, {**result, **code}, start)


def keep_logged_history(loggers: list[Any]) -> list[Path]:
    """Move a resumed run's earlier CSV metrics aside as ``metrics.part<k>.csv``; returns the moved files.

    Lightning's CSVLogger deletes an existing ``metrics.csv`` when it starts, which would throw away the
    training curve of every epoch before the interruption.
    """
    moved = []
    for logger in loggers:
        if not isinstance(logger, CSVLogger):
            continue
        path = Path(logger.log_dir) / "metrics.csv"
        if path.is_file():
            part = len(list(path.parent.glob("metrics.part*.csv"))) + 1
            moved.append(path.rename(path.with_name(f"metrics.part{part}.csv")))
    return moved


def prepare_run(cfg: DictConfig) -> tuple[LTCDataModule, LTCRegressor, dict[str, Any]]:
    """Seed, data (set up), model and initial weights of one run, in the order every run uses."""
    pl.seed_everything(cfg.seed, workers=True)
    datamodule = build_datamodule(cfg)
    datamodule.setup()
    if datamodule.target_stats is None:
        raise RuntimeError(f"{datamodule.name}: no target statistics after setup()")
    model = build_model(cfg, datamodule.target_stats, datamodule.feature_stats)
    initialised = init_weights(model, cfg)
    return datamodule, model, initialised


def run_record(
    cfg: DictConfig, datamodule: LTCDataModule, initialised: dict[str, Any], epochs: int, final: dict[str, float]
) -> dict[str, Any]:
    """The part of ``metrics.json`` known when training ends (names as text, e.g. ``group=2024``)."""
    return {
        "status": "completed",
        "task_name": str(cfg.task_name),
        "seed": cfg.seed,
        "data": datamodule.describe(),
        "backbone": str(cfg.model.backbone.name),
        "protocol": str(cfg.protocol.name),
        "profile": str(cfg.profile.name),
        "group": str(cfg.group),
        "init": initialised,
        "epochs": epochs,
        "final": final,
        "config_sha256": record.config_sha256(cfg),
    }


def finish_run(
    cfg: DictConfig,
    datamodule: LTCDataModule,
    best_path: str | os.PathLike | None,
    model: LTCRegressor,
    result: dict[str, Any],
    start: float,
) -> dict[str, Any]:
    """Evaluate the best checkpoint (or ``model``) on its split and the cross datasets; write ``metrics.json``."""
    output_dir = Path(cfg.paths.output_dir)
    best = load_ltc_checkpoint(best_path)[0] if best_path else model.cpu()
    if best_path:  # training elements + latent vectors, for applicability flags at prediction time
        attach_applicability(best_path, best, datamodule.train_dataloader())
    result["best_checkpoint"] = str(best_path) if best_path else None
    scaling = best.hparams.label_scaling
    result["best"] = evaluate_on(best, datamodule, scaling)
    result["cross"] = {}
    for name in cfg.get("cross_eval") or []:
        other = build_datamodule(cfg, name)
        result["cross"][other.name] = evaluate_on(best, other, scaling)
    result["seconds"] = round(time.perf_counter() - start, 1)
    write_run_record(output_dir / "metrics.json", RunRecord(**result))
    log.info("best validation MAPE %.4f; metrics in %s", result["best"]["mape"], output_dir / "metrics.json")
    return result


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


def _train_ensemble(cfg: DictConfig) -> dict[str, Any]:
    """Train ``cfg.seeds`` as one vectorised ensemble; each member ends as the plain run of its seed would."""
    from paraisite.training.ensemble import EnsembleDataModule, EnsembleRegressor, MemberCheckpoint

    job_dir = Path(cfg.paths.output_dir)
    job_dir.mkdir(parents=True, exist_ok=True)
    if cfg.get("threads"):
        torch.set_num_threads(int(cfg.threads))
    if cfg.trainer.get("gradient_clip_val"):
        raise ValueError("trainer.gradient_clip_val couples the members' gradients; not allowed with seeds=[...]")
    if cfg.model.get("physics") is not None:
        raise ValueError(
            "physics features (+features=eos) have no stacked form: train seeds one by one (seeds=null seed=...)"
        )
    start = time.perf_counter()
    code = provenance()
    check_pretrained_name(cfg)
    last = job_dir / "checkpoints" / "last.ckpt"
    resume = record.resumable(cfg) and last.is_file()
    record.mark_running(cfg)
    configs = [member_config(cfg, seed) for seed in cfg.seeds]
    if len({int(seed) for seed in cfg.seeds}) != len(configs):
        raise ValueError(f"seeds must be distinct, got {list(cfg.seeds)}")
    prepared = [prepare_run(member) for member in configs]
    for member in configs:
        Path(member.paths.output_dir).mkdir(parents=True, exist_ok=True)
        (Path(member.paths.output_dir) / "config_resolved.yaml").write_text(OmegaConf.to_yaml(member, resolve=True))
    ensemble = EnsembleRegressor([model for _, model, _ in prepared])
    datamodule = EnsembleDataModule([dm for dm, _, _ in prepared])
    best_paths = [Path(member.paths.output_dir) / "checkpoints" / "best.ckpt" for member in configs]
    loggers = instantiate_group(cfg.get("logger"))
    if resume:
        keep_logged_history(loggers)
    callbacks = [c for c in instantiate_group(cfg.get("callbacks")) if not isinstance(c, ModelCheckpoint)]
    if not loggers:
        callbacks = [c for c in callbacks if not isinstance(c, LearningRateMonitor)]
    callbacks.append(MemberCheckpoint(best_paths, resume_path=last))
    # MemberCheckpoint writes every checkpoint; Lightning's default one would add a 52 MB copy per epoch.
    trainer: pl.Trainer = instantiate(
        cfg.trainer, callbacks=callbacks, logger=loggers or False, enable_checkpointing=False
    )
    trainer.fit(ensemble, datamodule=datamodule, ckpt_path=str(last) if resume else None, weights_only=True)

    records = []
    seeds = [int(s) for s in cfg.seeds]
    for m, (member, (dm, _, initialised)) in enumerate(zip(configs, prepared, strict=True)):
        val = ensemble.member_metrics["val"]
        final = {f"val/{k}": v for k, v in val[m].items()} if val else {}
        result = run_record(member, dm, initialised, trainer.current_epoch, final)
        result["ensemble"] = {"job_dir": str(job_dir), "seeds": seeds, "member": m}
        if trainer.is_global_zero:
            best = best_paths[m] if best_paths[m].is_file() else None
            result = finish_run(member, dm, best, ensemble.member_module(m), {**result, **code}, start)
        records.append(result)
    summary: dict[str, Any] = {"status": "completed", "config_sha256": record.config_sha256(cfg), "seeds": seeds}
    summary["best_mape"] = {str(r["seed"]): r.get("best", {}).get("mape") for r in records}
    summary["epochs"] = trainer.current_epoch
    summary["seconds"] = round(time.perf_counter() - start, 1)
    write_run_record(job_dir / "ensemble.json", RunRecord(**summary))
    if trainer.is_global_zero:  # the resume state (52 MB for 9 MEGNet members) is not needed once complete
        last.unlink(missing_ok=True)
    return {**summary, "members": records, "best": {"mape": _mean(summary["best_mape"].values())}}


def _mean(values: Any) -> float:
    values = [v for v in values if v is not None]
    return sum(values) / len(values) if values else math.nan


def run(cfg: DictConfig) -> float:
    """Task wrapper: records a failure in ``metrics.json`` and always closes wandb.

    In a multirun a failed job returns NaN so the sweep goes on; a single run re-raises.
    """
    output_dir = Path(cfg.paths.output_dir)
    done = record.completed(cfg)
    if done is not None:
        log.info("%s already holds this config's completed run; skipped", output_dir)
        return float((done.best or {}).get("mape", math.nan))
    try:
        result = train(cfg)
        return float(result.get("best", {}).get("mape", math.nan))
    except Exception as error:
        output_dir.mkdir(parents=True, exist_ok=True)
        message = f"{type(error).__name__}: {error}"
        record.mark_failed(cfg, message, traceback.format_exc())
        log.error("run failed: %s (details in %s)", message, record.status_path(cfg))
        if _in_multirun():
            return math.nan
        raise
    finally:
        _finish_wandb()


def _in_multirun() -> bool:
    return HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN


def _finish_wandb() -> None:
    try:
        import wandb
    except ImportError:
        return
    if wandb.run is not None:
        wandb.finish()


@hydra.main(version_base="1.3", config_path=str(config_dir()), config_name="train")
def main(cfg: DictConfig) -> float:
    """``paraisite-train``: compose the config, save it resolved, train and evaluate."""
    output_dir = Path(cfg.paths.output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    (output_dir / "config_resolved.yaml").write_text(OmegaConf.to_yaml(cfg, resolve=True))
    return run(cfg)


if __name__ == "__main__":
    main()
