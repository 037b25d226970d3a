"""Ensemble bundles: the checkpoints of one sweep's seeds, with a checksummed manifest.

A bundle is a directory::

    manifest.json   {"format", "name", "step", "dataset", "protocol", "profile", "paraisite_version",
                     "members": [{"file", "sha256", "seed", "val_mape", "source_sha256"}, ...]}
    seed1.ckpt      the run's ``checkpoints/best.ckpt`` (sha256 ``source_sha256``) without its training state:
                    weights, hyper-parameters and the applicability reference
    ...

:func:`export_bundle` builds one from the completed runs of a sweep (``metrics.json`` with ``status: completed``,
``task_name`` = the step and ``data.name`` = the dataset). :func:`read_bundle` verifies every member's sha256
before anything is unpickled and refuses a mismatch, naming both hashes. Installed bundles live in
``<cache>/zoo/<name>/`` (:func:`installed_bundle_dir`), where ``paraisite predict --model <name>`` finds them.
"""

from __future__ import annotations

import gzip
import json
import logging
import os
import re
import shutil
import stat
import tarfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

import paraisite
from paraisite.checkpoints import load_checkpoint, resolve_run_checkpoint
from paraisite.data import registry
from paraisite.data.cache import atomic_write
from paraisite.safety import UnsafePathError, check_relative_name, resolve_inside

log = logging.getLogger(__name__)

MANIFEST = "manifest.json"
BUNDLE_FORMAT = 1
#: Most members a bundle may have (the published ensembles have 9).
MAX_MEMBERS = 64
#: Largest manifest accepted.
MAX_MANIFEST_BYTES = 1024**2
#: Most entries in a bundle archive: the top directory, the manifest and the members.
MAX_ARCHIVE_ENTRIES = MAX_MEMBERS + 2
#: Largest total unpacked size of a bundle archive (a 9-member MEGNet bundle is about 20 MB).
MAX_ARCHIVE_BYTES = 512 * 1024**2
_SHA256 = re.compile(r"^[0-9a-f]{64}$")


class BundleError(RuntimeError):
    """A bundle cannot be built or read; the message names the directory or file and the problem."""


class BundleIntegrityError(BundleError):
    """A member's sha256 differs from the manifest's: the bundle is refused."""


@dataclass(frozen=True)
class BundleMember:
    """One checkpoint of a bundle."""

    file: str
    sha256: str
    seed: int
    val_mape: float | None
    source_sha256: str | None = None


@dataclass(frozen=True)
class Bundle:
    """A verified bundle: its directory, manifest and members."""

    root: Path
    manifest: dict[str, Any]
    members: tuple[BundleMember, ...]

    @property
    def name(self) -> str:
        """The bundle's name (a zoo name for published ensembles)."""
        return str(self.manifest["name"])

    @property
    def member_paths(self) -> list[Path]:
        """Checkpoint files, in manifest order."""
        return [self.root / member.file for member in self.members]


def installed_bundle_dir(name: str, cache: str | os.PathLike | None = None) -> Path:
    """Where ``paraisite zoo export --install`` places bundle ``name``: ``<cache>/zoo/<name>`` (a plain name only).

    Raises:
        paraisite.safety.UnsafePathError: ``name`` is not one plain name (``..``, ``/``, absolute, odd characters).
    """
    return resolve_inside(registry.cache_dir(cache) / "zoo", name, what="bundle name", parts=1)


def is_bundle(path: str | os.PathLike) -> bool:
    """Whether ``path`` is a directory with a bundle manifest."""
    return (Path(path) / MANIFEST).is_file()


def _regular_file(path: Path, what: str) -> None:
    """Refuse a missing file, a link or anything but a regular file (bundles hold plain files only)."""
    try:
        info = path.lstat()
    except FileNotFoundError:
        raise BundleError(f"{path}: {what} is missing") from None
    if not stat.S_ISREG(info.st_mode):
        raise BundleError(f"{path}: {what} is not a regular file (links are refused)")


