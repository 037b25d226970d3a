"""A faster CIF reader, giving the structures (and warnings) pymatgen's ``Structure.from_file`` gives.

Two layers:

- :func:`fast_cif_structure` reads the common CIF itself (one block, explicit ``x,y,z`` operations, every site
  fully occupied by one element, no site on an image of another): its own text reader and the structure built from
  arrays in one call, about 6 times faster than pymatgen on the AFLOW CIFs. For anything it does not read exactly
  as pymatgen does (disorder, oxidation states, magnetic CIFs, unusual syntax, a CIF pymatgen would warn about or
  refuse) it returns None.
- Those CIFs go to :class:`FastCifParser`: pymatgen's ``CifParser``, which expands the asymmetric unit one (site,
  operation) pair at a time, comparing each new position with every kept one (``_unique_coords``); for a CIF with
  full space-group symmetry that loop is most of its time. The subclass overrides only that step, keeping its
  arithmetic and its first-come order (same positions, same order, same tolerance). Magnetic CIFs take pymatgen's
  own path.

Tests compare both layers with pymatgen on CIFs of the registry, and ``benchmarks/cif_reading.py`` on all of them.
"""

from __future__ import annotations

import fnmatch
import functools
import re
import sys
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any, cast

import numpy as np
from monty.io import zopen
from pymatgen.core import Composition, Element, Lattice, Structure, get_el_sp
from pymatgen.core.operations import MagSymmOp, SymmOp
from pymatgen.electronic_structure.core import Magmom
from pymatgen.io.cif import CifParser, str2float

#: Largest number of (site, operation) images de-duplicated with one pairwise table (its size grows as the square).
MAX_PAIRWISE_IMAGES = 3000


def _matches(existing: np.ndarray, new: np.ndarray, tolerance: float) -> np.ndarray:
    """``[len(new), len(existing)]``: positions equal within ``tolerance`` in every fractional coordinate, modulo 1.

    The same arithmetic as pymatgen's ``find_in_coord_list_pbc`` (``d - round(d)``), which is symmetric in its
    arguments, so a pairwise table decides exactly what the one-at-a-time comparisons decide.
    """
    equal = np.ones((len(new), len(existing)), dtype=bool)
    for axis in range(3):
        difference = existing[None, :, axis] - new[:, None, axis]
        difference -= np.round(difference)
        equal &= np.abs(difference) < tolerance
    return equal


def _first_unique(images: np.ndarray, tolerance: float, kept: np.ndarray | None = None) -> np.ndarray:
    """Indices of the images kept by pymatgen's rule: in order, keep one unless it equals an already kept position.

    ``kept`` holds positions kept before these images. Keeping image ``i`` blocks every image equal to it, so an
    image is kept exactly when no earlier kept one (or ``kept``) blocks it.
    """
    blocked: np.ndarray = np.zeros(len(images), dtype=bool)
    if kept is not None and len(kept):
        blocked = np.asarray(_matches(kept, images, tolerance).any(axis=1))
    equal = _matches(images, images, tolerance)
    chosen = []
    for index in range(len(images)):
        if not blocked[index]:
            chosen.append(index)
            blocked |= equal[index]
    return np.asarray(chosen, dtype=int)


