"""Where a training epoch's time goes: data, forward, backward, optimiser, validation and the rest.

Runs the real Lightning ``fit`` of a plain run (one seed) and of a vectorised ensemble (``--seeds`` seeds) with
Lightning's ``SimpleProfiler``, on the same data and machine, and splits each epoch's wall time into:

- ``data``: fetching and collating training batches (``train_dataloader_next``);
- ``forward``: the training step (forward pass and loss);
- ``backward``: the backward pass;
- ``optimizer``: the optimiser step itself (its closure, i.e. forward and backward, subtracted);
- ``validation``: validation steps, batches and epoch-end metrics (it runs inside the training epoch);
- ``other``: the rest of the epoch (Lightning hooks, logging, callbacks, metric bookkeeping).

Usage: python benchmarks/overhead_profile.py [--data dataset2] [--epochs 3] [--seeds 9] [--out FILE]
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import pytorch_lightning as pl
import torch
from hydra import compose, initialize_config_dir
from pytorch_lightning.profilers import SimpleProfiler

from paraisite.config import config_dir
from paraisite.training.builders import member_config, prepare_run
from paraisite.training.ensemble import EnsembleDataModule, EnsembleRegressor

#: Profiled actions of the validation loop (it runs at the end of each training epoch).
VALIDATION_ACTIONS = ("validation_step", "val_next", "on_validation_epoch_end")


def _total(durations: dict[str, list[float]], *fragments: str) -> float:
    """Seconds of every profiled action whose name contains all ``fragments``."""
    return sum(sum(values) for name, values in durations.items() if all(f in name for f in fragments))


def split(model: pl.LightningModule, datamodule: pl.LightningDataModule, epochs: int) -> dict[str, float]:
    """Per-epoch seconds of each part (see the module docstring) for one ``fit``."""
    profiler = SimpleProfiler(dirpath="/tmp/paraisite-bench", filename="simple-profiler")  # its table: a file
    trainer = pl.Trainer(
        max_epochs=epochs,
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        profiler=profiler,
    )
    start = time.perf_counter()
    trainer.fit(model, datamodule=datamodule)
    wall = time.perf_counter() - start
    durations = profiler.recorded_durations
    epoch = _total(durations, "run_training_epoch")
    parts = {
        "data": _total(durations, "train_dataloader_next"),
        "forward": _total(durations, "training_step"),
        "backward": _total(durations, "backward"),
        "optimizer": _total(durations, "optimizer_step"),
        "validation": sum(_total(durations, name) for name in VALIDATION_ACTIONS),
    }
    # optimizer_step wraps the closure (forward + backward): keep only the step itself
    parts["optimizer"] = max(parts["optimizer"] - parts["forward"] - parts["backward"], 0.0)
    parts["other"] = max(epoch - sum(parts.values()), 0.0)
    result = {name: round(seconds / epochs, 3) for name, seconds in parts.items()}
    result["epoch"] = round(epoch / epochs, 3)
    result["fit_wall_per_epoch"] = round(wall / epochs, 3)
    return result


def main() -> None:
    """Profile a plain run and an ensemble; print and write the split."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default="dataset2")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--seeds", type=int, default=9)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/overhead_profile.json"))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    overrides = [f"data={args.data}", "model/backbone=megnet_pretrained", "paths.output_dir=/tmp/paraisite-bench"]
    with initialize_config_dir(config_dir=str(config_dir()), version_base="1.3"):
        cfg = compose(config_name="train", overrides=overrides)
    datamodule, model, _ = prepare_run(member_config(cfg, 1))
    plain = split(model, datamodule, args.epochs)
    prepared = [prepare_run(member_config(cfg, seed)) for seed in range(1, args.seeds + 1)]
    ensemble_model = EnsembleRegressor([m for _, m, _ in prepared])
    ensemble = split(ensemble_model, EnsembleDataModule([dm for dm, _, _ in prepared]), args.epochs)
    report = {
        "data": args.data,
        "train_structures": len(datamodule.train_set),
        "epochs": args.epochs,
        "threads": args.threads,
        "machine": f"{platform.machine()}, {torch.get_num_threads()} torch threads",
        "plain_one_seed": plain,
        f"ensemble_{args.seeds}_seeds": ensemble,
    }
    for name, parts in (("plain, 1 seed", plain), (f"ensemble, {args.seeds} seeds", ensemble)):
        shown = [k for k in parts if k not in {"epoch", "fit_wall_per_epoch"}]
        shares = ", ".join(f"{k} {100 * parts[k] / parts['epoch']:.0f} %" for k in shown)
        print(f"{name}: {parts['epoch']:.2f} s/epoch: {shares}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
