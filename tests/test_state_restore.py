"""``paraisite state restore``: a single run moves exactly (best score, best checkpoint, curve), and a wrong state or
destination is refused whole, with the reason and a non-zero exit status, leaving the destination as it was."""

from __future__ import annotations

import io
import json
import lzma
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import pytorch_lightning as pl
import torch

from paraisite.cli.main import main
from paraisite.record import RunRecord, write_run_record
from paraisite.training.train import run
from tests.helpers import compose_train, read_rows

RUN = (
    "data=dataset1",
    "model/backbone=megnet_scratch",
    "max_per_source=20",
    "logger=csv",
    "callbacks.progress_bar=null",
    "cross_eval=[]",
    "trainer.max_epochs=4",
)
STOP = ("+callbacks.stop._target_=tests.test_state_restore.StopAt", "+callbacks.stop.epoch=2")
PROBE = ("+callbacks.probe._target_=tests.test_state_restore.BestScoreProbe",)


class StopAt(pl.Callback):
    """Fails the run when ``epoch`` starts, as a crash would (its last.ckpt is the previous epoch's)."""

    def __init__(self, epoch: int) -> None:
        self.epoch = epoch

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.current_epoch == self.epoch:
            raise RuntimeError(f"interrupted at epoch {self.epoch}")


class BestScoreProbe(pl.Callback):
    """Writes to ``path`` the best score Lightning's checkpoint callback starts from once the run has resumed."""

    def __init__(self, path: str) -> None:
        self.path = Path(path)

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        score = trainer.checkpoint_callback.best_model_score
        self.path.write_text(str(None if score is None else float(score)))


def checkpoint_state(path: Path) -> dict:
    content = torch.load(path, weights_only=True)
    return next(v for k, v in content["callbacks"].items() if k.startswith("ModelCheckpoint"))


@pytest.fixture(scope="module")
def saved(tmp_path_factory) -> tuple[Path, Path]:
    """A single run interrupted after epoch 1 (a real failure), and its state saved by ``state save``."""
    root = tmp_path_factory.mktemp("state")
    sweep, state = root / "sweep", root / "state"
    with pytest.raises(RuntimeError, match="interrupted at epoch 2"):
        run(compose_train(sweep / "job", *RUN, *STOP))
    assert main(["state", "save", str(sweep), str(state)]) == 0
    return sweep, state


def test_a_single_run_restored_elsewhere_keeps_its_best_score_checkpoint_and_curve(tmp_path, saved):
    sweep, state = saved
    before = checkpoint_state(sweep / "job" / "checkpoints" / "last.ckpt")
    assert before["best_model_score"] is not None
    moved = tmp_path / "elsewhere"
    assert main(["state", "restore", str(state), str(moved)]) == 0
    after = checkpoint_state(moved / "job" / "checkpoints" / "last.ckpt")
    folder = os.path.realpath(moved / "job" / "checkpoints")
    assert after["dirpath"] == folder
    assert after["best_model_path"] == f"{folder}/best.ckpt"
    assert float(after["best_model_score"]) == float(before["best_model_score"])
    probe = tmp_path / "best-score-at-resume.txt"
    best = run(compose_train(moved / "job", *RUN, *PROBE, f"+callbacks.probe.path={probe}"))  # same job: resumed
    assert probe.read_text() == str(float(before["best_model_score"]))  # "None" before the fix
    result = json.loads((moved / "job" / "metrics.json").read_text())
    assert result["status"] == "completed"
    curve = [*read_rows(moved / "job" / "csv" / "metrics.part1.csv"), *read_rows(moved / "job" / "csv" / "metrics.csv")]
    scores = {int(row["epoch"]): float(row["val/mape"]) for row in curve if row.get("val/mape")}
    assert sorted(scores) == [0, 1, 2, 3]  # two epochs before the move, two after
    assert best == result["best"]["mape"] == pytest.approx(min(scores.values()), rel=1e-4)


def _set_epoch(state: Path, epoch: int) -> None:
    packed = state / "job" / "checkpoints" / "last.ckpt.xz"
    content = torch.load(io.BytesIO(lzma.decompress(packed.read_bytes())), weights_only=True)
    content["epoch"] = epoch
    buffer = io.BytesIO()
    torch.save(content, buffer)
    packed.write_bytes(lzma.compress(buffer.getvalue()))


