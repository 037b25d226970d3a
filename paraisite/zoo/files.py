"""Which files a prediction takes and where its rows go: input discovery, option and output checks, the lock.

Light on purpose (no torch, pymatgen or pandas): the CLI runs these checks, and starts the worker processes
(:mod:`paraisite.zoo.workers`), before it imports the model code.
"""

from __future__ import annotations

import errno
import fnmatch
import os
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path

from paraisite.safety import WriteError, check_writable_folder, exclusive_lock

#: Names taken from folders (case-insensitive); files named on the command line are always tried.
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
#: The LTC model ``paraisite predict`` uses when ``--model`` is not given (a model shipped in the package).
RECOMMENDED_LTC_MODEL = "ltc-mf"
#: ``in_domain`` threshold on ``latent_percentile``. 100 (off): on crystals of datasets the LTC ensembles never saw,
#: a percentile threshold did not separate good from bad predictions, while unseen elements did
#: (``experiments/ltc-zoo/domain.md``). A lower value adds the latent check.
DEFAULT_MAX_PERCENTILE = 100.0
#: Structure files per batch: read, graphed and predicted together, and written to the CSV together.
DEFAULT_BATCH_SIZE = 128


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


class OutputError(ValueError):
    """An output file or option is refused; the refused file was not touched."""


def check_run_options(batch_size: int, workers: int, max_percentile: float = DEFAULT_MAX_PERCENTILE) -> None:
    """Refuse ``batch_size <= 0``, ``workers < 0`` and a ``max_percentile`` outside [0, 100]."""
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size <= 0:
        raise OutputError(f"--batch-size must be a positive integer, got {batch_size!r}")
    if isinstance(workers, bool) or not isinstance(workers, int) or workers < 0:
        raise OutputError(f"--workers must be 0 (read in this process) or more, got {workers!r}")
    if not 0.0 <= max_percentile <= 100.0:
        raise OutputError(f"--max-percentile must be within [0, 100], got {max_percentile!r}")


def _same_file(first: str | os.PathLike, second: str | os.PathLike) -> bool:
    try:
        return os.path.samefile(first, second)
    except OSError:  # one of them does not exist: compare the names
        return os.path.realpath(first) == os.path.realpath(second)


def check_output(output: str | os.PathLike, inputs: Iterable[str | os.PathLike], *, scan: bool = False) -> None:
    """Refuse an output that is one of the inputs (also its progress log, for ``scan``) or not a regular file.

    Runs before anything is written, so a refused output is never touched.

    Raises:
        OutputError: naming the output and the reason.
    """
    output = Path(output)
    log = scan_log_path(output)
    targets = [output, log] if scan else [output]
    if output.exists() and not output.is_file():
        raise OutputError(f"-o {output}: exists and is not a regular file (a directory, FIFO or device)")
    if scan and (log.is_symlink() or (log.exists() and not log.is_file())):
        raise OutputError(f"-o {output}: its progress log {log} is a link or not a regular file; remove it first")
    for path in inputs:
        for target in targets:
            if _same_file(target, path):
                kind = "the progress log of -o" if target != output else "-o"
                raise OutputError(f"{kind} {target} is also an input; choose another output file")


def check_output_folder(output: str | os.PathLike, *, scan: bool = False) -> None:
    """Refuse, before the model is loaded, an output the run could not write: its folder is tried for writing.

    A read-only folder (file system or permissions) or a full disk is refused at once, naming the path, instead of
    after every file was predicted; a missing folder is created by the run (its nearest existing parent is tried).
    ``scan``: its progress log, if there, must be writable too (it is appended to).

    Raises:
        WriteError: naming the path and the problem; nothing was written.
    """
    output = Path(output)
    check_writable_folder(output.parent, what=f"-o {output}", create=True)
    log = scan_log_path(output)
    if scan and log.is_file() and not os.access(log, os.W_OK):
        problem = f"-o {output}: its progress log {log} is not writable (permission denied); nothing was run"
        raise WriteError(errno.EACCES, problem)


