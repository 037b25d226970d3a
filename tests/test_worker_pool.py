"""The worker pool of ``predict``/``scan`` with real processes and real signals: a worker's death or a file past the
time limit costs only that file; SIGTERM, SIGINT and SIGKILL of the main process leave no worker, fork server or
``.tmp`` output behind."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from paraisite.zoo.files import scan_log_path
from tests.helpers import read_rows
from tests.test_input_bounds import cubic_group_cif

MODEL = "cgcnn-formation-energy-per-atom"
NACL = Path(__file__).parent / "data" / "bad_inputs" / "valid_NaCl.cif"
TIMEOUT_S = 180
#: The slow file: 200 general sites of Fm-3m, about 25 s of symmetry expansion once the bounds let it through.
SLOW_LIMITS = {"PARAISITE_MAX_CIF_IMAGES": "100000", "PARAISITE_MAX_ATOMS": "100000"}


@pytest.fixture
def inputs(tmp_path) -> list[str]:
    """Three small crystals, then the slow file (last: each is a batch of its own, written in order)."""
    paths = []
    for index in range(3):
        path = tmp_path / f"NaCl{index}.cif"
        path.write_bytes(NACL.read_bytes())
        paths.append(str(path))
    cubic_group_cif(tmp_path / "slow.cif", 200)
    return [*paths, str(tmp_path / "slow.cif")]


#: ``python -m paraisite.cli.main`` with Ctrl-C's handler, as from a terminal: a suite started in the background by a
#: non-interactive shell passes SIGINT on ignored, and Python then installs no KeyboardInterrupt handler.
AS_FROM_A_TERMINAL = (
    "import runpy, signal; signal.signal(signal.SIGINT, signal.default_int_handler); "
    "runpy.run_module('paraisite.cli.main', run_name='__main__', alter_sys=True)"
)


def start(command: str, inputs: list[str], output: Path, **env: str) -> subprocess.Popen:
    """``paraisite COMMAND`` with two workers and one file per batch, in a new process."""
    args = [command, "--model", MODEL, *inputs, "-o", str(output), "--workers", "2", "--batch-size", "1"]
    return subprocess.Popen(
        [sys.executable, "-c", AS_FROM_A_TERMINAL, *args],
        env={**os.environ, **SLOW_LIMITS, **env},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def descendants(pid: int) -> list[int]:
    """Every live process below ``pid`` (children, their children, ...), from /proc."""
    parents = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            parents[int(entry.name)] = int(fields[1])
    found, frontier = [], [pid]
    while frontier:
        children = [child for child, parent in parents.items() if parent in frontier]
        found += children
        frontier = children
    return found


def alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def wait_for(condition, what: str, timeout: float = TIMEOUT_S) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {what}")
        time.sleep(0.1)


def data_lines(path: Path) -> int:
    return max(0, len(path.read_text().splitlines()) - 1) if path.is_file() else 0


def finish(process: subprocess.Popen) -> tuple[int, str]:
    try:
        _, stderr = process.communicate(timeout=TIMEOUT_S)
    except subprocess.TimeoutExpired:
        process.kill()
        pytest.fail("the command did not finish")
    return process.returncode, stderr


def test_a_worker_killed_by_a_signal_costs_only_its_file(tmp_path, inputs):
    output = tmp_path / "scan.csv"
    log = scan_log_path(output)  # rows in input order as they are predicted; ``output`` gets the ranking at the end
    process = start("scan", inputs, output)
    wait_for(lambda: data_lines(log) == 3, "the three small files")  # only the slow file is in flight now
    server = [pid for pid in descendants(process.pid) if b"forkserver" in Path(f"/proc/{pid}/cmdline").read_bytes()]
    workers = [pid for pid in descendants(server[0]) if alive(pid)]
    assert len(workers) == 2
    for pid in workers:  # the busy worker and the idle one, as the kernel's OOM killer would
        os.kill(pid, signal.SIGKILL)
    code, stderr = finish(process)
    assert code == 3, stderr
    rows = read_rows(log)
    assert [row["path"] for row in rows] == inputs
    assert {row["path"] for row in read_rows(output)} == set(inputs)
    assert [row["error"] for row in rows[:3]] == ["", "", ""]
    assert rows[3]["error"] == (
        f"{inputs[3]}: its worker process was killed by signal 9 (SIGKILL), likely out of memory "
        "while it read this file or built its graph"
    )
    assert "1 file(s) lost to a worker process" in stderr


def test_a_file_past_the_time_limit_costs_only_itself(tmp_path, inputs):
    output = tmp_path / "scan.csv"
    inputs = [inputs[3], *inputs[:3]]  # first: the others are predicted while (and after) it runs out of time
    code, stderr = finish(start("scan", inputs, output, PARAISITE_FILE_SECONDS="3"))
    assert code == 3, stderr
    rows = read_rows(scan_log_path(output))  # input order (``output`` is the ranking)
    assert [row["path"] for row in rows] == inputs
    assert rows[0]["error"] == (
        f"{inputs[0]}: took more than the 3 s per-file limit (PARAISITE_FILE_SECONDS) while it read this file or "
        "built its graph"
    )
    assert [row["formula"] for row in rows[1:]] == ["NaCl"] * 3


@pytest.mark.parametrize("number", [signal.SIGTERM, signal.SIGINT, signal.SIGKILL])
def test_the_main_process_takes_its_pool_and_temporary_output_with_it(tmp_path, inputs, number):
    output = tmp_path / "predictions.csv"
    process = start("predict", inputs, output)
    temporary = lambda: list(tmp_path.glob(".predictions.csv.*.tmp"))  # noqa: E731
    wait_for(lambda: temporary() and data_lines(temporary()[0]) == 3, "the three small files")
    left = descendants(process.pid)
    assert len(left) >= 3  # the fork server, its two workers (and the resource tracker)
    process.send_signal(number)
    code, _ = finish(process)
    assert code != 0
    wait_for(lambda: not any(alive(pid) for pid in left), "the workers and the fork server to end", timeout=20)
    if number != signal.SIGKILL:  # a killed process cannot clean up; the watchdogs still end its workers
        assert temporary() == []
        assert not output.exists()
