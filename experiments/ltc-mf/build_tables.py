"""Out-of-family tables of the grouped cross-validation (run_cv.sh), per fidelity.

The multi-fidelity model, the Step IV chain and the shipped Step II ensembles on the same held-out groups; interval
calibration and domain signals.

Usage: python experiments/ltc-mf/build_tables.py LOG_DIR --out experiments/ltc-mf/cv-quick [--shipped]
"""

from __future__ import annotations

import argparse
import json
import math
from collections import defaultdict
from pathlib import Path

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
}
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


def model_tables(log_dir: Path) -> tuple[dict, dict]:
    """Per model and fidelity: the ensemble's scores and the members' mean and std over seeds; the MF pooled rows."""
    tables: dict = {}
    mf_rows: list[dict] = []
    for model, stages in MODELS.items():
        tables[model] = {}
        for fidelity, (task, dataset) in stages.items():
            pooled, per_seed = stage_rows(log_dir, task, dataset)
            if not any(r["fidelity"] == fidelity for r in pooled):
                continue
            folds = sorted({r["fold"] for r in pooled})
            entry = {"folds": folds, "ensemble": scores_of(pooled, fidelity)}
            members = [scores_of(rows, fidelity) for rows in per_seed.values()]
            entry["members"] = {
                k: {"mean": float(np.mean([m[k] for m in members])), "std": float(np.std([m[k] for m in members]))}
                for k in METRICS
            }
            tables[model][fidelity] = entry
            if model.startswith("MF") and fidelity == "measured":
                mf_rows = pooled
    return tables, {"rows": mf_rows}


def shipped_scores(rows: list[dict]) -> dict:
    """The shipped Step II ensembles on the same held-out measured rows (none trained on a measured value)."""
    from paraisite.zoo.predictors import load_predictor

    structures = {}
    for source in ("aflow", "dataset1", "dataset2", "measured"):
        structures.update({r.id: r.structure for r in load_source(source).records})
    picked = [r for r in rows if r["fidelity"] == "measured"]
    result = {}
    for name in SHIPPED:
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
    sources = {s: load_source(s).records for s in ("aflow", "dataset1", "dataset2", "measured")}
    held = defaultdict(set)
    for r in rows:
        held[r["fold"]].add(r["id"])
    composition = {
        rec.id: {str(e) for e in rec.structure.composition.elements} for recs in sources.values() for rec in recs
    }
    trained_elements = {}
    for fold, ids in held.items():
        trained_elements[fold] = set().union(*(els for i, els in composition.items() if i not in ids))
    return np.array([bool(composition[r["id"]] - trained_elements[r["fold"]]) for r in rows])


def calibration_and_domain(rows: list[dict]) -> dict:
    """Interval calibration (floors tried, cross-fitted by fold) and domain signals on the MF measured rows."""
    rows = [r for r in rows if r["fidelity"] == "measured"]
    true = np.log10([r["tc_true"] for r in rows])
    centre = np.log10([r["pred_measured"] for r in rows])
    spread = np.array([r["spread_measured"] for r in rows])
    fold = np.array([int(r["fold"][4:]) for r in rows])
    floor, figures = intervals.choose_floor(centre, spread, true, fold)
    error = np.abs(true - centre)
    signals = {
        "member spread": spread,
        "fidelity disagreement (measured vs agl)": np.abs(centre - np.log10([r["pred_agl"] for r in rows])),
        "unseen element": unseen_elements(rows).astype(float),
    }
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
    return {
        "rows": len(rows),
        "chosen_floor": floor,
        "floors": {str(k): v for k, v in figures.items()},
        "calibration": intervals.fit(centre, spread, true, floor, "MF measured rows, all folds").to_dict(),
        "domain": domain,
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
    if analysis.get("rows"):
        lines += ["", "Intervals (MF, measured rows; each fold calibrated on the others):", ""]
        lines += ["| floor | 68 % coverage | 95 % coverage | 95 % width (dex) |", "|---|---|---|---|"]
        for floor, x in analysis["floors"].items():
            mark = " (chosen)" if float(floor) == analysis["chosen_floor"] else ""
            lines.append(f"| {floor}{mark} | {x['coverage_68']:.0%} | {x['coverage_95']:.0%} | {x['width_95']:.2f} |")
        lines += ["", "Domain signals (MF, measured rows; out = above the other folds' 80th percentile):", ""]
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
    args = parser.parse_args()
    tables, mf = model_tables(args.log_dir)
    shipped = shipped_scores(mf["rows"]) if args.shipped and mf["rows"] else {}
    analysis = calibration_and_domain(mf["rows"]) if mf["rows"] else {}
    args.out.mkdir(parents=True, exist_ok=True)
    payload = {"models": tables, "shipped": shipped, "mf_measured": analysis}
    (args.out / "tables.json").write_text(json.dumps(payload, indent=1, default=float) + "\n")
    (args.out / "tables.md").write_text(markdown(tables, shipped, analysis))
    print(markdown(tables, shipped, analysis))


if __name__ == "__main__":
    main()
