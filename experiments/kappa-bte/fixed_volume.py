"""How much of TensorNet-MatPES's low kappa is its larger volume: kappa at the input (Materials Project, PBE) cell.

The default protocol relaxes the cell with the potential. This runs the same fc3/fc2/RTA stages on the input cell
as it is (only valid for crystals without free internal coordinates, such as rocksalt and zincblende), and prints
kappa beside the relaxed-cell value from the benchmark's cache.

    OMP_NUM_THREADS=1 nice -n 19 python experiments/kappa-bte/fixed_volume.py STRUCTURE...
"""

from __future__ import annotations

import sys

from paraisite.data.sources import read_structure
from paraisite.kappa.conductivity import thermal_conductivity
from paraisite.kappa.force_constants import build_force_constants, imaginary_modes
from paraisite.kappa.potentials import float64, load_calculator
from paraisite.kappa.relax import spacegroup, standard_cell, to_atoms
from paraisite.kappa.settings import KappaSettings


def main() -> None:
    """Print kappa at 300 K of each structure file at its own cell."""
    settings = KappaSettings()
    with float64():
        calculator = load_calculator("TensorNet-MatPES-PBE-v2025.1-PES")
        for path in sys.argv[1:]:
            atoms = to_atoms(read_structure(path))
            unitcell = standard_cell(atoms, settings.symprec)
            force_constants = build_force_constants(unitcell, calculator, settings)
            conductivity = thermal_conductivity(force_constants, settings)
            modes = imaginary_modes(force_constants, conductivity.mesh, settings.imaginary_tolerance_thz)
            print(
                f"{path}: {spacegroup(atoms, settings.symprec)}, input cell, kappa {conductivity.scalar[0]:.3g} W/mK "
                f"at 300 K, mesh {conductivity.mesh}, {modes.count} imaginary modes",
                flush=True,
            )


if __name__ == "__main__":
    main()
