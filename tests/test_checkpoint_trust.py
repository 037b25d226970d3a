"""Checkpoints from users are loaded weights-only, with allowed classes only, even when torch is told otherwise.

Crafted files are real pickles that would run a command (``touch <marker>``); the tests check that the command
did not run. The first one also shows that torch *would* run it when ``weights_only`` is left to the environment.
"""

from __future__ import annotations

import hashlib
import lzma
import os
import pickle
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from paraisite.checkpoints import CheckpointTrustError, check_target, load_checkpoint
from paraisite.cli.main import main
from paraisite.models.regressor import load_ltc_checkpoint
from paraisite.safety import UnsafeFileError, decompressed
from paraisite.zoo.predictors import load_predictor
from tests.helpers import tiny_ltc_run

FORCE_UNSAFE = {"TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD": "1"}


class RunsCommand:
    """Unpickling this object runs ``os.system(command)``: the shape of a malicious checkpoint."""

    def __init__(self, command: str) -> None:
        self.command = command

    def __reduce__(self):
        return os.system, (self.command,)


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    run_dir = tmp_path_factory.mktemp("trusted-run")
    tiny_ltc_run(run_dir)
    return run_dir


@pytest.fixture
def structure(tmp_path) -> Path:
    path = tmp_path / "NaCl.vasp"
    path.write_text("NaCl\n1.0\n0 2.8 2.8\n2.8 0 2.8\n2.8 2.8 0\nNa Cl\n1 1\ndirect\n0 0 0\n0.5 0.5 0.5\n")
    return path


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def crafted_checkpoint(path: Path, marker: Path) -> Path:
    """A zip-format ``.ckpt`` (as ``torch.save`` writes) whose state_dict unpickles into ``touch marker``."""
    torch.save({"state_dict": RunsCommand(f"touch {marker}"), "hyper_parameters": {}}, path)
    return path


def test_crafted_pickle_is_refused_by_predict_even_when_torch_is_forced_unsafe(tmp_path, structure):
    marker = tmp_path / "code-ran"
    evil = crafted_checkpoint(tmp_path / "evil.ckpt", marker)
    env = {**os.environ, **FORCE_UNSAFE}

    # the file is really malicious: torch's own default, overridden by the variable, runs the command
    unsafe = "import sys, torch; torch.load(sys.argv[1])"
    subprocess.run([sys.executable, "-c", unsafe, str(evil)], env=env, capture_output=True, check=False, timeout=120)
    assert marker.exists()
    marker.unlink()

    command = [sys.executable, "-m", "paraisite.cli.main", "predict", "--model", str(evil), str(structure)]
    command += ["-o", str(tmp_path / "out.csv"), "--workers", "0"]
    result = subprocess.run(command, env=env, capture_output=True, text=True, check=False, timeout=300)
    assert result.returncode == 1
    assert f"{evil}: refused: the checkpoint needs more than weights to load" in result.stderr
    assert "posix.system" in result.stderr or "os.system" in result.stderr  # the global that was refused
    assert not marker.exists()
    assert not (tmp_path / "out.csv").exists()


def test_legacy_pickle_file_is_refused(tmp_path, monkeypatch):
    monkeypatch.setenv(*next(iter(FORCE_UNSAFE.items())))
    marker = tmp_path / "code-ran"
    evil = tmp_path / "legacy.ckpt"
    evil.write_bytes(pickle.dumps({"state_dict": RunsCommand(f"touch {marker}")}))
    with pytest.raises(CheckpointTrustError, match="refused"):
        load_checkpoint(evil)
    assert not marker.exists()


@pytest.mark.parametrize(
    ("where", "target"),
    [
        ("graph", "os.system"),
        ("graph", "paraisite.data.graphs.os.system"),  # a module reached through an allowed one
        ("backbone", "subprocess.Popen"),
        ("head", "paraisite.models.heads.torch.load"),
        ("head", "paraisite.models.heads._private"),
    ],
)
def test_checkpoint_naming_a_class_outside_paraisite_is_refused(tmp_path, run_dir, monkeypatch, where, target):
    monkeypatch.setenv(*next(iter(FORCE_UNSAFE.items())))
    checkpoint = torch.load(run_dir / "checkpoints" / "best.ckpt", weights_only=True)
    marker = tmp_path / "code-ran"
    checkpoint["hyper_parameters"][where] = {"_target_": target, "command": f"touch {marker}", "args": ["true"]}
    tampered = tmp_path / "tampered.ckpt"
    torch.save(checkpoint, tampered)
    with pytest.raises(CheckpointTrustError, match=rf"refused: hyper_parameters\.{where}\._target_"):
        load_ltc_checkpoint(tampered)
    assert main(["predict", "--model", str(tampered), str(tmp_path), "-o", str(tmp_path / "out.csv")]) == 1
    assert not marker.exists()


