"""Measured lattice thermal conductivities attached to the registry's own crystal structures.

Two public compilations give measured values by formula: ``xia0WT/thermal_conductivity_summary``
(``new_set_tcd.csv``, from SpringerMaterials, with a phase tag and a Materials Project id) and
``lrcfmd/thermal_conductivity_RF`` (``data.csv``: ICSD id, composition, ``kappa_exp``; its
``kappa_latt_comp`` rows are computed values, flagged ``computational_label`` by that repository's training
script, and are not used). Neither ships structures, and none is built or fetched for them: a value is
attached only to a structure already in the registry (the 5,578 AFLOW CIFs, Dataset1, Dataset2).

:func:`curate` applies the rules of :data:`RULES` in order and counts the rows left after each, so the
report says what every rule removed.
"""

from __future__ import annotations

import math
import re
import statistics
from collections import defaultdict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from pymatgen.core import Composition, Element, Structure

#: Room temperature window (K) for values whose temperature is stated; unstated ones are taken as room temperature.
ROOM_TEMPERATURE_K = (250.0, 350.0)
#: Phase tags of non-ambient phases (high temperature, high pressure): their structure at room conditions is
#: another polymorph than the one the tag names, so a formula match would attach the value to the wrong one.
NON_AMBIENT_TAG = re.compile(r"\b(ht|hp)\d*\b")
#: Metallic ceramics: transition, rare-earth or actinide metals with only these partners conduct heat mostly
#: through electrons (TiC, ZrB2, HoB12, ThC, HfH2); their measured value is not a lattice conductivity.
METALLIC_CERAMIC_PARTNERS = frozenset({"B", "C", "N", "H"})
#: Anions whose presence makes a carbide or nitride of a transition metal a salt-like compound rather than a
#: metallic one (MAX phases such as Ti3SiC2 have none of them).
SALT_ANIONS = frozenset({"O", "S", "Se", "Te", "F", "Cl", "Br", "I"})
#: Elemental semimetals: a large electronic share of their measured conductivity.
SEMIMETAL_ELEMENTS = frozenset({"As", "Sb", "Bi", "C"})
#: Merged duplicate values of one crystal must agree within this factor (max/min); wider spreads are dropped as
#: measurements of different things (samples, directions, phases).
DUPLICATE_MAX_RATIO = 3.0
#: Where a crystal also has an ab-initio value (Dataset1, Dataset2), a measured value further than this factor from
#: it is a data error (units, a thin film, another phase): SiC is listed at 0.49 W/mK, its bulk value is ~400.
AB_INITIO_MAX_RATIO = 10.0
#: Space-group tolerance used to tell polymorphs apart (A).
SYMPREC = 0.1


@dataclass(frozen=True)
class MeasuredRow:
    """One measured value as read from a compilation."""

    compilation: str
    line: int
    formula_text: str
    tc: float
    phase_tag: str = ""
    temperature_k: float | None = None
    mp_id: str = ""
    icsd: int | None = None
    pure_flag: str = ""
    composition: Composition | None = None

    @property
    def provenance(self) -> str:
        """``<compilation>:<line>`` (line numbers count the header as line 1)."""
        return f"{self.compilation}:{self.line}"


@dataclass(frozen=True)
class Candidate:
    """A registry structure a measured value may belong to."""

    source: str  # aflow_cif, dataset1, dataset2
    id: str
    structure_file: str
    structure: Structure
    icsd: int | None = None
    space_group: int = 0


@dataclass
class MeasuredCrystal:
    """One curated crystal: its registry structure and its merged measured value."""

    candidate: Candidate
    tc: float
    rows: list[MeasuredRow] = field(default_factory=list)

    @property
    def provenance(self) -> str:
        """Every upstream row merged into this value, ``;``-separated."""
        return ";".join(row.provenance for row in self.rows)


def _number(text: str) -> float | None:
    try:
        value = float(text)
    except ValueError:
        return None
    return value if math.isfinite(value) else None


def read_xia0wt(text: str, name: str = "xia0WT/thermal_conductivity_summary/new_set_tcd.csv") -> list[MeasuredRow]:
    """Rows of ``new_set_tcd.csv`` (``material,measured KL,mp_id,temperature,is_pure``)."""
    import csv

    rows = []
    for line, record in enumerate(csv.DictReader(text.lstrip("\ufeff").splitlines()), start=2):
        material = (record.get("material") or "").strip()
        formula, _, tag = material.partition(" ")
        tc = _number(record.get("measured KL") or "")
        if tc is None:
            continue
        rows.append(
            MeasuredRow(
                name,
                line,
                formula,
                tc,
                tag.strip(),
                _number(record.get("temperature") or ""),
                (record.get("mp_id") or "").strip(),
                None,
                (record.get("is_pure") or "").strip(),
            )
        )
    return rows


