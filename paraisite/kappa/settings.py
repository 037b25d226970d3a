"""The protocol of ``paraisite kappa``: one frozen dataclass, its defaults written out in ``conf/kappa/default.yaml``.

A protocol is read from an option of the ``conf/kappa`` group (``default``, ``quick``) or a user's YAML file, each
holding only the keys it changes, merged onto the defaults; dotted overrides (``method=LBTE``) come last. Unknown
keys and wrong types are refused, naming the source. Every field enters a crystal's cache key.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf

from paraisite.config import group_options, load_group_option

METHODS = ("RTA", "LBTE")
#: Packages of the optional ``kappa`` extra.
KAPPA_EXTRA = ("phono3py", "phonopy", "spglib", "symfc")


def require_kappa_extra() -> None:
    """Refuse with the install command when the optional ``kappa`` extra is missing."""
    import importlib.util

    missing = [name for name in KAPPA_EXTRA if importlib.util.find_spec(name) is None]
    if missing:
        raise RuntimeError(
            f"needs {', '.join(missing)}: install the optional extra with `pip install 'paraisite[kappa]'`"
        )


@dataclass(frozen=True)
class KappaSettings:
    """Protocol settings; every default is the value in ``conf/kappa/default.yaml``.

    Attributes:
        symprec: Tolerance (Å) of the space-group detection and of the symmetry kept during relaxation; the
            phono3py cell is the spglib-standardised (idealised) conventional cell at this tolerance.
        relax_fmax: Relaxation stops when every force (eV/Å) and stress component (times the cell volume) is below
            this; a relaxation that does not reach it in ``relax_max_steps`` is refused.
        relax_max_steps: Largest number of optimiser (BFGS) steps.
        displacement: Finite displacement (Å) of the fc2 and fc3 supercells.
        fc3_min_length: The fc3 supercell is the smallest diagonal multiple of the conventional cell whose every
            lattice vector is at least this long (Å): 10 Å gives 2x2x2 for rocksalt and zincblende.
        fc2_min_length: The same for the fc2 (harmonic) supercell: 20 Å gives 4x4x4.
        fc3_cutoff_pair_distance: Pairs of displaced atoms farther apart than this (Å) are not computed (their
            fc3 is zero); ``None`` computes all.
        random_displacements: ``None``: systematic fc3 displacements (phono3py's symmetry-reduced pairs). An
            integer or ``"auto"``: that many fc3 supercells with every atom displaced randomly by ``displacement``,
            fitted by symfc (for large cells; ``"auto"`` is symfc's estimate of the minimum times 4). fc2 always
            takes phono3py's few systematic single displacements.
        random_seed: Seed of the random displacements.
        mesh_length: Reciprocal-space sampling as a length (Å): ``max(1, round(mesh_length * |b_i|))`` points
            along each reciprocal vector ``b_i`` of the primitive cell (no 2 pi); 50 Å gives 15x15x15 for
            rocksalt NaCl (a = 5.69 Å).
        temperatures: Temperatures (K) at which kappa is computed.
        method: ``RTA`` (relaxation-time approximation) or ``LBTE`` (direct solution of the linearised Boltzmann
            equation; memory and time grow fast with the mesh).
        isotopes: Add isotope scattering (natural abundances).
        wigner: Add the coherences' term of the Wigner transport equation (phono3py's ``SMM19``) to the
            populations' kappa.
        imaginary_tolerance_thz: A mode with a frequency below minus this (THz, on the mesh, from fc2) is counted as
            imaginary and reported; phono3py leaves such modes out of kappa.
    """

    symprec: float = 1e-3
    relax_fmax: float = 1e-3
    relax_max_steps: int = 300
    displacement: float = 0.03
    fc3_min_length: float = 10.0
    fc2_min_length: float = 20.0
    fc3_cutoff_pair_distance: float | None = None
    random_displacements: int | str | None = None
    random_seed: int = 0
    mesh_length: float = 50.0
    temperatures: tuple[float, ...] = field(default=(300.0,))
    method: str = "RTA"
    isotopes: bool = False
    wigner: bool = False
    imaginary_tolerance_thz: float = 0.05

    def __post_init__(self) -> None:
        checks = {
            "symprec": self.symprec > 0,
            "relax_fmax": self.relax_fmax > 0,
            "relax_max_steps": self.relax_max_steps >= 0,
            "displacement": self.displacement > 0,
            "fc3_min_length": self.fc3_min_length > 0,
            "fc2_min_length": self.fc2_min_length > 0,
            "mesh_length": self.mesh_length > 0,
            "temperatures": len(self.temperatures) > 0 and all(t >= 0 for t in self.temperatures),
            "imaginary_tolerance_thz": self.imaginary_tolerance_thz >= 0,
        }
        wrong = [name for name, ok in checks.items() if not ok]
        if wrong:
            raise ValueError(f"kappa settings: {', '.join(wrong)} out of range ({self.to_dict()})")
        if self.method not in METHODS:
            raise ValueError(f"kappa settings: method {self.method!r} is not one of {', '.join(METHODS)}")
        snapshots = self.random_displacements
        if snapshots is not None and snapshots != "auto" and not (isinstance(snapshots, int) and snapshots > 0):
            raise ValueError(f"kappa settings: random_displacements {snapshots!r} is not null, 'auto' or a count > 0")
        if self.fc3_cutoff_pair_distance is not None and self.fc3_cutoff_pair_distance <= 0:
            raise ValueError("kappa settings: fc3_cutoff_pair_distance must be null or > 0")

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-serialisable values (what enters the cache key)."""
        values = dataclasses.asdict(self)
        values["temperatures"] = [float(t) for t in self.temperatures]
        return values


def _field_types() -> dict[str, str]:
    return {item.name: str(item.type) for item in dataclasses.fields(KappaSettings)}


def _coerce(values: dict[str, Any], source: str) -> dict[str, Any]:
    """Check the keys and convert the values of one source of settings to the field types."""
    types = _field_types()
    unknown = sorted(set(values) - set(types))
    if unknown:
        raise ValueError(f"{source}: unknown kappa setting(s) {', '.join(unknown)}; valid: {', '.join(types)}")
    out: dict[str, Any] = {}
    for key, value in values.items():
        kind = types[key]
        try:
            if value is None and "None" in kind:
                out[key] = None
            elif key == "temperatures":
                listed = value if isinstance(value, (list, tuple)) else [value]
                out[key] = tuple(float(t) for t in listed)
            elif key == "random_displacements":
                out[key] = value if value == "auto" else int(value)
            elif kind.startswith("bool"):
                if not isinstance(value, bool):
                    raise TypeError("not true or false")
                out[key] = value
            elif kind.startswith("int"):
                if isinstance(value, bool) or float(value) != int(value):
                    raise TypeError("not an integer")
                out[key] = int(value)
            elif kind.startswith("float"):
                out[key] = float(value)
            else:
                out[key] = str(value)
        except (TypeError, ValueError) as error:
            raise ValueError(f"{source}: kappa setting {key}={value!r} is not a {kind} ({error})") from None
    return out


def load_settings(protocol: str = "default", overrides: Sequence[str] = ()) -> KappaSettings:
    """The settings of a protocol: a ``conf/kappa`` option name or a YAML file, then ``KEY=VALUE`` overrides.

    Raises:
        ValueError: an unknown protocol, key or override, or a value of the wrong type or out of range; the message
            names where it came from.
    """
    path = Path(protocol)
    if protocol.endswith((".yaml", ".yml")) or path.is_file():
        if not path.is_file():
            raise ValueError(f"{protocol}: no such kappa protocol file")
        loaded = OmegaConf.load(path)
        source = str(path)
    else:
        try:
            loaded = load_group_option("kappa", protocol)
        except KeyError:
            raise ValueError(
                f"unknown kappa protocol {protocol!r}; valid: {', '.join(group_options('kappa'))} or a YAML file"
            ) from None
        source = f"conf/kappa/{protocol}.yaml"
    values = OmegaConf.to_container(loaded, resolve=True) if loaded is not None else {}
    if not isinstance(values, dict):
        raise ValueError(f"{source}: a kappa protocol must be a mapping of settings")
    merged = _coerce({str(key): value for key, value in values.items()}, source)
    for text in overrides:
        key, separator, value = text.partition("=")
        if not separator:
            raise ValueError(f"override {text!r} is not KEY=VALUE")
        parsed = OmegaConf.to_container(OmegaConf.from_dotlist([f"value={value}"]))["value"]  # type: ignore[call-overload,index]
        merged.update(_coerce({key.strip(): parsed}, f"override {text!r}"))
    try:
        return KappaSettings(**merged)
    except ValueError as error:
        raise ValueError(f"{source}: {error}") from None
