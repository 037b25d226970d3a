"""Out-of-family tables of the grouped cross-validation (run_cv.sh), per fidelity.

The multi-fidelity model, the Step IV chain and the shipped Step II ensembles on the same held-out groups; interval
calibration and domain signals.

Usage: python experiments/ltc-mf/build_tables.py LOG_DIR --out experiments/ltc-mf/cv-quick [--shipped]
       [--candidate mf_os4/MF --latent]

``--candidate TASK/DATASET`` names the model whose rows feed the interval calibration and the domain signals (default
the MF model); it writes ``intervals.json`` (per fidelity, the calibration ``paraisite zoo ship --intervals`` packs)
and ``evidence.json`` (its out-of-family scores, for the card). ``--latent`` adds the latent-distance signal: each
fold's members predict their held-out crystals and give their kNN percentile in their own training latents.
"""

from __future__ import annotations

import argparse
import functools
import json
import math
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from paraisite.data.sources import load_source
from paraisite.evaluation import intervals
from paraisite.evaluation.holdout import ensemble_rows, fidelity_scores, read_rows
from paraisite.evaluation.uncertainty import spearman

#: Model -> the (task, dataset) stage that scores each fidelity (the chain's stages each score their own).
MODELS = {
    "MF (one model)": {"agl": ("mf", "MF"), "ab-initio": ("mf", "MF"), "measured": ("mf", "MF")},
    "Step IV chain": {
        "agl": ("step2", "AFLOW"),
        "ab-initio": ("step4_abinitio", "MIX"),
        "measured": ("step4", "Measured"),
    },
    "MF, measured rows x4": dict.fromkeys(("agl", "ab-initio", "measured"), ("mf_os4", "MF")),
    "MF, backbone lr 1e-4": dict.fromkeys(("agl", "ab-initio", "measured"), ("mf_blr", "MF")),
}
#: Names in the tables of candidates scored with ``--rescore-on``.
CANDIDATE_LABELS = {"mf_ft/Measured": "MF, then fine-tuned on measured (the ltc-mf recipe)"}
#: The sources of the grouped CV (``data.holdout.over`` in run_cv.sh): every held-out row comes from one of them.
CV_SOURCES = ("aflow", "dataset1", "dataset2", "measured")
SHIPPED = ("ltc-step2-mix", "ltc-step2-dataset1", "ltc-step2-dataset2", "ltc-step2-aflow")
METRICS = ("mae_log10", "within_x2", "spearman", "mean_signed_log10", "constant_mae_log10", "constant_within_x2")


def member_dirs(log_dir: Path, fold: str, task: str, dataset: str) -> list[Path]:
    """The completed members (seed<k> with holdout_predictions.csv) of one stage in one fold."""
    root = log_dir / fold / task / dataset
    return sorted(p for p in root.glob("seed[0-9]*") if (p / "holdout_predictions.csv").is_file())


def stage_rows(log_dir: Path, task: str, dataset: str) -> tuple[list[dict], dict[int, list[dict]]]:
    """Ensemble rows over all complete folds (with ``fold``), and per seed the member rows."""
    pooled, per_seed = [], defaultdict(list)
    for fold_dir in sorted(log_dir.glob("fold[0-9]*")):
        members = member_dirs(log_dir, fold_dir.name, task, dataset)
        if not members:
            continue
        rows = [read_rows(m / "holdout_predictions.csv") for m in members]
        for member, member_rows in zip(members, rows, strict=True):
            per_seed[int(member.name[4:])] += [{**r, "fold": fold_dir.name} for r in member_rows]
        pooled += [{**r, "fold": fold_dir.name} for r in ensemble_rows(rows)]
    return pooled, dict(per_seed)


def scores_of(rows: list[dict], fidelity: str) -> dict[str, float]:
    """Scores of the rows of one fidelity, each predicted at that fidelity."""
    picked = [r for r in rows if r["fidelity"] == fidelity]
    return fidelity_scores([r[f"pred_{fidelity}"] for r in picked], [r["tc_true"] for r in picked])


def model_tables(log_dir: Path) -> dict:
    """Per model and fidelity: the ensemble's scores and the members' mean and std over seeds."""
    tables: dict = {}
    for model, stages in MODELS.items():
        tables[model] = {}
        for fidelity, (task, dataset) in stages.items():
            pooled, per_seed = stage_rows(log_dir, task, dataset)
            entry = fidelity_entries(pooled, per_seed, [fidelity])
            tables[model].update(entry)
    return {model: entry for model, entry in tables.items() if entry}


@functools.cache
def structures_by_id() -> dict[str, Any]:
    """Every CV source's structure by crystal id, read once per run (signals and shipped scores both need them)."""
    structures = {}
    for source in CV_SOURCES:
        structures.update({r.id: r.structure for r in load_source(source).records})
    return structures


