"""``paraisite status FOLDER``: which runs under a folder are done, failed, running, interrupted, pending or unreadable.

Any folder: a sweep of the paper's steps, a plain multirun, a single run, or a custom layout. The runs are found from
their records (every ``metrics.json`` and ensemble ``ensemble.json`` below the folder) and grouped by what they say
they are: the task and dataset of the record, else of the run's ``config_resolved.yaml``, else of its path
(``<task>/<Dataset>/seed<N>``). An ensemble job's members that have no record of their own take the job's state.
Pending runs are the ones a record cannot show: the seeds expected (``--seeds``; the paper's 1-9 for its steps) that
have no record; a sweep of the paper's steps also lists the paper's jobs not started yet.

Completed seeds whose last epoch predicted one constant or a not finite value are named below their job, and so is
each record that cannot be read (not JSON, cut off, malformed), with the reason: such a run is ``unreadable``, never
``pending``.
"""

from __future__ import annotations

import argparse
import csv
import re
from dataclasses import dataclass
from pathlib import Path

from paraisite.record import RunRecord, RunRecordError, process_alive, read_run_record

#: The paper's table: Steps I and II on every dataset, Step III on the three LTC datasets.
PAPER_JOBS = {
    "step1": ("Dataset1", "Dataset2", "MIX", "AFLOW"),
    "step2": ("Dataset1", "Dataset2", "MIX", "AFLOW"),
    "step3": ("Dataset1", "Dataset2", "MIX"),
}
#: Seeds a job of the paper's steps expects unless ``--seeds`` says otherwise.
PAPER_SEEDS = "1-9"
#: The record files of a run and of an ensemble job.
RECORD_NAMES = ("metrics.json", "ensemble.json")
#: Folders inside a run that hold no run records (logger output, checkpoints).
SKIPPED_FOLDERS = frozenset({"checkpoints", "csv", "wandb", ".hydra"})
_SEED_FOLDER = re.compile(r"seeds?(\d+(?:-\d+)*)$")


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    """Register ``status``."""
    parser = subparsers.add_parser(
        "status", help="state of each run under a folder: a sweep, a multirun or one run (done/failed/running/...)"
    )
    parser.add_argument("sweep_dir", type=Path, help="a sweep's directory (<log_dir>/<group>), or any run folder")
    parser.add_argument(
        "--seeds",
        default=None,
        help=f"seeds expected per job, e.g. 1-9 or 1,2,3; missing ones are pending (default: {PAPER_SEEDS} for the "
        "paper's steps, none for other runs)",
    )
    parser.set_defaults(func=run_status)


def _seeds(text: str) -> list[int]:
    if "-" in text:
        first, last = (int(part) for part in text.split("-", 1))
        return list(range(first, last + 1))
    return [int(part) for part in text.split(",") if part]


def _last_epoch(job_dir: Path) -> int | None:
    rows = list(job_dir.glob("csv/**/metrics.csv"))
    if not rows:
        return None
    with open(max(rows, key=lambda p: p.stat().st_mtime), newline="") as stream:
        epochs = [int(row["epoch"]) for row in csv.DictReader(stream) if row.get("epoch")]
    return max(epochs) + 1 if epochs else None


def _record(path: Path) -> RunRecord | RunRecordError | None:
    """The record at ``path``; ``None`` when there is none, the error when it cannot be read."""
    try:
        return read_run_record(path)
    except FileNotFoundError:
        return None
    except RunRecordError as error:
        return error


def run_state(record: RunRecord | RunRecordError | None) -> str:
    """The state of a run from its record: ``completed``, ``failed``, ``running`` or ``interrupted``.

    ``interrupted``: running, but its process is gone; ``pending``: no record; ``unreadable``: a record that cannot be
    read.
    """
    if isinstance(record, RunRecordError):
        return "unreadable"
    if record is None:
        return "pending"
    if record.status == "running":
        return "running" if process_alive(record.pid, record.started) else "interrupted"
    return record.status


@dataclass
class Run:
    """One run found under the folder: its job (task, dataset), seed, state and record (or why it is unreadable)."""

    job: tuple[str, str]
    seed: int | None
    state: str
    folder: Path
    record: RunRecord | None = None
    unreadable: RunRecordError | None = None


def record_files(root: Path) -> list[Path]:
    """Every run record below ``root`` (and in it), outside logger and checkpoint folders, sorted."""
    found = [
        path
        for name in RECORD_NAMES
        for path in root.rglob(name)
        if not SKIPPED_FOLDERS.intersection(path.relative_to(root).parts[:-1])
    ]
    return sorted(found)


def _resolved_config(folder: Path) -> dict:
    path = folder / "config_resolved.yaml"
    if not path.is_file():
        return {}
    from omegaconf import DictConfig, OmegaConf  # 0.5 s: only for runs whose record does not say what they are

    try:
        loaded = OmegaConf.load(path)
    except Exception:  # unreadable or not YAML: the run is grouped by its path instead
        return {}
    if not isinstance(loaded, DictConfig):
        return {}
    container = OmegaConf.to_container(loaded, resolve=False)
    return container if isinstance(container, dict) else {}


def job_of(folder: Path, record: RunRecord | None, root: Path) -> tuple[str, str]:
    """(task, dataset) of a run: from its record, else its resolved config, else its path, else its folder."""
    if record is not None and record.task_name and isinstance(record.data, dict) and record.data.get("name"):
        return str(record.task_name), str(record.data["name"])
    config = _resolved_config(folder)
    data = config.get("data")
    if config.get("task_name") and isinstance(data, dict) and data.get("name"):
        return str(config["task_name"]), str(data["name"])
    parts = folder.relative_to(root).parts if folder != root else ()
    if len(parts) >= 3 and _SEED_FOLDER.match(parts[-1]):
        return parts[-3], parts[-2]
    where = folder.parent if parts else folder
    return (where.relative_to(root).as_posix() if where != root else root.name), "?"


