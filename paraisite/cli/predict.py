"""``paraisite predict`` and ``paraisite scan``: structure files -> CSV of predictions with applicability columns.

``predict`` writes one CSV, atomically (a temporary file replaces ``-o`` at the end). ``scan`` is for thousands of
files: it appends each batch as it goes to its progress log ``<out stem>.progress.csv``, under an
exclusive lock (``<out>.lock``, removed at the end: a second scan on the same output is refused), resumes an
interrupted run from that log without repeating finished files, and writes the ranking (lowest first) to ``-o``.
Both refuse, before writing anything: ``-o`` equal to an input, ``--batch-size`` below 1 and ``--workers`` below 0;
and, before the model is loaded, an ``-o`` whose folder is missing, read-only or full (a file is tried there) and
a bound's variable (``PARAISITE_MAX_ATOMS``, ...) that is not a positive number. A
write that fails later (the disk filled up meanwhile) names the file.
Both exit 1 when every file tried failed (the error rows are still written), 3 when a worker process died or passed
the per-file time limit on some files (``PARAISITE_FILE_SECONDS``).
See :mod:`paraisite.zoo.scan` for the inputs taken and the columns.

This module imports nothing heavy at the top: it finds the files and starts the workers' fork server first.
"""

from __future__ import annotations

import argparse
from contextlib import nullcontext
from functools import partial
from typing import TYPE_CHECKING

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from paraisite.cpus import set_torch_threads, usable_cpus
from paraisite.safety import check_limit_variables
from paraisite.zoo.files import (
    DEFAULT_BATCH_SIZE,
    DEFAULT_MAX_PERCENTILE,
    RECOMMENDED_LTC_MODEL,
    check_output,
    check_output_folder,
    check_run_options,
    output_lock,
    structure_paths,
)
from paraisite.zoo.workers import start_worker_server, worker_preload

if TYPE_CHECKING:
    from paraisite.zoo.scan import PredictionSummary


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    """Register ``predict`` and ``scan``."""
    predict = subparsers.add_parser("predict", help="predict properties of structure files into a CSV")
    _add_common(predict, default_output="predictions.csv")
    predict.set_defaults(func=run_predict)
    scan = subparsers.add_parser(
        "scan",
        help="resumable batch prediction of many files; -o gets the ranking (lowest first), "
        "<out stem>.progress.csv the rows as they are predicted",
    )
    _add_common(scan, default_output="scan.csv")
    scan.add_argument(
        "--retry-errors",
        action="store_true",
        help="try again the files whose rows in -o have an error (say, after fixing them); their rows are replaced",
    )
    scan.set_defaults(func=run_scan)


