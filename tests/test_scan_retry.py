"""A scan's error rows: the scan says how to retry them, and ``--retry-errors`` does once the files are fixed."""

from __future__ import annotations

import shutil
from pathlib import Path

from paraisite.cli.main import main
from tests.helpers import read_rows

MODEL = "cgcnn-formation-energy-per-atom"
DATA = Path(__file__).parent / "data" / "bad_inputs"


def test_error_rows_are_retried_on_request_once_fixed(tmp_path, capsys):
    good, broken = tmp_path / "good.cif", tmp_path / "broken.cif"
    shutil.copyfile(DATA / "valid_NaCl.cif", good)
    shutil.copyfile(DATA / "empty.cif", broken)
    output = tmp_path / "scan.csv"
    command = ["scan", "--model", MODEL, str(good), str(broken), "-o", str(output), "--workers", "0"]
    assert main(command) == 0
    assert "1 row(s) of" in " ".join(capsys.readouterr().err.split())
    shutil.copyfile(DATA / "valid_NaCl.cif", broken)  # fixed
    assert main(command) == 0  # without the option the error row stays: the file counts as done
    assert [row["error"] != "" for row in read_rows(output)] == [False, True]
    assert "add --retry-errors to try them again" in " ".join(capsys.readouterr().err.split())
    assert main([*command, "--retry-errors"]) == 0
    rows = read_rows(output)
    assert sorted(row["path"] for row in rows) == sorted([str(good), str(broken)])
    assert [row["error"] for row in rows] == ["", ""]
    assert [row["formula"] for row in rows] == ["NaCl", "NaCl"]
    assert "have an error" not in capsys.readouterr().err
