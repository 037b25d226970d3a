"""Vectorised ensembles: stacked MEGNet equals each member alone; a member equals the plain run of its seed."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from paraisite.cli.main import main
from paraisite.data.datamodule import LTCDataModule
from paraisite.evaluation.metrics import (
    CONSTANT,
    NOT_FINITE,
    PredictionProblem,
    final_problem,
    ltc_metrics,
    prediction_problem,
)
from paraisite.models.megnet import MEGNetBackbone
from paraisite.models.megnet_stacked import StackedGraphs, StackedMEGNet
from paraisite.training.ensemble import MemberCheckpoint
from paraisite.training.train import train
from tests.helpers import FAST, compose_train


@pytest.mark.parametrize("source", ["dataset2", "aflow"])
def test_stacked_megnet_equals_each_member(source):
    """Members with random and published weights, each on its own batch (padding differs per member)."""
    members = []
    for seed in range(3):
        torch.manual_seed(seed)
        members.append(MEGNetBackbone())
    members[1].load_published("MEGNet-MP-2018.6.1-Eform")
    batches = []
    for seed in (1, 2, 3):
        datamodule = LTCDataModule(name="x", sources=[source], seed=seed, max_per_source=200)
        datamodule.setup()
        graph, lattice, state, _ = next(iter(datamodule.train_dataloader()))
        batches.append((graph, lattice, state))
    sizes = {int(graph.num_nodes) for graph, _, _ in batches}
    features = StackedMEGNet(members)(StackedGraphs.from_batches(batches))
    for member, (graph, lattice, state) in zip(members, batches, strict=True):
        expected = member(graph, lattice, state)
        assert torch.allclose(features[members.index(member)], expected, atol=1e-5, rtol=1e-5)
    if source == "aflow":
        assert len(sizes) > 1, "the AFLOW batches should need padding"


def test_a_diverged_member_leaves_the_others_as_they_are():
    """A member whose weights are NaN changes no other member's features or gradients, bit for bit.

    Padding rows are multiplied by a 0 mask, exact for finite values but NaN for inf or NaN; they must
    stay inside their own member (a full-budget AFLOW ensemble once turned NaN as a whole this way).
    """
    batches = []
    for seed in (1, 2, 3):
        datamodule = LTCDataModule(name="x", sources=["aflow"], seed=seed, max_per_source=200)
        datamodule.setup()
        graph, lattice, state, _ = next(iter(datamodule.train_dataloader()))
        batches.append((graph, lattice, state))
    # The diverged member (1) must be padded, i.e. not hold the most nodes.
    batches.sort(key=lambda batch: int(batch[0].num_nodes))
    assert int(batches[1][0].num_nodes) < int(batches[2][0].num_nodes)

    def features_and_grads(diverged: bool) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        members = []
        for seed in range(3):
            torch.manual_seed(seed)
            members.append(MEGNetBackbone())
        stacked = StackedMEGNet(members)
        if diverged:
            with torch.no_grad():
                for name in stacked.params.names:
                    stacked.params[name][1] = float("nan")
        features = stacked(StackedGraphs.from_batches(batches))
        features[[0, 2]].sum().backward()
        grads = {name: param.grad[[0, 2]] for name, param in stacked.params.items() if param.grad is not None}
        return features.detach(), grads

    finite_features, finite_grads = features_and_grads(diverged=False)
    nan_features, nan_grads = features_and_grads(diverged=True)
    assert bool(torch.isnan(nan_features[1]).all())
    assert torch.equal(nan_features[[0, 2]], finite_features[[0, 2]])
    assert nan_grads.keys() == finite_grads.keys()
    assert len(finite_grads) > 50
    for name, finite in finite_grads.items():
        assert torch.equal(nan_grads[name], finite), name


ENSEMBLE_RUN = ("data=dataset2", "max_per_source=60", *FAST, "trainer.max_epochs=2", "cross_eval=[dataset1]")


@pytest.mark.slow
@pytest.mark.parametrize("backbone", ["megnet_scratch", "megnet_pretrained"])
def test_ensemble_member_equals_plain_run(tmp_path, backbone):
    """Member k of a 3-member ensemble, 2 epochs: the plain seed-k run's metrics to float-reordering tolerance."""
    overrides = (*ENSEMBLE_RUN, f"model/backbone={backbone}")
    train(compose_train(tmp_path / "sweep" / "seeds1-2-3", *overrides, "seeds=[1,2,3]"))
    summary = json.loads((tmp_path / "sweep" / "seeds1-2-3" / "ensemble.json").read_text())
    assert summary["status"] == "completed"
    assert summary["seeds"] == [1, 2, 3]
    for seed in (1, 2, 3):
        member_dir = tmp_path / "sweep" / f"seed{seed}"
        member = json.loads((member_dir / "metrics.json").read_text())
        plain = train(compose_train(tmp_path / "plain" / f"seed{seed}", *overrides, f"seed={seed}"))
        assert member["status"] == "completed"
        assert member["seed"] == seed
        assert member["data"] == json.loads(json.dumps(plain["data"]))
        for split in ("best",):
            for key in ("mape", "mae_log10", "rmse_log10"):
                assert math.isclose(member[split][key], plain[split][key], rel_tol=1e-4, abs_tol=1e-6), (seed, key)
        for key in ("mape", "mae_log10"):
            assert math.isclose(member["cross"]["Dataset1"][key], plain["cross"]["Dataset1"][key], rel_tol=1e-4)
        assert math.isclose(member["final"]["val/mape"], plain["final"]["val/mape"], rel_tol=1e-4)
        assert final_problem(member["final"]) is None
        assert final_problem(plain["final"]) is None
        assert (member_dir / "checkpoints" / "best.ckpt").is_file()
        assert (member_dir / "config_resolved.yaml").is_file()