def read_lrcfmd(text: str, name: str = "lrcfmd/thermal_conductivity_RF/data.csv") -> list[MeasuredRow]:
    """The measured rows (``kappa_exp`` filled) of ``data.csv``; computed ``kappa_latt_comp`` rows are skipped."""
    import csv

    rows = []
    for line, record in enumerate(csv.DictReader(text.splitlines()), start=2):
        tc = _number(record.get("kappa_exp") or "")
        if tc is None:
            continue
        icsd = _number(record.get("ICSD") or "")
        formula = (record.get("composition") or "").strip()
        rows.append(MeasuredRow(name, line, formula, tc, icsd=None if icsd is None else int(icsd)))
    return rows


def _parsed(row: MeasuredRow) -> MeasuredRow | None:
    try:
        composition = Composition(row.formula_text)
    except Exception:
        return None
    if len(composition) == 0 or row.tc <= 0:
        return None
    return replace(row, composition=composition)


def _composition(row: MeasuredRow) -> Composition:
    if row.composition is None:
        raise ValueError(f"{row.provenance}: composition not parsed")
    return row.composition


def is_stoichiometric(row: MeasuredRow) -> bool:
    """Integer amounts and not flagged impure: no doped or alloyed composition."""
    amounts = _composition(row).values()
    return row.pure_flag.upper() != "FALSE" and all(abs(a - round(a)) < 1e-6 for a in amounts)


def near_room_temperature(row: MeasuredRow) -> bool:
    """Stated temperature inside :data:`ROOM_TEMPERATURE_K`, or none stated."""
    low, high = ROOM_TEMPERATURE_K
    return row.temperature_k is None or low <= row.temperature_k <= high


def ambient_phase(row: MeasuredRow) -> bool:
    """Not tagged as a high-temperature or high-pressure phase."""
    return NON_AMBIENT_TAG.search(row.phase_tag.lower()) is None


def _d_or_f_metal(element: Element) -> bool:
    return bool(element.is_transition_metal or element.is_rare_earth or element.is_actinoid)


def is_metallic(composition: Composition) -> bool:
    """A metal by composition alone (no band gaps are at hand): the classes whose conductivity is mostly electronic.

    Only metals (elemental metals, intermetallics); a d/f metal with only B, C, N or H (metallic borides,
    carbides, nitrides, hydrides); a d/f metal with C or N and no salt-forming anion (MAX phases, e.g. Ti3SiC2);
    an elemental semimetal (As, Sb, Bi, graphite).
    """
    elements = [Element(str(e)) for e in composition.elements]
    symbols = {e.symbol for e in elements}
    if all(e.is_metal for e in elements) or (len(symbols) == 1 and symbols <= SEMIMETAL_ELEMENTS):
        return True
    metals = [e for e in elements if e.is_metal]
    partners = {e.symbol for e in elements if not e.is_metal}
    d_or_f = any(_d_or_f_metal(e) for e in metals)
    if metals and all(_d_or_f_metal(e) for e in metals) and partners <= METALLIC_CERAMIC_PARTNERS:
        return True
    return d_or_f and bool(symbols & {"C", "N"}) and not symbols & SALT_ANIONS


def not_metallic(row: MeasuredRow) -> bool:
    """See :func:`is_metallic`."""
    return not is_metallic(_composition(row))


#: The curation rules, in order: (name, what it keeps). Matching to structures and merging follow them.
RULES: tuple[tuple[str, Callable[[MeasuredRow], bool]], ...] = (
    ("stoichiometric (not doped, alloyed or flagged impure)", is_stoichiometric),
    ("room temperature ({:.0f}-{:.0f} K, or not stated)".format(*ROOM_TEMPERATURE_K), near_room_temperature),
    ("ambient phase (no ht/hp tag)", ambient_phase),
    ("not a metal, intermetallic or metallic ceramic", not_metallic),
)  # fmt: skip


def _icsd_from_stem(stem: str) -> int | None:
    match = re.search(r"_ICSD_(\d+)$", stem)
    return int(match.group(1)) if match else None


class StructureIndex:
    """The registry's structures by reduced formula, ICSD id and Dataset id (space groups computed on demand)."""

    def __init__(
        self,
        candidates: Iterable[tuple[str, str, str, Callable[[], Structure], str]],
        ab_initio: dict[str, float] | None = None,
    ) -> None:
        """``candidates``: ``(source, id, structure_file, load, reduced_formula)``; structures load lazily.

        ``ab_initio``: computed TC (W/mK) by candidate id, where one is known (Dataset1, Dataset2).
        """
        self.ab_initio = dict(ab_initio or {})
        self._loaders: dict[tuple[str, str], tuple[str, Callable[[], Structure]]] = {}
        self._loaded: dict[tuple[str, str], Candidate | None] = {}
        #: Structure files that failed to load, with the reason.
        self.unreadable: list[str] = []
        self.by_formula: dict[str, list[tuple[str, str]]] = defaultdict(list)
        self.by_icsd: dict[int, tuple[str, str]] = {}
        self.by_id: dict[str, tuple[str, str]] = {}
        for source, ident, structure_file, load, formula in candidates:
            key = (source, ident)
            self._loaders[key] = (structure_file, load)
            self.by_formula[formula].append(key)
            icsd = _icsd_from_stem(ident)
            if icsd is not None:
                self.by_icsd[icsd] = key
            self.by_id[ident] = key

    def candidate(self, key: tuple[str, str]) -> Candidate | None:
        """The candidate ``key`` with its structure and space group (loaded once); None if it does not load."""
        if key not in self._loaded:
            from pymatgen.symmetry.analyzer import SpacegroupAnalyzer

            structure_file, load = self._loaders[key]
            try:
                structure = load()
            except ValueError as error:
                self.unreadable.append(str(error))
                self._loaded[key] = None
                return None
            try:
                space_group = SpacegroupAnalyzer(structure, symprec=SYMPREC).get_space_group_number()
            except Exception:
                space_group = 0
            self._loaded[key] = Candidate(
                key[0], key[1], structure_file, structure, _icsd_from_stem(key[1]), space_group
            )
        return self._loaded[key]


