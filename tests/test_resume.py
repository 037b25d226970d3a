"""Interrupted runs are recognisable, resume exactly from last.ckpt, and completed ones are skipped."""

from __future__ import annotations

import csv
import io
import json
import lzma
import math
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from paraisite.checkpoints import resolve_run_checkpoint
from paraisite.cli.main import main
from paraisite.record import RunRecord, write_run_record
from paraisite.training import record
from paraisite.training.train import RunInProgressError, run
from tests.helpers import TINY_LTC, compose_train, tiny_ltc_run

RUN = ("data=dataset1", "max_per_source=40", "logger=none", "callbacks.progress_bar=null", "cross_eval=[]")


def _train_command(job_dir: Path, epochs: int) -> list[str]:
    logged = [o for o in RUN if not o.startswith("logger=")] + ["logger=csv", "+logger.csv.flush_logs_every_n_steps=1"]
    overrides = [*logged, "seeds=[1,2]", f"trainer.max_epochs={epochs}", f"hydra.run.dir={job_dir}"]
    return [sys.executable, "-m", "paraisite.training.train", *overrides]


def _members(sweep: Path) -> dict[int, dict]:
    return {seed: json.loads((sweep / f"seed{seed}" / "metrics.json").read_text()) for seed in (1, 2)}


@pytest.mark.slow
def test_killed_ensemble_resumes_exactly_and_is_then_skipped(tmp_path, capsys):
    epochs = 6
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    # Uninterrupted reference.
    reference = tmp_path / "reference" / "seeds1-2"
    subprocess.run(_train_command(reference, epochs), check=True, env=env, capture_output=True, timeout=600)
    # Killed after its second saved epoch (SIGKILL: nothing can be written on the way out). Not the first: the
    # end of epoch 0 adds the CSV's columns, and Lightning rewrites that file in place, which no kill survives.
    job = tmp_path / "killed" / "seeds1-2"
    process = subprocess.Popen(
        _train_command(job, epochs), env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    last = job / "checkpoints" / "last.ckpt"
    saves: set[tuple[int, int]] = set()  # last.ckpt is replaced whole on each save: a new inode
    deadline = time.monotonic() + 300
    while len(saves) < 2 and process.poll() is None and time.monotonic() < deadline:
        try:
            info = last.stat()
            saves.add((info.st_ino, info.st_mtime_ns))
        except FileNotFoundError:
            pass
        time.sleep(0.02)
    process.send_signal(signal.SIGKILL)
    process.wait(timeout=60)
    assert len(saves) >= 2, "the run ended before its second checkpoint; nothing was interrupted"
    status = json.loads((job / "ensemble.json").read_text())
    assert status["status"] == "running"  # recognisably interrupted, with the config it ran
    assert not (job.parent / "seed1" / "metrics.json").exists()
    # The machine goes away: only the saved resume state survives, and it is all the resumed run needs.
    sweep, state = tmp_path / "killed", tmp_path / "committed-state"
    assert main(["state", "save", str(sweep), str(state)]) == 0
    packed = state / "seeds1-2" / "checkpoints" / "last.ckpt.xz"
    assert packed.stat().st_size < (job / "checkpoints" / "last.ckpt").stat().st_size
    epoch = torch.load(io.BytesIO(lzma.decompress(packed.read_bytes())), weights_only=True)["epoch"]
    saved = {p.relative_to(state).as_posix() for p in state.rglob("*") if p.is_file()}
    assert {"seeds1-2/ensemble.json", "seeds1-2/checkpoints/last.ckpt.xz", "seed1/checkpoints/best.ckpt.xz"} <= saved
    assert not any(name.endswith(".ckpt") for name in saved)  # each checkpoint once, compressed
    assert not any("hparams" in name or name.endswith(".log") for name in saved)  # only what resumes it
    # A sweep that got further than the saved state keeps its own (the state is older than the run).
    further = tmp_path / "further"
    assert main(["state", "restore", str(state), str(further)]) == 0
    assert (further / "seed1" / "checkpoints" / "best.ckpt").read_bytes() == (
        job.parent / "seed1" / "checkpoints" / "best.ckpt"
    ).read_bytes()
    # A state saved before checkpoints were compressed restores the same files; saving over it leaves one copy.
    old_state, from_old = tmp_path / "old-state", tmp_path / "from-old"
    shutil.copytree(state, old_state)
    for path in old_state.rglob("*.ckpt.xz"):
        path.with_suffix("").write_bytes(lzma.decompress(path.read_bytes()))
        path.unlink()
    assert main(["state", "restore", str(old_state), str(from_old)]) == 0
    restored = sorted(p.relative_to(from_old) for p in from_old.rglob("*") if p.is_file())
    assert restored == sorted(p.relative_to(further) for p in further.rglob("*") if p.is_file())
    for path in restored:
        assert (from_old / path).read_bytes() == (further / path).read_bytes(), path
    assert main(["state", "save", str(sweep), str(old_state)]) == 0
    assert sorted(p.relative_to(old_state) for p in old_state.rglob("*") if p.is_file()) == sorted(
        p.relative_to(state) for p in state.rglob("*") if p.is_file()
    )
    later = torch.load(further / "seeds1-2" / "checkpoints" / "last.ckpt", weights_only=True)
    later["epoch"] = epoch + 3
    torch.save(later, further / "seeds1-2" / "checkpoints" / "last.ckpt")
    capsys.readouterr()
    assert main(["state", "restore", str(state), str(further)]) == 0
    assert f"is at epoch {epoch + 3}, the saved state at {epoch}; kept the newer" in capsys.readouterr().out
    assert torch.load(further / "seeds1-2" / "checkpoints" / "last.ckpt", weights_only=True)["epoch"] == epoch + 3
    shutil.rmtree(sweep)
    assert main(["state", "restore", str(state), str(sweep)]) == 0
    # The same command again resumes and lands on the uninterrupted result.
    subprocess.run(_train_command(job, epochs), check=True, env=env, capture_output=True, timeout=600)
    resumed, expected = _members(job.parent), _members(reference.parent)
    for seed in (1, 2):
        assert resumed[seed]["status"] == "completed"
        assert resumed[seed]["epochs"] == expected[seed]["epochs"] == epochs
        for split in ("best", "final"):  # float summation order only (threads), well under any reported digit
            for key, value in expected[seed][split].items():
                if isinstance(value, float):
                    assert math.isclose(resumed[seed][split][key], value, rel_tol=1e-5), (seed, split, key)
    # The curve logged before the kill is kept beside the resumed one (Lightning would delete it).
    before, after = (list(csv.DictReader((job / "csv" / f).open())) for f in ("metrics.part1.csv", "metrics.csv"))
    assert any(row["epoch"] == "0" for row in before)
    assert max(int(row["step"]) for row in before) <= min(int(row["step"]) for row in after), (before, after)
    assert max(int(row["epoch"]) for row in after if row["epoch"]) == epochs - 1
    # Restoring the old state again changes nothing: the job is further on (completed) here.
    stamp = (job / "ensemble.json").stat().st_mtime_ns
    assert main(["state", "restore", str(state), str(sweep)]) == 0
    assert (job / "ensemble.json").stat().st_mtime_ns == stamp
    assert not (job / "checkpoints" / "last.ckpt").exists()
    assert epoch >= 1
    # And once more: completed with this config, so nothing is trained or written.
    stamp = (job.parent / "seed1" / "metrics.json").stat().st_mtime_ns
    subprocess.run(_train_command(job, epochs), check=True, env=env, capture_output=True, timeout=600)
    assert (job.parent / "seed1" / "metrics.json").stat().st_mtime_ns == stamp


def test_completed_single_run_is_skipped_and_a_changed_config_is_not(tmp_path):
    cfg = compose_train(tmp_path / "run", *RUN, "trainer.max_epochs=1")
    first = run(cfg)
    metrics = tmp_path / "run" / "metrics.json"
    assert json.loads(metrics.read_text())["config_sha256"] == record.config_sha256(cfg)
    stamp = metrics.stat().st_mtime_ns
    assert run(cfg) == first
    assert metrics.stat().st_mtime_ns == stamp
    changed = compose_train(tmp_path / "run", *RUN, "trainer.max_epochs=2")
    assert record.completed(changed) is None
    run(changed)
    assert json.loads(metrics.read_text())["epochs"] == 2
    assert not list((tmp_path / "run" / "checkpoints").glob("best-v*.ckpt"))


def test_run_directory_means_the_checkpoint_its_record_names(tmp_path):
    run_dir = tmp_path / "sweep" / "step1" / "Dataset1" / "seed1"
    tiny_ltc_run(run_dir, "task_name=step1")  # its record says what its folder says (status groups by the record)
    named = Path(json.loads((run_dir / "metrics.json").read_text())["best_checkpoint"]).name
    assert resolve_run_checkpoint(run_dir) == run_dir / "checkpoints" / named
    moved = tmp_path / "moved"
    shutil.copytree(run_dir, moved)
    assert resolve_run_checkpoint(moved) == moved / "checkpoints" / named  # inside the copy, not the original
    record = json.loads((moved / "metrics.json").read_text())
    (moved / "metrics.json").write_text(json.dumps({**record, "best_checkpoint": "../../elsewhere.ckpt"}))
    with pytest.raises(FileNotFoundError, match=r"elsewhere\.ckpt, which is not in"):
        resolve_run_checkpoint(moved)  # only the file name counts: it is looked up inside the directory
    (moved / "metrics.json").write_text(json.dumps({"status": "running", "pid": 1}))
    with pytest.raises(RuntimeError, match="did not complete"):
        resolve_run_checkpoint(moved)
    (moved / "metrics.json").unlink()
    with pytest.raises(FileNotFoundError, match=r"no metrics\.json"):
        resolve_run_checkpoint(moved)
    # paraisite status: the completed run, an interrupted one (its process is gone) and pending ones.
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    interrupted = tmp_path / "sweep" / "step1" / "Dataset1" / "seed2"
    interrupted.mkdir(parents=True)
    (interrupted / "metrics.json").write_text(json.dumps({"status": "running", "pid": dead.pid}))
    output = subprocess.run(
        [sys.executable, "-m", "paraisite.cli.main", "status", str(tmp_path / "sweep"), "--seeds", "1-3"],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    assert "step1  Dataset1  1 completed, 1 interrupted, 1 pending" in output.stdout
    assert "total: 1 completed, 1 interrupted, 31 pending" in output.stdout


def test_a_job_another_live_process_is_training_is_refused_and_left_alone(tmp_path):
    """Two sweeps over one group once met at a seed: the second resumed the first's live run over the same files."""
    cfg = compose_train(tmp_path, *TINY_LTC)
    trainer_process = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    try:
        time.sleep(0.5)
        write_run_record(
            record.status_path(cfg),
            RunRecord(
                status="running", config_sha256=record.config_sha256(cfg), pid=trainer_process.pid, started=time.time()
            ),
        )
        before = record.status_path(cfg).read_bytes()
        with pytest.raises(RunInProgressError, match=f"process {trainer_process.pid} wrote it running"):
            run(cfg)
        assert record.status_path(cfg).read_bytes() == before  # not marked failed, not resumed
        assert not (tmp_path / "checkpoints").exists()
        # The same id in a record older than the process is a recycled id: the run is interrupted and trains.
        stale = RunRecord(
            status="running",
            config_sha256=record.config_sha256(cfg),
            pid=trainer_process.pid,
            started=time.time() - 3600,
        )
        write_run_record(record.status_path(cfg), stale)
        assert record.running_elsewhere(cfg) is None
        assert math.isfinite(run(cfg))
        assert record.completed(cfg) is not None
    finally:
        trainer_process.kill()
        trainer_process.wait()


def test_a_job_whose_lock_another_process_holds_is_refused_until_it_ends(tmp_path):
    """Two commands started together both found the record free; the job's lock lets only one of them train."""
    cfg = compose_train(tmp_path, *TINY_LTC)
    lock = Path(cfg.paths.output_dir) / record.LOCK_NAME
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLD_LOCK, str(lock)], stdout=subprocess.PIPE, text=True
    )  # fmt: skip
    try:
        assert holder.stdout is not None
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(RunInProgressError, match=f"process {holder.pid} holds its {record.LOCK_NAME}"):
            run(cfg)
        assert not record.status_path(cfg).exists()  # nothing written, not even a running record
    finally:
        holder.kill()
        holder.wait()
    assert math.isfinite(run(cfg))  # the kernel released the killed holder's lock
    assert record.completed(cfg) is not None


#: A process that takes a lock with ``exclusive_lock`` (as ``job_lock`` does), says so, and keeps it until killed.
HOLD_LOCK = """
import sys, time
from pathlib import Path
from paraisite.safety import exclusive_lock
with exclusive_lock(Path(sys.argv[1])) as holder:
    assert holder is None
    print("locked", flush=True)
    time.sleep(300)
"""


def test_last_checkpoint_follows_every_epoch_on_a_plateau(tmp_path):
    """An interrupted run resumes from its last epoch, not from its last improvement.

    lr=1e-30 leaves the weights as they are: the validation MAPE never improves after epoch 0, so Lightning's own
    ``save_last`` (written only with a new best, Lightning 2.6) kept ``last.ckpt`` at epoch 0 (a run stopped at epoch 51
    then resumed at epoch 0).
    """
    run_dir = tmp_path / "run"
    tiny_ltc_run(run_dir, "trainer.max_epochs=4", "model.optimizer.lr=1e-30")
    epochs = {
        name: torch.load(run_dir / "checkpoints" / f"{name}.ckpt", weights_only=False, map_location="cpu")["epoch"]
        for name in ("best", "last")
    }
    assert epochs == {"best": 0, "last": 3}  # last 0 on the old code
