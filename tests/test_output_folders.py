"""Where outputs go: a missing, read-only or full folder is refused before any work, naming it; a disk that fills up
during the run names the file.

Read-only and full folders are real ones: a private tmpfs mounted read-only, or filled, in a user and mount namespace
of its own (``unshare -rm``: no privilege on the machine, nothing visible outside the test's processes). Where such
namespaces are not allowed, those tests are skipped; the missing folder and the folder under a file run everywhere.
"""

from __future__ import annotations

import functools
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from paraisite.cli.main import main
from paraisite.data import registry
from paraisite.data.cgcnn_graph import CGCNN_REPO
from tests.helpers import read_rows

MODEL = "cgcnn-formation-energy-per-atom"
REPO = Path(__file__).resolve().parents[1]
#: Run in the namespace: mount a tmpfs at $2 with options $1, write $3 bytes of filler and (if $4) a file named $4
#: holding "old" into it, then run the rest of the arguments.
MOUNT_AND_RUN = """
mount -t tmpfs -o "$1" tmpfs "$2" || exit 97
if [ "$3" -gt 0 ]; then head -c "$3" /dev/zero > "$2/filler" 2>/dev/null; fi
if [ -n "$4" ]; then printf old > "$2/$4"; fi
shift 4
exec "$@"
"""


@functools.cache
def private_mounts() -> bool:
    """Whether this machine lets an unprivileged process mount a tmpfs in a namespace of its own."""
    if shutil.which("unshare") is None:
        return False
    probe = subprocess.run(
        ["unshare", "-rm", "sh", "-c", "mount -t tmpfs -o size=4k tmpfs /mnt || mount -t tmpfs -o size=4k tmpfs /tmp"],
        capture_output=True,
        check=False,
    )
    return probe.returncode == 0


needs_private_mounts = pytest.mark.skipif(not private_mounts(), reason="unshare -rm cannot mount a tmpfs here")


def in_tmpfs(folder: Path, options: str, *command: str, filler: int = 0, old: str = "") -> subprocess.CompletedProcess:
    """``command`` run with a private tmpfs (mount ``options``) at ``folder``, ``filler`` bytes already used on it."""
    folder.mkdir(exist_ok=True)
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    arguments = ["unshare", "-rm", "sh", "-c", MOUNT_AND_RUN, "sh", options, str(folder), str(filler), old, *command]
    result = subprocess.run(arguments, capture_output=True, text=True, env=env, timeout=300, check=False)
    assert result.returncode != 97, result.stderr
    return result


def paraisite(*arguments: str) -> list[str]:
    return [sys.executable, "-m", "paraisite.cli.main", *arguments]


@pytest.fixture(scope="module")
def cif() -> Path:
    return registry.fetch_entry(registry.select(CGCNN_REPO, "data/sample-regression/*.cif")[0])


@pytest.mark.parametrize("command", ["predict", "scan"])
def test_a_missing_output_folder_is_created(tmp_path, cif, command):
    output = tmp_path / "missing" / "deeper" / "out.csv"
    assert main([command, "--model", "cgcnn-band-gap", str(cif), "-o", str(output), "--workers", "0"]) == 0
    assert len(read_rows(output)) == 1


@pytest.mark.parametrize("command", ["predict", "scan"])
def test_an_output_under_a_file_is_refused_naming_it(tmp_path, cif, command, capsys):
    (tmp_path / "plain").write_text("not a folder")
    output = tmp_path / "plain" / "sub" / "out.csv"
    assert main([command, "--model", "no-such-model", str(cif), "-o", str(output)]) == 1
    assert f"-o {output}: {tmp_path / 'plain'} is not a folder" in capsys.readouterr().err


@needs_private_mounts
@pytest.mark.parametrize("command", ["predict", "scan"])
def test_a_read_only_output_folder_is_refused_before_the_model_is_loaded(tmp_path, cif, command):
    mount = tmp_path / "mnt"
    output = mount / "out.csv"
    result = in_tmpfs(
        mount, "ro,size=64k", *paraisite(command, "--model", "no-such-model", str(cif), "-o", str(output))
    )
    assert result.returncode == 1, result.stderr
    # the old code loaded the model first (and, with a real one, failed only after predicting)
    assert f"-o {output}: cannot write into {mount}: a read-only file system; nothing was run" in result.stderr


