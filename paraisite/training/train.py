"""Hydra entry point ``paraisite-train``, wiring only.

Compose the run (:mod:`paraisite.training.builders`), fit it, evaluate the best checkpoint on its split and the
cross datasets, write its record.
"""

from __future__ import annotations

import logging
import math
import os
import sys
import time
import traceback
from pathlib import Path
from typing import Any

import hydra
import pytorch_lightning as pl
import torch
from hydra.core.hydra_config import HydraConfig
from hydra.errors import CompactHydraException
from hydra.types import RunMode
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from pytorch_lightning.callbacks import LearningRateMonitor, ModelCheckpoint
from pytorch_lightning.utilities.exceptions import SIGTERMException

from paraisite.checkpoints import add_checkpoint_entries
from paraisite.config import config_dir
from paraisite.cpus import set_torch_threads
from paraisite.data import registry
from paraisite.data.datamodule import LTCDataModule
from paraisite.evaluation.applicability import APPLICABILITY_KEY, collect_reference
from paraisite.evaluation.cross import evaluate_on, predict_loader
from paraisite.evaluation.holdout import FIDELITIES_KEY, holdout_result
from paraisite.evaluation.metrics import DISTORTED_SOURCES_KEY, distorted_sources, final_problem
from paraisite.evaluation.plots import CURVES_NAME, PREDICTED_COLUMN, TRUE_COLUMN, VAL_PREDICTIONS_NAME
from paraisite.models.regressor import LTCRegressor, load_ltc_checkpoint
from paraisite.record import RunRecord, write_run_record
from paraisite.training import record
from paraisite.training.builders import (
    build_datamodule,
    build_loggers,
    check_pretrained_name,
    instantiate_group,
    member_config,
    prepare_run,
    provenance,
)
from paraisite.training.checks import check_command_line, check_run_config
from paraisite.training.curves import TrainingCurves
from paraisite.training.last_checkpoint import LastEpochCheckpoint
from paraisite.training.noise import quiet_known_noise

log = logging.getLogger(__name__)

#: Exit status of a run stopped by SIGTERM (128 + 15), after its record says so; it resumes when run again.
SIGTERM_STATUS = 143


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
    log.info("torch threads: %d", set_torch_threads(cfg.get("threads")))
    start = time.perf_counter()
    code = provenance()  # the code the run starts with (the checkout may change while it trains)
    check_pretrained_name(cfg)
    last = output_dir / "checkpoints" / "last.ckpt"
    resume = record.resumable(cfg) and last.is_file()
    record.mark_running(cfg)
    datamodule, model, initialised = prepare_run(cfg)
    loggers = build_loggers(cfg, resume)
    callbacks = instantiate_group(cfg.get("callbacks"))
    if not loggers:  # a learning-rate monitor needs somewhere to log
        callbacks = [c for c in callbacks if not isinstance(c, LearningRateMonitor)]
    callbacks.append(TrainingCurves(output_dir / CURVES_NAME, title=_curves_title(cfg)))
    if any(isinstance(c, ModelCheckpoint) and c.save_last for c in callbacks):  # every epoch, not only improving ones
        callbacks.append(LastEpochCheckpoint(last))
    trainer: pl.Trainer = instantiate(cfg.trainer, callbacks=callbacks, logger=loggers or False)
    trainer.fit(model, datamodule=datamodule, ckpt_path=str(last) if resume else None, weights_only=True)

    checkpoint = trainer.checkpoint_callback
    best_path = checkpoint.best_model_path if isinstance(checkpoint, ModelCheckpoint) else ""
    final = _metrics(trainer.callback_metrics, "val/")
    result = run_record(cfg, datamodule, initialised, trainer.current_epoch, final)
    if not trainer.is_global_zero:
        return {**result, **code}
    return finish_run(cfg, datamodule, best_path or None, model, {**result, **code}, start)


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
    scaling = best.hparams.label_scaling
    if best_path:  # for prediction: applicability reference (training elements + latents), distorted label sources
        reference = collect_reference(best, datamodule.train_dataloader())
        distorted = distorted_sources(scaling, datamodule.source_stats, best.hparams.target_stats)
        entries = {APPLICABILITY_KEY: reference.to_payload(), DISTORTED_SOURCES_KEY: distorted}
        if datamodule.fidelities is not None:
            entries[FIDELITIES_KEY] = list(datamodule.fidelities)
        add_checkpoint_entries(best_path, entries)
    result["best_checkpoint"] = str(best_path) if best_path else None
    result["best"] = evaluate_on(best, datamodule, scaling)
    write_val_predictions(predict_loader(best, datamodule.val_dataloader(), scaling), output_dir / VAL_PREDICTIONS_NAME)
    result["cross"] = {}
    for name in cfg.get("cross_eval") or []:
        other = build_datamodule(cfg, name)
        result["cross"][other.name] = evaluate_on(best, other, scaling)
    if datamodule.holdout is not None:
        result["holdout"] = holdout_result(best, datamodule, output_dir)
    result["seconds"] = round(time.perf_counter() - start, 1)
    best_mape = result["best"].get("mape")
    if not isinstance(best_mape, (int, float)) or not math.isfinite(best_mape):
        raise DivergedRunError(
            f"{output_dir}: the best validation MAPE is {best_mape}, not a finite number: the run diverged "
            f"(model.optimizer.lr={cfg.model.optimizer.get('lr')} too large?); recorded as failed"
        )
    problem = final_problem(result.get("final") or {})
    if problem:
        log.warning("%s: %s at the last epoch; its best checkpoint was scored", output_dir, problem)
    write_run_record(output_dir / "metrics.json", RunRecord(**result))
    log.info("best validation MAPE %.4f; metrics in %s", result["best"]["mape"], output_dir / "metrics.json")
    return result


