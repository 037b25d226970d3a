"""A faster CIF reader: pymatgen's ``CifParser`` with its symmetry expansion done in numpy.

pymatgen expands the asymmetric unit one (site, operation) pair at a time, comparing each new position with every
kept one (``_unique_coords``); for a CIF with full space-group symmetry that loop is most of the parsing time.
:class:`FastCifParser` overrides only that step, keeping its arithmetic and its first-come order (same positions,
same order, same tolerance), so the structures are the ones ``Structure.from_file`` gives; a test compares both on
every CIF in the registry. Magnetic CIFs take pymatgen's own path.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from monty.io import zopen
from pymatgen.core import Lattice, Structure
from pymatgen.core.operations import MagSymmOp
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


class FastCifParser(CifParser):
    """``CifParser`` whose symmetry expansion is vectorised; results are identical to the parent's."""

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
        # images[s, k]: site s under operation k, wrapped into [0, 1) as pymatgen does (x - floor(x))
        images = np.stack([(affine @ np.array([*site, 1.0]))[:, :3] for site in coords]).reshape(-1, 3)
        images = images - np.floor(images)
        owner = np.repeat(np.arange(len(coords)), len(operations))
        if len(images) <= MAX_PAIRWISE_IMAGES:
            chosen = _first_unique(images, self._site_tolerance)  # type: ignore[attr-defined]  # set by from_str
        else:  # site by site, against the positions kept so far
            chosen_parts, kept = [], np.empty((0, 3))
            for site_index in range(len(coords)):
                offset = site_index * len(operations)
                tolerance = self._site_tolerance  # type: ignore[attr-defined]  # set by CifParser.from_str
                part = offset + _first_unique(images[owner == site_index], tolerance, kept)
                chosen_parts.append(part)
                kept = np.concatenate([kept, images[part]])
            chosen = np.concatenate(chosen_parts)
        labels_out = [labels.get(coords[owner[index]], "no_label") for index in chosen]
        return list(images[chosen]), [Magmom(0)] * len(chosen), labels_out


def is_cif(path: str | Path) -> bool:
    """Whether pymatgen would read ``path`` as a (non-magnetic) CIF: ``*.cif*``, compressed ones included."""
    name = Path(path).name.lower()
    return fnmatch.fnmatch(name, "*.cif*") and not fnmatch.fnmatch(name, "*.mcif*")


def read_cif(path: str | Path) -> Structure:
    """The first structure of a CIF, as ``Structure.from_file`` reads it (conventional cell, file order)."""
    with zopen(path, mode="rt", errors="replace", encoding="utf-8") as stream:
        text = stream.read()
    return FastCifParser.from_str(text).parse_structures(primitive=False)[0]


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


def parse_user_cif(text: str, source: str | Path) -> Structure:
    """The first structure of a CIF text from a user: :func:`check_cif_occupancies`, then :class:`FastCifParser`."""
    parser = FastCifParser.from_str(text)
    check_cif_occupancies(parser, source)
    return parser.parse_structures(primitive=False)[0]
