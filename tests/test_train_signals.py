"""SIGTERM during training: the run records that it was stopped, keeps its resume state and exits non-zero."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

RUN = ("data=dataset1", "model/backbone=megnet_scratch", "max_per_source=40", "logger=none", "cross_eval=[]")


def test_sigterm_during_training_exits_143_with_a_resumable_record(tmp_path):
    job = tmp_path / "job"
    command = [
        *(sys.executable, "-m", "paraisite.training.train", *RUN),
        *("callbacks.progress_bar=null", "trainer.max_epochs=200", f"hydra.run.dir={job}"),
    ]
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    process = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    last = job / "checkpoints" / "last.ckpt"
    deadline = time.monotonic() + 300
    while not last.is_file() and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    assert last.is_file(), "no checkpoint was written before the deadline"
    process.send_signal(signal.SIGTERM)
    _, stderr = process.communicate(timeout=300)
    assert process.returncode == 143, stderr[-2000:]  # 0 before the fix
    record = json.loads((job / "metrics.json").read_text())
    assert record["status"] == "failed"
    assert record["error"].startswith(f"stopped by SIGTERM; resumable from {last}")
    assert last.is_file()
