"""Readers of the upstream LTC datasets, converted once into a safe, content-addressed JSON cache.

Two formats exist upstream, so there are two readers; datasets (Dataset1, Dataset2, MIX, AFLOW) are
combinations of *sources* chosen in config (``conf/data``), never separate code paths.

- ``paraisite_pickles``: ``structures_NAME.pkl`` (pymatgen Structures) + ``NAME.pkl`` (DataFrame with
  ``mpd_id, TC, formula, structure``) from liudakl/ParAIsite. The pickled Structures are broken under
  current pymatgen, so each is rebuilt with ``Structure.from_dict(s.as_dict())``. Pickles are only
  unpickled after their sha256 has been verified by the registry.
- ``aflow_pairs``: the AFLOW CIFs of liudakl/ParAIsite paired with their TC value in ``TC_AFLOW.pkl``
  through the 2019 AFLOW values of the extraordinary-materials CSVs (see :func:`pair_aflow_values`).
"""

from __future__ import annotations

import bisect
import functools
import gzip
import json
import logging
import pickle
import time
import warnings
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from pymatgen.core import Composition, Structure

from paraisite.data import registry
from paraisite.data.cache import read_verified, settings_key, write_verified
from paraisite.data.cif import is_cif, read_cif

log = logging.getLogger(__name__)

PARAISITE = "liudakl/ParAIsite"
AFLOW_CSV_REPO = "anthony-wang/can_machine_learning_find_extraordinary_materials"
AFLOW_CSV_DIR = "data/agl_log10_thermal_conductivity_300K"
CONVERTER_VERSION = 2
#: What kind of value each source's TC is; a multi-fidelity model takes it as an input (``data.fidelities``).
FIDELITIES = ("agl", "ab-initio", "measured")


class StructureFileError(ValueError):
    """A structure file could not be read; the message names the file and the problem."""


@dataclass
class CrystalRecord:
    """One crystal with its lattice thermal conductivity (W/mK)."""

    id: str
    formula: str
    tc: float
    structure: Structure
    source: str
    #: Registry key of the structure's file (``#<index>`` into a pickled list).
    structure_file: str = ""
    #: Where the value comes from (upstream file and row), for export.
    provenance: str = ""

    def to_json(self) -> dict[str, Any]:
        """JSON form used in the converted cache."""
        return {
            "id": self.id,
            "formula": self.formula,
            "tc": self.tc,
            "structure": self.structure.as_dict(),
            "structure_file": self.structure_file,
            "provenance": self.provenance,
        }

    @classmethod
    def from_json(cls, row: dict[str, Any], source: str) -> CrystalRecord:
        """Inverse of :meth:`to_json`."""
        structure = Structure.from_dict(row["structure"])
        extra = (row.get("structure_file", ""), row.get("provenance", ""))
        return cls(row["id"], row["formula"], float(row["tc"]), structure, source, *extra)


@dataclass
class SourceData:
    """The converted records of one source and what the conversion reported."""

    name: str
    key: str
    records: list[CrystalRecord]
    report: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class SourceSpec:
    """How to build one source: a reader and the registry files it reads."""

    reader: str
    inputs: tuple[registry.UpstreamFile, ...]
    options: dict[str, Any] = field(default_factory=dict)
    description: str = ""
    fidelity: str = "ab-initio"


def _pickle_pair(stem: str) -> tuple[registry.UpstreamFile, ...]:
    base = "main/src/structures_scalers/"
    return (registry.get(PARAISITE, f"{base}structures_{stem}.pkl"), registry.get(PARAISITE, f"{base}{stem}.pkl"))


def _aflow_inputs() -> tuple[registry.UpstreamFile, ...]:
    tc = registry.get(PARAISITE, "main/src/structures_scalers/TC_AFLOW.pkl")
    csvs = registry.select(AFLOW_CSV_REPO, f"{AFLOW_CSV_DIR}/*.csv")
    cifs = registry.select(PARAISITE, "main/src/aflow_cif/*.cif")
    return (tc, *csvs, *cifs)


