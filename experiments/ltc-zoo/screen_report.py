"""Top candidates and a parity plot from a ``paraisite scan`` of the AFLOW CIFs.

    paraisite scan --model ltc-mf <mirror>/liudakl/ParAIsite/main/src/aflow_cif -o scan.csv
    python experiments/ltc-zoo/screen_report.py scan.csv experiments/ltc-zoo/screen-ltc-mf --model ltc-mf

Writes ``top50.csv`` (the 50 lowest predicted LTCs, among in-domain crystals where the model has an ``in_domain``
column, with the interval, the AGL value where the crystal is one of the 3,659 paired AFLOW entries and the measured
value where it is in the measured source) and ``parity.png`` (predicted against AGL LTC for the paired crystals,
coloured by ``in_domain`` where there is one), and prints the summary figures (also to ``summary.json``).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

from paraisite.data.sources import load_source

KEPT = ["formula", "tc_W_per_mK", "tc_low_W_per_mK", "tc_high_W_per_mK", "tc_rel_std", "in_domain"]


def covered(rows: pd.DataFrame, column: str) -> pd.Series:
    """Whether each row's 95 % interval contains ``column``."""
    return (rows["tc_low_W_per_mK"] <= rows[column]) & (rows[column] <= rows["tc_high_W_per_mK"])


def main(scan_csv: Path, output: Path, model: str) -> None:
    """Rank, pair with AGL and measured values, plot."""
    scan = pd.read_csv(scan_csv)
    scan["id"] = scan["path"].map(lambda p: Path(p).stem)
    agl = {record.id: record.tc for record in load_source("aflow").records}
    measured = {Path(record.structure_file).stem: record.tc for record in load_source("measured").records}
    scan["agl_tc_W_per_mK"] = scan["id"].map(agl)
    scan["measured_tc_W_per_mK"] = scan["id"].map(measured)
    ok = scan[scan["error"].isna()]
    flagged = "in_domain" in scan
    inside = ok["in_domain"].astype(bool) if flagged else pd.Series(True, index=ok.index)
    output.mkdir(parents=True, exist_ok=True)
    top = ok[inside].nsmallest(50, "tc_W_per_mK")
    columns = ["id", *(c for c in KEPT if c in scan), "agl_tc_W_per_mK", "measured_tc_W_per_mK"]
    top[columns].to_csv(output / "top50.csv", index=False, float_format="%.4g")
    paired = ok.dropna(subset=["agl_tc_W_per_mK"])
    log_ratio = np.log10(paired["tc_W_per_mK"] / paired["agl_tc_W_per_mK"])
    fig, ax = plt.subplots(figsize=(5.5, 5))
    groups = (
        ((True, "tab:blue", "in domain"), (False, "tab:red", "out of domain"))
        if flagged
        else ((True, "tab:blue", None),)
    )
    for flag, colour, label in groups:
        rows = paired[inside[paired.index] == flag]
        ax.scatter(rows["agl_tc_W_per_mK"], rows["tc_W_per_mK"], s=4, alpha=0.5, c=colour, label=label)
    lims = [0.05, 1000]
    ax.plot(lims, lims, "k--", lw=0.8)
    ax.set(xscale="log", yscale="log", xlim=lims, ylim=lims, xlabel="AFLOW AGL LTC (W/mK)")
    ax.set(ylabel=f"{model} predicted LTC (W/mK)", title=f"{len(paired)} paired AFLOW crystals")
    if flagged:
        ax.legend()
    fig.tight_layout()
    fig.savefig(output / "parity.png", dpi=130)
    with_measured = ok.dropna(subset=["measured_tc_W_per_mK"])
    summary = {
        "model": model,
        "scanned": len(scan),
        "errors": len(scan) - len(ok),
        "in_domain": int(inside.sum()) if flagged else None,
        "paired_with_agl": len(paired),
        "spearman_predicted_agl": float(paired[["tc_W_per_mK", "agl_tc_W_per_mK"]].rank().corr().iloc[0, 1]),
        "median_log10_predicted_over_agl": float(np.median(log_ratio)),
        "interval_covers_agl": float(covered(paired, "agl_tc_W_per_mK").mean()),
        "with_measured_value": len(with_measured),
        "interval_covers_measured": float(covered(with_measured, "measured_tc_W_per_mK").mean()),
        "top50_range_W_per_mK": [float(top["tc_W_per_mK"].min()), float(top["tc_W_per_mK"].max())],
        "median_predicted_W_per_mK": float(np.median(ok["tc_W_per_mK"])),
    }
    (output / "summary.json").write_text(json.dumps(summary, indent=1) + "\n")
    print(json.dumps(summary, indent=1))


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("scan_csv", type=Path)
    parser.add_argument("output", type=Path)
    parser.add_argument("--model", default="ltc-mf", help="the scanned model's name (plot label)")
    args = parser.parse_args()
    main(args.scan_csv, args.output, args.model)
