"""Time CGCNN featurisation (structure -> graph) and forward passes on the CPU; print and write JSON.

Usage: ``python benchmarks/cgcnn_featurize.py [--out cgcnn_timings.json] [--repeats 20]``. Structures: the 10
``txie-93/cgcnn`` sample CIFs (2 to 12 atoms) and 2x2x2 supercells of them (16 to 96 atoms), through the registry
(set ``PARAISITE_MIRROR`` / ``PARAISITE_CACHE`` for an offline copy).
"""

from __future__ import annotations

import argparse
import json
import platform
import time
import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from pymatgen.core import Structure
from torch_geometric.data import Batch

from paraisite.data import registry
from paraisite.data.cgcnn_graph import CGCNN_REPO
from paraisite.models.cgcnn import load_cgcnn_pretrained


def median_seconds(run: Callable[[], object], repeats: int) -> float:
    """Median wall time of ``run`` over ``repeats`` calls, after one warm-up call."""
    run()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        run()
        times.append(time.perf_counter() - start)
    return float(np.median(times))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("cgcnn_timings.json"))
    parser.add_argument("--repeats", type=int, default=20)
    args = parser.parse_args()

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # pymatgen's CIF rounding notices
        cifs = registry.select(CGCNN_REPO, "data/sample-regression/*.cif")
        samples = [Structure.from_file(registry.fetch_entry(f)) for f in cifs]
    supercells = [s.make_supercell([2, 2, 2], in_place=False) for s in samples]
    pretrained = load_cgcnn_pretrained("formation-energy-per-atom")
    featurize, model = pretrained.featurizer, pretrained.model
    torch.set_num_threads(1)

    results: dict[str, object] = {
        "machine": platform.processor() or platform.machine(),
        "torch": torch.__version__,
        "torch_threads": 1,
    }
    for label, structures in (("samples", samples), ("supercells_2x2x2", supercells)):
        seconds = median_seconds(lambda group=structures: [featurize(s) for s in group], args.repeats)
        graphs = [featurize(s) for s in structures]
        batch = Batch.from_data_list(graphs)
        with torch.no_grad():
            forward = median_seconds(lambda b=batch: model(b), args.repeats)
        collate = median_seconds(lambda g=graphs: Batch.from_data_list(g), args.repeats)
        results[label] = {
            "structures": len(structures),
            "atoms": [len(s) for s in structures],
            "featurize_ms_per_structure": 1e3 * seconds / len(structures),
            "collate_ms_per_batch": 1e3 * collate,
            "forward_ms_per_batch": 1e3 * forward,
        }

    big_batch = Batch.from_data_list([featurize(s) for s in samples] * 26)  # 260 structures, like predict.py's 256
    with torch.no_grad():
        results["forward_ms_batch_260_samples"] = 1e3 * median_seconds(lambda: model(big_batch), args.repeats)
    end_to_end = median_seconds(lambda: pretrained.predict_structures(samples), args.repeats)
    results["end_to_end_structures_per_s_samples"] = len(samples) / end_to_end

    print(json.dumps(results, indent=2))
    args.out.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
