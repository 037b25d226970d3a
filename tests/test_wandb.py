"""wandb with real offline runs: grouped and tagged, always finished, also after a failure."""

from __future__ import annotations

import pytest
import wandb

from paraisite.cli.main import main as cli
from paraisite.training.train import run
from tests.helpers import FAST, compose_train

WANDB = [f for f in FAST if not f.startswith("logger=")] + ["logger=wandb"]


@pytest.fixture(autouse=True)
def offline(monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.delenv("WANDB_API_KEY", raising=False)


def test_training_run_logs_offline_with_group_and_tags(tmp_path):
    cfg = compose_train(tmp_path, "experiment=step1", "data=dataset1", *WANDB, "group=sweep-a", "seed=2")
    assert cfg.logger.wandb.offline is True
    assert list(cfg.logger.wandb.tags) == ["step1", "Dataset1", "megnet_scratch", "seed2"]
    run(cfg)
    assert wandb.run is None  # finished
    runs = list((tmp_path / "wandb").glob("offline-run-*"))
    assert len(runs) == 1
    assert any(runs[0].rglob("*.wandb"))


def test_failed_run_still_finishes_wandb(tmp_path):
    cfg = compose_train(tmp_path, "experiment=step3", "data=dataset1", *WANDB, "group=missing")
    with pytest.raises(FileNotFoundError):
        run(cfg)
    assert wandb.run is None


def test_table_logged_to_a_wandb_run(tmp_path):
    cfg = compose_train(tmp_path / "g" / "step1" / "Dataset1" / "seed1", "experiment=step1", "data=dataset1", *FAST)
    run(cfg)
    assert cli(["table", str(tmp_path / "g"), "--wandb", "--no-paper-runs"]) == 0
    assert wandb.run is None
    assert len(list((tmp_path / "g-table" / "wandb").glob("offline-run-*"))) == 1  # the table's folder, beside
