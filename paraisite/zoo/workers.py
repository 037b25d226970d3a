"""The prediction workers: their fork server and their pool, owned by the main process.

The fork server does the imports once, before the model is loaded. In the pool (:class:`WorkerPool`) a worker's
death costs only its file, and no worker or fork server outlives the main process.
"""

from __future__ import annotations

import atexit
import contextlib
import multiprocessing
import multiprocessing.connection
import os
import signal
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from typing import Any

from paraisite.safety import configured_limit

#: How worker processes start. Not ``fork``: a forked child of a parent that already ran torch's thread pool
#: (loading the model does) can block forever in its first parallel torch op (seen with 216-atom cells in
#: ``MEGNetGraphBuilder.build``). Not ``spawn`` either: each spawned worker imported torch, torch_geometric,
#: pymatgen and matgl again (about 5 CPU-s each, after the main process had done the same), which was 15 of the
#: 20 s of a 1,000-file ensemble prediction. The fork server is a fresh interpreter with one torch thread that
#: only imports (:data:`WORKER_PRELOAD`); its children start with those modules loaded.
WORKER_START_METHOD = "forkserver"
#: Modules the fork server imports once for all workers.
WORKER_PRELOAD = ("torch", "torch_geometric", "pymatgen.core", "paraisite.zoo.predictors", "paraisite.zoo.scan")
#: What else a worker imports when it unpickles an LTC model (matgl, Lightning): 1.5 s per worker if not preloaded.
LTC_PRELOAD = ("paraisite.models.regressor", "paraisite.models.megnet", "paraisite.data.graphs")
#: Zoo names of the CGCNN models (the catalog's ``cgcnn-<name>``): they need no LTC modules.
CGCNN_ZOO_PREFIX = "cgcnn-"
#: Thread counts the fork server starts with (1 each), so that no worker inherits a thread pool.
THREAD_VARIABLES = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")


def worker_preload(model: str) -> tuple[str, ...]:
    """Modules to preload for ``--model``: the LTC ones too unless it is a zoo CGCNN model.

    Decided by the name alone, before anything is loaded; a wrong guess only costs time (a worker imports what its
    model needs when it unpickles it).
    """
    return WORKER_PRELOAD if model.startswith(CGCNN_ZOO_PREFIX) else WORKER_PRELOAD + LTC_PRELOAD


def start_worker_server(preload: tuple[str, ...] = WORKER_PRELOAD) -> None:
    """Start the fork server of the worker processes (if not running) and return at once; it imports in the background.

    Call it before loading the model: the server's imports (``preload``, see :func:`worker_preload`) then run on the
    other core while this process loads. It starts with one thread per library (:data:`THREAD_VARIABLES`), so no
    forked worker inherits a thread pool; this process's environment is left as it was. A server already running is
    kept, with its preload.
    """
    from multiprocessing import forkserver

    multiprocessing.get_context(WORKER_START_METHOD).set_forkserver_preload(list(preload))
    saved = {variable: os.environ.get(variable) for variable in THREAD_VARIABLES}
    os.environ.update(dict.fromkeys(THREAD_VARIABLES, "1"))
    try:
        forkserver.ensure_running()
    finally:
        for variable, value in saved.items():
            if value is None:
                os.environ.pop(variable)
            else:
                os.environ[variable] = value


# --- the pool: owned by the main process, survives worker deaths, never outlives the main process ---

#: Seconds a worker may spend on one file (reading and graphing it; a batch's prediction gets this per file) before
#: it is killed and the file becomes an error row (``PARAISITE_FILE_SECONDS``).
FILE_SECONDS = 600.0
#: Batches in flight beyond one per worker process.
LOOKAHEAD = 2
#: Seconds a worker is given to exit when the pool closes before it is killed.
EXIT_GRACE_S = 2.0
#: Seconds a new worker may take to start (fork, receive and unpickle the model) before its first file.
START_ALLOWANCE_S = 120.0
#: Workers that may die in a row before starting a file; then the files they were given fail with the cause.
MAX_START_FAILURES = 3

Row = dict[str, Any]
#: ``function(paths, at)``: the rows of ``paths`` in their order, calling ``at(i)`` before file ``i`` and
#: ``at(len(paths))`` before predicting them together. Runs in a worker process.
ChunkFunction = Callable[[list[str], Callable[[int], None]], list[Row]]


class LostRow(dict):
    """The error row of a file whose worker process died or ran out of time on it (the rest of the batch goes on)."""


