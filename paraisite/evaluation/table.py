"""Reduce a sweep's ``metrics.json`` files to the paper's cross-dataset table, and write it out.

:func:`collect` reads every ``**/metrics.json`` under a directory into a long table (one row per
job and tested-on dataset), :func:`aggregate` reduces it to one row per (step, trained_on, tested_on)
cell joined with the published values, and :func:`write_outputs` writes ``table.md``, ``table.csv``
and ``heatmap.png``.
"""

from __future__ import annotations

import math
import os
import re
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from paraisite.evaluation.names import METRICS
from paraisite.evaluation.published import DATASETS, PUBLISHED_RUNS, STEP_LABELS, published_table
from paraisite.record import RunRecord, RunRecordError, read_run_record

__all__ = ["METRICS"]  # re-exported: defined in paraisite.evaluation.names (light, for the CLI's parser)

#: Columns identifying one cell of the table.
CELL_KEYS: list[str] = ["step", "trained_on", "tested_on"]
#: Columns of :func:`collect`'s runs table.
RUN_COLUMNS: list[str] = [
    *CELL_KEYS,
    "seed",
    *METRICS,
    "count",
    "label_scaling",
    "profile",
    "protocol",
    "group",
    "backbone",
    "path",
]
#: Columns of :func:`aggregate`'s cells table.
CELL_COLUMNS: list[str] = [
    "step",
    "step_label",
    "trained_on",
    "tested_on",
    "metric",
    "n",
    "mean",
    "std",
    "published_mean",
    "published_std",
    "delta",
    "paper_runs_n",
    "paper_runs_mean",
    "paper_runs_std",
    "delta_paper_runs",
]
OUTPUT_NAMES: dict[str, str] = {"markdown": "table.md", "csv": "table.csv", "heatmap": "heatmap.png"}
_MISSING = "—"


@dataclass(frozen=True)
class FailedJob:
    """A job whose ``metrics.json`` is not a completed run; never part of the means."""

    path: Path
    step: str
    trained_on: str
    seed: int | None
    error: str

    @property
    def first_line(self) -> str:
        """The error's first line, for one-line listings."""
        lines = self.error.strip().splitlines()
        return lines[0] if lines else "no error message"


def collect(sweep_dir: str | os.PathLike) -> tuple[pd.DataFrame, list[FailedJob]]:
    """Read every ``**/metrics.json`` under ``sweep_dir``.

    Args:
        sweep_dir: A sweep directory (or any directory holding runs, at any depth).

    Returns:
        The runs in long format (:data:`RUN_COLUMNS`: one row per job and tested-on dataset, taken from
        ``cross``, plus ``best`` as the diagonal when ``cross`` lacks it) and the failed jobs.

    Raises:
        FileNotFoundError: ``sweep_dir`` is not a directory.
    """
    root = Path(sweep_dir)
    if not root.is_dir():
        raise FileNotFoundError(f"sweep directory {root} does not exist")
    records: list[dict[str, Any]] = []
    failures: list[FailedJob] = []
    for path in sorted(root.glob("**/metrics.json")):
        try:
            result = read_run_record(path)
        except RunRecordError as error:
            failures.append(_failed_job(path, None, error.problem))
            continue
        if result.status != "completed":
            failures.append(_failed_job(path, result, result.error or f"status {result.status!r}"))
            continue
        records.extend(_run_records(path, result))
    runs = pd.DataFrame.from_records(records)
    extra = [column for column in runs.columns if column not in RUN_COLUMNS]
    return runs.reindex(columns=[*RUN_COLUMNS, *extra]), failures


def _run_records(path: Path, result: RunRecord) -> list[dict[str, Any]]:
    trained_on = result.dataset
    evaluations: dict[Any, Any] = dict(result.cross or {})
    evaluations.setdefault(trained_on, result.best)
    job = {
        "step": result.task_name,
        "trained_on": trained_on,
        "seed": result.seed,
        **{key: getattr(result, key) for key in ("profile", "protocol", "group", "backbone")},
        "path": str(path),
    }
    return [{**job, "tested_on": tested_on, **_with_true_tc(metrics)} for tested_on, metrics in evaluations.items()]


