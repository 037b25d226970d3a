"""`paraisite kappa`: the potentials' forces verified, Si end to end through the real command, cache, refusals."""

from __future__ import annotations

import csv
import os
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("phono3py")

from ase.build import bulk
from ase.io import read
from omegaconf import OmegaConf

from paraisite.cli.main import main
from paraisite.config import config_dir
from paraisite.kappa.conductivity import thermal_conductivity
from paraisite.kappa.force_constants import build_force_constants, imaginary_modes
from paraisite.kappa.potentials import ALIASES, POTENTIALS, float64, load_calculator, potential_entry
from paraisite.kappa.relax import standard_cell
from paraisite.kappa.settings import KappaSettings, load_settings
from paraisite.models.physics import potential_sha256
from tests.helpers import finite_difference_force

REPO = Path(__file__).resolve().parents[1]
#: Energy (eV) of the 8-atom NaCl cell with atom 0 moved by (0.1, 0.2, 0.05) Å, from the DGL code that published
#: M3GNet-MatPES (matgl 1.2.1; tests/test_m3gnet.py, DGL_ENERGIES), and the tolerance per atom used there.
M3GNET_DGL_DISTORTED_NACL = -26.912628
M3GNET_TOLERANCE_PER_ATOM = 2e-4
#: Energy (eV) of the AcAla3NHMe molecule published by matgl's own test of TensorNet-MatPES (tests/test_tensornet.py).
TENSORNET_PUBLISHED_MOLECULE = -247.286789

SI_POSCAR = """Si diamond, primitive cell
1.0
0.0 2.7345 2.7345
2.7345 0.0 2.7345
2.7345 2.7345 0.0
Si
2
Cartesian
0.0 0.0 0.0
1.36725 1.36725 1.36725
"""


def rattled_nacl():
    atoms = bulk("NaCl", "rocksalt", a=5.69, cubic=True)
    atoms.rattle(0.05, seed=3)
    return atoms


@pytest.mark.parametrize("name", list(POTENTIALS))
def test_forces_are_minus_the_gradient_of_the_potentials_own_energy(name):
    """Phonons are built from forces: they must be the derivative of the energy, in float64, to 1e-5 eV/Å."""
    with float64():
        calculator = load_calculator(name)
        atoms = rattled_nacl()
        atoms.calc = calculator
        forces = atoms.get_forces()
        assert np.abs(forces).max() > 0.05  # a rattled cell has real forces to check
        assert np.abs(forces.sum(axis=0)).max() < 1e-8  # no net force
        for atom, axis in [(0, 0), (3, 1), (6, 2)]:
            numeric = finite_difference_force(atoms, calculator, atom, axis)
            assert forces[atom, axis] == pytest.approx(numeric, abs=1e-5)


def test_the_float64_calculators_reproduce_published_energies():
    with float64():
        m3gnet = load_calculator("M3GNet-MatPES-PBE-v2025.1-PES")
        nacl = bulk("NaCl", "rocksalt", a=5.69, cubic=True)
        nacl.positions[0] += [0.1, 0.2, 0.05]
        nacl.calc = m3gnet
        assert abs(nacl.get_potential_energy() - M3GNET_DGL_DISTORTED_NACL) <= M3GNET_TOLERANCE_PER_ATOM * len(nacl)
        molecule = read(REPO / "tests" / "data" / "AcAla3NHMe.xyz")
        molecule.calc = load_calculator("tensornet-matpes")
        assert molecule.get_potential_energy() == pytest.approx(TENSORNET_PUBLISHED_MOLECULE, abs=1e-3)


def test_potential_registry_names_aliases_and_one_identity():
    tensornet = potential_entry("TensorNet-MatPES-PBE-v2025.1-PES")
    assert potential_entry("TensorNet-matpes") is tensornet
    assert tensornet.sha256 == potential_sha256(tensornet.name)  # the physics features' identity of the same weights
    assert len({POTENTIALS[name].sha256 for name in POTENTIALS}) == len(POTENTIALS)
    assert set(ALIASES.values()) <= set(POTENTIALS)
    with pytest.raises(ValueError, match="unknown potential 'MACE'; valid: TensorNet-MatPES"):
        potential_entry("MACE")


