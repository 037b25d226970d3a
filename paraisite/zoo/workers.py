"""The fork server the prediction workers start from: imports done once, before the model is loaded."""

from __future__ import annotations

import multiprocessing
import os

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
