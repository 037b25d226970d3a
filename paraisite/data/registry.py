"""Pinned, checksummed upstream files (datasets, pretrained weights), fetched through pooch.

Every file the project uses is listed in ``registry.tsv`` with its repository, path, sha256 and size;
the repository commits are pinned in :data:`UPSTREAM_COMMITS`. A file is downloaded from
``https://raw.githubusercontent.com/<owner>/<repo>/<commit>/<path>``, or, when a mirror root is set,
copied from ``<mirror>/<owner>/<repo>/<path>`` (air-gapped clusters), then verified and cached.

Settings (first match wins): explicit arguments, :func:`configure`, the environment variables
``PARAISITE_CACHE`` / ``PARAISITE_MIRROR``, then the defaults (pooch's OS cache, no mirror).
"""

from __future__ import annotations

import csv
import fnmatch
import hashlib
import os
import shutil
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING

import pooch

UPSTREAM_COMMITS: dict[str, str] = {
    "liudakl/ParAIsite": "cc0c1ff578cbed186ba930784db2909b0066a80e",
    "materialsvirtuallab/matgl": "e9cde2291acd0b4c4a342428e7dd5e4d596b7bf9",
    "txie-93/cgcnn": "f42ab233c4ee0c416879d6bc2d22a264418413ad",
    "anthony-wang/can_machine_learning_find_extraordinary_materials": "a92de37fb3c9640db66a8e8781d9bcc1a69b2d73",
    "xia0WT/thermal_conductivity_summary": "da3654a68c96ada0b16603972fc9201cfc6a0c08",
    "lrcfmd/thermal_conductivity_RF": "6aed449d12519d8e55f7df06b82c94deb0133d7c",
}
RAW_URL = "https://raw.githubusercontent.com/"
RELEASE_URL = "https://github.com/"
CACHE_ENV = "PARAISITE_CACHE"
MIRROR_ENV = "PARAISITE_MIRROR"

_PARAISITE = "liudakl/ParAIsite"
_AFLOW_CSV = "anthony-wang/can_machine_learning_find_extraordinary_materials"
#: Named groups of files for ``paraisite data fetch NAME``: repository -> glob patterns of paths.
GROUPS: dict[str, dict[str, list[str]]] = {
    "dataset1": {_PARAISITE: ["main/src/structures_scalers/*Dataset1.pkl"]},
    "dataset2": {_PARAISITE: ["main/src/structures_scalers/*Dataset2.pkl"]},
    "mix": {_PARAISITE: ["main/src/structures_scalers/*Dataset1.pkl", "main/src/structures_scalers/*Dataset2.pkl"]},
    "aflow": {
        _PARAISITE: ["main/src/structures_scalers/TC_AFLOW.pkl", "main/src/aflow_cif/*.cif"],
        _AFLOW_CSV: ["data/agl_log10_thermal_conductivity_300K/*.csv"],
    },
    "measured": {
        "xia0WT/thermal_conductivity_summary": ["new_set_tcd.csv"],
        "lrcfmd/thermal_conductivity_RF": ["data.csv"],
        _PARAISITE: [
            "main/src/aflow_cif/*.cif",
            "main/src/structures_scalers/*Dataset1.pkl",
            "main/src/structures_scalers/*Dataset2.pkl",
        ],
    },
    "paper-results": {_PARAISITE: ["main/src/results_on_train_test/*.csv"]},
    "megnet-eform": {"materialsvirtuallab/matgl": ["pretrained_models/MEGNet-MP-2018.6.1-Eform/*"]},
    "megnet-bandgap": {"materialsvirtuallab/matgl": ["pretrained_models/MEGNet-MP-2019.4.1-BandGap-mfi/*"]},
    "cgcnn": {"txie-93/cgcnn": ["pre-trained/*.pth.tar", "data/sample-regression/*"]},
}


class RegistryError(RuntimeError):
    """Base class of the registry's errors."""


class ChecksumError(RegistryError):
    """A file's sha256 differs from the pinned one; the file is refused and never loaded."""


class MissingFileError(RegistryError, FileNotFoundError):
    """A file could be found neither at its URL nor in the mirror."""


class _RepositoryLayout:
    """Cache and mirror names of a file of repository ``repo`` at ``path`` (host and commit dropped)."""

    repo: str
    if TYPE_CHECKING:  # a dataclass field in UpstreamFile, a property in ReleaseAsset

        @property
        def path(self) -> str:
            """Path of the file under its repository."""

    @property
    def key(self) -> str:
        """Name of the file in the registry and in the cache: ``<owner>/<repo>/<path>``."""
        return f"{self.repo}/{self.path}"

    def mirror_path(self, mirror: str | os.PathLike) -> Path:
        """Where a mirror keeps this file: ``<mirror>/<owner>/<repo>/<path>``."""
        return Path(mirror) / self.repo / self.path


