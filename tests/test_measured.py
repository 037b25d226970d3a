"""The measured-LTC source: curation rules on small real rows, and the real source exported through the CLI."""

from __future__ import annotations

import csv
import os
import subprocess
import sys

import pytest
from pymatgen.core import Lattice, Structure

from paraisite.data import measured, registry
from paraisite.data.sources import load_source

XIA0WT_HEADER = "material,measured KL,mp_id,temperature,is_pure\n"


def rocksalt(a: str, b: str, lattice: float = 6.4) -> Structure:
    return Structure.from_spacegroup("Fm-3m", Lattice.cubic(lattice), [a, b], [[0, 0, 0], [0.5, 0.5, 0.5]])


def zincblende(a: str, b: str) -> Structure:
    return Structure.from_spacegroup("F-43m", Lattice.cubic(5.41), [a, b], [[0, 0, 0], [0.25, 0.25, 0.25]])


def wurtzite(a: str, b: str) -> Structure:
    lattice = Lattice.hexagonal(3.82, 6.26)
    return Structure.from_spacegroup("P6_3mc", lattice, [a, b], [[1 / 3, 2 / 3, 0], [1 / 3, 2 / 3, 0.375]])


def index_of(entries: dict[str, Structure], ab_initio: dict[str, float] | None = None) -> measured.StructureIndex:
    """An index of in-memory structures; ids like AFLOW CIF stems (``<formula>_ICSD_<n>``)."""
    rows = [
        ("aflow_cif", ident, f"test/{ident}.cif", lambda s=s: s, s.composition.reduced_formula)
        for ident, s in entries.items()
    ]
    return measured.StructureIndex(rows, ab_initio)


def curated(text: str, entries: dict[str, Structure], **kwargs):
    rows = measured.read_xia0wt(XIA0WT_HEADER + text)
    return measured.curate(rows, index_of(entries, **kwargs))


def test_each_rule_removes_what_it_names_and_counts_it():
    text = (
        "PbTe rt,2.0,mp-19717,300,\n"  # kept
        "Cu,398,mp-30,,\n"  # metal
        "AlNi3 rt,28.9,mp-2593,,\n"  # intermetallic
        "TiC,17.2,mp-631,,\n"  # metallic ceramic
        "PbTe,5,mp-19717,10,\n"  # far from room temperature
        "PbTe ht,2.1,mp-19717,,\n"  # a high-temperature phase
        "PbTe,2.2,,,FALSE\n"  # flagged impure
        "alpha-Fe2O3,20,mp-19770,,\n"  # formula does not parse
    )
    entries = {"Pb1Te1_ICSD_1": rocksalt("Pb", "Te"), "Cu1_ICSD_2": Structure(Lattice.cubic(3.6), ["Cu"], [[0, 0, 0]])}
    crystals, report = curated(text, entries)
    assert [(c.candidate.id, c.tc) for c in crystals] == [("Pb1Te1_ICSD_1", pytest.approx(2.0))]
    assert [step["left"] for step in report["steps"]] == [8, 7, 6, 5, 4, 1, 1, 1, 1, 1]
    assert crystals[0].provenance.endswith("new_set_tcd.csv:2")


def test_polymorphs_of_two_space_groups_are_ambiguous_and_one_space_group_is_not():
    text = "ZnS rt,25.1,,,\nPbTe rt,2.0,,,\n"
    entries = {
        "S1Zn1_ICSD_10": zincblende("Zn", "S"),
        "S1Zn1_ICSD_11": wurtzite("Zn", "S"),
        "Pb1Te1_ICSD_21": rocksalt("Pb", "Te"),
        "Pb1Te1_ICSD_20": rocksalt("Pb", "Te", 6.45),  # the same phase listed twice: the lower ICSD number is kept
    }
    crystals, report = curated(text, entries)
    assert [c.candidate.id for c in crystals] == ["Pb1Te1_ICSD_20"]
    assert report["steps"][-4]["how"] == {"ambiguous polymorph": 1, "formula, one polymorph": 1}


