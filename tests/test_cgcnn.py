"""CGCNN: featurisation, the 8 original checkpoints, and agreement with the original ``predict.py``."""

from __future__ import annotations

import os
import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
from pymatgen.core import Lattice, Structure
from torch_geometric.data import Batch

from paraisite.data import registry
from paraisite.data.cgcnn_graph import CGCNN_REPO, CGCNNFeaturizer, load_atom_init_table, load_graphs, save_graphs
from paraisite.models.cgcnn import (
    CGCNN_MODELS,
    CGCNNPretrained,
    build_cgcnn_from_checkpoint,
    load_cgcnn_pretrained,
    read_cgcnn_checkpoint,
)

# Outputs of the ORIGINAL code (txie-93/cgcnn at f42ab233c4ee0c416879d6bc2d22a264418413ad: cgcnn/data.py CIFData +
# collate_pool, cgcnn/model.py CrystalGraphConvNet, and predict.py's load/eval/denormalise, P = exp(output)[:, 1] for
# classification) run on CPU (torch 2.13, pymatgen of this venv) on data/sample-regression, one column per model.
# Regression values are in the models' output units (log10(GPa) for the moduli); classification is P(metal).
MODEL_COLUMNS = (
    "formation-energy-per-atom",
    "final-energy-per-atom",
    "band-gap",
    "efermi",
    "bulk-moduli",
    "shear-moduli",
    "poisson-ratio",
    "semi-metal-classification",
)
ORIGINAL_PREDICTIONS = {
    "1000041": (-2.113254, -3.388305, 4.774055, -0.6838353, 1.380805, 0.9817744, 0.3124756, 4.423607e-06),
    "1000050": (-2.139548, -3.286989, 4.381994, 0.3648605, 1.274544, 0.9499565, 0.2615654, 1.817249e-08),
    "1101051": (-1.131397, -3.511269, 2.029271, 1.934662, 1.849092, 1.526411, 0.2827703, 0.01579976),
    "1507756": (-3.52682, -8.057685, 1.910978, 2.840754, 2.078079, 1.894673, 0.2498898, 0.02798981),
    "7206075": (-3.380303, -8.891076, 2.689208, 2.220971, 2.245962, 1.696691, 0.3440284, 0.2118011),
    "9000046": (0.005215883, -9.17542, 1.781319, 0.1850131, 2.083165, 1.996976, 0.2059626, 0.7432075),
    "9009743": (-2.241195, -3.238058, 4.981689, -0.5165992, 1.201048, 0.7690801, 0.2816575, 3.81741e-09),
    "9011050": (0.01811123, -4.526033, 1.532561, 2.627141, 1.613899, 1.468144, 0.2306276, 0.6765013),
    "9011998": (0.09059453, -5.401794, 0.9553937, 4.236878, 1.91321, 1.724646, 0.2522144, 0.33046),
    "9012304": (0.4017451, -8.340405, 2.002878, 9.206642, 2.195672, 2.202537, 0.2294741, 0.9351826),
}
SAMPLE_IDS = tuple(ORIGINAL_PREDICTIONS)
# Same original code on a CsCl cell with a = 8.5 Å (written to CIF with pymatgen's CifWriter): every atom has only
# 8 neighbours within 8 Å, so the original pads 4 neighbours with atom 0 at 9 Å (and warns).
ORIGINAL_SPARSE_CSCL = (-1.220644, -1.570649, 6.72688, -0.5795772, 1.417085, 1.03041, 0.2735228, 0.002601233)
REGRESSION_TOLERANCE = 1e-4
PROBABILITY_TOLERANCE = 1e-5


def tolerance(name: str) -> float:
    return PROBABILITY_TOLERANCE if CGCNN_MODELS[name].task == "classification" else REGRESSION_TOLERANCE


def sparse_cscl() -> Structure:
    return Structure(Lattice.cubic(8.5), ["Cs", "Cl"], [[0, 0, 0], [0.5, 0.5, 0.5]])


