"""Cost bounds checked before the cost: a CIF's symmetry expansion, a structure's graph size (docs/limits.md)."""

from __future__ import annotations

import time

import numpy as np
import pytest
from pymatgen.core import Lattice, Structure
from pymatgen.symmetry.groups import SpaceGroup

from paraisite.data.inputs import read_input_structure
from paraisite.data.sources import StructureFileError
from paraisite.safety import LimitSettingError

CELL = ["_cell_length_a 40", "_cell_length_b 40", "_cell_length_c 40"]
ANGLES = ["_cell_angle_alpha 90", "_cell_angle_beta 90", "_cell_angle_gamma 90"]
SITE_COLUMNS = ["_atom_site_label", "_atom_site_type_symbol", "_atom_site_fract_x", "_atom_site_fract_y"]


def cubic_group_cif(path, sites: int, group: str = "Fm-3m") -> None:
    """A CIF of ``sites`` general-position Si sites with the explicit operations of ``group``."""
    operations = [f"'{op.as_xyz_str()}'" for op in SpaceGroup(group).symmetry_ops]
    rows = [
        f"Si{i} Si {x:.5f} {y:.5f} {z:.5f}"
        for i, (x, y, z) in enumerate(np.random.default_rng(0).uniform(0.01, 0.49, (sites, 3)))
    ]
    loop = ["loop_", *SITE_COLUMNS, "_atom_site_fract_z", *rows]
    path.write_text("\n".join(["data_big", *CELL, *ANGLES, "loop_", "_symmetry_equiv_pos_as_xyz", *operations, *loop]))


def simple_cubic(path, per_side: int, spacing: float) -> None:
    """``per_side``^3 Si atoms on a simple cubic lattice of ``spacing`` Å, written as a CIF."""
    grid = np.arange(per_side) / per_side
    coords = np.stack(np.meshgrid(grid, grid, grid, indexing="ij"), axis=-1).reshape(-1, 3)
    Structure(Lattice.cubic(spacing * per_side), ["Si"] * len(coords), coords).to(filename=str(path))


@pytest.mark.parametrize("sites", [300, 1000])
def test_a_cif_whose_symmetry_would_expand_past_the_bound_is_refused_before_expanding(tmp_path, sites):
    path = tmp_path / "big.cif"
    cubic_group_cif(path, sites)  # the code before the bound spent over a minute on 300 sites, 10 on 1,000
    start = time.perf_counter()
    with pytest.raises(StructureFileError) as error:
        read_input_structure(path)
    assert time.perf_counter() - start < 5
    message = str(error.value)
    assert f"{path}: {sites} sites x 192 symmetry operations = {sites * 192} atom positions" in message
    assert "more than the 20000 limit (PARAISITE_MAX_CIF_IMAGES" in message


def test_the_cif_bound_is_set_by_its_variable(tmp_path, monkeypatch):
    path = tmp_path / "small.cif"
    cubic_group_cif(path, 2, group="Pm-3m")  # 2 x 48 positions
    assert len(read_input_structure(path)) == 96
    monkeypatch.setenv("PARAISITE_MAX_CIF_IMAGES", "90")
    with pytest.raises(StructureFileError, match="96 atom positions to expand, more than the 90 limit"):
        read_input_structure(path)


def test_a_dense_cell_is_refused_on_its_estimated_graph_size_before_any_neighbour_list(tmp_path):
    path = tmp_path / "dense.cif"
    simple_cubic(path, 13, spacing=1.0)  # 2,197 atoms, 1 per A^3: passes the distance and volume checks
    start = time.perf_counter()
    with pytest.raises(StructureFileError) as error:
        read_input_structure(path)
    assert time.perf_counter() - start < 10
    assert "2197 atoms at 1 atoms/A^3 make about 1,150,347 neighbour pairs within 5 A" in str(error.value)
    assert "more than the 800,000 limit on the graph's size (PARAISITE_MAX_GRAPH_EDGES" in str(error.value)


def test_a_real_sized_cell_passes_and_the_graph_bound_is_set_by_its_variable(tmp_path, monkeypatch):
    path = tmp_path / "si.cif"
    simple_cubic(path, 8, spacing=2.35)  # 512 atoms at silicon's bond length
    assert len(read_input_structure(path)) == 512
    monkeypatch.setenv("PARAISITE_MAX_GRAPH_EDGES", "1000")
    with pytest.raises(StructureFileError, match="more than the 1,000 limit on the graph's size"):
        read_input_structure(path)
    monkeypatch.setenv("PARAISITE_MAX_GRAPH_EDGES", "many")
    with pytest.raises(LimitSettingError, match="PARAISITE_MAX_GRAPH_EDGES='many': a limit must be a positive"):
        read_input_structure(path)


def test_the_atom_bound_is_set_by_its_variable(tmp_path, monkeypatch):
    path = tmp_path / "si.cif"
    simple_cubic(path, 3, spacing=2.35)
    monkeypatch.setenv("PARAISITE_MAX_ATOMS", "20")
    with pytest.raises(StructureFileError, match="27 atoms, more than the 20-atom limit"):
        read_input_structure(path)


def test_a_cif_with_several_structures_is_refused_naming_its_blocks(tmp_path):
    one = tmp_path / "one.cif"
    simple_cubic(one, 2, spacing=2.35)
    block = one.read_text()
    assert block.count("data_") == 1
    path = tmp_path / "two.cif"
    path.write_text(block.replace("data_", "data_first", 1) + "\n" + block.replace("data_", "data_second", 1))
    with pytest.raises(StructureFileError) as error:
        read_input_structure(path)
    assert str(error.value).startswith(f"{path}: holds 2 crystal structures (data blocks ")
    assert "only the first would be predicted, so the file is refused" in str(error.value)
    assert len(read_input_structure(one)) == 8  # one block: read as before


@pytest.mark.parametrize("variable", ["PARAISITE_MAX_ATOMS", "PARAISITE_FILE_SECONDS", "PARAISITE_MAX_GRAPH_EDGES"])
@pytest.mark.parametrize("command", ["predict", "scan"])
def test_a_bad_bound_variable_is_refused_before_any_file_is_read(tmp_path, monkeypatch, capsys, variable, command):
    from paraisite.cli.main import main

    simple_cubic(tmp_path / "a.cif", 2, spacing=2.35)
    monkeypatch.setenv(variable, "abc")
    # a model that does not exist: its error would come first if the variable were read later (the old code made
    # every file an error row for PARAISITE_MAX_ATOMS, and refused PARAISITE_FILE_SECONDS only with workers)
    assert main([command, "--model", "no-such-model", str(tmp_path / "a.cif"), "-o", str(tmp_path / "o.csv")]) == 1
    assert f"{variable}='abc': a limit must be a positive finite number" in capsys.readouterr().err
    assert not (tmp_path / "o.csv").exists()
