"""Trusted loading of checkpoint files, which may come from users: weights only, and only paraisite's classes.

A ``.ckpt`` is a pickle. Two things could run someone else's code when one is opened, and both are closed here:

1. **Unpickling.** Every load goes through :func:`load_checkpoint`: ``torch.load(..., weights_only=True)``
   passed explicitly, so ``TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD=1`` in the environment cannot turn it off (torch >= 2.6
   only lets that variable change loads that do not set ``weights_only``). The extra globals a paraisite checkpoint
   may hold are listed once, in :data:`SAFE_GLOBALS`. A file that needs anything else is refused
   (:class:`CheckpointTrustError`), naming the file and the global.
2. **Instantiation.** The hyper-parameters of an LTC checkpoint hold Hydra ``_target_`` strings (backbone, head,
   graph builder, optimizer) that are instantiated when the model is built. :func:`check_targets` refuses any
   target that is not a class of :data:`ALLOWED_TARGET_MODULES` or of a ``paraisite.models`` module before anything
   is instantiated, so a checkpoint whose ``graph._target_`` is ``os.system`` is refused like a malicious pickle.

:func:`paraisite.models.regressor.load_ltc_checkpoint` does both and builds the
:class:`~paraisite.models.regressor.LTCRegressor` from the verified dictionary (the file is read once: the bytes
checked are the bytes loaded).
"""

from __future__ import annotations

import hashlib
import importlib
import io
import keyword
import os
import pickle
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch

from paraisite.safety import MAX_CHECKPOINT_BYTES, atomic_write, decompressed, read_limited

#: Modules whose classes a checkpoint's ``_target_`` may name (exactly ``<module>.<Class>``), besides any module
#: directly in :data:`ALLOWED_TARGET_PACKAGE` (a new backbone module needs no entry here).
ALLOWED_TARGET_PACKAGE = "paraisite.models"
ALLOWED_TARGET_MODULES = frozenset(
    {
        "paraisite.data.graphs",
        "paraisite.data.cgcnn_graph",
        "torch.optim",
        "torch.optim.lr_scheduler",
    }
)


class CheckpointTrustError(ValueError):
    """A checkpoint was refused: it needs more than weights to load, or names a class outside the allowed ones."""


def _numpy_scalar_globals() -> list[Any]:
    """Scalars as pickled by numpy 1.x and 2.x (e.g. a ``numpy.float64`` score in a callback state)."""
    try:
        from numpy._core.multiarray import scalar  # numpy >= 2
    except ImportError:  # numpy 1.x
        from numpy.core.multiarray import scalar  # type: ignore[no-redef]  # the same function under numpy 1.x
    return [(scalar, "numpy.core.multiarray.scalar"), scalar, np.dtype, type(np.dtype(np.float64))]


#: The only non-tensor, non-builtin globals a checkpoint may hold: numpy scalars and their dtype. Registered here
#: and nowhere else; a file needing another global is refused.
SAFE_GLOBALS: list[Any] = _numpy_scalar_globals()


def load_checkpoint(path: str | os.PathLike, *, expected_sha256: str | None = None) -> dict[str, Any]:
    """The dictionary of a checkpoint file, loaded weights-only on the CPU.

    Args:
        path: a ``.ckpt`` (or any ``torch.save`` file) from anywhere, user files included; a ``.ckpt.xz`` (how
            shipped members are stored) is decompressed in memory, up to the same size limit.
        expected_sha256: if given, the file's bytes must have this sha256 (checked before anything is decompressed
            or unpickled).

    Raises:
        FileNotFoundError: no such file.
        paraisite.safety.UnsafeFileError: not a regular file, or larger than the checkpoint limit.
        CheckpointTrustError: the sha256 differs, or the file needs globals beyond :data:`SAFE_GLOBALS`
            (e.g. a crafted pickle that would run code), or it is not a checkpoint.
    """
    data = read_limited(path, MAX_CHECKPOINT_BYTES, what="checkpoint", compressed=())
    if expected_sha256 is not None:
        actual = hashlib.sha256(data).hexdigest()
        if actual != expected_sha256:
            raise CheckpointTrustError(
                f"{path}: sha256 mismatch: expected {expected_sha256}, the file has {actual}; nothing was loaded"
            )
    if Path(path).suffix.lower() == ".xz":
        data = decompressed(data, path, MAX_CHECKPOINT_BYTES, what="checkpoint")
    try:
        with torch.serialization.safe_globals(SAFE_GLOBALS):
            checkpoint = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        reason = _unpickling_reason(error)
        raise CheckpointTrustError(
            f"{path}: refused: the checkpoint needs more than weights to load, so it could run code "
            f"(weights-only load failed: {reason})"
        ) from None
    except Exception as error:
        raise CheckpointTrustError(f"{path}: not a readable checkpoint ({type(error).__name__}: {error})") from None
    if not isinstance(checkpoint, dict):
        raise CheckpointTrustError(f"{path}: not a checkpoint (holds a {type(checkpoint).__name__}, not a dict)")
    return checkpoint


def add_checkpoint_entries(path: str | os.PathLike, entries: dict[str, Any]) -> None:
    """Add top-level ``entries`` to a checkpoint: read once (:func:`load_checkpoint`), re-saved once, atomically."""
    checkpoint = load_checkpoint(path)
    checkpoint.update(entries)
    atomic_write(Path(path), lambda tmp: torch.save(checkpoint, tmp))


