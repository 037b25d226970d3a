"""Predict many structure files into a CSV, batch by batch, resumable; rank the result.

Inputs (:func:`paraisite.zoo.files.structure_paths`): files are always tried (an unreadable one becomes an error
row); folders are recursed and only files whose names look like structures are taken
(:data:`~paraisite.zoo.files.STRUCTURE_PATTERNS`, case-insensitive, hidden files skipped), so notes, tables and JSON
next to the CIFs are ignored. Paths are written absolute, in argument order, folders sorted.

Rows: ``path, formula, n_atoms``, the model's value columns, the applicability columns
(``unseen_elements`` space-separated, ``latent_knn_distance``, ``latent_percentile``, ``in_domain``), for models with
physics features ``imputed_features`` (those whose fit failed, replaced by the training mean) and ``error``.
Files are read by :func:`paraisite.data.inputs.read_input_structure`: regular files within a size limit, and
only real, ordered crystals (no bad occupancies, NaN coordinates, zero-volume cells, overlapping atoms or unknown
elements). A file that cannot be read, graphed or predicted gets a row with its ``error`` (naming the file and the
problem) and empty values; the run goes on. ``in_domain`` is true when no element is unseen and, where a latent
reference exists, ``latent_percentile <= max_percentile`` (100 by default: elements only).

With ``workers`` > 1, whole batches (reading, graphing, prediction) run in that many processes, each with its own
copy of the model, up to :data:`LOOKAHEAD` batches ahead of the CSV writer. They are forked from a fork server that
imported torch, pymatgen and the model code once (:func:`paraisite.zoo.workers.start_worker_server`, started before
the model is loaded, so both imports run side by side), and use one torch thread each.
"""

from __future__ import annotations

import csv
import io
import os
import pickle
import tempfile
import warnings
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager, nullcontext, suppress
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from paraisite.data.cache import atomic_write
from paraisite.data.inputs import read_input_structure
from paraisite.data.sources import StructureFileError
from paraisite.safety import naming_write_errors
from paraisite.zoo.files import (
    DEFAULT_BATCH_SIZE,
    DEFAULT_MAX_PERCENTILE,
    OutputError,
    check_output,
    check_run_options,
    output_lock,
    scan_log_path,
)
from paraisite.zoo.workers import THREAD_VARIABLES, LostRow, WorkerPool, file_seconds, start_worker_server

if TYPE_CHECKING:  # the predictors pull in torch, Lightning and matgl: not needed to list or rank files
    from pymatgen.core import Structure

    from paraisite.zoo.predictors import Predictions, Predictor

APPLICABILITY_COLUMNS = ("unseen_elements", "latent_knn_distance", "latent_percentile", "in_domain")


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
    """Counts of one run: ``predicted`` and ``failed`` rows were written now, ``already_done`` were skipped.

    ``lost``: of the failed rows, those whose worker process died or ran out of time on the file.
    """

    output: Path
    total: int
    already_done: int
    predicted: int
    failed: int
    ranked: Path | None = None
    lost: int = 0


def read_and_graph(build: Callable[[Structure, str], Any], path: str) -> StructureGraph:
    """Read one file and build its graph; failures are returned as the item's ``error``, never raised."""
    try:
        structure = read_input_structure(path)
    except StructureFileError as error:
        return StructureGraph(path, error=str(error))
    except Exception as error:  # an unforeseen reader failure is still one error row, never the end of the batch
        return StructureGraph(path, error=_naming(path, error, "cannot read a crystal structure"))
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


def _naming(path: str, error: Exception, problem: str) -> str:
    message = str(error)
    return message if path in message else f"{path}: {problem} ({type(error).__name__}: {message})"


#: A worker process's model and ``max_percentile``, set by :func:`_init_worker`.
_WORKER_MODEL: dict[str, Any] = {}


def _init_worker(pickled_predictor: bytes, max_percentile: float) -> None:
    """Run first in each worker process: one torch thread, and the worker's own copy of the model.

    The thread count is set before torch is imported and again after: the workers run in parallel already, and a
    thread pool per worker would oversubscribe the cores. The model arrives as plain pickle bytes, once per worker
    (18 MB and 0.3 s for a 9-member MEGNet ensemble): pickled as an object, torch would share each tensor through
    a file descriptor, more than a fork server passes (256).
    """
    for variable in THREAD_VARIABLES:
        os.environ[variable] = "1"
    import torch

    torch.set_num_threads(1)
    _WORKER_MODEL.update(predictor=pickle.loads(pickled_predictor), max_percentile=max_percentile)


