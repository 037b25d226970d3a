"""``paraisite baseline``: a no-training physics baseline (Slack's LTC from the potential) scored on the 9 splits."""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    """Register ``baseline``."""
    parser = subparsers.add_parser(
        "baseline",
        help="score Slack's LTC estimate (TensorNet-MatPES equation of state) on the seeds' validation splits",
        description=(
            "Slack's lattice thermal conductivity from each crystal's energy-volume scan with TensorNet-MatPES "
            "(paraisite.models.physics), scored on the validation split of seeds 1-9 (the table's splits): MAPE "
            "against the true TC and Spearman's rank correlation, mean (std) over seeds. Writes "
            "slack_baseline[-max<N>].json and .md into --out."
        ),
    )
    parser.add_argument("--out", type=Path, required=True, help="folder for the results")
    parser.add_argument("--data", nargs="+", default=["dataset1", "dataset2", "mix", "aflow"], help="conf/data names")
    parser.add_argument("--max-per-source", type=int, default=None, help="subsample as a profile does (quick: 400)")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Score the baseline and write the results."""
    from paraisite.evaluation.physics_baseline import baseline_table, markdown
    from paraisite.models.physics import SlackEstimate

    table = baseline_table(args.data, SlackEstimate(), max_per_source=args.max_per_source)
    args.out.mkdir(parents=True, exist_ok=True)
    suffix = "" if args.max_per_source is None else f"-max{args.max_per_source}"
    (args.out / f"slack_baseline{suffix}.json").write_text(json.dumps(table, indent=1, sort_keys=True) + "\n")
    (args.out / f"slack_baseline{suffix}.md").write_text(markdown(table))
    print(markdown(table), end="")
    return 0
