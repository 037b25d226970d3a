"""Checks on files and paths that come from outside paraisite (users, manifests, archives, site tables).

One place for the rules every reader applies:

- :func:`resolve_inside`: a relative name taken from outside data (a manifest member, a site table's
  ``repo``/``tag``/``file``, a bundle name) resolves to a path inside a given root, or is refused: no absolute
  paths, no ``..``, no empty parts, no link that leads out of the root.
- :func:`check_regular_file`: an input is a regular file (not a FIFO, device, socket or directory) no larger than
  a limit, checked without opening it first, so a FIFO never blocks the reader.
- :func:`read_limited`: the bytes of a regular file, refused past a size limit (also for ``.gz`` and ``.xz``
  contents, whose decompressed size is what is limited: a decompression bomb is cut off at the limit).
- :func:`atomic_write`: a file is replaced whole or not at all, so a reader never sees half of it; a failed write
  (a full disk, a read-only file system) names the file (:func:`naming_write_errors`).
- :func:`check_writable_folder`: a folder a command will write into is tried before the work starts, so a read-only
  or full one is refused at once, naming it.
- :func:`exclusive_lock`: one process at a time (one writer of a scan's CSV, one trainer of a job).
- :func:`configured_limit`: a cost bound's value, its default overridden by an environment variable
  (``docs/limits.md`` lists them).

Everything here is cheap and has no heavy imports, so it can run on every load.
"""

from __future__ import annotations

import errno
import fcntl
import gzip
import io
import lzma
import os
import re
import stat
import tempfile
import zlib
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path, PurePosixPath

#: Largest structure file read by ``predict``/``scan`` (also the largest decompressed ``.gz`` content).
MAX_STRUCTURE_BYTES = 64 * 1024**2
#: Largest checkpoint file loaded (the published bundles' members are a few MB).
MAX_CHECKPOINT_BYTES = 2 * 1024**3
#: Characters allowed in one part of a relative name from outside data (no separators, no control characters).
_SAFE_PART = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9._+-]*$")


class LimitSettingError(ValueError):
    """An environment variable that sets a limit holds something other than a positive number."""


def configured_limit(variable: str, default: float) -> float:
    """The limit ``variable`` sets in the environment (a positive number), else ``default``.

    Raises:
        LimitSettingError: naming the variable and its value.
    """
    text = os.environ.get(variable, "").strip()
    if not text:
        return default
    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if not value > 0 or value == float("inf"):
        raise LimitSettingError(f"{variable}={text!r}: a limit must be a positive finite number (see docs/limits.md)")
    return value


#: The environment variables that set cost bounds of ``predict``/``scan`` (``docs/limits.md``).
PREDICTION_LIMIT_VARIABLES = (
    "PARAISITE_MAX_ATOMS",
    "PARAISITE_MAX_CIF_IMAGES",
    "PARAISITE_MAX_GRAPH_EDGES",
    "PARAISITE_FILE_SECONDS",
)


def check_limit_variables(variables: tuple[str, ...] = PREDICTION_LIMIT_VARIABLES) -> None:
    """Refuse, before any work, a bound's variable that is set to something other than a positive number.

    Raises:
        LimitSettingError: naming the variable and its value.
    """
    for variable in variables:
        configured_limit(variable, 1.0)


def new_file_mode() -> int:
    """The mode ``open()`` gives a new file under the current umask (``0o666 & ~umask``)."""
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


def atomic_write(path: Path, write: Callable[[Path], object]) -> None:
    """Call ``write(tmp)`` then move ``tmp`` to ``path``, so readers never see a half-written file.

    The file gets the mode a plain ``open()`` would give it (the umask's), not the temporary file's 0600.

    Raises:
        WriteError: writing failed (a full disk, a read-only file system, ...), naming ``path``; it was left as it
            was.
    """
    with naming_write_errors(path, path.parent):
        path.parent.mkdir(parents=True, exist_ok=True)
        handle, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(handle)
    try:
        with naming_write_errors(path, tmp):
            write(Path(tmp))
            os.chmod(tmp, new_file_mode())
            os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


class WriteError(OSError):
    """Writing a file failed (a full disk, a read-only file system, a permission); the message names the file."""

    def __str__(self) -> str:
        return str(self.strerror)  # the message names the file and the problem; no "[Errno N]" before it


#: Why a write fails, in words, for the errors a user can fix by choosing another place (or freeing space).
_WRITE_PROBLEMS = {
    errno.ENOSPC: "no space left on the device (the disk is full)",
    errno.EDQUOT: "the disk quota is exceeded",
    errno.EROFS: "a read-only file system",
    errno.EACCES: "permission denied",
    errno.EPERM: "operation not permitted",
    errno.EFBIG: "the file is larger than this process may write",
}


def write_problem(error: OSError) -> str:
    """``error`` in words (:data:`_WRITE_PROBLEMS`, else its own text)."""
    return _WRITE_PROBLEMS.get(error.errno or 0, error.strerror or str(error))