@pytest.fixture(scope="session")
def registry_roots(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    mirror = os.environ.get(registry.MIRROR_ENV) or Path(__file__).resolve().parents[2] / "shared" / "mirror"
    cache = os.environ.get(registry.CACHE_ENV) or tmp_path_factory.mktemp("paraisite-cache")
    return {"cache": Path(cache), "mirror": Path(mirror)}


@pytest.fixture(scope="session")
def samples(registry_roots: dict[str, Path]) -> list[Structure]:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # pymatgen: "fractional coordinates rounded to ideal values"
        return [
            Structure.from_file(registry.fetch(CGCNN_REPO, f"data/sample-regression/{cif_id}.cif", **registry_roots))
            for cif_id in SAMPLE_IDS
        ]


@pytest.fixture(scope="session")
def pretrained(registry_roots: dict[str, Path]) -> Callable[[str], CGCNNPretrained]:
    loaded: dict[str, CGCNNPretrained] = {}

    def get(name: str) -> CGCNNPretrained:
        if name not in loaded:
            loaded[name] = load_cgcnn_pretrained(name, **registry_roots)
        return loaded[name]

    return get


def test_formation_energy_reference_of_the_issue(pretrained, samples):
    prediction = pretrained("formation-energy-per-atom").predict_structures(samples[:1], ids=SAMPLE_IDS[:1])
    assert prediction[0] == pytest.approx(-2.113254, abs=REGRESSION_TOLERANCE)


@pytest.mark.parametrize("name", list(CGCNN_MODELS))
def test_reproduces_original_predict(name, pretrained, samples):
    model, column = pretrained(name), MODEL_COLUMNS.index(name)
    expected = [ORIGINAL_PREDICTIONS[cif_id][column] for cif_id in SAMPLE_IDS]
    predictions = model.predict_structures(samples, ids=SAMPLE_IDS)
    np.testing.assert_allclose(predictions, expected, rtol=0, atol=tolerance(name))
    with pytest.warns(UserWarning, match="fewer than 12 neighbours"):
        sparse = model.predict_structures([sparse_cscl()], ids=["sparse CsCl"])
    assert sparse[0] == pytest.approx(ORIGINAL_SPARSE_CSCL[column], abs=tolerance(name))


def test_padding_follows_the_original(pretrained, samples):
    featurizer = pretrained("band-gap").featurizer
    with pytest.warns(UserWarning, match="sparse CsCl"):
        graph = featurizer(sparse_cscl(), "sparse CsCl")
    neighbours = graph.edge_index[0].view(2, 12)
    distances = graph.edge_dist.view(2, 12)
    assert torch.equal(graph.edge_index[1].view(2, 12), torch.tensor([[0] * 12, [1] * 12]))
    assert torch.equal(neighbours[:, 8:], torch.zeros(2, 4, dtype=torch.long))  # padding: atom 0 of the structure
    assert torch.allclose(distances[:, :8], torch.tensor(8.5 * 3**0.5 / 2))
    assert torch.equal(distances[:, 8:], torch.full((2, 4), 9.0))
    assert torch.equal(neighbours[1, :8], torch.zeros(8, dtype=torch.long))  # Cl's 8 neighbours are the Cs (atom 0)

    batch = Batch.from_data_list([featurizer(samples[0]), graph])
    assert torch.equal(batch.edge_index[:, -24:], graph.edge_index + len(samples[0]))  # padding shifted too


def test_neighbours_sorted_by_distance(pretrained, samples):
    featurizer = pretrained("band-gap").featurizer
    for structure in samples:
        distances = featurizer(structure).edge_dist.view(len(structure), 12)
        assert torch.all(distances[:, 1:] >= distances[:, :-1])
        assert distances.max() <= 8.0


def test_unknown_element_is_named(pretrained):
    structure = Structure(Lattice.cubic(3.0), ["Md"], [[0, 0, 0]])
    with pytest.raises(ValueError, match=r"mendelevium-cell.*\['Md'\]"):
        pretrained("band-gap").predict_structures([structure], ids=["mendelevium-cell"])


def test_atom_without_neighbour_is_an_error(pretrained):
    with pytest.raises(ValueError, match=r"Na1: atom\(s\) \[0\] have no neighbour within 8.0"):
        pretrained("band-gap").featurizer(Structure(Lattice.cubic(20.0), ["Na"], [[0, 0, 0]]))


def test_disordered_structure_is_an_error(pretrained):
    structure = Structure(Lattice.cubic(4.0), [{"Na": 0.5, "K": 0.5}, "Cl"], [[0, 0, 0], [0.5, 0.5, 0.5]])
    with pytest.raises(ValueError, match="alloy: disordered"):
        pretrained("band-gap").featurizer(structure, "alloy")


@pytest.mark.parametrize("name", ["formation-energy-per-atom", "semi-metal-classification"])
def test_batch_equals_singles(name, pretrained, samples):
    model = pretrained(name)
    graphs = model.featurizer.featurize_many(samples, SAMPLE_IDS)
    with torch.no_grad():
        batched = model.model(Batch.from_data_list(graphs))
        singles = torch.cat([model.model(graph).reshape(batched[:1].shape) for graph in graphs])
    torch.testing.assert_close(batched, singles, rtol=0, atol=1e-5)


def test_supercells_give_the_same_intensive_predictions(pretrained, samples):
    model = pretrained("formation-energy-per-atom")
    supercells = [structure.make_supercell([2, 2, 1], in_place=False) for structure in samples]
    np.testing.assert_allclose(model.predict_structures(supercells), model.predict_structures(samples), atol=1e-4)


def test_classification_gives_log_probabilities(pretrained, samples):
    model = pretrained("semi-metal-classification")
    batch = Batch.from_data_list(model.featurizer.featurize_many(samples))
    with torch.no_grad():
        log_probabilities = model.model(batch)
    assert log_probabilities.shape == (len(samples), 2)
    torch.testing.assert_close(log_probabilities.exp().sum(dim=1), torch.ones(len(samples)))
    np.testing.assert_allclose(model.predict_graphs(batch.to_data_list()), log_probabilities[:, 1].exp().numpy())


def test_features_feed_fc_out(pretrained, samples):
    model = pretrained("band-gap").model
    batch = Batch.from_data_list(pretrained("band-gap").featurizer.featurize_many(samples))
    with torch.no_grad():
        features = model.features(batch)
        output = model(batch)
    assert features.shape == (len(samples), 32)
    torch.testing.assert_close(model.fc_out(features).squeeze(-1), output)


def test_backbone_is_trainable(registry_roots, samples):
    checkpoint = read_cgcnn_checkpoint(registry.fetch(CGCNN_REPO, "pre-trained/band-gap.pth.tar", **registry_roots))
    table = load_atom_init_table(**registry_roots)
    model = build_cgcnn_from_checkpoint(checkpoint, "band-gap", atom_init_table=table).train()
    featurizer = CGCNNFeaturizer(table)
    head = torch.nn.Linear(32, 1)
    loss = head(model.features(Batch.from_data_list(featurizer.featurize_many(samples)))).square().mean()
    loss.backward()
    backbone = {name: p.grad for name, p in model.named_parameters() if not name.startswith("fc_out.")}
    assert all(grad is not None and grad.abs().sum() > 0 for grad in backbone.values())


def test_strict_loading_names_the_keys(registry_roots):
    path = registry.fetch(CGCNN_REPO, "pre-trained/efermi.pth.tar", **registry_roots)
    checkpoint = read_cgcnn_checkpoint(path)
    state = dict(checkpoint["state_dict"])
    state["fcs.0.weight"] = state.pop("conv_to_fc.weight")
    expected = r"efermi.*missing keys \['conv_to_fc.weight'\].*unexpected keys \['fcs.0.weight'\]"
    with pytest.raises(ValueError, match=expected):
        build_cgcnn_from_checkpoint({**checkpoint, "state_dict": state}, source=str(path))


def test_checkpoint_metadata(pretrained):
    classifier = pretrained("semi-metal-classification")
    assert classifier.model.classification
    assert (classifier.epoch, classifier.normalizer_mean, classifier.normalizer_std) == (92, 0.0, 1.0)
    assert classifier.best_mae_error == pytest.approx(0.9586, abs=1e-4)  # a numpy float64 in the file
    formation = pretrained("formation-energy-per-atom")
    assert (formation.epoch, formation.normalizer_mean) == (968, pytest.approx(-1.699178719))


def test_model_table_and_units(pretrained, samples):
    files = {Path(entry.path).name.removesuffix(".pth.tar") for entry in registry.select(CGCNN_REPO, "pre-trained/*")}
    assert set(CGCNN_MODELS) == files
    assert {name for name, info in CGCNN_MODELS.items() if info.log10} == {"bulk-moduli", "shear-moduli"}
    bulk = pretrained("bulk-moduli")
    assert bulk.info.output_units == "log10(GPa)"
    silicon = samples[SAMPLE_IDS.index("9011998")]  # diamond-structure Si, K = 98 GPa (experiment)
    assert silicon.composition.reduced_formula == "Si"
    modulus_gpa = bulk.to_physical_units(bulk.predict_structures([silicon]))[0]
    assert modulus_gpa == pytest.approx(
        10 ** ORIGINAL_PREDICTIONS["9011998"][MODEL_COLUMNS.index("bulk-moduli")], rel=1e-3
    )
    assert 60 < modulus_gpa < 130
    with pytest.raises(KeyError, match="valid names"):
        load_cgcnn_pretrained("band-gaps")


def test_graphs_round_trip_with_weights_only(pretrained, samples, tmp_path):
    model = pretrained("poisson-ratio")
    graphs = model.featurizer.featurize_many(samples)
    save_graphs(graphs, tmp_path / "graphs.pt")
    loaded = load_graphs(tmp_path / "graphs.pt")
    for original, restored in zip(graphs, loaded, strict=True):
        assert original.keys() == restored.keys()
        assert all(torch.equal(original[key], restored[key]) for key in ("atomic_numbers", "edge_index", "edge_dist"))
    np.testing.assert_array_equal(model.predict_graphs(loaded), model.predict_graphs(graphs))
