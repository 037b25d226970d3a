"""Predict many structure files into a CSV, batch by batch, resumable; rank the result.

Inputs: files are always tried (an unreadable one becomes an error row); folders are recursed and only files
whose names look like structures are taken (:data:`STRUCTURE_PATTERNS`, case-insensitive, hidden files skipped),
so notes, tables and JSON next to the CIFs are ignored. Paths are written absolute, in argument order, folders
sorted.

Rows: ``path, formula, n_atoms``, the model's value columns, the applicability columns
(``unseen_elements`` space-separated, ``latent_knn_distance``, ``latent_percentile``, ``in_domain``) and ``error``.
A file that cannot be read, graphed or predicted gets a row with its ``error`` (naming the file and the
problem) and empty values; the run goes on. ``in_domain`` is true when no element is unseen and, where a latent
reference exists, ``latent_percentile <= max_percentile``.

Reading and graphing (pymatgen's CIF parser dominates the cost) run in ``workers`` processes, up to
:data:`LOOKAHEAD` batches ahead of the model. The processes are spawned, not forked, and use one torch thread each
(:data:`WORKER_START_METHOD`).
"""

from __future__ import annotations

import csv
import fnmatch
import multiprocessing
import os
import warnings
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, replace
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from paraisite.data.sources import StructureFileError, read_structure

if TYPE_CHECKING:  # the predictors pull in torch, Lightning and matgl: not needed to list or rank files
    from pymatgen.core import Structure

    from paraisite.zoo.predictors import Predictions, Predictor

STRUCTURE_PATTERNS = (
    "*.cif",
    "*.cif.gz",
    "*.mcif",
    "*.vasp",
    "*.poscar",
    "poscar*",
    "contcar*",
    "*.xsf",
    "*.cssr",
    "*.res",
)
APPLICABILITY_COLUMNS = ("unseen_elements", "latent_knn_distance", "latent_percentile", "in_domain")
DEFAULT_MAX_PERCENTILE = 95.0
DEFAULT_BATCH_SIZE = 128
#: Batches read ahead of the model by the worker processes.
LOOKAHEAD = 2
#: How reader processes start. Not ``fork``: a forked child of a parent that already ran torch's thread pool
#: (loading the model does) can block forever in its first parallel torch op (seen with 216-atom cells in
#: ``MEGNetGraphBuilder.build``). A spawned worker starts a fresh interpreter, with one torch thread.
WORKER_START_METHOD = "spawn"


@dataclass
class StructureGraph:
    """What a worker made of one file: identity, elements, and the graph or the error."""

    path: str
    formula: str | None = None
    n_atoms: int | None = None
    elements: frozenset[str] = frozenset()
    graph: Any = None
    error: str | None = None


@dataclass
class PredictionSummary:
    """Counts of one run: ``predicted`` and ``failed`` rows were written now, ``already_done`` were skipped."""

    output: Path
    total: int
    already_done: int
    predicted: int
    failed: int
    ranked: Path | None = None


def looks_like_structure(path: Path) -> bool:
    """Whether a file found in a folder is taken: not hidden, and its name matches :data:`STRUCTURE_PATTERNS`."""
    name = path.name.lower()
    return not name.startswith(".") and any(fnmatch.fnmatch(name, pattern) for pattern in STRUCTURE_PATTERNS)


def structure_paths(inputs: Iterable[str | os.PathLike]) -> list[str]:
    """Absolute paths to predict: files as given, folders recursed (structure names only), without duplicates."""
    found: dict[str, None] = {}
    for item in inputs:
        path = Path(item)
        if path.is_dir():
            found.update(
                (os.path.abspath(p), None) for p in sorted(path.rglob("*")) if p.is_file() and looks_like_structure(p)
            )
        else:
            found[os.path.abspath(path)] = None
    return list(found)


def read_and_graph(build: Callable[[Structure, str], Any], path: str) -> StructureGraph:
    """Read one file and build its graph; failures are returned as the item's ``error``, never raised."""
    try:
        structure = read_structure(path)
    except StructureFileError as error:
        return StructureGraph(path, error=str(error))
    item = StructureGraph(
        path,
        formula=structure.composition.reduced_formula,
        n_atoms=len(structure),
        elements=frozenset(element.symbol for element in structure.composition.element_composition),
    )
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # e.g. CGCNN's neighbour padding, repeated for thousands of files
            item.graph = build(structure, path)
    except Exception as error:
        item.error = _naming(path, error, "cannot build the graph")
    return item