@contextmanager
def naming_write_errors(path: str | os.PathLike, *also: str | os.PathLike) -> Iterator[None]:
    """Raise an ``OSError`` of the block that is about writing ``path`` as a :class:`WriteError` naming ``path``.

    About writing ``path``: the error names no file (``write()`` on a full disk), or names ``path`` or one of
    ``also`` (its temporary file), or is one of the errors of :data:`_WRITE_PROBLEMS` other than a permission (a
    full disk is full whatever file the error names). Other errors (say, reading an input) pass unchanged.
    """
    try:
        yield
    except WriteError:
        raise
    except OSError as error:
        named = {os.fspath(name) for name in (path, *also)}
        about_output = error.filename is None or os.fspath(error.filename) in named
        if not (about_output or error.errno in (errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EFBIG)):
            raise
        raise WriteError(error.errno, f"{path}: could not be written: {write_problem(error)}") from error


def check_writable_folder(folder: str | os.PathLike, *, what: str, create: bool = False) -> None:
    """Refuse, before any work, a folder that a file could not be written into: try writing one there.

    A small hidden file is created, written and removed in ``folder`` (or, with ``create``, in its nearest existing
    parent when ``folder`` does not exist yet: the command creates it), so a read-only file system, a folder without
    write permission and a full disk are all refused at once, by the kernel's own answer.

    Args:
        folder: where the command will write.
        what: what the folder is for, for the message (e.g. ``"-o out/x.csv"``).
        create: a missing ``folder`` is allowed (else it is refused).

    Raises:
        WriteError: naming ``what``, the folder and the problem.
    """
    folder = Path(folder)
    tried = folder
    while not tried.exists():
        if not create:
            raise WriteError(errno.ENOENT, f"{what}: the folder {folder} does not exist; create it first")
        tried = tried.parent
    if not tried.is_dir():
        raise WriteError(errno.ENOTDIR, f"{what}: {tried} is not a folder")
    try:
        handle, probe = tempfile.mkstemp(dir=tried, prefix=".paraisite-write-check.")
        try:
            os.write(handle, b"\n")
            os.fsync(handle)
        finally:
            os.close(handle)
            os.unlink(probe)
    except OSError as error:
        raise WriteError(
            error.errno, f"{what}: cannot write into {tried}: {write_problem(error)}; nothing was run"
        ) from error