def _curves_title(cfg: DictConfig) -> str:
    return f"{cfg.task_name} {cfg.data.name} ({cfg.model.backbone.name})"


def write_val_predictions(predictions: dict[str, Any], path: Path) -> Path:
    """The validation split's true and predicted TC (W/mK), one row per structure in loader order (for parity plots).

    ``reference_tc_W_per_mK`` (what ``protocol=paper`` scores against) is added where it differs from the true TC.
    """
    columns = {TRUE_COLUMN: predictions["true_tc"], PREDICTED_COLUMN: predictions["pred_tc"]}
    if not torch.equal(predictions["reference_tc"], predictions["true_tc"]):
        columns["reference_tc_W_per_mK"] = predictions["reference_tc"]
    lines = [",".join(columns)]
    lines += [",".join(f"{float(v):.6g}" for v in row) for row in zip(*columns.values(), strict=True)]
    path.write_text("\n".join(lines) + "\n")
    return path


def _train_ensemble(cfg: DictConfig) -> dict[str, Any]:
    """Train ``cfg.seeds`` as one vectorised ensemble; each member ends as the plain run of its seed would."""
    from paraisite.training.ensemble import EnsembleDataModule, EnsembleRegressor, MemberCheckpoint

    job_dir = Path(cfg.paths.output_dir)
    job_dir.mkdir(parents=True, exist_ok=True)
    log.info("torch threads: %d", set_torch_threads(cfg.get("threads")))
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
    loggers = build_loggers(cfg, resume)
    callbacks = [c for c in instantiate_group(cfg.get("callbacks")) if not isinstance(c, ModelCheckpoint)]
    if not loggers:
        callbacks = [c for c in callbacks if not isinstance(c, LearningRateMonitor)]
    names = [f"seed {int(seed)}" for seed in cfg.seeds]
    metric = str(cfg.get("select_metric") or "mape")
    callbacks.append(MemberCheckpoint(best_paths, resume_path=last, names=names, metric=metric))
    callbacks.append(TrainingCurves(job_dir / CURVES_NAME, names=names, title=_curves_title(cfg)))
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


class DivergedRunError(RuntimeError):
    """The best checkpoint's validation metric is not a finite number: the run is recorded as failed."""


class RunInProgressError(RuntimeError):
    """Another live process is training this job; nothing was written."""


