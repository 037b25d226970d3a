"""Structure files from users (``paraisite predict`` / ``scan``): checked as files, read, then validated.

A file gets a crystal or a :class:`~paraisite.data.sources.StructureFileError` naming the file and the reason,
never a silently different crystal:

- **File.** Only regular files (FIFOs, devices, sockets, directories are refused before they are opened) of at most
  :data:`paraisite.safety.MAX_STRUCTURE_BYTES`; a ``.gz`` is decompressed up to the same limit (a decompression bomb
  is cut off), other compressions are refused.
- **Reading.** CIFs go through :func:`paraisite.data.cif.parse_user_cif` (occupancies outside [0, 1] are refused);
  pymatgen's warnings about occupancies and dropped elements become errors.
- **Crystal** (:func:`validate_structure`): known elements only, each site fully occupied by one species (no
  vacancies, no mixing), finite coordinates and lattice, a cell volume of at least :data:`MIN_VOLUME_PER_ATOM` per
  atom, no two atoms (periodic images included) closer than :data:`MIN_DISTANCE`, at most :data:`MAX_ATOMS` atoms.
- **Cost**, bounded before it is spent (``docs/limits.md``): a CIF's sites x symmetry operations before the symmetry
  is expanded (:data:`MAX_CIF_IMAGES`), and the neighbour pairs of the graph, estimated from the atoms and the
  density before any neighbour list is built (:data:`MAX_GRAPH_EDGES`).

Training data are read by :mod:`paraisite.data.sources` (verified upstream files) and are not changed by this module.
"""

from __future__ import annotations

import functools
import tempfile
import warnings
from pathlib import Path

import numpy as np
from pymatgen.core import Structure
from pymatgen.core.periodic_table import DummySpecies

from paraisite.data.cif import CifBlocksError, CifOccupancyError, CifSizeError, is_cif, parse_user_cif
from paraisite.data.sources import StructureFileError
from paraisite.safety import MAX_STRUCTURE_BYTES, UnsafeFileError, configured_limit, read_limited

#: Closest two atoms may be (Å); the shortest real bond (H2) is 0.74 Å.
MIN_DISTANCE = 0.5
#: Smallest cell volume per atom (Å^3); the densest solids have about 5.
MIN_VOLUME_PER_ATOM = 1.0
#: Most atoms in one structure (``PARAISITE_MAX_ATOMS``).
MAX_ATOMS = 10_000
#: Most atom positions a CIF's symmetry expansion may make: sites x symmetry operations, summed over its blocks
#: (``PARAISITE_MAX_CIF_IMAGES``); checked before expanding (1,000 general sites of a cubic group took 10 minutes).
MAX_CIF_IMAGES = 20_000
#: Most neighbour pairs a structure's graph may have, estimated before it is built (``PARAISITE_MAX_GRAPH_EDGES``):
#: about 10 kB each when a 9-member MEGNet ensemble predicts (1.4 GB for 137,000 pairs, measured).
MAX_GRAPH_EDGES = 800_000
#: Cutoff (Å) of the estimate: the largest radius-graph cutoff of paraisite's backbones.
GRAPH_REFERENCE_CUTOFF = 5.0
#: Compressions pymatgen would open without a size limit: refused.
UNBOUNDED_COMPRESSIONS = (".bz2", ".xz", ".lzma", ".z", ".zst")
#: Fragments of pymatgen warnings that mean the structure read is not the one in the file.
ALTERED_STRUCTURE_WARNINGS = ("occupanc", "missing elements")


class _ReaderError(ValueError):
    """pymatgen's error on the temporary copy, reworded to name the user's file."""


