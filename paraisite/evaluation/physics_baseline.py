"""A no-training baseline for the table: an LTC estimate per crystal (Slack's, from the potential's equation of state).

The estimate comes from a provider (``paraisite baseline`` wires :class:`paraisite.models.physics.SlackEstimate`;
this layer sits below the models). Scored like a trained model: on the validation split of each seed (the same
seeded 80/20 splits, graph-usable crystals and subsampling as a run of that dataset and seed, through
:class:`~paraisite.data.datamodule.LTCDataModule`), MAPE against the true TC, plus Spearman's rank correlation with
the labels. Two rows:

- ``slack``: the estimate as it is (:func:`paraisite.models.physics.slack_conductivity`, 300 K);
- ``slack_scaled``: the estimate times one factor per seed, ``10**median(log10 TC - log10 kappa_Slack)`` over the
  seed's training split (Slack's formula is known to be off by a material-independent factor; the factor uses the
  training labels only).

Crystals without an estimate (NaN: the fit failed) are left out of that seed's score and counted.
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
import torch
from scipy.stats import spearmanr

from paraisite.config import load_group_option
from paraisite.data.datamodule import FeatureProvider, LTCDataModule
from paraisite.evaluation.metrics import ltc_metrics

log = logging.getLogger(__name__)

#: The seeds of the table (each sets one 80/20 split).
SEEDS = tuple(range(1, 10))


def _score(pred: np.ndarray, true: np.ndarray) -> dict[str, float]:
    metrics = ltc_metrics(torch.as_tensor(pred), torch.as_tensor(true))
    metrics["spearman"] = float(spearmanr(pred, true).statistic)
    return metrics


def seed_scores(data: str, seed: int, estimate: FeatureProvider, max_per_source: int | None = None) -> dict[str, Any]:
    """Scores of both baseline rows on the validation split of ``data`` (a ``conf/data`` name) with ``seed``.

    ``estimate(source, ids)`` gives ``[len(ids), 1]`` TC estimates (W/mK, NaN where there is none).
    """
    option = load_group_option("data", data)
    datamodule = LTCDataModule(str(option.name), list(option.sources), seed=seed, max_per_source=max_per_source)
    datamodule.attach_features(estimate)
    datamodule.setup()
    if datamodule.train_set is None or datamodule.val_set is None:
        raise RuntimeError(f"{data}: no split after setup()")
    train_kappa = datamodule.train_set.feature_rows()[:, 0].double().numpy()
    train_tc = datamodule.train_set.tc.double().numpy()
    known = np.isfinite(train_kappa)
    factor = 10 ** float(np.median(np.log10(train_tc[known]) - np.log10(train_kappa[known])))
    kappa = datamodule.val_set.feature_rows()[:, 0].double().numpy()
    tc = datamodule.val_set.tc.double().numpy()
    ok = np.isfinite(kappa)
    return {
        "dataset": datamodule.name,
        "seed": seed,
        "val": len(tc),
        "failed_fits": int((~ok).sum()),
        "scale_factor": factor,
        "slack": _score(kappa[ok], tc[ok]),
        "slack_scaled": _score(kappa[ok] * factor, tc[ok]),
    }


def baseline_table(
    datasets: list[str], estimate: FeatureProvider, seeds: tuple[int, ...] = SEEDS, max_per_source: int | None = None
) -> dict[str, Any]:
    """Per dataset: each seed's scores and mean/std per row and metric (sample std, ddof=1, as `paraisite table`)."""
    table: dict[str, Any] = {}
    for data in datasets:
        runs = [seed_scores(data, seed, estimate, max_per_source) for seed in seeds]
        summary: dict[str, Any] = {}
        for row in ("slack", "slack_scaled"):
            summary[row] = {
                metric: {"mean": float(np.mean(values)), "std": float(np.std(values, ddof=1))}
                for metric in runs[0][row]
                for values in [[run[row][metric] for run in runs]]
            }
        table[runs[0]["dataset"]] = {"seeds": runs, "summary": summary}
    return table


def markdown(table: dict[str, Any]) -> str:
    """MAPE and Spearman, mean (std) over seeds, one line per dataset and row."""
    lines = [
        "| dataset | baseline | val. MAPE | Spearman | failed fits (val, all seeds) |",
        "|---|---|---|---|---|",
    ]
    for name, entry in table.items():
        failed = sum(run["failed_fits"] for run in entry["seeds"])
        total = sum(run["val"] for run in entry["seeds"])
        for row in ("slack", "slack_scaled"):
            mape, rho = entry["summary"][row]["mape"], entry["summary"][row]["spearman"]
            lines.append(
                f"| {name} | {row} | {mape['mean']:.2f} ({mape['std']:.2f}) | {rho['mean']:.2f} ({rho['std']:.2f}) "
                f"| {failed}/{total} |"
            )
    return "\n".join(lines) + "\n"
