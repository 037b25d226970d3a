"""Per-member training and validation MAPE per epoch of ensemble jobs, from their CSV logs, as one long CSV.

Usage: early_curves.py --max-epoch 7 --out FILE relu=<seeds... job dir> silu=<seeds... job dir>
"""

from __future__ import annotations

import argparse
import csv
import re
from pathlib import Path


def curves(job: Path, max_epoch: int) -> list[dict[str, str]]:
    """Rows (epoch, seed, split, mape) of every ``metrics*.csv`` of a job (earlier parts kept after a resume)."""
    seeds = [int(s) for s in re.findall(r"\d+", job.name)]
    rows: dict[tuple[int, int, str], str] = {}
    for path in sorted((job / "csv").glob("metrics*.csv")):
        for row in csv.DictReader(path.open()):
            if not row.get("epoch") or int(row["epoch"]) > max_epoch:
                continue
            for split in ("train", "val"):
                for member, seed in enumerate(seeds):
                    value = row.get(f"{split}/mape_member{member}")
                    if value:
                        rows[(int(row["epoch"]), seed, split)] = value
    return [{"epoch": str(e), "seed": str(s), "split": p, "mape": v} for (e, s, p), v in sorted(rows.items())]


def main() -> None:
    """Write the curves of ``label=job`` pairs to one CSV."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("jobs", nargs="+", help="label=job directory (the seeds<...> folder)")
    parser.add_argument("--max-epoch", type=int, default=299)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    with args.out.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=["variant", "epoch", "seed", "split", "mape"])
        writer.writeheader()
        for item in args.jobs:
            label, job = item.split("=", 1)
            writer.writerows({"variant": label, **row} for row in curves(Path(job), args.max_epoch))


if __name__ == "__main__":
    main()