def shipped_scores(rows: list[dict]) -> dict:
    """The shipped Step II ensembles on the same held-out measured rows (none trained on a measured value)."""
    from paraisite.zoo.predictors import load_predictor

    structures = structures_by_id()
    picked = [r for r in rows if r["fidelity"] == "measured"]
    result = {}
    from paraisite.zoo.shipped import shipped_manifests

    for name in (name for name in SHIPPED if name in shipped_manifests()):  # ltc-step2-dataset1 left for ltc-mf
        predictor = load_predictor(name)
        build = predictor.graph_builder()
        graphs = [build(structures[r["id"]], r["id"]) for r in picked]
        batches = [predictor.predict(graphs[i : i + 64]).member_tc for i in range(0, len(graphs), 64)]
        tc = np.concatenate(batches, axis=1)
        centre = 10 ** np.log10(np.clip(tc, 1e-6, None)).mean(axis=0)
        result[name] = fidelity_scores(centre, [r["tc_true"] for r in picked])
    return result


def unseen_elements(rows: list[dict]) -> np.ndarray:
    """Whether a held-out row has an element that no training crystal of its fold (any source) has."""
    held = defaultdict(set)
    for r in rows:
        held[r["fold"]].add(r["id"])
    composition = {cid: {str(e) for e in s.composition.elements} for cid, s in structures_by_id().items()}
    trained_elements = {}
    for fold, ids in held.items():
        trained_elements[fold] = set().union(*(els for i, els in composition.items() if i not in ids))
    return np.array([bool(composition[r["id"]] - trained_elements[r["fold"]]) for r in rows])


def fidelity_entries(
    pooled: list[dict], per_seed: dict[int, list[dict]], fidelities: Sequence[str] = ("measured", "ab-initio", "agl")
) -> dict:
    """Per fidelity with rows: the ensemble's scores and the members' mean and std over seeds."""
    result = {}
    for fidelity in fidelities:
        if not any(r["fidelity"] == fidelity and f"pred_{fidelity}" in r for r in pooled):
            continue
        entry = {"folds": sorted({r["fold"] for r in pooled}), "ensemble": scores_of(pooled, fidelity)}
        members = [scores_of(rows, fidelity) for rows in per_seed.values()]
        entry["members"] = {
            k: {"mean": float(np.mean([m[k] for m in members])), "std": float(np.std([m[k] for m in members]))}
            for k in METRICS
        }
        result[fidelity] = entry
    return result


def latent_percentiles(log_dir: Path, task: str, dataset: str, rows: list[dict], fidelity: str) -> np.ndarray:
    """Per row: the kNN percentile of its latent among its fold's members' training latents (mean over members)."""
    from paraisite.zoo.predictors import load_checkpoints

    structures = structures_by_id()
    result = np.full(len(rows), np.nan)
    for fold in sorted({r["fold"] for r in rows}):
        members = member_dirs(log_dir, fold, task, dataset)
        predictor = load_checkpoints(fold, [m / "checkpoints" / "best.ckpt" for m in members], ensemble=True)
        if predictor.fidelities is not None:
            predictor.use_fidelity(fidelity)
        build = predictor.graph_builder()
        where = [i for i, r in enumerate(rows) if r["fold"] == fold]
        graphs = [build(structures[rows[i]["id"]], rows[i]["id"]) for i in where]
        percentiles = [predictor.predict(graphs[j : j + 64]).percentile for j in range(0, len(graphs), 64)]
        if any(p is None for p in percentiles):
            raise SystemExit(f"{fold}: the members of {task}/{dataset} carry no latent reference")
        result[where] = np.concatenate(percentiles)  # type: ignore[arg-type]
    return result


def rescored_rows(log_dir: Path, task: str, dataset: str, reference: str) -> tuple[list[dict], dict[int, list[dict]]]:
    """The held-out rows of ``reference`` (every source's crystals), predicted at every fidelity by ``task/dataset``.

    For a stage whose own held-out rows hold one source only (the measured fine-tuning): each fold's members
    predict that fold's rows. Returns pooled ensemble rows and per seed the member rows, as :func:`stage_rows`.
    """
    from paraisite.data.graphs import load_graph_set
    from paraisite.zoo.predictors import load_checkpoints

    pooled_reference, _ = stage_rows(log_dir, *reference.split("/"))
    pooled, per_seed = [], defaultdict(list)
    graphs: dict[str, object] = {}
    for fold in sorted({r["fold"] for r in pooled_reference}):
        members = member_dirs(log_dir, fold, task, dataset)
        if not members:
            continue
        predictor = load_checkpoints(fold, [m / "checkpoints" / "best.ckpt" for m in members], ensemble=True)
        if not graphs:
            for source in CV_SOURCES:
                graph_set = load_graph_set(source, predictor.builder)
                graphs.update({(source, i): g for i, g in zip(graph_set.ids, graph_set.graphs, strict=True)})
        rows = [r for r in pooled_reference if r["fold"] == fold]
        batch = [graphs[(r["source"], r["id"])] for r in rows]
        member_rows = [[{k: v for k, v in r.items() if not k.startswith(("pred_", "spread_"))} for r in rows]
                       for _ in members]  # fmt: skip
        for fidelity in predictor.fidelities or []:
            predictor.use_fidelity(fidelity)
            tc = np.concatenate([predictor.predict(batch[i : i + 256]).member_tc for i in range(0, len(batch), 256)], 1)
            for m, member in enumerate(member_rows):
                for row, value in zip(member, tc[m], strict=True):
                    row[f"pred_{fidelity}"] = float(value)
        for member, m_rows in zip(members, member_rows, strict=True):
            per_seed[int(member.name[4:])] += m_rows
        pooled += ensemble_rows(member_rows)
    return pooled, dict(per_seed)


