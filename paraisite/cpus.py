"""How many CPUs this process may use, and the torch thread count and worker count chosen from them.

The rule (measured by ``benchmarks/busy_defaults.py``, figures in ``experiments/busy-defaults/``): torch gets half
of the CPUs this process may use (``os.sched_getaffinity``; at least one), and ``predict``/``scan`` start one
single-threaded worker per usable CPU for 1,000 files or more. torch's own default, one thread per CPU of the
machine, makes its threads wait on each other whenever another process is busy: on a 2-core machine shared with
other jobs, 10 epochs of the default training took 9.8 s with 1 thread and 43 s with 2; beside one more busy process,
44 s and 435 s. ``OMP_NUM_THREADS`` set by the user, or ``threads=N`` in a training config, wins over the rule.
"""

from __future__ import annotations

import os

#: The environment variable that, when set, decides torch's thread count instead of :func:`default_threads`.
THREADS_VARIABLE = "OMP_NUM_THREADS"


def usable_cpus() -> int:
    """CPUs this process may run on: its affinity mask (taskset, cgroup cpusets, SLURM), else the machine's count."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):  # macOS and Windows have no affinity mask
        return max(1, os.cpu_count() or 1)


def default_threads(cpus: int | None = None) -> int:
    """Torch threads for one process: half the usable CPUs (``cpus``, default :func:`usable_cpus`), at least 1."""
    return max(1, (usable_cpus() if cpus is None else cpus) // 2)


def chosen_threads(explicit: int | None = None) -> int | None:
    """The thread count to set: ``explicit``, else None when ``OMP_NUM_THREADS`` is set, else the default.

    None means: leave torch as it is (it read ``OMP_NUM_THREADS`` itself); the default is :func:`default_threads`.
    """
    if explicit:
        return int(explicit)
    if os.environ.get(THREADS_VARIABLE):
        return None
    return default_threads()


def set_torch_threads(explicit: int | None = None) -> int:
    """Set torch's intra-op thread count by :func:`chosen_threads`; returns the count torch now uses."""
    import torch

    threads = chosen_threads(explicit)
    if threads is not None:
        torch.set_num_threads(threads)
    return torch.get_num_threads()