def parse_manifest(data: bytes, source: str | os.PathLike) -> tuple[dict[str, Any], tuple[BundleMember, ...]]:
    """Check a manifest's text: format, name, members (1 to :data:`MAX_MEMBERS`, plain unique files, sha256).

    Raises:
        BundleError: naming ``source`` and the problem.
    """
    if len(data) > MAX_MANIFEST_BYTES:
        raise BundleError(f"{source}: manifest of {len(data)} bytes, over the {MAX_MANIFEST_BYTES}-byte limit")
    try:
        manifest = json.loads(data)
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise BundleError(f"{source}: not a JSON manifest ({error})") from None
    if not isinstance(manifest, dict):
        raise BundleError(f"{source}: not a bundle manifest (a JSON object is expected)")
    if manifest.get("format") != BUNDLE_FORMAT:
        found = manifest.get("format")
        raise BundleError(f"{source}: bundle format {found!r}; this version of paraisite reads {BUNDLE_FORMAT}")
    try:
        check_relative_name(manifest.get("name"), what=f"{source}: bundle name", parts=1)
        entries = manifest["members"]
        if not isinstance(entries, list) or not 1 <= len(entries) <= MAX_MEMBERS:
            raise BundleError(f"{source}: a bundle has 1 to {MAX_MEMBERS} members")
        members = tuple(BundleMember(**entry) for entry in entries)
        for member in members:
            check_relative_name(member.file, what=f"{source}: member file", parts=1)
            if not isinstance(member.sha256, str) or not _SHA256.match(member.sha256):
                raise BundleError(f"{source}: member {member.file}: {member.sha256!r} is not a sha256 digest")
    except (KeyError, TypeError) as error:
        raise BundleError(f"{source}: malformed manifest ({type(error).__name__}: {error})") from None
    except UnsafePathError as error:
        raise BundleError(str(error)) from None
    files = [member.file for member in members]
    if len(set(files)) != len(files) or MANIFEST in files:
        raise BundleError(f"{source}: member files must be unique and differ from {MANIFEST}: {files}")
    return manifest, members


def read_bundle(root: str | os.PathLike) -> Bundle:
    """Read a bundle and verify it: manifest (see :func:`parse_manifest`), then each member's sha256.

    Members are plain files inside ``root`` (resolved with :func:`paraisite.safety.resolve_inside`; links are
    refused). Runs on every load.

    Raises:
        BundleError: no manifest, an invalid one, a member path outside the bundle, or a missing member file.
        BundleIntegrityError: a member's sha256 differs from the manifest's (both hashes are given).
    """
    root = Path(root)
    manifest_path = root / MANIFEST
    if not manifest_path.is_file():
        raise BundleError(f"{root}: not an ensemble bundle (no {MANIFEST})")
    _regular_file(manifest_path, "the manifest")
    manifest, members = parse_manifest(manifest_path.read_bytes(), manifest_path)
    for member in members:
        try:
            path = resolve_inside(root, member.file, what=f"{manifest_path}: member file", parts=1)
        except UnsafePathError as error:
            raise BundleError(str(error)) from None
        _regular_file(path, f"member file of {manifest_path}")
        actual = registry.sha256sum(path)
        if actual != member.sha256:
            raise BundleIntegrityError(
                f"{path}: sha256 mismatch: the manifest says {member.sha256}, the file has {actual}. "
                "The bundle was refused and nothing was loaded."
            )
    return Bundle(root, manifest, members)


def completed_runs(sweep_dir: str | os.PathLike, step: str, dataset: str) -> list[tuple[Path, dict[str, Any]]]:
    """``(run directory, metrics)`` of the completed runs of ``step`` on ``dataset`` under a sweep, by seed.

    ``metrics`` is the run's :class:`~paraisite.record.RunRecord` as its JSON object.

    Raises:
        paraisite.record.RunRecordError: a ``metrics.json`` that cannot be read, naming it.
    """
    from paraisite.record import read_run_record

    runs = []
    for metrics_path in sorted(Path(sweep_dir).rglob("metrics.json")):
        record = read_run_record(metrics_path)
        if record.status == "completed" and record.task_name == step and record.dataset == dataset:
            runs.append((metrics_path.parent, record.to_json()))
    return sorted(runs, key=lambda run: run[1]["seed"])