def _with_true_tc(metrics: dict[str, Any]) -> dict[str, Any]:
    """``metrics`` with ``true_tc_mape``: recorded under the paper's label scaling, else the MAPE itself."""
    if metrics.get("label_scaling", "consistent") == "consistent" and "mape" in metrics:
        return {**metrics, "true_tc_mape": metrics["mape"]}
    return metrics


def _failed_job(path: Path, result: RunRecord | None, error: str) -> FailedJob:
    """A failure, with step, dataset and seed from the record or else from its path (``<step>/<dataset>/seed<N>``)."""
    seed_dir, dataset_dir, step_dir = path.parent, path.parent.parent, path.parent.parent.parent
    seed = result.seed if result else None
    if seed is None and (match := re.fullmatch(r"seed(\d+)", seed_dir.name)):
        seed = int(match.group(1))
    return FailedJob(
        path=path,
        step=str((result and result.task_name) or step_dir.name),
        trained_on=str((result and result.dataset) or dataset_dir.name),
        seed=seed,
        error=error,
    )


def summarise(runs: pd.DataFrame, metric: str = "mape") -> pd.DataFrame:
    """Mean, sample std (ddof=1; NaN for one run) and count of ``metric`` per (step, trained_on, tested_on)."""
    grouped = runs.dropna(subset=[metric]).groupby(CELL_KEYS, sort=False)[metric]
    return grouped.agg(n="count", mean="mean", std="std").reset_index()


def aggregate(runs: pd.DataFrame, metric: str = "mape", paper_runs: pd.DataFrame | None = None) -> pd.DataFrame:
    """One row per cell: our mean/std/n, the published mean/std and ``delta`` = ours - published.

    Args:
        runs: Runs in long format, as from :func:`collect`.
        metric: Metric column to reduce; the published values exist for ``mape`` only.
        paper_runs: Optional upstream per-run values (:func:`~paraisite.evaluation.published.load_paper_runs`),
            reduced the same way into the ``paper_runs_*`` columns.

    Returns:
        The cells (:data:`CELL_COLUMNS`), in the paper's step and dataset order.
    """
    if metric not in runs.columns:
        raise ValueError(f"unknown metric {metric!r}; the runs report {', '.join(METRICS)}")
    cells = summarise(runs, metric)
    if cells.empty:
        raise ValueError(f"no run reports {metric!r}")
    published = published_table() if metric == "mape" else pd.DataFrame(columns=[*CELL_KEYS, "mean", "std"])
    published = published.rename(columns={"mean": "published_mean", "std": "published_std"})
    cells = cells.merge(published[[*CELL_KEYS, "published_mean", "published_std"]], on=CELL_KEYS, how="left")
    if paper_runs is not None and metric in paper_runs.columns:
        reference = summarise(paper_runs, metric).add_prefix("paper_runs_")
        reference = reference.rename(columns={f"paper_runs_{key}": key for key in CELL_KEYS})
        cells = cells.merge(reference, on=CELL_KEYS, how="left")
    cells = cells.reindex(columns=CELL_COLUMNS)
    cells["metric"] = metric
    cells["step_label"] = cells["step"].map(lambda step: STEP_LABELS.get(step, step))
    numeric = ["published_mean", "published_std", "paper_runs_n", "paper_runs_mean", "paper_runs_std"]
    cells[numeric] = cells[numeric].astype(float)
    cells["delta"] = cells["mean"] - cells["published_mean"]
    cells["delta_paper_runs"] = cells["mean"] - cells["paper_runs_mean"]
    return cells.sort_values(CELL_KEYS, key=_paper_order, kind="stable").reset_index(drop=True)


def _paper_order(column: pd.Series) -> pd.Series:
    """Rank of steps and datasets in the paper's order; unknown names after, alphabetically."""
    known = list(STEP_LABELS) if column.name == "step" else list(DATASETS)
    names = [*known, *sorted(set(column) - set(known))]
    return column.map({name: rank for rank, name in enumerate(names)})


def _ordered(names: pd.Series, known: list[str] | tuple[str, ...]) -> list[str]:
    present = set(names)
    return [name for name in known if name in present] + sorted(present - set(known))