def _seed_of(folder: Path, record: RunRecord | None) -> int | None:
    if record is not None and record.seed is not None:
        return int(record.seed)
    match = _SEED_FOLDER.match(folder.name)
    if match and "-" not in match.group(1):
        return int(match.group(1))
    seed = _resolved_config(folder).get("seed")
    return int(seed) if isinstance(seed, int) else None


def find_runs(root: Path) -> tuple[list[Run], dict[tuple[str, str], str]]:
    """The runs recorded under ``root``, and the epoch progress of unfinished ensemble jobs by job."""
    runs: dict[Path, Run] = {}
    ensembles: list[tuple[Path, RunRecord]] = []
    for path in record_files(root):
        read = _record(path)
        record = read if isinstance(read, RunRecord) else None
        error = read if isinstance(read, RunRecordError) else None
        if path.name == "ensemble.json" and record is not None:
            ensembles.append((path.parent, record))
            continue
        folder = path.parent
        if path.name == "ensemble.json" and (error is None or folder in runs):
            continue
        job, seed = job_of(folder, record, root), _seed_of(folder, record)
        runs[folder] = Run(job, seed, run_state(read), folder, record, error)
    progress: dict[tuple[str, str], str] = {}
    for job_dir, record in ensembles:
        job = job_of(job_dir, None, root)
        state = run_state(record)
        for seed in record.seeds or []:
            member = job_dir.parent / f"seed{int(seed)}"
            if member not in runs:  # a member writes its own record when the job completes
                runs[member] = Run(job, int(seed), state, member)
        epoch = _last_epoch(job_dir)
        if epoch is not None and state != "completed":
            progress[job] = f"  ({job_dir.name}: {epoch} epochs logged)"
    return list(runs.values()), progress


def _expected(runs: list[Run], seeds_text: str | None) -> dict[tuple[str, str], list[int]]:
    """Seeds expected per job: ``--seeds`` for every job found (by default the paper's 1-9 for its steps).

    A sweep with a run of the paper's steps expects all of the paper's jobs.
    """
    jobs = list(dict.fromkeys(run.job for run in runs))
    paper = any(task in PAPER_JOBS for task, _ in jobs)
    if paper:
        jobs = [(task, data) for task, datasets in PAPER_JOBS.items() for data in datasets] + [
            job for job in jobs if job[0] not in PAPER_JOBS
        ]
    expected: dict[tuple[str, str], list[int]] = {}
    for job in jobs:
        if seeds_text is not None:
            expected[job] = _seeds(seeds_text)
        elif job[0] in PAPER_JOBS:
            expected[job] = _seeds(PAPER_SEEDS)
        else:
            expected[job] = []
    return expected


def _problems(runs: list[Run]) -> dict[str, list[int]]:
    """Seeds of completed runs whose last epoch predicted constant or not finite values, by problem."""
    from paraisite.evaluation.metrics import final_problem  # torch: not needed for the other columns

    found: dict[str, list[int]] = {}
    for run in runs:
        if run.record is not None and run.record.status == "completed":
            problem = final_problem(run.record.final or {})
            if problem is not None:
                found.setdefault(problem.kind, []).append(run.seed if run.seed is not None else -1)
    return found


#: The order states are listed in.
STATE_ORDER = ("completed", "failed", "running", "interrupted", "unreadable", "pending")


def _in_order(states: set[str]) -> list[str]:
    return sorted(states, key=lambda state: STATE_ORDER.index(state) if state in STATE_ORDER else len(STATE_ORDER))


def run_status(args: argparse.Namespace) -> int:
    """Print one line per (task, dataset): counts per state and the ensemble job's progress; exit 1 on failures.

    Below each job: its seeds whose last epoch was constant or not finite, and each record that cannot be read, with
    why (exit 1 too).

    A folder with no run record at all is an error (exit 1): nothing under it was started by ``paraisite-train``.
    """
    root = args.sweep_dir
    if not root.is_dir():
        raise FileNotFoundError(f"sweep directory {root} does not exist")
    runs, progress = find_runs(root)
    if not runs:
        raise FileNotFoundError(f"no run records ({' or '.join(RECORD_NAMES)}) under {root}")
    expected = _expected(runs, args.seeds)
    totals: dict[str, int] = {}
    for job, seeds in expected.items():
        found = [run for run in runs if run.job == job]
        have = {run.seed for run in found}
        states = [run.state for run in found] + ["pending" for seed in seeds if seed not in have]
        counts = {state: states.count(state) for state in _in_order(set(states))}
        for state, count in counts.items():
            totals[state] = totals.get(state, 0) + count
        summary = ", ".join(f"{count} {state}" for state, count in counts.items())
        task, dataset = job
        print(f"{task:6} {dataset:9} {summary}{progress.get(job, '')}")
        for problem, bad in _problems(found).items():
            label = "seed" if len(bad) == 1 else "seeds"
            print(f"{'':16} {label} {', '.join(map(str, sorted(bad)))}: {problem} at the last epoch")
        for run in found:
            if run.unreadable is not None:
                print(f"{'':16} {run.unreadable.path}: {run.unreadable.problem}")
    print("total: " + ", ".join(f"{totals[state]} {state}" for state in _in_order(set(totals))))
    return 1 if totals.get("failed") or totals.get("unreadable") else 0
