"""The fast CIF reader gives exactly the structures pymatgen's ``Structure.from_file`` gives."""

from __future__ import annotations

import gzip
import shutil
import warnings
from pathlib import Path

import numpy as np
import pytest
from pymatgen.core import Lattice, Structure

from paraisite.data import registry
from paraisite.data.cif import is_cif, read_cif
from paraisite.data.sources import read_structure

#: Disordered (two species on one site), with symmetry operations given as xyz strings and a site on a special
#: position: the cases where first-come de-duplication and occupancy merging matter.
DISORDERED_CIF = """data_test
_cell_length_a 5.0
_cell_length_b 5.0
_cell_length_c 7.0
_cell_angle_alpha 90
_cell_angle_beta 90
_cell_angle_gamma 90
_symmetry_space_group_name_H-M 'P 4/m m m'
loop_
_symmetry_equiv_pos_as_xyz
x,y,z
-x,-y,z
-y,x,z
y,-x,z
-x,y,-z
x,-y,-z
y,x,-z
-y,-x,-z
-x,-y,-z
x,y,-z
y,-x,-z
-y,x,-z
x,-y,z
-x,y,z
-y,-x,z
y,x,z
loop_
_atom_site_label
_atom_site_type_symbol
_atom_site_fract_x
_atom_site_fract_y
_atom_site_fract_z
_atom_site_occupancy
Fe1 Fe 0 0 0 0.5
Co1 Co 0 0 0 0.5
O1 O 0.5 0.5 0.25 1
O2 O 0.2 0.3 0.5 1
"""


def assert_same(ours: Structure, theirs: Structure) -> None:
    """Same lattice, species, occupancies, labels and fractional coordinates in the same order."""
    assert ours.lattice == theirs.lattice
    assert [site.species for site in ours] == [site.species for site in theirs]
    assert [site.label for site in ours] == [site.label for site in theirs]
    np.testing.assert_array_equal(ours.frac_coords, theirs.frac_coords)
    assert ours.site_properties == theirs.site_properties


def pymatgen_read(path: Path) -> Structure:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return Structure.from_file(path)


def test_symmetric_sample_cifs_are_read_exactly_as_pymatgen_reads_them():
    samples = [registry.fetch_entry(entry) for entry in registry.select("txie-93/cgcnn", "data/*/*.cif")]
    assert len(samples) >= 10
    for path in samples:
        assert_same(read_structure(path), pymatgen_read(path))


def test_aflow_cifs_are_read_exactly_as_pymatgen_reads_them():
    entries = registry.select("liudakl/ParAIsite", "main/src/aflow_cif/*.cif")[::40]
    assert len(entries) > 100
    for entry in entries:
        path = registry.fetch_entry(entry)
        assert_same(read_structure(path), pymatgen_read(path))


def test_disordered_symmetric_and_compressed_cifs(tmp_path):
    plain = tmp_path / "disordered.cif"
    plain.write_text(DISORDERED_CIF)
    expected = pymatgen_read(plain)
    assert not expected.is_ordered
    assert len(expected) == 1 + 2 + 8
    assert_same(read_structure(plain), expected)
    compressed = tmp_path / "disordered.cif.gz"
    with open(plain, "rb") as source, gzip.open(compressed, "wb") as target:
        shutil.copyfileobj(source, target)
    assert is_cif(compressed)
    assert_same(read_cif(compressed), expected)


def test_other_formats_and_magnetic_cifs_keep_pymatgens_reader(tmp_path):
    assert not is_cif(tmp_path / "x.mcif")
    assert not is_cif(tmp_path / "POSCAR")
    structure = Structure(Lattice.cubic(4.2), ["Na", "Cl"], [[0, 0, 0], [0.5, 0.5, 0.5]])
    poscar = tmp_path / "POSCAR"
    structure.to(filename=str(poscar))
    assert read_structure(poscar).composition.reduced_formula == "NaCl"


def test_broken_cif_names_the_file(tmp_path):
    broken = tmp_path / "broken.cif"
    broken.write_text(DISORDERED_CIF.split("loop_\n_atom_site_label", maxsplit=1)[0])
    with pytest.raises(ValueError, match=r"broken\.cif"):
        read_structure(broken)