def predict_files(
    predictor: Predictor, paths: Sequence[str], max_percentile: float, at: Callable[[int], None] | None = None
) -> list[dict[str, Any]]:
    """CSV rows of ``paths``: each file read and graphed, then the graphs predicted as one batch.

    ``at(i)`` is called before file ``i`` and ``at(len(paths))`` before the prediction (a worker reports progress).
    """
    build = predictor.graph_builder()
    items = []
    for index, path in enumerate(paths):
        if at is not None:
            at(index)
        items.append(read_and_graph(build, path))
    if at is not None:
        at(len(paths))
    return make_rows(predictor, items, max_percentile)


def _predict_files_in_worker(paths: list[str], at: Callable[[int], None]) -> list[dict[str, Any]]:
    return predict_files(_WORKER_MODEL["predictor"], paths, _WORKER_MODEL["max_percentile"], at)


def row_batches(
    predictor: Predictor, paths: Sequence[str], batch_size: int, workers: int, max_percentile: float
) -> Iterator[list[dict[str, Any]]]:
    """CSV rows of ``paths``, ``batch_size`` files at a time, in path order.

    ``workers > 1``: each batch is read, graphed and predicted whole in one of ``workers`` processes, each with its
    own copy of the model; up to ``workers + LOOKAHEAD`` batches are in flight. Reading alone in the workers and
    predicting in this process left the model on one core (a 9-member ensemble predicts ~90 structures/s on one
    core, while its reading needs ~30 % of the CPU). A worker that dies or passes the per-file time limit costs only
    its file (:class:`paraisite.zoo.workers.WorkerPool`).
    """
    chunks = [paths[start : start + batch_size] for start in range(0, len(paths), batch_size)]
    workers = min(workers, len(chunks))  # each worker is a fresh interpreter: no more than there are batches
    if workers <= 1:
        for chunk in chunks:
            yield predict_files(predictor, chunk, max_percentile)
        return
    start_worker_server()
    pool = WorkerPool(workers, _init_worker, (pickle.dumps(predictor), max_percentile), _predict_files_in_worker)
    pool.file_seconds = file_seconds()
    yield from pool.map(chunks)


#: Column of the models with physics features (``+features=eos``): the features of the row that were unknown (the
#: crystal's energy-volume fit failed) and replaced by the training mean, space-separated; empty when none was.
IMPUTED_COLUMN = "imputed_features"


def output_columns(predictor: Predictor) -> list[str]:
    """CSV columns for ``predictor``.

    :data:`IMPUTED_COLUMN` for models with physics features; no ``in_domain`` for models whose evidence backs no
    domain flag (``Predictor.domain_flag``).
    """
    applicability = APPLICABILITY_COLUMNS if predictor.domain_flag else APPLICABILITY_COLUMNS[:-1]
    imputed = [IMPUTED_COLUMN] if predictor.feature_names() else []
    return ["path", "formula", "n_atoms", *predictor.columns, *applicability, *imputed, "error"]


def imputed_features(names: tuple[str, ...], graph: Any) -> str:
    """The names of ``graph``'s ``extra_features`` that are NaN (the model replaces them by its training mean)."""
    values = np.asarray(graph.extra_features, dtype=float).reshape(-1)
    return " ".join(name for name, value in zip(names, values, strict=True) if np.isnan(value))


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
    member_tc = None if batch.member_tc is None else batch.member_tc[:, position : position + 1]
    return replace(
        batch,
        outputs=outputs,
        knn_distance=one(batch.knn_distance),
        percentile=one(batch.percentile),
        member_tc=member_tc,
    )


def make_rows(predictor: Predictor, items: list[StructureGraph], max_percentile: float) -> list[dict[str, Any]]:
    """CSV rows (see the module docstring) for a batch of items."""
    rows = []
    features = predictor.feature_names()
    for item, prediction in zip(items, _predict_items(predictor, items), strict=True):
        unseen = predictor.unseen_elements(item.elements) if item.formula is not None else None
        row: dict[str, Any] = {
            "path": item.path,
            "formula": item.formula,
            "n_atoms": item.n_atoms,
            "unseen_elements": None if unseen is None else " ".join(unseen),
            "error": item.error,
        }
        if features and item.graph is not None:
            row[IMPUTED_COLUMN] = imputed_features(features, item.graph)
        if prediction is not None:
            row.update({column: float(array[0]) for column, array in prediction.outputs.items()})
            if prediction.knn_distance is not None and prediction.percentile is not None:  # set together
                row["latent_knn_distance"] = float(prediction.knn_distance[0])
                row["latent_percentile"] = float(prediction.percentile[0])
            if unseen is not None and predictor.domain_flag:
                within = prediction.percentile is None or prediction.percentile[0] <= max_percentile
                row["in_domain"] = not unseen and bool(within)
        rows.append(row)
    return rows