def _expand(
    affine: np.ndarray, coords: Sequence[Sequence[float]], tolerance: float, max_kept: int | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Images of ``coords`` under the operations ``affine`` (``[K, 4, 4]``), wrapped into [0, 1), and the kept ones.

    Returns ``(images, chosen)``: ``images[s * K + k]`` is site ``s`` under operation ``k`` (``x - floor(x)``, as
    pymatgen wraps), ``chosen`` the indices pymatgen's first-come rule keeps, in its order. Past ``max_kept`` kept
    positions the site-by-site de-duplication stops (the result is then too large anyway and is refused).
    """
    images = np.stack([(affine @ np.array([*site, 1.0]))[:, :3] for site in coords]).reshape(-1, 3)
    images = images - np.floor(images)
    if len(images) <= MAX_PAIRWISE_IMAGES:
        return images, _first_unique(images, tolerance)
    chosen_parts, kept = [], np.empty((0, 3))  # site by site, against the positions kept so far
    for site_index in range(len(coords)):
        offset = site_index * len(affine)
        part = offset + _first_unique(images[offset : offset + len(affine)], tolerance, kept)
        chosen_parts.append(part)
        kept = np.concatenate([kept, images[part]])
        if max_kept is not None and len(kept) > max_kept:
            break
    return images, np.concatenate(chosen_parts)


#: Symmetry operations of the largest space groups (Fm-3m and the like): the upper bound for a CIF naming its group.
MAX_GROUP_OPERATIONS = 192


class CifSizeError(Exception):
    """A CIF whose sites x symmetry operations exceed a limit, refused before its symmetry is expanded.

    Not a ``ValueError``: pymatgen turns those into a warning and goes on with the next block.
    """


def check_cif_size(sites: int, operations: int, source: str | Path, max_sites: int, max_images: int) -> None:
    """Refuse ``sites`` (of a block) or ``sites x operations`` (atom positions before merging) above the limits.

    Raises:
        CifSizeError: naming ``source``, the counts and the limit with the variable that sets it.
    """
    if sites > max_sites:
        raise CifSizeError(
            f"{source}: {sites} sites, more than the {max_sites}-atom limit (PARAISITE_MAX_ATOMS, docs/limits.md)"
        )
    if sites * operations > max_images:
        raise CifSizeError(
            f"{source}: {sites} sites x {operations} symmetry operations = {sites * operations} atom positions to "
            f"expand, more than the {max_images} limit (PARAISITE_MAX_CIF_IMAGES, docs/limits.md); "
            "refused before the expansion"
        )


class FastCifParser(CifParser):
    """``CifParser`` whose symmetry expansion is vectorised; results are identical to the parent's.

    With :attr:`limits` set (``(source, max_sites, max_images)``), each block's sites and sites x symmetry
    operations (summed over the blocks) are checked by :func:`check_cif_size` before its operations are parsed.
    """

    limits: tuple[str, int, int] | None = None
    _images_seen: int = 0
    _atoms_kept: int = 0

    def get_symops(self, data: Any) -> list[SymmOp]:
        """The symmetry operations pymatgen reads from a block, after the size check (see the class doc)."""
        if self.limits is not None:
            source, max_sites, max_images = self.limits
            columns = [value for key, value in data.data.items() if key.startswith("_atom_site_")]
            sites = max((len(value) for value in columns if isinstance(value, list)), default=1)
            explicit = next((data.data[key] for key in _SYMMETRY_KEYS if key in data.data), None)
            operations = len(explicit) if isinstance(explicit, list) else MAX_GROUP_OPERATIONS
            check_cif_size(sites, operations, source, max_sites, max_images - self._images_seen)
            self._images_seen += sites * operations
        return super().get_symops(data)

    def _unique_coords(
        self,
        coords: Sequence[tuple[float, float, float]],
        magmoms: Sequence | None = None,
        lattice: Lattice | None = None,
        labels: dict[tuple[float, float, float], str] | None = None,
    ) -> tuple[list[np.ndarray], list[Magmom], list[str]]:
        """Symmetry-equivalent positions of each site, first occurrence kept, in pymatgen's order."""
        operations = self.symmetry_operations
        if magmoms or any(isinstance(op, MagSymmOp) for op in operations):
            return super()._unique_coords(list(coords), magmoms, lattice, labels)
        labels = labels or {}
        affine = np.stack([op.affine_matrix for op in operations])
        tolerance = self._site_tolerance  # type: ignore[attr-defined]  # set by CifParser.from_str
        max_kept = None if self.limits is None else self.limits[1] - self._atoms_kept
        images, chosen = _expand(affine, coords, tolerance, max_kept)
        self._atoms_kept += len(chosen)
        if self.limits is not None and self._atoms_kept > self.limits[1]:
            raise CifSizeError(
                f"{self.limits[0]}: more than {self.limits[1]} atoms after the symmetry expansion "
                "(PARAISITE_MAX_ATOMS, docs/limits.md)"
            )
        labels_out = [labels.get(coords[index // len(operations)], "no_label") for index in chosen]
        return list(images[chosen]), [Magmom(0)] * len(chosen), labels_out


# --- the fast path: the common CIF read without pymatgen's generic machinery, or None to let pymatgen read it ---

#: A token on a line: a quoted string ending before whitespace or the line's end, or a bare word (no leading quote).
_TOKEN = re.compile(r"""\s*(?:'([^']*)'(?=\s|$)|"([^"]*)"(?=\s|$)|([^\s'"]\S*))""")
#: Where pymatgen starts a data block: ``data_`` with only whitespace before it on its line.
_BLOCK_START = re.compile(r"^\s*data_", re.MULTILINE)
#: Characters that break lines for ``str.splitlines`` but not for pymatgen's comment and blank-line rules.
_ODD_LINE_BREAKS = frozenset("\r\x0b\x0c\x1c\x1d\x1e")
#: Keys whose presence means pymatgen reads the block in ways the fast path does not (magnetic CIFs, attached or
#: implicit hydrogens, oxidation states); any key containing one of these takes pymatgen's path.
_PYMATGEN_ONLY_KEYS = (
    "_space_group_magn",
    "_atom_site_moment",
    "_space_group_symop_magn",
    "_atom_site_attached_hydrogens",
    "_atom_type_oxidation_number",
)
#: The keys pymatgen takes the symmetry operations from, in its order of preference.
_SYMMETRY_KEYS = (
    "_symmetry_equiv_pos_as_xyz",
    "_symmetry_equiv_pos_as_xyz_",
    "_space_group_symop_operation_xyz",
    "_space_group_symop_operation_xyz_",
)
#: Site symbols pymatgen reads with a special rule (water, hydroxide, nitrate, implicit hydrogens).
_SPECIAL_SYMBOL_PREFIXES = ("Hw", "Ow", "Wat", "wat", "OH", "NO3", "O-H")
#: Fractional coordinates pymatgen replaces by their ideal value when this close (relative), with a warning.
_IDEAL_FRACTIONS = (1 / 3, 2 / 3)
#: pymatgen's default tolerances: site matching (fractional), ideal fractions, stoichiometry check.
_SITE_TOLERANCE, _FRACTION_TOLERANCE, _STOICHIOMETRY_TOLERANCE = 1e-4, 1e-4, 0.01
#: Sites of the block that are symmetry images of one another are merged by pymatgen (a disordered site); when two
#: sites come this close the fast path hands the file to pymatgen (a margin above its tolerance for rounding).
_MERGE_MARGIN = 2 * _SITE_TOLERANCE
#: Thinner cells (Å) are left to pymatgen, which refuses those under 0.01 Å.
_MIN_FAST_THICKNESS = 0.02
#: Largest (sites x sites x operations) table for the merge check; bigger blocks take pymatgen's path.
_MAX_MERGE_TABLE = 2_000_000


class _NotUnderstoodError(Exception):
    """Raised inside the fast path for anything it does not read exactly as pymatgen; pymatgen then reads the file."""


def _number(text: str) -> float:
    """A CIF number as pymatgen reads it: an uncertainty ``(..)`` and what follows it dropped."""
    cut = text.find("(")
    if 0 <= cut < len(text) - 1:
        text = text[:cut]
    try:
        return float(text)
    except ValueError:
        raise _NotUnderstoodError from None


def _tokens(block: str) -> tuple[list[str], set[int]]:
    """The tokens of a block's text and the indices of those quoted or from ``;`` text fields (never keys).

    Comments and blank lines are dropped as pymatgen drops them; a line it would split otherwise raises.
    """
    tokens: list[str] = []
    quoted: set[int] = set()
    field: list[str] | None = None
    for raw in block.splitlines():
        line = raw
        hash_at = line.find("#")
        while hash_at > 0 and not line[hash_at - 1].isspace():
            hash_at = line.find("#", hash_at + 1)
        if hash_at == 0:
            continue
        if hash_at > 0:
            line = line[: hash_at - 1]  # the comment and the whitespace before it
        if not line.strip():
            continue
        if field is not None:
            if not line.startswith(";"):
                field.append(line)
                continue
            quoted.add(len(tokens))
            tokens.append(" ".join(field))
            field, line = None, line[1:].strip()
        if line.startswith(";"):
            field = [line[1:].strip()]
            continue
        if "'" not in line and '"' not in line:
            tokens += line.split()
            continue
        position, end = 0, len(line.rstrip())
        while position < end:
            match = _TOKEN.match(line, position)
            if match is None:
                raise _NotUnderstoodError
            single, double, bare = match.groups()
            if bare is None:
                quoted.add(len(tokens))
            tokens.append(bare if bare is not None else single if single is not None else double)
            position = match.end()
    if field is not None:
        raise _NotUnderstoodError
    return tokens, quoted


def _block_items(text: str) -> dict[str, str | list[str]]:
    """The data items of a CIF text holding exactly one block: key -> value, or key -> column of a loop."""
    if not text.isascii():
        raise _NotUnderstoodError
    if "\r" in text:
        text = text.replace("\r\n", "\n")
    blocks = list(_BLOCK_START.finditer(text))
    if _ODD_LINE_BREAKS.intersection(text) or len(blocks) != 1 or "powder_pattern" in text:
        raise _NotUnderstoodError
    tokens, quoted = _tokens(text[blocks[0].end() - len("data_") :])

    def starts_item(index: int) -> bool:  # a key or a loop_ (only bare words are)
        return tokens[index].startswith(("_", "loop_")) and index not in quoted

    items: dict[str, str | list[str]] = {}
    index = 1  # tokens[0] is the data_ header
    while index < len(tokens):
        word = tokens[index]
        if index in quoted or word == "_eof" or not starts_item(index):
            raise _NotUnderstoodError
        if word.startswith("_"):
            if word in items or index + 1 >= len(tokens) or starts_item(index + 1):
                raise _NotUnderstoodError
            items[word] = tokens[index + 1]
            index += 2
            continue
        index += 1  # loop_: its keys, then its values row by row
        columns = []
        while index < len(tokens) and tokens[index].startswith("_") and index not in quoted:
            columns.append(tokens[index])
            index += 1
        first = index
        while index < len(tokens) and not starts_item(index):
            index += 1
        values = tokens[first:index]
        if not columns or not values or len(values) % len(columns) or "_eof" in columns:
            raise _NotUnderstoodError
        for offset, column in enumerate(columns):
            if column in items:
                raise _NotUnderstoodError
            items[column] = [entry.strip() for entry in values[offset :: len(columns)]]
    return items


@functools.lru_cache(maxsize=256)
def _operations(xyz: tuple[str, ...]) -> np.ndarray:
    """``[K, 4, 4]`` affine matrices of symmetry operations written as ``x,y,z`` strings (read-only, cached)."""
    try:
        affine = np.stack([SymmOp.from_xyz_str(operation).affine_matrix for operation in xyz])
    except ValueError:
        raise _NotUnderstoodError from None
    affine.flags.writeable = False
    return affine


@functools.lru_cache(maxsize=256)
def _element(symbol: str) -> tuple[Element, float] | None:
    """The element of a site symbol read as pymatgen reads it, and its electronegativity; None for other symbols."""
    if symbol.startswith(_SPECIAL_SYMBOL_PREFIXES):
        return None
    name = symbol[:2].title()
    if name not in Element.__members__:
        name = symbol[:1].upper()
        if name not in Element.__members__:
            return None
    if not symbol.startswith(name):  # pymatgen warns that it read the symbol as another one
        return None
    element = get_el_sp(name)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        electronegativity = float(element.X) if isinstance(element, Element) else float("nan")
    if not np.isfinite(electronegativity):  # pymatgen warns and sorts NaN electronegativities its own way
        return None
    return element, electronegativity  # type: ignore[return-value]


@functools.lru_cache(maxsize=1024)
def _formula_amounts(formula: str) -> tuple[tuple[str, float], ...] | None:
    """Element -> amount of a CIF formula as pymatgen's check reads it; None where that fails or warns."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            amounts = tuple(Composition(formula).remove_charges().as_dict().items())
        except Exception:
            return None
    return None if caught else amounts


def _column(items: dict[str, str | list[str]], key: str, length: int) -> list[str] | None:
    column = items.get(key)
    if column is None:
        return None
    if not isinstance(column, list) or len(column) != length:
        raise _NotUnderstoodError
    return column


def _stoichiometry_notes(items: dict[str, str | list[str]], counts: dict[str, float]) -> list[str]:
    """What pymatgen's check of the structure against the CIF's formula adds to its warnings (it passes here)."""
    formula = next(
        (items[key] for key in ("_chemical_formula_sum", "_chemical_formula_structural") if items.get(key)), None
    )
    check_ratios = formula is not None
    if formula is None:
        symbols = items.get("_atom_site_type_symbol")
        if not symbols:
            raise _NotUnderstoodError
        formula = " ".join(symbols)
    if not isinstance(formula, str):
        raise _NotUnderstoodError
    amounts = _formula_amounts(formula)
    if amounts is None:
        raise _NotUnderstoodError
    expected = dict(amounts)
    if set(expected) != set(counts):
        raise _NotUnderstoodError  # missing elements: pymatgen warns, and predict refuses the file
    if all(counts[element] - expected[element] == 0 for element in expected):
        return []
    if not check_ratios:
        return ["Skipping relative stoichiometry check because CIF does not contain formula keys."]
    if not all(np.isfinite(amount) and amount != 0 for amount in expected.values()):
        raise _NotUnderstoodError
    ratios = [counts[element] / expected[element] for element in expected]
    if max(ratios) - min(ratios) >= _STOICHIOMETRY_TOLERANCE:
        raise _NotUnderstoodError  # pymatgen warns of an incorrect stoichiometry
    return []


def fast_cif_structure(text: str, max_images: int | None = None) -> Structure | None:
    """The structure ``FastCifParser.from_str(text).parse_structures(primitive=False)[0]`` gives, or None.

    Reads a one-block CIF whose sites are all fully occupied by one known element each, with explicit ``x,y,z``
    symmetry operations, where no two sites are symmetry images of one another; emits the same "Issues encountered"
    warning pymatgen would. Anything else (disorder, oxidation states, magnetic or multi-block CIFs, uncommon
    syntax, a CIF pymatgen would warn about or refuse) gives None, and the caller lets pymatgen read it. So does one
    of more than ``max_images`` sites x symmetry operations (pymatgen's path refuses it when given the limit).
    """
    try:
        structure, notes = _fast_structure(text, max_images)
    except Exception:  # _NotUnderstoodError, or anything unforeseen: pymatgen's reader decides
        return None
    if notes:
        warnings.warn("Issues encountered while parsing CIF: " + "\n".join(notes), stacklevel=2)
    return structure


def _fast_structure(text: str, max_images: int | None = None) -> tuple[Structure, list[str]]:
    """The structure of :func:`fast_cif_structure` and the notes of pymatgen's warning (none: no warning)."""
    items = _block_items(text)
    keys = "\n".join(items)
    if any(marker in keys for marker in _PYMATGEN_ONLY_KEYS):
        raise _NotUnderstoodError
    labels = items.get("_atom_site_label")
    if not isinstance(labels, list) or not all(labels):
        raise _NotUnderstoodError
    count = len(labels)
    symbols = _column(items, "_atom_site_type_symbol", count) or labels
    occupancies = _column(items, "_atom_site_occupancy", count)
    axes = [_column(items, f"_atom_site_fract_{axis}", count) for axis in "xyz"]
    if any(axis is None for axis in axes) or any(" + " in symbol for symbol in symbols):
        raise _NotUnderstoodError
    notes = []
    coords = np.array([[_number(value) for value in axis] for axis in axes if axis is not None]).T
    if not np.isfinite(coords).all():
        raise _NotUnderstoodError
    rounded = 0
    for ideal in _IDEAL_FRACTIONS:
        close = np.abs(coords / ideal - 1) <= _FRACTION_TOLERANCE  # math.isclose(x / ideal, 1, abs_tol=.., rel_tol=0)
        coords[close] = ideal
        rounded += int(close.sum())
    if rounded:
        notes.append(f"{rounded} fractional coordinates rounded to ideal values to avoid issues with finite precision.")
    if occupancies is not None and any(_number(value) != 1.0 for value in occupancies):
        raise _NotUnderstoodError
    amount: float = 1.0 if occupancies is not None else 1  # pymatgen's occupancy when the CIF gives none
    found = [_element(symbol) for symbol in symbols]
    if None in found:
        raise _NotUnderstoodError
    elements = cast("list[tuple[Element, float]]", found)

    cell = [items.get(f"_cell_length_{axis}") for axis in "abc"] + [
        items.get(f"_cell_angle_{angle}") for angle in ("alpha", "beta", "gamma")
    ]
    if not all(isinstance(value, str) for value in cell):
        raise _NotUnderstoodError
    lattice = Lattice.from_parameters(*(_number(value) for value in cell))  # type: ignore[arg-type]
    with np.errstate(all="ignore"):
        spacings = 1 / np.linalg.norm(np.linalg.inv(lattice.matrix), axis=0)
    if not (spacings >= _MIN_FAST_THICKNESS).all():
        raise _NotUnderstoodError
    xyz = next((items[key] for key in _SYMMETRY_KEYS if items.get(key)), None)
    if not isinstance(xyz, list):
        raise _NotUnderstoodError  # a space group by name or number, a 1-line operation, or none: pymatgen's rules
    if max_images is not None and count * len(xyz) > max_images:
        raise _NotUnderstoodError  # refused by the size check of pymatgen's path, before anything is expanded
    affine = _operations(tuple(xyz))
    if count * count * len(affine) > _MAX_MERGE_TABLE:
        raise _NotUnderstoodError
    # pymatgen merges a site into an earlier one that one of its images lands on: hand such CIFs to pymatgen
    images = np.einsum("kij,sj->ski", affine[:, :3, :3], coords) + affine[None, :, :3, 3]
    difference = coords[None, None, :, :] - images[:, :, None, :]
    difference -= np.round(difference)
    near = (np.abs(difference) < _MERGE_MARGIN).all(axis=3).any(axis=1)
    if np.tril(near, k=-1).any():
        raise _NotUnderstoodError
    identity = len(affine) == 1 and np.array_equal(affine[0], np.eye(4))

    # pymatgen's site order: element by element, sorted by (electronegativity, symbol); sites of one element in
    # the order of the CIF, each followed by its new symmetry images
    by_element: dict[str, list[int]] = {}
    for index, element in enumerate(elements):
        by_element.setdefault(element[0].symbol, []).append(index)
    order = sorted(by_element, key=lambda symbol: (elements[by_element[symbol][0]][1], symbol))
    species, positions, site_labels, counts = [], [], [], {}
    for symbol in order:
        sites = by_element[symbol]
        if identity:  # every site is kept (none is an image of another): no de-duplication to do
            images, chosen = coords[sites] - np.floor(coords[sites]), np.arange(len(sites))
        else:
            images, chosen = _expand(affine, [tuple(coords[site]) for site in sites], _SITE_TOLERANCE)
        composition = Composition({elements[sites[0]][0]: amount})
        species += [composition] * len(chosen)
        positions.append(images[chosen])
        site_labels += [labels[sites[index // len(affine)]] for index in chosen]
        counts[symbol] = float(len(chosen))
    notes += _stoichiometry_notes(items, counts)
    return Structure(lattice, species, np.concatenate(positions), labels=site_labels), notes


def is_cif(path: str | Path) -> bool:
    """Whether pymatgen would read ``path`` as a (non-magnetic) CIF: ``*.cif*``, compressed ones included."""
    name = Path(path).name.lower()
    return fnmatch.fnmatch(name, "*.cif*") and not fnmatch.fnmatch(name, "*.mcif*")


def read_cif(path: str | Path) -> Structure:
    """The first structure of a CIF, as ``Structure.from_file`` reads it (conventional cell, file order)."""
    with zopen(path, mode="rt", errors="replace", encoding="utf-8") as stream:
        text = stream.read()
    structure = fast_cif_structure(text)
    if structure is not None:
        return structure
    return FastCifParser.from_str(text).parse_structures(primitive=False)[0]


class CifBlocksError(ValueError):
    """A CIF holding several crystal structures (data blocks with atom sites): only one per file is predicted."""


def check_one_structure_block(parser: CifParser, source: str | Path) -> None:
    """Refuse a CIF with more than one data block holding atom sites (pymatgen would read the first only).

    Raises:
        CifBlocksError: naming ``source`` and the blocks.
    """
    blocks = parser._cif.data  # type: ignore[attr-defined]  # set in from_str, unknown to its type information
    names = [name for name, block in blocks.items() if "_atom_site_fract_x" in block.data]
    if len(names) > 1:
        shown = ", ".join(names[:5]) + (", ..." if len(names) > 5 else "")
        raise CifBlocksError(
            f"{source}: holds {len(names)} crystal structures (data blocks {shown}); only the first would be "
            "predicted, so the file is refused: split it into one file per block"
        )


class CifOccupancyError(ValueError):
    """A CIF site's occupancy is negative, above 1 or not a number; the message names the file and the site."""


def check_cif_occupancies(parser: CifParser, source: str | Path) -> None:
    """Refuse a CIF whose ``_atom_site_occupancy`` values are negative, above 1 or not numbers.

    pymatgen drops a site with a negative occupancy (another crystal, with only a warning) and rescales occupancies
    slightly above 1; here both are errors naming the site. ``?`` and ``.`` (unknown) are read as pymatgen does.

    Raises:
        CifOccupancyError: naming ``source``, the site label and the value.
    """
    # the parsed CIF blocks: pymatgen keeps them on the parser (set in from_str, so unknown to its type information)
    for block in parser._cif.data.values():  # type: ignore[attr-defined]
        occupancies = block.data.get("_atom_site_occupancy")
        if occupancies is None:
            continue
        labels = block.data.get("_atom_site_label") or [str(index) for index in range(len(occupancies))]
        for label, text in zip(labels, occupancies, strict=False):
            if text in ("?", "."):
                continue
            try:
                value = str2float(text)
            except ValueError:
                raise CifOccupancyError(f"{source}: site {label}: occupancy {text!r} is not a number") from None
            if not np.isfinite(value) or value < 0 or value > 1:
                raise CifOccupancyError(f"{source}: site {label}: occupancy {text} is outside [0, 1]")


def parse_user_cif(
    text: str, source: str | Path, max_sites: int | None = None, max_images: int | None = None
) -> Structure:
    """The first structure of a CIF text from a user: :func:`check_cif_occupancies`, then :class:`FastCifParser`.

    ``max_sites``/``max_images``: the limits of :func:`check_cif_size`, checked before any symmetry expansion.

    Raises:
        CifBlocksError: more than one block with atom sites.
        CifOccupancyError: a bad occupancy.
        CifSizeError: a block over the limits.
    """
    structure = fast_cif_structure(text, max_images)  # its CIFs have all occupancies 1, which the check accepts
    if structure is not None:
        if max_sites is not None and len(structure) > max_sites:  # the fast path expanded at most max_images
            raise CifSizeError(f"{source}: {len(structure)} atoms, more than the {max_sites}-atom limit")
        return structure
    parser = FastCifParser.from_str(text)
    check_one_structure_block(parser, source)
    if max_sites is not None or max_images is not None:
        parser.limits = (str(source), max_sites or sys.maxsize, max_images or sys.maxsize)
    check_cif_occupancies(parser, source)
    return parser.parse_structures(primitive=False)[0]