def read_input_structure(path: str | Path) -> Structure:
    """Read and validate one structure file from a user (see the module docstring).

    Raises:
        StructureFileError: naming ``path`` and the reason.
    """
    path = Path(path)
    name = path.name.lower()
    if name.endswith(UNBOUNDED_COMPRESSIONS):
        raise StructureFileError(f"{path}: compressed with {Path(name).suffix}; only .gz is read (with a size limit)")
    try:
        data = read_limited(path, MAX_STRUCTURE_BYTES, what="structure file")
    except FileNotFoundError:
        raise StructureFileError(f"{path}: no such file") from None
    except (UnsafeFileError, OSError) as error:
        raise StructureFileError(str(error) if isinstance(error, UnsafeFileError) else f"{path}: {error}") from None
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            structure = _parse(path, data)
        except (CifBlocksError, CifOccupancyError, CifSizeError) as error:
            raise StructureFileError(str(error)) from None
        except Exception as error:
            altered = _altered(caught)
            reason = altered or (str(error) if isinstance(error, _ReaderError) else f"{type(error).__name__}: {error}")
            issues = _cif_issues(caught)
            if issues and not altered:
                reason = f"{reason} {issues}"
            raise StructureFileError(f"{path}: cannot read a crystal structure ({reason})") from None
    altered = _altered(caught)
    if altered:
        raise StructureFileError(f"{path}: refused, pymatgen would read another crystal: {altered}")
    validate_structure(structure, path)
    return structure


def _parse(path: Path, data: bytes) -> Structure:
    if is_cif(path):
        max_atoms, max_images = max_atoms_limit(), int(configured_limit("PARAISITE_MAX_CIF_IMAGES", MAX_CIF_IMAGES))
        return parse_user_cif(data.decode("utf-8", errors="replace"), path, max_atoms, max_images)
    name = path.name[:-3] if path.name.lower().endswith(".gz") else path.name
    with tempfile.TemporaryDirectory(prefix="paraisite-input-") as folder:
        copy = Path(folder) / name  # the (decompressed) bytes under the same name: pymatgen picks the format by name
        copy.write_bytes(data)
        try:
            return Structure.from_file(copy)
        except Exception as error:  # name the user's file, not the copy
            raise _ReaderError(f"{type(error).__name__}: {str(error).replace(str(copy), str(path))}") from None


def _altered(caught: list[warnings.WarningMessage]) -> str | None:
    """The first warning saying the structure read differs from the file's (occupancies, elements)."""
    for warning in caught:
        text = " ".join(str(warning.message).split())
        if any(fragment in text.lower() for fragment in ALTERED_STRUCTURE_WARNINGS):
            return text
    return None


def _cif_issues(caught: list[warnings.WarningMessage]) -> str | None:
    """The summary pymatgen gives of why a CIF gave no structure (e.g. a cell thinner than its threshold)."""
    for warning in caught:
        text = " ".join(str(warning.message).split())
        if text.startswith("Issues encountered while parsing CIF"):
            return text
    return None


def max_atoms_limit() -> int:
    """:data:`MAX_ATOMS`, or what ``PARAISITE_MAX_ATOMS`` sets."""
    return int(configured_limit("PARAISITE_MAX_ATOMS", MAX_ATOMS))


def estimated_edges(count: int, volume: float, cutoff: float = GRAPH_REFERENCE_CUTOFF) -> float:
    """Neighbour pairs within ``cutoff`` of ``count`` atoms in a cell of ``volume`` (Å^3), at its mean density."""
    return count * (count / volume) * 4 / 3 * np.pi * cutoff**3


