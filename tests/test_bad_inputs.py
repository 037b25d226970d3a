"""What each bad input gets: one row per case, so a newcomer sees the answer to every bad file or option.

Structure files (``tests/data/bad_inputs/``, small and hand-written; special files such as FIFOs, devices and
decompression bombs are made in a temporary folder) all go through ONE real ``paraisite predict`` run, next to a
valid crystal: each bad file becomes an error row naming the file and the reason, with no values, and the valid
crystal is still predicted. Command-line cases each get a refusal message and exit status 1 or 2, with nothing
written.
"""

from __future__ import annotations

import bz2
import gzip
import hashlib
import json
import os
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest
import torch

from paraisite.cli.main import main
from paraisite.safety import MAX_STRUCTURE_BYTES
from tests.helpers import read_rows

DATA = Path(__file__).parent / "data" / "bad_inputs"
MODEL = "cgcnn-formation-energy-per-atom"
VALUE = "formation_energy_eV_per_atom"


def fifo(folder: Path) -> Path:
    path = folder / "fifo.cif"
    os.mkfifo(path)  # nobody writes to it: opening it for reading would block forever
    return path


def character_device(folder: Path) -> Path:
    path = folder / "device.cif"
    path.symlink_to("/dev/zero")  # endless zeros
    return path


