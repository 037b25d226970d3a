"""The status of a run directory: which config it ran, whether it completed, where to resume.

A run writes ``status: running`` with the hash of its resolved config before it trains, and its full
record (``status: completed``) when it ends, so a killed run is recognisable as such. Running the same
config again skips a completed run and resumes an interrupted one from its ``last.ckpt``. The records are
:class:`paraisite.record.RunRecord` objects, read and written only through that module.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, cast

from omegaconf import DictConfig, OmegaConf

from paraisite.record import RunRecord, RunRecordError, process_alive, read_run_record, write_run_record
from paraisite.safety import exclusive_lock

#: Where a job's lock is kept, in its directory (left in place; the kernel releases it when the holder dies).
LOCK_NAME = ".paraisite-train.lock"
#: Environment variables that name a process other than a job's first one: DDP ranks (Lightning, torchrun) and the
#: other tasks or nodes of a SLURM job. Such a process joins the job rank 0 holds the lock of.
RANK_VARIABLES = ("LOCAL_RANK", "RANK", "NODE_RANK", "GROUP_RANK", "SLURM_PROCID")

#: Settings that say where and how fast a run goes, not what it computes (left out of the hash).
NOT_HASHED = ("paths", "threads", "logger", "callbacks", "hydra", "group", "tags")


def config_sha256(cfg: DictConfig) -> str:
    """sha256 of the resolved config without :data:`NOT_HASHED` and the trainer's output folder."""
    resolved = cast(dict[str, Any], OmegaConf.to_container(cfg, resolve=True))
    kept = {key: value for key, value in resolved.items() if key not in NOT_HASHED}
    if isinstance(kept.get("trainer"), dict):
        kept["trainer"] = {k: v for k, v in kept["trainer"].items() if k != "default_root_dir"}
    return hashlib.sha256(json.dumps(kept, sort_keys=True, default=str).encode()).hexdigest()


def status_path(cfg: DictConfig) -> Path:
    """``ensemble.json`` of an ensemble job, ``metrics.json`` of a single run."""
    return Path(cfg.paths.output_dir) / ("ensemble.json" if cfg.get("seeds") else "metrics.json")


def read_status(path: Path) -> RunRecord | None:
    """The record at ``path``, or ``None`` when there is none or it cannot be read (the run starts afresh)."""
    try:
        return read_run_record(path)
    except (FileNotFoundError, RunRecordError):
        return None


def completed(cfg: DictConfig) -> RunRecord | None:
    """The completed record of this exact config in its directory, if there is one."""
    record = read_status(status_path(cfg))
    if record and record.status == "completed" and record.config_sha256 == config_sha256(cfg):
        return record
    return None


def running_elsewhere(cfg: DictConfig) -> RunRecord | None:
    """The ``running`` record of this directory when another live process wrote it (it is training the job now).

    Not this process, and never for a rank > 0 (:func:`joins_another_rank`): it joins the job its rank 0 has
    already marked running (Lightning's DDP launcher, torchrun, SLURM tasks).
    """
    if joins_another_rank():
        return None
    record = read_status(status_path(cfg))
    if not record or record.status != "running" or record.pid == os.getpid():
        return None
    return record if process_alive(record.pid, record.started) else None


def joins_another_rank() -> bool:
    """Whether this process is a rank > 0 of a distributed job (see :data:`RANK_VARIABLES`)."""
    return any(os.environ.get(variable, "0").strip() not in ("", "0") for variable in RANK_VARIABLES)


@contextmanager
def job_lock(cfg: DictConfig) -> Iterator[str | None]:
    """Hold an exclusive lock on the job directory's :data:`LOCK_NAME` while this process trains the job.

    Yields ``None`` when it holds the lock (or is a rank > 0, which trains with rank 0), else the pid the holder
    wrote ("" if unknown). The lock is a :func:`paraisite.safety.exclusive_lock`: two commands started at the same
    moment cannot both pass the check of the record and train the job twice over the same files, and a killed
    holder releases it, so its job resumes.
    """
    if joins_another_rank():
        yield None
        return
    with exclusive_lock(Path(cfg.paths.output_dir) / LOCK_NAME) as holder:
        yield holder


def resumable(cfg: DictConfig) -> bool:
    """Whether the directory holds an interrupted run of this exact config (``running`` or ``failed``)."""
    record = read_status(status_path(cfg))
    return bool(record and record.status != "completed" and record.config_sha256 == config_sha256(cfg))


def _seeds(cfg: DictConfig) -> list[int] | None:
    return [int(s) for s in cfg.seeds] if cfg.get("seeds") else None


def mark_running(cfg: DictConfig) -> None:
    """Record that this config is being trained here (replaced by the full record when it ends)."""
    seeds = _seeds(cfg)
    record = RunRecord(
        status="running",
        config_sha256=config_sha256(cfg),
        pid=os.getpid(),
        started=time.time(),
        seeds=seeds,
        seed=None if seeds else cfg.get("seed"),
    )
    write_run_record(status_path(cfg), record)


def mark_failed(cfg: DictConfig, error: str, traceback: str) -> None:
    """Record that the run of this config failed, with its error."""
    record = RunRecord(
        status="failed",
        seed=cfg.get("seed"),
        seeds=_seeds(cfg),
        error=error,
        traceback=traceback,
        config_sha256=config_sha256(cfg),
    )
    write_run_record(status_path(cfg), record)
