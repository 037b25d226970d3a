"""TensorNet-MatPES as an LTC backbone: published energy reproduced, features (fit: test_potential_backbones)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from matgl.ext.pymatgen import Molecule2Graph
from matgl.graph.data import collate_fn_graph
from pymatgen.core import Lattice, Molecule, Structure

from paraisite.data.graphs import MEGNetGraphBuilder, collate_item
from paraisite.models.tensornet import TensorNetBackbone, convert_destination_embedding, load_published_tensornet

NAME = "TensorNet-MatPES-PBE-v2025.1-PES"
#: Published energy (eV) of the AcAla3NHMe molecule with this potential: materialsvirtuallab/matgl at the pinned
#: commit e9cde2291acd0b4c4a342428e7dd5e4d596b7bf9, tests/ext/test_ase_pyg.py::test_PESCalculator_mol
#: (``assert_allclose(..., -247.286789, atol=1e-3)``), structure from its tests/conftest.py (tests/data/AcAla3NHMe.xyz).
PUBLISHED_ENERGY = -247.286789
#: The tolerance of that upstream test (measured here: 1.5e-5 eV).
ENERGY_TOLERANCE = 1e-3


@pytest.fixture(scope="module")
def potential():
    return load_published_tensornet(NAME)


def molecule_energy(potential, molecule: Molecule) -> float:
    graph, lattice, _ = Molecule2Graph(potential.model.element_types, potential.model.cutoff).get_graph(molecule)
    return float(potential(graph, lattice, None)[0].detach())


def test_published_potential_reproduces_the_published_energy(potential):
    molecule = Molecule.from_file(str(Path(__file__).parent / "data" / "AcAla3NHMe.xyz"))
    assert molecule_energy(potential, molecule) == pytest.approx(PUBLISHED_ENERGY, abs=ENERGY_TOLERANCE)
    convert_destination_embedding(potential.model)  # undone: the weights as matgl 4.1 loads them
    try:
        assert abs(molecule_energy(potential, molecule) - PUBLISHED_ENERGY) > 50  # measured: -160.31 eV
    finally:
        convert_destination_embedding(potential.model)


def test_backbone_features_are_the_mean_per_atom_representation_of_the_potential(potential):
    crystals = [
        Structure(Lattice.cubic(3.62), ["Cu"] * 4, [[0, 0, 0], [0.5, 0.5, 0], [0.5, 0, 0.5], [0, 0.5, 0.5]]),
        Structure.from_spacegroup("Fm-3m", Lattice.cubic(5.69), ["Na", "Cl"], [[0, 0, 0], [0.5, 0.5, 0.5]]),
    ]
    builder = MEGNetGraphBuilder(cutoff=5.0)
    backbone = TensorNetBackbone()
    backbone.load_published(NAME)
    graph, lattice, state_attr, _ = collate_fn_graph([collate_item(builder.build(s)) for s in crystals])
    with torch.no_grad():
        features = backbone(graph, lattice, state_attr)
    assert features.shape == (2, backbone.out_dim)
    for index, crystal in enumerate(crystals):
        single, single_lattice, _, _ = collate_fn_graph([collate_item(builder.build(crystal))])
        potential(single, single_lattice)  # computes forces by autograd: not under no_grad
        per_atom = potential.model.feature_dict["readout"].detach()
        assert per_atom.shape[0] == len(crystal)
        torch.testing.assert_close(features[index], per_atom.mean(dim=0), atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError, match="units: 64 here, 128 published"):
        TensorNetBackbone(units=64).load_published(NAME)
