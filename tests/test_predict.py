"""``paraisite predict`` / ``scan`` with real models: CGCNN checkpoints and an LTC checkpoint from a tiny real run."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from pymatgen.core import Lattice, Structure

from paraisite.cli.main import main
from paraisite.data import registry
from paraisite.data.cgcnn_graph import CGCNN_REPO
from paraisite.data.sources import load_source, read_structure
from paraisite.evaluation.applicability import load_applicability
from paraisite.evaluation.cross import predict_loader
from paraisite.models.cgcnn import load_cgcnn_pretrained
from paraisite.models.regressor import LTCRegressor
from paraisite.training.builders import build_datamodule
from paraisite.zoo.files import scan_log_path, structure_paths
from paraisite.zoo.predictors import load_predictor
from paraisite.zoo.scan import run_predictions, scan
from tests.helpers import assert_same_rows, predict_with_cli, read_rows, tiny_ltc_run, write_validation_poscars


@pytest.fixture(scope="module")
def sample_cifs() -> list[Path]:
    return [registry.fetch_entry(entry) for entry in registry.select(CGCNN_REPO, "data/sample-regression/*.cif")]


@pytest.fixture(scope="module")
def formation_energy():
    return load_predictor("cgcnn-formation-energy-per-atom")


@pytest.fixture(scope="module")
def ltc_run(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("ltc-run")
    return run_dir, tiny_ltc_run(run_dir)


@pytest.mark.parametrize(
    ("name", "columns"),
    [
        ("formation-energy-per-atom", ["formation_energy_eV_per_atom"]),
        ("bulk-moduli", ["bulk_modulus_log10_GPa", "bulk_modulus_GPa"]),
        ("semi-metal-classification", ["p_metal"]),
    ],
)
def test_cgcnn_predictions_equal_the_pretrained_model(tmp_path, sample_cifs, name, columns):
    output = tmp_path / "out.csv"
    assert main(["predict", "--model", f"cgcnn-{name}", *map(str, sample_cifs), "-o", str(output)]) == 0
    rows = read_rows(output)
    assert [row["path"] for row in rows] == [str(path) for path in sample_cifs]
    pretrained = load_cgcnn_pretrained(name)
    expected = pretrained.predict_structures([read_structure(path) for path in sample_cifs])
    np.testing.assert_array_equal([float(row[columns[0]]) for row in rows], expected)
    if len(columns) == 2:  # log10 model: GPa too
        np.testing.assert_allclose([float(row[columns[1]]) for row in rows], 10**expected, rtol=1e-12)
    assert {row["formula"] for row in rows} >= {"NaCl", "BaTiO3", "Si"}
    assert all(row["error"] == "" and row["in_domain"] == "True" and row["unseen_elements"] == "" for row in rows)
    assert all(row["latent_percentile"] == "" for row in rows)  # no CGCNN training set offline


def test_bad_files_are_error_rows_and_folders_are_recursed(tmp_path, sample_cifs, formation_energy):
    folder = tmp_path / "structures"
    (folder / "nested").mkdir(parents=True)
    for path in sample_cifs[:3]:
        shutil.copy(path, folder / "nested" / path.name)
    (folder / "broken.cif").write_text("data_broken\n_cell_length_a 3.0\n")
    (folder / "README.md").write_text("not a structure: skipped in folders\n")
    Structure(Lattice.cubic(3.0), ["Md"], [[0, 0, 0]]).to(filename=str(folder / "Md.vasp"))
    notes = tmp_path / "notes.txt"
    notes.write_text("named explicitly: tried and reported\n")

    paths = structure_paths([folder, notes])
    names = [Path(path).name for path in paths]
    assert names == ["Md.vasp", "broken.cif", *(path.name for path in sample_cifs[:3]), "notes.txt"]
    output = tmp_path / "out.csv"
    summary = run_predictions(formation_energy, paths, output, batch_size=2, workers=0)
    assert (summary.predicted, summary.failed) == (3, 3)
    rows = {Path(row["path"]).name: row for row in read_rows(output)}
    assert "README.md" not in rows
    for name in ("Md.vasp", "broken.cif", "notes.txt"):
        assert paths[names.index(name)] in rows[name]["error"]
        assert rows[name]["formation_energy_eV_per_atom"] == ""
    assert "cannot read a crystal structure" in rows["notes.txt"]["error"]
    assert "['Md']" in rows["Md.vasp"]["error"]
    assert rows["Md.vasp"]["unseen_elements"] == "Md"  # absent from atom_init.json
    assert rows["Md.vasp"]["formula"] == "Md"

    pooled = tmp_path / "pooled.csv"
    run_predictions(formation_energy, paths, pooled, batch_size=2, workers=2)
    assert_same_rows(read_rows(pooled), read_rows(output))


def test_ltc_checkpoint_predicts_its_validation_predictions(tmp_path, ltc_run):
    run_dir, cfg = ltc_run
    datamodule = build_datamodule(cfg)
    datamodule.setup()
    model = LTCRegressor.load_from_checkpoint(run_dir / "checkpoints" / "best.ckpt", map_location="cpu")
    expected = predict_loader(model, datamodule.val_dataloader())["pred_tc"].numpy()
    paths = write_validation_poscars(datamodule, tmp_path)

    rows = predict_with_cli(run_dir, paths, tmp_path / "ltc.csv")
    predicted = np.array([float(row["tc_W_per_mK"]) for row in rows])
    np.testing.assert_allclose(predicted, expected, rtol=1e-5)
    assert "tc_std_W_per_mK" not in rows[0]  # one model: no members, no spread


def test_applicability_flags_unseen_elements_and_gives_percentiles(tmp_path, ltc_run):
    run_dir, _ = ltc_run
    checkpoint = run_dir / "checkpoints" / "best.ckpt"
    reference = load_applicability(checkpoint)
    assert reference is not None
    assert load_applicability(run_dir / "checkpoints" / "last.ckpt") is None
    saved = torch.load(checkpoint, weights_only=True)["paraisite_applicability"]
    train_count = json.loads((run_dir / "metrics.json").read_text())["data"]["train"]
    assert saved["latents"].shape[0] == train_count == 16  # 80% of 20 structures
    assert reference.elements == frozenset(saved["elements"])

    candidates = ("Cs", "Rb", "Ba", "Sr", "La", "Y", "Sc", "Hf")
    absent = next(symbol for symbol in candidates if symbol not in reference.elements)
    rock_salt = Structure.from_spacegroup("Fm-3m", Lattice.cubic(5.6), [absent, "Cl"], [[0, 0, 0], [0.5, 0.5, 0.5]])
    rock_salt.to(filename=str(tmp_path / f"{absent}Cl.cif"))
    training = load_source("dataset1").records[0].structure
    training.to(filename=str(tmp_path / "training.vasp"))

    output = tmp_path / "applicability.csv"
    summary = run_predictions(load_predictor(str(checkpoint)), structure_paths([tmp_path]), output)
    assert summary.failed == 0
    rows = {Path(row["path"]).name: row for row in read_rows(output)}
    unseen = rows[f"{absent}Cl.cif"]
    assert unseen["unseen_elements"].split() == sorted({absent, "Cl"} - reference.elements)
    assert unseen["in_domain"] == "False"
    for row in rows.values():
        assert 0.0 <= float(row["latent_percentile"]) <= 100.0
        assert float(row["latent_knn_distance"]) >= 0.0


def test_scan_appends_resumes_and_ranks(tmp_path, sample_cifs, formation_energy):
    folder = tmp_path / "structures"
    folder.mkdir()
    for path in sample_cifs:
        shutil.copy(path, folder / path.name)
    (folder / "broken.cif").write_text("garbage\n")
    paths = structure_paths([folder])
    output = tmp_path / "scan.csv"
    log = tmp_path / "scan.progress.csv"  # the rows as they are predicted; -o gets the ranking

    first = scan(formation_energy, paths, output, batch_size=4)
    assert (first.already_done, first.predicted, first.failed) == (0, 10, 1)
    assert (first.output, first.ranked, scan_log_path(output)) == (log, output, log)
    assert not Path(f"{output}.lock").exists()  # removed on exit
    complete = read_rows(log)
    assert [row["path"] for row in complete] == paths  # input order
    lines = log.read_text().splitlines(keepends=True)
    log.write_text("".join(lines[:5]) + lines[5][:20])  # 4 finished rows, then a row cut off mid-write

    second = scan(formation_energy, paths, output, batch_size=4)
    assert (second.already_done, second.predicted + second.failed) == (4, len(paths) - 4)
    rows = read_rows(log)
    assert sorted(row["path"] for row in rows) == sorted(paths)  # each path exactly once
    assert sorted(rows, key=lambda row: row["path"]) == sorted(complete, key=lambda row: row["path"])

    ranked = read_rows(output)
    assert second.ranked == output
    energies = [float(row["formation_energy_eV_per_atom"]) for row in ranked[:-1]]
    assert energies == sorted(energies)
    assert [row["rank"] for row in ranked] == [*map(str, range(1, 11)), ""]
    assert ranked[-1]["path"].endswith("broken.cif")

    third = main(["scan", "--model", "cgcnn-formation-energy-per-atom", str(folder), "-o", str(output)])
    assert third == 0
    assert len(read_rows(output)) == len(paths)


def test_resume_refuses_an_output_of_another_model(tmp_path, sample_cifs, formation_energy):
    output = tmp_path / "other.csv"
    output.write_text("path,formula,n_atoms,tc_W_per_mK\n")
    with pytest.raises(ValueError, match="columns"):
        scan(formation_energy, [str(sample_cifs[0])], output)
