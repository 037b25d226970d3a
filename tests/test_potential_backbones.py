"""The universal-potential backbones (paraisite.models.potential) through the same commands as MEGNet.

Each one: a tiny fit from its published weights, reload, and the same predictions through ``paraisite predict``;
and a frozen backbone that keeps the published weights. Their loading checks against published energies are in
``test_tensornet.py`` and ``test_m3gnet.py``.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from paraisite.evaluation.cross import predict_loader
from paraisite.models.m3gnet import M3GNetBackbone
from paraisite.models.potential import PotentialBackbone
from paraisite.models.regressor import LTCRegressor
from paraisite.models.tensornet import TensorNetBackbone
from paraisite.training.builders import build_datamodule
from paraisite.training.train import train
from tests.helpers import FAST, compose_train, predict_with_cli, write_validation_poscars

#: Backbone config -> its class and published potential.
POTENTIALS: dict[str, tuple[type[PotentialBackbone], str]] = {
    "tensornet_matpes": (TensorNetBackbone, "TensorNet-MatPES-PBE-v2025.1-PES"),
    "m3gnet_matpes": (M3GNetBackbone, "M3GNet-MatPES-PBE-v2025.1-PES"),
}


def tiny(option: str) -> tuple[str, ...]:
    return ("data=dataset1", f"model/backbone={option}", "max_per_source=20", *FAST)


@pytest.mark.parametrize("option", sorted(POTENTIALS))
def test_tiny_fit_reloads_and_predicts(tmp_path, option):
    cls, name = POTENTIALS[option]
    run_dir = tmp_path / "run"
    cfg = compose_train(run_dir, *tiny(option))
    result = train(cfg)
    assert (result["status"], result["init"]["pretrained"]) == ("completed", name)
    model = LTCRegressor.load_from_checkpoint(result["best_checkpoint"], map_location="cpu")
    assert isinstance(model.backbone, cls)
    datamodule = build_datamodule(cfg)  # graphs from the cache this time
    datamodule.setup()
    predictions = predict_loader(model, datamodule.val_dataloader())
    paths = write_validation_poscars(datamodule, tmp_path)
    rows = predict_with_cli(run_dir, paths, tmp_path / "ltc.csv")
    predicted = np.array([float(row["tc_W_per_mK"]) for row in rows])
    np.testing.assert_allclose(predicted, predictions["pred_tc"].numpy(), rtol=1e-5)


@pytest.mark.parametrize("option", sorted(POTENTIALS))
def test_frozen_backbone_keeps_the_published_weights(tmp_path, option):
    cls, name = POTENTIALS[option]
    cfg = compose_train(tmp_path, *tiny(option), "model.freeze_backbone=true", "+trainer.fast_dev_run=true")
    result = train(cfg)
    assert result["status"] == "completed"
    published = cls()
    published.load_published(name)
    state = torch.load(tmp_path / "checkpoints" / "last.ckpt", weights_only=True)["state_dict"]
    trained = {key.removeprefix("backbone."): value for key, value in state.items() if key.startswith("backbone.")}
    assert trained.keys() == published.state_dict().keys()
    assert all(torch.equal(trained[key], value) for key, value in published.state_dict().items())
