"""Does ``in_domain`` separate good from bad predictions? Error of flagged rows under candidate rules.

Reads the per-row CSVs that ``paraisite zoo ship --evidence rows/`` wrote (held-out crystals only: datasets no member
trained on) and prints, for each ensemble and held-out set, the MAPE of rows flagged in and out of domain under:
the element rule alone, the latent-percentile rule alone at several thresholds, and both. Writes ``domain.md``.

    python experiments/ltc-zoo/domain_evidence.py experiments/ltc-zoo/rows
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pandas as pd

THRESHOLDS = (50, 75, 90, 95, 99)


def flagged_errors(rows: pd.DataFrame, inside: pd.Series) -> str:
    """``n_in / n_out, MAPE in / out (ratio)`` for one rule."""
    ape = (rows.pred_tc - rows.true_tc).abs() / rows.true_tc
    mape_in, mape_out = ape[inside].mean(), ape[~inside].mean()
    ratio = mape_out / mape_in if inside.any() and (~inside).any() else np.nan
    return f"{inside.sum()} / {(~inside).sum()}: {mape_in:.2f} / {mape_out:.2f} ({ratio:.2f})"


def main(rows_dir: Path) -> None:
    """Print the table and write it to ``domain.md`` beside this script."""
    lines = [
        "| ensemble | held-out rows | elements only | " + " | ".join(f"percentile <= {p}" for p in THRESHOLDS) + " |",
        "|---" * (3 + len(THRESHOLDS)) + "|",
    ]
    for path in sorted(rows_dir.glob("*.csv")):
        name, rows_name = path.stem.split("--")
        if not rows_name.endswith("cross-dataset"):  # own validation rows: the members' own family
            continue
        rows = pd.read_csv(path)
        known = ~rows.unseen_elements.astype(bool)
        cells = [flagged_errors(rows, known)]
        cells += [flagged_errors(rows, rows.latent_percentile <= p) for p in THRESHOLDS]
        lines.append(f"| {name} | {rows_name} ({len(rows)}) | " + " | ".join(cells) + " |")
    text = "\n".join(lines) + "\n"
    print(text)
    (Path(__file__).resolve().parent / "domain.md").write_text(
        "# In/out-of-domain errors on held-out crystals\n\n"
        "Each cell: rows in / out of domain: MAPE in / out (out / in). Written by `domain_evidence.py`.\n\n" + text
    )


if __name__ == "__main__":
    main(Path(sys.argv[1]))