def fidelity_calibration(rows: list[dict], fidelity: str) -> dict:
    """Interval floors tried (cross-fitted by fold) and the calibration fitted on every fold's rows of ``fidelity``."""
    rows = [r for r in rows if r["fidelity"] == fidelity]
    true = np.log10([r["tc_true"] for r in rows])
    centre = np.log10([r[f"pred_{fidelity}"] for r in rows])
    spread = np.array([r[f"spread_{fidelity}"] for r in rows])
    fold = np.array([int(r["fold"][4:]) for r in rows])
    floor, figures = intervals.choose_floor(centre, spread, true, fold)
    fitted = intervals.fit(centre, spread, true, floor, f"{fidelity} rows of held-out groups, {len(set(fold))} folds")
    return {
        "rows": len(rows),
        "chosen_floor": floor,
        "floors": {str(k): v for k, v in figures.items()},
        "calibration": {**fitted.to_dict(), "cross_fitted": figures[floor]},
    }


def domain_signals(rows: list[dict], latent: np.ndarray | None) -> dict:
    """Error of measured rows flagged in and out by each candidate signal (threshold from the other folds)."""
    keep = [i for i, r in enumerate(rows) if r["fidelity"] == "measured"]
    rows = [rows[i] for i in keep]
    true = np.log10([r["tc_true"] for r in rows])
    centre = np.log10([r["pred_measured"] for r in rows])
    fold = np.array([int(r["fold"][4:]) for r in rows])
    error = np.abs(true - centre)
    signals = {
        "member spread": np.array([r["spread_measured"] for r in rows]),
        "unseen element": unseen_elements(rows).astype(float),
    }
    if "pred_agl" in rows[0]:
        signals["fidelity disagreement (measured vs agl)"] = np.abs(centre - np.log10([r["pred_agl"] for r in rows]))
    if latent is not None:
        signals["latent kNN percentile"] = latent[keep]
    domain = {}
    for name, value in signals.items():
        flagged = np.zeros(len(rows), dtype=bool)
        for k in np.unique(fold):  # threshold: the 80th percentile of the other folds' rows
            others = value[fold != k] if (fold != k).any() else value  # one fold only: its own rows
            threshold = np.quantile(others, 0.8)
            flagged[fold == k] = value[fold == k] > threshold
        inside, outside = error[~flagged], error[flagged]
        domain[name] = {
            "flagged_out": int(flagged.sum()),
            "mae_in": float(inside.mean()) if len(inside) else math.nan,
            "mae_out": float(outside.mean()) if len(outside) else math.nan,
            "ratio": float(outside.mean() / inside.mean()) if len(inside) and len(outside) else math.nan,
            "spearman_with_error": spearman(value, error),
        }
    return domain


def candidate_analysis(log_dir: Path, candidate: str, latent: bool, rows: list[dict]) -> dict:
    """Calibration per fidelity and domain signals of the candidate model's pooled held-out ``rows``."""
    task, dataset = candidate.split("/")
    if not rows:
        return {}
    fidelities = [f for f in ("measured", "ab-initio", "agl") if f"pred_{f}" in rows[0]]
    measured = [r for r in rows if r["fidelity"] == "measured"]
    percentiles = latent_percentiles(log_dir, task, dataset, measured, "measured") if latent else None
    return {
        "candidate": candidate,
        "calibration": {f: fidelity_calibration(rows, f) for f in fidelities if any(r["fidelity"] == f for r in rows)},
        "domain": domain_signals(measured, percentiles),
        "rows": rows,
    }


