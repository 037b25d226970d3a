"""Files paraisite writes whole (caches, records, rankings) get the mode the umask gives, not mkstemp's 0600."""

from __future__ import annotations

import os
import stat

import pytest

from paraisite.data.cache import write_verified
from paraisite.safety import atomic_write


@pytest.mark.parametrize("umask", [0o022, 0o002, 0o077])
def test_files_written_whole_follow_the_umask(tmp_path, umask):
    previous = os.umask(umask)
    try:
        atomic_write(tmp_path / "plain.txt", lambda tmp: tmp.write_text("x"))
        write_verified(tmp_path / "cache.pt", b"cached bytes")
    finally:
        os.umask(previous)
    for name in ("plain.txt", "cache.pt"):
        assert stat.S_IMODE((tmp_path / name).stat().st_mode) == 0o666 & ~umask, name