def test_allowed_targets_are_classes_of_the_allowed_modules():
    check_target("paraisite.models.megnet.MEGNetBackbone", "backbone", "x.ckpt")
    check_target("torch.optim.Adam", "optimizer", "x.ckpt")
    with pytest.raises(CheckpointTrustError, match="not a class"):
        check_target("paraisite.models.cgcnn.load_cgcnn_pretrained", "backbone", "x.ckpt")


def test_real_checkpoint_loads_weights_only_and_predicts(run_dir, structure, tmp_path, monkeypatch):
    monkeypatch.setenv(*next(iter(FORCE_UNSAFE.items())))
    checkpoint = run_dir / "checkpoints" / "best.ckpt"
    model, loaded = load_ltc_checkpoint(checkpoint)
    reference = torch.load(checkpoint, weights_only=True)["state_dict"]
    assert all(torch.equal(model.state_dict()[key], value) for key, value in reference.items())
    assert "paraisite_applicability" in loaded
    predictor = load_predictor(run_dir)
    assert predictor.references is not None
    output = tmp_path / "out.csv"
    assert main(["predict", "--model", str(run_dir), str(structure), "-o", str(output), "--workers", "0"]) == 0


def test_checkpoint_with_another_sha256_is_refused(run_dir):
    with pytest.raises(CheckpointTrustError, match="sha256 mismatch"):
        load_checkpoint(run_dir / "checkpoints" / "best.ckpt", expected_sha256="0" * 64)


def test_xz_checkpoint_loads_like_the_plain_file_and_is_checked_the_same_way(run_dir, tmp_path):
    checkpoint = run_dir / "checkpoints" / "best.ckpt"
    packed = tmp_path / "best.ckpt.xz"
    packed.write_bytes(lzma.compress(checkpoint.read_bytes()))
    plain, loaded = load_checkpoint(checkpoint), load_checkpoint(packed, expected_sha256=sha256(packed))
    assert all(torch.equal(loaded["state_dict"][key], value) for key, value in plain["state_dict"].items())
    with pytest.raises(CheckpointTrustError, match="sha256 mismatch"):  # the hash is of the stored (xz) bytes
        load_checkpoint(packed, expected_sha256=sha256(checkpoint))
    crafted = crafted_checkpoint(tmp_path / "crafted.ckpt", tmp_path / "ran")
    crafted_xz = tmp_path / "crafted.ckpt.xz"
    crafted_xz.write_bytes(lzma.compress(crafted.read_bytes()))
    with pytest.raises(CheckpointTrustError, match=r"crafted\.ckpt\.xz: refused"):
        load_checkpoint(crafted_xz)
    assert not (tmp_path / "ran").exists()
    truncated = tmp_path / "truncated.ckpt.xz"
    truncated.write_bytes(packed.read_bytes()[: packed.stat().st_size // 2])
    with pytest.raises(UnsafeFileError, match=r"truncated\.ckpt\.xz: not a readable xz file"):
        load_checkpoint(truncated)


def test_compressed_content_is_cut_off_at_its_limit(tmp_path):
    bomb = tmp_path / "bomb.ckpt.xz"
    bomb.write_bytes(lzma.compress(bytes(10**6)))  # 1 MB of zeros in a few hundred bytes
    assert bomb.stat().st_size < 1000
    assert decompressed(bomb.read_bytes(), bomb, 10**6) == bytes(10**6)
    with pytest.raises(UnsafeFileError, match=r"bomb\.ckpt\.xz: content larger than the 999999-byte limit"):
        decompressed(bomb.read_bytes(), bomb, 10**6 - 1)