@dataclass(frozen=True)
class UpstreamFile(_RepositoryLayout):
    """One pinned upstream file."""

    repo: str
    path: str
    sha256: str
    size: int

    @property
    def commit(self) -> str:
        """The pinned commit of the file's repository."""
        return UPSTREAM_COMMITS[self.repo]

    @property
    def url(self) -> str:
        """Download URL pinned to the commit."""
        return f"{RAW_URL}{self.repo}/{self.commit}/{self.path}"


@dataclass(frozen=True)
class ReleaseAsset(_RepositoryLayout):
    """A file attached to a release of a repository (e.g. a zoo bundle archive), pinned by tag and sha256.

    Its URL is ``https://github.com/<repo>/releases/download/<tag>/<file>``; a mirror keeps it at
    ``<mirror>/<repo>/releases/download/<tag>/<file>`` (the same rule as for repository files: the host, and the
    commit for those, are dropped).
    """

    repo: str
    tag: str
    file: str
    sha256: str
    size: int

    @property
    def path(self) -> str:
        """Path of the asset under its repository: ``releases/download/<tag>/<file>``."""
        return f"releases/download/{self.tag}/{self.file}"

    @property
    def url(self) -> str:
        """Download URL of the release asset."""
        return f"{RELEASE_URL}{self.repo}/{self.path}"


#: A pinned file: a repository file at a commit, or a release asset.
PinnedFile = UpstreamFile | ReleaseAsset


def read_tsv(text: str) -> csv.DictReader:
    """Rows of a tab-separated table with a header line; lines starting with ``#`` are comments."""
    return csv.DictReader((line for line in text.splitlines() if not line.startswith("#")), delimiter="\t")


def _load_registry() -> dict[str, UpstreamFile]:
    text = resources.files("paraisite.data").joinpath("registry.tsv").read_text()
    rows = read_tsv(text)
    files = [UpstreamFile(r["repo"], r["path"], r["sha256"], int(r["size"])) for r in rows]
    return {f.key: f for f in files}


REGISTRY: dict[str, UpstreamFile] = _load_registry()
pooch.get_logger().setLevel("WARNING")  # one line per file is noise for 5,578 CIFs; the CLI shows progress

_settings: dict[str, str | None] = {"cache_dir": None, "mirror": None}


def configure(cache_dir: str | os.PathLike | None = None, mirror: str | os.PathLike | None = None) -> None:
    """Set the process-wide cache and mirror (from a config); ``None`` leaves the environment/default in force."""
    _settings["cache_dir"] = str(cache_dir) if cache_dir else None
    _settings["mirror"] = str(mirror) if mirror else None


@contextmanager
def configured(cache_dir: str | os.PathLike | None = None, mirror: str | os.PathLike | None = None) -> Iterator[None]:
    """:func:`configure` for the duration of a block, then restore the previous settings (one run, one test)."""
    previous = dict(_settings)
    configure(cache_dir, mirror)
    try:
        yield
    finally:
        _settings.update(previous)


def cache_dir(override: str | os.PathLike | None = None) -> Path:
    """The cache root: argument, :func:`configure`, ``$PARAISITE_CACHE``, else the OS cache folder."""
    chosen = override or _settings["cache_dir"] or os.environ.get(CACHE_ENV)
    return Path(chosen).expanduser() if chosen else Path(pooch.os_cache("paraisite"))


def mirror_dir(override: str | os.PathLike | None = None) -> Path | None:
    """The mirror root, if one is set (argument, :func:`configure`, ``$PARAISITE_MIRROR``)."""
    chosen = override or _settings["mirror"] or os.environ.get(MIRROR_ENV)
    return Path(chosen).expanduser() if chosen else None


def get(repo: str, path: str) -> UpstreamFile:
    """The registry entry of ``path`` in ``repo``."""
    try:
        return REGISTRY[f"{repo}/{path}"]
    except KeyError:
        raise KeyError(f"{repo}/{path} is not in the paraisite registry (paraisite/data/registry.tsv)") from None


def select(repo: str, pattern: str) -> list[UpstreamFile]:
    """Registry entries of ``repo`` whose path matches the glob ``pattern``, sorted by path."""
    found = [f for f in REGISTRY.values() if f.repo == repo and fnmatch.fnmatch(f.path, pattern)]
    return sorted(found, key=lambda f: f.path)