def finished_paths(output: Path, columns: list[str], retry_errors: bool = False) -> set[str]:
    """Paths already in ``output``; a row cut off by an interruption is removed, after the header was checked.

    ``retry_errors``: rows with an error are removed from ``output`` (rewritten whole) and their paths not returned,
    so they are tried again.

    Raises:
        OutputError: the file is not a CSV with ``columns`` (another model or program wrote it); it is not modified.
    """
    if not output.is_file():
        return set()
    data = output.read_bytes()
    header_line = ",".join(columns).encode()
    end = data.find(b"\n")
    if end < 0 and header_line.startswith(data):  # empty, or the header itself was cut off
        output.write_bytes(b"")
        return set()
    try:
        header = next(csv.reader([data[: end if end >= 0 else len(data)].decode("utf-8")]), None)
    except UnicodeDecodeError:
        header = None
    if header != columns:
        raise OutputError(
            f"{output}: its columns {header} are not this model's {columns}; it was not modified. "
            "Resume with the same model or choose another output file"
        )
    if not data.endswith(b"\n"):
        data = data[: data.rfind(b"\n") + 1]
        with open(output, "r+b") as stream:
            stream.truncate(len(data))
    rows = list(csv.DictReader(io.StringIO(data.decode("utf-8"), newline="")))
    if retry_errors and any(row["error"] for row in rows):
        kept = [row for row in rows if not row["error"]]

        def write(tmp: Path) -> None:
            with open(tmp, "w", newline="") as stream:
                writer = csv.DictWriter(stream, columns, lineterminator="\n")
                writer.writeheader()
                writer.writerows(kept)

        atomic_write(output, write)
        rows = kept
    return {row["path"] for row in rows}


def error_rows(output: Path) -> int:
    """Rows of ``output`` (a scan's CSV) that have an error."""
    if not output.is_file():
        return 0
    with open(output, newline="") as stream:
        return sum(bool(row.get("error")) for row in csv.DictReader(stream))


def _temporary_prefix(output: Path) -> str:
    return f".{output.name}."


def remove_stale_temporaries(output: Path) -> list[Path]:
    """Remove the temporary files of ``output`` left by ``predict`` processes that no longer run; the removed ones.

    A process killed with SIGKILL cannot remove its ``.<name>.<pid>.<random>.tmp``; the next ``predict`` into the
    same file does, once no process ``<pid>`` runs (a live one, even another user's, keeps its file).
    """
    prefix, removed = _temporary_prefix(output), list[Path]()
    try:
        names = os.listdir(output.parent)
    except OSError:
        return removed
    for name in names:
        pid = name[len(prefix) :].split(".", 1)[0]
        if name.startswith(prefix) and name.endswith(".tmp") and pid.isdigit() and not _running(int(pid)):
            with suppress(FileNotFoundError):
                (output.parent / name).unlink()
                removed.append(output.parent / name)
    return removed


def _running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # another user's process
        return True
    return True


@contextmanager
def _replacing(output: Path) -> Iterator[Any]:
    """A text stream to a temporary file beside ``output`` that replaces it on success (removed on failure).

    The temporary file is named ``.<name>.<pid>.<random>.tmp``, so a later run can tell one left by a killed process
    (:func:`remove_stale_temporaries`).
    """
    output.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(output)
    if output.is_file():
        mode = output.stat().st_mode & 0o777
    else:
        umask = os.umask(0)
        os.umask(umask)
        mode = 0o666 & ~umask
    with naming_write_errors(output, output.parent):
        handle, tmp = tempfile.mkstemp(
            dir=output.parent, prefix=f"{_temporary_prefix(output)}{os.getpid()}.", suffix=".tmp"
        )
    stream = os.fdopen(handle, "w", newline="")
    try:
        yield stream
        with naming_write_errors(output, tmp):
            stream.close()
            os.chmod(tmp, mode)
            os.replace(tmp, output)
    finally:
        with suppress(OSError):  # after a failed write, closing tries the buffered rows again (and fails again)
            stream.close()
        if os.path.exists(tmp):
            os.unlink(tmp)


