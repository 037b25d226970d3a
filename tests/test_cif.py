"""The fast CIF reader gives exactly the structures pymatgen's ``Structure.from_file`` gives.

Two layers: :func:`fast_cif_structure` (own text reader, for the common CIF) and, for everything it declines,
:class:`FastCifParser` (pymatgen's parser with a vectorised symmetry expansion).
"""

from __future__ import annotations

import gzip
import re
import shutil
import warnings
from pathlib import Path

import numpy as np
import pytest
from pymatgen.core import Lattice, Structure

from paraisite.data import registry
from paraisite.data.cif import FastCifParser, fast_cif_structure, is_cif, parse_user_cif, read_cif
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


def parsed_by_pymatgen(text: str) -> tuple[Structure, list[str]]:
    """The structure :class:`FastCifParser` reads from ``text`` and the warnings it gives."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        structure = FastCifParser.from_str(text).parse_structures(primitive=False)[0]
    return structure, [str(warning.message) for warning in caught]


def parsed_fast(text: str) -> tuple[Structure | None, list[str]]:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        structure = fast_cif_structure(text)
    return structure, [str(warning.message) for warning in caught]


def test_fast_path_reads_registry_cifs_as_pymatgen_does_warnings_included():
    entries = registry.select("txie-93/cgcnn", "data/*/*.cif")
    entries += registry.select("liudakl/ParAIsite", "main/src/aflow_cif/*.cif")[::7]
    taken = 0
    for entry in entries:
        text = registry.fetch_entry(entry).read_text()
        fast, fast_warnings = parsed_fast(text)
        if fast is None:
            assert not fast_warnings
            continue
        taken += 1
        expected, expected_warnings = parsed_by_pymatgen(text)
        assert_same(fast, expected)
        assert fast.as_dict() == expected.as_dict()
        assert fast_warnings == expected_warnings
    assert taken >= len(entries) - 5  # all AFLOW CIFs, half of the CGCNN samples


#: An AFLOW-like CIF (P1, explicit x,y,z) written with what the fast path must read like pymatgen: comments (whole
#: line and trailing), blank lines, quoted values, a ;-text field, uncertainties, a 1/3 to round (with pymatgen's
#: warning), no occupancy column (occupancy 1 as an integer), labels that are not element symbols.
UNUSUAL_BUT_FAST_CIF = """# header comment
data_unusual
_publ_section_title
;
A title # with a comment
over two lines
;
_symmetry_space_group_name_H-M  'P 1'
_cell_length_a  4.2(1)
_cell_length_b  4.2
_cell_length_c  "5.0"   # trailing comment
_cell_angle_alpha  90

_cell_angle_beta  90
_cell_angle_gamma  120
loop_
_symmetry_equiv_pos_as_xyz
  'x, y, z'
loop_
 _atom_site_label
 _atom_site_fract_x
 _atom_site_fract_y
 _atom_site_fract_z
 _atom_site_type_symbol
Ga1 0.33333 0.6666667 0.0 Ga
N2 0.0 0.0 0.375 N
Ga3 -0.25 1.5 0.5 Ga
"""


def test_fast_path_reads_unusual_syntax_as_pymatgen_does():
    for text in (UNUSUAL_BUT_FAST_CIF, UNUSUAL_BUT_FAST_CIF.replace("\n", "\r\n")):
        fast, fast_warnings = parsed_fast(text)
        assert fast is not None
        expected, expected_warnings = parsed_by_pymatgen(text)
        assert_same(fast, expected)
        assert fast.as_dict() == expected.as_dict()
        assert fast_warnings == expected_warnings
        assert any("rounded to ideal values" in message for message in fast_warnings)


SYMMETRIC_CIF = DISORDERED_CIF.replace("Fe1 Fe 0 0 0 0.5\nCo1 Co 0 0 0 0.5\n", "Fe1 Fe 0 0 0 1\n")


#: CIFs the fast path leaves to pymatgen (it returns None), each for a reason it does not handle itself.
DECLINED_CIFS = {
    "disordered site": DISORDERED_CIF,
    "site on an image of another": SYMMETRIC_CIF + "O3 O 0.8 0.7 0.5 1\n",
    "oxidation states": SYMMETRIC_CIF + "loop_\n_atom_type_symbol\n_atom_type_oxidation_number\nFe 2\nO -2\n",
    "two blocks": SYMMETRIC_CIF + "data_second\n_cell_length_a 4\n",
    "space group by name only": SYMMETRIC_CIF.split("loop_\n_symmetry_equiv_pos_as_xyz")[0]
    + "loop_\n_atom_site_label"
    + SYMMETRIC_CIF.split("loop_\n_atom_site_label")[1],
    "loop without values": SYMMETRIC_CIF.replace("loop_\n_atom_site_label", "loop_\n_empty\nloop_\n_atom_site_label"),
    "unterminated text field": SYMMETRIC_CIF + "_note\n;\nnever closed\n",
    "odd quoting": SYMMETRIC_CIF.replace("'P 4/m m m'", "'P 4/m m m'x"),
    "symbol pymatgen reads as another": SYMMETRIC_CIF.replace("O2 O ", "O2 OX "),
    "missing elements in the formula": SYMMETRIC_CIF + "_chemical_formula_sum 'Fe O2 Cl'\n",
}


@pytest.mark.parametrize("case", DECLINED_CIFS)
def test_fast_path_declines_what_it_does_not_handle_and_pymatgen_reads_it(tmp_path, case):
    text = DECLINED_CIFS[case]
    fast, fast_warnings = parsed_fast(text)
    assert fast is None
    assert not fast_warnings
    path = tmp_path / "declined.cif"
    path.write_text(text)
    try:
        expected = pymatgen_read(path)
    except Exception as error:  # pymatgen reads no structure from it: the fallback raises as it does
        with pytest.raises(type(error), match=re.escape(str(error))):
            read_cif(path)
        return
    assert_same(read_cif(path), expected)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert_same(parse_user_cif(text, path), expected)


def test_symmetric_cif_without_disorder_takes_the_fast_path():
    fast, _ = parsed_fast(SYMMETRIC_CIF)
    assert fast is not None
    assert len(fast) == 1 + 2 + 8
    assert_same(fast, parsed_by_pymatgen(SYMMETRIC_CIF)[0])
