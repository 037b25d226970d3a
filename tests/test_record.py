"""The run record: one dataclass, its reader and writer, its schema version, the run layout."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
from pathlib import Path

import pytest
from hydra import compose

from paraisite import record as record_module
from paraisite.record import (
    SCHEMA_VERSION,
    RunRecord,
    RunRecordError,
    read_run_record,
    run_label,
    run_path,
    write_run_record,
)
from tests.helpers import hydra_configs

ROOT = Path(__file__).resolve().parents[1]
COMMITTED = sorted((ROOT / "experiments").glob("**/metrics.json")) + sorted(
    (ROOT / "experiments").glob("**/ensemble.json")
)
COMPLETED = {
    "status": "completed",
    "task_name": "step1",
    "seed": 3,
    "data": {"name": "Dataset1", "sources": ["dataset1"], "seed": 3, "train": 76, "val": 19},
    "best": {"mape": 0.4, "count": 19},
    "cross": {"Dataset2": {"mape": 1.0}},
    "best_checkpoint": None,
}


def write(path: Path, value: object) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(value))
    return path


def test_every_committed_record_is_read():
    assert len(COMMITTED) >= 100  # experiments/*/runs/ hold the records the committed tables were built from
    for path in COMMITTED:
        record = read_run_record(path)
        assert record.schema_version == 1  # written before schema_version existed
        if path.name == "metrics.json":
            assert record.status == "completed", path
            assert record.dataset == path.parent.parent.name
            assert path.parent.relative_to(path.parents[3]).as_posix() == run_path(
                record.task_name, record.dataset, record.seed
            )
        else:  # an ensemble job: completed, or running in a committed resume state
            assert record.seeds, path
            assert path.parent.name == run_label(0, record.seeds)


def test_a_record_without_schema_version_reads_as_version_1_and_is_written_with_it(tmp_path: Path):
    old = read_run_record(write(tmp_path / "old" / "metrics.json", COMPLETED))
    assert old.schema_version == 1
    assert old.best_checkpoint is None
    path = tmp_path / "new" / "metrics.json"
    write_run_record(path, old)
    saved = json.loads(path.read_text())
    assert next(iter(saved)) == "schema_version"
    assert saved["schema_version"] == SCHEMA_VERSION
    assert {key: value for key, value in COMPLETED.items() if value is not None} == {
        key: value for key, value in saved.items() if key != "schema_version"
    }
    assert read_run_record(path) == old


def test_a_newer_schema_is_refused_naming_the_file(tmp_path: Path):
    path = write(tmp_path / "metrics.json", {**COMPLETED, "schema_version": SCHEMA_VERSION + 1})
    with pytest.raises(RunRecordError, match="newer than this paraisite reads") as caught:
        read_run_record(path)
    assert str(path) in str(caught.value)
    assert caught.value.path == path


@pytest.mark.parametrize(
    ("value", "problem"),
    [
        ([1, 2], "metrics.json does not hold a JSON object"),
        ({"status": "completed", "seed": 3}, "malformed metrics.json: missing 'data', 'task_name', 'best'"),
        ({**COMPLETED, "colour": "red"}, "malformed metrics.json: unknown key(s) 'colour'"),
        ({**COMPLETED, "status": "done"}, "malformed metrics.json: status 'done' is not one of"),
        ({**COMPLETED, "seed": "3"}, "malformed metrics.json: seed is str '3', not int"),
        ({**COMPLETED, "seed": True}, "malformed metrics.json: seed is bool True, not int"),
        ({**COMPLETED, "data": {"sources": []}}, "malformed metrics.json: data has no dataset 'name'"),
        ({**COMPLETED, "schema_version": 0}, "malformed metrics.json: schema_version 0 is not an integer >= 1"),
    ],
)
def test_invalid_records_are_refused_with_the_problem(tmp_path: Path, value: object, problem: str):
    path = write(tmp_path / "metrics.json", value)
    with pytest.raises(RunRecordError) as caught:
        read_run_record(path)
    assert caught.value.problem.startswith(problem)
    assert str(caught.value) == f"{path}: {caught.value.problem}"


def test_unreadable_and_missing_files(tmp_path: Path):
    (tmp_path / "metrics.json").write_text("{not json")
    with pytest.raises(RunRecordError, match=r"unreadable metrics\.json"):
        read_run_record(tmp_path / "metrics.json")
    with pytest.raises(FileNotFoundError):
        read_run_record(tmp_path / "missing" / "metrics.json")


def test_status_records_of_every_state(tmp_path: Path):
    running = read_run_record(write(tmp_path / "a" / "metrics.json", {"status": "running", "pid": 1}))
    assert (running.status, running.pid, running.config_sha256) == ("running", 1, None)
    failed = {"seed": None, "seeds": "[1, 2, 3]", "status": "failed", "error": "boom", "traceback": "..."}
    job = read_run_record(write(tmp_path / "b" / "ensemble.json", failed))  # seeds as text: an older writer
    assert job.seeds == [1, 2, 3]
    summary = {"status": "completed", "config_sha256": "0" * 64, "seeds": [1, 2], "best_mape": {"1": 0.3, "2": None}}
    assert read_run_record(write(tmp_path / "c" / "ensemble.json", summary)).is_ensemble_job


def test_every_field_has_a_checked_type():
    assert set(record_module._FIELD_TYPES) == {field.name for field in dataclasses.fields(RunRecord)}


def test_run_layout():
    assert run_label(4) == "seed4"
    assert run_label(1, [1, 2, 3]) == "seeds1-2-3"
    assert run_path("step2", "AFLOW", 7) == "step2/AFLOW/seed7"
    assert run_path("step1", "MIX", 1, seeds=[1, 2]) == "step1/MIX/seeds1-2"


def test_the_configs_use_the_run_layout(tmp_path: Path):
    with hydra_configs():
        cfg = compose(
            config_name="train",
            overrides=["experiment=step3", "data=mix", "group=g", "seed=4", f"paths.log_dir={tmp_path}"],
            return_hydra_config=True,
        )
    assert cfg.init_from == f"{tmp_path}/g/{run_path('step2', 'AFLOW', 4)}"
    assert cfg.hydra.sweep.subdir == run_path("step3", "MIX", 4)


def test_resolvers_are_registered_once_by_finding_the_configs_not_by_importing():
    script = """
from omegaconf import OmegaConf
import paraisite.config as config
print(sorted(name for name in config.RESOLVERS if OmegaConf.has_resolver(name)))
config.config_dir()
config.register_resolvers()  # again: a second registration of a name would raise
config.config_dir()
print(sorted(name for name in config.RESOLVERS if OmegaConf.has_resolver(name)))
layout = OmegaConf.create({"x": "${run_path:step2,AFLOW,7}", "y": "${run_label:1,[1,2]}"})
print(OmegaConf.to_container(layout, resolve=True))
"""
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True, timeout=300)
    before, after, resolved = result.stdout.splitlines()[-3:]
    assert before == "[]"
    assert after == "['run_label', 'run_path', 'wandb_offline']"
    assert resolved == "{'x': 'step2/AFLOW/seed7', 'y': 'seeds1-2'}"