def markdown(tables: dict, shipped: dict, analysis: dict) -> str:
    """The tables as Markdown."""
    header = "| model | fidelity | folds | n | MAE log10 | within x2 | Spearman | mean signed | members MAE (std) |"
    lines = [header + " constant MAE |", "|---|---|---|---|---|---|---|---|---|---|"]
    for model, by_fidelity in tables.items():
        for fidelity, entry in by_fidelity.items():
            e, m = entry["ensemble"], entry["members"]
            lines.append(
                f"| {model} | {fidelity} | {len(entry['folds'])} | {e['count']} | {e['mae_log10']:.3f} | "
                f"{e['within_x2']:.0%} | {e['spearman']:.2f} | {e['mean_signed_log10']:+.3f} | "
                f"{m['mae_log10']['mean']:.3f} ({m['mae_log10']['std']:.3f}) | {e['constant_mae_log10']:.3f} |"
            )
    for name, e in shipped.items():
        lines.append(
            f"| {name} (shipped) | measured | all | {e['count']} | {e['mae_log10']:.3f} | {e['within_x2']:.0%} | "
            f"{e['spearman']:.2f} | {e['mean_signed_log10']:+.3f} | | {e['constant_mae_log10']:.3f} |"
        )
    if analysis:
        lines += ["", f"Intervals of `{analysis['candidate']}` (log10 TC; each fold calibrated on the others):", ""]
        lines += ["| fidelity | floor | 68 % coverage | 95 % coverage | 95 % width (dex) |", "|---|---|---|---|---|"]
        for fidelity, entry in analysis["calibration"].items():
            for floor, x in entry["floors"].items():
                mark = " (chosen)" if float(floor) == entry["chosen_floor"] else ""
                lines.append(
                    f"| {fidelity} | {floor}{mark} | {x['coverage_68']:.0%} | {x['coverage_95']:.0%} | "
                    f"{x['width_95']:.2f} |"
                )
        title = f"Domain signals (`{analysis['candidate']}`, measured rows; out: above the other folds' 80th centile):"
        lines += ["", title, ""]
        lines += [
            "| signal | flagged out | MAE in | MAE out | ratio | Spearman with error |",
            "|---|---|---|---|---|---|",
        ]
        for name, x in analysis["domain"].items():
            figures = f"{x['mae_in']:.3f} | {x['mae_out']:.3f} | {x['ratio']:.2f} | {x['spearman_with_error']:.2f}"
            lines.append(f"| {name} | {x['flagged_out']} | {figures} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    """Build the tables from LOG_DIR into --out."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("log_dir", type=Path)
    parser.add_argument("--out", type=Path, required=True, help="folder for tables.json and tables.md")
    parser.add_argument("--shipped", action="store_true", help="also score the shipped Step II ensembles")
    parser.add_argument("--candidate", default="mf/MF", help="TASK/DATASET whose rows are calibrated (mf/MF)")
    parser.add_argument("--latent", action="store_true", help="also measure the latent-distance domain signal")
    parser.add_argument(
        "--rescore-on", help="TASK/DATASET whose held-out rows (every source) the candidate predicts, e.g. mf/MF"
    )
    parser.add_argument("--zoo-name", default="ltc-mf", help="the candidate's zoo name in evidence.json")
    args = parser.parse_args()
    tables = model_tables(args.log_dir)
    task, dataset = args.candidate.split("/")
    if args.rescore_on:
        candidate_rows, per_seed = rescored_rows(args.log_dir, task, dataset, args.rescore_on)
        tables[CANDIDATE_LABELS.get(args.candidate, args.candidate)] = fidelity_entries(candidate_rows, per_seed)
    else:
        candidate_rows, _ = stage_rows(args.log_dir, task, dataset)
    analysis = candidate_analysis(args.log_dir, args.candidate, args.latent, candidate_rows)
    rows = analysis.pop("rows", [])
    shipped = shipped_scores(rows) if args.shipped and rows else {}
    args.out.mkdir(parents=True, exist_ok=True)
    payload = {"models": tables, "shipped": shipped, "candidate": analysis}
    (args.out / "tables.json").write_text(json.dumps(payload, indent=1, default=float) + "\n")
    (args.out / "tables.md").write_text(markdown(tables, shipped, analysis))
    if analysis:
        by_fidelity = {f: entry["calibration"] for f, entry in analysis["calibration"].items()}
        calibration = {"space": "log10(TC)", "by_fidelity": by_fidelity, "domain_signals": analysis["domain"]}
        (args.out / "intervals.json").write_text(json.dumps(calibration, indent=1) + "\n")
        measured = [r for r in rows if r["fidelity"] == "measured"]
        scores = scores_of(measured, "measured")
        evidence = {args.zoo_name: {"out_of_family": {**scores, "folds": len({r["fold"] for r in measured})}}}
        (args.out / "evidence.json").write_text(json.dumps(evidence, indent=1) + "\n")
    print(markdown(tables, shipped, analysis))


if __name__ == "__main__":
    main()