def _unpickling_reason(error: Exception) -> str:
    """The specific line of torch's weights-only error (the global it refused), without its generic advice."""
    paragraphs = [part.strip() for part in str(error).split("\n\n") if part.strip()]
    specific = [part for part in paragraphs if "GLOBAL" in part or "nsupported" in part]
    return (specific or paragraphs or [type(error).__name__])[0]


def _targets(config: Any, where: str) -> Iterator[tuple[str, Any]]:
    """``(where, value)`` of every ``_target_`` key in a nested config of dicts and lists."""
    if isinstance(config, dict):
        for key, value in config.items():
            if key == "_target_":
                yield where, value
            else:
                yield from _targets(value, f"{where}.{key}")
    elif isinstance(config, (list, tuple)):
        for index, value in enumerate(config):
            yield from _targets(value, f"{where}[{index}]")


def _allowed_module(name: str) -> bool:
    """``name`` is in :data:`ALLOWED_TARGET_MODULES` or a module directly in :data:`ALLOWED_TARGET_PACKAGE`."""
    package, _, module = name.rpartition(".")
    in_package = package == ALLOWED_TARGET_PACKAGE and module.isidentifier() and not module.startswith("_")
    return name in ALLOWED_TARGET_MODULES or in_package


def check_target(target: Any, where: str, source: str | os.PathLike) -> None:
    """Refuse a ``_target_`` that is not ``<allowed module>.<Class>`` naming a class defined there.

    The module is imported only if :func:`_allowed_module` accepts it; nothing else is imported or called.
    """
    if not isinstance(target, str) or "." not in target:
        raise CheckpointTrustError(f"{source}: refused: {where}._target_ is {target!r}, not a class path")
    module_name, _, attribute = target.rpartition(".")
    if not _allowed_module(module_name) or not attribute.isidentifier() or keyword.iskeyword(attribute):
        raise CheckpointTrustError(
            f"{source}: refused: {where}._target_ {target!r} is outside the allowed modules "
            f"({ALLOWED_TARGET_PACKAGE}.*, {', '.join(sorted(ALLOWED_TARGET_MODULES))})"
        )
    if attribute.startswith("_"):
        raise CheckpointTrustError(f"{source}: refused: {where}._target_ {target!r} is private")
    try:
        value = getattr(importlib.import_module(module_name), attribute, None)
    except ImportError as error:
        message = f"{source}: refused: {where}._target_ {target!r}: cannot import {module_name} ({error})"
        raise CheckpointTrustError(message) from None
    if not isinstance(value, type):
        raise CheckpointTrustError(f"{source}: refused: {where}._target_ {target!r} is not a class of {module_name}")


def check_targets(hyper_parameters: Any, source: str | os.PathLike) -> None:
    """Check every ``_target_`` of a checkpoint's hyper-parameters with :func:`check_target`."""
    for where, target in _targets(hyper_parameters, "hyper_parameters"):
        check_target(target, where, source)


#: Checkpoint entry of int8-stored weight matrices (``{name: {"q": int8 [R, C], "scale": float32 [R, ceil(C / g)],
#: "group": g}}``, one scale per group of ``g`` consecutive input columns), written by
#: :func:`paraisite.zoo.shipping.quantise_state_dict` for the ensembles shipped in the package.
INT8_KEY = "paraisite_int8"


def dequantised(entries: dict[str, Any]) -> dict[str, torch.Tensor]:
    """Float32 weights of an :data:`INT8_KEY` entry: ``q`` times the scale of each group of input columns."""
    weights = {}
    for name, entry in entries.items():
        q, scale, group = entry["q"], entry["scale"], entry["group"]
        if q.dtype != torch.int8 or q.ndim != 2 or scale.shape != (q.shape[0], -(-q.shape[1] // max(group, 1))):
            raise ValueError(f"int8 weight {name!r}: expected int8 [R, C] with [R, ceil(C / {group})] scales")
        weights[name] = q.float() * scale.float().repeat_interleave(group, dim=1)[:, : q.shape[1]]
    return weights


def resolve_run_checkpoint(path: str | os.PathLike) -> Path:
    """A ``.ckpt`` file as given, or the best checkpoint a run directory's completed ``metrics.json`` names.

    A run directory means exactly the checkpoint its own record chose (``best_checkpoint``, looked up by
    file name in the directory's ``checkpoints/``, so a moved or copied directory still resolves inside
    itself), never a leftover file beside it.

    Raises:
        FileNotFoundError: no such file, or a directory without ``metrics.json`` or without that checkpoint.
        RuntimeError: the run did not complete (``running``: interrupted or still training; ``failed``).
    """
    from paraisite.record import RunRecordError, read_run_record
    from paraisite.safety import resolve_inside

    candidate = Path(path)
    if not candidate.is_dir():
        if not candidate.is_file():
            raise FileNotFoundError(f"checkpoint not found: {candidate}")
        return candidate
    metrics = candidate / "metrics.json"
    try:
        record = read_run_record(metrics)
    except FileNotFoundError:
        raise FileNotFoundError(f"{candidate} is not a completed run directory (no metrics.json)") from None
    except RunRecordError as error:
        raise RuntimeError(f"{metrics}: unreadable run record ({error.problem})") from None
    if record.status != "completed":
        status = record.status
        raise RuntimeError(f"run {candidate} did not complete (status {status!r}); re-run its command to finish it")
    named = record.best_checkpoint
    if not named:
        raise FileNotFoundError(f"{metrics} names no best checkpoint")
    best = resolve_inside(candidate / "checkpoints", Path(str(named)).name, what=f"best checkpoint of {metrics}")
    if not best.is_file():
        raise FileNotFoundError(f"{metrics} names {Path(str(named)).name}, which is not in {candidate / 'checkpoints'}")
    return best