def decompression_bomb(folder: Path) -> Path:
    path = folder / "bomb.cif.gz"
    with gzip.open(path, "wb", compresslevel=9) as stream:
        block = b"\0" * (1 << 20)
        for _ in range(MAX_STRUCTURE_BYTES // len(block) + 1):
            stream.write(block)
    assert path.stat().st_size < MAX_STRUCTURE_BYTES // 100
    return path


def oversized_file(folder: Path) -> Path:
    path = folder / "huge.cif"
    with open(path, "wb") as stream:
        stream.truncate(MAX_STRUCTURE_BYTES + 1)  # sparse: costs no disk
    return path


def corrupt_gzip(folder: Path) -> Path:
    path = folder / "corrupt.cif.gz"
    path.write_bytes(b"\x1f\x8b\x08\x00 this is not deflate data")
    return path


def bzip2_file(folder: Path) -> Path:
    path = folder / "crystal.cif.bz2"
    path.write_bytes(bz2.compress((DATA / "valid_NaCl.cif").read_bytes()))
    return path


def missing_file(folder: Path) -> Path:
    return folder / "does-not-exist.cif"


#: (case, file in tests/data/bad_inputs or a maker of a special file, what its row's error says)
STRUCTURE_CASES: list[tuple[str, str | Callable[[Path], Path], str]] = [
    ("negative occupancy", "negative_occupancy.cif", "site Na0: occupancy -0.5 is outside [0, 1]"),
    ("occupancy above 1", "occupancy_above_one.cif", "site Na0: occupancy 1.5 is outside [0, 1]"),
    ("occupancy pymatgen would rescale", "occupancy_slightly_above_one.cif", "occupancy 1.02 is outside [0, 1]"),
    ("occupancy not a number", "occupancy_not_a_number.cif", "site Na0: occupancy 'abc' is not a number"),
    ("partial occupancy (vacancy)", "partial_occupancy.cif", "site 0: occupancy Na0.5 is not one fully occupied"),
    ("two species on one site", "mixed_site.cif", "site 0: occupancy Na0.5 K0.5 is not one fully occupied"),
    ("two atoms at one position", "atoms_at_the_same_position.cif", "Some occupancies ([2.0]) sum to > 1"),
    ("overlapping atoms", "overlapping_atoms.cif", "overlapping atoms: sites 1 (Cl) and 0 (Na) are 0.056 A apart"),
    ("overlap across the cell boundary", "overlapping_periodic_images.vasp", "sites 0 (Na) and 1 (Cl) are 0.113 A"),
    ("NaN coordinate in a CIF", "nan_coordinates.cif", "site(s) [0] have NaN or infinite coordinates"),
    ("NaN coordinate in a POSCAR", "nan_coordinates.vasp", "site(s) [0] have NaN or infinite coordinates"),
    ("zero-volume cell", "zero_volume.vasp", "cell volume 0 A^3 for 2 atoms is (near) zero"),
    ("near-zero-volume cell", "near_zero_volume.cif", "below threshold"),
    ("unknown element in a CIF", "unknown_element.cif", "site 0: unknown element 'Xx'"),
    ("unknown element in a POSCAR", "unknown_element.vasp", "site 0: unknown element 'Xx'"),
    ("empty file", "empty.cif", "cannot read a crystal structure"),
    ("text named .cif", "not_a_structure.cif", "cannot read a crystal structure"),
    ("text file given explicitly", "notes.txt", "Unrecognized extension"),
    ("FIFO", fifo, "not a regular file (a FIFO)"),
    ("character device", character_device, "not a regular file (a character device)"),
    ("decompression bomb", decompression_bomb, f"content larger than the {MAX_STRUCTURE_BYTES}-byte limit"),
    ("file over the size limit", oversized_file, f"more than the {MAX_STRUCTURE_BYTES}-byte limit"),
    ("corrupt gzip", corrupt_gzip, "not a readable gzip file"),
    ("bzip2 (no size limit possible)", bzip2_file, "compressed with .bz2; only .gz is read"),
    ("missing file", missing_file, "no such file"),
]


@pytest.fixture(scope="module")
def predicted(tmp_path_factory) -> dict[str, dict[str, str]]:
    """One ``paraisite predict`` over the valid crystal and every case: rows by case (``valid`` first)."""
    folder = tmp_path_factory.mktemp("bad-inputs")
    paths = [str(DATA / "valid_NaCl.cif")]
    for _case, source, _expected in STRUCTURE_CASES:
        paths.append(str(DATA / source if isinstance(source, str) else source(folder)))
    output = folder / "out.csv"
    assert main(["predict", "--model", MODEL, *paths, "-o", str(output), "--workers", "0"]) == 0
    rows = read_rows(output)
    assert [row["path"] for row in rows] == [os.path.abspath(path) for path in paths]
    return dict(zip(["valid", *(case for case, _, _ in STRUCTURE_CASES)], rows, strict=True))


def test_the_valid_crystal_next_to_them_is_predicted(predicted):
    row = predicted["valid"]
    assert row["error"] == ""
    assert (row["formula"], row["n_atoms"]) == ("NaCl", "8")
    assert float(row[VALUE]) < 0


@pytest.mark.parametrize(
    ("case", "expected"), [(c[0], c[2]) for c in STRUCTURE_CASES], ids=[c[0] for c in STRUCTURE_CASES]
)
def test_bad_structure_file_gets_an_error_row(predicted, case, expected):
    row = predicted[case]
    assert expected in row["error"], f"{case}: {row['error']}"
    assert row["error"].startswith(row["path"])  # names the file
    assert row[VALUE] == ""  # no value: never a silently different crystal


# --- command-line inputs: refused with a message, nothing written ---


def not_a_checkpoint(folder: Path) -> list[str]:
    path = folder / "model.ckpt"
    path.write_text("this is not a checkpoint\n")
    return ["--model", str(path)]


def crafted_checkpoint(folder: Path) -> list[str]:
    path = folder / "crafted.ckpt"
    torch.save({"state_dict": _RunsCommand(f"touch {folder / 'code-ran'}")}, path)
    return ["--model", str(path)]


class _RunsCommand:
    def __init__(self, command: str) -> None:
        self.command = command

    def __reduce__(self):
        return os.system, (self.command,)


def empty_run_directory(folder: Path) -> list[str]:
    (folder / "run").mkdir()
    return ["--model", str(folder / "run")]


def bundle_member_outside(folder: Path) -> list[str]:
    bundle = folder / "bundle"
    bundle.mkdir()
    (folder / "outside.ckpt").write_bytes(b"weights")
    member = {"file": "../outside.ckpt", "sha256": hashlib.sha256(b"weights").hexdigest(), "seed": 1, "val_mape": 0.5}
    (bundle / "manifest.json").write_text(json.dumps({"format": 1, "name": "b", "members": [member]}))
    return ["--model", str(bundle)]


def output_is_an_input(folder: Path) -> list[str]:
    target = folder / "input.csv"
    shutil.copy(DATA / "valid_NaCl.cif", target)
    return ["--model", MODEL, str(target), "-o", str(target)]


#: (case, extra arguments or a maker of them, exit status, refusal message)
COMMAND_CASES: list[tuple[str, list[str] | Callable[[Path], list[str]], int, str]] = [
    ("negative batch size", ["--batch-size", "-3"], 2, "argument --batch-size: must be a positive integer, got -3"),
    ("zero batch size", ["--batch-size", "0"], 2, "argument --batch-size: must be a positive integer, got 0"),
    ("negative workers", ["--workers", "-1"], 2, "argument --workers: must be 0 (read in this process) or more"),
    ("percentile above 100", ["--max-percentile", "150"], 1, "--max-percentile must be within [0, 100]"),
    ("text file as checkpoint", not_a_checkpoint, 1, "not a readable checkpoint"),
    ("checkpoint that would run code", crafted_checkpoint, 1, "refused: the checkpoint needs more than weights"),
    ("run directory without a completed record", empty_run_directory, 1, "is not a completed run directory"),
    ("bundle member outside the bundle", bundle_member_outside, 1, "'../outside.ckpt' has the part '..'"),
    ("output equal to an input", output_is_an_input, 1, "is also an input; choose another output file"),
]


@pytest.mark.parametrize(("case", "arguments", "status", "message"), COMMAND_CASES, ids=[c[0] for c in COMMAND_CASES])
def test_bad_command_line_input_is_refused(tmp_path, capsys, case, arguments, status, message):
    extra = arguments(tmp_path) if callable(arguments) else arguments
    command = ["predict", *extra]
    if "--model" not in extra:
        command += ["--model", MODEL]
    if "-o" not in extra:
        command += [str(DATA / "valid_NaCl.cif"), "-o", str(tmp_path / "out.csv")]
    before = sorted(path.name for path in tmp_path.iterdir())
    try:
        code = main(command)
    except SystemExit as exit_info:  # argparse
        code = exit_info.code
    assert code == status, case
    assert message in capsys.readouterr().err.replace("\n", " ")
    assert sorted(path.name for path in tmp_path.iterdir()) == before  # nothing written, no code ran