def _portable_graph(build: Callable[[Structure, str], Any], path: str) -> StructureGraph:
    """:func:`read_and_graph` in a worker, with the graph as numpy arrays.

    Torch tensors would each travel through shared memory, which costs more than building the graph.
    """
    item = read_and_graph(build, path)
    if item.graph is not None:
        item.graph = {key: _as_numpy(value) for key, value in item.graph.to_dict().items()}
    return item


def _as_numpy(value: Any) -> Any:
    import torch  # loaded already by the graph builder; a module-level import would slow down the whole CLI

    return value.numpy() if isinstance(value, torch.Tensor) else value


def _as_graph(item: StructureGraph) -> StructureGraph:
    """Inverse of :func:`_portable_graph`."""
    import torch
    from torch_geometric.data import Data

    if item.graph is not None:
        fields = {key: torch.from_numpy(v) if isinstance(v, np.ndarray) else v for key, v in item.graph.items()}
        item.graph = Data.from_dict(fields)
    return item


def _naming(path: str, error: Exception, problem: str) -> str:
    message = str(error)
    return message if path in message else f"{path}: {problem} ({type(error).__name__}: {message})"


def _init_worker() -> None:
    """Run first in each reader process: one torch thread (set before torch is imported, and again after).

    The workers read in parallel already; a thread pool per worker would oversubscribe the cores.
    """
    for variable in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        os.environ[variable] = "1"
    import torch

    torch.set_num_threads(1)


