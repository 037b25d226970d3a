"""How many Dataset1 / Dataset2 crystals also appear in AFLOW (same reduced formula; same formula and space group).

AFLOW is Step III's first training set and a cross-dataset test set: a crystal in both is seen (with its AGL
label, not the ab-initio one) before fine-tuning. Usage: python experiments/diagnostics/aflow_overlap.py
"""

from __future__ import annotations

from pymatgen.core import Composition

from paraisite.data.sources import load_source


def main() -> None:
    """Print the overlap counts."""
    records = {name: load_source(name, "skip").records for name in ("dataset1", "dataset2", "aflow")}

    def keys(name: str) -> list[tuple[str, int]]:
        return [
            (Composition(r.formula).reduced_formula, r.structure.get_space_group_info(symprec=0.1)[1])
            for r in records[name]
        ]

    aflow = keys("aflow")
    formulas, both = {f for f, _ in aflow}, set(aflow)
    for name in ("dataset1", "dataset2"):
        own = keys(name)
        same_formula = sum(f in formulas for f, _ in own)
        same_group = sum(k in both for k in own)
        print(
            f"{name}: {len(own)} crystals; in AFLOW by reduced formula {same_formula}, by formula and space group "
            f"{same_group}"
        )


if __name__ == "__main__":
    main()