def _mean_std(mean: float, std: float) -> str:
    if math.isnan(mean):
        return _MISSING
    return f"{mean:.2f}" if math.isnan(std) else f"{mean:.2f} ({std:.2f})"


def _delta(value: float) -> str:
    return _MISSING if math.isnan(value) else f"{value:+.2f}"


def _values(runs: pd.DataFrame, column: str) -> str:
    found = sorted({str(value) for value in runs[column].dropna()})
    return ", ".join(found) if found else "?"


def _step_block(cells: pd.DataFrame, cell_text: Callable[[pd.Series], str], with_runs: bool) -> list[str]:
    """A Markdown table for one step: rows trained-on, columns tested-on, each cell ``cell_text(row)``."""
    tested = _ordered(cells["tested_on"], DATASETS)
    header = ["trained on", *(["runs"] if with_runs else []), *tested]
    rule = ["---", *(["---:"] if with_runs else []), *["---"] * len(tested)]
    lines = ["| " + " | ".join(header) + " |", "| " + " | ".join(rule) + " |"]
    for trained_on in _ordered(cells["trained_on"], DATASETS):
        row = cells[cells["trained_on"] == trained_on].set_index("tested_on")
        runs = int(row["n"].max())
        texts = []
        for name in tested:
            if name not in row.index:
                texts.append(_MISSING)
                continue
            cell = row.loc[name]
            suffix = f" (n={int(cell['n'])})" if with_runs and cell["n"] != runs else ""
            texts.append(cell_text(cell) + suffix)
        lines.append("| " + " | ".join([trained_on, *([str(runs)] if with_runs else []), *texts]) + " |")
    return lines


def to_markdown(
    cells: pd.DataFrame,
    runs: pd.DataFrame,
    failures: list[FailedJob],
    metric: str = "mape",
    sweep_dir: str | os.PathLike | None = None,
) -> str:
    """The table as Markdown: a header describing the sweep, one block per step, references, failures."""
    metric_name = {"mape": "MAPE (fraction)", "true_tc_mape": "MAPE against the true TC (fraction)"}.get(metric, metric)
    profiles = set(runs["profile"].dropna())
    lines = [f"# ParAIsite cross-dataset table: {metric_name}, ours vs published", ""]
    if "quick" in profiles:
        lines += [
            (
                "> **QUICK PROFILE**: reduced budget (fewer epochs and seeds, subsampled AFLOW). These are not the "
                "paper's settings: compare trends, not values."
            ),
            "",
        ]
    if sweep_dir is not None:
        lines.append(f"- sweep: `{sweep_dir}`")
    lines += [
        (
            f"- profile: {_values(runs, 'profile')}; protocol: {_values(runs, 'protocol')}; group: "
            f"{_values(runs, 'group')}; backbone: {_values(runs, 'backbone')}; label scaling: "
            f"{_values(runs, 'label_scaling')}"
        ),
        f"- runs: {runs['path'].nunique()} completed, {len(failures)} failed" + (" (listed below)" if failures else ""),
        f"- published: the ParAIsite paper, mean (std) over {PUBLISHED_RUNS} runs (MAPE only)",
        (
            "- cell: ours mean (std) · published mean (std) · Δ = ours - published; std is the sample std "
            "(ddof=1), shown from 2 runs; `runs` is the number of runs per row, `(n=…)` marks a cell with fewer"
        ),
    ]

    def ours_vs_published(cell: pd.Series) -> str:
        published = _mean_std(cell["published_mean"], cell["published_std"])
        return f"{_mean_std(cell['mean'], cell['std'])} · {published} · Δ {_delta(cell['delta'])}"

    def paper_runs(cell: pd.Series) -> str:
        reference = _mean_std(cell["paper_runs_mean"], cell["paper_runs_std"])
        return f"{reference} · Δ {_delta(cell['delta_paper_runs'])}"

    steps = _ordered(cells["step"], list(STEP_LABELS))
    for step in steps:
        lines += ["", f"## {STEP_LABELS.get(step, step)}", ""]
        lines += _step_block(cells[cells["step"] == step], ours_vs_published, with_runs=True)
    if cells["paper_runs_mean"].notna().any():
        lines += [
            "",
            "## Reference: paper runs",
            "",
            (
                "Means of the upstream per-run CSVs (liudakl/ParAIsite `main/src/results_on_train_test`, 9 runs). "
                "They reproduce every off-diagonal published cell to ±0.01, but every published diagonal "
                "(same-dataset) cell is higher than these runs' mean. Cell: paper runs mean (std) · "
                "Δ = ours - paper runs."
            ),
        ]
        for step in steps:
            lines += ["", f"### {STEP_LABELS.get(step, step)}", ""]
            lines += _step_block(cells[cells["step"] == step], paper_runs, with_runs=False)
    if failures:
        lines += ["", "## Failed jobs (excluded from the means)", ""]
        for job in failures:
            where = Path(job.path).relative_to(sweep_dir) if sweep_dir is not None else job.path
            step = STEP_LABELS.get(job.step, job.step)
            lines.append(f"- `{where}` ({step}, {job.trained_on}, seed {job.seed}): {job.first_line}")
    return "\n".join(lines) + "\n"