def _preference(candidate: Candidate) -> tuple[int, int, str]:
    """Dataset1/Dataset2 structures first (computed ab initio), then the lowest ICSD number."""
    return (0 if candidate.source != "aflow_cif" else 1, candidate.icsd or 0, candidate.id)


def match(row: MeasuredRow, index: StructureIndex) -> tuple[str, Candidate | None]:
    """The registry structure of a row, and how it was found (or why none was).

    By identifier first (an ICSD id naming an AFLOW CIF; a Materials Project id naming a Dataset1 crystal), else
    by reduced formula: all registry structures of that formula must share one space group (one polymorph;
    ICSD often holds the same phase several times), else the row is ambiguous.
    """
    formula = _composition(row).reduced_formula
    for how, key in (
        ("icsd id", index.by_icsd.get(row.icsd or -1)),
        ("materials project id", index.by_id.get(row.mp_id)),
    ):
        named = None if key is None else index.candidate(key)
        if named is not None and named.structure.composition.reduced_formula == formula:
            return how, named
    candidates = [c for c in map(index.candidate, index.by_formula.get(formula, [])) if c is not None]
    if not candidates:
        return "no registry structure", None
    if len({c.space_group for c in candidates}) > 1:
        return "ambiguous polymorph", None
    return "formula, one polymorph", min(candidates, key=_preference)


def merge(rows: Sequence[MeasuredRow]) -> tuple[float, float]:
    """Merged value (geometric median: the median of log10 values) and spread (max/min) of one crystal's rows."""
    logs = [math.log10(row.tc) for row in rows]
    return 10 ** statistics.median(logs), 10 ** (max(logs) - min(logs))


def curate(rows: Sequence[MeasuredRow], index: StructureIndex) -> tuple[list[MeasuredCrystal], dict[str, Any]]:
    """Apply every rule in order; the report counts the rows (then crystals) left after each step."""
    steps: list[dict[str, Any]] = [{"step": "measured rows read", "left": len(rows)}]
    kept = [parsed for parsed in map(_parsed, rows) if parsed is not None]
    steps.append({"step": "formula parses (pymatgen Composition), value > 0", "left": len(kept)})
    for name, keep in RULES:
        kept = [row for row in kept if keep(row)]
        steps.append({"step": name, "left": len(kept)})
    how: dict[str, int] = defaultdict(int)
    by_crystal: dict[tuple[str, str], list[MeasuredRow]] = defaultdict(list)
    candidates: dict[tuple[str, str], Candidate] = {}
    for row in kept:
        reason, candidate = match(row, index)
        how[reason] += 1
        if candidate is not None:
            key = (candidate.source, candidate.id)
            by_crystal[key].append(row)
            candidates[key] = candidate
    matched = sum(len(v) for v in by_crystal.values())
    steps.append({"step": "a registry structure of one polymorph", "left": matched, "how": dict(how)})
    steps.append({"step": "crystals (rows of one structure merged)", "left": len(by_crystal)})
    crystals: list[MeasuredCrystal] = []
    spread_dropped: list[dict[str, Any]] = []
    for key in sorted(by_crystal):
        value, spread = merge(by_crystal[key])
        if spread > DUPLICATE_MAX_RATIO:
            spread_dropped.append({"crystal": key[1], "values": [r.tc for r in by_crystal[key]]})
            continue
        crystals.append(MeasuredCrystal(candidates[key], value, by_crystal[key]))
    steps.append({"step": f"duplicate values agree within x{DUPLICATE_MAX_RATIO:g}", "left": len(crystals)})
    inconsistent = []
    for crystal in list(crystals):
        computed = index.ab_initio.get(crystal.candidate.id)
        if computed is not None and abs(math.log10(crystal.tc / computed)) > math.log10(AB_INITIO_MAX_RATIO):
            inconsistent.append({"crystal": crystal.candidate.id, "measured": crystal.tc, "ab_initio": computed})
            crystals.remove(crystal)
    steps.append(
        {"step": f"within x{AB_INITIO_MAX_RATIO:g} of the ab-initio value where one exists", "left": len(crystals)}
    )
    spread_dropped += inconsistent
    merged = sum(1 for c in crystals if len(c.rows) > 1)
    report = {
        "steps": steps,
        "merged_crystals": merged,
        "dropped_inconsistent": spread_dropped,
        "unreadable_structures": index.unreadable,
    }
    return crystals, report
