"""CGCNN as a trainable LTC backbone: graph builder, published initialisation, training, reload and prediction."""

from __future__ import annotations

import json
import pickle
import warnings

import numpy as np
import pytest
import torch
from matgl.graph.data import collate_fn_graph
from pymatgen.core import Lattice, Structure

from paraisite.data import registry
from paraisite.data.cgcnn_graph import CGCNN_REPO, CGCNNGraphBuilder
from paraisite.data.graphs import GraphError, build_graphs, collate_item
from paraisite.data.sources import CrystalRecord
from paraisite.evaluation.applicability import load_applicability
from paraisite.evaluation.cross import predict_loader
from paraisite.evaluation.metrics import ltc_metrics
from paraisite.models.cgcnn import CGCNN_MODELS, CGCNNBackbone, load_cgcnn_pretrained
from paraisite.models.regressor import LTCRegressor
from paraisite.training.builders import build_datamodule, build_model, init_weights
from paraisite.training.train import train
from tests.helpers import FAST, compose_train, predict_with_cli, write_validation_poscars

STATS = {"mean": 1.0, "std": 0.5}
TINY = ("data=dataset1", "max_per_source=20", *FAST)
#: Largest difference allowed between backbone + published fc_out and the pretrained model (measured: 0.0).
REPRODUCTION_TOLERANCE = 1e-6


@pytest.fixture(scope="module")
def samples() -> tuple[list[str], list[Structure]]:
    entries = registry.select(CGCNN_REPO, "data/sample-regression/*.cif")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # pymatgen: "fractional coordinates rounded to ideal values"
        structures = [Structure.from_file(registry.fetch_entry(entry)) for entry in entries]
    return [entry.path for entry in entries], structures


@pytest.fixture(scope="module")
def builder() -> CGCNNGraphBuilder:
    return CGCNNGraphBuilder()


def collated(builder: CGCNNGraphBuilder, structures: list[Structure]) -> tuple:
    """The datamodule's path: built graphs -> ``collate_item`` -> matgl's ``collate_fn_graph``."""
    return collate_fn_graph([collate_item(builder.build(structure)) for structure in structures])


def test_builder_settings_and_graph_fields(builder, samples):
    settings = builder.settings()
    assert {key: settings[key] for key in ("kind", "radius", "max_num_neighbors", "padding")} == {
        "kind": "cgcnn",
        "radius": 8.0,
        "max_num_neighbors": 12,
        "padding": "original",
    }
    assert {"H", "Si", "Bi", "Pu"} <= set(settings["element_types"])
    assert CGCNNGraphBuilder(radius=6.0).settings() != settings  # another graph-cache key
    structure = samples[1][0]
    graph = builder.build(structure)
    assert torch.equal(graph.lattice, torch.tensor(structure.lattice.matrix, dtype=torch.float32).reshape(1, 3, 3))
    assert torch.equal(graph.state_attr, torch.zeros(1, 1))
    assert [builder.element_types[i] for i in graph.node_type] == [site.specie.symbol for site in structure]
    restored = pickle.loads(pickle.dumps(builder.build))  # scan workers receive the builder pickled
    assert torch.equal(restored(structure).edge_index, graph.edge_index)


def test_builder_errors_have_kinds(builder):
    isolated = Structure(Lattice.cubic(20.0), ["Na"], [[0, 0, 0]])
    unknown = Structure(Lattice.cubic(3.0), ["Md"], [[0, 0, 0]])
    alloy = Structure(Lattice.cubic(4.0), [{"Na": 0.5, "K": 0.5}, "Cl"], [[0, 0, 0], [0.5, 0.5, 0.5]])
    with pytest.raises(GraphError, match=r"lonely: atom\(s\) \[0\] have no neighbour within 8.0") as error:
        builder.build(isolated, "lonely")
    assert error.value.kind == "isolated_atom"
    records = [
        CrystalRecord(name, structure.formula, 1.0, structure, "test")
        for name, structure in (("isolated", isolated), ("unknown", unknown), ("alloy", alloy))
    ]
    graphs, kept, problems = build_graphs(records, builder)
    assert (graphs, kept) == ([], [])
    assert [(p["id"], p["kind"]) for p in problems] == [
        ("isolated", "isolated_atom"),
        ("unknown", "element"),
        ("alloy", "disordered"),
    ]


