"""Seeds trained together (one vectorised ensemble) against the same seeds trained one after another.

Both sides run the real Lightning ``fit`` (training + validation epochs, no checkpoints or loggers) on the
same machine, in the same process, with the same threads, members and plain runs built by the same
``prepare_run`` as ``paraisite-train``. Prints seed-epochs per second for each side and their ratio, on
Dataset2 and on an AFLOW subset, and projects the cost of the full-budget table (both protocols are the
same cost) from the per-structure rates.

Usage: python benchmarks/ensemble_throughput.py [--out FILE] [--threads N] [--seeds 9] [--aflow 1000]
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

from paraisite.config import config_dir
from paraisite.training.builders import member_config, prepare_run
from paraisite.training.ensemble import EnsembleDataModule, EnsembleRegressor

#: Training-split sizes of the full table's jobs (80 % of each dataset's usable structures).
FULL_TABLE_JOBS = {  # dataset: (training structures, validation structures, jobs: Steps I, II, III)
    "Dataset1": (76, 19, 3),
    "Dataset2": (114, 29, 3),
    "MIX": (190, 48, 3),
    "AFLOW": (2914, 729, 2),
}


def _trainer(epochs: int) -> pl.Trainer:
    return pl.Trainer(
        max_epochs=epochs,
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
    )


def _fit_seconds(model: pl.LightningModule, datamodule: pl.LightningDataModule, epochs: int) -> float:
    trainer = _trainer(epochs)
    start = time.perf_counter()
    trainer.fit(model, datamodule=datamodule)
    return time.perf_counter() - start


def measure(data: str, seeds: list[int], epochs: int, max_per_source: int | None) -> dict:
    """Seed-epochs/s of plain runs (one after another) and of one ensemble, same seeds and epochs."""
    overrides = [f"data={data}", "model/backbone=megnet_pretrained", "paths.output_dir=/tmp/paraisite-bench"]
    if max_per_source:
        overrides.append(f"max_per_source={max_per_source}")
    with initialize_config_dir(config_dir=str(config_dir()), version_base="1.3"):
        cfg = compose(config_name="train", overrides=overrides)
    prepared = [prepare_run(member_config(cfg, seed)) for seed in seeds]
    train_size = len(prepared[0][0].train_set)
    plain = sum(_fit_seconds(model, dm, epochs) for dm, model, _ in prepared)
    prepared = [prepare_run(member_config(cfg, seed)) for seed in seeds]  # fresh weights for the ensemble
    ensemble = EnsembleRegressor([model for _, model, _ in prepared])
    together = _fit_seconds(ensemble, EnsembleDataModule([dm for dm, _, _ in prepared]), epochs)
    seed_epochs = len(seeds) * epochs
    return {
        "data": data,
        "train_structures": train_size,
        "seeds": len(seeds),
        "epochs": epochs,
        "plain_seconds": round(plain, 2),
        "ensemble_seconds": round(together, 2),
        "plain_seed_epochs_per_s": round(seed_epochs / plain, 3),
        "ensemble_seed_epochs_per_s": round(seed_epochs / together, 3),
        "speedup": round(plain / together, 2),
        "ensemble_ms_per_structure_epoch": round(1000 * together / (seed_epochs * train_size), 3),
        "plain_ms_per_structure_epoch": round(1000 * plain / (seed_epochs * train_size), 3),
    }


def project_full_table(rates: dict[str, float], threads: int, seeds: int = 9, epochs: int = 300) -> float:
    """Core-hours of one full-budget table (one protocol) from ms per training structure-epoch per seed.

    ``rates`` maps ``small`` (Dataset1/2/MIX, measured on Dataset2) and ``AFLOW`` to that rate.
    """
    seconds = 0.0
    for name, (train, _, jobs) in FULL_TABLE_JOBS.items():
        rate = rates["AFLOW" if name == "AFLOW" else "small"]
        seconds += jobs * seeds * epochs * train * rate / 1000
    return seconds * threads / 3600


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/ensemble_throughput.json"))
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seeds", type=int, default=9)
    parser.add_argument("--aflow", type=int, default=1000, help="AFLOW structures kept (seeded subset)")
    parser.add_argument("--epochs-small", type=int, default=4)
    parser.add_argument("--epochs-aflow", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    seeds = list(range(1, args.seeds + 1))
    results = [
        measure("dataset2", seeds, args.epochs_small, None),
        measure("aflow", seeds, args.epochs_aflow, args.aflow),
    ]
    for row in results:
        print(
            f"{row['data']:>8} ({row['train_structures']} train, {row['seeds']} seeds x {row['epochs']} epochs): "
            f"plain {row['plain_seed_epochs_per_s']:.3f} seed-epochs/s, ensemble "
            f"{row['ensemble_seed_epochs_per_s']:.3f} -> {row['speedup']:.2f}x "
            f"({row['plain_ms_per_structure_epoch']:.2f} -> {row['ensemble_ms_per_structure_epoch']:.2f} "
            "ms per structure-epoch)"
        )
    by_data = {row["data"]: row for row in results}
    projection = {
        side: round(
            project_full_table(
                {
                    "small": by_data["dataset2"][f"{side}_ms_per_structure_epoch"],
                    "AFLOW": by_data["aflow"][f"{side}_ms_per_structure_epoch"],
                },
                args.threads,
            ),
            1,
        )
        for side in ("plain", "ensemble")
    }
    print(
        f"full-budget table, one protocol, {args.threads} threads: plain {projection['plain']} core-hours, "
        f"ensemble {projection['ensemble']} core-hours"
    )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    record = {
        "machine": {"cpus": torch.get_num_threads(), "platform": platform.platform(), "torch": torch.__version__},
        "threads": args.threads,
        "results": results,
        "full_table_core_hours": projection,
    }
    args.out.write_text(json.dumps(record, indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
