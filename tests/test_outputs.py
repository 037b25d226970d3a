"""Outputs of ``predict`` and ``scan``: one writer, atomic replacement, refusals that touch nothing, exit codes.

Concurrency is tested with real processes: a second ``scan`` on an output being written is refused.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from paraisite.cli.main import main
from paraisite.data import registry
from paraisite.data.cgcnn_graph import CGCNN_REPO
from paraisite.zoo.files import OutputError, output_lock, scan_log_path
from paraisite.zoo.predictors import load_predictor
from paraisite.zoo.scan import run_predictions, scan
from tests.helpers import read_rows

MODEL = "cgcnn-formation-energy-per-atom"


@pytest.fixture(scope="module")
def sample_cifs() -> list[Path]:
    return [registry.fetch_entry(entry) for entry in registry.select(CGCNN_REPO, "data/sample-regression/*.cif")]


@pytest.fixture(scope="module")
def predictor():
    return load_predictor(MODEL)


def many_copies(cifs: list[Path], folder: Path, count: int) -> Path:
    """``folder`` with ``count`` CIFs (``0000.cif``, ...), copies of ``cifs`` in turn: a run long enough to catch."""
    folder.mkdir()
    for index in range(count):
        shutil.copy(cifs[index % len(cifs)], folder / f"{index:04d}.cif")
    return folder


def cli(*args: str) -> subprocess.Popen:
    """``paraisite ARGS`` started as a new process (not waited for)."""
    command = [sys.executable, "-m", "paraisite.cli.main", *args]
    return subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


@pytest.mark.slow
def test_second_scan_on_the_same_output_is_refused_while_the_first_writes(tmp_path, sample_cifs):
    folder = many_copies(sample_cifs, tmp_path / "many", 600)
    output = tmp_path / "scan.csv"
    lock = Path(f"{output}.lock")

    first = cli("scan", "--model", MODEL, str(folder), "-o", str(output), "--workers", "0")
    deadline = time.monotonic() + 120
    while not (lock.is_file() and lock.read_text().strip() == str(first.pid)):
        assert first.poll() is None, first.communicate()
        assert time.monotonic() < deadline, "the first scan never took the lock"
        time.sleep(0.05)
    second = cli("scan", "--model", MODEL, str(folder), "-o", str(output), "--workers", "0")
    _, second_err = second.communicate(timeout=300)
    assert first.poll() is None, "the first scan ended before the second tried: the test proves nothing"
    _, first_err = first.communicate(timeout=300)

    assert second.returncode == 1
    assert f"another paraisite scan (pid {first.pid}) is writing this file" in second_err
    assert first.returncode == 0, first_err
    assert not lock.exists()  # the holder removed it on exit
    rows = read_rows(output)
    assert sorted(row["path"] for row in rows) == sorted(str(path) for path in folder.iterdir())  # once each
    assert all(row["error"] == "" and float(row["formation_energy_eV_per_atom"]) < 10 for row in rows)

    # the lock dies with its holder: the next scan resumes (nothing left to do)
    again = cli("scan", "--model", MODEL, str(folder), "-o", str(output), "--workers", "0")
    _, again_err = again.communicate(timeout=300)
    assert again.returncode == 0, again_err
    assert "600 already done" in again_err


def test_lock_is_exclusive_within_one_machine(tmp_path):
    output = tmp_path / "out.csv"
    with output_lock(output), pytest.raises(OutputError, match=f"pid {os.getpid()}"), output_lock(output):
        pass
    with output_lock(output) as lock:  # released
        assert lock.read_text().strip() == str(os.getpid())
    assert not lock.exists()  # removed on exit
    with pytest.raises(RuntimeError, match="boom"), output_lock(output):
        raise RuntimeError("boom")
    assert not lock.exists()  # also after a failure


def test_scan_refuses_an_unrelated_file_without_touching_it(tmp_path, sample_cifs, predictor):
    output = tmp_path / "notes.csv"
    original = b"my,own,table\n1,2,3\nlast line without a newline"
    output.write_bytes(original)
    with pytest.raises(OutputError, match="it was not modified"):
        scan(predictor, [str(sample_cifs[0])], output)
    assert output.read_bytes() == original
    assert not scan_log_path(output).exists()


@pytest.mark.parametrize("command", ["predict", "scan"])
def test_output_equal_to_an_input_is_refused(tmp_path, sample_cifs, command, capsys):
    target = tmp_path / "input.csv"
    shutil.copy(sample_cifs[0], target)  # a CIF named .csv, given as an input and as -o
    original = target.read_bytes()
    assert main([command, "--model", MODEL, str(target), str(sample_cifs[1]), "-o", str(target)]) == 1
    assert f"-o {target} is also an input" in capsys.readouterr().err
    assert target.read_bytes() == original


def test_scan_progress_log_equal_to_an_input_is_refused(tmp_path, sample_cifs, capsys):
    log = tmp_path / "out.progress.csv"
    shutil.copy(sample_cifs[0], log)
    assert main(["scan", "--model", MODEL, str(log), "-o", str(tmp_path / "out.csv")]) == 1
    assert "the progress log of -o" in capsys.readouterr().err
    assert not (tmp_path / "out.csv").exists()


def test_scan_progress_log_that_is_a_link_is_refused_untouched(tmp_path, sample_cifs, capsys):
    elsewhere = tmp_path / "elsewhere.txt"
    elsewhere.write_text("not ours\n")
    (tmp_path / "out.progress.csv").symlink_to(elsewhere)  # appending would write through the link
    assert main(["scan", "--model", MODEL, str(sample_cifs[0]), "-o", str(tmp_path / "out.csv")]) == 1
    assert "is a link or not a regular file" in capsys.readouterr().err
    assert elsewhere.read_text() == "not ours\n"


@pytest.mark.parametrize(
    ("option", "value", "message"),
    [
        ("--batch-size", "-3", "argument --batch-size: must be a positive integer, got -3"),
        ("--batch-size", "0", "argument --batch-size: must be a positive integer, got 0"),
        ("--workers", "-1", "argument --workers: must be 0 (read in this process) or more, got -1"),
    ],
)
@pytest.mark.parametrize("command", ["predict", "scan"])
def test_bad_batch_size_or_workers_are_refused(tmp_path, sample_cifs, command, option, value, message, capsys):
    output = tmp_path / "out.csv"
    with pytest.raises(SystemExit) as exit_info:
        main([command, "--model", MODEL, str(sample_cifs[0]), "-o", str(output), option, value])
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err
    assert not output.exists()


def test_library_refuses_bad_options_too(tmp_path, sample_cifs, predictor):
    with pytest.raises(OutputError, match="--batch-size must be a positive integer"):
        run_predictions(predictor, [str(sample_cifs[0])], tmp_path / "out.csv", batch_size=-3)
    assert not (tmp_path / "out.csv").exists()


@pytest.mark.parametrize("command", ["predict", "scan"])
def test_every_input_failing_exits_1_with_error_rows(tmp_path, command, capsys):
    broken = [tmp_path / "a.cif", tmp_path / "b.vasp"]
    for path in broken:
        path.write_text("not a structure\n")
    output = tmp_path / "out.csv"
    assert main([command, "--model", MODEL, *map(str, broken), "-o", str(output), "--workers", "0"]) == 1
    assert "every file failed (2)" in capsys.readouterr().err
    assert [row["path"] for row in read_rows(output) if row["error"]] == [str(path) for path in broken]


def test_no_structure_file_found_is_an_error(tmp_path, capsys):
    (tmp_path / "notes.txt").write_text("no structures here\n")
    assert main(["predict", "--model", MODEL, str(tmp_path), "-o", str(tmp_path / "out.csv")]) == 1
    assert "no structure files in" in capsys.readouterr().err


def test_interrupted_predict_leaves_the_previous_output_and_no_temporary_file(tmp_path, sample_cifs, predictor):
    output = tmp_path / "out.csv"
    output.write_text("previous results\n")

    def interrupt(_done: int) -> None:
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        run_predictions(predictor, list(map(str, sample_cifs)), output, batch_size=2, progress=interrupt)
    assert output.read_text() == "previous results\n"
    assert sorted(path.name for path in tmp_path.iterdir()) == ["out.csv"]

    run_predictions(predictor, list(map(str, sample_cifs)), output, batch_size=2)
    assert len(read_rows(output)) == len(sample_cifs)
    assert sorted(path.name for path in tmp_path.iterdir()) == ["out.csv"]


def test_the_temporary_file_of_a_killed_predict_is_removed_by_the_next_one(tmp_path, sample_cifs):
    folder = many_copies(sample_cifs, tmp_path / "many", 300)
    output = tmp_path / "out.csv"
    killed = cli("predict", "--model", MODEL, str(folder), "-o", str(output), "--workers", "0", "--batch-size", "1")
    deadline = time.monotonic() + 120
    while not (left := list(tmp_path.glob(".out.csv.*.tmp"))):
        assert killed.poll() is None, killed.communicate()
        assert time.monotonic() < deadline, "no temporary output before the deadline"
        time.sleep(0.01)
    killed.kill()  # SIGKILL: the process cannot remove its temporary file
    killed.communicate(timeout=60)
    assert left[0].exists()
    assert left[0].name.startswith(f".out.csv.{killed.pid}.")
    live = tmp_path / f".out.csv.{os.getpid()}.another-live-run.tmp"  # a process that still runs keeps its file
    live.write_text("")

    assert main(["predict", "--model", MODEL, str(sample_cifs[0]), "-o", str(output), "--workers", "0"]) == 0
    assert not left[0].exists()  # left behind for good on the old code
    assert live.exists()
    assert len(read_rows(output)) == 1
