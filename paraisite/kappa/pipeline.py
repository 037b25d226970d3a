"""One crystal through every stage (relax, fc3 and fc2, imaginary-mode check, kappa), cached; rows for the CSV.

:class:`KappaRunner` loads the potential once (in float64) and runs crystals one by one; each result is a dict of
plain values (:data:`RESULT_FIELDS`) stored in the cache (:mod:`paraisite.kappa.cache`) before it is returned, and
:func:`result_rows` flattens it into one CSV row per temperature (:data:`CSV_COLUMNS`).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ase import Atoms
from pymatgen.core import Composition

from paraisite.kappa.cache import read_result, result_key, structure_sha256, write_result
from paraisite.kappa.conductivity import VOIGT, thermal_conductivity
from paraisite.kappa.force_constants import build_force_constants, imaginary_modes
from paraisite.kappa.potentials import FilePotential, float64, load_calculator, potential_entry
from paraisite.kappa.relax import relax, standard_cell
from paraisite.kappa.settings import KappaSettings

log = logging.getLogger(__name__)

#: Stages timed for each crystal (seconds, ``time_<stage>_s`` columns).
STAGES = ("relax", "fc3_forces", "fc2_forces", "fc_solve", "kappa", "total")
#: Columns of ``paraisite kappa``'s CSV, one row per crystal and temperature.
CSV_COLUMNS = (
    "name",
    "formula",
    "temperature_K",
    "kappa_W_per_mK",
    *(f"kappa_{component}" for component in VOIGT),
    "spacegroup_input",
    "spacegroup_relaxed",
    "volume_change",
    "atoms_primitive",
    "fc3_supercell",
    "fc2_supercell",
    "fc3_displacements",
    "fc2_displacements",
    "mesh",
    "imaginary_modes",
    "min_frequency_THz",
    "method",
    "isotopes",
    "wigner",
    "potential",
    "potential_sha256",
    "structure_sha256",
    "cache_key",
    "cached",
    *(f"time_{stage}_s" for stage in STAGES),
    "error",
)


@dataclass
class KappaRunner:
    """Runs crystals through the protocol with one potential, reading and writing the result cache.

    Attributes:
        potential: A registered potential's name or alias, or a model file ``KIND:PATH``
            (:mod:`paraisite.kappa.potentials`).
        settings: The protocol.
        cache_dir: Folder of the cached results; ``None``: no cache.
        progress: Called with one line per stage and progress step (default: the logger).
        trust_potential_file: Read a pickled model file (refused at construction otherwise, before any work).
    """

    potential: str
    settings: KappaSettings
    cache_dir: Path | None
    progress: Callable[[str], None] | None = None
    trust_potential_file: bool = False
    _calculator: Any = field(default=None, repr=False)

    def __post_init__(self) -> None:
        entry = potential_entry(self.potential)
        if isinstance(entry, FilePotential):
            entry.check_trusted(self.trust_potential_file)
        self.potential = entry.name
        self.potential_sha256 = entry.sha256

    def _say(self, message: str) -> None:
        (self.progress or log.info)(message)

    @property
    def calculator(self) -> Any:
        """The potential's ASE calculator, loaded on first use."""
        if self._calculator is None:
            self._calculator = load_calculator(self.potential, self.trust_potential_file)
        return self._calculator

    def key(self, atoms: Atoms) -> str:
        """The cache key of a crystal under this runner's potential and settings."""
        return result_key(structure_sha256(atoms), self.potential_sha256, self.settings)

    def cached(self, atoms: Atoms) -> dict[str, Any] | None:
        """The cached result of a crystal, or ``None``."""
        return None if self.cache_dir is None else read_result(self.cache_dir, self.key(atoms))

    def run(self, atoms: Atoms, name: str) -> dict[str, Any]:
        """The result of one crystal (from the cache when there), with ``cached`` telling which.

        Raises:
            paraisite.kappa.relax.SymmetryChangedError: the relaxation changed the space group.
            paraisite.kappa.relax.RelaxationError: the relaxation did not converge.
        """
        key = self.key(atoms)
        hit = self.cached(atoms)
        if hit is not None:
            self._say(f"{name}: cached result {key[:12]}")
            return {**hit, "name": name, "cached": True}
        result = self._compute(atoms, name)
        result.update(structure_sha256=structure_sha256(atoms), cache_key=key)
        if self.cache_dir is not None:
            write_result(self.cache_dir, key, result)
        return {**result, "cached": False}

    def _compute(self, atoms: Atoms, name: str) -> dict[str, Any]:
        settings = self.settings
        times: dict[str, float] = {}
        begin = time.perf_counter()
        with float64():
            calculator = self.calculator
            self._say(f"{name}: relaxing ({len(atoms)} atoms)")
            started = time.perf_counter()
            relaxed = relax(
                atoms,
                calculator,
                symprec=settings.symprec,
                fmax=settings.relax_fmax,
                max_steps=settings.relax_max_steps,
            )
            times["relax"] = time.perf_counter() - started
            self._say(
                f"{name}: relaxed in {relaxed.steps} steps ({times['relax']:.0f} s), space group "
                f"{relaxed.spacegroup_before} kept, volume {100 * relaxed.volume_change:+.2f} %"
            )
            unitcell = standard_cell(relaxed.atoms, settings.symprec)
            force_constants = build_force_constants(
                unitcell, calculator, settings, progress=lambda line: self._say(f"{name}: {line}")
            )
        times.update(force_constants.times)
        started = time.perf_counter()
        conductivity = thermal_conductivity(force_constants, settings)
        times["kappa"] = time.perf_counter() - started
        modes = imaginary_modes(force_constants, conductivity.mesh, settings.imaginary_tolerance_thz)
        times["total"] = time.perf_counter() - begin
        if modes.count:
            log.warning(
                "%s: %d of %d harmonic modes on the mesh are imaginary (lowest %.3f THz); phono3py leaves them "
                "out of kappa",
                name,
                modes.count,
                modes.total,
                modes.min_frequency_thz,
            )
        kappa_text = ", ".join(
            f"{value:.3g} W/mK at {t:g} K"
            for t, value in zip(conductivity.temperatures, conductivity.scalar, strict=True)
        )
        self._say(f"{name}: kappa {kappa_text} ({times['total']:.0f} s in all)")
        return {
            "name": name,
            "formula": Composition(relaxed.atoms.get_chemical_formula()).reduced_formula,
            "temperatures": list(conductivity.temperatures),
            "kappa": conductivity.scalar.tolist(),
            "tensors": conductivity.tensors.tolist(),
            "spacegroup_input": relaxed.spacegroup_before,
            "spacegroup_relaxed": relaxed.spacegroup_after,
            "volume_change": relaxed.volume_change,
            "atoms_primitive": len(force_constants.phono3py.primitive),
            "fc3_supercell": "x".join(map(str, force_constants.fc3_supercell)),
            "fc2_supercell": "x".join(map(str, force_constants.fc2_supercell)),
            "fc3_displacements": force_constants.fc3_displacements,
            "fc2_displacements": force_constants.fc2_displacements,
            "mesh": "x".join(map(str, conductivity.mesh)),
            "imaginary_modes": modes.count,
            "min_frequency_THz": modes.min_frequency_thz,
            "method": settings.method,
            "isotopes": settings.isotopes,
            "wigner": settings.wigner,
            "potential": self.potential,
            "potential_sha256": self.potential_sha256,
            "times": times,
        }


def result_rows(result: dict[str, Any]) -> list[dict[str, Any]]:
    """CSV rows (:data:`CSV_COLUMNS`) of one result: one per temperature."""
    rows = []
    shared = {column: result.get(column, "") for column in CSV_COLUMNS}
    shared.update({f"time_{stage}_s": round(result["times"].get(stage, 0.0), 2) for stage in STAGES})
    for temperature, scalar, tensor in zip(result["temperatures"], result["kappa"], result["tensors"], strict=True):
        row = {**shared, "temperature_K": temperature, "kappa_W_per_mK": scalar}
        row.update({f"kappa_{component}": value for component, value in zip(VOIGT, tensor, strict=True)})
        rows.append(row)
    return rows


def error_row(name: str, error: Exception) -> dict[str, Any]:
    """The CSV row of a refused crystal: its name and the error, every other column empty."""
    return {**dict.fromkeys(CSV_COLUMNS, ""), "name": name, "error": f"{type(error).__name__}: {error}"}
