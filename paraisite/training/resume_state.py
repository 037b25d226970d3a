"""The resume state of interrupted runs, saved to and restored from a folder that can be committed.

A full-budget job can outlast the machine it runs on. What resumes it exactly is small next to a run directory:
the job's record (``ensemble.json`` or ``metrics.json``, with its config hash), ``checkpoints/last.ckpt`` (weights,
optimiser moments, schedule, epoch, best scores), each member's best checkpoint and resolved config, and the CSV
curve logged so far. :func:`save_resume_state` copies exactly that for every interrupted run of a sweep;
:func:`restore_resume_state` puts it back, and never over a run that got further or finished.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

from paraisite.checkpoints import load_checkpoint
from paraisite.record import RunRecord, process_alive, run_label
from paraisite.safety import atomic_write
from paraisite.training.record import read_status

#: Record files of a job: an ensemble job's, a single run's.
RECORD_FILES = ("ensemble.json", "metrics.json")


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
    """The epoch a ``last.ckpt`` resumes at (loaded weights-only)."""
    return int(load_checkpoint(path)["epoch"])


def _job_files(job: Path, record: RunRecord) -> list[Path]:
    """What resumes ``job`` exactly: record, last.ckpt, curve, and its members' best checkpoints and configs."""
    files = [job / name for name in RECORD_FILES if (job / name).is_file()]
    files += [
        job / "checkpoints" / "last.ckpt",
        job / "config_resolved.yaml",
        *sorted((job / "csv").glob("metrics*.csv")),
    ]
    if record.seeds:  # ensemble: the members are the job's siblings seed<k>
        for seed in record.seeds:
            member = job.parent / run_label(seed)
            files += [member / "checkpoints" / "best.ckpt", member / "config_resolved.yaml"]
    else:
        files += sorted((job / "checkpoints").glob("*.ckpt"))
    return [path for path in dict.fromkeys(files) if path.is_file()]


def interrupted_jobs(sweep: Path) -> list[tuple[Path, RunRecord]]:
    """Jobs of a sweep that did not complete and have a ``last.ckpt`` to resume from."""
    jobs = []
    for last in sorted(sweep.glob("**/checkpoints/last.ckpt")):
        job = last.parent.parent
        record = _record(job)
        if record is not None and record.status != "completed":
            jobs.append((job, record))
    return jobs


def _copy(source: Path, target: Path) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(target, lambda tmp: shutil.copyfile(source, tmp))


def save_resume_state(sweep: Path, destination: Path) -> list[SavedJob]:
    """Copy the resume state of every interrupted run of ``sweep`` into ``destination`` (same relative paths).

    Raises:
        ResumeStateError: a run is still training here (its files could change while they are copied).
    """
    saved = []
    for job, record in interrupted_jobs(sweep):
        if record.status == "running" and process_alive(record.pid):
            raise ResumeStateError(
                f"{job}: still training (pid {record.pid}); stop it first (it resumes from its last.ckpt)"
            )
        files = _job_files(job, record)
        for path in files:
            _copy(path, destination / path.relative_to(sweep))
        epoch = checkpoint_epoch(job / "checkpoints" / "last.ckpt")
        saved.append(SavedJob(job.relative_to(sweep), epoch, tuple(p.relative_to(sweep) for p in files)))
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
        epoch = checkpoint_epoch(job / "checkpoints" / "last.ckpt")
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
            _copy(path, sweep / path.relative_to(state))
        restored.append(SavedJob(relative, epoch, tuple(p.relative_to(state) for p in files)))
    return restored, skipped
