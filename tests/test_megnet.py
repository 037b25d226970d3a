from __future__ import annotations

import os
from pathlib import Path

import matgl
import pytest
import torch
from matgl.data.transformer import Normalizer
from matgl.ext.pymatgen import Structure2Graph
from matgl.graph.data import collate_fn_graph
from pymatgen.core import Lattice, Structure

from paraisite.data import registry
from paraisite.models.megnet import (
    PUBLISHED_MEGNET,
    MEGNetBackbone,
    attach_positions,
    convert_dgl_edge_messages,
    load_published_megnet,
    published_megnet_arch,
    published_megnet_dir,
)

EFORM = "MEGNet-MP-2018.6.1-Eform"
BANDGAP = "MEGNet-MP-2019.4.1-BandGap-mfi"
MIRROR = Path(__file__).resolve().parents[2] / "shared" / "mirror"

# Outputs of the published DGL implementation (matgl <= 2.2), eV/atom.
REFERENCE_EFORM = {
    "CsCl": (("Pm-3m", 4.1437, ["Cs", "Cl"], [[0, 0, 0], [0.5, 0.5, 0.5]]), -2.27223),
    "NaCl": (("Fm-3m", 5.69, ["Na", "Cl"], [[0, 0, 0], [0.5, 0.5, 0.5]]), -2.11447),
    "MgO": (("Fm-3m", 4.21, ["Mg", "O"], [[0, 0, 0], [0.5, 0.5, 0.5]]), -3.06330),
    "LiF": (("Fm-3m", 4.07, ["Li", "F"], [[0, 0, 0], [0.5, 0.5, 0.5]]), -3.16492),
    "GaAs": (("F-43m", 5.75, ["Ga", "As"], [[0, 0, 0], [0.25, 0.25, 0.25]]), -0.35455),
    "Si": (("Fd-3m", 5.47, ["Si"], [[0, 0, 0]]), 0.02553),
}


def make_structure(name: str) -> Structure:
    (spacegroup, a, species, coords), _ = REFERENCE_EFORM[name]
    return Structure.from_spacegroup(spacegroup, Lattice.cubic(a), species, coords)


def collate(names: list[str], cutoff: float = 4.0, fidelity: int | None = None) -> tuple:
    """Batch of reference structures; ``fidelity`` replaces the default state by a 0-d fidelity index."""
    converter = Structure2Graph(element_types=matgl.config.DEFAULT_ELEMENTS, cutoff=cutoff)
    items = []
    for name in names:
        g, lat, state_attr = converter.get_graph(make_structure(name))
        state = torch.tensor(state_attr) if fidelity is None else torch.tensor(fidelity)
        items.append((g, lat, state, {"tc": 0.0}))
    return collate_fn_graph(items)


@pytest.fixture(scope="module", autouse=True)
def registry_env(tmp_path_factory: pytest.TempPathFactory):
    with pytest.MonkeyPatch.context() as patch:
        if not os.environ.get(registry.MIRROR_ENV):
            patch.setenv(registry.MIRROR_ENV, str(MIRROR))
        if not os.environ.get(registry.CACHE_ENV):
            patch.setenv(registry.CACHE_ENV, str(tmp_path_factory.mktemp("cache")))
        yield


@pytest.fixture(scope="module")
def eform() -> torch.nn.Module:
    return load_published_megnet(EFORM)


@pytest.fixture(scope="module")
def eform_backbone() -> MEGNetBackbone:
    backbone = MEGNetBackbone()
    backbone.load_published(EFORM)
    return backbone.eval()


def load_unconverted(name: str) -> torch.nn.Module:
    torch.serialization.add_safe_globals([Normalizer])
    with pytest.warns(UserWarning, match="Incompatible model version"):
        return matgl.load_model(published_megnet_dir(name))


@pytest.mark.parametrize("name", list(REFERENCE_EFORM))
def test_published_eform_reproduces_dgl_reference(eform: torch.nn.Module, name: str):
    prediction = eform.predict_structure(make_structure(name))
    assert float(prediction) == pytest.approx(REFERENCE_EFORM[name][1], abs=1e-4)


def test_unconverted_weights_are_wrong():
    raw = load_unconverted(EFORM)
    assert float(raw.predict_structure(make_structure("CsCl"))) == pytest.approx(-1.924, abs=1e-3)


