"""The sweep reducer: collect metrics.json files, aggregate, write table/CSV/heatmap, CLI, paper references."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pandas as pd
import pytest

from paraisite.cli.main import main as cli
from paraisite.evaluation import table
from paraisite.evaluation.published import DATASETS, PUBLISHED_MAPE, load_paper_runs
from paraisite.record import RunRecord, run_path, write_run_record

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
#: Step I, trained on Dataset1: MAPE per tested-on dataset for seeds 1, 2, 3.
STEP1_D1 = {"Dataset1": (0.2, 0.3, 0.7), "Dataset2": (1.0, 2.0, 3.0), "MIX": (0.5, 0.5, 0.5), "AFLOW": (1.0, 1.5, 2.0)}


def write_job(root: Path, step: str, trained_on: str, seed: int, mape: dict[str, float], cross: bool = True) -> Path:
    """A completed job's metrics.json in the sweep layout ``<step>/<dataset>/seed<N>/``."""
    evaluations = {
        name: {"mape": value, "mae_log10": value / 2, "rmse_log10": value, "r2_log10": 0.5, "count": 19}
        for name, value in mape.items()
    }
    for metrics in evaluations.values():
        metrics["label_scaling"] = "consistent"
    result = RunRecord(
        status="completed",
        task_name=step,
        seed=seed,
        group="test-sweep",
        backbone="megnet_scratch",
        protocol="clean",
        profile="quick",
        data={"name": trained_on, "sources": [trained_on.lower()], "seed": seed, "train": 76, "val": 19},
        best=evaluations[trained_on],
        cross=evaluations if cross else {},
        epochs=2,
        seconds=1.0,
    )
    path = root / run_path(step, trained_on, seed) / "metrics.json"
    path.parent.mkdir(parents=True)
    write_run_record(path, result)
    return path


@pytest.fixture
def sweep(tmp_path: Path) -> Path:
    """Step I Dataset1 x3 seeds, one failed job, a single Step III run and a Step II run without cross-evaluation."""
    root = tmp_path / "sweep"
    for index, seed in enumerate((1, 2, 3)):
        write_job(root, "step1", "Dataset1", seed, {name: values[index] for name, values in STEP1_D1.items()})
    failed = root / run_path("step1", "Dataset1", 4) / "metrics.json"
    failed.parent.mkdir(parents=True)
    write_run_record(failed, RunRecord(status="failed", seed=4, error="RuntimeError: out of memory\nmore"))
    write_job(root, "step3", "MIX", 1, dict.fromkeys(DATASETS, 0.6))
    write_job(root, "step2", "AFLOW", 1, {"AFLOW": 0.45}, cross=False)
    return root


def cell(cells: pd.DataFrame, step: str, trained_on: str, tested_on: str) -> pd.Series:
    chosen = cells[(cells["step"] == step) & (cells["trained_on"] == trained_on) & (cells["tested_on"] == tested_on)]
    assert len(chosen) == 1
    return chosen.iloc[0]


def test_collect_reads_completed_runs_and_lists_failures(sweep: Path):
    runs, failures = table.collect(sweep)
    assert len(runs) == 3 * 4 + 4 + 1
    assert list(runs.columns[:4]) == ["step", "trained_on", "tested_on", "seed"]
    assert set(runs["seed"]) == {1, 2, 3}
    assert [(job.step, job.trained_on, job.seed) for job in failures] == [("step1", "Dataset1", 4)]
    assert failures[0].path == sweep / "step1" / "Dataset1" / "seed4" / "metrics.json"
    assert failures[0].first_line == "RuntimeError: out of memory"


def test_unreadable_and_malformed_files_are_failures(tmp_path: Path):
    for seed, text in ((1, "{not json"), (2, "[1, 2]"), (3, json.dumps({"status": "completed", "seed": 3}))):
        path = tmp_path / "step2" / "MIX" / f"seed{seed}" / "metrics.json"
        path.parent.mkdir(parents=True)
        path.write_text(text)
    runs, failures = table.collect(tmp_path)
    assert runs.empty
    assert [(job.step, job.trained_on, job.seed) for job in failures] == [("step2", "MIX", seed) for seed in (1, 2, 3)]
    assert failures[0].first_line.startswith("unreadable metrics.json")
    assert failures[1].first_line == "metrics.json does not hold a JSON object"
    assert failures[2].first_line.startswith("malformed metrics.json: missing 'data'")