def _measured_inputs() -> tuple[registry.UpstreamFile, ...]:
    compilations = (
        registry.get(XIA0WT, "new_set_tcd.csv"),
        registry.get(LRCFMD, "data.csv"),
    )
    structures = (*_pickle_pair("Dataset1"), *_pickle_pair("Dataset2"))
    return (*compilations, *structures, *registry.select(PARAISITE, "main/src/aflow_cif/*.cif"))


XIA0WT = "xia0WT/thermal_conductivity_summary"
LRCFMD = "lrcfmd/thermal_conductivity_RF"

SOURCES: dict[str, Callable[[], SourceSpec]] = {
    "dataset1": lambda: SourceSpec(
        "paraisite_pickles", _pickle_pair("Dataset1"), {}, "Dataset1 (L96): 95 binary compounds, ab-initio LTC"
    ),
    "dataset2": lambda: SourceSpec(
        "paraisite_pickles", _pickle_pair("Dataset2"), {}, "Dataset2 (HH143): 143 half-Heuslers, ab-initio LTC"
    ),
    "aflow": lambda: SourceSpec(
        "aflow_pairs",
        _aflow_inputs(),
        {"first_tolerance": 2e-7, "second_tolerance": 2e-6},
        "AFLOW AGL LTC at 300 K: the 3,659 of the paper's 5,578 crystals whose value can be paired offline",
        "agl",
    ),
    "measured": lambda: SourceSpec(
        "measured_compilations",
        _measured_inputs(),
        {},
        "Measured room-temperature LTC from two public compilations, attached to registry structures only",
        "measured",
    ),
}


def source_spec(name: str) -> SourceSpec:
    """The spec of a named source; unknown names list the valid ones."""
    if name not in SOURCES:
        raise KeyError(f"unknown LTC source {name!r}; valid sources: {', '.join(SOURCES)}")
    return SOURCES[name]()


def source_key(name: str, on_bad_structure: str = "skip") -> str:
    """Cache key of a converted source: hashes of its input files, reader, options and policy."""
    spec = source_spec(name)
    return settings_key(
        {
            "source": name,
            "reader": spec.reader,
            "version": CONVERTER_VERSION,
            "options": spec.options,
            "on_bad_structure": on_bad_structure,
            "inputs": sorted(f.sha256 for f in spec.inputs),
        }
    )


def read_structure(path: str | Path) -> Structure:
    """Read any structure file pymatgen understands (CIF, POSCAR, ...); errors name the file and problem."""
    path = Path(path)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            structure = read_cif(path) if is_cif(path) else Structure.from_file(path)
    except Exception as error:
        raise StructureFileError(f"{path}: cannot read a crystal structure ({type(error).__name__}: {error})") from None
    if len(structure) == 0:
        raise StructureFileError(f"{path}: the file holds no atoms")
    return structure


def _rebuilt(structure: Structure) -> Structure:
    """Rebuild a Structure unpickled from an old pymatgen into a valid current object."""
    return Structure.from_dict(structure.as_dict())


def read_paraisite_pickles(
    name: str, paths: list[Path], on_bad_structure: str = "skip"
) -> tuple[list[CrystalRecord], dict[str, Any]]:
    """Read a ``structures_NAME.pkl`` + ``NAME.pkl`` pair (already checksum-verified; no files to skip)."""
    structures_path, table_path = paths
    with open(structures_path, "rb") as stream:
        structures = [_rebuilt(s) for s in pickle.load(stream)]
    table = pd.read_pickle(table_path)  # sha256 verified by the registry
    if len(structures) != len(table):
        raise ValueError(f"{structures_path} has {len(structures)} structures but {table_path} has {len(table)} rows")
    key, values = registry_key(structures_path), registry_key(table_path)
    records = [
        CrystalRecord(str(row.mpd_id), str(row.formula), float(row.TC), structure, name, f"{key}#{i}", f"{values}#{i}")
        for i, (row, structure) in enumerate(zip(table.itertuples(index=False), structures, strict=True))
    ]
    return records, {"rows": len(records)}