def _positive_int(text: str) -> int:
    value = int(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {value}")
    return value


def _non_negative_int(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be 0 (read in this process) or more, got {value}")
    return value


def _add_common(parser: argparse.ArgumentParser, default_output: str) -> None:
    parser.add_argument(
        "--model",
        default=RECOMMENDED_LTC_MODEL,
        help="zoo name (`paraisite zoo list`), .ckpt file, run directory or bundle directory (default %(default)s, "
        "the recommended LTC model: it learnt measured values and its intervals are calibrated out of family)",
    )
    parser.add_argument("paths", nargs="+", metavar="PATH", help="structure files (any pymatgen format) or folders")
    parser.add_argument("-o", "--output", default=default_output, help=f"CSV to write (default {default_output})")
    parser.add_argument(
        "--fidelity",
        choices=("measured", "ab-initio", "agl"),
        default=None,
        help="what a multi-fidelity LTC model predicts: a measured value (default), an ab-initio (phonon BTE) value, "
        "or AFLOW's AGL estimate; refused for other models",
    )
    parser.add_argument(
        "--batch-size", type=_positive_int, default=DEFAULT_BATCH_SIZE, help="structures per model call"
    )
    parser.add_argument(
        "--workers",
        type=_non_negative_int,
        default=None,
        help="processes that read, graph and predict, each with its own copy of the model (0 or 1: all in this "
        f"process; default: 0 below {MIN_FILES_PER_WORKER_POOL} files, else the CPUs this process may use)",
    )
    parser.add_argument(
        "--max-percentile",
        type=float,
        default=DEFAULT_MAX_PERCENTILE,
        help="in_domain also needs latent_percentile <= this (default %(default)s: elements only)",
    )


def _predict(args: argparse.Namespace, scan_output: bool) -> PredictionSummary:
    """Check the inputs and the output before the model is loaded, then predict (``scan``: under the lock)."""
    check_limit_variables()  # a bad PARAISITE_MAX_ATOMS made every file an error row; a bad time limit failed late
    paths = structure_paths(args.paths)
    if args.workers is None:
        args.workers = default_workers(len(paths))
    check_run_options(args.batch_size, args.workers, args.max_percentile)
    if not paths:
        raise ValueError(f"no structure files in {' '.join(args.paths)} (names taken from folders: see --help)")
    check_output(args.output, [*paths, *args.paths], scan=scan_output)
    check_output_folder(args.output, scan=scan_output)
    with output_lock(args.output) if scan_output else nullcontext():
        return _load_and_run(args, paths, scan_output)


#: Below this many files, one process is as fast as starting worker processes (the fork server's imports, the model
#: sent to each worker). 1,000 AFLOW CIFs, 2 cores, 3 runs (2026-12-07, fork server started before the model code is
#: imported): CGCNN 4.4-5.0 s with 0 workers, 4.5-4.6 s with 2; the 9-member ensemble 10.6-11.3 s and 10.5-12.1 s.
MIN_FILES_PER_WORKER_POOL = 1000


def default_workers(files: int) -> int:
    """Worker processes for ``files`` structure files: none for small inputs, one per usable CPU for large ones.

    Usable: the CPUs this process may run on (:func:`paraisite.cpus.usable_cpus`), not the machine's count.
    """
    return 0 if files < MIN_FILES_PER_WORKER_POOL else usable_cpus()


def _load_and_run(args: argparse.Namespace, paths: list[str], scan_output: bool) -> PredictionSummary:
    if args.workers > 1 and len(paths) > args.batch_size:  # the workers' imports run while this process imports
        start_worker_server(worker_preload(args.model))
    # torch, pymatgen and the model code: imported only now, after the fork server started (imported at the top, they
    # delayed it by 1.5 s: all 5,578 AFLOW CIFs with a CGCNN model took 9-12 s, now about 8 s)
    from paraisite.zoo.predictors import load_predictor
    from paraisite.zoo.scan import run_predictions, scan

    set_torch_threads()  # this process's own model calls (workers use one thread each)
    console = Console(stderr=True)
    predictor = load_predictor(args.model)
    if args.fidelity is not None:
        use_fidelity = getattr(predictor, "use_fidelity", None)
        if use_fidelity is None:
            raise ValueError(f"--fidelity applies to multi-fidelity LTC models, not {predictor.name}")
        use_fidelity(args.fidelity)
    if getattr(predictor, "fidelity", None) is not None:
        console.print(f"{predictor.name}: predicting the {predictor.fidelity} fidelity")  # type: ignore[attr-defined]
    columns = (
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
    )
    runner = partial(scan, locked=True, retry_errors=args.retry_errors) if scan_output else run_predictions
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


#: Exit status when a worker process died or ran out of time on some files (the other rows are written).
LOST_FILES_STATUS = 3


def _exit_code(summary: PredictionSummary) -> int:
    """1 when every file tried in this run failed, 3 when a worker died on some (error rows are written), else 0."""
    if summary.lost and summary.predicted:
        Console(stderr=True).print(
            f"{summary.lost} file(s) lost to a worker process that died or passed the per-file time limit: "
            f"see the error column of {summary.output}"
        )
        return LOST_FILES_STATUS
    if summary.failed and not summary.predicted:
        Console(stderr=True).print(f"every file failed ({summary.failed}): see the error column of {summary.output}")
        return 1
    return 0


def run_predict(args: argparse.Namespace) -> int:
    """Predict the files into ``--output`` (replaced atomically at the end)."""
    return _exit_code(_predict(args, scan_output=False))


def run_scan(args: argparse.Namespace) -> int:
    """Predict (resuming, under an exclusive lock) into ``--output``, then write the ranking."""
    from paraisite.zoo.scan import error_rows

    summary = _predict(args, scan_output=True)
    console = Console(stderr=True)
    console.print(f"ranking (lowest first) -> {summary.ranked}; rows as predicted (resumable) in {summary.output}")
    errors = error_rows(summary.output)
    if errors:
        console.print(
            f"{errors} row(s) of {summary.output} have an error and are skipped when the scan is run again; "
            "once the files are fixed, add --retry-errors to try them again"
        )
    return _exit_code(summary)
