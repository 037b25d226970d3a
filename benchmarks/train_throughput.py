"""Training throughput on this machine: prints figures and writes them to JSON.

- structures/s for forward + backward + Adam step at batch sizes 8, 32, 128 (pretrained MEGNet + MLP head);
- seconds per training epoch (batch 8) and per validation pass on Dataset1, Dataset2, MIX and AFLOW;
- graph cache: time to load each dataset's graphs from the cache (graphs are never rebuilt across runs).

Usage: python benchmarks/train_throughput.py [--out FILE] [--threads N] [--repeats R]
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import torch

from paraisite.data.datamodule import LTCDataModule
from paraisite.data.graphs import MEGNetGraphBuilder, load_graph_set
from paraisite.models.regressor import LTCRegressor

DATASETS = {"Dataset1": ["dataset1"], "Dataset2": ["dataset2"], "MIX": ["dataset1", "dataset2"], "AFLOW": ["aflow"]}


def make_model(target_stats: dict[str, float]) -> LTCRegressor:
    model = LTCRegressor(
        backbone={"_target_": "paraisite.models.megnet.MEGNetBackbone"},
        head={"_target_": "paraisite.models.heads.MLPHead"},
        target_stats=target_stats,
    )
    model.backbone.load_published("MEGNet-MP-2018.6.1-Eform")
    return model


def train_steps(model: LTCRegressor, batches: list, optimizer: torch.optim.Optimizer) -> float:
    """Seconds for one pass of forward + backward + step over ``batches``."""
    model.train()
    start = time.perf_counter()
    for graph, lattice, state_attr, tc in batches:
        loss = model._loss(model(graph, lattice, state_attr), tc)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return time.perf_counter() - start


@torch.no_grad()
def validation_pass(model: LTCRegressor, batches: list) -> float:
    model.eval()
    start = time.perf_counter()
    for graph, lattice, state_attr, _ in batches:
        model.predict_tc(graph, lattice, state_attr)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="benchmarks/results/train_throughput.json")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    results: dict = {"machine": platform.processor() or platform.machine(), "threads": args.threads, "cache_load_s": {}}

    for name, sources in DATASETS.items():
        start = time.perf_counter()
        for source in sources:
            load_graph_set(source, MEGNetGraphBuilder())
        results["cache_load_s"][name] = round(time.perf_counter() - start, 3)

    aflow = LTCDataModule("AFLOW", ["aflow"], seed=1, batch_size=8)
    aflow.setup()
    model = make_model(aflow.target_stats)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    results["throughput"] = {}
    for batch_size in (8, 32, 128):
        loader = LTCDataModule("AFLOW", ["aflow"], seed=1, batch_size=batch_size)
        loader.setup()
        batches = list(loader.train_dataloader())[: max(4, 512 // batch_size)]
        train_steps(model, batches[:2], optimizer)  # warm-up
        seconds = min(train_steps(model, batches, optimizer) for _ in range(args.repeats))
        structures = sum(int(tc.numel()) for *_, tc in batches)
        results["throughput"][batch_size] = {
            "structures_per_s": round(structures / seconds, 1),
            "ms_per_batch": round(1000 * seconds / len(batches), 1),
        }
        rate, per_batch = results["throughput"][batch_size].values()
        print(f"batch {batch_size:4d}: {rate:7.1f} structures/s, {per_batch:6.1f} ms/batch")

    results["epoch_s"] = {}
    for name, sources in DATASETS.items():
        datamodule = LTCDataModule(name, sources, seed=1, batch_size=8)
        datamodule.setup()
        train_batches, val_batches = list(datamodule.train_dataloader()), list(datamodule.val_dataloader())
        seconds = train_steps(model, train_batches, optimizer)
        val_seconds = validation_pass(model, val_batches)
        results["epoch_s"][name] = {
            "train_structures": len(datamodule.train_set),
            "train_epoch_s": round(seconds, 2),
            "validation_s": round(val_seconds, 2),
        }
        count = len(datamodule.train_set)
        print(f"{name:8s}: train epoch {seconds:6.2f} s ({count} structures), validation {val_seconds:5.2f} s")
    print("graph cache load (s):", results["cache_load_s"])
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2))
    print(f"written to {out}")


if __name__ == "__main__":
    main()
