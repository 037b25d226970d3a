"""The shipped Step II ensembles on every crystal of the measured source (none trained on a measured value).

Usage: python experiments/ltc-mf/shipped_on_measured.py experiments/ltc-mf/shipped_on_measured.json
Scores (MAE of log10 TC, within x2, Spearman, mean signed log10 error, and the oracle constant) on all crystals and on
those that are not Dataset1 compounds (ltc-step2-dataset1 and ltc-step2-mix trained on Dataset1's ab-initio values).
"""

from __future__ import annotations

import json
import sys

import numpy as np

from paraisite.data.sources import load_source
from paraisite.evaluation.holdout import fidelity_scores
from paraisite.zoo.predictors import load_predictor

SHIPPED = ("ltc-step2-mix", "ltc-step2-dataset1", "ltc-step2-dataset2", "ltc-step2-aflow")


def main(output: str) -> None:
    """Score each shipped ensemble; write JSON to ``output`` and print a Markdown table."""
    records = load_source("measured").records
    dataset1 = {r.formula for r in load_source("dataset1").records}
    true = np.array([r.tc for r in records])
    on_dataset1 = np.array([r.formula in dataset1 for r in records])
    result = {}
    print("| model | crystals | MAE log10 | within x2 | Spearman | mean signed | constant MAE |")
    print("|---|---|---|---|---|---|---|")
    for name in SHIPPED:
        predictor = load_predictor(name)
        build = predictor.graph_builder()
        graphs = [build(r.structure, r.id) for r in records]
        batches = [predictor.predict(graphs[i : i + 64]).member_tc for i in range(0, len(graphs), 64)]
        centre = 10 ** np.log10(np.clip(np.concatenate(batches, axis=1), 1e-6, None)).mean(axis=0)
        result[name] = {
            "all": fidelity_scores(centre, true),
            "not_dataset1_compounds": fidelity_scores(centre[~on_dataset1], true[~on_dataset1]),
        }
        for subset, x in result[name].items():
            print(
                f"| {name} | {subset} ({x['count']}) | {x['mae_log10']:.3f} | {x['within_x2']:.0%} | "
                f"{x['spearman']:.2f} | {x['mean_signed_log10']:+.3f} | {x['constant_mae_log10']:.3f} |"
            )
    with open(output, "w", encoding="utf-8") as stream:
        json.dump(result, stream, indent=1)
        stream.write("\n")


if __name__ == "__main__":
    main(sys.argv[1])
