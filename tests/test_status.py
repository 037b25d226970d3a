"""``paraisite status`` on any folder: plain multiruns, single runs, custom layouts, ensemble jobs; from the records."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest

from paraisite.cli.main import main


def completed(task: str, dataset: str, seed: int) -> dict:
    return {
        "status": "completed",
        "task_name": task,
        "seed": seed,
        "data": {"name": dataset, "sources": [dataset.lower()], "seed": seed, "train": 8, "val": 2},
        "best": {"mape": 0.3, "count": 2},
        "best_checkpoint": None,
    }


def write(path: Path, value: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(value))


def config(folder: Path, task: str, dataset: str, seed: int) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config_resolved.yaml").write_text(f"task_name: {task}\nseed: {seed}\ndata:\n  name: {dataset}\n")


def status(folder: Path, capsys: pytest.CaptureFixture[str], *extra: str) -> tuple[int, str]:
    capsys.readouterr()
    code = main(["status", str(folder), *extra])
    return code, capsys.readouterr().out


def test_plain_multirun_of_completed_runs_is_not_pending(tmp_path, capsys):
    """A `paraisite-train -m seed=1,2` sweep (task `train`): both completed, none pending (it was 99 pending)."""
    for seed in (1, 2):
        write(
            tmp_path / "g" / "train" / "Dataset2" / f"seed{seed}" / "metrics.json", completed("train", "Dataset2", seed)
        )
    code, out = status(tmp_path / "g", capsys)
    assert code == 0
    assert out.splitlines() == ["train  Dataset2  2 completed", "total: 2 completed"]
    code, out = status(tmp_path / "g", capsys, "--seeds", "1-3")  # told which seeds to expect
    assert "train  Dataset2  2 completed, 1 pending" in out


def test_single_run_folder(tmp_path, capsys):
    run = tmp_path / "logs" / "train" / "runs" / "2026-12-07_10-00-00" / "seed1"
    write(run / "metrics.json", completed("train", "MIX", 1))
    code, out = status(run, capsys)
    assert (code, out.splitlines()[0]) == (0, "train  MIX       1 completed")


def test_custom_layout_is_grouped_by_the_records_and_configs(tmp_path, capsys):
    """hydra.sweep.subdir=${hydra.job.num}: the folders say nothing; a failed record has no task, its config has."""
    sweep = tmp_path / "custom"
    write(sweep / "0" / "metrics.json", completed("train", "AFLOW", 1))
    config(sweep / "1", "train", "AFLOW", 2)
    write(sweep / "1" / "metrics.json", {"status": "failed", "seed": 2, "error": "ValueError: boom"})
    config(sweep / "2", "finetune", "Dataset1", 1)
    # started now: this process began before (a start time before the process began would read as a recycled pid)
    write(sweep / "2" / "metrics.json", {"status": "running", "pid": os.getpid(), "started": time.time()})
    (sweep / "0" / "csv").mkdir()  # logger output is not searched
    write(sweep / "0" / "csv" / "metrics.json", {"status": "failed"})
    code, out = status(sweep, capsys)
    assert code == 1  # a failed run
    lines = out.splitlines()
    assert "train  AFLOW     1 completed, 1 failed" in lines
    assert "finetune Dataset1  1 running" in lines
    assert lines[-1] == "total: 1 completed, 1 failed, 1 running"


def test_ensemble_job_members_take_the_jobs_state(tmp_path, capsys):
    job = tmp_path / "g" / "train" / "Dataset1" / "seeds1-2-3"
    config(job, "train", "Dataset1", 1)
    write(job / "ensemble.json", {"status": "running", "seeds": [1, 2, 3], "pid": os.getpid(), "started": time.time()})
    (job / "csv" / "version_0").mkdir(parents=True)
    (job / "csv" / "version_0" / "metrics.csv").write_text("epoch,val/mape\n0,0.5\n1,0.4\n")
    code, out = status(tmp_path / "g", capsys)
    assert code == 0
    assert out.splitlines()[0] == "train  Dataset1  3 running  (seeds1-2-3: 2 epochs logged)"
    write(job / "ensemble.json", {"status": "failed", "seeds": [1, 2, 3], "error": "boom"})
    code, out = status(tmp_path / "g", capsys)
    assert code == 1
    assert out.splitlines()[0] == "train  Dataset1  3 failed  (seeds1-2-3: 2 epochs logged)"


def test_paper_sweep_still_lists_the_jobs_not_started(tmp_path, capsys):
    write(tmp_path / "g" / "step1" / "MIX" / "seed1" / "metrics.json", completed("step1", "MIX", 1))
    _, out = status(tmp_path / "g", capsys, "--seeds", "1,2")
    assert "step1  MIX       1 completed, 1 pending" in out
    assert "step3  Dataset1  2 pending" in out
    assert out.splitlines()[-1] == "total: 1 completed, 21 pending"  # 11 jobs x 2 seeds


def test_folder_without_records_is_an_error(tmp_path, capsys):
    (tmp_path / "empty" / "notes").mkdir(parents=True)
    assert main(["status", str(tmp_path / "empty")]) == 1
    assert "no run records (metrics.json or ensemble.json) under" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ('{"status": "completed", "task_na', "unreadable metrics.json: Unterminated string"),  # cut off
        ("not json", "unreadable metrics.json: Expecting value"),
        ("[1, 2]", "metrics.json does not hold a JSON object"),
        ('{"status": "done"}', "malformed metrics.json: status 'done' is not one of"),
    ],
)
def test_an_unreadable_record_is_shown_as_such_with_its_reason(tmp_path, capsys, text, problem):
    write(tmp_path / "g" / "train" / "Dataset2" / "seed1" / "metrics.json", completed("train", "Dataset2", 1))
    bad = tmp_path / "g" / "train" / "Dataset2" / "seed2" / "metrics.json"
    bad.parent.mkdir(parents=True)
    bad.write_text(text)
    code, out = status(tmp_path / "g", capsys)
    lines = out.splitlines()
    assert lines[0] == "train  Dataset2  1 completed, 1 unreadable"  # "1 completed, 1 pending" on the old code
    assert lines[1].strip().startswith(f"{bad}: {problem}")
    assert lines[-1] == "total: 1 completed, 1 unreadable"
    assert code == 1


def test_an_unreadable_ensemble_record_is_shown_with_its_reason(tmp_path, capsys):
    job = tmp_path / "g" / "train" / "Dataset1" / "seeds1-2-3"
    job.mkdir(parents=True)
    (job / "ensemble.json").write_text('{"status": "running", "seeds": [1, 2')
    code, out = status(tmp_path / "g", capsys)
    assert out.splitlines()[0] == "train  Dataset1  1 unreadable"  # no line at all on the old code
    assert f"{job / 'ensemble.json'}: unreadable ensemble.json" in out
    assert code == 1
