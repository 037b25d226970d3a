"""Multiruns with real launchers, and Step III finding its Step II checkpoint by seed."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from paraisite.cli.main import main as cli
from paraisite.training.train import train
from tests.helpers import FAST, compose_train

QUIET = ["logger=none", "callbacks.progress_bar=null", "max_per_source=60"]


def multirun(tmp_path: Path, *overrides: str) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "paraisite.training.train", "-m", f"paths.log_dir={tmp_path}", *QUIET, *overrides]
    return subprocess.run(command, capture_output=True, text=True, timeout=600, env=dict(os.environ), check=False)


def completed_metrics(root: Path) -> dict[str, dict]:
    found = {str(p.parent.relative_to(root)): json.loads(p.read_text()) for p in root.rglob("metrics.json")}
    assert found, f"no metrics.json under {root}"
    return found


@pytest.mark.slow
def test_joblib_multirun_two_jobs_cross_evaluated(tmp_path):
    done = multirun(
        tmp_path, "experiment=step1", "data=dataset1,dataset2", "seed=1", "group=tiny",
        "hydra/launcher=local_parallel", "+trainer.fast_dev_run=true",
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    runs = completed_metrics(tmp_path / "tiny")
    assert set(runs) == {"step1/Dataset1/seed1", "step1/Dataset2/seed1"}
    for metrics in runs.values():
        assert metrics["status"] == "completed"
        assert set(metrics["cross"]) == {"Dataset1", "Dataset2", "MIX", "AFLOW"}
        assert all(cell["count"] > 0 for cell in metrics["cross"].values())
    assert cli(["table", str(tmp_path / "tiny"), "-o", str(tmp_path / "table")]) == 0
    cells = pd.read_csv(tmp_path / "table" / "table.csv")
    assert len(cells) == 2 * 4  # (Dataset1, Dataset2) x 4 tested-on datasets
    assert cells["mean"].notna().all()
    assert (cells["n"] == 1).all()


@pytest.mark.slow
def test_submitit_local_launcher(tmp_path):
    done = multirun(
        tmp_path, "experiment=step2", "data=dataset2", "seed=2", "group=sub", "hydra/launcher=local_submitit",
        "+trainer.fast_dev_run=true", "cross_eval=[]",
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    runs = completed_metrics(tmp_path / "sub")
    assert runs["step2/Dataset2/seed2"]["status"] == "completed"
    assert runs["step2/Dataset2/seed2"]["init"]["pretrained"] == "MEGNet-MP-2018.6.1-Eform"


def test_step3_starts_from_the_step2_aflow_model_of_its_seed(tmp_path):
    shared = [*FAST, "max_per_source=60", f"paths.log_dir={tmp_path}", "group=g", "seed=2"]
    step2_dir = tmp_path / "g" / "step2" / "AFLOW" / "seed2"
    train(compose_train(step2_dir, "experiment=step2", "data=aflow", *shared))
    assert (step2_dir / "checkpoints" / "best.ckpt").is_file()
    result = train(compose_train(tmp_path / "step3", "experiment=step3", "data=dataset1", *shared))
    assert result["init"]["init_from"] == str(step2_dir / "checkpoints" / "best.ckpt")
    assert result["init"]["pretrained"] is None
    # The clean protocol fine-tunes with the target dataset's statistics, not AFLOW's.
    assert result["data"]["target_stats"]["mean"] > 1.0
    other_seed = compose_train(tmp_path / "step3b", "experiment=step3", "data=dataset1", *shared[:-1], "seed=3")
    with pytest.raises(FileNotFoundError, match="seed=3 group=g"):
        train(other_seed)
