"""kappa(T) from the force constants: phono3py's RTA or LBTE solution of the phonon Boltzmann equation.

The mesh is Gamma-centred with ``max(1, round(mesh_length * |b_i|))`` points along each reciprocal vector of the
primitive cell (phono3py's length rule). kappa is the tensor in W/(m K), Voigt order ``xx, yy, zz, yz, xz, xy``, in
the axes of the standardised conventional cell; the scalar is one third of its trace. Isotope scattering uses
natural abundances; ``wigner`` adds the coherences' term (phono3py's ``SMM19`` transport).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from paraisite.kappa.force_constants import ForceConstants
from paraisite.kappa.settings import KappaSettings

#: Voigt components of phono3py's kappa, in its order.
VOIGT = ("xx", "yy", "zz", "yz", "xz", "xy")


@dataclass(frozen=True)
class Conductivity:
    """kappa at each temperature.

    Attributes:
        temperatures: Temperatures (K).
        tensors: ``[n_temperatures, 6]`` kappa tensors (W/mK, Voigt order :data:`VOIGT`).
        mesh: The mesh used.
    """

    temperatures: tuple[float, ...]
    tensors: np.ndarray
    mesh: tuple[int, int, int]

    @property
    def scalar(self) -> np.ndarray:
        """One third of each tensor's trace (W/mK)."""
        return self.tensors[:, :3].mean(axis=1)


def set_mesh(force_constants: ForceConstants, settings: KappaSettings) -> tuple[int, int, int]:
    """Give phono3py its mesh (:attr:`KappaSettings.mesh_length`) and return the mesh numbers."""
    phono3py = force_constants.phono3py
    phono3py.mesh_numbers = float(settings.mesh_length)
    first, second, third = (int(n) for n in phono3py.mesh_numbers)
    return first, second, third


def thermal_conductivity(force_constants: ForceConstants, settings: KappaSettings) -> Conductivity:
    """kappa(T) with the settings' method, isotopes and Wigner options (:func:`set_mesh` first)."""
    phono3py = force_constants.phono3py
    mesh = set_mesh(force_constants, settings)
    phono3py.init_phph_interaction()
    phono3py.run_thermal_conductivity(
        is_LBTE=settings.method == "LBTE",
        temperatures=list(settings.temperatures),
        is_isotope=settings.isotopes,
        transport_type="SMM19" if settings.wigner else None,
    )
    kappa = np.asarray(phono3py.thermal_conductivity.kappa, dtype=float)[0]  # the first (only) smearing setting
    return Conductivity(tuple(settings.temperatures), kappa.reshape(len(settings.temperatures), 6), mesh)