def test_protocols_defaults_overrides_and_refusals(tmp_path):
    written = OmegaConf.to_container(OmegaConf.load(config_dir() / "kappa" / "default.yaml"))
    assert load_settings("default") == KappaSettings()
    assert KappaSettings().to_dict() == written  # default.yaml writes out every default, and only those
    quick = load_settings("quick", ["method=LBTE", "temperatures=[300,600]", "random_displacements=auto"])
    assert (quick.method, quick.temperatures, quick.random_displacements) == ("LBTE", (300.0, 600.0), "auto")
    assert quick.fc3_min_length < KappaSettings().fc3_min_length
    bad = tmp_path / "bad.yaml"
    bad.write_text("mesh_lenght: 30\n")
    with pytest.raises(ValueError, match=r"bad\.yaml: unknown kappa setting\(s\) mesh_lenght"):
        load_settings(str(bad))
    with pytest.raises(ValueError, match="isotopes='maybe' is not a bool"):
        load_settings("default", ["isotopes=maybe"])
    with pytest.raises(ValueError, match="method 'BTE' is not one of RTA, LBTE"):
        load_settings("default", ["method=BTE"])
    with pytest.raises(ValueError, match="unknown kappa protocol 'fast'; valid: default, quick"):
        load_settings("fast")


def run_cli(*args: str) -> subprocess.CompletedProcess:
    environment = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    command = [sys.executable, "-m", "paraisite.cli.main", "kappa", *args]
    return subprocess.run(command, capture_output=True, text=True, env=environment, timeout=300, check=False)


