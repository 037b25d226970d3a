"""Content-addressed cache files: the key is a hash of every input and setting, never "the file exists"."""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path
from typing import Any, TypeVar

from paraisite.safety import atomic_write  # also imported from here by the callers that write caches

T = TypeVar("T")

log = logging.getLogger(__name__)


def settings_key(settings: dict[str, Any], length: int = 16) -> str:
    """Stable short hash of a JSON-serialisable settings dict."""
    text = json.dumps(settings, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:length]


def _digest_path(path: Path) -> Path:
    return path.with_name(path.name + ".sha256")


def write_verified(path: Path, data: bytes) -> None:
    """Write a cache file atomically, with its sha256 beside it (``<name>.sha256``) for :func:`read_verified`."""
    atomic_write(path, lambda tmp: tmp.write_bytes(data))
    digest = hashlib.sha256(data).hexdigest()
    atomic_write(_digest_path(path), lambda tmp: tmp.write_text(digest + "\n"))


def read_verified(path: Path) -> bytes | None:
    """The bytes of a cache file written by :func:`write_verified`, or ``None`` if it is missing or bad.

    A truncated, tampered or unrecorded file is reported (naming it) and ``None`` tells the caller to
    rebuild it: a cache never feeds training content it cannot vouch for.
    """
    if not path.is_file():
        return None
    data = path.read_bytes()
    try:
        recorded = _digest_path(path).read_text().strip()
    except OSError:
        recorded = None
    actual = hashlib.sha256(data).hexdigest()
    if recorded != actual:
        why = "has no recorded sha256" if recorded is None else f"sha256 {actual[:12]}… != recorded {recorded[:12]}…"
        log.warning("cache file %s %s (truncated or changed); rebuilding it", path, why)
        return None
    return data
