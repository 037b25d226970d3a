"""Second- and third-order force constants by finite displacements (phono3py), and the imaginary-mode check.

The unit cell is the standardised conventional cell of the relaxed crystal; phono3py finds its primitive cell
(``primitive_matrix="auto"``). fc3 and fc2 each get their own diagonal supercell (:func:`supercell_multiples`).
Systematic displacements are phono3py's symmetry-reduced single (fc2) and pair (fc3) displacements, solved by
phono3py's own solver; random displacements for fc3 (every atom moved, a given number of supercells) are fitted by
symfc, fc2 keeping its few systematic single displacements.
"""

from __future__ import annotations

import logging
import math
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from ase import Atoms

from paraisite.kappa.settings import KappaSettings

log = logging.getLogger(__name__)


@dataclass
class ForceConstants:
    """A phono3py object holding fc2 and fc3, and what building it cost.

    Attributes:
        phono3py: The ``Phono3py`` object (fc2, fc3, primitive cell).
        fc3_supercell: Diagonal multiples of the conventional cell for fc3.
        fc2_supercell: The same for fc2.
        fc3_displacements: Supercells computed for fc3 (with at least one displaced atom).
        fc2_displacements: Supercells computed for fc2.
        times: Seconds spent per stage: ``fc3_forces``, ``fc2_forces``, ``fc_solve``.
    """

    phono3py: Any
    fc3_supercell: tuple[int, int, int]
    fc2_supercell: tuple[int, int, int]
    fc3_displacements: int
    fc2_displacements: int
    times: dict[str, float]


#: Largest supercell (atoms) whose forces are computed; ``PARAISITE_KAPPA_MAX_SUPERCELL_ATOMS`` overrides it. The
#: forces of BeO's 6x6x6 fc2 cell (1,728 atoms) took more than 24 GB with TensorNet-MatPES; 1,000 atoms ran.
MAX_SUPERCELL_ATOMS = 1000
SUPERCELL_ATOMS_VARIABLE = "PARAISITE_KAPPA_MAX_SUPERCELL_ATOMS"


class SupercellTooLargeError(ValueError):
    """A length rule asks for a supercell larger than the bound, refused before any force is computed."""


def check_supercell_sizes(unitcell: Atoms, cells: dict[str, tuple[int, int, int]], settings: KappaSettings) -> None:
    """Refuse a supercell over :data:`MAX_SUPERCELL_ATOMS` atoms (or the variable's value), naming the setting.

    Raises:
        SupercellTooLargeError: which supercell, its atoms, the bound, and the setting that gives a smaller one.
    """
    from paraisite.safety import configured_limit

    limit = int(configured_limit(SUPERCELL_ATOMS_VARIABLE, MAX_SUPERCELL_ATOMS))
    for label, cell in cells.items():
        atoms = len(unitcell) * math.prod(cell)
        if atoms > limit:
            length = getattr(settings, f"{label}_min_length")
            raise SupercellTooLargeError(
                f"the {label} supercell {'x'.join(map(str, cell))} of the {len(unitcell)}-atom conventional cell has "
                f"{atoms} atoms, over the bound of {limit} ({SUPERCELL_ATOMS_VARIABLE}); its forces could exceed the "
                f"memory. Lower {label}_min_length (now {length:g} A) or raise the bound"
            )


def supercell_multiples(atoms: Atoms, min_length: float) -> tuple[int, int, int]:
    """The smallest ``(n1, n2, n3)`` with every ``n_i * |a_i|`` at least ``min_length`` (Å)."""
    lengths = atoms.cell.lengths()
    n1, n2, n3 = (max(1, math.ceil(min_length / length - 1e-9)) for length in lengths)
    return n1, n2, n3


def phonopy_atoms(atoms: Atoms) -> Any:
    """The ``PhonopyAtoms`` (phonopy's cell) of an ASE ``Atoms``."""
    from phonopy.structure.atoms import PhonopyAtoms

    return PhonopyAtoms(
        symbols=atoms.get_chemical_symbols(), cell=atoms.cell.array, scaled_positions=atoms.get_scaled_positions()
    )


def compute_forces(
    cells: Sequence[Any], calculator: Any, label: str, progress: Callable[[str], None] | None = None
) -> np.ndarray:
    """Forces (eV/Å) of phonopy supercells, ``[n_cells, n_atoms, 3]``; a ``None`` cell (skipped pair) gets zeros."""
    forces: list[np.ndarray | None] = []
    count = sum(cell is not None for cell in cells)
    done = 0
    started = time.perf_counter()
    for cell in cells:
        if cell is None:
            forces.append(None)
            continue
        atoms = Atoms(cell.symbols, cell=cell.cell, scaled_positions=cell.scaled_positions, pbc=True)
        atoms.calc = calculator
        forces.append(np.array(atoms.get_forces(), dtype=float))
        done += 1
        if progress is not None and (done == count or done % 25 == 0):
            progress(f"{label}: {done}/{count} supercells ({time.perf_counter() - started:.0f} s)")
    shape = next(f.shape for f in forces if f is not None)
    return np.array([np.zeros(shape) if f is None else f for f in forces])