def read_csv(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as stream:
        return list(csv.DictReader(stream))


def test_si_end_to_end_through_the_command_then_from_the_cache(tmp_path):
    structure = tmp_path / "Si.vasp"
    structure.write_text(SI_POSCAR)
    output, cache = tmp_path / "kappa.csv", tmp_path / "cache"
    args = [str(structure), "-o", str(output), "--protocol", "quick", "--set", "temperatures=[300,600]"]
    args += ["--cache-dir", str(cache)]
    started = time.perf_counter()
    first = run_cli(*args)
    first_seconds = time.perf_counter() - started
    assert first.returncode == 0, first.stderr
    row, hot = read_csv(output)
    assert (row["temperature_K"], hot["temperature_K"]) == ("300.0", "600.0")
    assert float(hot["kappa_W_per_mK"]) < float(row["kappa_W_per_mK"]) / 1.6  # umklapp: roughly 1/T
    assert row["spacegroup_input"] == row["spacegroup_relaxed"] == "Fd-3m (227)"
    assert (row["fc3_supercell"], row["fc2_supercell"], row["atoms_primitive"]) == ("1x1x1", "2x2x2", "2")
    assert row["imaginary_modes"] == "0"
    assert row["cached"] == "False"
    assert row["error"] == ""
    assert row["potential_sha256"] == potential_entry(row["potential"]).sha256
    kappa = float(row["kappa_W_per_mK"])
    # cubic: an isotropic, diagonal tensor; a tiny fc3 cell and coarse mesh, so only the order of magnitude of
    # silicon's measured 148 W/mK (and of PBE-BTE's ~140) is expected
    assert [float(row[f"kappa_{c}"]) for c in ("xx", "yy", "zz")] == pytest.approx([kappa] * 3, rel=1e-6)
    assert max(abs(float(row[f"kappa_{c}"])) for c in ("yz", "xz", "xy")) < 1e-6 * kappa
    assert 30 < kappa < 300
    assert float(row["time_total_s"]) > 0
    assert len(list(cache.glob("*.json"))) == 1

    started = time.perf_counter()
    second = run_cli(*args)
    second_seconds = time.perf_counter() - started
    assert second.returncode == 0, second.stderr
    again, hot_again = read_csv(output)
    assert again["cached"] == hot_again["cached"] == "True"
    assert again["kappa_W_per_mK"] == row["kappa_W_per_mK"]
    assert hot_again["kappa_W_per_mK"] == hot["kappa_W_per_mK"]
    assert second_seconds < first_seconds


def test_a_changed_space_group_is_refused_with_a_row_and_exit_1(tmp_path, capsys):
    si = bulk("Si", "diamond", a=5.469)
    si.positions[1] += 0.04  # along [111]: R-3m in the input; relaxation returns it to the diamond structure
    structure = tmp_path / "Si-distorted.vasp"
    si.write(structure, format="vasp")
    output = tmp_path / "kappa.csv"
    code = main(["kappa", str(structure), "-o", str(output), "--protocol", "quick", "--no-cache"])
    assert code == 1
    message = capsys.readouterr().err
    assert f"{structure}: refused: space group changed in relaxation: R-3m (166) before, Fd-3m (227) after" in message
    (row,) = read_csv(output)
    assert row["name"] == str(structure)
    assert row["error"].startswith("SymmetryChangedError: space group changed")
    assert row["kappa_W_per_mK"] == ""


def test_a_supercell_over_the_bound_is_refused_before_any_force(tmp_path, capsys, monkeypatch):
    structure = tmp_path / "Si.vasp"
    structure.write_text(SI_POSCAR)
    output = tmp_path / "kappa.csv"
    monkeypatch.setenv("PARAISITE_KAPPA_MAX_SUPERCELL_ATOMS", "500")  # quick protocol's fc2: 2x2x2 of 8 = 64 atoms
    started = time.perf_counter()
    command = ["kappa", str(structure), "-o", str(output), "--protocol", "quick", "--no-cache"]
    assert main([*command, "--set", "fc2_min_length=30"]) == 1  # 30 A: 6x6x6 conventional cells, 1,728 atoms
    assert time.perf_counter() - started < 60  # refused after the relaxation, before 1,728-atom forces
    message = capsys.readouterr().err
    assert "the fc2 supercell 6x6x6 of the 8-atom conventional cell has 1728 atoms, over the bound of 500" in message
    assert "Lower fc2_min_length (now 30 A)" in message
    (row,) = read_csv(output)
    assert row["error"].startswith("SupercellTooLargeError")


def test_a_bad_file_stops_the_command_before_any_work(tmp_path):
    good = tmp_path / "Si.vasp"
    good.write_text(SI_POSCAR)
    bad = tmp_path / "notes.cif"
    bad.write_text("this is not a crystal\n")
    output = tmp_path / "kappa.csv"
    result = run_cli(str(good), str(bad), "-o", str(output), "--no-cache")
    assert result.returncode == 1
    assert f"paraisite kappa: error: {bad}: cannot read a crystal structure" in result.stderr
    assert not output.exists()


def test_files_are_read_with_the_bounds_of_predict(tmp_path, monkeypatch, capsys):
    structure = tmp_path / "Si.vasp"
    structure.write_text(SI_POSCAR)
    monkeypatch.setenv("PARAISITE_MAX_ATOMS", "1")  # the same reader as predict, with its atom bound
    assert main(["kappa", str(structure), "-o", str(tmp_path / "kappa.csv"), "--no-cache"]) == 1
    assert f"{structure}: 2 atoms, more than the 1-atom limit (PARAISITE_MAX_ATOMS" in capsys.readouterr().err
    assert not (tmp_path / "kappa.csv").exists()


@pytest.fixture(scope="module")
def silicon_force_constants():
    """fc2 and fc3 of relaxed-lattice silicon (quick protocol: fc3 in the 8-atom cell, fc2 in 64 atoms)."""
    settings = load_settings("quick")
    with float64():
        calculator = load_calculator("tensornet-matpes")
        unitcell = standard_cell(bulk("Si", "diamond", a=5.469), settings.symprec)
        return build_force_constants(unitcell, calculator, settings), calculator, unitcell


def test_scattering_options_move_kappa_the_way_physics_says(silicon_force_constants):
    force_constants, _, _ = silicon_force_constants
    quick = load_settings("quick", ["temperatures=[300,600]"])
    rta = thermal_conductivity(force_constants, quick)
    assert rta.mesh == (8, 8, 8)  # 25 Å x |b| = 25 x sqrt(3) / 5.469 Å = 7.9
    assert rta.scalar[1] < rta.scalar[0] / 1.6  # umklapp: roughly 1/T at high temperature
    isotopes = thermal_conductivity(force_constants, replace(quick, isotopes=True))
    assert np.all(isotopes.scalar < rta.scalar)  # one more scattering channel
    lbte = thermal_conductivity(force_constants, replace(quick, method="LBTE"))
    assert np.all(lbte.scalar > rta.scalar)  # RTA treats normal processes as resistive: it underestimates Si
    assert np.all(lbte.scalar < 1.3 * rta.scalar)
    wigner = thermal_conductivity(force_constants, replace(quick, wigner=True))
    assert np.all(wigner.scalar >= rta.scalar)  # coherences add a non-negative term, tiny in a simple crystal
    assert np.all(wigner.scalar < 1.05 * rta.scalar)


def test_random_displacements_fitted_by_symfc_agree_with_the_systematic_ones(silicon_force_constants):
    force_constants, calculator, unitcell = silicon_force_constants
    quick = load_settings("quick")
    systematic = thermal_conductivity(force_constants, quick).scalar[0]
    random_settings = replace(quick, random_displacements=40)
    with float64():
        fitted = build_force_constants(unitcell, calculator, random_settings)
    assert fitted.fc3_displacements == 40
    assert thermal_conductivity(fitted, random_settings).scalar[0] == pytest.approx(systematic, rel=0.1)
    modes = imaginary_modes(fitted, (8, 8, 8), quick.imaginary_tolerance_thz)
    assert modes.count == 0
    assert modes.total == 8**3 * 6