def checked_runs(sweep_dir: Path, step: str, dataset: str) -> list[tuple[Path, dict[str, Any]]]:
    """:func:`completed_runs`, refused (:class:`BundleError`) if none, if seeds repeat, or protocols/profiles mix."""
    runs = completed_runs(sweep_dir, step, dataset)
    if not runs:
        raise BundleError(f"{sweep_dir}: no completed run of task {step!r} on dataset {dataset!r} (metrics.json)")
    seeds = [metrics["seed"] for _, metrics in runs]
    if len(set(seeds)) != len(seeds):
        raise BundleError(f"{sweep_dir}: several completed {step} runs on {dataset} share a seed: {sorted(seeds)}")
    for key in ("protocol", "profile"):
        values = {metrics.get(key) for _, metrics in runs}
        if len(values) > 1:
            raise BundleError(f"{sweep_dir}: the {step} runs on {dataset} mix {key}s {sorted(map(str, values))}")
    return runs


#: Checkpoint entries a prediction needs; the optimizer, scheduler, loop and callback states are left out.
INFERENCE_KEYS = ("epoch", "global_step", "pytorch-lightning_version", "state_dict", "hparams_name", "hyper_parameters")


def write_inference_checkpoint(source: Path, target: Path) -> None:
    """Copy a training checkpoint without its training state (a third of the size; loads the same way).

    Kept: the weights, hyper-parameters and the ``paraisite_*`` entries (e.g. the applicability reference).
    """
    checkpoint = load_checkpoint(source)
    kept = {key: value for key, value in checkpoint.items() if key in INFERENCE_KEYS or key.startswith("paraisite_")}
    torch.save(kept, target)


def manifest_head(name: str, step: str, dataset: str, record: dict[str, Any], **extra: Any) -> dict[str, Any]:
    """The first fields of a bundle manifest, in their order.

    Format and name; the runs' step, dataset, and the protocol and profile of one run's ``record``; then ``extra``
    in order; then the paraisite version.
    """
    head = {
        "format": BUNDLE_FORMAT,
        "name": name,
        "step": step,
        "dataset": dataset,
        "protocol": record.get("protocol"),
        "profile": record.get("profile"),
    }
    return {**head, **extra, "paraisite_version": paraisite.__version__}


def export_bundle(sweep_dir: str | os.PathLike, step: str, dataset: str, name: str, output: str | os.PathLike) -> Path:
    """Build bundle ``name`` in ``output`` from the completed runs of a sweep; returns its manifest path.

    Raises:
        BundleError: no matching run, duplicate seeds, mixed protocols or profiles, a run without its
            ``checkpoints/best.ckpt``, or an ``output`` directory that is not empty.
    """
    sweep_dir, output = Path(sweep_dir), Path(output)
    try:
        check_relative_name(name, what="bundle name", parts=1)
    except UnsafePathError as error:
        raise BundleError(str(error)) from None
    runs = checked_runs(sweep_dir, step, dataset)
    if output.exists() and any(output.iterdir()):
        raise BundleError(f"{output}: the bundle directory exists and is not empty; remove it first")
    output.mkdir(parents=True, exist_ok=True)
    members = []
    for run_dir, metrics in runs:
        try:
            checkpoint = resolve_run_checkpoint(run_dir)
        except (FileNotFoundError, RuntimeError) as error:
            raise BundleError(str(error)) from None
        file = f"seed{metrics['seed']}.ckpt"
        write_inference_checkpoint(checkpoint, output / file)
        mape = metrics.get("best", {}).get("mape")
        members.append(
            {
                "file": file,
                "sha256": registry.sha256sum(output / file),
                "seed": int(metrics["seed"]),
                "val_mape": None if mape is None else float(mape),
                "source_sha256": registry.sha256sum(checkpoint),
            }
        )
    manifest = {**manifest_head(name, step, dataset, runs[0][1]), "members": members}
    manifest_path = output / MANIFEST
    atomic_write(manifest_path, lambda tmp: tmp.write_text(json.dumps(manifest, indent=2) + "\n"))
    return manifest_path