def test_ensemble_step3_members_start_from_their_own_seeds_step2_model(tmp_path):
    shared = ("max_per_source=40", *FAST, f"paths.log_dir={tmp_path}", "group=g", "seeds=[1,2]")
    train(compose_train(tmp_path / "g" / "step2" / "AFLOW" / "seeds1-2", "experiment=step2", "data=aflow", *shared))
    train(
        compose_train(tmp_path / "g" / "step3" / "Dataset1" / "seeds1-2", "experiment=step3", "data=dataset1", *shared)
    )
    for seed in (1, 2):
        member = json.loads((tmp_path / "g" / "step3" / "Dataset1" / f"seed{seed}" / "metrics.json").read_text())
        expected = tmp_path / "g" / "step2" / "AFLOW" / f"seed{seed}" / "checkpoints" / "best.ckpt"
        assert member["init"]["init_from"] == str(expected)
        assert member["status"] == "completed"


def test_prediction_problem_tells_constant_and_not_finite_predictions_from_healthy_ones():
    true = torch.tensor([1.0, 2.0, 5.0, 10.0])
    healthy = ltc_metrics(true * torch.tensor([1.3, 0.8, 1.1, 0.9]), true)
    assert healthy["pred_spread_log10"] > 0.3
    assert prediction_problem(healthy) is None
    constant = ltc_metrics(torch.full((4,), 3.0), true)
    assert constant["pred_spread_log10"] == 0.0
    assert prediction_problem(constant) == PredictionProblem(CONSTANT, "log10 spread 0.0e+00")
    assert str(prediction_problem(constant)) == "constant predictions (log10 spread 0.0e+00)"
    assert prediction_problem(ltc_metrics(torch.tensor([1.0, math.nan, 2.0, 3.0]), true)) == PredictionProblem(
        NOT_FINITE
    )
    assert prediction_problem({"mape": 0.4}) is None  # a record from before the spread was measured
    assert str(final_problem({"val/mape": math.nan, "val/loss": 1.0})) == "not finite predictions"


def test_a_collapsed_member_is_named_once_while_its_spread_drifts(caplog):
    """The full-budget AFLOW members sat at log10 spreads of 0, 7e-18, 3e-8 epoch after epoch: one warning."""
    checkpoint = MemberCheckpoint([Path("unused.ckpt")], names=["seed 9"])
    true = torch.tensor([1.0, 2.0, 5.0, 10.0])
    with caplog.at_level("WARNING"):
        for epoch, spread in enumerate((0.0, 7e-18, 3e-8, 0.0)):
            constant = {"mape": 0.6, "pred_spread_log10": spread}
            checkpoint._report_problem(0, prediction_problem(constant), epoch)
        checkpoint._report_problem(0, prediction_problem(ltc_metrics(true * 1.1, true)), 4)
        checkpoint._report_problem(0, prediction_problem(ltc_metrics(torch.full((4,), math.nan), true)), 5)
    messages = [record.getMessage() for record in caplog.records]
    assert [m.split(":")[1].split(" at")[0].strip() for m in messages] == [
        "constant predictions (log10 spread 0.0e+00)",
        "validation predictions are healthy again",
        "not finite predictions",
    ], messages


def test_collapsed_members_are_named_in_warnings_records_and_status(tmp_path, caplog, capsys):
    """At learning rate 0.1 every head ReLU dies at once: both members predict one constant from epoch 0."""
    job = tmp_path / "g" / "step1" / "Dataset1" / "seeds1-2"
    overrides = ("experiment=step1", "data=dataset1", "max_per_source=24", *FAST, "trainer.max_epochs=2")
    cfg = compose_train(
        job, *overrides, f"paths.log_dir={tmp_path}", "group=g", "seeds=[1,2]", "model.optimizer.lr=0.1"
    )
    with caplog.at_level("WARNING"):
        train(cfg)
    messages = [record.getMessage() for record in caplog.records]
    for seed in (1, 2):
        named = [m for m in messages if m.startswith(f"seed {seed}: constant predictions")]
        assert len(named) == 1, messages  # once per change, not once per epoch
        assert "at epoch 0" in named[0]
        record = json.loads((tmp_path / "g" / "step1" / "Dataset1" / f"seed{seed}" / "metrics.json").read_text())
        assert record["final"]["val/pred_spread_log10"] < 1e-6
        assert any(str(job.parent / f"seed{seed}") in m and "at the last epoch" in m for m in messages)
    capsys.readouterr()
    assert main(["status", str(tmp_path / "g"), "--seeds", "1,2"]) == 0
    assert "seeds 1, 2: constant predictions at the last epoch" in capsys.readouterr().out
