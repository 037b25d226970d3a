"""Top candidates and a parity plot from a ``paraisite scan`` of the AFLOW CIFs.

    paraisite scan --model ltc-step2-mix <mirror>/liudakl/ParAIsite/main/src/aflow_cif -o scan.csv
    python experiments/ltc-zoo/screen_report.py scan.csv experiments/ltc-zoo/screen

Writes ``top50.csv`` (the 50 lowest predicted LTCs among in-domain crystals, with interval and domain columns, and
the AGL value where the crystal is one of the 3,659 paired AFLOW entries) and ``parity.png`` (predicted against AGL
LTC for the paired crystals, coloured by ``in_domain``), and prints the summary figures.
"""

from __future__ import annotations

import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

from paraisite.data.sources import load_source

KEPT = ["formula", "tc_W_per_mK", "tc_low_W_per_mK", "tc_high_W_per_mK", "tc_rel_std", "in_domain"]


def main(scan_csv: Path, output: Path) -> None:
    """Rank, pair with AGL values, plot."""
    scan = pd.read_csv(scan_csv)
    scan["id"] = scan["path"].map(lambda p: Path(p).stem)
    agl = {record.id: record.tc for record in load_source("aflow").records}
    scan["agl_tc_W_per_mK"] = scan["id"].map(agl)
    ok = scan[scan["error"].isna()]
    output.mkdir(parents=True, exist_ok=True)
    top = ok[ok["in_domain"].astype(bool)].nsmallest(50, "tc_W_per_mK")
    top[["id", *KEPT, "agl_tc_W_per_mK"]].to_csv(output / "top50.csv", index=False, float_format="%.4g")
    paired = ok.dropna(subset=["agl_tc_W_per_mK"])
    inside = paired["in_domain"].astype(bool)
    ape = (paired["tc_W_per_mK"] - paired["agl_tc_W_per_mK"]).abs() / paired["agl_tc_W_per_mK"]
    covered = (paired["tc_low_W_per_mK"] <= paired["agl_tc_W_per_mK"]) & (
        paired["agl_tc_W_per_mK"] <= paired["tc_high_W_per_mK"]
    )
    fig, ax = plt.subplots(figsize=(5.5, 5))
    for flag, colour, label in ((True, "tab:blue", "in domain"), (False, "tab:red", "out of domain")):
        rows = paired[inside == flag]
        ax.scatter(rows["agl_tc_W_per_mK"], rows["tc_W_per_mK"], s=4, alpha=0.5, c=colour, label=label)
    lims = [0.05, 1000]
    ax.plot(lims, lims, "k--", lw=0.8)
    ax.set(xscale="log", yscale="log", xlim=lims, ylim=lims, xlabel="AFLOW AGL LTC (W/mK)")
    ax.set(ylabel="ltc-step2-mix predicted LTC (W/mK)", title=f"{len(paired)} paired AFLOW crystals")
    ax.legend()
    fig.tight_layout()
    fig.savefig(output / "parity.png", dpi=130)
    spearman = paired[["tc_W_per_mK", "agl_tc_W_per_mK"]].rank().corr().iloc[0, 1]
    print(f"scanned {len(scan)}, errors {len(scan) - len(ok)}, in domain {int(ok['in_domain'].astype(bool).sum())}")
    print(f"paired with AGL: {len(paired)}; MAPE vs AGL in/out of domain {ape[inside].mean():.2f}", end="")
    print(f" / {ape[~inside].mean():.2f}")
    print(f"Spearman(predicted, AGL) {spearman:.2f}; 95 % interval covers the AGL value: {100 * covered.mean():.0f} %")
    lowest, highest = top["tc_W_per_mK"].min(), top["tc_W_per_mK"].max()
    print(f"top-50 lowest predicted (in domain): {lowest:.2f}-{highest:.2f} W/mK")
    print(f"median predicted LTC {np.median(ok['tc_W_per_mK']):.2f} W/mK")


if __name__ == "__main__":
    main(Path(sys.argv[1]), Path(sys.argv[2]))
