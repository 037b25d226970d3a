"""A user's own model file as the potential of `paraisite kappa`: `mace:PATH`, trusted explicitly, sha256 recorded."""

from __future__ import annotations

import csv
import hashlib
import os
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest

pytest.importorskip("phono3py")

from ase.build import bulk

from paraisite.cli.main import main
from paraisite.kappa.features import KappaFeatureSettings
from paraisite.kappa.potentials import FilePotential, float64, load_calculator, potential_entry
from tests.helpers import finite_difference_force

#: A small MACE model with random weights, saved as MACE saves its models (``torch.save`` of the module). Made in its
#: own process: importing mace sets TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD=1 for the process that imports it.
MAKE_TINY_MACE = textwrap.dedent(
    """
    import sys
    import mace  # first: e3nn's constants load only with the variable mace sets
    import numpy as np
    import torch
    from e3nn import o3
    from mace import modules

    torch.manual_seed(0)
    torch.set_default_dtype(torch.float64)
    block = modules.interaction_classes["RealAgnosticResidualInteractionBlock"]
    model = modules.MACE(
        r_max=4.0, num_bessel=4, num_polynomial_cutoff=3, max_ell=1, interaction_cls=block,
        interaction_cls_first=block, num_interactions=1, num_elements=1, hidden_irreps=o3.Irreps("4x0e+4x1o"),
        MLP_irreps=o3.Irreps("4x0e"), atomic_energies=np.array([-1.0]), avg_num_neighbors=8.0,
        atomic_numbers=[14], correlation=2, gate=torch.nn.functional.silu,
    )
    torch.save(model, sys.argv[1])
    """
)


@pytest.fixture(scope="module")
def tiny_mace(tmp_path_factory):
    path = tmp_path_factory.mktemp("mace") / "tiny-si.model"
    subprocess.run([sys.executable, "-c", MAKE_TINY_MACE, str(path)], check=True, capture_output=True, timeout=300)
    return path


def test_a_pickled_model_file_is_refused_until_trusted_then_recorded_by_sha256(tmp_path, tiny_mace, capsys):
    structure, output = tmp_path / "Si.vasp", tmp_path / "kappa.csv"
    bulk("Si", "diamond", a=5.43).write(structure, format="vasp")
    command = ["kappa", str(structure), "-o", str(output), "--potential", f"mace:{tiny_mace}", "--protocol", "quick"]
    command += ["--no-cache"]
    started = time.perf_counter()
    assert main(command) == 1
    message = capsys.readouterr().err
    assert f"{tiny_mace}: a mace model file is a pickle, and reading it runs any code it holds" in message
    assert "--trust-potential-file" in message
    assert time.perf_counter() - started < 5  # refused before any relaxation
    assert not output.exists()

    assert main([*command, "--trust-potential-file"]) == 0
    with open(output, newline="") as stream:
        row = next(csv.DictReader(stream))
    assert row["potential"] == f"mace:{tiny_mace}"
    assert row["potential_sha256"] == hashlib.sha256(tiny_mace.read_bytes()).hexdigest()
    assert not row["error"]
    assert float(row["kappa_W_per_mK"]) >= 0  # random weights: a number, not a meaningful one
    # mace sets TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD=1 on import; the loader puts the process back as it was
    assert "TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD" not in os.environ


def test_a_model_files_forces_are_minus_the_gradient_of_its_energy(tiny_mace):
    with float64():
        calculator = load_calculator(f"mace:{tiny_mace}", trust_file=True)
        atoms = bulk("Si", "diamond", a=5.0, cubic=True)
        atoms.rattle(0.05, seed=1)
        atoms.calc = calculator
        forces = atoms.get_forces()
        assert np.abs(forces).max() > 1e-4  # a rattled cell has forces to check, even with random weights
        for atom, axis in [(0, 0), (5, 2)]:
            numeric = finite_difference_force(atoms, calculator, atom, axis)
            assert forces[atom, axis] == pytest.approx(numeric, abs=1e-7 + 1e-4 * abs(numeric))


def test_model_file_names_are_checked_before_any_work(tmp_path, tiny_mace):
    with pytest.raises(ValueError, match=r"missing\.model: no such mace model file"):
        potential_entry(f"mace:{tmp_path / 'missing.model'}")
    with pytest.raises(ValueError, match=r"or a file mace:PATH"):
        potential_entry(f"orbital:{tiny_mace}")
    entry = potential_entry(f"MACE:{tiny_mace}")
    assert isinstance(entry, FilePotential)
    assert entry.name == f"mace:{tiny_mace}"
    # the learned models take only registered potentials (verified files, weights-only)
    with pytest.raises(ValueError, match="a pickled model file; \\+features=kappa_bte takes the registered"):
        KappaFeatureSettings.from_dict({"potential": f"mace:{tiny_mace}"})