@contextmanager
def output_lock(output: str | os.PathLike) -> Iterator[Path]:
    """Hold an exclusive lock on ``<output>.lock`` while ``scan`` writes ``output``: one writer per file.

    The lock is an ``flock`` (released by the kernel if the process dies, so ``kill -9`` leaves no stale lock); the
    file keeps the holder's pid for the refusal message and is removed when the block ends.

    Raises:
        OutputError: another process holds the lock (its pid is named); nothing was touched.
    """
    output = Path(output)
    lock = output.with_name(f"{output.name}.lock")
    with exclusive_lock(lock, remove=True) as holder:
        if holder is not None:
            raise OutputError(
                f"{output}: another paraisite scan (pid {holder or 'unknown'}) is writing this file (lock {lock}); "
                "wait for it to finish or choose another output"
            )
        yield lock


#: What ``scan`` appends to as it goes (rows in input order; a re-run resumes from it), beside its ``-o``.
SCAN_LOG_SUFFIX = ".progress.csv"


def scan_log_path(output: str | os.PathLike) -> Path:
    """``<out stem>.progress.csv`` beside ``output``: the rows ``scan`` appends as it goes; ``-o`` gets the ranking."""
    output = Path(output)
    return output.with_name(f"{output.stem}{SCAN_LOG_SUFFIX}")


#: File beside the shipped ensembles pinning each one's manifest: ``<sha256>  <name>`` per line (``zoo ship``
#: writes it). An edited manifest (say, a calibration quantile) is then refused like an edited member.
MANIFEST_PINS = "manifests.sha256"


class UnpinnedManifestError(ValueError):
    """A shipped ensemble's manifest is not the one pinned in the package (or is not pinned at all)."""


def manifest_pins(models_dir: Path) -> dict[str, str]:
    """The pinned manifest sha256 of each shipped ensemble in ``models_dir``, by name (none if no pin file)."""
    path = models_dir / MANIFEST_PINS
    if not path.is_file():
        return {}
    pins = {}
    for line in path.read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            digest, name = line.split()
            pins[name] = digest
    return pins


def check_pinned_manifest(manifest: Path) -> None:
    """Refuse a shipped ensemble's ``<models>/<name>/manifest.json`` whose sha256 is not the one pinned.

    Raises:
        UnpinnedManifestError: naming the file, the pinned and the actual sha256 (nothing was loaded).
    """
    import hashlib

    name, pins_path = manifest.parent.name, manifest.parent.parent / MANIFEST_PINS
    actual = hashlib.sha256(manifest.read_bytes()).hexdigest()
    pinned = manifest_pins(manifest.parent.parent).get(name)
    if pinned is None:
        raise UnpinnedManifestError(
            f"{manifest}: the shipped ensemble {name} is not pinned in {pins_path} (`zoo ship` pins what it ships); "
            "refused, nothing was loaded"
        )
    if pinned != actual:
        raise UnpinnedManifestError(
            f"{manifest}: sha256 mismatch: {pins_path} pins {pinned}, the file has {actual}. The shipped ensemble "
            "was refused and nothing was loaded (an edited manifest is refused like an edited member)"
        )


def pin_manifest(manifest: Path) -> None:
    """Pin ``<models>/<name>/manifest.json``'s sha256 in ``<models>/`` :data:`MANIFEST_PINS` (replacing its pin)."""
    import hashlib

    from paraisite.safety import atomic_write

    pins = manifest_pins(manifest.parent.parent)
    pins[manifest.parent.name] = hashlib.sha256(manifest.read_bytes()).hexdigest()
    text = "".join(f"{digest}  {name}\n" for name, digest in sorted(pins.items()))
    atomic_write(manifest.parent.parent / MANIFEST_PINS, lambda tmp: tmp.write_text(text))
