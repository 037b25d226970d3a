"""The config check before anything runs: types, ranges, misspelt keys (named with the nearest valid ones)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from paraisite.training.checks import ConfigValueError, check_command_line
from paraisite.training.train import DivergedRunError, run, train
from tests.helpers import FAST, TINY_LTC, compose_train


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["seed=abc"], "seed='abc': an integer"),
        (["max_per_source=0"], "max_per_source=0: null (all) or an integer >= 1"),
        (["model.backbone.net.cutoff=-1"], "model.backbone.net.cutoff=-1: a number in (0, 20] (Å)"),
        (["model.scheduler.T_max=0"], "model.scheduler.T_max=0: an integer >= 1"),
        (["model.optimizer.lr=inf"], "model.optimizer.lr=inf: a finite number > 0"),
        (["model.optimizer.lr=nan"], "model.optimizer.lr=nan: a finite number > 0"),
        (["model.head.hidden=[100000000]"], "hidden=[100000000]: a list of at most 64 integers in [1, 65536]"),
        (["data.val_fraction=1.0"], "data.val_fraction=1.0: a number in (0, 1)"),
        (["threads=0"], "threads=0: null or an integer >= 1"),
        (["trainer.max_epoch=2"], "trainer has no key 'max_epoch' (nearest: max_epochs, min_epochs"),
        (["model.head.hiden=[3]"], "model.head has no key 'hiden' (nearest: hidden;"),
        (["trainr.max_epochs=3"], "the config has no key 'trainr' (nearest: trainer;"),
        (["+trainer.max_epoch=2"], "trainer.max_epoch: not a setting of pytorch_lightning.Trainer (nearest: max_epo"),
        (["+model.head.hiden=[3]"], "model.head.hiden: not a setting of paraisite.models.heads.MLPHead (nearest: hid"),
        (["-m", "seed=1,2,x", "data=dataset1"], "job seed=x data=dataset1: invalid config: seed='x': an integer"),
    ],
)
def test_a_bad_command_line_is_refused_naming_the_key_and_the_valid_range(argv, message):
    problem = check_command_line(argv)
    assert problem is not None
    assert message in problem


@pytest.mark.parametrize(
    "argv", [[], ["-m", "seed=1,2", "data=dataset1,aflow"], ["+features=eos"], ["--cfg", "job", "trainer.max_epoch=2"]]
)
def test_good_command_lines_and_those_hydra_answers_itself_pass(argv):
    assert check_command_line(argv) is None


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("max_per_source=0", "max_per_source=0: null (all) or an integer >= 1"),
        ("model.scheduler.T_max=0", "model.scheduler.T_max=0: an integer >= 1"),
        ("+trainer.max_epoch=2", "trainer.max_epoch: not a setting of pytorch_lightning.Trainer"),
    ],
)
def test_train_checks_the_config_before_touching_the_run_directory(tmp_path, override, message):
    cfg = compose_train(tmp_path / "run", *FAST, override)
    with pytest.raises(ConfigValueError) as error:
        train(cfg)
    assert message in str(error.value)
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize(
    ("override", "message"),
    [("trainer.max_epoch=2", "nearest: max_epochs"), ("seed=abc", "seed='abc': an integer")],
)
def test_paraisite_train_exits_2_before_writing_anything(tmp_path, override, message):
    out = tmp_path / "logs"
    command = [sys.executable, "-m", "paraisite.training.train", f"paths.log_dir={out}", "logger=none", override]
    env = {**os.environ, "PYTHONPATH": os.getcwd()}
    done = subprocess.run(command, check=False, capture_output=True, text=True, timeout=120, env=env, cwd=os.getcwd())
    assert done.returncode == 2, done.stderr
    assert "paraisite-train: error:" in done.stderr
    assert message in done.stderr
    assert "Traceback" not in done.stderr
    assert not out.exists()


def test_a_run_whose_best_metric_is_not_finite_is_recorded_as_failed(tmp_path):
    cfg = compose_train(tmp_path, *TINY_LTC, "model.optimizer.lr=1e30")
    with pytest.raises(DivergedRunError, match="best validation MAPE is nan"):
        run(cfg)
    record = json.loads((tmp_path / "metrics.json").read_text())
    assert record["status"] == "failed"
    assert "diverged" in record["error"]
