"""Worker processes of ``predict``/``scan``: forked from a fork server with one torch thread, so large cells cannot
hang them.

Readers forked from a parent that had run torch's thread pool (loading the model does) once blocked forever in
``MEGNetGraphBuilder.build`` on a 216-atom cell. That hang does not reproduce on demand (with plain ``fork`` this
test passed on 2026-12-07), so the test guards the outcome: two real worker processes finish, within a timeout
(each command is a real process, so a hang fails the test instead of blocking the suite), and give the rows of one
process. ``--batch-size 1`` makes two batches, so both workers start (one batch is predicted in the main process).
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from pymatgen.core import Lattice, Structure

from paraisite.cli.main import main
from paraisite.zoo.files import scan_log_path
from tests.helpers import assert_same_rows, read_rows, tiny_ltc_run

TIMEOUT_S = 180


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    run_dir = tmp_path_factory.mktemp("workers-run")
    tiny_ltc_run(run_dir)
    return run_dir


@pytest.fixture(scope="module")
def large_and_small(tmp_path_factory) -> list[str]:
    """A 3x3x3 NaCl supercell (216 atoms, pymatgen's ``make_supercell``) and a conventional MgO cell."""
    folder = tmp_path_factory.mktemp("large-cell")
    rock_salt = Structure.from_spacegroup("Fm-3m", Lattice.cubic(5.64), ["Na", "Cl"], [[0, 0, 0], [0.5] * 3])
    rock_salt.make_supercell([3, 3, 3])
    assert len(rock_salt) == 216
    rock_salt.to(filename=str(folder / "NaCl-3x3x3.cif"))
    magnesia = Structure.from_spacegroup("Fm-3m", Lattice.cubic(4.21), ["Mg", "O"], [[0, 0, 0], [0.5] * 3])
    magnesia.to(filename=str(folder / "MgO.vasp"))
    return [str(folder / "NaCl-3x3x3.cif"), str(folder / "MgO.vasp")]


def run_cli(*args: str) -> subprocess.CompletedProcess:
    """``paraisite ARGS`` in a new process; a hang past :data:`TIMEOUT_S` fails the test."""
    command = [sys.executable, "-m", "paraisite.cli.main", *args]
    try:
        return subprocess.run(command, capture_output=True, text=True, check=False, timeout=TIMEOUT_S)
    except subprocess.TimeoutExpired:
        pytest.fail(f"`paraisite {' '.join(args)}` did not finish in {TIMEOUT_S} s (hung reader processes?)")


@pytest.mark.slow
@pytest.mark.parametrize("command", ["predict", "scan"])
def test_large_cell_with_two_workers_finishes_and_equals_one_process(tmp_path, run_dir, large_and_small, command):
    pooled = tmp_path / "pooled.csv"
    result = run_cli(
        command, "--model", str(run_dir), *large_and_small, "-o", str(pooled), "--workers", "2", "--batch-size", "1"
    )
    assert result.returncode == 0, result.stderr
    assert "2 predicted, 0 failed" in result.stderr

    single = tmp_path / "single.csv"  # the same batches: batching changes the float order of the latents
    one_process = ["-o", str(single), "--workers", "0", "--batch-size", "1"]
    assert main([command, "--model", str(run_dir), *large_and_small, *one_process]) == 0
    rows = read_rows(scan_log_path(pooled) if command == "scan" else pooled)  # scan: -o is the ranking
    assert [row["path"] for row in rows] == large_and_small
    assert [row["n_atoms"] for row in rows] == ["216", "8"]
    assert_same_rows(rows, read_rows(scan_log_path(single) if command == "scan" else single))
    if command == "scan":
        assert sorted(row["path"] for row in read_rows(pooled)) == sorted(large_and_small)


def test_cli_starts_the_workers_before_importing_torch():
    """The fork server starts before the model code is imported, so both imports run side by side: the CLI and the
    input checks must not import torch, pymatgen or matgl themselves (importing them first cost 1.5 s of 11 s on all
    5,578 AFLOW CIFs with a CGCNN model)."""
    probe = (
        "import sys, paraisite.cli.main, paraisite.zoo.files, paraisite.zoo.workers; "
        "print(' '.join(m for m in ('torch', 'pymatgen.core', 'matgl', 'torch_geometric') if m in sys.modules))"
    )
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True, timeout=60)
    assert result.stdout.strip() == ""


def test_worker_preload_follows_the_catalog():
    """CGCNN zoo models preload no LTC modules, every other model does; the fork server skips a module it cannot
    import without a word, so each one must import."""
    import importlib

    from paraisite.zoo.catalog import catalog
    from paraisite.zoo.workers import LTC_PRELOAD, WORKER_PRELOAD, worker_preload

    for name, entry in catalog().items():
        assert (worker_preload(name) == WORKER_PRELOAD) == (entry.family == "cgcnn"), name
    assert worker_preload("runs/step2/MIX/seed1") == WORKER_PRELOAD + LTC_PRELOAD  # a run directory or checkpoint
    for module in WORKER_PRELOAD + LTC_PRELOAD:
        importlib.import_module(module)
