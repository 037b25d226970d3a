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
import os
import shutil
import stat
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from paraisite.checkpoints import CheckpointTrustError, load_checkpoint
from paraisite.record import RunRecord, RunRecordError, process_alive, read_run_record, run_label
from paraisite.safety import UnsafeFileError, atomic_write, check_regular_file, configured_limit, exclusive_lock
from paraisite.training.record import LOCK_NAME, read_status

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


#: Largest file a state may restore, checkpoints decompressed (``PARAISITE_MAX_STATE_BYTES``): a 9-member MEGNet
#: AFLOW job's last.ckpt is 52 MB.
MAX_STATE_BYTES = 1024**3
#: Largest record, config or curve file in a state folder.
MAX_STATE_TEXT_BYTES = 64 * 1024**2
#: Bytes decompressed at a time.
_CHUNK = 1024**2


@dataclass
class RestoreReport:
    """What :func:`restore_resume_state` did: jobs restored, skipped (further on here) and refused (with why)."""

    restored: list[SavedJob]
    skipped: list[str]
    refused: list[str]


def check_state_tree(state: Path) -> None:
    """Refuse a state folder holding links or anything but folders and regular files (nothing is followed).

    Raises:
        ResumeStateError: naming the first such entry.
    """
    if state.is_symlink():
        raise ResumeStateError(f"{state}: a link; give the folder itself (links are refused, nothing was restored)")
    if not state.is_dir():
        raise ResumeStateError(f"{state}: no such folder (a folder written by `paraisite state save`)")
    for folder, names, files in os.walk(state, followlinks=False):
        for name in [*names, *files]:
            path = Path(folder) / name
            mode = path.lstat().st_mode
            if stat.S_ISLNK(mode):
                raise ResumeStateError(f"{path}: a link in the state folder; nothing was restored (links are refused)")
            if not (stat.S_ISDIR(mode) or stat.S_ISREG(mode)):
                raise ResumeStateError(f"{path}: not a regular file (a FIFO, socket or device); nothing was restored")


def state_jobs(state: Path) -> list[tuple[Path, RunRecord]]:
    """The interrupted jobs of a state folder; a last.ckpt beside a record that cannot be read is an error.

    Raises:
        ResumeStateError: a job's record is missing or unreadable, or the state holds no interrupted job.
    """
    jobs = []
    lasts = [*state.glob("**/checkpoints/last.ckpt"), *state.glob("**/checkpoints/last.ckpt" + COMPRESSED)]
    for job in sorted({last.parent.parent for last in lasts}):
        names = [name for name in RECORD_FILES if (job / name).is_file()]
        if not names:
            raise ResumeStateError(f"{job}: a last.ckpt without a record ({' or '.join(RECORD_FILES)})")
        try:
            check_regular_file(job / names[0], MAX_STATE_TEXT_BYTES, what="record")
            record = read_run_record(job / names[0])
        except (RunRecordError, UnsafeFileError) as error:
            raise ResumeStateError(f"cannot restore: {error}") from None
        if record.status != "completed":
            jobs.append((job, record))
    if not jobs:
        raise ResumeStateError(f"{state}: no interrupted job with a last.ckpt (a folder written by `state save`?)")
    return jobs


def _unpack(source: Path, target: Path, limit: int) -> None:
    """``source`` (a ``.xz`` decompressed) written to ``target``, refused past ``limit`` bytes."""
    try:
        check_regular_file(source, limit, what="state file")
    except UnsafeFileError as error:
        raise ResumeStateError(f"{error}; nothing was restored") from None
    packed = source.name.endswith(COMPRESSED)
    opener = lzma.open if packed else open
    written = 0
    try:
        with opener(source, "rb") as stream, open(target, "wb") as out:
            while chunk := stream.read(_CHUNK):
                written += len(chunk)
                if written > limit:
                    raise ResumeStateError(
                        f"{source}: decompresses to more than {limit} bytes (PARAISITE_MAX_STATE_BYTES); "
                        "nothing was restored"
                    )
                out.write(chunk)
    except (lzma.LZMAError, EOFError) as error:
        raise ResumeStateError(f"{source}: not a readable xz file ({error}); nothing was restored") from None


def _rebase(checkpoint: Path, job: Path, *, single: bool) -> int:
    """Check a ``last.ckpt``'s epoch; for a ``single`` run, point its checkpoint-callback paths at ``job``'s folder.

    Returns the epoch.

    Lightning's ModelCheckpoint forgets its best score when the folder it saved from differs from the one it
    resumes in, and then overwrites ``best.ckpt`` with the next epoch, however worse.

    Raises:
        ResumeStateError: the epoch written in the checkpoint disagrees with its own loop counters.
    """
    content = load_checkpoint(checkpoint)
    epoch = content.get("epoch")
    progress = (content.get("loops") or {}).get("fit_loop", {}).get("epoch_progress", {}).get("current", {})
    if not isinstance(epoch, int) or epoch < 0 or epoch != progress.get("completed", epoch):
        raise ResumeStateError(
            f"{checkpoint}: its epoch {epoch!r} disagrees with its loop counters ({progress}); nothing was restored"
        )
    folder = os.path.realpath(job / "checkpoints")
    changed = False
    for callback in (content.get("callbacks") or {}).values() if single else ():
        old = callback.get("dirpath") if isinstance(callback, dict) else None
        if not isinstance(old, str) or old == folder:
            continue

        def moved(path: Any, old: str = old) -> Any:
            return folder + path[len(old) :] if isinstance(path, str) and path.startswith(old) else path

        for key in ("dirpath", "best_model_path", "kth_best_model_path", "last_model_path"):
            if key in callback:
                callback[key] = moved(callback[key])
        if isinstance(callback.get("best_k_models"), dict):
            callback["best_k_models"] = {moved(key): value for key, value in callback["best_k_models"].items()}
        changed = True
    if changed:
        torch.save(content, checkpoint)
    return epoch


