"""Groups of near-twin crystals, and grouped folds that never split a group (out-of-family evaluation).

A random split puts a crystal's near twins on both sides: PbTe in training, PbSe in validation, or the
same compound at another fidelity. Here two crystals share a group when they are linked, directly or through
others, by either
- the same reduced formula (polymorphs, and one compound at several fidelities), or
- the same *substitution family*: one space group and the same stoichiometry after replacing every element by
  its periodic-table column (PbTe, PbSe, SnTe, GeTe in rock salt; TiNiSn, ZrNiSn, HfNiSn as half-Heuslers).
A held-out group is then a chemistry and structure type the model has not seen with a neighbouring element.
"""

from __future__ import annotations

import random
from collections import Counter, defaultdict
from collections.abc import Iterable

from pymatgen.core import Element, Structure

#: Space-group tolerance (A) for the family key, loose enough for relaxed and experimental cells to agree.
SYMPREC = 0.1


def family_key(structure: Structure) -> str:
    """``<space group>:<column>x<amount>,...``: the structure's substitution family."""
    from pymatgen.symmetry.analyzer import SpacegroupAnalyzer

    try:
        space_group = SpacegroupAnalyzer(structure, symprec=SYMPREC).get_space_group_number()
    except Exception:
        space_group = 0
    reduced = structure.composition.reduced_composition
    columns = sorted((_column(str(e)), float(amount)) for e, amount in reduced.items())
    return f"{space_group}:" + ",".join(f"{column}x{amount:g}" for column, amount in columns)


def _column(symbol: str) -> int:
    """Periodic-table column (lanthanides and actinides count as column 3)."""
    element = Element(symbol)
    return 3 if element.is_lanthanoid or element.is_actinoid else int(element.group)


class _UnionFind:
    def __init__(self) -> None:
        self.parent: dict[str, str] = {}

    def find(self, item: str) -> str:
        self.parent.setdefault(item, item)
        while self.parent[item] != item:
            self.parent[item] = self.parent[self.parent[item]]
            item = self.parent[item]
        return item

    def union(self, a: str, b: str) -> None:
        root_a, root_b = self.find(a), self.find(b)
        if root_a != root_b:
            self.parent[max(root_a, root_b)] = min(root_a, root_b)


def crystal_groups(crystals: Iterable[tuple[str, str, str]]) -> dict[str, str]:
    """Group of each crystal key from ``(key, reduced formula, family key)``; named by its smallest member."""
    links = _UnionFind()
    items = list(crystals)
    for key, formula, family in items:
        links.union(key, f"formula:{formula}")
        links.union(key, f"family:{family}")
    return {key: links.find(key) for key, _, _ in items}


def assign_folds(
    groups: dict[str, str], folds: int, seed: int, weight: dict[str, float] | None = None
) -> dict[str, int]:
    """Fold (0..folds-1) of each crystal key; all crystals of a group share one fold.

    Groups holding weight (``weight`` per key: e.g. 1 for the fidelity whose balance matters most) go first,
    heaviest first, each into the fold with the least weight so far; then the others, largest first, each into
    the fold with the fewest crystals. Ties keep a seeded random order.
    """
    if folds < 2:
        raise ValueError(f"folds must be at least 2, got {folds}")
    weight = weight or {}
    group_weight: dict[str, float] = defaultdict(float)
    group_size: Counter[str] = Counter()  # crystals per group
    for key, group in groups.items():
        group_weight[group] += weight.get(key, 0.0)
        group_size[group] += 1
    order = sorted(group_size)
    random.Random(seed).shuffle(order)
    order.sort(key=lambda g: (-group_weight[g], -group_size[g]))  # stable: ties keep the seeded order
    fold_weight, fold_size = [0.0] * folds, [0.0] * folds
    fold_of_group: dict[str, int] = {}
    for group in order:
        if group_weight[group] > 0:
            fold = min(range(folds), key=lambda f: (fold_weight[f], fold_size[f], f))
        else:
            fold = min(range(folds), key=lambda f: (fold_size[f], f))
        fold_of_group[group] = fold
        fold_weight[fold] += group_weight[group]
        fold_size[fold] += group_size[group]
    return {key: fold_of_group[group] for key, group in groups.items()}


def source_families(source: str) -> dict[str, tuple[str, str]]:
    """``id -> (reduced formula, family key)`` of a source's crystals, cached by the source's key."""
    import json

    from paraisite.data import registry
    from paraisite.data.cache import read_verified, settings_key, write_verified
    from paraisite.data.sources import load_source, source_key

    key = settings_key({"families": source_key(source), "symprec": SYMPREC, "version": 1})
    path = registry.cache_dir() / "families" / f"{source}-{key}.json"
    cached = read_verified(path)
    if cached is not None:
        return {k: (v[0], v[1]) for k, v in json.loads(cached).items()}
    result = {
        r.id: (r.structure.composition.reduced_formula, family_key(r.structure)) for r in load_source(source).records
    }
    write_verified(path, json.dumps(result, sort_keys=True).encode())
    return result


def shared_groups(folds: dict[str, int], groups: dict[str, str]) -> list[str]:
    """Groups whose crystals sit in more than one fold (should be none)."""
    seen: dict[str, set[int]] = defaultdict(set)
    for key, fold in folds.items():
        seen[groups[key]].add(fold)
    return sorted(group for group, where in seen.items() if len(where) > 1)
