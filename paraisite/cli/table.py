"""``paraisite table SWEEP_DIR``: reduce a sweep's ``metrics.json`` files to the paper's table."""

from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from rich.console import Console

from paraisite.evaluation.names import METRICS

if TYPE_CHECKING:  # pandas and the table code: imported when the command runs, not for every `paraisite --help`
    import pandas as pd


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    """Register ``table``."""
    parser = subparsers.add_parser("table", help="reduce a sweep's metrics.json files to the paper's table")
    parser.add_argument("sweep_dir", type=Path, help="directory searched for **/metrics.json")
    where = parser.add_mutually_exclusive_group()
    where.add_argument(
        "-o",
        "--out-dir",
        type=Path,
        help=f"where to write table.md, table.csv and heatmap.png (default: SWEEP_DIR{OUT_SUFFIX} beside the sweep)",
    )
    where.add_argument(
        "--in-place", action="store_true", help="write them into SWEEP_DIR itself (replacing a table there)"
    )
    parser.add_argument("--metric", default="mape", choices=METRICS, help="metric to tabulate (default: mape)")
    parser.add_argument(
        "--no-paper-runs",
        action="store_true",
        help="leave out the upstream per-run reference (registry group paper-results)",
    )
    parser.add_argument(
        "--records",
        action="store_true",
        help="also copy each run's metrics.json and config_resolved.yaml (and each ensemble job's ensemble.json) "
        "to OUT_DIR/runs/, keeping the sweep's layout: the compact results to commit beside the table",
    )
    parser.add_argument(
        "--wandb",
        action="store_true",
        help="also log the table and heatmap to a wandb run in the sweep's group (offline unless enabled)",
    )
    parser.set_defaults(func=run_table)


def _paper_runs(console: Console) -> pd.DataFrame | None:
    from paraisite.data import registry
    from paraisite.evaluation.published import load_paper_runs

    try:
        return load_paper_runs()
    except registry.RegistryError as error:
        console.print(f"[yellow]paper runs left out:[/] {error}")
        return None


#: The default output folder is the sweep's name with this suffix, beside it: a table committed in the sweep's own
#: folder (e.g. ``experiments/<group>/table.md``) is never overwritten unless ``--in-place`` says so.
OUT_SUFFIX = "-table"


def output_dir(sweep_dir: Path, out_dir: Path | None, in_place: bool) -> Path:
    """Where ``table`` writes: ``-o``, the sweep itself with ``--in-place``, else ``<sweep>-table`` beside it."""
    if out_dir is not None:
        return out_dir
    if in_place:
        return sweep_dir
    return sweep_dir.resolve().parent / f"{sweep_dir.resolve().name}{OUT_SUFFIX}"


def run_table(args: argparse.Namespace) -> int:
    """Write the table files, print the Markdown; exit code 1 when the directory holds no completed run."""
    from rich.markdown import Markdown

    from paraisite.evaluation import table

    console = Console(stderr=True)
    args.out_dir = output_dir(args.sweep_dir, args.out_dir, args.in_place)
    runs, failures = table.collect(args.sweep_dir)
    if runs.empty:
        for job in failures:
            console.print(f"failed job {job.path}: {job.first_line}")
        console.print(
            f"[red]no completed runs under {args.sweep_dir}[/] "
            f"({len(failures)} failed; a completed run writes metrics.json with status 'completed')"
        )
        return 1
    paper_runs = _paper_runs(console) if args.metric == "mape" and not args.no_paper_runs else None
    cells = table.aggregate(runs, args.metric, paper_runs)
    paths = table.write_outputs(cells, runs, failures, args.out_dir, args.metric, args.sweep_dir)
    markdown = paths["markdown"].read_text()
    if sys.stdout.isatty():
        Console().print(Markdown(markdown))
    else:
        print(markdown, end="")
    if args.records:
        copied = copy_records(args.sweep_dir, (args.out_dir) / "runs")
        console.print(f"copied {copied} run records to {(args.out_dir) / 'runs'}")
    if args.wandb:
        _log_to_new_wandb_run(cells, paths["heatmap"], runs, args.out_dir)
    if failures:
        console.print(f"[yellow]{len(failures)} failed job(s) excluded from the means[/] (listed in the table)")
    console.print(f"wrote {', '.join(str(path) for path in paths.values())}")
    return 0


def _log_to_new_wandb_run(cells: pd.DataFrame, heatmap: Path, runs: pd.DataFrame, out_dir: Path) -> None:
    """Open a wandb run in the sweep's group (offline unless the environment enables wandb), log, finish."""
    import wandb

    from paraisite.config import wandb_offline
    from paraisite.evaluation import table

    group = ",".join(sorted(runs["group"].dropna().astype(str).unique())) or None
    mode: Literal["offline", "online"] = "offline" if wandb_offline() else "online"
    wandb.init(project="paraisite", group=group, job_type="table", mode=mode, dir=str(out_dir))
    try:
        table.log_to_wandb(cells, heatmap)
    finally:
        wandb.finish()


#: The small per-run files that record a result (checkpoints and logs stay behind).
RECORD_FILES = ("metrics.json", "config_resolved.yaml", "ensemble.json")


def copy_records(sweep_dir: Path, target: Path) -> int:
    """Copy every run's record files from ``sweep_dir`` to ``target``, same relative paths; returns the count."""
    copied = 0
    for name in RECORD_FILES:
        for source in sorted(sweep_dir.glob(f"**/{name}")):
            if target in source.parents:
                continue
            destination = target / source.relative_to(sweep_dir)
            destination.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(source, destination)
            copied += 1
    return copied
