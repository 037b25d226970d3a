"""``paraisite status SWEEP_DIR``: which runs of a sweep are done, failed, running, interrupted or pending.

Completed seeds whose last epoch predicted one constant or a not finite value are named below their job.
"""

from __future__ import annotations

import argparse
import csv
from pathlib import Path

from paraisite.record import RunRecord, RunRecordError, process_alive, read_run_record, run_path

#: The paper's table: Steps I and II on every dataset, Step III on the three LTC datasets.
PAPER_JOBS = {
    "step1": ("Dataset1", "Dataset2", "MIX", "AFLOW"),
    "step2": ("Dataset1", "Dataset2", "MIX", "AFLOW"),
    "step3": ("Dataset1", "Dataset2", "MIX"),
}


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    """Register ``status``."""
    parser = subparsers.add_parser("status", help="state of each run of a sweep (done/failed/running/pending)")
    parser.add_argument("sweep_dir", type=Path, help="the sweep's directory (<log_dir>/<group>)")
    parser.add_argument("--seeds", default="1-9", help="seeds expected per job, e.g. 1-9 or 1,2,3 (default: 1-9)")
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


def _record(path: Path) -> RunRecord | None:
    """The record at ``path``; ``None`` when there is none or it cannot be read (shown as not started)."""
    try:
        return read_run_record(path)
    except (FileNotFoundError, RunRecordError):
        return None


def run_state(record: RunRecord | None) -> str:
    """``completed``, ``failed``, ``running``, ``interrupted`` (running, but its process is gone) or ``pending``."""
    if record is None:
        return "pending"
    if record.status == "running":
        return "running" if process_alive(record.pid, record.started) else "interrupted"
    return record.status


def _problems(records: dict[int, RunRecord | None]) -> dict[str, list[int]]:
    """Seeds of completed runs whose last epoch predicted constant or not finite values, by problem."""
    from paraisite.evaluation.metrics import final_problem  # torch: not needed for the other columns

    found: dict[str, list[int]] = {}
    for seed, record in records.items():
        if record is not None and record.status == "completed":
            problem = final_problem(record.final or {})
            if problem is not None:
                found.setdefault(problem.kind, []).append(seed)
    return found


def run_status(args: argparse.Namespace) -> int:
    """Print one line per (step, dataset): counts per state, and the ensemble job's progress; exit 1 on failures."""
    seeds = _seeds(args.seeds)
    if not args.sweep_dir.is_dir():
        raise FileNotFoundError(f"sweep directory {args.sweep_dir} does not exist")
    totals: dict[str, int] = {}
    for step, datasets in PAPER_JOBS.items():
        for dataset in datasets:
            job_root = args.sweep_dir / step / dataset
            records = {seed: _record(args.sweep_dir / run_path(step, dataset, seed) / "metrics.json") for seed in seeds}
            states = [run_state(record) for record in records.values()]
            progress = ""
            for job in sorted(job_root.glob("seeds*")):
                record = _record(job / "ensemble.json")
                if record is not None and record.status == "running":
                    state = "running" if process_alive(record.pid, record.started) else "interrupted"
                    members = {int(s) for s in record.seeds or []}
                    states = [
                        state if seed in members and old == "pending" else old
                        for seed, old in zip(seeds, states, strict=True)
                    ]
                epoch = _last_epoch(job)
                if epoch is not None and "completed" not in states:
                    progress = f"  ({job.name}: {epoch} epochs logged)"
            counts = {state: states.count(state) for state in dict.fromkeys(states)}
            for state, count in counts.items():
                totals[state] = totals.get(state, 0) + count
            summary = ", ".join(f"{count} {state}" for state, count in counts.items())
            print(f"{step:6} {dataset:9} {summary}{progress}")
            for problem, bad in _problems(records).items():
                label = "seed" if len(bad) == 1 else "seeds"
                print(f"{'':16} {label} {', '.join(map(str, bad))}: {problem} at the last epoch")
    print("total: " + ", ".join(f"{count} {state}" for state, count in totals.items()))
    return 1 if totals.get("failed") else 0
