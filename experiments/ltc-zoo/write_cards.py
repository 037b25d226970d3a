"""Write the zoo's card data from the measured evidence: ``card.json`` of each shipped ensemble, ``planned.json``.

Usage: python experiments/ltc-zoo/write_cards.py (from the repository root; rewrites the files in place).

- ``paraisite/zoo/models/<name>/card.json``: what each shipped Step II ensemble is for (the prose below), its
  validation MAPE (its manifest's figures) and how it reads measured conductivities of the compounds outside
  Dataset1 (``experiments/ltc-mf/shipped_on_measured.json``), pinned by sha256 in its manifest. ``paraisite zoo
  ship --use-for ... --measured ...`` writes the same file for a newly shipped ensemble.
- ``paraisite/zoo/planned.json``: the Step III names, the shipped ensemble each points to, and their validation MAPE
  over the 9 recorded seeds at the full budget (``experiments/full-cpu-clean/runs``) and the quick profile
  (``experiments/zoo-quick/members.csv``).
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np

from paraisite.zoo.cards import PLANNED_FILE, card_data, write_card
from paraisite.zoo.shipped import shipped_bundle_dir, shipped_manifests

ROOT = Path(__file__).resolve().parents[2]
MEASURED = "experiments/ltc-mf/shipped_on_measured.json"
AFLOW_AGL = "AFLOW AGL: Toher et al., Phys. Rev. B 90, 174107 (2014)"
#: Training data, short (the zoo table) and long (the card), by dataset.
DATASETS = {
    "Dataset1": ("Dataset1 (L96)", "Dataset1 (L96): 95 binary compounds, ab-initio LTC"),
    "Dataset2": ("Dataset2 (HH143)", "Dataset2 (HH143): 143 half-Heuslers, ab-initio LTC"),
    "MIX": ("MIX (Dataset1 + Dataset2)", "MIX: Dataset1 + Dataset2, 238 crystals, ab-initio LTC"),
    "AFLOW": ("AFLOW AGL", "AFLOW: 3,643 usable crystals with AGL (Debye-Grueneisen) LTC, low fidelity, broad scope"),
}
#: What each shipped ensemble is for and not for; the figures come from the evidence files.
USE = {
    "Dataset1": (
        "simple binary compounds (rocksalt, zincblende, wurtzite and similar) computed ab initio, like Dataset1's",
        "measured values of other compounds: it reads them high (below)",
    ),
    "Dataset2": (
        "half-Heusler (XYZ, F-43m) compounds: the lowest error of all ensembles, on their own family only",
        "crystals outside the half-Heusler family",
    ),
    "MIX": (
        "crystals like its training ones (simple binaries and half-Heuslers, ab-initio values), and ranking others",
        "values of other real crystals: it reads measured conductivities high, worse than a constant (below)",
    ),
    "AFLOW": (
        "ranking broad chemistries (it saw 3,643 crystals, with AGL values, not ab-initio ones)",
        "absolute values: it reads measured conductivities low (below)",
    ),
}


def _figure(mapes: list[float], source: str, budget: str) -> dict:
    return {
        "mape_mean": float(np.mean(mapes)),
        "mape_std": float(np.std(mapes, ddof=1)),
        "members": len(mapes),
        "budget": budget,
        "source": source,
    }


def planned() -> dict:
    """``planned.json``: the Step III names with their recorded figures, and the Step II AFLOW name."""
    runs = ROOT / "experiments" / "full-cpu-clean" / "runs"
    with open(ROOT / "experiments" / "zoo-quick" / "members.csv", newline="") as stream:
        quick = list(csv.DictReader(stream))
    models: dict[str, dict] = {}
    for dataset in ("Dataset1", "Dataset2", "MIX"):
        full = [
            json.loads(p.read_text())["best"]["mape"]
            for p in sorted((runs / "step3" / dataset).glob("seed*/metrics.json"))
        ]
        short, long = DATASETS[dataset]
        models[f"ltc-step3-{dataset.lower()}"] = {
            "origin": f"step3/{dataset}",
            "instead": f"ltc-step2-{dataset.lower()}",
            "data_reference": f"{short}; AFLOW AGL (Step II)",
            "training_data": f"{long}, after AFLOW AGL lattice thermal conductivities (Step II, {AFLOW_AGL})",
            "figures": {
                "full": _figure(full, "experiments/full-cpu-clean", "9 seeds, 300 epochs, `protocol=clean`"),
                "quick": _figure(
                    [float(row["val_mape"]) for row in quick if row["dataset"] == dataset],
                    "experiments/zoo-quick",
                    "25 epochs, AFLOW subsampled to 400 crystals",
                ),
            },
        }
    short, long = DATASETS["AFLOW"]
    models["ltc-step2-aflow"] = {"origin": "step2/AFLOW", "data_reference": short, "training_data": long}
    return {
        "about": "Zoo names planned but not shipped; written by experiments/ltc-zoo/write_cards.py from the records",
        "models": models,
    }


def main() -> None:
    """Write every shipped ensemble's card and the planned names' file."""
    for name, manifest in shipped_manifests().items():
        dataset = manifest["dataset"]
        use_for, not_for = USE[dataset]
        short, long = DATASETS[dataset]
        card = card_data(manifest, use_for, not_for, long, short, measured=ROOT / MEASURED, measured_source=MEASURED)
        print(write_card(shipped_bundle_dir(name), card))
    PLANNED_FILE.write_text(json.dumps(planned(), indent=2) + "\n")
    print(PLANNED_FILE)


if __name__ == "__main__":
    main()
