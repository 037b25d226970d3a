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
import os
import shutil
import tarfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

import paraisite
from paraisite.checkpoints import load_checkpoint
from paraisite.data import registry
from paraisite.data.cache import atomic_write

MANIFEST = "manifest.json"
BUNDLE_FORMAT = 1


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
    """Where ``paraisite zoo export --install`` places bundle ``name``: ``<cache>/zoo/<name>``."""
    return registry.cache_dir(cache) / "zoo" / name


def is_bundle(path: str | os.PathLike) -> bool:
    """Whether ``path`` is a directory with a bundle manifest."""
    return (Path(path) / MANIFEST).is_file()


def read_bundle(root: str | os.PathLike) -> Bundle:
    """Read a bundle and verify each member's sha256.

    Raises:
        BundleError: no manifest, unsupported format, or a missing member file.
        BundleIntegrityError: a member's sha256 differs from the manifest's (both hashes are given).
    """
    root = Path(root)
    manifest_path = root / MANIFEST
    if not manifest_path.is_file():
        raise BundleError(f"{root}: not an ensemble bundle (no {MANIFEST})")
    manifest = json.loads(manifest_path.read_text())
    if manifest.get("format") != BUNDLE_FORMAT:
        found = manifest.get("format")
        raise BundleError(f"{manifest_path}: bundle format {found!r}; this version of paraisite reads {BUNDLE_FORMAT}")
    members = tuple(BundleMember(**entry) for entry in manifest["members"])
    if not members:
        raise BundleError(f"{manifest_path}: the bundle has no members")
    for member in members:
        path = root / member.file
        if not path.is_file():
            raise BundleError(f"{manifest_path}: member file {path} is missing")
        actual = registry.sha256sum(path)
        if actual != member.sha256:
            raise BundleIntegrityError(
                f"{path}: sha256 mismatch: the manifest says {member.sha256}, the file has {actual}. "
                "The bundle was refused and nothing was loaded."
            )
    return Bundle(root, manifest, members)


def completed_runs(sweep_dir: str | os.PathLike, step: str, dataset: str) -> list[tuple[Path, dict[str, Any]]]:
    """``(run directory, metrics)`` of the completed runs of ``step`` on ``dataset`` under a sweep, by seed."""
    runs = []
    for metrics_path in sorted(Path(sweep_dir).rglob("metrics.json")):
        metrics = json.loads(metrics_path.read_text())
        if (
            metrics.get("status") == "completed"
            and metrics.get("task_name") == step
            and metrics.get("data", {}).get("name") == dataset
        ):
            runs.append((metrics_path.parent, metrics))
    return sorted(runs, key=lambda run: run[1]["seed"])


def _checked_runs(sweep_dir: Path, step: str, dataset: str) -> list[tuple[Path, dict[str, Any]]]:
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


def export_bundle(sweep_dir: str | os.PathLike, step: str, dataset: str, name: str, output: str | os.PathLike) -> Path:
    """Build bundle ``name`` in ``output`` from the completed runs of a sweep; returns its manifest path.

    Raises:
        BundleError: no matching run, duplicate seeds, mixed protocols or profiles, a run without its
            ``checkpoints/best.ckpt``, or an ``output`` directory that is not empty.
    """
    sweep_dir, output = Path(sweep_dir), Path(output)
    runs = _checked_runs(sweep_dir, step, dataset)
    if output.exists() and any(output.iterdir()):
        raise BundleError(f"{output}: the bundle directory exists and is not empty; remove it first")
    output.mkdir(parents=True, exist_ok=True)
    members = []
    for run_dir, metrics in runs:
        checkpoint = run_dir / "checkpoints" / "best.ckpt"
        if not checkpoint.is_file():
            raise BundleError(f"{run_dir}: completed run without {checkpoint.relative_to(run_dir)}")
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
    first = runs[0][1]
    manifest = {
        "format": BUNDLE_FORMAT,
        "name": name,
        "step": step,
        "dataset": dataset,
        "protocol": first.get("protocol"),
        "profile": first.get("profile"),
        "paraisite_version": paraisite.__version__,
        "members": members,
    }
    manifest_path = output / MANIFEST
    atomic_write(manifest_path, lambda tmp: tmp.write_text(json.dumps(manifest, indent=2) + "\n"))
    return manifest_path


def install_bundle(source: str | os.PathLike, cache: str | os.PathLike | None = None) -> Path:
    """Verify a bundle and copy it to ``<cache>/zoo/<name>``; returns the installed directory."""
    bundle = read_bundle(source)
    target = installed_bundle_dir(bundle.name, cache)
    if target.exists():
        raise BundleError(f"{target}: bundle {bundle.name!r} is already installed; remove that directory first")
    shutil.copytree(bundle.root, target)
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


def extract_bundle(archive: str | os.PathLike, target: str | os.PathLike) -> Bundle:
    """Unpack a bundle archive (made by :func:`archive_bundle`) into ``target`` and verify it.

    Only regular files under one top directory are accepted (no links, absolute paths or ``..``); the unpacked
    bundle is read with :func:`read_bundle`, so every member is checked against the manifest.
    """
    archive, target = Path(archive), Path(target)
    staging = target.with_name(f".{target.name}.partial")
    shutil.rmtree(staging, ignore_errors=True)
    try:
        with tarfile.open(archive, mode="r:gz") as tar:
            members = tar.getmembers()
            tops = {Path(member.name).parts[0] for member in members if member.name}
            if len(tops) != 1 or any(not (member.isfile() or member.isdir()) for member in members):
                raise BundleError(f"{archive}: not a bundle archive (one top directory of plain files expected)")
            tar.extractall(staging, filter="data")
        bundle = read_bundle(staging / tops.pop())  # verified before it takes the target's place
        shutil.rmtree(target, ignore_errors=True)
        target.parent.mkdir(parents=True, exist_ok=True)
        bundle.root.rename(target)
    except (tarfile.TarError, OSError) as error:
        raise BundleError(f"{archive}: cannot unpack the bundle archive ({type(error).__name__}: {error})") from None
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return Bundle(target, bundle.manifest, bundle.members)