def _grid(block: pd.DataFrame, column: str, trained: list[str], tested: list[str]) -> np.ndarray:
    """``column`` of one step's cells as a trained-on x tested-on array, NaN where a cell is absent."""
    grid = np.full((len(trained), len(tested)), np.nan)
    for record in block.itertuples():
        grid[trained.index(record.trained_on), tested.index(record.tested_on)] = getattr(record, column)
    return grid


def _colour_scale(values: np.ndarray) -> Any:
    """A log colour scale over the finite positive ``values``; linear when some value is not positive.

    On a log scale one large cell (10.9 among values below 1) does not wash out the others.
    """
    from matplotlib.colors import LogNorm, Normalize

    finite = values[np.isfinite(values)]
    if finite.size and (finite > 0).all():
        low, high = float(finite.min()), float(finite.max())
        return LogNorm(vmin=low, vmax=high if high > low else low * 10)
    return Normalize(vmin=min(0.0, float(finite.min(initial=0.0))), vmax=float(finite.max(initial=1.0)) or 1.0)


#: Differences below this size are coloured linearly, larger ones on a log scale (a +10 cell beside cells of +-0.5).
DELTA_LINEAR_WIDTH = 0.2


def _delta_scale(values: np.ndarray) -> Any:
    """A diverging scale centred on 0, symmetric over the largest absolute finite ``values``.

    Log beyond :data:`DELTA_LINEAR_WIDTH`, so that one large difference does not wash out the small ones.
    """
    from matplotlib.colors import SymLogNorm

    finite = values[np.isfinite(values)]
    limit = max(float(np.abs(finite).max(initial=0.0)), DELTA_LINEAR_WIDTH * 2)
    return SymLogNorm(linthresh=DELTA_LINEAR_WIDTH, vmin=-limit, vmax=limit, base=10)


def _annotate(axis: Any, grid: np.ndarray, texts: np.ndarray, norm: Any, dark_above: float, dark_below: float) -> None:
    """Write ``texts`` in the cells of ``grid`` that hold a value (blank elsewhere), white on dark colours."""
    for (row, column), value in np.ndenumerate(grid):
        if not math.isfinite(value):
            continue
        level = float(norm(value))
        colour = "white" if level > dark_above or level < dark_below else "black"
        axis.text(column, row, texts[row, column], ha="center", va="center", fontsize=9, color=colour)