@needs_private_mounts
def test_a_full_output_folder_is_refused_before_the_model_is_loaded(tmp_path, cif):
    mount = tmp_path / "mnt"
    output = mount / "out.csv"
    command = paraisite("predict", "--model", "no-such-model", str(cif), "-o", str(output))
    result = in_tmpfs(mount, "size=16k", *command, filler=16 * 1024)
    assert result.returncode == 1, result.stderr
    assert f"-o {output}: cannot write into {mount}: no space left on the device (the disk is full)" in result.stderr


@pytest.fixture(scope="module")
def many_cifs(tmp_path_factory, cif) -> Path:
    """150 copies of one CIF: their rows (about 8 KB) do not fit in the one free page of the tests' tmpfs."""
    folder = tmp_path_factory.mktemp("many")
    for index in range(150):
        shutil.copy(cif, folder / f"{index:03d}.cif")
    return folder


@needs_private_mounts
def test_a_disk_that_fills_up_during_predict_names_the_output_and_leaves_the_old_one(tmp_path, many_cifs):
    mount = tmp_path / "mnt"
    output = mount / "out.csv"
    # 5 pages: 3 of filler, 1 for the old output, 1 free (enough for the check, not for the rows)
    command = paraisite("predict", "--model", MODEL, str(many_cifs), "-o", str(output), "--workers", "0")
    then_show = ["sh", "-c", '"$@"; echo "rc=$?"; ls -A "$(dirname "$0")"; cat "$0"', str(output)]
    result = in_tmpfs(mount, "size=20k", *then_show, *command, filler=12 * 1024, old="out.csv")
    assert result.stdout.split() == ["rc=1", "filler", "out.csv", "old"], result.stderr  # no temporary file left
    # the old code said "[Errno 28] No space left on device", naming no file
    assert f"{output}: could not be written: no space left on the device (the disk is full)" in result.stderr


@needs_private_mounts
def test_a_disk_that_fills_up_during_scan_names_its_progress_log(tmp_path, many_cifs):
    mount = tmp_path / "mnt"
    output = mount / "out.csv"
    command = paraisite("scan", "--model", MODEL, str(many_cifs), "-o", str(output), "--workers", "0")
    result = in_tmpfs(mount, "size=16k", *command, filler=12 * 1024)
    assert result.returncode == 1, result.stderr
    log = mount / "out.progress.csv"
    assert f"{log}: could not be written: no space left on the device (the disk is full)" in result.stderr


def test_the_rows_are_written_when_the_folder_is_fine(tmp_path, cif):
    output = tmp_path / "out.csv"
    assert main(["predict", "--model", MODEL, str(cif), "-o", str(output), "--workers", "0"]) == 0
    assert [row["path"] for row in read_rows(output)] == [str(cif)]
    assert not [name for name in os.listdir(tmp_path) if name.startswith(".paraisite-write-check")]


def train(*overrides: str) -> list[str]:
    return [sys.executable, "-m", "paraisite.training.train", *overrides]


def test_training_refuses_a_log_dir_under_a_file_before_the_run(tmp_path):
    (tmp_path / "plain").write_text("not a folder")
    log_dir = tmp_path / "plain" / "logs"
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    result = subprocess.run(
        train(f"paths.log_dir={log_dir}", "data=dataset1", "logger=none"),
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
        check=False,
    )
    assert result.returncode == 2, result.stderr  # the old code: Hydra's NotADirectoryError, exit 1
    assert f"(paths.log_dir={log_dir}): {tmp_path / 'plain'} is not a folder" in result.stderr


@needs_private_mounts
@pytest.mark.parametrize("multirun", [False, True])
def test_training_refuses_a_read_only_log_dir_before_the_run(tmp_path, multirun):
    mount = tmp_path / "mnt"
    overrides = ["-m", "seed=1,2"] if multirun else []
    command = train(*overrides, f"paths.log_dir={mount}/logs", "data=dataset1", "logger=none")
    result = in_tmpfs(mount, "ro,size=64k", *command)
    assert result.returncode == 2, result.stderr  # the old code: Hydra's traceback of an OSError, exit 1
    assert f"(paths.log_dir={mount}/logs): cannot write into {mount}: a read-only file system" in result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize("command", ["save", "restore"])
def test_state_refuses_a_destination_under_a_file_naming_it(tmp_path, command, capsys):
    (tmp_path / "plain").write_text("not a folder")
    (tmp_path / "sweep").mkdir()
    source, destination = (tmp_path / "sweep", tmp_path / "plain" / "dest")
    assert main(["state", command, str(source), str(destination)]) == 1
    # the old code: "nothing saved" with exit 0 (save), "no interrupted job" (restore): the destination unnamed
    assert f"state {command} into {destination}: {tmp_path / 'plain'} is not a folder" in capsys.readouterr().err
