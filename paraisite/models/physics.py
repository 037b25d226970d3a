"""Physics descriptors of a crystal from a universal potential (equation of state, AGL Debye model, Slack's LTC).

An energy-volume scan, a Birch-Murnaghan fit, and the quasi-harmonic Debye model of AFLOW-AGL with Slack's formula
for the lattice thermal conductivity. For each crystal (see :class:`EOSScanner`):

1. **Energy-volume scan.** The cell is strained isotropically by each linear strain ``s`` of
   :attr:`ScanSettings.strains` (lattice ``(1 + s) L``, atoms fixed in fractional coordinates, energies only, no
   relaxation) and its total energy is computed with the potential (default TensorNet-MatPES-PBE-v2025.1-PES,
   loaded and converted by :func:`paraisite.models.tensornet.load_published_tensornet`).
2. **Equation of state.** The third-order Birch-Murnaghan energy (:func:`birch_murnaghan_energy`) is fitted by
   least squares (:func:`fit_birch_murnaghan`): equilibrium volume ``V0``, bulk modulus ``B0`` and its pressure
   derivative ``B'``.
3. **Debye temperature** (:func:`debye_temperature`), as in AGL (Toher et al., Phys. Rev. B 90, 174107 (2014),
   Eqs. (9)-(11), after Blanco et al.'s GIBBS): ``theta_D = (hbar / k_B) (6 pi^2 V^(1/2) n)^(1/3) f(sigma)
   sqrt(B / M)`` with the cell volume ``V``, its ``n`` atoms and mass ``M`` and the static bulk modulus for the
   adiabatic one (AGL's approximation), i.e. ``(hbar / k_B) (6 pi^2)^(1/3) (V/n)^(1/6) f(sigma) sqrt(B0 / m)``
   with the mean atomic mass ``m``; the Poisson ratio is AGL's default ``sigma = 0.25``.
4. **Grüneisen parameter** (:func:`gruneisen_parameter`): ``gamma = -d ln theta_D / d ln V`` of that Debye
   temperature at constant ``sigma``, which is ``gamma = -1/6 + B'/2`` (Slater's form).
5. **Slack's formula** (:func:`slack_conductivity`), in the form AGL uses (Toher et al. 2014, Eqs. (7)-(8), after
   Morelli & Slack, in *High Thermal Conductivity Materials*, Springer (2006)): ``kappa(T) = A(gamma) m
   theta_a^3 delta n^(1/3) / (gamma^2 T)`` with ``A(gamma) = 0.849 * 3 * 4^(1/3) / (20 pi^3 (1 - 0.514/gamma +
   0.228/gamma^2)) * (k_B / hbar)^3``, the acoustic Debye temperature ``theta_a = theta_D n^(-1/3)``, the cube
   root ``delta`` of the volume per atom and ``n`` the atoms of the primitive cell (``A`` is 2.43e-6 / (1 -
   0.514/gamma + 0.228/gamma^2) W/(m K) for ``m`` in amu, ``delta`` in Å, ``theta`` in K).

A crystal whose scan cannot be fitted (energies not convex in the volume, ``B0 <= 0``, ``B'`` outside
:data:`BPRIME_RANGE`, the minimum outside the scanned volumes) gets NaN descriptors and a logged warning naming
it; it never stops a run. Descriptors of a data source are cached in one JSON file per source keyed by the
source's key, the potential's sha256 and the scan settings (:func:`source_descriptors`), like the graphs.
"""

from __future__ import annotations

import copy
import hashlib
import json
import logging
import math
import time
import warnings
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from numpy.typing import ArrayLike
from pymatgen.core import Structure
from scipy import constants
from scipy.optimize import curve_fit
from torch_geometric.data import Batch

from paraisite.data import registry
from paraisite.data.cache import read_verified, settings_key, write_verified
from paraisite.data.sources import load_source, source_key

log = logging.getLogger(__name__)

