"""The backbone contract (paraisite.models.backbone), checked for every config in conf/model/backbone/."""

from __future__ import annotations

import pytest
import torch
from hydra.utils import instantiate
from matgl.graph.data import collate_fn_graph
from omegaconf import OmegaConf
from pymatgen.core import Lattice, Structure

from paraisite.config import config_dir, group_options
from paraisite.data.graphs import collate_item
from paraisite.models.backbone import Backbone, backbone_class
from tests.helpers import compose_train

BACKBONES = group_options("model/backbone")


def test_backbone_configs_are_the_files_of_the_group():
    assert sorted(path.stem for path in (config_dir() / "model" / "backbone").glob("*.yaml")) == BACKBONES
    assert {
        "megnet_scratch",
        "megnet_pretrained",
        "cgcnn_scratch",
        "cgcnn_pretrained",
        "tensornet_matpes",
        "m3gnet_matpes",
    } <= set(BACKBONES)


@pytest.mark.parametrize("option", BACKBONES)
def test_every_backbone_config_fulfils_the_contract(tmp_path, option):
    backbone = compose_train(tmp_path, f"model/backbone={option}").model.backbone
    assert set(backbone) == {"name", "net", "pretrained", "graph"}
    cls = backbone_class(backbone.net._target_)
    assert backbone.pretrained is None or backbone.pretrained in cls.published_names()
    net = instantiate(OmegaConf.to_container(backbone.net, resolve=True))
    assert isinstance(net, Backbone)
    assert net.out_dim > 0
    builder = instantiate(OmegaConf.to_container(backbone.graph, resolve=True))
    crystal = Structure(Lattice.cubic(4.2), ["Na", "Cl"], [[0, 0, 0], [0.5, 0.5, 0.5]])
    graph = builder.build(crystal)
    assert all(getattr(graph, field, None) is not None for field in cls.graph_fields), cls.graph_fields
    with torch.no_grad():
        features = net.eval()(*collate_fn_graph([collate_item(graph)])[:3])
    assert features.shape == (1, net.out_dim)
    if cls.stackable:
        assert cls.stack([net, net]) is not None
    else:
        with pytest.raises(TypeError, match="no stacked form"):
            cls.stack([net])
    if not cls.published_names():
        with pytest.raises(ValueError, match="no published weights"):
            net.load_published("anything")
