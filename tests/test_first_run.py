"""A newcomer's first commands: offline errors that say what to do, one message per failure, quiet training logs,
fast help, and thread defaults taken from the CPUs this process may use."""

from __future__ import annotations

import logging
import os
import resource
import subprocess
import sys
import warnings
from pathlib import Path

import pytest

from paraisite.cli.main import main
from paraisite.cpus import chosen_threads, default_threads, usable_cpus
from paraisite.data.registry import MissingFileError
from paraisite.training.noise import quiet_known_noise

ROOT = Path(__file__).resolve().parents[1]
#: Both --help answers must cost less than this many CPU seconds: the issue's limit of 5 s, as CPU time so that the
#: test does not depend on the machine's load (paraisite-train --help took 44 s when it imported the training code).
HELP_SECONDS = 5.0


def offline(monkeypatch: pytest.MonkeyPatch) -> None:
    """No mirror, and every HTTPS request sent to a closed local port: a download fails at once, as offline."""
    monkeypatch.delenv("PARAISITE_MIRROR", raising=False)
    for variable in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy"):
        monkeypatch.setenv(variable, "http://127.0.0.1:9")
    monkeypatch.delenv("NO_PROXY", raising=False)
    monkeypatch.delenv("no_proxy", raising=False)


def test_offline_fetch_says_what_it_tried_and_how_to_use_a_mirror(tmp_path, monkeypatch, capsys):
    offline(monkeypatch)
    monkeypatch.delenv("HYDRA_FULL_ERROR", raising=False)
    assert main(["data", "--cache", str(tmp_path / "cache"), "fetch", "dataset2"]) == 1
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if "error" in line]
    assert len(errors) == 1, err  # one message (after the progress bar)
    assert errors[0].startswith("paraisite data: error: ")
    assert "https://raw.githubusercontent.com/liudakl/ParAIsite/" in err  # what was tried
    assert str(tmp_path / "cache") in err
    assert "PARAISITE_MIRROR=" in err
    assert "paraisite data fetch" in err
    assert "Traceback" not in err


@pytest.mark.parametrize("switch", ["--debug", "HYDRA_FULL_ERROR=1"])
def test_debug_switches_show_the_traceback(tmp_path, monkeypatch, switch):
    offline(monkeypatch)
    arguments = ["data", "--cache", str(tmp_path / "cache"), "fetch", "dataset2"]
    if switch == "--debug":
        arguments.insert(0, "--debug")
    else:
        monkeypatch.setenv("HYDRA_FULL_ERROR", "1")
    with pytest.raises(MissingFileError, match="PARAISITE_MIRROR"):
        main(arguments)


def run_console(*arguments: str, env: dict[str, str] | None = None) -> tuple[subprocess.CompletedProcess, float]:
    """Run ``python ARGUMENTS``; the result and the CPU seconds it used (its wall time depends on the machine's load:
    on 2 cores beside 6 busy processes, a 0.25 CPU-s help took 2 s)."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    result = subprocess.run(
        [sys.executable, *arguments], check=False, capture_output=True, text=True, cwd=ROOT, env=env, timeout=120
    )
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return result, (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def test_both_helps_are_fast_and_point_to_each_other():
    result, seconds = run_console("-m", "paraisite.cli.main", "--help")
    assert result.returncode == 0, result.stderr
    assert seconds < HELP_SECONDS, seconds
    assert "paraisite-train" in result.stdout
    assert "PARAISITE_MIRROR" in result.stdout
    assert "--debug" in result.stdout
    result, seconds = run_console("-m", "paraisite.cli.train", "--help")
    assert result.returncode == 0, result.stderr
    assert seconds < HELP_SECONDS, seconds
    assert result.stdout.startswith("paraisite-train: train one model")
    assert "model/backbone: " in result.stdout  # the config groups and their options
    assert "paraisite --help" in result.stdout
    assert "torch" not in result.stderr


def test_a_failed_training_run_prints_one_message_and_exits_1(tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    env.pop("HYDRA_FULL_ERROR", None)
    # passes the config check (any string may name weights), fails when the run starts
    run_dir = f"hydra.run.dir={tmp_path / 'run'}"
    arguments = ("-m", "paraisite.cli.train", "model.backbone.pretrained=no-such-weights", "logger=none", run_dir)
    result, _ = run_console(*arguments, env=env)
    assert result.returncode == 1, result.stderr
    message = [line for line in result.stderr.splitlines() if line.startswith("paraisite-train: error: ")]
    assert len(message) == 1, result.stderr
    assert "'no-such-weights' is not a published MEGNetBackbone" in message[0]
    assert message[0].endswith(f"recorded in {tmp_path / 'run' / 'metrics.json'}")
    assert "HYDRA_FULL_ERROR=1" in result.stderr  # Hydra's line: how to see the traceback
    assert "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) <= 4, result.stderr


def test_lightning_tips_and_known_deprecations_are_filtered(tmp_path, caplog):
    import matgl  # noqa: F401  (imports the unified `lightning` package, whose logger then prints the tips)
    import pytorch_lightning as pl
    from pytorch_lightning.loggers import CSVLogger
    from torch.utils._pytree import LeafSpec

    def tips() -> list[str]:
        caplog.clear()
        with caplog.at_level(logging.INFO):
            pl.Trainer(logger=CSVLogger(tmp_path), accelerator="cpu", enable_progress_bar=False)
        return [record.getMessage() for record in caplog.records if "Tip:" in record.getMessage()]

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        LeafSpec()
        assert [w.category for w in caught] == [FutureWarning]  # the noise exists: the filter has work to do
        caught.clear()
        quiet_known_noise()
        LeafSpec()
        assert caught == []
    assert tips() == []
    unrelated = logging.getLogger("lightning.pytorch.utilities.rank_zero")
    with caplog.at_level(logging.INFO):
        unrelated.info("GPU available: False")
    assert "GPU available: False" in caplog.text  # only the tips are dropped


def test_thread_default_follows_the_cpus_this_process_may_use(monkeypatch):
    assert usable_cpus() == len(os.sched_getaffinity(0))
    assert [default_threads(cpus) for cpus in (1, 2, 3, 4, 16)] == [1, 1, 1, 2, 8]
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    assert chosen_threads() == default_threads()
    assert chosen_threads(3) == 3  # threads=3 in the config wins
    monkeypatch.setenv("OMP_NUM_THREADS", "2")
    assert chosen_threads() is None  # torch read it itself


def test_a_process_pinned_to_one_cpu_trains_and_predicts_with_one_thread(tmp_path):
    """taskset-style affinity: the child may use one CPU, so torch gets one thread (not the machine's count)."""
    if len(os.sched_getaffinity(0)) < 2:
        pytest.skip("needs two CPUs to pin a process to one of them")
    code = (
        "import os; os.sched_setaffinity(0, {min(os.sched_getaffinity(0))});"
        "from paraisite.cpus import set_torch_threads; from paraisite.cli.predict import default_workers;"
        "print(set_torch_threads(), default_workers(5000))"
    )
    env = {k: v for k, v in os.environ.items() if k != "OMP_NUM_THREADS"}
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True)
    assert result.stdout.split() == ["1", "1"]