def validate_structure(structure: Structure, source: str | Path) -> None:
    """Refuse a structure that is no real, ordered crystal (see the module docstring); errors name ``source``.

    Raises:
        StructureFileError: the first problem found, with the site(s) and values.
    """
    count = len(structure)
    if count == 0:
        raise StructureFileError(f"{source}: the file holds no atoms")
    max_atoms = max_atoms_limit()
    if count > max_atoms:
        raise StructureFileError(
            f"{source}: {count} atoms, more than the {max_atoms}-atom limit (PARAISITE_MAX_ATOMS, docs/limits.md)"
        )
    for index, site in enumerate(structure):
        for species, amount in site.species.items():
            if isinstance(species, DummySpecies):
                raise StructureFileError(f"{source}: site {index}: unknown element {species.symbol!r}")
            if not np.isfinite(amount) or amount <= 0:
                raise StructureFileError(f"{source}: site {index}: occupancy {amount} of {species} is not positive")
        total = site.species.num_atoms
        if abs(total - 1) > 1e-6 or len(site.species) != 1:
            raise StructureFileError(
                f"{source}: site {index}: occupancy {site.species} is not one fully occupied species "
                "(vacancies, mixed or over-full sites are not a crystal the models can read)"
            )
    if not np.isfinite(structure.lattice.matrix).all():
        raise StructureFileError(f"{source}: the lattice has non-finite values")
    bad = np.flatnonzero(~np.isfinite(structure.frac_coords).all(axis=1))
    if len(bad):
        raise StructureFileError(f"{source}: site(s) {bad.tolist()} have NaN or infinite coordinates")
    volume = structure.lattice.volume
    if not np.isfinite(volume) or volume < MIN_VOLUME_PER_ATOM * count:
        raise StructureFileError(
            f"{source}: cell volume {volume:.4g} A^3 for {count} atoms is (near) zero "
            f"(less than {MIN_VOLUME_PER_ATOM} A^3 per atom)"
        )
    edges = estimated_edges(count, volume)
    max_edges = configured_limit("PARAISITE_MAX_GRAPH_EDGES", MAX_GRAPH_EDGES)
    if edges > max_edges:
        raise StructureFileError(
            f"{source}: {count} atoms at {count / volume:.3g} atoms/A^3 make about {edges:,.0f} neighbour pairs within "
            f"{GRAPH_REFERENCE_CUTOFF:g} A, more than the {max_edges:,.0f} limit on the graph's size "
            "(PARAISITE_MAX_GRAPH_EDGES, docs/limits.md); refused before building it"
        )
    if not _may_overlap(structure):
        return
    centres, neighbours, _, distances = structure.get_neighbor_list(MIN_DISTANCE)
    if len(distances):
        closest = int(np.argmin(distances))
        first, second = int(centres[closest]), int(neighbours[closest])
        raise StructureFileError(
            f"{source}: overlapping atoms: sites {first} ({structure[first].species_string}) and {second} "
            f"({structure[second].species_string}) are {distances[closest]:.3f} A apart (less than {MIN_DISTANCE} A)"
        )


#: Largest (atoms x atoms x cell images) table :func:`_may_overlap` builds; larger structures take pymatgen's search.
MAX_OVERLAP_TABLE = 200_000
#: Added to :data:`MIN_DISTANCE` by :func:`_may_overlap`, so that rounding can never hide a pair pymatgen finds.
OVERLAP_MARGIN = 0.01


def _may_overlap(structure: Structure) -> bool:
    """Whether two atoms (or an atom and a periodic image of itself) may be closer than :data:`MIN_DISTANCE`.

    False only when every such distance is at least ``MIN_DISTANCE + OVERLAP_MARGIN``: then pymatgen's neighbour
    search (which finds the pair and names it) would find nothing. All pairs at once, for small structures: a vector
    of length ``r`` has fractional components of at most ``r / spacing`` along each axis, so the images of each pair
    within ``r`` are among the few cell shifts around the nearest one.
    """
    reach = MIN_DISTANCE + OVERLAP_MARGIN
    matrix = structure.lattice.matrix
    spacings = 1 / np.sqrt((np.linalg.inv(matrix) ** 2).sum(axis=0))
    bounds = tuple(int(bound) for bound in np.ceil(reach / spacings + 0.5))
    count = len(structure)
    shifts = _cell_shifts(bounds)
    if count * count * len(shifts) > MAX_OVERLAP_TABLE:
        return True
    frac = structure.frac_coords
    difference = frac[None, :, :] - frac[:, None, :]
    difference -= np.round(difference)
    vectors = (difference @ matrix)[:, :, None, :] + (shifts @ matrix)[None, None, :, :]
    squared = np.einsum("ijsk,ijsk->ijs", vectors, vectors)
    squared[np.arange(count), np.arange(count), len(shifts) // 2] = np.inf  # an atom and itself (no shift)
    return bool((squared < reach**2).any())


@functools.lru_cache(maxsize=64)
def _cell_shifts(bounds: tuple[int, int, int]) -> np.ndarray:
    """Integer cell shifts ``[-b, b]`` along each axis, ``[S, 3]``, the zero shift in the middle (read-only)."""
    axes = [np.arange(-bound, bound + 1) for bound in bounds]
    shifts = np.stack(np.meshgrid(*axes, indexing="ij"), axis=-1).reshape(-1, 3).astype(float)
    shifts.flags.writeable = False
    return shifts