def install_bundle(source: str | os.PathLike, cache: str | os.PathLike | None = None) -> Path:
    """Verify a bundle and copy it to ``<cache>/zoo/<name>``; returns the installed directory."""
    bundle = read_bundle(source)
    target = installed_bundle_dir(bundle.name, cache)
    if target.exists():
        raise BundleError(f"{target}: bundle {bundle.name!r} is already installed; remove that directory first")
    staging = target.with_name(f".{target.name}.partial")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    try:
        for file in (MANIFEST, *(member.file for member in bundle.members)):  # exactly the bundle's files
            shutil.copyfile(bundle.root / file, staging / file)
        read_bundle(staging)
        staging.rename(target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target


def archive_bundle(bundle: Bundle, output_dir: str | os.PathLike) -> Path:
    """Pack a bundle verified by :func:`read_bundle` as ``<output_dir>/<name>.tar.gz`` (its files under ``<name>/``).

    The archive is reproducible for given files (sorted members, zeroed times and owners), so its sha256 identifies
    the bundle's content; that sha256 is what the published table pins.
    """
    output = Path(output_dir) / f"{bundle.name}.tar.gz"
    output.parent.mkdir(parents=True, exist_ok=True)

    def normalised(info: tarfile.TarInfo) -> tarfile.TarInfo:
        info.mtime, info.uid, info.gid, info.uname, info.gname = 0, 0, 0, "", ""
        info.mode = 0o755 if info.isdir() else 0o644
        return info

    def write(tmp: Path) -> None:
        with (
            open(tmp, "wb") as raw,
            gzip.GzipFile(filename="", fileobj=raw, mode="wb", mtime=0) as zipped,
            tarfile.open(fileobj=zipped, mode="w", format=tarfile.PAX_FORMAT) as tar,
        ):
            tar.add(bundle.root, arcname=bundle.name, recursive=False, filter=normalised)
            for file in sorted([MANIFEST, *(member.file for member in bundle.members)]):
                tar.add(bundle.root / file, arcname=f"{bundle.name}/{file}", filter=normalised)

    atomic_write(output, write)
    output.chmod(0o644)
    return output


def _archive_members(tar: tarfile.TarFile, archive: Path) -> list[tarfile.TarInfo]:
    """The entries of an archive, refused past :data:`MAX_ARCHIVE_ENTRIES` entries or :data:`MAX_ARCHIVE_BYTES`.

    Entries are read one header at a time, so a huge or endless archive is refused at the first entry over a limit,
    before its data is read or anything is written.
    """
    entries, total = [], 0
    while (info := tar.next()) is not None:
        entries.append(info)
        total += max(info.size, 0)
        if len(entries) > MAX_ARCHIVE_ENTRIES:
            raise BundleError(f"{archive}: more than {MAX_ARCHIVE_ENTRIES} entries; not a bundle archive")
        if total > MAX_ARCHIVE_BYTES:
            raise BundleError(f"{archive}: more than {MAX_ARCHIVE_BYTES} bytes unpacked; not a bundle archive")
        if not (info.isfile() or info.isdir()):
            raise BundleError(f"{archive}: {info.name!r} is a link or device; not a bundle archive")
    return entries


def check_archive(
    archive: str | os.PathLike, expected_name: str | None = None
) -> tuple[list[tarfile.TarInfo], bytes, dict[str, Any], tuple[BundleMember, ...]]:
    """Check a bundle archive without unpacking it; returns its entries, manifest bytes, manifest and members.

    Accepted: one top directory ``<name>/`` holding exactly ``manifest.json`` and the manifest's member files, all
    regular files, within the entry and size limits, where ``<name>`` is the manifest's name (and
    ``expected_name``, the pinned one, if given).

    Raises:
        BundleError: naming the archive and the first problem.
    """
    archive = Path(archive)
    try:
        with tarfile.open(archive, mode="r:gz") as tar:
            entries = _archive_members(tar, archive)
            names = [entry.name.rstrip("/") for entry in entries]
            tops = {name.split("/")[0] for name in names}
            if len(tops) != 1:
                raise BundleError(f"{archive}: not a bundle archive (one top directory of plain files expected)")
            top = tops.pop()
            manifest_entry = next((e for e in entries if e.name == f"{top}/{MANIFEST}" and e.isfile()), None)
            if manifest_entry is None:
                raise BundleError(f"{archive}: not a bundle archive (no {top}/{MANIFEST})")
            if manifest_entry.size > MAX_MANIFEST_BYTES:
                raise BundleError(f"{archive}: {MANIFEST} over the {MAX_MANIFEST_BYTES}-byte limit")
            stream = tar.extractfile(manifest_entry)
            manifest_bytes = stream.read() if stream is not None else b""
    except (tarfile.TarError, OSError, EOFError) as error:
        raise BundleError(f"{archive}: cannot read the bundle archive ({type(error).__name__}: {error})") from None
    manifest, members = parse_manifest(manifest_bytes, f"{archive}:{top}/{MANIFEST}")
    if manifest["name"] != top:
        raise BundleError(f"{archive}: top directory {top!r} differs from the manifest's name {manifest['name']!r}")
    if expected_name is not None and top != expected_name:
        raise BundleError(f"{archive}: holds bundle {top!r}, the table pins {expected_name!r}; refused")
    expected = {top, f"{top}/{MANIFEST}", *(f"{top}/{member.file}" for member in members)}
    kinds_ok = all(entry.isdir() == (name == top) for entry, name in zip(entries, names, strict=True))
    if len(names) != len(set(names)) or set(names) != expected or not kinds_ok:
        extra, missing = sorted(set(names) - expected), sorted(expected - set(names))
        raise BundleError(
            f"{archive}: must hold exactly {top}/, its {MANIFEST} and the manifest's members, once each "
            f"(extra: {extra}, missing: {missing})"
        )
    return entries, manifest_bytes, manifest, members


def _holds_exactly(directory: Path, manifest_bytes: bytes, members: tuple[BundleMember, ...]) -> bool:
    """Whether an unpacked directory has exactly the archive's files and the archive's manifest bytes."""
    try:
        files = {path.name for path in directory.iterdir()}
        same_manifest = (directory / MANIFEST).read_bytes() == manifest_bytes
    except OSError:
        return False
    return same_manifest and files == {MANIFEST, *(member.file for member in members)}


def extract_bundle(archive: str | os.PathLike, target: str | os.PathLike, expected_name: str | None = None) -> Bundle:
    """The verified bundle of an archive (made by :func:`archive_bundle`), unpacked into ``target``.

    Every call checks the archive (:func:`check_archive`: limits, exactly the manifest's files, the pinned name),
    then either reuses ``target`` if it holds exactly the archive's manifest and files and passes
    :func:`read_bundle`, or unpacks again (into a staging directory, verified, then moved into place). Nothing is
    trusted from an earlier unpack.
    """
    archive, target = Path(archive), Path(target)
    entries, manifest_bytes, _, members = check_archive(archive, expected_name)
    if target.is_dir() and _holds_exactly(target, manifest_bytes, members):
        try:
            return read_bundle(target)
        except BundleError:
            log.warning("%s: the unpacked bundle differs from its verified archive; unpacking it again", target)
    staging = target.with_name(f".{target.name}.partial")
    shutil.rmtree(staging, ignore_errors=True)
    try:
        with tarfile.open(archive, mode="r:gz") as tar:
            tar.extractall(staging, members=_same_entries(tar, archive, entries), filter="data")
        bundle = read_bundle(staging / entries[0].name.split("/")[0])  # verified before it takes the target's place
        if not _holds_exactly(bundle.root, manifest_bytes, members):
            raise BundleError(f"{archive}: the unpacked files differ from the archive's manifest")
        shutil.rmtree(target, ignore_errors=True)
        target.parent.mkdir(parents=True, exist_ok=True)
        bundle.root.rename(target)
    except (tarfile.TarError, OSError) as error:
        raise BundleError(f"{archive}: cannot unpack the bundle archive ({type(error).__name__}: {error})") from None
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return Bundle(target, bundle.manifest, bundle.members)


def _same_entries(tar: tarfile.TarFile, archive: Path, checked: list[tarfile.TarInfo]) -> list[tarfile.TarInfo]:
    """The entries of ``archive``, reopened as ``tar``, refused unless they are those :func:`check_archive` accepted."""
    entries = _archive_members(tar, archive)
    described = [(e.name, e.type, e.size) for e in entries]
    if described != [(e.name, e.type, e.size) for e in checked]:
        raise BundleError(f"{archive}: the archive changed while it was being unpacked")
    return entries