def group_files(name: str) -> list[UpstreamFile]:
    """The files of a named group (see :data:`GROUPS`)."""
    if name not in GROUPS:
        raise KeyError(f"unknown data group {name!r}; valid names: {', '.join(GROUPS)}")
    seen: dict[str, UpstreamFile] = {}
    for repo, patterns in GROUPS[name].items():
        for pattern in patterns:
            seen.update((f.key, f) for f in select(repo, pattern))
    return list(seen.values())


def sha256sum(path: str | os.PathLike) -> str:
    """Hex sha256 of a file."""
    digest = hashlib.sha256()
    with open(path, "rb") as stream:
        for block in iter(lambda: stream.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def offline_advice(entry: PinnedFile, cache: Path) -> str:
    """What to do when ``entry`` cannot be fetched: where it was looked for, and how to use a mirror or a cache."""
    return (
        f"Looked for it in the cache ({cache / entry.key}), then at {entry.url}. "
        f"Without network: set {MIRROR_ENV}=<folder> to a mirror of the upstream files (laid out as "
        f"<folder>/{entry.repo}/{entry.path}), or run `paraisite data fetch --all` on a machine with network, "
        f"with {CACHE_ENV}=<folder>, and use that folder here"
    )


def _mirror_downloader(entry: PinnedFile, mirror: Path) -> Callable[[str, str, object], None]:
    """A pooch downloader that copies ``entry`` from the mirror instead of the network."""

    def copy(url: str, output_file: str, _pooch: object) -> None:
        source = entry.mirror_path(mirror)
        if not source.is_file():
            raise MissingFileError(
                f"{entry.key}: not in the mirror: no file {source} (mirror root {mirror}, for {url}). "
                f"Set {MIRROR_ENV} to a folder laid out as <folder>/{entry.repo}/{entry.path}"
            )
        shutil.copyfile(source, output_file)

    return copy


def fetch(
    repo: str,
    path: str,
    *,
    cache: str | os.PathLike | None = None,
    mirror: str | os.PathLike | None = None,
    progressbar: bool = False,
) -> Path:
    """Return the local, verified copy of one upstream file, downloading or copying it when needed."""
    return fetch_entry(get(repo, path), cache=cache, mirror=mirror, progressbar=progressbar)


def fetch_entry(
    entry: PinnedFile,
    *,
    cache: str | os.PathLike | None = None,
    mirror: str | os.PathLike | None = None,
    progressbar: bool = False,
) -> Path:
    """Like :func:`fetch`, for a registry entry. Raises :class:`ChecksumError` or :class:`MissingFileError`."""
    root = cache_dir(cache)
    target = root / entry.key
    if target.is_file() and target.stat().st_size == entry.size and sha256sum(target) == entry.sha256:
        return target
    mirror_root = mirror_dir(mirror)
    downloader = (
        _mirror_downloader(entry, mirror_root) if mirror_root else pooch.HTTPDownloader(progressbar=progressbar)
    )
    try:
        fetched = pooch.retrieve(
            entry.url,
            known_hash=f"sha256:{entry.sha256}",
            fname=Path(entry.path).name,
            path=target.parent,
            downloader=downloader,
            progressbar=False,
        )
    except ValueError as error:
        if "hash" not in str(error).lower():
            raise
        source: str | Path
        if mirror_root:
            source, actual = entry.mirror_path(mirror_root), sha256sum(entry.mirror_path(mirror_root))
        else:
            source, actual = entry.url, f"another hash ({error})"
        raise ChecksumError(
            f"{entry.key}: checksum mismatch for {source}: expected sha256 {entry.sha256}, got {actual}. "
            "The file was refused and not loaded."
        ) from error
    except MissingFileError:
        raise
    except Exception as error:
        where = f" or mirror path {entry.mirror_path(mirror_root)}" if mirror_root else ""
        raise MissingFileError(
            f"{entry.key}: could not fetch {entry.url}{where} ({type(error).__name__}: {error}). "
            + offline_advice(entry, root)
        ) from error
    return Path(fetched)


def fetch_group(name: str, **kwargs: object) -> list[Path]:
    """Fetch every file of a named group."""
    return [fetch_entry(entry, **kwargs) for entry in group_files(name)]  # type: ignore[arg-type]


def cached_status(entries: Iterable[UpstreamFile], cache: str | os.PathLike | None = None) -> Iterator[tuple]:
    """Yield ``(entry, state)`` with state ``verified``, ``corrupt`` or ``missing`` for the cached copy."""
    root = cache_dir(cache)
    for entry in entries:
        target = root / entry.key
        if not target.is_file():
            yield entry, "missing"
        elif target.stat().st_size == entry.size and sha256sum(target) == entry.sha256:
            yield entry, "verified"
        else:
            yield entry, "corrupt"