def build_force_constants(
    unitcell: Atoms,
    calculator: Any,
    settings: KappaSettings,
    progress: Callable[[str], None] | None = None,
) -> ForceConstants:
    """fc3 and fc2 of a (relaxed, standardised) unit cell with ``calculator``'s forces."""
    from phono3py import Phono3py

    fc3_cell = supercell_multiples(unitcell, settings.fc3_min_length)
    fc2_cell = supercell_multiples(unitcell, settings.fc2_min_length)
    check_supercell_sizes(unitcell, {"fc3": fc3_cell, "fc2": fc2_cell}, settings)
    with warnings.catch_warnings():  # "auto" is asked for: phonopy's note that v3 defaulted otherwise is noise
        warnings.filterwarnings("ignore", message=".*primitive_matrix.*")
        phono3py = Phono3py(
            phonopy_atoms(unitcell),
            supercell_matrix=list(fc3_cell),
            primitive_matrix="auto",
            phonon_supercell_matrix=list(fc2_cell),
            log_level=0,
        )
    random = settings.random_displacements
    if random is None:
        phono3py.generate_displacements(
            distance=settings.displacement, cutoff_pair_distance=settings.fc3_cutoff_pair_distance
        )
        solver = None
    else:
        phono3py.generate_displacements(
            distance=settings.displacement, number_of_snapshots=random, random_seed=settings.random_seed
        )
        solver = "symfc"
    phono3py.generate_fc2_displacements(distance=settings.displacement)  # a few single displacements: cheap
    times = {}
    started = time.perf_counter()
    fc3_cells = phono3py.supercells_with_displacements
    phono3py.forces = compute_forces(fc3_cells, calculator, f"fc3 {'x'.join(map(str, fc3_cell))}", progress)
    times["fc3_forces"] = time.perf_counter() - started
    started = time.perf_counter()
    fc2_cells = phono3py.phonon_supercells_with_displacements
    phono3py.phonon_forces = compute_forces(fc2_cells, calculator, f"fc2 {'x'.join(map(str, fc2_cell))}", progress)
    times["fc2_forces"] = time.perf_counter() - started
    started = time.perf_counter()
    phono3py.produce_fc3(fc_calculator=solver)
    phono3py.produce_fc2()
    times["fc_solve"] = time.perf_counter() - started
    return ForceConstants(
        phono3py,
        fc3_cell,
        fc2_cell,
        sum(cell is not None for cell in fc3_cells),
        len(fc2_cells),
        times,
    )


@dataclass(frozen=True)
class ImaginaryModes:
    """The harmonic phonons' check: modes on the mesh below ``-tolerance`` THz.

    Attributes:
        count: Modes (of all bands at all points of the full mesh) with a frequency below ``-tolerance``.
        total: All modes on the full mesh.
        min_frequency_thz: The lowest frequency (negative: imaginary).
    """

    count: int
    total: int
    min_frequency_thz: float


def imaginary_modes(force_constants: ForceConstants, mesh: Sequence[int], tolerance_thz: float) -> ImaginaryModes:
    """Harmonic frequencies from fc2 on ``mesh`` (Gamma-centred) and how many are imaginary."""
    from phonopy import Phonopy

    phono3py = force_constants.phono3py
    supercell = phono3py.phonon_supercell_matrix  # None when fc2 shares the fc3 supercell
    phonopy = Phonopy(
        phono3py.unitcell,
        supercell_matrix=phono3py.supercell_matrix if supercell is None else supercell,
        primitive_matrix=phono3py.primitive_matrix,
        log_level=0,
    )
    phonopy.force_constants = phono3py.fc2
    phonopy.nac_params = phono3py.nac_params  # None from paraisite's potentials; DFT data sets may carry it
    phonopy.run_mesh(list(mesh), with_eigenvectors=False, is_gamma_center=True)
    frequencies = np.asarray(phonopy.mesh.frequencies)  # type: ignore[union-attr]  # irreducible points only
    weights = np.asarray(phonopy.mesh.weights)  # type: ignore[union-attr]  # each one's points in the full mesh
    count = int((weights[:, None] * (frequencies < -tolerance_thz)).sum())
    return ImaginaryModes(count, int(weights.sum()) * frequencies.shape[1], float(frequencies.min()))
