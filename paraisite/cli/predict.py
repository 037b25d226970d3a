"""``paraisite predict`` and ``paraisite scan``: structure files -> CSV of predictions with applicability columns.

``predict`` writes (overwrites) one CSV. ``scan`` is for thousands of files: it appends each batch as it goes,
resumes an interrupted run without repeating finished files, and ranks the result (lowest first) into
``<out stem>.ranked.csv``. See :mod:`paraisite.zoo.scan` for the inputs taken and the columns.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Callable

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from paraisite.zoo.scan import (
    DEFAULT_BATCH_SIZE,
    DEFAULT_MAX_PERCENTILE,
    PredictionSummary,
    run_predictions,
    scan,
    structure_paths,
)


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    """Register ``predict`` and ``scan``."""
    predict = subparsers.add_parser("predict", help="predict properties of structure files into a CSV")
    _add_common(predict, default_output="predictions.csv")
    predict.set_defaults(func=run_predict)
    scan = subparsers.add_parser("scan", help="resumable batch prediction of many files, ranked lowest first")
    _add_common(scan, default_output="scan.csv")
    scan.set_defaults(func=run_scan)


def _add_common(parser: argparse.ArgumentParser, default_output: str) -> None:
    parser.add_argument(
        "--model", required=True, help="zoo name (`paraisite zoo list`), .ckpt file, run directory or bundle directory"
    )
    parser.add_argument("paths", nargs="+", metavar="PATH", help="structure files (any pymatgen format) or folders")
    parser.add_argument("-o", "--output", default=default_output, help=f"CSV to write (default {default_output})")
    parser.add_argument("--batch-size", type=int, default=DEFAULT_BATCH_SIZE, help="structures per model call")
    parser.add_argument(
        "--workers", type=int, default=os.cpu_count() or 1, help="processes reading files (default: CPU count)"
    )
    parser.add_argument(
        "--max-percentile",
        type=float,
        default=DEFAULT_MAX_PERCENTILE,
        help="in_domain needs latent_percentile <= this (default %(default)s)",
    )


def _predict(args: argparse.Namespace, runner: Callable[..., PredictionSummary]) -> PredictionSummary:
    from paraisite.zoo.predictors import load_predictor  # torch, Lightning, matgl: only when predicting

    console = Console(stderr=True)
    predictor = load_predictor(args.model)
    paths = structure_paths(args.paths)
    columns = (
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
    )
    with Progress(*columns, console=console) as progress:
        task = progress.add_task(f"{predictor.name}", total=len(paths))
        summary = runner(
            predictor,
            paths,
            args.output,
            batch_size=args.batch_size,
            workers=args.workers,
            max_percentile=args.max_percentile,
            progress=lambda done: progress.advance(task, done),
        )
    skipped = f", {summary.already_done} already done" if summary.already_done else ""
    console.print(f"{summary.predicted} predicted, {summary.failed} failed{skipped} -> {summary.output}")
    return summary


def run_predict(args: argparse.Namespace) -> int:
    """Predict the files into ``--output`` (overwritten)."""
    _predict(args, run_predictions)
    return 0


def run_scan(args: argparse.Namespace) -> int:
    """Predict (resuming) into ``--output``, then write the ranking."""
    summary = _predict(args, scan)
    Console(stderr=True).print(f"ranking (lowest first) -> {summary.ranked}")
    return 0