PHYSICS_FORMAT_VERSION = 1
#: eV/Å^3 -> GPa.
EV_PER_A3_IN_GPA = constants.electron_volt / constants.angstrom**3 / 1e9
#: Accepted range of the fitted ``B'`` (real solids: about 3 to 8); outside it the fit is reported as failed.
BPRIME_RANGE = (1.0, 15.0)
#: Raw descriptors of one crystal, in order (units in the names).
DESCRIPTOR_NAMES = (
    "volume_per_atom_A3",
    "bulk_modulus_GPa",
    "bulk_modulus_derivative",
    "debye_temperature_K",
    "gruneisen",
    "slack_ltc_W_per_mK",
)
#: Head inputs made from the descriptors by :func:`descriptor_features` (logarithms of the positive, wide ones).
FEATURE_NAMES = (
    "volume_per_atom_A3",
    "log10_bulk_modulus_GPa",
    "bulk_modulus_derivative",
    "log10_debye_temperature_K",
    "gruneisen",
    "log10_slack_ltc_W_per_mK",
)
_LOG_FEATURES = (1, 3, 5)


class EOSFitError(ValueError):
    """An energy-volume scan that gives no physical equation of state; the message says why."""


@dataclass(frozen=True)
class ScanSettings:
    """Everything that changes the descriptors (part of the cache key and of a model's hyper-parameters).

    Attributes:
        potential: published TensorNet potential (:data:`paraisite.models.tensornet.PUBLISHED_TENSORNET`).
        strains: isotropic linear strains of the scan (9 points, +-5 %: volumes 0.86 to 1.16 of the input's).
        poisson_ratio: ``sigma`` of the Debye temperature's ``f(sigma)`` (AGL's default 0.25).
        temperature: temperature (K) of the Slack estimate.
    """

    potential: str = "TensorNet-MatPES-PBE-v2025.1-PES"
    strains: tuple[float, ...] = (-0.05, -0.0375, -0.025, -0.0125, 0.0, 0.0125, 0.025, 0.0375, 0.05)
    poisson_ratio: float = 0.25
    temperature: float = 300.0

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> ScanSettings:
        """Settings from a config or hyper-parameters dict (unknown keys ignored)."""
        known = {k: values[k] for k in ("potential", "strains", "poisson_ratio", "temperature") if k in values}
        if "strains" in known:
            known["strains"] = tuple(float(s) for s in known["strains"])
        return cls(**known)

    def to_dict(self) -> dict[str, Any]:
        """Plain dict (strains as a list)."""
        values = asdict(self)
        values["strains"] = list(self.strains)
        return values


@dataclass(frozen=True)
class EOSFit:
    """Third-order Birch-Murnaghan parameters: ``E0`` (eV), ``V0`` (Å^3), ``B0`` (eV/Å^3) and ``B'``."""

    e0: float
    v0: float
    b0: float
    bprime: float

    @property
    def b0_gpa(self) -> float:
        """``B0`` in GPa."""
        return self.b0 * EV_PER_A3_IN_GPA


def birch_murnaghan_energy(volume: Any, e0: float, v0: float, b0: float, bprime: float) -> Any:
    """Third-order Birch-Murnaghan energy (Birch, Phys. Rev. 71, 809 (1947)).

    ``E(V) = E0 + 9 V0 B0 / 16 * (x^3 B' + x^2 (6 - 4 (V0/V)^(2/3)))`` with ``x = (V0/V)^(2/3) - 1``; ``B0`` in
    energy per volume of the units of ``E`` and ``V``.
    """
    eta = (v0 / np.asarray(volume, dtype=float)) ** (2.0 / 3.0)
    x = eta - 1.0
    return e0 + 9.0 * v0 * b0 / 16.0 * (x**3 * bprime + x**2 * (6.0 - 4.0 * eta))