@contextmanager
def exclusive_lock(path: Path, remove: bool = False) -> Iterator[str | None]:
    """Try to hold an exclusive ``flock`` on ``path`` (created if missing) for the ``with`` block.

    Yields ``None`` when this process holds it (its pid is then written in the file), else what the holder wrote
    there (its pid; "" if unknown), without waiting. The kernel releases the lock when its holder dies, so a killed
    process leaves no stale lock.

    ``remove``: the holder deletes the file when its block ends (else it is left in place). A process that opened the
    file just before its holder removed it would then lock a file no longer in the folder: after locking, the lock is
    kept only if ``path`` still names the locked file, else it is taken again.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    while True:
        descriptor = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            try:
                fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                yield os.pread(descriptor, 64, 0).decode(errors="replace").strip()
                return
            if remove and not _names(path, descriptor):
                continue
            os.ftruncate(descriptor, 0)
            os.pwrite(descriptor, f"{os.getpid()}\n".encode(), 0)
            try:
                yield None
            finally:
                if remove:
                    path.unlink(missing_ok=True)  # while still held: nobody else can hold this file
            return
        finally:
            os.close(descriptor)  # releases the lock


def _names(path: Path, descriptor: int) -> bool:
    """Whether ``path`` still names the file open as ``descriptor``."""
    held = os.fstat(descriptor)
    try:
        named = os.stat(path)
    except FileNotFoundError:
        return False
    return (held.st_dev, held.st_ino) == (named.st_dev, named.st_ino)


class UnsafePathError(ValueError):
    """A path taken from outside data would leave its root (or is not a plain relative name)."""


class UnsafeFileError(ValueError):
    """An input file is not a regular file, or is larger than the limit for its kind."""


def check_relative_name(name: object, *, what: str, parts: int | None = None) -> list[str]:
    """The parts of a relative, POSIX-style name from outside data; refused unless plain.

    Refused: non-strings, empty names, absolute paths, backslashes, ``.``/``..`` or empty parts, and parts with
    characters outside ``[A-Za-z0-9._+-]`` (or starting with ``.``, ``+`` or ``-``). ``parts`` requires exactly that
    many parts (1: a plain file or directory name, no ``/``).

    Raises:
        UnsafePathError: naming ``what``, the value and the reason.
    """
    if not isinstance(name, str) or not name:
        raise UnsafePathError(f"{what}: {name!r} is not a non-empty relative name")
    if "\\" in name or name.startswith("/") or PurePosixPath(name).is_absolute():
        raise UnsafePathError(f"{what}: {name!r} is an absolute path or uses backslashes; only relative names")
    split = name.split("/")
    for part in split:
        if part in ("", ".", "..") or not _SAFE_PART.match(part):
            raise UnsafePathError(f"{what}: {name!r} has the part {part!r}; allowed: [A-Za-z0-9._+-], no '..'")
    if parts is not None and len(split) != parts:
        raise UnsafePathError(f"{what}: {name!r} must be {parts} plain name(s) separated by '/', not {len(split)}")
    return split


def resolve_inside(root: str | os.PathLike, name: str, *, what: str, parts: int | None = None) -> Path:
    """``root / name`` for a relative name from outside data, refused if it would leave ``root``.

    ``name`` must pass :func:`check_relative_name`; then any existing link on the way must resolve inside ``root``.
    This is the one check for every path derived from outside data (manifest members, site-table
    ``repo``/``tag``/``file``, bundle names).

    Args:
        root: the directory the result must stay in.
        name: the relative name (e.g. ``seed1.ckpt``, ``owner/repo/releases/download/tag/file``).
        what: what ``name`` is, for the error (e.g. ``"manifest member of /x/manifest.json"``).
        parts: see :func:`check_relative_name`.

    Raises:
        UnsafePathError: naming ``what``, the value and the reason.
    """
    split = check_relative_name(name, what=what, parts=parts)
    root_path = Path(root)
    target = root_path.joinpath(*split)
    real_root = os.path.realpath(root_path)
    real_target = os.path.realpath(target)
    if os.path.commonpath([real_root, real_target]) != real_root:
        raise UnsafePathError(f"{what}: {name!r} resolves to {real_target}, outside {real_root} (a link?)")
    return target


def check_regular_file(path: str | os.PathLike, max_bytes: int, *, what: str = "file") -> os.stat_result:
    """Refuse anything but a regular file of at most ``max_bytes`` (links are followed; the target is checked).

    Raises:
        FileNotFoundError: ``path`` does not exist.
        UnsafeFileError: a FIFO, device, socket or directory, or a file larger than ``max_bytes``.
    """
    info = os.stat(path)  # never opens: a FIFO is refused here instead of blocking a reader
    if not stat.S_ISREG(info.st_mode):
        raise UnsafeFileError(f"{path}: not a regular file ({_kind(info.st_mode)}); {what}s must be regular files")
    if info.st_size > max_bytes:
        raise UnsafeFileError(f"{path}: {info.st_size} bytes, more than the {max_bytes}-byte limit for a {what}")
    return info


def read_limited(
    path: str | os.PathLike, max_bytes: int, *, what: str = "file", compressed: tuple[str, ...] = (".gz",)
) -> bytes:
    """The bytes of a regular file (decompressed if its suffix is in ``compressed``), refused past ``max_bytes``.

    The file is opened without blocking and checked again on the open descriptor, so a path swapped for a FIFO
    after :func:`check_regular_file` cannot block the reader either.

    Raises:
        FileNotFoundError: ``path`` does not exist.
        UnsafeFileError: not a regular file, larger than ``max_bytes``, or compressed content that is.
    """
    check_regular_file(path, max_bytes, what=what)
    descriptor = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
    with open(descriptor, "rb") as raw:
        if not stat.S_ISREG(os.fstat(descriptor).st_mode):
            raise UnsafeFileError(f"{path}: not a regular file; {what}s must be regular files")
        data = raw.read(max_bytes + 1)
    if len(data) > max_bytes:
        raise UnsafeFileError(f"{path}: larger than the {max_bytes}-byte limit for a {what}")
    if Path(path).suffix.lower() in compressed:
        data = decompressed(data, path, max_bytes, what=what)
    return data


#: Compressed formats :func:`decompressed` reads: file suffix -> name.
COMPRESSED_FORMATS = {".gz": "gzip", ".xz": "xz"}


def decompressed(data: bytes, path: str | os.PathLike, max_bytes: int, *, what: str = "file") -> bytes:
    """``data`` (the bytes of ``path``) decompressed by the file's suffix, cut off and refused past ``max_bytes``.

    Raises:
        UnsafeFileError: a suffix not in :data:`COMPRESSED_FORMATS`, content that does not decompress, or more
            than ``max_bytes`` of it (a decompression bomb is stopped at the limit).
    """
    suffix = Path(path).suffix.lower()
    if suffix not in COMPRESSED_FORMATS:
        raise UnsafeFileError(f"{path}: {suffix or 'no suffix'} is not a compressed format read here")
    raw = io.BytesIO(data)
    try:
        if suffix == ".gz":
            with gzip.GzipFile(fileobj=raw) as stream:
                content = stream.read(max_bytes + 1)
        else:
            with lzma.LZMAFile(raw, format=lzma.FORMAT_XZ) as stream:
                content = stream.read(max_bytes + 1)
    except (OSError, EOFError, zlib.error, lzma.LZMAError) as error:
        raise UnsafeFileError(f"{path}: not a readable {COMPRESSED_FORMATS[suffix]} file ({error})") from None
    if len(content) > max_bytes:
        raise UnsafeFileError(f"{path}: content larger than the {max_bytes}-byte limit for a {what} (decompressed)")
    return content


def _kind(mode: int) -> str:
    kinds = (
        (stat.S_ISDIR, "a directory"),
        (stat.S_ISFIFO, "a FIFO"),
        (stat.S_ISCHR, "a character device"),
        (stat.S_ISBLK, "a block device"),
        (stat.S_ISSOCK, "a socket"),
    )
    return next((name for test, name in kinds if test(mode)), "not a plain file")