def signal_cause(exitcode: int | None) -> str:
    """Why a worker process ended, from its exit code (``-N``: killed by signal N)."""
    if exitcode is not None and exitcode < 0:
        number = -exitcode
        try:
            name = signal.Signals(number).name
        except ValueError:
            name = "unknown signal"
        likely = ", likely out of memory" if number == signal.SIGKILL else ""
        return f"its worker process was killed by signal {number} ({name}){likely}"
    return f"its worker process exited with status {exitcode}"


def _watch_parent() -> None:
    """In a worker: exit as soon as the main process is gone (even killed by SIGKILL), busy or not."""
    parent = multiprocessing.parent_process()
    if parent is None:
        return

    def watch() -> None:
        multiprocessing.connection.wait([parent.sentinel])
        os._exit(1)

    threading.Thread(target=watch, name="paraisite-watchdog", daemon=True).start()


def _worker_main(conn: Connection, initializer: Callable[..., None], initargs: tuple, function: ChunkFunction) -> None:
    """A worker process: watch the main process, initialise, then run the chunks it is sent until told to stop."""
    _watch_parent()
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches the whole group: the main process decides
    initializer(*initargs)
    while True:
        try:
            paths = conn.recv()
        except EOFError:
            return
        if paths is None:
            return
        try:
            rows = function(paths, lambda index: conn.send(("at", index)))
        except Exception as error:  # the function turns file errors into rows; anything else fails the chunk
            conn.send(("failed", f"{type(error).__name__}: {error}"))
        else:
            conn.send(("rows", rows))


@dataclass
class _Task:
    chunk: int
    paths: list[str]


@dataclass
class _Worker:
    process: Any
    conn: Connection
    task: _Task | None = None
    position: int = -1  # the file being read; len(task.paths): predicting them
    since: float = 0.0