def fit_birch_murnaghan(volumes: ArrayLike, energies: ArrayLike) -> EOSFit:
    """Least-squares Birch-Murnaghan fit of an energy-volume scan, started from a parabola.

    Raises:
        EOSFitError: fewer than 5 points or non-finite energies; energies not convex in the volume (the parabola
            opens downwards); the fit does not converge; ``B0 <= 0``; ``B'`` outside :data:`BPRIME_RANGE`; the
            minimum ``V0`` outside the scanned volumes.
    """
    v = np.asarray(volumes, dtype=float)
    e = np.asarray(energies, dtype=float)
    if len(v) < 5 or not (np.all(np.isfinite(v)) and np.all(np.isfinite(e))):
        raise EOSFitError(f"need at least 5 finite (V, E) points, got {len(v)}")
    a, b, c = np.polyfit(v, e, 2)
    if not a > 0:
        raise EOSFitError(f"energy not convex in the volume (parabola curvature {a:.3g} eV/A^6)")
    v_guess = -b / (2 * a)
    if not v.min() <= v_guess <= v.max():
        raise EOSFitError(f"energy minimum near V={v_guess:.3g} A^3 outside the scanned {v.min():.3g}-{v.max():.3g}")
    guess = (a * v_guess**2 + b * v_guess + c, v_guess, 2 * a * v_guess, 4.0)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # scipy's OptimizeWarning: reported below as a failed fit
            params, _ = curve_fit(birch_murnaghan_energy, v, e, p0=guess, maxfev=20000)
    except (RuntimeError, ValueError) as error:
        raise EOSFitError(f"Birch-Murnaghan fit did not converge ({error})") from None
    fit = EOSFit(*(float(p) for p in params))
    if not all(math.isfinite(p) for p in params):
        raise EOSFitError("Birch-Murnaghan fit gave non-finite parameters")
    if not fit.b0 > 0:
        raise EOSFitError(f"bulk modulus B0={fit.b0_gpa:.3g} GPa <= 0")
    if not BPRIME_RANGE[0] <= fit.bprime <= BPRIME_RANGE[1]:
        raise EOSFitError(f"B'={fit.bprime:.3g} outside {BPRIME_RANGE}")
    if not v.min() <= fit.v0 <= v.max():
        raise EOSFitError(f"V0={fit.v0:.3g} A^3 outside the scanned {v.min():.3g}-{v.max():.3g}")
    return fit


def poisson_factor(sigma: float) -> float:
    """AGL's ``f(sigma) = (3 / (2 (2/3 (1+s)/(1-2s))^(3/2) + (1/3 (1+s)/(1-s))^(3/2)))^(1/3)`` (0.860 at 0.25)."""
    longitudinal = (2.0 / 3.0 * (1 + sigma) / (1 - 2 * sigma)) ** 1.5
    transverse = (1.0 / 3.0 * (1 + sigma) / (1 - sigma)) ** 1.5
    return float((3.0 / (2.0 * longitudinal + transverse)) ** (1.0 / 3.0))


def debye_temperature(bulk_modulus_gpa: float, volume_per_atom: float, mean_mass_amu: float, sigma: float) -> float:
    """AGL's Debye temperature (K): ``(hbar/k_B) (6 pi^2)^(1/3) (V/n)^(1/6) f(sigma) sqrt(B / m)`` (SI inside).

    Args:
        bulk_modulus_gpa: ``B`` (GPa).
        volume_per_atom: ``V/n`` (Å^3).
        mean_mass_amu: mean atomic mass ``m`` (amu).
        sigma: Poisson ratio.
    """
    volume = volume_per_atom * constants.angstrom**3
    mass = mean_mass_amu * constants.atomic_mass
    rate = (
        (6 * math.pi**2) ** (1 / 3)
        * volume ** (1 / 6)
        * poisson_factor(sigma)
        * math.sqrt(bulk_modulus_gpa * 1e9 / mass)
    )
    return constants.hbar / constants.k * rate


def gruneisen_parameter(bprime: float) -> float:
    """``gamma = -d ln theta_D / d ln V = -1/6 + B'/2`` for :func:`debye_temperature` at constant Poisson ratio."""
    return -1.0 / 6.0 + bprime / 2.0


