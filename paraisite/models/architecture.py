"""Checks shared by the backbones that load published weights."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any


def check_same_architecture(
    backbone: str, source: str, ours: Mapping[str, Any], published: Mapping[str, Any], keys: Iterable[str]
) -> None:
    """Refuse to load ``source``'s weights into ``backbone`` when an architecture argument differs.

    Raises:
        ValueError: names every differing argument as ``key: ours here, theirs published``.
    """
    differences = [
        f"{key}: {ours[key]!r} here, {published[key]!r} published" for key in keys if ours[key] != published[key]
    ]
    if differences:
        raise ValueError(f"{backbone} architecture differs from {source}: {', '.join(differences)}")
