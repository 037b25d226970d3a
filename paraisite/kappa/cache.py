"""Per-crystal result cache: the key hashes the input structure, the potential's sha256 and the protocol settings.

One JSON file per crystal (``<cache>/<key>.json``, with its sha256 beside it: a truncated or changed file is rebuilt,
:func:`paraisite.data.cache.read_verified`), written when the crystal is done. An interrupted batch resumes from
the crystals already written; a repeated one reads them all. Refused crystals are not cached.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import numpy as np
from ase import Atoms

from paraisite.data import registry
from paraisite.data.cache import read_verified, settings_key, write_verified
from paraisite.kappa.settings import KappaSettings

#: Version of the cached result's layout and of the protocol code; a change makes new keys.
KAPPA_FORMAT_VERSION = 1


def default_cache_dir() -> Path:
    """``<paraisite cache>/kappa`` (``PARAISITE_CACHE`` or pooch's OS cache, outside any work tree)."""
    return registry.cache_dir() / "kappa"


def structure_sha256(atoms: Atoms) -> str:
    """sha256 of a crystal: species, lattice and fractional coordinates (rounded to 1e-8), in file order."""
    data = {
        "symbols": atoms.get_chemical_symbols(),
        "lattice": np.round(np.asarray(atoms.cell.array, dtype=float), 8).tolist(),
        "frac": np.round(atoms.get_scaled_positions(wrap=True) % 1.0, 8).tolist(),
    }
    return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()


def result_key(structure_hash: str, potential_sha256: str, settings: KappaSettings) -> str:
    """The cache key of one crystal's result."""
    import phono3py

    return settings_key(
        {
            "structure": structure_hash,
            "potential_sha256": potential_sha256,
            "settings": settings.to_dict(),
            "format": KAPPA_FORMAT_VERSION,
            "phono3py": ".".join(phono3py.__version__.split(".")[:2]),
        },
        length=32,
    )


def read_result(cache: Path, key: str) -> dict[str, Any] | None:
    """The cached result of ``key``, or ``None`` (missing, or bad and reported)."""
    data = read_verified(cache / f"{key}.json")
    return None if data is None else json.loads(data)


def write_result(cache: Path, key: str, result: dict[str, Any]) -> None:
    """Store a crystal's result under ``key`` (atomically, with its sha256)."""
    write_verified(cache / f"{key}.json", json.dumps(result, sort_keys=True, indent=1).encode())
