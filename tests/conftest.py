"""Test set-up: the upstream mirror is required (CI fails without it) and the cache is shared per checkout."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
DEFAULT_MIRROR = REPO.parent / "shared" / "mirror"


def pytest_configure(config: pytest.Config) -> None:
    """Point the registry at the mirror and a cache inside the checkout, unless the environment says otherwise."""
    mirror = Path(os.environ.setdefault("PARAISITE_MIRROR", str(DEFAULT_MIRROR)))
    if not (mirror / "liudakl" / "ParAIsite" / "MANIFEST.json").is_file():
        pytest.exit(f"upstream mirror not found at {mirror} (set PARAISITE_MIRROR); the tests need it", returncode=1)
    os.environ.setdefault("PARAISITE_CACHE", str(REPO / ".cache" / "test-cache"))
    os.environ.setdefault("WANDB_MODE", "offline")
    os.environ.setdefault("WANDB_SILENT", "true")


@pytest.fixture(scope="session")
def mirror_dir() -> Path:
    """The upstream mirror root."""
    return Path(os.environ["PARAISITE_MIRROR"])


@pytest.fixture(autouse=True)
def reset_registry_settings():
    """Runs call ``registry.configure`` (process-wide); start every test from the environment alone."""
    from paraisite.data import registry

    registry.configure(None, None)
    yield
    registry.configure(None, None)