def test_load_converts_exactly_once(eform: torch.nn.Module):
    raw = load_unconverted(EFORM)
    converted_weights = [block.conv.edge_func.layers[0].weight for block in eform.model.blocks]
    raw_weights = [block.conv.edge_func.layers[0].weight for block in raw.model.blocks]
    for converted, unconverted in zip(converted_weights, raw_weights, strict=True):
        assert converted.shape == (64, 128)
        assert torch.equal(converted[:, :32], unconverted[:, 32:64])
        assert torch.equal(converted[:, 32:64], unconverted[:, :32])
        assert torch.equal(converted[:, 64:], unconverted[:, 64:])
    raw_parameters = dict(raw.named_parameters())
    changed = {name for name, value in eform.named_parameters() if not torch.equal(value, raw_parameters[name])}
    assert changed == {f"model.blocks.{i}.conv.edge_func.layers.0.weight" for i in range(3)}
    convert_dgl_edge_messages(raw.model)
    convert_dgl_edge_messages(raw.model)
    assert float(raw.predict_structure(make_structure("CsCl"))) == pytest.approx(-1.924, abs=1e-3)


def test_backbone_batch_reproduces_published_predictions(eform: torch.nn.Module, eform_backbone: MEGNetBackbone):
    names = list(REFERENCE_EFORM)
    g, lat, state_attr, _ = collate(names)
    with torch.no_grad():
        features = eform_backbone(g, lat, state_attr)
        normalised = eform.model.output_proj.last_linear(features).squeeze(-1)
    predictions = eform.transformer.inverse_transform(normalised)
    expected = torch.tensor([REFERENCE_EFORM[name][1] for name in names])
    assert features.shape == (len(names), 16)
    torch.testing.assert_close(predictions, expected, atol=1e-4, rtol=0)


def test_backbone_single_structure_shape(eform_backbone: MEGNetBackbone):
    g, lat, state_attr, _ = collate(["GaAs"])
    with torch.no_grad():
        features = eform_backbone(g, lat, state_attr)
    assert features.shape == (1, eform_backbone.out_dim) == (1, 16)


def test_scratch_backbone_differs(eform_backbone: MEGNetBackbone):
    torch.manual_seed(0)
    scratch = MEGNetBackbone().eval()
    assert scratch.out_dim == 16
    assert scratch.cutoff == 4.0
    assert scratch.element_types == matgl.config.DEFAULT_ELEMENTS
    g, lat, state_attr, _ = collate(["NaCl", "MgO"])
    with torch.no_grad():
        loaded = eform_backbone(g, lat, state_attr)
        random = scratch(g, lat, state_attr)
    assert random.shape == loaded.shape == (2, 16)
    assert not torch.allclose(random, loaded, atol=1e-3)


def test_backbone_defaults_are_the_published_eform_architecture():
    assert MEGNetBackbone().arch == published_megnet_arch(EFORM)


def test_backbone_refuses_other_architecture():
    with pytest.raises(ValueError, match=r"niters_set2set: 2 here, 3 published"):
        MEGNetBackbone().load_published(BANDGAP)


def test_attach_positions_accepts_lattice_shapes():
    g, lat, _, _ = collate(["CsCl"])
    positions = [attach_positions(g, shaped).pos.clone() for shaped in (lat, lat[0], lat.expand(1, 3, 3))]
    for pos in positions[1:]:
        torch.testing.assert_close(pos, positions[0])
    cl_cartesian = torch.tensor([0.5, 0.5, 0.5]) * 4.1437
    assert any(torch.allclose(row, cl_cartesian) for row in positions[0])


def test_bandgap_mfi_loads_with_fidelity_state():
    model = load_published_megnet(BANDGAP)
    state = torch.load(published_megnet_dir(BANDGAP) / "state.pt", weights_only=True)
    assert set(state) == set(model.state_dict())
    structure = make_structure("NaCl")
    gaps = [float(model.predict_structure(structure, state_attr=torch.tensor([fidelity]))) for fidelity in range(4)]
    assert all(torch.isfinite(torch.tensor(gaps)))
    assert len(set(gaps)) == 4


def test_bandgap_mfi_backbone_batch_matches_published():
    backbone = MEGNetBackbone(**published_megnet_arch(BANDGAP))
    backbone.load_published(BANDGAP)
    backbone.eval()
    assert backbone.cutoff == 5.0
    model = load_published_megnet(BANDGAP)
    names = ["NaCl", "MgO", "GaAs"]
    g, lat, state_attr, _ = collate(names, cutoff=5.0, fidelity=2)
    assert state_attr.shape == (len(names),)
    with torch.no_grad():
        normalised = model.model.output_proj.last_linear(backbone(g, lat, state_attr)).squeeze(-1)
    expected = [model.predict_structure(make_structure(name), state_attr=torch.tensor([2])) for name in names]
    torch.testing.assert_close(model.transformer.inverse_transform(normalised), torch.stack(expected))


def test_unknown_name():
    with pytest.raises(KeyError, match=EFORM):
        published_megnet_dir("MEGNet-nonexistent")
    with pytest.raises(KeyError, match="valid names"):
        load_published_megnet("MEGNet-nonexistent")
    assert set(PUBLISHED_MEGNET) == {EFORM, BANDGAP}
