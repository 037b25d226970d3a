"""End-to-end throughput of ``paraisite predict`` (files -> CSV, model loaded once); print and write JSON.

Usage: ``python benchmarks/predict_throughput.py [--files 500] [--workers 0 2] [--ltc RUN_DIR_OR_CKPT]
[--out predict_throughput.json]``. The 10 ``txie-93/cgcnn`` sample CIFs (through the registry: set
``PARAISITE_MIRROR`` / ``PARAISITE_CACHE`` offline) are copied ``--files`` times in all into a temporary folder, and
also written as POSCAR files, then predicted with ``cgcnn-formation-energy-per-atom`` (and with the LTC checkpoint,
if given), once per ``--workers`` value. Reading and graphing are timed alone too: for these CIFs (full space-group
symmetry), pymatgen's CIF parser is the bulk of the cost; the POSCAR figures show the rest of the pipeline.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import tempfile
import time
from pathlib import Path

import torch

from paraisite.data import registry
from paraisite.data.cgcnn_graph import CGCNN_REPO
from paraisite.data.sources import read_structure
from paraisite.zoo.files import structure_paths
from paraisite.zoo.predictors import Predictor, load_predictor
from paraisite.zoo.scan import read_and_graph, run_predictions


def replicate_samples(folder: Path, count: int, file_format: str) -> list[str]:
    """``count`` files in ``folder``, cycling through the 10 samples: copies of the CIFs, or POSCARs of them."""
    folder.mkdir()
    samples = [registry.fetch_entry(entry) for entry in registry.select(CGCNN_REPO, "data/sample-regression/*.cif")]
    poscars = [read_structure(sample).to(fmt="poscar") for sample in samples]
    for index in range(count):
        source = samples[index % len(samples)]
        if file_format == "cif":
            shutil.copyfile(source, folder / f"{index:05d}-{source.name}")
        else:
            (folder / f"{index:05d}-{source.stem}.vasp").write_text(poscars[index % len(samples)])
    return structure_paths([folder])


def time_model(predictor: Predictor, paths: list[str], output: Path, workers: int, batch_size: int) -> dict:
    """Structures per second of reading + graphing alone (in this process), and of the whole prediction into a CSV."""
    build = predictor.graph_builder()
    start = time.perf_counter()
    for path in paths:
        read_and_graph(build, path)
    read_seconds = time.perf_counter() - start
    start = time.perf_counter()
    summary = run_predictions(predictor, paths, output, batch_size=batch_size, workers=workers)
    seconds = time.perf_counter() - start
    return {
        "workers": workers,
        "structures": len(paths),
        "failed": summary.failed,
        "read_and_graph_one_process_structures_per_s": round(len(paths) / read_seconds, 1),
        "end_to_end_structures_per_s": round(len(paths) / seconds, 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--files", type=int, default=500)
    parser.add_argument("--workers", type=int, nargs="+", default=[0, os.cpu_count() or 1])
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--ltc", help="an LTC checkpoint, run directory or bundle to time as well")
    parser.add_argument("--out", type=Path, default=Path("predict_throughput.json"))
    args = parser.parse_args()

    models = {"cgcnn-formation-energy-per-atom": load_predictor("cgcnn-formation-energy-per-atom")}
    if args.ltc:
        models[args.ltc] = load_predictor(args.ltc)
    results: dict[str, object] = {
        "machine": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "reference": "original CGCNN predict.py: about 13 structures/s end to end on this machine",
    }
    with tempfile.TemporaryDirectory() as tmp:
        for file_format in ("cif", "poscar"):
            paths = replicate_samples(Path(tmp) / file_format, args.files, file_format)
            for name, predictor in models.items():
                results[f"{name} ({file_format})"] = [
                    time_model(predictor, paths, Path(tmp) / "out.csv", workers, args.batch_size)
                    for workers in args.workers
                ]
    print(json.dumps(results, indent=2))
    args.out.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
