"""The folder of the LTC ensembles shipped in the package (``paraisite/zoo/models/<name>/``) and their manifests.

Only reads files: the catalog (listing and cards), the predictors (loading) and :mod:`paraisite.zoo.shipping`
(packing) all use it, and it imports none of them.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from paraisite.zoo.bundle import MANIFEST, BundleError, parse_manifest

#: Where shipped ensembles live (package data).
SHIPPED_DIR = Path(__file__).resolve().parent / "models"


def shipped_bundle_dir(name: str) -> Path:
    """The package directory of shipped ensemble ``name`` (it may not exist)."""
    return SHIPPED_DIR / name


def shipped_manifests() -> dict[str, dict[str, Any]]:
    """The manifests of the ensembles shipped in the package, by name (checked by :func:`parse_manifest`).

    Only the manifests are read here; members are verified when an ensemble is loaded.
    """
    manifests = {}
    for path in sorted(SHIPPED_DIR.glob(f"*/{MANIFEST}")):
        manifest, _ = parse_manifest(path.read_bytes(), path)
        if manifest["name"] != path.parent.name:
            raise BundleError(f"{path}: names bundle {manifest['name']!r}, but lives in {path.parent.name!r}")
        manifests[manifest["name"]] = manifest
    return manifests
