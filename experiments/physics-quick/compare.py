"""Own-split validation MAPE, with and without the physics features, paired by seed (same split).

Usage: python experiments/physics-quick/compare.py [--datasets Dataset1 ...] <without runs> <with runs> [...]
Each argument is a folder holding step2/<Dataset>/seed<N>/metrics.json (a sweep group or a committed runs/ copy).
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
from scipy.stats import wilcoxon

from paraisite.record import read_run_record

DATASETS = ("Dataset1", "Dataset2", "MIX")
SEEDS = range(1, 10)


def mapes(folder: Path, dataset: str) -> np.ndarray:
    """Best validation MAPE of seeds 1-9 on ``dataset``, in seed order."""
    values = []
    for seed in SEEDS:
        record = read_run_record(folder / "step2" / dataset / f"seed{seed}" / "metrics.json")
        values.append(float((record.best or {})["mape"]))
    return np.array(values)


def main(argv: list[str]) -> None:
    """Print the table rows of each (without, with) pair."""
    datasets = DATASETS
    if argv and argv[0] == "--datasets":
        folders = [i for i, arg in enumerate(argv) if i > 0 and not arg.startswith("Dataset") and arg != "MIX"]
        datasets, argv = tuple(argv[1 : folders[0]]), argv[folders[0] :]
    print(f"| runs | {' | '.join(datasets)} |\n|---|{'---|' * len(datasets)}")
    pairs = list(zip(argv[::2], argv[1::2], strict=True))
    for without, with_ in pairs:
        for label, folder in (("without", without), ("with", with_)):
            cells = [f"{m.mean():.2f} ({m.std(ddof=1):.2f})" for m in (mapes(Path(folder), d) for d in datasets)]
            print(f"| {label}: `{folder}` | " + " | ".join(cells) + " |")
        cells = []
        for dataset in datasets:
            diff = mapes(Path(with_), dataset) - mapes(Path(without), dataset)
            p_value = wilcoxon(diff).pvalue
            cells.append(f"{diff.mean():+.3f}, {int((diff < 0).sum())}/9, p={p_value:.2f}")
        print("| with - without (mean, seeds better, Wilcoxon p) | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main(sys.argv[1:])