def _target_problem(target: Path, record: RunRecord, epoch: int) -> tuple[str, str] | None:
    """(``"skipped"`` or ``"refused"``, why) when ``target`` must not receive the saved job; ``None`` if it may."""
    names = [name for name in RECORD_FILES if (target / name).is_file()]
    if names:
        try:
            current = read_run_record(target / names[0])
        except RunRecordError as error:
            return "refused", f"{error.path} cannot be read ({error.problem}); not overwritten"
        if current.status == "completed":
            return "skipped", "completed there; nothing restored"
        if current.status == "running" and process_alive(current.pid, current.started):
            return "refused", f"process {current.pid} is training it there (its record says running)"
        if current.config_sha256 != record.config_sha256:
            return "refused", (
                f"it holds another config there (sha256 {str(current.config_sha256)[:12]}, the state "
                f"{str(record.config_sha256)[:12]}); restore into another sweep folder"
            )
    if (target / "checkpoints" / "last.ckpt").is_file():
        there = checkpoint_epoch(target / "checkpoints" / "last.ckpt")
        if there >= epoch:
            return "skipped", f"{target.parent} is at epoch {there}, the saved state at {epoch}; kept the newer"
    return None


def restore_resume_state(state: Path, sweep: Path) -> RestoreReport:
    """Put a saved resume state back into ``sweep``, each job whole or not at all.

    The state folder may hold only folders and regular files (:func:`check_state_tree`), and every job a readable
    record (:func:`state_jobs`). For each job, under its training lock: a job being trained, or holding another
    config, is refused; one completed or further on is skipped. Its files are then unpacked into a temporary folder
    (each bounded by ``PARAISITE_MAX_STATE_BYTES``), checked (checkpoints load weights-only, the epoch agrees with
    the loop counters, a single run's checkpoint callback is pointed at its new folder) and only then moved into
    place.

    Raises:
        ResumeStateError: the state folder is missing, empty, holds a link or non-regular file, or a job of it is
            malformed or corrupt (nothing of that job was written).
    """
    check_state_tree(state)
    limit = int(configured_limit("PARAISITE_MAX_STATE_BYTES", MAX_STATE_BYTES))
    report = RestoreReport([], [], [])
    for job, record in state_jobs(state):
        relative = job.relative_to(state)
        target = sweep / relative
        new_folders = [folder for folder in (target, *target.parents) if not folder.exists()]
        epoch = None
        try:
            with exclusive_lock(target / LOCK_NAME) as holder:
                if holder is not None:
                    report.refused.append(f"{relative}: process {holder or 'unknown'} is training it in {sweep}")
                    continue
                epoch = _staged_restore(job, record, state, sweep, limit, report)
                if epoch is not None:
                    files = _job_files(job, record)
                    report.restored.append(SavedJob(relative, epoch, tuple(p.relative_to(state) for p in files)))
        finally:
            if epoch is None:  # nothing restored: the folders made for it (and its lock file) go again
                _remove_new_folders(new_folders, target / LOCK_NAME)
    return report


def _remove_new_folders(folders: list[Path], lock: Path) -> None:
    """Remove ``folders`` (deepest first) that this restore created, if they hold nothing but ``lock``."""
    for folder in folders:
        if folder == lock.parent:
            lock.unlink(missing_ok=True)
        try:
            folder.rmdir()  # only when empty
        except OSError:
            return


def _staged_restore(
    job: Path, record: RunRecord, state: Path, sweep: Path, limit: int, report: RestoreReport
) -> int | None:
    """Unpack and check ``job`` in a temporary folder of ``sweep``, then move it into place; its epoch, or None."""
    relative = job.relative_to(state)
    sweep.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".paraisite-restore-", dir=sweep))
    try:
        staged = []
        for path in _job_files(job, record):
            name = path.relative_to(state)
            if name.name.endswith(COMPRESSED):
                name = name.with_name(name.name[: -len(COMPRESSED)])
            target = staging / name
            target.parent.mkdir(parents=True, exist_ok=True)
            text = path.suffix not in (".ckpt", COMPRESSED)
            _unpack(path, target, MAX_STATE_TEXT_BYTES if text else limit)
            staged.append(name)
        try:
            last = staging / relative / "checkpoints" / "last.ckpt"
            epoch = _rebase(last, sweep / relative, single=not record.seeds)
            for name in staged:
                if name.suffix == ".ckpt" and name != relative / "checkpoints" / "last.ckpt":
                    load_checkpoint(staging / name)
        except (CheckpointTrustError, UnsafeFileError, KeyError, TypeError, ValueError, RuntimeError) as error:
            if isinstance(error, ResumeStateError):
                raise
            raise ResumeStateError(f"{job}: a checkpoint does not load ({error}); nothing was restored") from None
        problem = _target_problem(sweep / relative, record, epoch)
        if problem is not None:
            kind, why = problem
            (report.skipped if kind == "skipped" else report.refused).append(f"{relative}: {why}")
            return None
        for name in staged:
            destination = sweep / name
            destination.parent.mkdir(parents=True, exist_ok=True)
            os.replace(staging / name, destination)
        return epoch
    finally:
        shutil.rmtree(staging, ignore_errors=True)