def test_aggregate_gives_mean_sample_std_n_and_published(sweep: Path):
    runs, _ = table.collect(sweep)
    cells = table.aggregate(runs)
    diagonal = cell(cells, "step1", "Dataset1", "Dataset1")
    assert diagonal["n"] == 3  # the failed seed 4 is not counted
    assert diagonal["mean"] == pytest.approx(0.4)
    assert diagonal["std"] == pytest.approx(0.2645751311)
    assert (diagonal["published_mean"], diagonal["published_std"]) == (0.82, 0.21)
    assert diagonal["delta"] == pytest.approx(0.4 - 0.82)
    across = cell(cells, "step1", "Dataset1", "Dataset2")
    assert (across["mean"], across["std"]) == (pytest.approx(2.0), pytest.approx(1.0))
    single = cell(cells, "step3", "MIX", "AFLOW")
    assert single["n"] == 1
    assert math.isnan(single["std"])
    assert single["published_mean"] == PUBLISHED_MAPE["step3"]["MIX"]["AFLOW"][0]
    assert cell(cells, "step2", "AFLOW", "AFLOW")["mean"] == pytest.approx(0.45)  # from "best" without "cross"
    assert list(cells["step"].drop_duplicates()) == ["step1", "step2", "step3"]
    assert list(cells[cells["step"] == "step1"]["tested_on"]) == list(DATASETS)


def test_other_metrics_have_no_published_reference(sweep: Path):
    runs, _ = table.collect(sweep)
    cells = table.aggregate(runs, metric="mae_log10")
    assert cell(cells, "step1", "Dataset1", "Dataset1")["mean"] == pytest.approx(0.2)
    assert cells["published_mean"].isna().all()
    with pytest.raises(ValueError, match="unknown metric"):
        table.aggregate(runs, metric="accuracy")
    with pytest.raises(ValueError, match="no run reports"):
        table.aggregate(runs.assign(r2_log10=float("nan")), metric="r2_log10")


def test_true_tc_mape_is_the_recorded_one_under_paper_scaling_and_the_mape_otherwise(sweep: Path):
    paper = json.loads((sweep / run_path("step3", "MIX", 1) / "metrics.json").read_text())
    for name, metrics in paper["cross"].items():
        metrics.update(label_scaling="paper", true_tc_mape=0.9 if name == "MIX" else None)
        if metrics["true_tc_mape"] is None:
            del metrics["true_tc_mape"]  # a record written before the true-TC score existed
    paper["best"] = paper["cross"]["MIX"]
    (sweep / run_path("step3", "MIX", 1) / "metrics.json").write_text(json.dumps(paper))
    cells = table.aggregate(table.collect(sweep)[0], metric="true_tc_mape")
    assert cell(cells, "step3", "MIX", "MIX")["mean"] == pytest.approx(0.9)
    assert cell(cells, "step1", "Dataset1", "Dataset1")["mean"] == pytest.approx(0.4)  # clean: its MAPE
    assert not ((cells["step"] == "step3") & (cells["tested_on"] == "Dataset1")).any()  # not scored: no cell


def test_outputs_are_written(sweep: Path, tmp_path: Path):
    runs, failures = table.collect(sweep)
    cells = table.aggregate(runs)
    paths = table.write_outputs(cells, runs, failures, tmp_path / "out", sweep_dir=sweep)
    assert {path.name for path in paths.values()} == {"table.md", "table.csv", "heatmap.png"}
    assert paths["heatmap"].read_bytes().startswith(PNG_SIGNATURE)
    assert len(pd.read_csv(paths["csv"])) == len(cells) == 4 + 1 + 4
    markdown = paths["markdown"].read_text()
    assert "QUICK PROFILE" in markdown
    assert "| Dataset1 | 3 | 0.40 (0.26) · 0.82 (0.21) · Δ -0.42 |" in markdown
    assert "`step1/Dataset1/seed4/metrics.json` (Step I, Dataset1, seed 4): RuntimeError: out of memory" in markdown
    assert "- runs: 5 completed, 1 failed" in markdown


