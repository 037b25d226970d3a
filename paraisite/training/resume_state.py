"""The resume state of interrupted runs, saved to and restored from a folder that can be committed.

A full-budget job can outlast the machine it runs on. What resumes it exactly is small next to a run directory:
the job's record (``ensemble.json`` or ``metrics.json``, with its config hash), ``checkpoints/last.ckpt`` (weights,
optimiser moments, schedule, epoch, best scores), each member's best checkpoint and resolved config, and the CSV
curve logged so far. :func:`save_resume_state` copies exactly that for every interrupted run of a sweep;
:func:`restore_resume_state` puts it back, and never over a run that got further or finished.

In the state folder each checkpoint is stored xz-compressed (``last.ckpt.xz``, ``best.ckpt.xz``): a 9-member MEGNet
AFLOW job's ``last.ckpt`` goes from 51.8 to about 35 MB (Adam's moments compress well), its members' best checkpoints
by about 10 %. Restoring decompresses them (bounded like any checkpoint); states saved uncompressed restore as well.
"""

from __future__ import annotations

import lzma
import shutil
from dataclasses import dataclass
from pathlib import Path

from paraisite.checkpoints import load_checkpoint
from paraisite.record import RunRecord, process_alive, run_label
from paraisite.safety import MAX_CHECKPOINT_BYTES, atomic_write, read_limited
from paraisite.training.record import read_status

#: Record files of a job: an ensemble job's, a single run's.
RECORD_FILES = ("ensemble.json", "metrics.json")
#: Suffix of a checkpoint compressed in a state folder.
COMPRESSED = ".xz"


class ResumeStateError(RuntimeError):
    """A run whose state cannot be saved or restored safely; the message names it and says why."""


@dataclass(frozen=True)
class SavedJob:
    """One interrupted run in a resume-state folder: its directory (relative to the sweep) and epoch."""

    relative: Path
    epoch: int
    files: tuple[Path, ...]


def _record(job: Path) -> RunRecord | None:
    """The job's record (an ensemble's or a single run's); ``None`` when it has none or it cannot be read."""
    return next((read_status(job / name) for name in RECORD_FILES if (job / name).is_file()), None)


def checkpoint_epoch(path: Path) -> int:
    """The epoch a ``last.ckpt`` (or ``last.ckpt.xz``) resumes at (loaded weights-only)."""
    return int(load_checkpoint(path)["epoch"])


def _stored(path: Path) -> Path:
    """``path``, or its compressed twin ``<path>.xz`` where only that exists (a checkpoint in a state folder)."""
    twin = path.with_name(path.name + COMPRESSED)
    return twin if not path.is_file() and twin.is_file() else path


def _last_checkpoint(job: Path) -> Path:
    return _stored(job / "checkpoints" / "last.ckpt")


def _job_files(job: Path, record: RunRecord) -> list[Path]:
    """What resumes ``job`` exactly: record, last.ckpt, curve, and its members' best checkpoints and configs."""
    files = [job / name for name in RECORD_FILES if (job / name).is_file()]
    files += [
        _last_checkpoint(job),
        job / "config_resolved.yaml",
        *sorted((job / "csv").glob("metrics*.csv")),
    ]
    if record.seeds:  # ensemble: the members are the job's siblings seed<k>
        for seed in record.seeds:
            member = job.parent / run_label(seed)
            files += [_stored(member / "checkpoints" / "best.ckpt"), member / "config_resolved.yaml"]
    else:
        files += sorted((job / "checkpoints").glob("*.ckpt")) + sorted((job / "checkpoints").glob("*.ckpt.xz"))
    return [path for path in dict.fromkeys(files) if path.is_file()]


def interrupted_jobs(sweep: Path) -> list[tuple[Path, RunRecord]]:
    """Jobs of a sweep that did not complete and have a ``last.ckpt`` to resume from."""
    jobs = []
    lasts = [*sweep.glob("**/checkpoints/last.ckpt"), *sweep.glob("**/checkpoints/last.ckpt" + COMPRESSED)]
    for job in sorted({last.parent.parent for last in lasts}):
        record = _record(job)
        if record is not None and record.status != "completed":
            jobs.append((job, record))
    return jobs


def _copy(source: Path, target: Path) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(target, lambda tmp: shutil.copyfile(source, tmp))


def _save(source: Path, target: Path) -> Path:
    """Copy ``source`` to ``target``, a checkpoint compressed (``<target>.xz``, replacing an uncompressed copy)."""
    if source.suffix != ".ckpt":
        _copy(source, target)
        return target
    packed = target.with_name(target.name + COMPRESSED)
    packed.parent.mkdir(parents=True, exist_ok=True)
    data = lzma.compress(source.read_bytes(), format=lzma.FORMAT_XZ, check=lzma.CHECK_CRC64)
    atomic_write(packed, lambda tmp: tmp.write_bytes(data))
    target.unlink(missing_ok=True)  # saved uncompressed before; one copy of each file
    return packed


def _restore(source: Path, target: Path) -> None:
    """Copy ``source`` from a state folder to ``target``, decompressing a ``.ckpt.xz`` to ``.ckpt``."""
    if not source.name.endswith(".ckpt" + COMPRESSED):
        _copy(source, target)
        return
    data = read_limited(source, MAX_CHECKPOINT_BYTES, what="checkpoint", compressed=(COMPRESSED,))
    unpacked = target.with_name(target.name[: -len(COMPRESSED)])
    unpacked.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(unpacked, lambda tmp: tmp.write_bytes(data))


def save_resume_state(sweep: Path, destination: Path) -> list[SavedJob]:
    """Copy the resume state of every interrupted run of ``sweep`` into ``destination`` (same relative paths).

    Raises:
        ResumeStateError: a run is still training here (its files could change while they are copied).
    """
    saved = []
    for job, record in interrupted_jobs(sweep):
        if record.status == "running" and process_alive(record.pid, record.started):
            raise ResumeStateError(
                f"{job}: still training (pid {record.pid}); stop it first (it resumes from its last.ckpt)"
            )
        written = [_save(path, destination / path.relative_to(sweep)) for path in _job_files(job, record)]
        epoch = checkpoint_epoch(job / "checkpoints" / "last.ckpt")
        saved.append(SavedJob(job.relative_to(sweep), epoch, tuple(p.relative_to(destination) for p in written)))
    return saved


def restore_resume_state(state: Path, sweep: Path) -> tuple[list[SavedJob], list[str]]:
    """Copy a saved resume state back into ``sweep``; returns the restored jobs and why others were skipped.

    A job is skipped, not overwritten, when the sweep already holds it further on: completed, or with a
    ``last.ckpt`` at the same or a later epoch.
    """
    restored, skipped = [], []
    for job, record in interrupted_jobs(state):
        relative = job.relative_to(state)
        target = sweep / relative
        epoch = checkpoint_epoch(_last_checkpoint(job))
        current = _record(target)
        if current is not None and current.status == "completed":
            skipped.append(f"{relative}: completed in {sweep}; nothing restored")
            continue
        if (target / "checkpoints" / "last.ckpt").is_file():
            there = checkpoint_epoch(target / "checkpoints" / "last.ckpt")
            if there >= epoch:
                skipped.append(f"{relative}: {sweep} is at epoch {there}, the saved state at {epoch}; kept the newer")
                continue
        files = _job_files(job, record)
        for path in files:
            _restore(path, sweep / path.relative_to(state))
        restored.append(SavedJob(relative, epoch, tuple(p.relative_to(state) for p in files)))
    return restored, skipped