def _truncate(state: Path) -> None:
    packed = state / "job" / "checkpoints" / "best.ckpt.xz"
    packed.write_bytes(packed.read_bytes()[: packed.stat().st_size // 2])


def _link(state: Path) -> None:
    curve = state / "job" / "csv" / "metrics.csv"
    curve.unlink()
    curve.symlink_to("/etc/hostname")


def _state_link(state: Path) -> None:
    real = state.with_name("real-state")
    state.rename(real)
    state.symlink_to(real)


CASES = [  # (case, tampering of the state copy, message)
    ("a link", _link, "a link in the state folder; nothing was restored"),
    ("a FIFO", lambda state: os.mkfifo(state / "job" / "notes"), "not a regular file (a FIFO"),
    ("a malformed record", lambda state: (state / "job" / "metrics.json").write_text("{"), "cannot restore: "),
    ("an epoch the checkpoint does not have", lambda state: _set_epoch(state, 999), "its epoch 999 disagrees"),
    ("a corrupt checkpoint", _truncate, "best.ckpt.xz: not a readable xz file"),
    ("an empty state", lambda state: shutil.rmtree(state / "job"), "no interrupted job with a last.ckpt"),
    ("no state", shutil.rmtree, "no such folder"),
    ("a link as the state folder", _state_link, "a link; give the folder itself"),  # "no such folder" before
]


def snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.mark.parametrize(("case", "tamper", "message"), CASES, ids=[case[0] for case in CASES])
def test_a_wrong_state_is_refused_whole_and_the_destination_left_as_it_was(
    tmp_path, saved, capsys, case, tamper, message
):
    _, state = saved
    destination = tmp_path / "destination"
    assert main(["state", "restore", str(state), str(destination)]) == 0
    (destination / "job" / "csv" / "metrics.csv").write_text("the destination's own curve\n")
    before = snapshot(destination)
    tampered = tmp_path / "tampered"
    shutil.copytree(state, tampered)
    tamper(tampered)
    capsys.readouterr()
    assert main(["state", "restore", str(tampered), str(destination)]) == 1
    assert message in capsys.readouterr().err
    assert snapshot(destination) == before
    assert not list(destination.glob(".paraisite-restore-*"))


def test_a_decompression_bomb_is_stopped_at_the_bound(tmp_path, saved, capsys, monkeypatch):
    _, state = saved
    bomb = tmp_path / "bomb"
    shutil.copytree(state, bomb)
    (bomb / "job" / "checkpoints" / "best.ckpt.xz").write_bytes(lzma.compress(bytes(50_000_000)))  # 8 kB
    monkeypatch.setenv("PARAISITE_MAX_STATE_BYTES", "20000000")  # the real checkpoints are about 6 MB
    assert main(["state", "restore", str(bomb), str(tmp_path / "destination")]) == 1
    assert "best.ckpt.xz: decompresses to more than 20000000 bytes" in capsys.readouterr().err
    assert not (tmp_path / "destination").exists()  # nothing restored: not even the (empty) folders


def test_a_job_being_trained_or_of_another_config_is_refused_and_a_completed_one_skipped(tmp_path, saved, capsys):
    _, state = saved
    job = tmp_path / "sweep" / "job"
    job.mkdir(parents=True)
    holder = subprocess.Popen(  # another process holds the job's training lock, as paraisite-train does
        [
            sys.executable,
            "-c",
            (
                "import sys, time; from pathlib import Path; from paraisite.safety import exclusive_lock\n"
                f"with exclusive_lock(Path({str(job)!r}) / '.paraisite-train.lock'):\n"
                "    print('held', flush=True); time.sleep(60)"
            ),
        ],
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])},
    )
    try:
        assert holder.stdout.readline().strip() == "held"
        assert main(["state", "restore", str(state), str(job.parent)]) == 1
        assert f"refused job: process {holder.pid} is training it" in capsys.readouterr().err
        assert not (job / "checkpoints").exists()
    finally:
        holder.kill()
        holder.wait()
    write_run_record(job / "metrics.json", RunRecord(status="failed", config_sha256="0" * 64))
    assert main(["state", "restore", str(state), str(job.parent)]) == 1
    assert "refused job: it holds another config there" in capsys.readouterr().err
    assert not (job / "checkpoints").exists()
    done = {"data": {"name": "Dataset1"}, "task_name": "train", "best": {"mape": 0.5}}
    write_run_record(job / "metrics.json", RunRecord(status="completed", config_sha256="0" * 64, **done))
    assert main(["state", "restore", str(state), str(job.parent)]) == 0
    assert "skipped job: completed there; nothing restored" in capsys.readouterr().out
    assert not (job / "checkpoints").exists()


def test_saving_a_missing_sweep_is_an_error(tmp_path, capsys):
    assert main(["state", "save", str(tmp_path / "missing"), str(tmp_path / "state")]) == 1
    assert "no such sweep folder" in capsys.readouterr().err
