"""Relaxation of cell and positions with the crystal's symmetry kept, and the space groups before and after.

ASE's ``FixSymmetry`` constraint (symmetrises forces, stress and steps with the space group found at ``symprec``)
inside a ``FrechetCellFilter`` (cell and positions together), minimised with BFGS. The space group is detected by
spglib before and after; a relaxation that changes it (a distorted input relaxing into a higher symmetry, or one
that breaks symmetry) or does not converge is refused: its phonons would belong to another crystal.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import spglib
from ase import Atoms
from pymatgen.core import Structure


class SymmetryChangedError(ValueError):
    """The relaxed crystal's space group differs from the input's."""


class RelaxationError(RuntimeError):
    """The relaxation did not reach the force tolerance."""


@dataclass(frozen=True)
class Relaxed:
    """A relaxed crystal and what the relaxation reported.

    Attributes:
        atoms: The relaxed cell (no calculator, no constraint).
        spacegroup_before: Space group of the input, ``"Fm-3m (225)"``.
        spacegroup_after: Space group of the relaxed cell (equal to ``spacegroup_before``, else refused).
        steps: Optimiser steps taken.
        volume_change: Relative change of the volume, ``V_relaxed / V_input - 1``.
    """

    atoms: Atoms
    spacegroup_before: str
    spacegroup_after: str
    steps: int
    volume_change: float


def to_atoms(structure: Structure) -> Atoms:
    """An ASE ``Atoms`` (periodic) of a pymatgen ``Structure``."""
    return Atoms(
        [site.specie.symbol for site in structure],
        cell=structure.lattice.matrix,
        scaled_positions=structure.frac_coords,
        pbc=True,
    )


def spglib_cell(atoms: Atoms) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(lattice, fractional positions, atomic numbers)``: spglib's cell of an ``Atoms``."""
    return np.asarray(atoms.cell.array), atoms.get_scaled_positions(), atoms.get_atomic_numbers()


def spacegroup(atoms: Atoms, symprec: float) -> str:
    """``"Fm-3m (225)"``: the space group spglib finds at ``symprec`` (Å)."""
    dataset = spglib.get_symmetry_dataset(spglib_cell(atoms), symprec=symprec)  # type: ignore[arg-type]
    if dataset is None:
        raise ValueError(f"spglib found no space group at symprec {symprec}")
    return f"{dataset.international} ({dataset.number})"


def relax(atoms: Atoms, calculator: Any, *, symprec: float, fmax: float, max_steps: int) -> Relaxed:
    """Relax cell and positions with the space group found at ``symprec`` kept.

    Raises:
        SymmetryChangedError: the space group after differs from the one before.
        RelaxationError: the forces are not below ``fmax`` after ``max_steps`` steps.
    """
    from ase.constraints import FixSymmetry
    from ase.filters import FrechetCellFilter
    from ase.optimize import BFGS

    before = spacegroup(atoms, symprec)
    work = atoms.copy()
    work.calc = calculator
    work.set_constraint(FixSymmetry(work, symprec=symprec))
    optimiser = BFGS(FrechetCellFilter(work), logfile=None)  # type: ignore[arg-type]
    converged = bool(optimiser.run(fmax=fmax, steps=max_steps))
    steps = int(optimiser.get_number_of_steps())
    relaxed = Atoms(work.get_chemical_symbols(), cell=work.cell.array, positions=work.positions, pbc=True)
    if not converged:
        raise RelaxationError(f"relaxation did not reach fmax {fmax} eV/Å in {max_steps} steps")
    after = spacegroup(relaxed, symprec)
    if after != before:
        raise SymmetryChangedError(
            f"space group changed in relaxation: {before} before, {after} after (symprec {symprec} Å); refused, "
            "its phonons would belong to another crystal (symmetrise the input or relax it first)"
        )
    return Relaxed(relaxed, before, after, steps, float(relaxed.get_volume() / atoms.get_volume() - 1.0))


def standard_cell(atoms: Atoms, symprec: float) -> Atoms:
    """The spglib-standardised conventional cell, idealised to exact symmetry (the cell phono3py is given)."""
    standard = spglib.standardize_cell(
        spglib_cell(atoms),  # type: ignore[arg-type]
        to_primitive=False,
        no_idealize=False,
        symprec=symprec,
    )
    if standard is None:
        raise ValueError(f"spglib could not standardise the cell at symprec {symprec}")
    lattice, positions, numbers = standard
    return Atoms(numbers=numbers, cell=lattice, scaled_positions=positions, pbc=True)