def run_predictions(
    predictor: Predictor,
    paths: Sequence[str],
    output: str | os.PathLike,
    *,
    batch_size: int = DEFAULT_BATCH_SIZE,
    workers: int = 0,
    resume: bool = False,
    retry_errors: bool = False,
    max_percentile: float = DEFAULT_MAX_PERCENTILE,
    progress: Callable[[int], None] | None = None,
) -> PredictionSummary:
    """Predict ``paths`` into the CSV ``output``.

    Without ``resume`` the rows go to a temporary file that replaces ``output`` at the end (readers never see a
    partial file; an interrupted run leaves ``output`` as it was). With ``resume`` each batch is appended and
    flushed; the caller holds :func:`output_lock` (as :func:`scan` does).

    Args:
        predictor: the model.
        paths: structure files (see :func:`structure_paths`).
        output: the CSV; replaced unless ``resume``.
        batch_size: structures per model call (>= 1).
        workers: reader processes (0 or 1: read in this process).
        resume: keep ``output``'s rows and skip their paths.
        retry_errors: with ``resume``, try again the paths whose rows have an error (those rows are replaced).
        max_percentile: ``in_domain`` threshold on ``latent_percentile``.
        progress: called with the number of files done after each batch (also once for the skipped ones).

    Raises:
        OutputError: bad options, an output that is an input or not a regular file, or (``resume``) an output
            written by another model. Nothing was written.
    """
    check_run_options(batch_size, workers, max_percentile)
    output = Path(output)
    check_output(output, paths)
    columns = output_columns(predictor)
    done = finished_paths(output, columns, retry_errors) if resume else set()
    todo = [path for path in paths if path not in done]
    summary = PredictionSummary(output, len(paths), len(paths) - len(todo), 0, 0)
    if progress is not None and summary.already_done:
        progress(summary.already_done)
    append = resume and output.is_file() and output.stat().st_size > 0
    with naming_write_errors(output, output.parent):
        output.parent.mkdir(parents=True, exist_ok=True)
        opened = open(output, "a" if append else "w", newline="") if resume else _replacing(output)  # noqa: SIM115
    with opened as stream:
        writer = csv.DictWriter(stream, columns, lineterminator="\n")
        if not append:
            with naming_write_errors(output):
                writer.writeheader()
        for rows in row_batches(predictor, todo, batch_size, workers, max_percentile):
            with naming_write_errors(output):  # a full disk names the file (scan: the rows before it are kept)
                writer.writerows(rows)
                stream.flush()
            failed = sum(row["error"] is not None for row in rows)
            summary.failed += failed
            summary.lost += sum(isinstance(row, LostRow) for row in rows)
            summary.predicted += len(rows) - failed
            if progress is not None:
                progress(len(rows))
    return summary


def write_ranking(rows: str | os.PathLike, column: str, target: str | os.PathLike) -> Path:
    """Sort the CSV ``rows`` by ``column`` ascending (error rows last, unranked) into ``target``, with a ``rank``."""
    table = pd.read_csv(rows, dtype=str, keep_default_na=False)
    key = pd.to_numeric(table[column], errors="coerce")
    order = key.sort_values(kind="stable", na_position="last").index
    ranked = table.loc[order].reset_index(drop=True)
    ranks = pd.Series(range(1, len(ranked) + 1), dtype="Int64").where(key.loc[order].notna().to_numpy())
    ranked.insert(0, "rank", ranks)
    target = Path(target)
    atomic_write(target, lambda tmp: ranked.to_csv(tmp, index=False))
    return target


def _check_replaceable(output: Path, columns: list[str]) -> None:
    """Refuse to replace an ``output`` that is not an earlier ranking with ``columns`` (someone else's file).

    Raises:
        OutputError: naming the file; it was not modified.
    """
    if not output.is_file() or output.stat().st_size == 0:
        return
    with open(output, newline="", encoding="utf-8", errors="replace") as stream:
        header = next(csv.reader(stream), None)
    if header != columns:
        raise OutputError(
            f"{output}: not a ranking of this model from paraisite scan (its columns are {header}); it was not "
            "modified. Choose another output file"
        )


def scan(
    predictor: Predictor, paths: Sequence[str], output: str | os.PathLike, *, locked: bool = False, **options: Any
) -> PredictionSummary:
    """Predict ``paths`` resumably, then write their ranking (lowest first by the first value column) to ``output``.

    The rows are appended, batch by batch, to the progress log :func:`~paraisite.zoo.files.scan_log_path` beside
    ``output`` (:func:`run_predictions` with ``resume=True``; a re-run skips its paths); ``output`` is replaced by the
    ranking at the end. The summary's ``output`` is the log, its ``ranked`` the ranking. Holds :func:`output_lock`
    on ``output`` throughout (``locked``: the caller already holds it).
    """
    check_output(output, paths, scan=True)
    log = scan_log_path(output)
    with nullcontext() if locked else output_lock(output):
        _check_replaceable(Path(output), ["rank", *output_columns(predictor)])
        summary = run_predictions(predictor, paths, log, resume=True, **options)
        summary.ranked = write_ranking(log, predictor.columns[0], output)
    return summary