def plot_heatmap(cells: pd.DataFrame, path: str | os.PathLike, title: str = "") -> Path:
    """Heatmap PNG: one column of panels per step; cells without a value are blank.

    Top row: our mean on a log colour scale, each cell annotated ``ours`` over ``(published)`` where a published
    value exists. Bottom row (only when some cell has a published value): ours - published on a diverging scale
    centred on 0, symmetric log (blue: ours lower, red: ours higher).
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg  # 0.4 s to import: only here, not for every command
    from matplotlib.figure import Figure

    steps = _ordered(cells["step"], list(STEP_LABELS))
    tested = _ordered(cells["tested_on"], DATASETS)
    with_delta = bool(cells["delta"].notna().any())
    rows = 2 if with_delta else 1
    figure = Figure(figsize=(4.2 * len(steps) + 1.4, 4.0 * rows), layout="constrained")
    FigureCanvasAgg(figure)
    axes = figure.subplots(rows, len(steps), squeeze=False)
    norm = _colour_scale(cells["mean"].to_numpy(dtype=float))
    delta_norm = _delta_scale(cells["delta"].to_numpy(dtype=float))
    images: list[Any] = [None, None]
    for index, step in enumerate(steps):
        block = cells[cells["step"] == step]
        trained = _ordered(block["trained_on"], DATASETS)
        means, published, delta = (_grid(block, c, trained, tested) for c in ("mean", "published_mean", "delta"))
        panels = [(axes[0, index], means, norm, "viridis_r", STEP_LABELS.get(step, step))]
        if with_delta:
            panels.append(
                (axes[1, index], delta, delta_norm, "RdBu_r", f"{STEP_LABELS.get(step, step)}: ours - published")
            )
        for row, (axis, grid, scale, colours, label) in enumerate(panels):
            images[row] = axis.imshow(np.ma.masked_invalid(grid), cmap=colours, norm=scale)
            axis.set_xticks(range(len(tested)), tested, rotation=30)
            axis.set_yticks(range(len(trained)), trained)
            axis.set_xlabel("tested on")
            axis.set_ylabel("trained on")
            axis.set_title(label)
        texts = np.empty(means.shape, dtype=object)
        for (r, c), mean in np.ndenumerate(means):
            reference = published[r, c]
            texts[r, c] = f"{mean:.2f}" + (f"\n({reference:.2f})" if math.isfinite(reference) else "")
        _annotate(axes[0, index], means, texts, norm, dark_above=0.6, dark_below=-1.0)
        if with_delta:
            deltas = np.vectorize(lambda value: f"{value:+.2f}", otypes=[object])(delta)
            _annotate(axes[1, index], delta, deltas, delta_norm, dark_above=0.8, dark_below=0.2)
    metric = cells["metric"].iloc[0]
    if images[0] is not None:
        figure.colorbar(images[0], ax=list(axes[0]), label=f"our mean {metric} (log scale)", shrink=0.8)
    if with_delta and images[1] is not None:
        figure.colorbar(images[1], ax=list(axes[1]), label=f"ours - published {metric} (symmetric log)", shrink=0.8)
    figure.suptitle(title)
    figure.savefig(path, dpi=120)
    return Path(path)


def write_outputs(
    cells: pd.DataFrame,
    runs: pd.DataFrame,
    failures: list[FailedJob],
    out_dir: str | os.PathLike,
    metric: str = "mape",
    sweep_dir: str | os.PathLike | None = None,
) -> dict[str, Path]:
    """Write ``table.md``, ``table.csv`` (one row per cell) and ``heatmap.png``; returns their paths by kind."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {kind: out / name for kind, name in OUTPUT_NAMES.items()}
    paths["markdown"].write_text(to_markdown(cells, runs, failures, metric, sweep_dir))
    cells.to_csv(paths["csv"], index=False)
    quick = " | QUICK profile, not the paper's settings" if "quick" in set(runs["profile"].dropna()) else ""
    published = " (published mean)" if cells["published_mean"].notna().any() else ""
    plot_heatmap(cells, paths["heatmap"], f"{metric}: our mean{published}{quick}")
    return paths


def log_to_wandb(cells: pd.DataFrame, heatmap: str | os.PathLike, key: str = "paper_table") -> bool:
    """Log the cells as a ``wandb.Table`` and the heatmap as a ``wandb.Image`` if a wandb run is active.

    wandb is looked up in ``sys.modules``: a run can only be active if wandb was imported.

    Returns:
        Whether anything was logged.
    """
    wandb = sys.modules.get("wandb")
    if wandb is None or wandb.run is None:
        return False
    wandb.log({f"{key}/cells": wandb.Table(dataframe=cells), f"{key}/heatmap": wandb.Image(str(heatmap))})
    return True