def test_cli_writes_files_and_exit_codes(sweep: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]):
    before = sorted(path for path in sweep.rglob("*"))
    assert cli(["table", str(sweep)]) == 0
    printed = capsys.readouterr()
    assert "## Step I" in printed.out
    assert "## Reference: paper runs" in printed.out
    assert "1 failed job(s)" in printed.err
    beside = sweep.parent / f"{sweep.name}-table"  # the default: beside the sweep, never into it
    assert (beside / "heatmap.png").read_bytes().startswith(PNG_SIGNATURE)
    assert {path.name for path in beside.iterdir()} == {"table.md", "table.csv", "heatmap.png"}
    assert sorted(path for path in sweep.rglob("*")) == before
    (sweep / "table.md").write_text("committed table\n")
    assert cli(["table", str(sweep), "--no-paper-runs"]) == 0
    assert (sweep / "table.md").read_text() == "committed table\n"  # left alone without --in-place
    assert cli(["table", str(sweep), "--no-paper-runs", "--in-place"]) == 0
    assert (sweep / "table.md").read_text().startswith("# ParAIsite cross-dataset table")
    capsys.readouterr()

    empty = tmp_path / "empty"
    (empty / "step1" / "MIX" / "seed1").mkdir(parents=True)
    (empty / "step1" / "MIX" / "seed1" / "metrics.json").write_text(json.dumps({"status": "failed", "error": "boom"}))
    assert cli(["table", str(empty), "--no-paper-runs"]) == 1
    printed = capsys.readouterr()
    assert "no completed runs" in printed.err
    assert str(empty) in printed.err.replace("\n", "")
    assert "boom" in printed.err
    assert cli(["table", str(tmp_path / "missing")]) == 1
    assert "does not exist" in capsys.readouterr().err


def test_table_is_logged_to_an_active_wandb_run(sweep: Path, tmp_path: Path):
    wandb = pytest.importorskip("wandb")
    runs, failures = table.collect(sweep)
    cells = table.aggregate(runs)
    paths = table.write_outputs(cells, runs, failures, tmp_path / "out")
    assert not table.log_to_wandb(cells, paths["heatmap"])
    wandb.init(mode="disabled")
    try:
        assert table.log_to_wandb(cells, paths["heatmap"])
    finally:
        wandb.finish()


def test_paper_runs_reproduce_published_off_diagonal_but_not_diagonal():
    paper_runs = load_paper_runs()
    assert len(paper_runs) == 11 * 9 * 4
    cells = table.aggregate(paper_runs)
    assert (cells["n"] == 9).all()
    assert cells["published_mean"].notna().all()
    off_diagonal = cells[cells["trained_on"] != cells["tested_on"]]
    diagonal = cells[cells["trained_on"] == cells["tested_on"]]
    assert len(off_diagonal) == 33
    assert (off_diagonal["delta"].abs() <= 0.011).all()
    assert (diagonal["published_mean"] > diagonal["mean"]).all()
    assert cell(cells, "step1", "Dataset1", "Dataset1")["mean"] == pytest.approx(0.54, abs=0.01)


def test_records_are_copied_beside_the_table_and_rebuild_it(sweep: Path, tmp_path: Path):
    out = tmp_path / "experiment"
    (sweep / "step1" / "Dataset1" / "seed1" / "checkpoints").mkdir()
    (sweep / "step1" / "Dataset1" / "seed1" / "checkpoints" / "best.ckpt").write_bytes(b"not copied")
    assert cli(["table", str(sweep), "-o", str(out), "--records", "--no-paper-runs"]) == 0
    copied = sorted(p.relative_to(out / "runs").as_posix() for p in (out / "runs").rglob("*") if p.is_file())
    assert copied == sorted(p.relative_to(sweep).as_posix() for p in sweep.rglob("metrics.json"))
    assert cli(["table", str(out / "runs"), "-o", str(tmp_path / "rebuilt"), "--no-paper-runs"]) == 0
    assert (tmp_path / "rebuilt" / "table.csv").read_text() == (out / "table.csv").read_text()
