"""``paraisite plot parity RUN_OR_CSV``: predicted vs true TC on log axes, from a run or a CSV."""

from __future__ import annotations

import argparse
import csv
import math
from pathlib import Path

from paraisite.evaluation.plots import PREDICTED_COLUMN, TRUE_COLUMN, VAL_PREDICTIONS_NAME


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    """Register ``plot parity``."""
    parser = subparsers.add_parser("plot", help="pictures: predicted vs true (parity) of a run or a CSV")
    kinds = parser.add_subparsers(dest="kind", required=True)
    parity = kinds.add_parser(
        "parity",
        help="predicted vs true on log axes",
        description=f"Predicted vs true on log axes. A run folder: its validation split ({VAL_PREDICTIONS_NAME}, "
        f"written by every run). A CSV: any file with a true and a predicted column (default {TRUE_COLUMN} and "
        f"{PREDICTED_COLUMN}), e.g. `paraisite predict` output with the true values added.",
    )
    parity.add_argument("source", type=Path, metavar="RUN_OR_CSV", help="a run folder or a CSV")
    parity.add_argument(
        "-o", "--output", type=Path, help="PNG to write (default: parity.png in the run, or <csv>.parity.png)"
    )
    parity.add_argument("--true", default=TRUE_COLUMN, help=f"column of true values (default {TRUE_COLUMN})")
    parity.add_argument("--pred", default=PREDICTED_COLUMN, help=f"column of predictions (default {PREDICTED_COLUMN})")
    parity.set_defaults(func=run_parity)


def _source_csv(source: Path) -> tuple[Path, Path]:
    """The CSV to read and the default PNG for ``source`` (a run folder or a CSV)."""
    if source.is_dir():
        table = source / VAL_PREDICTIONS_NAME
        if not table.is_file():
            raise FileNotFoundError(
                f"{source}: no {VAL_PREDICTIONS_NAME} (runs write it when they finish; runs trained before it "
                "existed do not). For an ensemble job, give one member's folder (seed<N>)"
            )
        return table, source / "parity.png"
    if not source.is_file():
        raise FileNotFoundError(f"{source}: no such run folder or CSV")
    return source, source.with_name(f"{source.stem}.parity.png")


def read_pairs(path: Path, true_column: str, predicted_column: str) -> tuple[list[float], list[float]]:
    """The (true, predicted) values of ``path``'s rows; empty or unparsable cells become NaN.

    Raises:
        ValueError: a column is missing (the columns found are named).
    """
    with open(path, newline="", encoding="utf-8") as stream:
        reader = csv.DictReader(stream)
        found = reader.fieldnames or []
        missing = [c for c in (true_column, predicted_column) if c not in found]
        if missing:
            raise ValueError(f"{path}: no column {', '.join(missing)} (columns: {', '.join(found)}); see --true/--pred")
        true, predicted = [], []
        for row in reader:
            true.append(_number(row[true_column]))
            predicted.append(_number(row[predicted_column]))
    return true, predicted


def _number(text: str | None) -> float:
    try:
        return float(text) if text else math.nan
    except ValueError:
        return math.nan


def run_parity(args: argparse.Namespace) -> int:
    """Write the parity PNG and say where."""
    import numpy as np

    from paraisite.evaluation.plots import plot_parity

    table, default = _source_csv(args.source)
    true, predicted = read_pairs(table, args.true, args.pred)
    output = args.output or default
    plot_parity(np.array(true), np.array(predicted), output, title=str(args.source))
    print(f"parity plot of {len(true)} rows of {table} -> {output}")
    return 0