@dataclass
class WorkerPool:
    """Worker processes that run :data:`ChunkFunction` on chunks of paths, owned by the main process.

    - A worker that dies (killed by the kernel, a signal, or the per-file time limit) costs only its files: the file
      it was reading becomes a :class:`LostRow` naming the cause, the rest of its chunk is run again (one file at a
      time if it died while predicting), a new worker takes its place, and the other chunks go on.
    - Closing the pool (normal end, an exception, SIGINT, SIGTERM: :func:`terminating_on_signals`; also at exit)
      ends every worker. A worker exits by itself when the main process is gone, even killed by SIGKILL; the fork
      server exits when no process it served is left.
    """

    workers: int
    initializer: Callable[..., None]
    initargs: tuple
    function: ChunkFunction
    file_seconds: float = FILE_SECONDS
    _pool: list[_Worker] = field(default_factory=list)
    _retry: deque[_Task] = field(default_factory=deque)
    _rows: dict[int, dict[str, Row]] = field(default_factory=dict)
    _start_failures: int = 0

    def _start(self) -> _Worker:
        context: Any = multiprocessing.get_context(WORKER_START_METHOD)
        mine, theirs = context.Pipe()
        process = context.Process(
            target=_worker_main, args=(theirs, self.initializer, self.initargs, self.function), daemon=True
        )
        process.start()
        theirs.close()
        worker = _Worker(process, mine)
        self._pool.append(worker)
        return worker

    def map(self, chunks: Sequence[Sequence[str]]) -> Iterator[list[Row]]:
        """The rows of each chunk, in chunk order; the pool is closed when the iteration ends, however it ends."""
        atexit.register(self.close)
        try:
            with terminating_on_signals():
                yield from self._map([list(chunk) for chunk in chunks])
        finally:
            self.close()
            atexit.unregister(self.close)

    def _map(self, chunks: list[list[str]]) -> Iterator[list[Row]]:
        waiting = deque(_Task(index, chunk) for index, chunk in enumerate(chunks))
        for _ in range(min(self.workers, len(chunks))):
            self._start()
        done = 0
        while done < len(chunks):
            while done < len(chunks) and len(self._rows.get(done, {})) == len(set(chunks[done])):
                finished = self._rows.pop(done)
                yield [finished[path] for path in chunks[done]]
                done += 1
            if done == len(chunks):
                return
            for worker in [w for w in self._pool if w.task is None]:
                if self._retry:
                    task = self._retry.popleft()
                elif waiting and waiting[0].chunk < done + self.workers + LOOKAHEAD:
                    task = waiting.popleft()
                else:
                    break
                worker.task, worker.position, worker.since = task, -1, time.monotonic()
                worker.conn.send(task.paths)
            self._wait()

    def _wait(self) -> None:
        """Take the workers' messages, then deal with the dead and the late ones (replaced by new workers)."""
        busy = [w for w in self._pool if w.task is not None]
        deadlines = [w.since + self._allowance(w) for w in busy]
        timeout = max(0.0, min(deadlines, default=1.0) - time.monotonic()) if busy else 1.0
        ready = multiprocessing.connection.wait(
            [w.conn for w in self._pool] + [w.process.sentinel for w in self._pool], timeout=min(timeout, 1.0)
        )
        for worker in list(self._pool):
            while worker.conn in ready or worker.process.sentinel in ready:
                try:
                    if not worker.conn.poll():
                        break
                    message = worker.conn.recv()
                except (EOFError, OSError):
                    break
                self._take(worker, message)
            now = time.monotonic()
            if worker.task is not None and now - worker.since > self._allowance(worker):
                worker.process.kill()
                worker.process.join()
                limit = f"{self.file_seconds:g}"
                self._lost(worker, f"took more than the {limit} s per-file limit (PARAISITE_FILE_SECONDS)")
            elif not worker.process.is_alive():
                worker.process.join()
                self._lost(worker, signal_cause(worker.process.exitcode))

    def _allowance(self, worker: _Worker) -> float:
        if worker.position < 0:
            return max(self.file_seconds, START_ALLOWANCE_S)
        if worker.task is not None and worker.position >= len(worker.task.paths):
            return self.file_seconds * max(1, len(worker.task.paths))
        return self.file_seconds

    def _take(self, worker: _Worker, message: tuple) -> None:
        kind, value = message
        task = worker.task
        if task is None:
            return
        if kind == "at":
            worker.position, worker.since = int(value), time.monotonic()
            self._start_failures = 0
            return
        if kind == "rows":
            self._rows.setdefault(task.chunk, {}).update((row["path"], row) for row in value)
        else:  # the chunk function failed as a whole: each file gets the reason
            for path in task.paths:
                self._store(task.chunk, path, f"{path}: not predicted ({value})")
        worker.task = None

    def _store(self, chunk: int, path: str, error: str) -> None:
        self._rows.setdefault(chunk, {})[path] = LostRow(path=path, error=error)

    def _lost(self, worker: _Worker, cause: str) -> None:
        """``worker`` is gone: its file is an error row, the rest of its chunk runs again; a new worker is started."""
        self._pool.remove(worker)
        worker.conn.close()
        task = worker.task
        if task is None:
            if self._retry or any(w.task is not None for w in self._pool) or not self._pool:
                self._start()
            return
        paths = task.paths
        self._start_failures = self._start_failures + 1 if worker.position < 0 else 0
        if worker.position < 0 and self._start_failures < MAX_START_FAILURES:
            self._retry.appendleft(task)  # it died starting: the files are not to blame yet
        elif worker.position < 0:
            for path in paths:
                self._store(task.chunk, path, f"{path}: {cause} while starting, {MAX_START_FAILURES} times in a row")
        elif worker.position < len(paths):
            culprit = paths[worker.position]
            self._store(task.chunk, culprit, f"{culprit}: {cause} while it read this file or built its graph")
            rest = [path for path in paths if path != culprit]
            if rest:
                self._retry.appendleft(_Task(task.chunk, rest))
        elif len(paths) == 1:
            self._store(task.chunk, paths[0], f"{paths[0]}: {cause} while it predicted this file")
        else:  # died predicting the batch: find the file by predicting them one by one
            self._retry.extendleft(_Task(task.chunk, [path]) for path in reversed(paths))
        self._start()

    def close(self) -> None:
        """End every worker: idle ones are told to stop, busy ones are killed; none is left after ``EXIT_GRACE_S``."""
        for worker in self._pool:
            if worker.task is None:
                with contextlib.suppress(OSError):
                    worker.conn.send(None)
            else:
                worker.process.kill()
        deadline = time.monotonic() + EXIT_GRACE_S
        for worker in self._pool:
            worker.process.join(max(0.0, deadline - time.monotonic()))
            if worker.process.is_alive():
                worker.process.kill()
                worker.process.join()
            worker.conn.close()
        self._pool.clear()


class Terminated(SystemExit):
    """SIGTERM in the main process, raised where it runs so that the pool and temporary files are cleaned up."""


@contextlib.contextmanager
def terminating_on_signals() -> Iterator[None]:
    """While in the block (main thread only), SIGTERM raises :class:`Terminated` (exit status 143).

    As SIGINT raises ``KeyboardInterrupt``, the ``finally`` blocks then run (the pool closes, a ``.tmp`` output is
    removed).
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(number: int, frame: Any) -> None:
        raise Terminated(128 + number)

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def file_seconds() -> float:
    """:data:`FILE_SECONDS`, or what ``PARAISITE_FILE_SECONDS`` sets."""
    return configured_limit("PARAISITE_FILE_SECONDS", FILE_SECONDS)