def test_duplicates_merge_by_geometric_median_and_disagreeing_ones_drop():
    text = "PbTe,1.0,,,\nPbTe rt,2.25,,,\nPbSe,1.0,,,\nPbSe,3.5,,,\n"
    entries = {"Pb1Te1_ICSD_1": rocksalt("Pb", "Te"), "Pb1Se1_ICSD_2": rocksalt("Pb", "Se", 6.1)}
    rows = measured.read_xia0wt(XIA0WT_HEADER + text)
    crystals, report = measured.curate(rows[:2] + rows[2:3], index_of(entries))
    assert {c.candidate.id: c.tc for c in crystals} == {"Pb1Te1_ICSD_1": pytest.approx(1.5), "Pb1Se1_ICSD_2": 1.0}
    crystals, report = measured.curate(rows, index_of(entries))
    assert [c.candidate.id for c in crystals] == ["Pb1Te1_ICSD_1"]  # PbSe spread 3.5 > 3
    assert report["dropped_inconsistent"] == [{"crystal": "Pb1Se1_ICSD_2", "values": [1.0, 3.5]}]


def test_a_value_ten_times_off_the_ab_initio_one_is_dropped():
    text = "SiC,0.49,,,\nPbTe,2.0,,,\n"
    entries = {"Si1C1_ICSD_1": zincblende("Si", "C"), "Pb1Te1_ICSD_2": rocksalt("Pb", "Te")}
    crystals, _ = curated(text, entries, ab_initio={"Si1C1_ICSD_1": 489.0, "Pb1Te1_ICSD_2": 2.5})
    assert [c.candidate.id for c in crystals] == ["Pb1Te1_ICSD_2"]


def test_lrcfmd_reads_measured_rows_only_and_matches_by_icsd_id():
    text = (
        "ICSD,kappa_exp,composition,kappa_latt_comp\n"
        "20.0,2.4,Pb1 Te1,\n"
        "20.0,,Pb1 Te1,3.3\n"  # a computed value: not a measurement
        "36363.0,1.59,Ca2.85 Na0.15 Al1 Sb3,\n"  # doped
    )
    rows = measured.read_lrcfmd(text)
    assert [(r.icsd, r.tc, r.line) for r in rows] == [(20, 2.4, 2), (36363, 1.59, 4)]
    entries = {"Pb1Te1_ICSD_20": rocksalt("Pb", "Te"), "Pb1Te1_ICSD_99": zincblende("Pb", "Te")}
    crystals, report = measured.curate(rows, index_of(entries))
    assert [c.candidate.id for c in crystals] == ["Pb1Te1_ICSD_20"]  # two polymorphs, but the id names one
    assert report["steps"][-4]["how"] == {"icsd id": 1}


@pytest.mark.parametrize(
    ("formula", "metallic"),
    [
        *[("Cu", True), ("AlNi3", True), ("TiC", True), ("HoB12", True), ("Ti3SiC2", True), ("Sb", True)],
        *[("PbTe", False), ("AlN", False), ("Si", False), ("MgO", False), ("ZnGeP2", False), ("CaCO3", False)],
    ],
)
def test_metallic_by_composition(formula, metallic):
    from pymatgen.core import Composition

    assert measured.is_metallic(Composition(formula)) is metallic


def test_export_of_the_measured_source_lists_registry_structures(tmp_path):
    """The real source through the real CLI: one row per crystal, each structure file a registry file."""
    output = tmp_path / "measured.csv"
    env = {**os.environ, "PYTHONPATH": os.getcwd()}
    command = [sys.executable, "-m", "paraisite.cli.main", "data", "export", "measured", "-o", str(output)]
    subprocess.run(command, check=True, env=env, capture_output=True, text=True, timeout=600)
    with open(output, newline="") as stream:
        rows = list(csv.DictReader(stream))
    assert list(rows[0]) == ["id", "formula", "structure_file", "tc_W_per_mK", "fidelity", "source", "provenance"]
    assert 100 <= len(rows) <= 400
    assert len({r["id"] for r in rows}) == len(rows)
    keys = set(registry.REGISTRY)
    for row in rows:
        assert row["structure_file"].split("#")[0] in keys, row
        assert row["fidelity"] == "measured"
        assert float(row["tc_W_per_mK"]) > 0
        assert row["provenance"].split(":")[0].split(";")[0] in keys
    formulas = {r["formula"] for r in rows}
    assert not formulas & {"Cu", "Ag", "Al", "AlNi3", "TiC"}  # metals and metallic ceramics are curated out
    assert len(load_source("measured").records) == len(rows)


def test_export_of_an_unknown_source_names_the_valid_ones(tmp_path):
    command = [sys.executable, "-m", "paraisite.cli.main", "data", "export", "nope", "-o", str(tmp_path / "x.csv")]
    result = subprocess.run(command, check=False, capture_output=True, text=True, timeout=300)
    assert result.returncode != 0
    assert "unknown LTC source 'nope'" in result.stderr
    assert "measured" in result.stderr
    assert not (tmp_path / "x.csv").exists()
