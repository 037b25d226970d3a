"""TensorNet-MatPES as an LTC backbone: published energy reproduced, features, a tiny fit, reload and prediction."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from matgl.ext.pymatgen import Molecule2Graph
from matgl.graph.data import collate_fn_graph
from pymatgen.core import Lattice, Molecule, Structure

from paraisite.data.graphs import MEGNetGraphBuilder, collate_item
from paraisite.evaluation.cross import predict_loader
from paraisite.models.regressor import LTCRegressor
from paraisite.models.tensornet import TensorNetBackbone, convert_destination_embedding, load_published_tensornet
from paraisite.training.builders import build_datamodule
from paraisite.training.train import train
from tests.helpers import FAST, compose_train, predict_with_cli, write_validation_poscars

NAME = "TensorNet-MatPES-PBE-v2025.1-PES"
#: Published energy (eV) of the AcAla3NHMe molecule with this potential: materialsvirtuallab/matgl at the pinned
#: commit e9cde2291acd0b4c4a342428e7dd5e4d596b7bf9, tests/ext/test_ase_pyg.py::test_PESCalculator_mol
#: (``assert_allclose(..., -247.286789, atol=1e-3)``), structure from its tests/conftest.py (tests/data/AcAla3NHMe.xyz).
PUBLISHED_ENERGY = -247.286789
#: The tolerance of that upstream test (measured here: 1.5e-5 eV).
ENERGY_TOLERANCE = 1e-3
TINY = ("data=dataset1", "model/backbone=tensornet_matpes", "max_per_source=20", *FAST)


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


def test_tiny_fit_reloads_and_predicts(tmp_path):
    run_dir = tmp_path / "run"
    cfg = compose_train(run_dir, *TINY)
    result = train(cfg)
    assert (result["status"], result["init"]["pretrained"]) == ("completed", NAME)
    model = LTCRegressor.load_from_checkpoint(result["best_checkpoint"], map_location="cpu")
    assert isinstance(model.backbone, TensorNetBackbone)
    datamodule = build_datamodule(cfg)  # graphs from the cache this time
    datamodule.setup()
    predictions = predict_loader(model, datamodule.val_dataloader())
    paths = write_validation_poscars(datamodule, tmp_path)
    rows = predict_with_cli(run_dir, paths, tmp_path / "ltc.csv")
    predicted = np.array([float(row["tc_W_per_mK"]) for row in rows])
    np.testing.assert_allclose(predicted, predictions["pred_tc"].numpy(), rtol=1e-5)


def test_frozen_backbone_keeps_the_published_weights(tmp_path):
    cfg = compose_train(tmp_path, *TINY, "model.freeze_backbone=true", "+trainer.fast_dev_run=true")
    result = train(cfg)
    assert result["status"] == "completed"
    published = TensorNetBackbone()
    published.load_published(NAME)
    state = torch.load(tmp_path / "checkpoints" / "last.ckpt", weights_only=True)["state_dict"]
    trained = {key.removeprefix("backbone."): value for key, value in state.items() if key.startswith("backbone.")}
    assert trained.keys() == published.state_dict().keys()
    assert all(torch.equal(trained[key], value) for key, value in published.state_dict().items())