def test_collated_batch_is_what_cgcnn_needs(builder, samples):
    structures = samples[1][:4]
    graph, lattice, state_attr, _ = collated(builder, structures)
    sizes = torch.tensor([len(structure) for structure in structures])
    assert torch.equal(graph.batch, torch.repeat_interleave(torch.arange(4), sizes))
    assert graph.num_graphs == 4
    assert (lattice.shape, state_attr.shape) == ((4, 3, 3), (4, 1))
    offsets = torch.cumsum(sizes, 0) - sizes
    for index, structure in enumerate(structures):
        single = builder.build(structure)
        edges = graph.edge_index[:, graph.batch[graph.edge_index[1]] == index]
        assert torch.equal(edges, single.edge_index + offsets[index])
        assert torch.equal(graph.atomic_numbers[graph.batch == index], single.atomic_numbers)


@pytest.mark.parametrize("name", list(CGCNN_MODELS))
def test_backbone_with_published_fc_out_reproduces_the_pretrained_model(name, builder, samples):
    ids, structures = samples
    pretrained = load_cgcnn_pretrained(name)
    backbone = CGCNNBackbone()
    backbone.load_published(name)
    backbone.eval()
    with torch.no_grad():
        output = pretrained.model.fc_out(backbone(*collated(builder, structures)[:3]))
    if pretrained.model.classification:
        values = output.log_softmax(dim=1)[:, 1].exp()
    else:
        values = output.squeeze(-1) * pretrained.normalizer_std + pretrained.normalizer_mean
    expected = pretrained.predict_structures(structures, ids=ids)
    assert np.abs(values.double().numpy() - expected).max() <= REPRODUCTION_TOLERANCE


def test_pretrained_name_and_architecture_are_checked(tmp_path):
    cfg = compose_train(tmp_path, "model/backbone=cgcnn_pretrained", "model.backbone.pretrained=band-gap")
    model = build_model(cfg, STATS)
    assert model.backbone.out_dim == 32
    init_weights(model, cfg)
    published = load_cgcnn_pretrained("band-gap").model
    assert torch.equal(model.backbone.cgcnn.embedding.weight, published.embedding.weight)

    cfg = compose_train(tmp_path, "model/backbone=cgcnn_pretrained", "model.backbone.pretrained=band-gaps")
    valid = ", ".join(CGCNN_MODELS)
    with pytest.raises(ValueError, match=f"'band-gaps' .*valid names: {valid}$"):
        init_weights(build_model(cfg, STATS), cfg)
    with pytest.raises(ValueError, match="n_conv: 3 here, 4 published"):
        CGCNNBackbone(n_conv=3).load_published("efermi")


def test_fast_dev_run_from_scratch(tmp_path):
    result = train(compose_train(tmp_path, "model/backbone=cgcnn_scratch", "+trainer.fast_dev_run=true", *TINY))
    assert (result["status"], result["backbone"], result["init"]["pretrained"]) == ("completed", "cgcnn_scratch", None)
    assert np.isfinite(result["best"]["mape"])


def test_pretrained_run_reloads_and_predicts(tmp_path):
    run_dir = tmp_path / "run"
    cfg = compose_train(run_dir, "model/backbone=cgcnn_pretrained", *TINY)
    result = train(cfg)
    assert json.loads((run_dir / "metrics.json").read_text())["init"]["pretrained"] == "formation-energy-per-atom"

    checkpoint = run_dir / "checkpoints" / "best.ckpt"
    model = LTCRegressor.load_from_checkpoint(checkpoint, map_location="cpu")
    assert isinstance(model.backbone, CGCNNBackbone)
    datamodule = build_datamodule(cfg)  # graphs from the cache this time
    datamodule.setup()
    predictions = predict_loader(model, datamodule.val_dataloader())
    assert float(ltc_metrics(predictions["pred_tc"], predictions["true_tc"])["mape"]) == pytest.approx(
        result["best"]["mape"], rel=1e-6
    )
    assert load_applicability(checkpoint).latents.shape == (result["data"]["train"], 32)

    paths = write_validation_poscars(datamodule, tmp_path)
    rows = predict_with_cli(run_dir, paths, tmp_path / "ltc.csv")
    predicted = np.array([float(row["tc_W_per_mK"]) for row in rows])
    np.testing.assert_allclose(predicted, predictions["pred_tc"].numpy(), rtol=1e-5)
    assert all(row["unseen_elements"] == "" and 0.0 <= float(row["latent_percentile"]) <= 100.0 for row in rows)
