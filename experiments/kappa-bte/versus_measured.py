"""Phonon-BTE kappa against measured conductivities, beside Dataset1's ab-initio labels and the learned ltc-mf.

    python experiments/kappa-bte/versus_measured.py ~/paraisite-runs/kappa-tensornet-matpes \
        --cv ~/paraisite-runs/cv-l1 --out experiments/kappa-bte/tensornet-matpes/versus_measured.md

For every benchmarked crystal that the measured source (``paraisite data export measured``) also holds, the
log10 ratio to the measured value of: the BTE kappa of the benchmark (a universal potential, RTA, no isotopes), the
Dataset1 label (ab-initio) and, with ``--cv``, the ``ltc-mf`` recipe's prediction for that crystal from the grouped
CV fold that held its family out (never trained on it). Prints and writes a Markdown table.
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

import numpy as np
from scipy.stats import spearmanr

from paraisite.data.sources import load_source
from paraisite.evaluation.holdout import ensemble_rows, read_rows


def out_of_family(cv_dir: Path) -> dict[str, float]:
    """The ltc-mf recipe's (mf_ft) held-out prediction of each measured crystal, by id."""
    predictions = {}
    for fold in sorted(cv_dir.glob("fold[0-9]")):
        members = sorted((fold / "mf_ft" / "Measured").glob("seed[0-9]*/holdout_predictions.csv"))
        if members:
            predictions.update({r["id"]: r["pred_measured"] for r in ensemble_rows([read_rows(m) for m in members])})
    return predictions


def summary(logs: list[float]) -> str:
    """``MAE (mean signed)`` of log10 ratios, or ``-``."""
    if not logs:
        return "-"
    return f"{np.mean(np.abs(logs)):.2f} ({np.mean(logs):+.2f})"


def rank(rows: list[dict], key: str) -> str:
    """Spearman correlation of the predicted values (log10 ratio + log10 measured) with the measured ones."""
    kept = [r for r in rows if r[key] is not None]
    if len(kept) < 3:
        return "-"
    measured = np.log10([r["measured"] for r in kept])
    return f"{spearmanr(measured + np.array([r[key] for r in kept]), measured).statistic:.2f}"


def main() -> None:
    """Build the comparison."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("results", type=Path, help="the benchmark's --out folder (crystals/*.json)")
    parser.add_argument("--cv", type=Path, help="the grouped CV's log folder (experiments/ltc-mf/run_cv.sh)")
    parser.add_argument("--out", type=Path, required=True, help="Markdown file to write")
    args = parser.parse_args()
    measured = {r.id: r.tc for r in load_source("measured").records}
    learned = out_of_family(args.cv) if args.cv else {}
    rows = []
    for path in sorted((args.results / "crystals").glob("*.json")):
        row = json.loads(path.read_text())
        if row.get("error") or row["id"] not in measured:
            continue
        truth = measured[row["id"]]
        rows.append(
            {
                "id": row["id"],
                "formula": row["formula"],
                "measured": truth,
                "bte": math.log10(row["kappa_W_per_mK"] / truth),
                "label": math.log10(row["label_W_per_mK"] / truth),
                "ltc_mf": math.log10(learned[row["id"]] / truth) if row["id"] in learned else None,
            }
        )
    lines = [
        "# Phonon-BTE kappa against measured conductivities",
        "",
        (
            f"{len(rows)} benchmarked crystals with a measured value (`paraisite data export measured`). Each cell: "
            "log10(value / measured); summary: MAE of log10 (mean signed). `ltc-mf`: the recipe's prediction from the "
            "grouped-CV fold that held the crystal's family out (`experiments/ltc-mf/cv-l1`)."
        ),
        "",
        "| | crystals | BTE (universal potential) | Dataset1 label (ab-initio) | ltc-mf, out of family |",
        "|---|---|---|---|---|",
        (
            f"| all | {len(rows)} | {summary([r['bte'] for r in rows])} | {summary([r['label'] for r in rows])} | "
            f"{summary([r['ltc_mf'] for r in rows if r['ltc_mf'] is not None])} |"
        ),
        f"| Spearman with measured | | {rank(rows, 'bte')} | {rank(rows, 'label')} | {rank(rows, 'ltc_mf')} |",
        "",
        "| id | formula | measured (W/mK) | BTE | label | ltc-mf |",
        "|---|---|---|---|---|---|",
    ]
    for r in rows:
        learned_cell = "-" if r["ltc_mf"] is None else f"{r['ltc_mf']:+.2f}"
        lines.append(
            f"| {r['id']} | {r['formula']} | {r['measured']:.3g} | {r['bte']:+.2f} | {r['label']:+.2f} | "
            f"{learned_cell} |"
        )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