def run(cfg: DictConfig) -> float:
    """Task wrapper: skips a completed job and one another process trains, records a failure, closes wandb.

    The job's lock (:func:`paraisite.training.record.job_lock`) is held from the check of its record to its end. In a
    multirun a failed or busy job returns NaN so the sweep goes on; a single run re-raises or raises
    :class:`RunInProgressError`.
    """
    output_dir = Path(cfg.paths.output_dir)
    with record.job_lock(cfg) as holder:
        done = record.completed(cfg)
        if done is not None:
            log.info("%s already holds this config's completed run; skipped", output_dir)
            return float((done.best or {}).get("mape", math.nan))
        reason = None
        if holder is not None:
            reason = f"process {holder or 'unknown'} holds its {record.LOCK_NAME}"
        elif (busy := record.running_elsewhere(cfg)) is not None:  # a live process that wrote it without the lock
            reason = f"process {busy.pid} wrote it running in {record.status_path(cfg).name}"
        if reason is not None:  # resuming it here would train one job twice over the same files
            message = f"{output_dir} is being trained by another process ({reason})"
            if not _in_multirun():
                raise RunInProgressError(f"{message}; run it again when that process has ended")
            log.warning("%s; skipped: re-run the sweep when that process has ended", message)
            return math.nan
        return _train_recording_failure(cfg, output_dir)


def _train_recording_failure(cfg: DictConfig, output_dir: Path) -> float:
    """:func:`train`; a failure is recorded in the job's record (and re-raised outside a multirun)."""
    try:
        result = train(cfg)
        return float(result.get("best", {}).get("mape", math.nan))
    except SIGTERMException:  # Lightning stops the loop on SIGTERM with a SystemExit that would exit 0
        message = f"stopped by SIGTERM; resumable from {output_dir / 'checkpoints' / 'last.ckpt'} (run it again)"
        record.mark_failed(cfg, message, "")
        log.error("run %s", message)
        raise SystemExit(SIGTERM_STATUS) from None
    except Exception as error:
        output_dir.mkdir(parents=True, exist_ok=True)
        message = f"{type(error).__name__}: {error}"
        record.mark_failed(cfg, message, traceback.format_exc())
        if _in_multirun():
            log.error("run failed: %s (details in %s)", message, record.status_path(cfg))
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


class TrainingError(CompactHydraException):
    """A failed single run, as one message: Hydra prints it without a traceback (``HYDRA_FULL_ERROR=1`` shows it)."""


def one_message(error: Exception, cfg: DictConfig) -> TrainingError:
    """The failure of a single run as one message: what failed and where it is recorded.

    Hydra adds the overrides before it, and how to see the traceback (``HYDRA_FULL_ERROR=1``) after it.
    """
    where = record.status_path(cfg)
    recorded = f"; recorded in {where}" if where.is_file() else ""
    return TrainingError(f"paraisite-train: error: {type(error).__name__}: {error}{recorded}")


#: Hydra's switch for full tracebacks; paraisite-train follows it.
FULL_ERROR_VARIABLE = "HYDRA_FULL_ERROR"


def main() -> Any:
    """``paraisite-train``: check every job's config (:func:`check_command_line`), then let Hydra run them.

    A bad value or a misspelt key exits with status 2 before anything is written or loaded.
    """
    problem = check_command_line(sys.argv[1:])
    if problem is not None:
        print(f"paraisite-train: error: {problem}", file=sys.stderr)
        sys.exit(2)
    return hydra_main()


@hydra.main(version_base="1.3", config_path=str(config_dir()), config_name="train")
def hydra_main(cfg: DictConfig) -> float:
    """Hydra's task: save the composed config resolved, train and evaluate.

    A failure ends the run with one message and exit status 1; ``HYDRA_FULL_ERROR=1`` shows the traceback instead.
    """
    quiet_known_noise()
    output_dir = Path(cfg.paths.output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    (output_dir / "config_resolved.yaml").write_text(OmegaConf.to_yaml(cfg, resolve=True))
    try:
        return run(cfg)
    except Exception as error:
        if os.environ.get(FULL_ERROR_VARIABLE) == "1":
            raise
        raise one_message(error, cfg) from None


if __name__ == "__main__":
    main()
