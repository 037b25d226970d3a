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
from pymatgen.io.cif import CifParser


def _matches(existing: np.ndarray, new: np.ndarray, tolerance: float) -> np.ndarray:
    """``[len(new), len(existing)]``: positions equal within ``tolerance`` in every fractional coordinate, modulo 1.

    The same arithmetic as pymatgen's ``find_in_coord_list_pbc`` (``d - round(d)``), which is symmetric in its
    arguments, so a pairwise table decides exactly what the one-at-a-time comparisons decide.
    """
    difference = existing[None, :, :] - new[:, None, :]
    difference -= np.round(difference)
    return np.all(np.abs(difference) < tolerance, axis=2)


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
            return super()._unique_coords(coords, magmoms, lattice, labels)
        labels = labels or {}
        affine = np.stack([op.affine_matrix for op in operations])
        kept = np.empty((0, 3))
        labels_out: list[str] = []
        for site in coords:
            images = (affine @ np.array([*site, 1.0]))[:, :3]
            images = images - np.floor(images)
            seen = _matches(kept, images, self._site_tolerance).any(axis=1)
            among = _matches(images, images, self._site_tolerance)
            new: list[int] = []
            for index in range(len(images)):
                if not seen[index] and not (new and among[index, new].any()):
                    new.append(index)
            kept = np.concatenate([kept, images[new]])
            labels_out += [labels.get(site, "no_label")] * len(new)
        return list(kept), [Magmom(0)] * len(kept), labels_out


def is_cif(path: str | Path) -> bool:
    """Whether pymatgen would read ``path`` as a (non-magnetic) CIF: ``*.cif*``, compressed ones included."""
    name = Path(path).name.lower()
    return fnmatch.fnmatch(name, "*.cif*") and not fnmatch.fnmatch(name, "*.mcif*")


def read_cif(path: str | Path) -> Structure:
    """The first structure of a CIF, as ``Structure.from_file`` reads it (conventional cell, file order)."""
    with zopen(path, mode="rt", errors="replace", encoding="utf-8") as stream:
        text = stream.read()
    return FastCifParser.from_str(text).parse_structures(primitive=False)[0]
