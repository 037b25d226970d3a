"""Add the true-TC MAPE to paper-protocol run records written before runs recorded it themselves.

Under ``protocol=paper`` a run scores its predictions against the original code's distorted reference TC (see
``paraisite.evaluation.metrics.reference_tc``); since this change every such evaluation also records
``true_tc_mape``, the same predictions against the true TC. For a record written earlier, this script reloads the
run's best checkpoint (from the sweep's log directory), rebuilds the validation split of its own and of every
cross-evaluated dataset from the record's resolved config, re-scores it with the paper's scaling, checks that this
reproduces the recorded MAPE (to 1e-6), and only then writes ``true_tc_mape`` into the record.

    python experiments/diagnostics/true_tc_rescore.py logs/full-cpu-paper experiments/full-cpu-paper/runs
"""

from __future__ import annotations

import argparse
import dataclasses
import math
from pathlib import Path

from omegaconf import OmegaConf

from paraisite.evaluation.cross import evaluate_on
from paraisite.models.regressor import load_ltc_checkpoint
from paraisite.record import read_run_record, write_run_record
from paraisite.training.builders import build_datamodule

#: Relative agreement required between the recorded and the re-scored paper-scaled MAPE.
TOLERANCE = 1e-6


def rescore(record_path: Path, log_dir: Path, records_dir: Path) -> str:
    """Add ``true_tc_mape`` to one record; a line saying what was done."""
    relative = record_path.parent.relative_to(records_dir)
    record = read_run_record(record_path)
    scored = {name: m for name, m in (record.cross or {}).items() if m.get("label_scaling") == "paper"}
    if record.status != "completed" or not scored or all("true_tc_mape" in m for m in scored.values()):
        return f"{relative}: nothing to add"
    checkpoint = log_dir / relative / "checkpoints" / "best.ckpt"
    if not checkpoint.is_file():
        return f"{relative}: no checkpoint at {checkpoint}, left as it is"
    cfg = OmegaConf.load(record_path.parent / "config_resolved.yaml")
    model = load_ltc_checkpoint(checkpoint)[0]
    for name, metrics in scored.items():
        option = None if name == record.dataset else name.lower()
        again = evaluate_on(model, build_datamodule(cfg, option), "paper")
        if not math.isclose(again["mape"], metrics["mape"], rel_tol=TOLERANCE) or again["count"] != metrics["count"]:
            raise RuntimeError(f"{relative} on {name}: re-scored MAPE {again['mape']} != recorded {metrics['mape']}")
        metrics["true_tc_mape"] = again["true_tc_mape"]
    best = scored.get(record.dataset, record.best)  # the own split's scores, now with true_tc_mape
    write_run_record(record_path, dataclasses.replace(record, best=best))
    return f"{relative}: true-TC MAPE added on {len(scored)} datasets"


def main() -> None:
    """Add the true-TC MAPE to every paper-scaled record under RECORDS_DIR whose checkpoint is in LOG_DIR."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("log_dir", type=Path, help="the sweep's log directory, holding the runs' checkpoints")
    parser.add_argument("records_dir", type=Path, help="the committed records (the same layout)")
    args = parser.parse_args()
    for path in sorted(args.records_dir.glob("**/seed*/metrics.json")):
        print(rescore(path, args.log_dir, args.records_dir), flush=True)


if __name__ == "__main__":
    main()