def graph_batches(
    build: Callable[[Structure, str], Any], paths: Sequence[str], batch_size: int, workers: int
) -> Iterator[list[StructureGraph]]:
    """Batches of :func:`read_and_graph` results, in path order; ``workers > 1`` reads in processes."""
    chunks = [paths[start : start + batch_size] for start in range(0, len(paths), batch_size)]
    workers = min(workers, len(paths))  # each worker is a fresh interpreter: no more than there are files
    if workers <= 1:
        for chunk in chunks:
            yield [read_and_graph(build, path) for path in chunk]
        return
    task = partial(_portable_graph, build)
    context = multiprocessing.get_context(WORKER_START_METHOD)
    with ProcessPoolExecutor(max_workers=workers, mp_context=context, initializer=_init_worker) as pool:
        pending: deque[Iterator[StructureGraph]] = deque()
        for chunk in chunks:
            pending.append(pool.map(task, chunk, chunksize=max(1, len(chunk) // (4 * workers))))
            if len(pending) > LOOKAHEAD:
                yield [_as_graph(item) for item in pending.popleft()]
        while pending:
            yield [_as_graph(item) for item in pending.popleft()]


def output_columns(predictor: Predictor) -> list[str]:
    """CSV columns for ``predictor``."""
    return ["path", "formula", "n_atoms", *predictor.columns, *APPLICABILITY_COLUMNS, "error"]


def _predict_items(predictor: Predictor, items: list[StructureGraph]) -> list[Predictions | None]:
    """Per item: its predictions (a batch of one), or ``None`` with ``item.error`` set."""
    ready = [item for item in items if item.graph is not None]
    results: dict[int, Predictions | None] = {}
    if ready:
        try:
            batch = predictor.predict([item.graph for item in ready])
            for position, item in enumerate(ready):
                results[id(item)] = _pick(batch, position)
        except Exception:  # isolate the structure(s) the model fails on
            for item in ready:
                try:
                    results[id(item)] = predictor.predict([item.graph])
                except Exception as error:
                    item.error = _naming(item.path, error, "prediction failed")
                    results[id(item)] = None
    return [results.get(id(item)) for item in items]


def _pick(batch: Predictions, position: int) -> Predictions:
    def one(values: np.ndarray | None) -> np.ndarray | None:
        return None if values is None else values[position : position + 1]

    outputs = {column: array[position : position + 1] for column, array in batch.outputs.items()}
    return replace(batch, outputs=outputs, knn_distance=one(batch.knn_distance), percentile=one(batch.percentile))


def make_rows(predictor: Predictor, items: list[StructureGraph], max_percentile: float) -> list[dict[str, Any]]:
    """CSV rows (see the module docstring) for a batch of items."""
    rows = []
    for item, prediction in zip(items, _predict_items(predictor, items), strict=True):
        unseen = predictor.unseen_elements(item.elements) if item.formula is not None else None
        row: dict[str, Any] = {
            "path": item.path,
            "formula": item.formula,
            "n_atoms": item.n_atoms,
            "unseen_elements": None if unseen is None else " ".join(unseen),
            "error": item.error,
        }
        if prediction is not None:
            row.update({column: float(array[0]) for column, array in prediction.outputs.items()})
            if prediction.percentile is not None:
                row["latent_knn_distance"] = float(prediction.knn_distance[0])
                row["latent_percentile"] = float(prediction.percentile[0])
            if unseen is not None:
                within = prediction.percentile is None or prediction.percentile[0] <= max_percentile
                row["in_domain"] = not unseen and bool(within)
        rows.append(row)
    return rows


def finished_paths(output: Path, columns: list[str]) -> set[str]:
    """Paths already in ``output`` (a row cut off by an interruption is removed first).

    Raises:
        ValueError: the file's columns are not ``columns`` (another model wrote it).
    """
    if not output.is_file() or output.stat().st_size == 0:
        return set()
    text = output.read_bytes()
    if not text.endswith(b"\n"):
        with open(output, "r+b") as stream:
            stream.truncate(text.rfind(b"\n") + 1)
    with open(output, newline="") as stream:
        reader = csv.DictReader(stream)
        if reader.fieldnames != columns:
            raise ValueError(
                f"{output}: its columns {reader.fieldnames} are not this model's {columns}; "
                "resume with the same model or choose another output file"
            )
        return {row["path"] for row in reader}


def run_predictions(
    predictor: Predictor,
    paths: Sequence[str],
    output: str | os.PathLike,
    *,
    batch_size: int = DEFAULT_BATCH_SIZE,
    workers: int = 0,
    resume: bool = False,
    max_percentile: float = DEFAULT_MAX_PERCENTILE,
    progress: Callable[[int], None] | None = None,
) -> PredictionSummary:
    """Predict ``paths`` into the CSV ``output``, flushing each batch.

    Args:
        predictor: the model.
        paths: structure files (see :func:`structure_paths`).
        output: the CSV; overwritten unless ``resume``.
        batch_size: structures per model call.
        workers: reader processes (0 or 1: read in this process).
        resume: keep ``output``'s rows and skip their paths.
        max_percentile: ``in_domain`` threshold on ``latent_percentile``.
        progress: called with the number of files done after each batch (also once for the skipped ones).
    """
    output = Path(output)
    columns = output_columns(predictor)
    done = finished_paths(output, columns) if resume else set()
    todo = [path for path in paths if path not in done]
    summary = PredictionSummary(output, len(paths), len(paths) - len(todo), 0, 0)
    if progress is not None and summary.already_done:
        progress(summary.already_done)
    output.parent.mkdir(parents=True, exist_ok=True)
    append = resume and output.is_file() and output.stat().st_size > 0
    with open(output, "a" if append else "w", newline="") as stream:
        writer = csv.DictWriter(stream, columns, lineterminator="\n")
        if not append:
            writer.writeheader()
        for items in graph_batches(predictor.graph_builder(), todo, batch_size, workers):
            rows = make_rows(predictor, items, max_percentile)
            writer.writerows(rows)
            stream.flush()
            failed = sum(row["error"] is not None for row in rows)
            summary.failed += failed
            summary.predicted += len(rows) - failed
            if progress is not None:
                progress(len(rows))
    return summary


def ranked_path(output: str | os.PathLike) -> Path:
    """``<out stem>.ranked.csv`` beside ``output``."""
    output = Path(output)
    return output.with_name(f"{output.stem}.ranked.csv")


def write_ranking(output: str | os.PathLike, column: str) -> Path:
    """Sort ``output``'s rows by ``column`` ascending (error rows last, unranked) into :func:`ranked_path`."""
    table = pd.read_csv(output, dtype=str, keep_default_na=False)
    key = pd.to_numeric(table[column], errors="coerce")
    order = key.sort_values(kind="stable", na_position="last").index
    ranked = table.loc[order].reset_index(drop=True)
    ranks = pd.Series(range(1, len(ranked) + 1), dtype="Int64").where(key.loc[order].notna().to_numpy())
    ranked.insert(0, "rank", ranks)
    target = ranked_path(output)
    ranked.to_csv(target, index=False)
    return target


def scan(predictor: Predictor, paths: Sequence[str], output: str | os.PathLike, **options: Any) -> PredictionSummary:
    """:func:`run_predictions` with ``resume=True``, then :func:`write_ranking` by the first value column."""
    summary = run_predictions(predictor, paths, output, resume=True, **options)
    summary.ranked = write_ranking(output, predictor.columns[0])
    return summary