def slack_conductivity(
    theta_debye: float, gamma: float, volume_per_atom: float, mean_mass_amu: float, atoms: int, temperature: float
) -> float:
    """Slack's lattice thermal conductivity (W/(m K)) at ``temperature``, as AGL computes it (module docstring).

    ``kappa = A(gamma) m theta_a^3 delta n^(1/3) / (gamma^2 T)``, ``theta_a = theta_D n^(-1/3)``, ``delta =
    (V/n)^(1/3)``, ``A(gamma) = 0.849 * 3 * 4^(1/3) / (20 pi^3 (1 - 0.514/gamma + 0.228/gamma^2)) (k_B/hbar)^3``.

    Args:
        theta_debye: Debye temperature ``theta_D`` (K).
        gamma: Grüneisen parameter.
        volume_per_atom: Å^3.
        mean_mass_amu: mean atomic mass (amu).
        atoms: ``n``, atoms of the primitive cell.
        temperature: K.
    """
    theta_a = theta_debye * atoms ** (-1.0 / 3.0)
    delta = (volume_per_atom * constants.angstrom**3) ** (1.0 / 3.0)
    mass = mean_mass_amu * constants.atomic_mass
    a_gamma = 0.849 * 3 * 4 ** (1 / 3) / (20 * math.pi**3 * (1 - 0.514 / gamma + 0.228 / gamma**2))
    a_gamma *= (constants.k / constants.hbar) ** 3
    return a_gamma * mass * theta_a**3 * delta * atoms ** (1 / 3) / (gamma**2 * temperature)


def descriptors_from_fit(fit: EOSFit, structure: Structure, atoms_primitive: int, settings: ScanSettings) -> np.ndarray:
    """The raw descriptors (:data:`DESCRIPTOR_NAMES`) of a crystal from its fit; NaN where undefined."""
    volume_per_atom = fit.v0 / len(structure)
    mean_mass = float(structure.composition.weight) / structure.composition.num_atoms
    theta = debye_temperature(fit.b0_gpa, volume_per_atom, mean_mass, settings.poisson_ratio)
    gamma = gruneisen_parameter(fit.bprime)
    kappa = slack_conductivity(theta, gamma, volume_per_atom, mean_mass, atoms_primitive, settings.temperature)
    return np.array([volume_per_atom, fit.b0_gpa, fit.bprime, theta, gamma, kappa], dtype=float)


def descriptor_features(raw: np.ndarray) -> np.ndarray:
    """Head inputs (:data:`FEATURE_NAMES`) from raw descriptors ``[..., 6]``: log10 of B0, theta_D and kappa."""
    features = np.array(raw, dtype=float, copy=True)
    with np.errstate(invalid="ignore", divide="ignore"):
        for column in _LOG_FEATURES:
            values = features[..., column]
            features[..., column] = np.where(values > 0, np.log10(np.where(values > 0, values, 1.0)), np.nan)
    return features


