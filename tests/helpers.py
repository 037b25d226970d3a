"""Shared test helpers: compose the real Hydra config with overrides; train a tiny real LTC model."""

from __future__ import annotations

import csv
import math
from pathlib import Path

from hydra import compose, initialize_config_dir
from omegaconf import DictConfig

from paraisite.cli.main import main
from paraisite.config import config_dir
from paraisite.data.datamodule import LTCDataModule
from paraisite.data.sources import load_source
from paraisite.training.train import train

#: Settings that make a run tiny and quiet on CPU.
FAST = ["trainer.max_epochs=1", "logger=none", "callbacks.progress_bar=null", "cross_eval=[]"]


def compose_train(output_dir: Path, *overrides: str) -> DictConfig:
    """The ``train`` config as ``paraisite-train`` composes it, writing to ``output_dir``."""
    with hydra_configs():
        return compose(config_name="train", overrides=[f"paths.output_dir={output_dir}", *overrides])


def hydra_configs():
    """Context in which ``hydra.compose`` sees paraisite's config directory."""
    return initialize_config_dir(config_dir=str(config_dir()), version_base="1.3")


#: A tiny real LTC run: MEGNet from scratch, 20 structures of Dataset1, one epoch.
TINY_LTC = ("data=dataset1", "model/backbone=megnet_scratch", "max_per_source=20", *FAST)


def tiny_ltc_run(run_dir: Path, *overrides: str):
    """Train a tiny LTC model into ``run_dir`` (``train`` attaches its applicability reference); returns the config."""
    cfg = compose_train(run_dir, *TINY_LTC, *overrides)
    train(cfg)
    return cfg


def read_rows(path: Path) -> list[dict[str, str]]:
    """The rows of a CSV file as dicts."""
    with open(path, newline="") as stream:
        return list(csv.DictReader(stream))


def assert_same_rows(rows: list[dict[str, str]], expected: list[dict[str, str]], rtol: float = 1e-6) -> None:
    """Two CSVs' rows are the same: same columns, order and text; numbers equal to float32 rounding.

    Worker processes batch other crystals together and run one thread each, and a crystal's last float32 bit
    depends on both (CGCNN's small readout matmuls take other kernels); nothing else may differ.
    """
    assert len(rows) == len(expected)
    for row, reference in zip(rows, expected, strict=True):
        assert row.keys() == reference.keys()
        for key, value in row.items():
            if value == reference[key]:
                continue
            try:
                number, reference_number = float(value), float(reference[key])
            except ValueError:
                raise AssertionError(f"{key}: {value!r} != {reference[key]!r}") from None
            assert math.isclose(number, reference_number, rel_tol=rtol), (key, value, reference[key])


def write_validation_poscars(datamodule: LTCDataModule, folder: Path) -> list[str]:
    """Write the validation crystals of a set-up Dataset1 datamodule as POSCAR files, in split order."""
    structures = {record.id: record.structure for record in load_source("dataset1").records}
    paths = []
    for index, sample in enumerate(datamodule.val_set.samples):
        path = folder / f"{index:03d}-{sample.id}.vasp"
        structures[sample.id].to(filename=str(path))
        paths.append(str(path))
    return paths


def predict_with_cli(model: str | Path, paths: list[str], output: Path) -> list[dict[str, str]]:
    """``paraisite predict --model MODEL PATHS -o OUTPUT`` in one process; its rows, checked to follow ``paths``."""
    assert main(["predict", "--model", str(model), *paths, "-o", str(output), "--workers", "0"]) == 0
    rows = read_rows(output)
    assert [row["path"] for row in rows] == paths
    return rows


def finite_difference_force(atoms, calculator, atom: int, axis: int, step: float = 1e-4) -> float:
    """``-dE/dx`` of one atom of ``atoms`` along ``axis``, by central differences of ``calculator``'s energy (eV/Å)."""
    energies = []
    for sign in (1, -1):
        moved = atoms.copy()
        moved.positions[atom, axis] += sign * step
        moved.calc = calculator
        energies.append(moved.get_potential_energy())
    return -(energies[0] - energies[1]) / (2 * step)
