"""Head inputs from a universal potential: ``+features=eos`` (an energy-volume scan) or ``+features=kappa_bte``.

``model.physics`` of a config (and ``physics`` of a checkpoint's hyper-parameters) names the kind with ``kind``:

- ``eos`` (the default when ``kind`` is absent, as in checkpoints written before it existed): the six descriptors
  of :mod:`paraisite.models.physics` (equation of state, AGL's Debye temperature, Slack's LTC).
- ``kappa_bte``: one input, ``log10`` of the crystal's kappa from the phonon Boltzmann route of ``paraisite kappa``
  (:class:`~paraisite.kappa.pipeline.KappaRunner`: relaxation, fc2 and fc3, RTA) at ``temperature``, with the
  chosen potential and protocol. Minutes per small crystal with the default protocol, so crystals whose primitive
  cell has more than ``max_primitive_atoms`` atoms are not computed (the input is unknown: the model uses its
  training mean, and ``paraisite predict`` names it in ``imputed_features``), and every result goes to the
  per-crystal cache of ``paraisite kappa`` (``<paraisite cache>/kappa``), shared with the command: a crystal
  computed once, by either, is read back in milliseconds. A crystal the protocol refuses (space group changed,
  supercell too large), or whose kappa is outside :data:`KAPPA_RANGE`, also gets an unknown input, with a warning
  naming it.

The checkpoint stores the protocol resolved (every setting, not the protocol's name), so a later change of
``conf/kappa`` never changes what a trained model is given.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from pymatgen.core import Structure

from paraisite.data.sources import load_source
from paraisite.kappa.cache import default_cache_dir
from paraisite.kappa.force_constants import supercell_multiples
from paraisite.kappa.pipeline import KappaRunner
from paraisite.kappa.potentials import FILE_KINDS, FilePotential, potential_entry
from paraisite.kappa.relax import standard_cell, to_atoms
from paraisite.kappa.settings import KappaSettings, load_settings, require_kappa_extra
from paraisite.models.physics import FEATURE_NAMES as EOS_FEATURE_NAMES
from paraisite.models.physics import FeatureGraphBuilder, PhysicsGraphBuilder, ScanSettings, SourceFeatures

log = logging.getLogger(__name__)

#: The head inputs of ``+features=kappa_bte``.
KAPPA_FEATURE_NAMES = ("log10_kappa_bte_W_per_mK",)
#: Accepted BTE kappa (W/mK): outside, the input is unknown (a protocol too lean for the crystal, or imaginary modes,
#: can give 1e37 or inf; diamond, the highest known, is about 2,000-3,000).
KAPPA_RANGE = (1e-3, 1e5)
#: ``model.physics.kind`` values.
KINDS = ("eos", "kappa_bte")


@dataclass(frozen=True)
class KappaFeatureSettings:
    """What ``+features=kappa_bte`` computes (part of a model's hyper-parameters).

    Attributes:
        potential: a registered potential of :mod:`paraisite.kappa.potentials` (name or alias).
        settings: the protocol, resolved (:class:`~paraisite.kappa.settings.KappaSettings`).
        temperature: K; one of the protocol's ``temperatures``.
        max_primitive_atoms: crystals with a larger primitive cell are not computed (unknown input).
        max_fc3_atoms: nor are crystals whose fc3 supercell (the protocol's length rule on the input's conventional
            cell, before relaxation) would have more atoms: its displaced supercells grow with their square (a
            zincblende with a = 4.4 Å asks 3x3x3, 716 supercells of 216 atoms, two hours on one core).
    """

    potential: str = "TensorNet-MatPES-PBE-v2025.1-PES"
    settings: KappaSettings = field(default_factory=KappaSettings)
    temperature: float = 300.0
    max_primitive_atoms: int = 4
    max_fc3_atoms: int = 128

    def __post_init__(self) -> None:
        require_kappa_extra()
        entry = potential_entry(self.potential)
        if isinstance(entry, FilePotential) and FILE_KINDS[entry.kind].pickled:
            raise ValueError(
                f"model.physics.potential={self.potential}: a pickled model file; +features=kappa_bte takes the "
                "registered potentials, whose files are verified by sha256 and loaded weights-only"
            )
        object.__setattr__(self, "potential", entry.name)
        if not any(math.isclose(self.temperature, t) for t in self.settings.temperatures):
            raise ValueError(
                f"model.physics.temperature={self.temperature:g} K is not one of the protocol's temperatures "
                f"{list(self.settings.temperatures)}"
            )
        for key in ("max_primitive_atoms", "max_fc3_atoms"):
            value = getattr(self, key)
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"model.physics.{key}={value!r}: a whole number >= 1")

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> KappaFeatureSettings:
        """From a config (``protocol`` and ``set`` overrides) or a checkpoint (``settings`` resolved)."""
        if values.get("settings") is not None:
            resolved = dict(values["settings"])
            resolved["temperatures"] = tuple(float(t) for t in resolved.get("temperatures", (300.0,)))
            settings = KappaSettings(**resolved)
        else:
            settings = load_settings(str(values.get("protocol", "default")), protocol_overrides(values.get("set")))
        return cls(
            potential=str(values.get("potential", cls.potential)),
            settings=settings,
            temperature=float(values.get("temperature", 300.0)),
            max_primitive_atoms=int(values.get("max_primitive_atoms", 4)),
            max_fc3_atoms=int(values.get("max_fc3_atoms", 128)),
        )

    def to_dict(self) -> dict[str, Any]:
        """Plain values, the protocol resolved."""
        return {
            "kind": "kappa_bte",
            "potential": self.potential,
            "settings": self.settings.to_dict(),
            "temperature": self.temperature,
            "max_primitive_atoms": self.max_primitive_atoms,
            "max_fc3_atoms": self.max_fc3_atoms,
        }


def protocol_overrides(changes: Any) -> list[str]:
    """``KEY=VALUE`` overrides of ``model.physics.set``: a mapping (``+model.physics.set.mesh_length=20``) or a list."""
    if not changes:
        return []
    if isinstance(changes, Mapping):
        return [f"{key}={value}" for key, value in changes.items()]
    if isinstance(changes, Sequence) and not isinstance(changes, str):
        return [str(change) for change in changes]
    raise ValueError(f"model.physics.set={changes!r}: a mapping of protocol settings (or a list of KEY=VALUE)")


@dataclass
class KappaFeatureComputer:
    """``log10`` BTE kappa of crystals; the potential is loaded on first use, results go through the kappa cache."""

    settings: KappaFeatureSettings
    cache_dir: Path | None = None
    _runner: KappaRunner | None = field(default=None, repr=False)

    def __getstate__(self) -> dict[str, Any]:
        return {"settings": self.settings, "cache_dir": self.cache_dir, "_runner": None}

    @property
    def runner(self) -> KappaRunner:
        """The runner of ``paraisite kappa`` with these settings and the shared cache."""
        if self._runner is None:
            cache = self.cache_dir if self.cache_dir is not None else default_cache_dir()
            self._runner = KappaRunner(self.settings.potential, self.settings.settings, cache)
        return self._runner

    def features(self, structure: Structure, name: str = "structure") -> np.ndarray:
        """``[1]``: ``log10`` kappa (W/mK) at the settings' temperature; NaN (with a warning) when not computed."""
        atoms_primitive = len(structure.get_primitive_structure())
        if atoms_primitive > self.settings.max_primitive_atoms:
            log.info(
                "%s: %d atoms in the primitive cell > model.physics.max_primitive_atoms=%d: no BTE kappa (unknown "
                "input)", name, atoms_primitive, self.settings.max_primitive_atoms,
            )  # fmt: skip
            return np.full(1, np.nan)
        atoms = to_atoms(structure)
        fc3_atoms = self.fc3_atoms(atoms)
        if fc3_atoms > self.settings.max_fc3_atoms:
            log.info(
                "%s: its fc3 supercell would have %d atoms > model.physics.max_fc3_atoms=%d: no BTE kappa (unknown "
                "input)", name, fc3_atoms, self.settings.max_fc3_atoms,
            )  # fmt: skip
            return np.full(1, np.nan)
        try:
            result = self.runner.run(atoms, name)
        except Exception as error:  # a refused crystal never stops a run: its input is unknown
            log.warning("%s: no BTE kappa (%s: %s); the input is unknown", name, type(error).__name__, error)
            return np.full(1, np.nan)
        temperatures = result["temperatures"]
        index = min(range(len(temperatures)), key=lambda i: abs(temperatures[i] - self.settings.temperature))
        kappa = float(result["kappa"][index])
        if not KAPPA_RANGE[0] <= kappa <= KAPPA_RANGE[1]:  # NaN fails too
            low, high = KAPPA_RANGE
            log.warning("%s: BTE kappa %.3g W/mK is outside %g-%g; the input is unknown", name, kappa, low, high)
            return np.full(1, np.nan)
        return np.array([math.log10(kappa)])

    def fc3_atoms(self, atoms: Any) -> int:
        """Atoms of the fc3 supercell the protocol's length rule gives the input's conventional cell."""
        conventional = standard_cell(atoms, self.settings.settings.symprec)
        multiples = supercell_multiples(conventional, self.settings.settings.fc3_min_length)
        return len(conventional) * math.prod(multiples)


class KappaSourceFeatures:
    """``[len(ids), 1]`` features of a source's crystals (the provider of the training datamodule)."""

    def __init__(self, settings: KappaFeatureSettings, on_bad_structure: str = "skip") -> None:
        self.computer = KappaFeatureComputer(settings)
        self.on_bad_structure = on_bad_structure

    def __call__(self, source: str, ids: list[str]) -> np.ndarray:
        """One row per id (NaN where not computed)."""
        records = {record.id: record for record in load_source(source, self.on_bad_structure).records}
        start = time.perf_counter()
        rows = []
        for done, crystal_id in enumerate(ids, 1):
            record = records[crystal_id]
            rows.append(self.computer.features(record.structure, f"{source}:{record.id} ({record.formula})"))
            seconds = time.perf_counter() - start
            log.info("%s: BTE kappa features of %d/%d crystals (%.0f s)", source, done, len(ids), seconds)
        return np.array(rows, dtype=float).reshape(len(ids), 1)


class KappaGraphBuilder(FeatureGraphBuilder):
    """Graphs with ``extra_features`` ``[1, 1]``: the crystal's ``log10`` BTE kappa."""

    feature_names = KAPPA_FEATURE_NAMES

    def __init__(self, builder: Any, settings: KappaFeatureSettings) -> None:
        super().__init__(builder)
        self.computer = KappaFeatureComputer(settings)

    def feature_settings(self) -> dict[str, Any]:
        """The features' settings, the protocol resolved."""
        return self.computer.settings.to_dict()

    def features(self, structure: Structure, name: str) -> np.ndarray:
        """``[1]``: the crystal's ``log10`` BTE kappa (NaN when unknown)."""
        return self.computer.features(structure, name)


FeatureSettings = ScanSettings | KappaFeatureSettings


#: Keys of ``model.physics`` for each kind.
KIND_KEYS = {
    "eos": ("kind", "potential", "strains", "poisson_ratio", "temperature"),
    "kappa_bte": (
        "kind",
        "potential",
        "protocol",
        "set",
        "settings",
        "temperature",
        "max_primitive_atoms",
        "max_fc3_atoms",
    ),
}


def physics_problems(physics: dict[str, Any]) -> list[str]:
    """What is wrong with a config's ``model.physics`` (unknown keys, bad values), as ``key=value: why`` texts."""
    try:
        kind = feature_kind(physics)
    except ValueError as error:
        return [str(error)]
    valid = KIND_KEYS[kind]
    problems = [
        f"model.physics.{key}: not a setting of +features={kind} (valid: {', '.join(valid)})"
        for key in physics
        if key not in valid
    ]
    if not problems:
        try:
            feature_settings(physics)
        except (ValueError, TypeError, RuntimeError) as error:
            problems.append(f"model.physics (+features={kind}): {error}")
    return problems


def feature_kind(physics: dict[str, Any]) -> str:
    """``model.physics.kind`` (``eos`` when absent); an unknown kind is refused."""
    kind = str(physics.get("kind", "eos"))
    if kind not in KINDS:
        raise ValueError(f"model.physics.kind={kind!r} is not one of {', '.join(KINDS)}")
    return kind


def feature_settings(physics: dict[str, Any]) -> FeatureSettings:
    """The settings object of a ``model.physics`` dict (a config's or a checkpoint's)."""
    if feature_kind(physics) == "kappa_bte":
        return KappaFeatureSettings.from_dict(physics)
    return ScanSettings.from_dict(physics)


def feature_names(settings: FeatureSettings) -> tuple[str, ...]:
    """The names of the head inputs these settings give."""
    return KAPPA_FEATURE_NAMES if isinstance(settings, KappaFeatureSettings) else EOS_FEATURE_NAMES


def source_features(settings: FeatureSettings, on_bad_structure: str = "skip") -> Any:
    """The training datamodule's feature provider for these settings."""
    if isinstance(settings, KappaFeatureSettings):
        return KappaSourceFeatures(settings, on_bad_structure)
    return SourceFeatures(settings.to_dict(), on_bad_structure)


def graph_builder(builder: Any, settings: FeatureSettings) -> Any:
    """``builder`` wrapped to compute these features of each new crystal (``paraisite predict``)."""
    if isinstance(settings, KappaFeatureSettings):
        return KappaGraphBuilder(builder, settings)
    return PhysicsGraphBuilder(builder, settings)