def registry_key(path: Path) -> str:
    """``<owner>/<repo>/<path>`` of a fetched file (its cache path ends with it)."""
    parts = path.parts
    for repo in registry.UPSTREAM_COMMITS:
        owner, name = repo.split("/")
        for i in range(len(parts) - 1):
            if parts[i] == owner and parts[i + 1] == name:
                return "/".join(parts[i:])
    return path.name


def pair_aflow_values(
    targets: dict[str, float], tc_values: Iterable[float], first_tolerance: float, second_tolerance: float
) -> dict[str, int]:
    """Pair AFLOW CIF ids with indices of ``TC_AFLOW.pkl`` values.

    ``targets`` maps a CIF stem to log10(TC) from the 2019 CSVs (9 decimals). Pass 1: a CIF is paired
    when every unused TC value within ``first_tolerance`` (relative) of ``10**target`` is the same number;
    one of them is consumed. Pass 2, for the rest: pair when exactly one unused value lies within
    ``second_tolerance``. Values AFLOW recomputed since 2019 stay unpaired. CIFs are taken in sorted order.
    """
    values = np.asarray(list(tc_values), dtype=float)
    order = np.argsort(values, kind="stable")
    sorted_values = values[order]
    used = np.zeros(len(values), dtype=bool)

    def free_candidates(value: float, tolerance: float) -> list[int]:
        low = bisect.bisect_left(sorted_values, value * (1 - tolerance))
        high = bisect.bisect_right(sorted_values, value * (1 + tolerance))
        return [int(order[i]) for i in range(low, high) if not used[order[i]]]

    pairs: dict[str, int] = {}
    leftover: list[str] = []
    for cif_id in sorted(targets):
        candidates = free_candidates(10 ** targets[cif_id], first_tolerance)
        if candidates and len({values[i] for i in candidates}) == 1:
            used[candidates[0]] = True
            pairs[cif_id] = candidates[0]
        else:
            leftover.append(cif_id)
    for cif_id in leftover:
        candidates = free_candidates(10 ** targets[cif_id], second_tolerance)
        if len(candidates) == 1:
            used[candidates[0]] = True
            pairs[cif_id] = candidates[0]
    return pairs


def read_aflow_pairs(
    name: str, paths: list[Path], first_tolerance: float, second_tolerance: float, on_bad_structure: str
) -> tuple[list[CrystalRecord], dict[str, Any]]:
    """Pair AFLOW CIFs with TC values and read the paired CIFs."""
    tc_path, *rest = paths
    csv_paths = [p for p in rest if p.suffix == ".csv"]
    cif_paths = {p.stem: p for p in rest if p.suffix == ".cif"}
    with open(tc_path, "rb") as stream:
        tc_values = [float(v) for v in pickle.load(stream)]
    table = pd.concat([pd.read_csv(p) for p in csv_paths], ignore_index=True)
    targets = {row.cif_id: float(row.target) for row in table.itertuples() if row.cif_id in cif_paths}
    pairs = pair_aflow_values(targets, tc_values, first_tolerance, second_tolerance)
    records, unreadable = [], []
    for cif_id in sorted(pairs):
        try:
            structure = read_structure(cif_paths[cif_id])
        except StructureFileError as error:
            if on_bad_structure == "raise":
                raise
            log.warning("skipped: %s", error)
            unreadable.append(str(error))
            continue
        cif_key = registry_key(cif_paths[cif_id])
        provenance = f"{registry_key(tc_path)}#{pairs[cif_id]}"
        formula = structure.composition.reduced_formula
        records.append(CrystalRecord(cif_id, formula, tc_values[pairs[cif_id]], structure, name, cif_key, provenance))
    report = {
        "tc_values": len(tc_values),
        "cifs": len(cif_paths),
        "csv_rows_with_cif": len(targets),
        "paired": len(pairs),
        "unreadable": unreadable,
        "records": len(records),
    }
    return records, report


def _same(structure: Structure) -> Structure:
    return structure


