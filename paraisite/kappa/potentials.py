"""Universal potentials by name, as ASE calculators in float64, each with a sha256 that every result records.

A potential is an entry of :data:`POTENTIALS` (a name, a loader, the files and conversion that identify it), not a
code path. The two mirrored MatPES potentials are loaded by the project's own loaders
(:func:`~paraisite.models.tensornet.load_published_tensornet`, :func:`~paraisite.models.m3gnet.load_published_m3gnet`,
which fetch the pinned files and convert matgl's message convention) and wrapped in matgl's ASE calculator
(``matgl.ext.ase.PESCalculator``). Finite-difference force constants need float64: a float32 potential's forces
differ from the derivative of its own energy by about 2e-5 eV/Å, the size of the forces a 0.03 Å displacement's
third-order terms produce; :func:`float64` switches matgl (and torch's default dtype) for the calculation.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch

from paraisite.data import registry
from paraisite.models.m3gnet import CONVERTED_VERSIONS as M3GNET_CONVERTED
from paraisite.models.m3gnet import PUBLISHED_M3GNET, load_published_m3gnet
from paraisite.models.megnet import MATGL_REPO, MODEL_FILES
from paraisite.models.tensornet import CONVERTED_VERSIONS as TENSORNET_CONVERTED
from paraisite.models.tensornet import PUBLISHED_TENSORNET, load_published_tensornet


@dataclass(frozen=True)
class PotentialEntry:
    """One registered potential: how to load it and what identifies its weights.

    Attributes:
        name: The published name (recorded in every result row).
        load: Returns the matgl ``Potential`` (energies in eV, forces in eV/Å).
        folder: Folder of its files in the matgl repository (pinned in the registry).
        converted: The conversion applied on loading (part of the identity: other conversion, other numbers).
    """

    name: str
    load: Callable[[str], Any]
    folder: str
    converted: tuple[Any, ...]

    @property
    def sha256(self) -> str:
        """sha256 over the pinned sha256s of its files and the conversion applied on loading.

        The same definition as :func:`paraisite.models.physics.potential_sha256`, so a potential has one identity.
        """
        files = {file: registry.get(MATGL_REPO, f"{self.folder}/{file}").sha256 for file in MODEL_FILES}
        text = json.dumps({"files": files, "converted": list(self.converted)}, sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()


#: Registered potentials by published name.
POTENTIALS: dict[str, PotentialEntry] = {
    **{
        name: PotentialEntry(name, load_published_tensornet, folder, TENSORNET_CONVERTED)
        for name, folder in PUBLISHED_TENSORNET.items()
    },
    **{
        name: PotentialEntry(name, load_published_m3gnet, folder, M3GNET_CONVERTED)
        for name, folder in PUBLISHED_M3GNET.items()
    },
}
#: Short names accepted for the registered potentials (case-insensitive).
ALIASES: dict[str, str] = {
    "tensornet-matpes": "TensorNet-MatPES-PBE-v2025.1-PES",
    "m3gnet-matpes": "M3GNet-MatPES-PBE-v2025.1-PES",
}
DEFAULT_POTENTIAL = "TensorNet-MatPES-PBE-v2025.1-PES"


def potential_entry(name: str) -> PotentialEntry:
    """The registered potential ``name`` (a published name or an alias of :data:`ALIASES`).

    Raises:
        ValueError: unknown name; the message lists the valid ones.
    """
    if name in POTENTIALS:
        return POTENTIALS[name]
    alias = ALIASES.get(name.lower())
    if alias is not None:
        return POTENTIALS[alias]
    raise ValueError(f"unknown potential {name!r}; valid: {', '.join([*POTENTIALS, *ALIASES])}")


@contextmanager
def float64() -> Iterator[None]:
    """Run matgl (its graphs and models) and torch's default dtype in float64 for the block, then restore both."""
    import matgl

    previous = torch.get_default_dtype()
    matgl.set_default_dtype("float", 64)
    try:
        yield
    finally:
        matgl.set_default_dtype("float", 32)
        torch.set_default_dtype(previous)


def load_calculator(name: str) -> Any:
    """An ASE calculator (``matgl.ext.ase.PESCalculator``, stress in eV/Å^3) of a registered potential in float64.

    Use it inside :func:`float64`, so that the graphs are built in float64 too.
    """
    from matgl.ext.ase import PESCalculator

    entry = potential_entry(name)
    potential = entry.load(entry.name).double().eval()
    potential.calc_forces = potential.calc_stresses = True
    return PESCalculator(potential, stress_unit="eV/A3")