def potential_sha256(name: str) -> str:
    """sha256 of a published potential: over its registry files' sha256s and the conversion applied on loading."""
    from paraisite.models.megnet import MATGL_REPO, MODEL_FILES
    from paraisite.models.tensornet import CONVERTED_VERSIONS, PUBLISHED_TENSORNET

    if name not in PUBLISHED_TENSORNET:
        raise ValueError(f"unknown potential {name!r}; valid: {', '.join(PUBLISHED_TENSORNET)}")
    files = {file: registry.get(MATGL_REPO, f"{PUBLISHED_TENSORNET[name]}/{file}").sha256 for file in MODEL_FILES}
    text = json.dumps({"files": files, "converted": list(CONVERTED_VERSIONS)}, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()


@dataclass
class EOSScanner:
    """Energy-volume scans of crystals with a published potential, and their descriptors.

    The potential is loaded on first use (and not pickled), so a scanner can be sent to worker processes.
    """

    settings: ScanSettings = field(default_factory=ScanSettings)
    _potential: Any = field(default=None, repr=False)

    def __getstate__(self) -> dict[str, Any]:
        return {"settings": self.settings, "_potential": None}

    @property
    def potential(self) -> Any:
        """The matgl ``Potential`` (energies only), loaded once."""
        if self._potential is None:
            from paraisite.models.tensornet import load_published_tensornet

            potential = load_published_tensornet(self.settings.potential)
            potential.calc_forces = potential.calc_stresses = False
            self._potential = potential.eval()
        return self._potential

    def scan(self, structure: Structure) -> tuple[np.ndarray, np.ndarray]:
        """Volumes (Å^3) and total energies (eV) of the strained cells, all in one batch."""
        from matgl.ext.pymatgen import Structure2Graph

        model = self.potential.model
        converter = Structure2Graph(element_types=model.element_types, cutoff=float(model.cutoff))
        graphs, lattices, volumes = [], [], []
        for strain in self.settings.strains:
            strained = structure.copy()
            strained.scale_lattice(structure.volume * (1.0 + strain) ** 3)
            graph, lattice, _ = converter.get_graph(strained)
            graphs.append(graph)
            lattices.append(torch.as_tensor(np.asarray(lattice), dtype=torch.float32).reshape(3, 3))
            volumes.append(strained.volume)
        batch = Batch.from_data_list(graphs)
        with torch.no_grad():
            energies = self.potential(batch, torch.stack(lattices))[0]
        return np.asarray(volumes, dtype=float), energies.detach().double().cpu().numpy().reshape(-1)

    def fit(self, structure: Structure) -> EOSFit:
        """Birch-Murnaghan fit of the scan; raises :class:`EOSFitError`."""
        return fit_birch_murnaghan(*self.scan(structure))

    def descriptors(self, structure: Structure, name: str = "structure") -> np.ndarray:
        """Raw descriptors (:data:`DESCRIPTOR_NAMES`) of a crystal; all NaN (with a warning naming it) on failure."""
        try:
            fit = self.fit(structure)
        except EOSFitError as error:
            log.warning("%s: no physics descriptors (%s); they are NaN", name, error)
            return np.full(len(DESCRIPTOR_NAMES), np.nan)
        except Exception as error:  # a structure the potential cannot take: never stop a run for it
            log.warning("%s: no physics descriptors (%s: %s); they are NaN", name, type(error).__name__, error)
            return np.full(len(DESCRIPTOR_NAMES), np.nan)
        atoms_primitive = len(structure.get_primitive_structure())
        return descriptors_from_fit(fit, structure, atoms_primitive, self.settings)


def physics_cache_path(source: str, settings: ScanSettings, on_bad_structure: str = "skip") -> Path:
    """Cache file of a source's descriptors: keyed by the source key, the potential's sha256 and the settings."""
    key = settings_key(
        {
            "source_key": source_key(source, on_bad_structure),
            "potential_sha256": potential_sha256(settings.potential),
            "settings": settings.to_dict(),
            "descriptors": list(DESCRIPTOR_NAMES),
            "format": PHYSICS_FORMAT_VERSION,
        }
    )
    return registry.cache_dir() / "physics" / f"{source}-{key}.json"


def _read_cache(path: Path) -> dict[str, list[float | None]]:
    data = read_verified(path)
    if data is None:
        return {}
    try:
        return dict(json.loads(data)["descriptors"])
    except (ValueError, KeyError, TypeError) as error:
        log.warning("physics cache %s does not load (%s); recomputing it", path, error)
        return {}


def source_descriptors(
    source: str,
    ids: Sequence[str],
    settings: ScanSettings | None = None,
    on_bad_structure: str = "skip",
    scanner: EOSScanner | None = None,
) -> np.ndarray:
    """Raw descriptors ``[len(ids), 6]`` of crystals of a source, from the cache; missing ones are computed and added.

    Each crystal's entry depends only on the key's inputs, so a cache file holding some of a source's crystals is
    completed, not replaced, when others are asked for (e.g. a subsample of AFLOW).
    """
    settings = settings or ScanSettings()
    path = physics_cache_path(source, settings, on_bad_structure)
    cached = _read_cache(path)
    missing = [i for i in dict.fromkeys(ids) if i not in cached]
    if missing:
        scanner = scanner or EOSScanner(settings)
        records = {r.id: r for r in load_source(source, on_bad_structure).records}
        start = time.perf_counter()
        for done, crystal_id in enumerate(missing, 1):
            record = records[crystal_id]
            raw = scanner.descriptors(record.structure, name=f"{source}:{record.id} ({record.formula})")
            cached[crystal_id] = [None if not math.isfinite(x) else float(x) for x in raw]
            if done % 200 == 0:
                log.info("%s: physics descriptors of %d/%d crystals", source, done, len(missing))
        payload = {"descriptors": cached, "names": list(DESCRIPTOR_NAMES), "settings": settings.to_dict()}
        write_verified(path, json.dumps(payload, sort_keys=True).encode())
        log.info(
            "%s: physics descriptors of %d crystals in %.1f s -> %s",
            source, len(missing), time.perf_counter() - start, path,
        )  # fmt: skip
    return np.array([[np.nan if x is None else x for x in cached[i]] for i in ids], dtype=float).reshape(
        len(ids), len(DESCRIPTOR_NAMES)
    )


class FeatureGraphBuilder:
    """A graph builder whose graphs also carry per-crystal head inputs (``extra_features``, ``[1, k]``).

    What a model trained with physics features predicts new crystals with (:mod:`paraisite.zoo.predictors`): a
    subclass says how a crystal's features are computed (:meth:`features`) and with which settings.
    """

    #: Names of the ``extra_features`` columns (NaN where unknown: the model then uses its training mean).
    feature_names: tuple[str, ...] = ()

    def __init__(self, builder: Any) -> None:
        self.builder = builder

    def feature_settings(self) -> dict[str, Any]:
        """The settings of the features (``physics`` of :meth:`settings`)."""
        raise NotImplementedError

    def features(self, structure: Structure, name: str) -> np.ndarray:
        """The ``k`` features of one crystal (NaN where unknown)."""
        raise NotImplementedError

    def settings(self) -> dict[str, Any]:
        """The wrapped builder's settings and the features'."""
        return {**self.builder.settings(), "physics": self.feature_settings()}

    def build(self, structure: Structure, name: str = "structure") -> Any:
        """The wrapped builder's graph with ``extra_features``."""
        graph = copy.copy(self.builder.build(structure, name))
        features = self.features(structure, name)
        graph.extra_features = torch.as_tensor(features, dtype=torch.float32).reshape(1, -1)
        return graph


class PhysicsGraphBuilder(FeatureGraphBuilder):
    """Graphs with the crystal's physics features (``[1, 6]``, :data:`FEATURE_NAMES`), from its own scan (no cache)."""

    feature_names = FEATURE_NAMES

    def __init__(self, builder: Any, settings: ScanSettings) -> None:
        super().__init__(builder)
        self.scanner = EOSScanner(settings)

    def feature_settings(self) -> dict[str, Any]:
        """The scan's settings."""
        return self.scanner.settings.to_dict()

    def features(self, structure: Structure, name: str) -> np.ndarray:
        """The descriptors of the crystal's scan, as head inputs."""
        return descriptor_features(self.scanner.descriptors(structure, name))


class SourceFeatures:
    """The features (:data:`FEATURE_NAMES`) of a source's crystals, from the cached descriptors.

    The provider given to :meth:`paraisite.data.datamodule.LTCDataModule.attach_features` by the training wiring.

    Args:
        settings: :class:`ScanSettings` as a dict (``model.physics`` of the config).
        on_bad_structure: the datamodule's policy (part of the source's key).
    """

    def __init__(self, settings: dict[str, Any], on_bad_structure: str = "skip") -> None:
        self.settings = ScanSettings.from_dict(settings)
        self.on_bad_structure = on_bad_structure
        self.scanner = EOSScanner(self.settings)

    def __call__(self, source: str, ids: list[str]) -> np.ndarray:
        """``[len(ids), 6]`` features (NaN where the fit failed)."""
        raw = source_descriptors(source, ids, self.settings, self.on_bad_structure, self.scanner)
        return descriptor_features(raw)


class SlackEstimate:
    """Slack's LTC (W/mK, ``[len(ids), 1]``, NaN where the fit failed) of a source's crystals, from the cache.

    The estimate of :mod:`paraisite.evaluation.physics_baseline` (``paraisite baseline``).
    """

    def __init__(self, settings: ScanSettings | None = None) -> None:
        self.settings = settings or ScanSettings()

    def __call__(self, source: str, ids: list[str]) -> np.ndarray:
        """Slack's estimate of each crystal."""
        column = DESCRIPTOR_NAMES.index("slack_ltc_W_per_mK")
        return source_descriptors(source, ids, self.settings)[:, [column]]