def read_measured_compilations(
    name: str, paths: list[Path], on_bad_structure: str = "skip"
) -> tuple[list[CrystalRecord], dict[str, Any]]:
    """Curate the measured compilations onto the registry's structures (see :mod:`paraisite.data.measured`)."""
    from paraisite.data import measured

    xia0wt_path, lrcfmd_path, *rest = paths
    rows = measured.read_xia0wt(xia0wt_path.read_text(encoding="utf-8"))
    rows += measured.read_lrcfmd(lrcfmd_path.read_text(encoding="utf-8"))
    pickles, cifs = rest[:4], [p for p in rest[4:] if p.suffix == ".cif"]
    entries: list[tuple[str, str, str, Callable[[], Structure], str]] = []
    ab_initio: dict[str, float] = {}
    for source, pair in (("dataset1", pickles[:2]), ("dataset2", pickles[2:])):
        for record in read_paraisite_pickles(source, pair)[0]:
            formula = record.structure.composition.reduced_formula
            ab_initio[record.id] = record.tc
            entries.append(
                (source, record.id, record.structure_file, functools.partial(_same, record.structure), formula)
            )
    unreadable: list[str] = []
    for path in cifs:
        try:
            formula = Composition(path.stem.rsplit("_ICSD_", 1)[0]).reduced_formula
        except Exception:
            unreadable.append(f"{path.name}: formula in the file name does not parse")
            continue
        entries.append(("aflow_cif", path.stem, registry_key(path), functools.partial(read_structure, path), formula))
    crystals, report = measured.curate(rows, measured.StructureIndex(entries, ab_initio))
    records = [
        CrystalRecord(
            c.candidate.id,
            c.candidate.structure.composition.reduced_formula,
            c.tc,
            c.candidate.structure,
            name,
            c.candidate.structure_file,
            c.provenance,
        )
        for c in crystals
    ]
    report["records"] = len(records)
    report["unreadable"] = unreadable + report.pop("unreadable_structures")
    return records, report


READERS: dict[str, Callable[..., tuple[list[CrystalRecord], dict[str, Any]]]] = {
    "paraisite_pickles": read_paraisite_pickles,
    "aflow_pairs": read_aflow_pairs,
    "measured_compilations": read_measured_compilations,
}


BAD_STRUCTURE_POLICIES = ("skip", "raise")


def converted_path(name: str, on_bad_structure: str = "skip") -> Path:
    """Where the converted form of a source lives in the cache."""
    return registry.cache_dir() / "converted" / f"{name}-{source_key(name, on_bad_structure)}.json.gz"


def load_source(name: str, on_bad_structure: str = "skip") -> SourceData:
    """Records of a source: from the converted cache when its key matches, else fetched, verified, converted.

    ``on_bad_structure``: ``skip`` reports an unreadable structure file and leaves it out, ``raise`` refuses it.
    """
    if on_bad_structure not in BAD_STRUCTURE_POLICIES:
        raise ValueError(f"on_bad_structure={on_bad_structure!r}; valid: {', '.join(BAD_STRUCTURE_POLICIES)}")
    key = source_key(name, on_bad_structure)
    path = converted_path(name, on_bad_structure)
    cached = read_verified(path)
    if cached is not None:
        try:
            payload = json.loads(gzip.decompress(cached))
            records = [CrystalRecord.from_json(row, name) for row in payload["records"]]
            return SourceData(name, key, records, payload["report"])
        except Exception as error:  # verified but unreadable (an older format): convert again
            log.warning("converted cache %s does not load (%s: %s); rebuilding it", path, type(error).__name__, error)
    spec = source_spec(name)
    start = time.perf_counter()
    paths = [registry.fetch_entry(f) for f in spec.inputs]
    records, report = READERS[spec.reader](name, paths, on_bad_structure=on_bad_structure, **spec.options)
    report["convert_seconds"] = round(time.perf_counter() - start, 2)
    payload = {"source": name, "key": key, "report": report, "records": [r.to_json() for r in records]}

    write_verified(path, gzip.compress(json.dumps(payload).encode(), mtime=0))
    log.info("converted %s: %d records in %.1f s -> %s", name, len(records), report["convert_seconds"], path)
    return SourceData(name, key, records, report)
