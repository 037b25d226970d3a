"""Universal potentials by name, as ASE calculators in float64, each with a sha256 that every result records.

A potential is an entry of :data:`POTENTIALS` (a name, a loader, the files and conversion that identify it), not a
code path. The two mirrored MatPES potentials are loaded by the project's own loaders
(:func:`~paraisite.models.tensornet.load_published_tensornet`, :func:`~paraisite.models.m3gnet.load_published_m3gnet`,
which fetch the pinned files and convert matgl's message convention) and wrapped in matgl's ASE calculator
(``matgl.ext.ase.PESCalculator``). Finite-difference force constants need float64: a float32 potential's forces
differ from the derivative of its own energy by about 2e-5 eV/Å, the size of the forces a 0.03 Å displacement's
third-order terms produce; :func:`float64` switches matgl (and torch's default dtype) for the calculation.

A user's own model file is named ``KIND:PATH`` (``mace:/models/mace-mpa-0-medium.model``): :data:`FILE_KINDS` says
which package reads each kind and how it becomes an ASE calculator; its identity is the sha256 of the file's bytes.
A kind whose files are full pickles (MACE's ``torch.save`` of the module) runs any code the file holds when read, so
such a file is refused unless the caller trusts it (``paraisite kappa --trust-potential-file``).
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
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


@dataclass(frozen=True)
class FileKind:
    """A model-file format users name as ``KIND:PATH``.

    Attributes:
        package: The pip requirement that reads it (not a dependency of paraisite).
        module: Its import name.
        calculator: Makes a float64 ASE calculator of a (trusted) file.
        pickled: The file is a full pickle: reading it runs any code it holds.
    """

    package: str
    module: str
    calculator: Callable[[Path], Any]
    pickled: bool


def _mace_calculator(path: Path) -> Any:
    """MACE's ASE calculator of a ``torch.save``'d MACE model, in float64, on the CPU."""
    # mace (and e3nn's constants, read when it is imported) set TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD=1 for the whole
    # process, which would make every later torch.load that does not say weights_only unpickle anything: put it back
    previous = os.environ.get("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD")
    try:
        os.environ["TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD"] = "1"
        from mace.calculators import MACECalculator
    finally:
        if previous is None:
            os.environ.pop("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", None)
        else:
            os.environ["TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD"] = previous
    model = torch.load(path, map_location="cpu", weights_only=False)  # trusted by the caller (FileKind.pickled)
    if not isinstance(model, torch.nn.Module):
        raise ValueError(f"{path}: not a MACE model file (it holds a {type(model).__name__}, not a torch module)")
    return MACECalculator(models=[model], device="cpu", default_dtype="float64")


#: Model-file kinds by prefix (``mace:PATH``). An entry is a package, a loader and whether the format is a pickle.
FILE_KINDS: dict[str, FileKind] = {
    "mace": FileKind("mace-torch", "mace", _mace_calculator, pickled=True),
}


class UntrustedPotentialFileError(ValueError):
    """A pickled model file that the caller has not declared trusted."""


@dataclass(frozen=True)
class FilePotential:
    """A user's model file: ``KIND:PATH``, identified by the sha256 of its bytes."""

    kind: str
    path: Path

    @property
    def name(self) -> str:
        """``KIND:PATH`` as recorded in every result row (the path resolved)."""
        return f"{self.kind}:{self.path}"

    @cached_property
    def sha256(self) -> str:
        """sha256 of the file's bytes."""
        return registry.sha256sum(self.path)

    def check_trusted(self, trusted: bool) -> None:
        """Refuse a pickled file the caller has not trusted, before anything reads it."""
        if FILE_KINDS[self.kind].pickled and not trusted:
            raise UntrustedPotentialFileError(
                f"{self.path}: a {self.kind} model file is a pickle, and reading it runs any code it holds; pass "
                "--trust-potential-file if you trust where it came from"
            )

    def calculator(self, trusted: bool) -> Any:
        """The kind's float64 ASE calculator of the file."""
        self.check_trusted(trusted)
        return FILE_KINDS[self.kind].calculator(self.path)


def file_potential(name: str) -> FilePotential | None:
    """The checked :class:`FilePotential` of ``KIND:PATH``; ``None`` when ``name`` has no known kind prefix.

    Raises:
        ValueError: the package of the kind is missing (the message gives the pip command) or the path is not there.
    """
    kind, separator, rest = name.partition(":")
    if not separator or kind.lower() not in FILE_KINDS:
        return None
    entry = FILE_KINDS[kind.lower()]
    path = Path(rest).expanduser()
    if not path.is_file():
        raise ValueError(f"{path}: no such {kind.lower()} model file")
    if importlib.util.find_spec(entry.module) is None:
        raise ValueError(f"{name}: reading {kind.lower()} model files needs `pip install {entry.package}`")
    return FilePotential(kind.lower(), path.resolve())


def potential_entry(name: str) -> PotentialEntry | FilePotential:
    """The registered potential ``name`` (a name or an alias), or a model file ``KIND:PATH`` of :data:`FILE_KINDS`.

    Raises:
        ValueError: unknown name; the message lists the valid ones.
    """
    if name in POTENTIALS:
        return POTENTIALS[name]
    alias = ALIASES.get(name.lower())
    if alias is not None:
        return POTENTIALS[alias]
    from_file = file_potential(name)
    if from_file is not None:
        return from_file
    kinds = ", ".join(f"{kind}:PATH" for kind in FILE_KINDS)
    raise ValueError(f"unknown potential {name!r}; valid: {', '.join([*POTENTIALS, *ALIASES])}, or a file {kinds}")


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


def load_calculator(name: str, trust_file: bool = False) -> Any:
    """A float64 ASE calculator of a registered potential or a model file (a pickled kind only when ``trust_file``).

    A registered potential gives ``matgl.ext.ase.PESCalculator`` (stress in eV/Å^3); use it inside
    :func:`float64`, so that matgl's graphs are built in float64 too.
    """
    entry = potential_entry(name)
    if isinstance(entry, FilePotential):
        return entry.calculator(trust_file)
    from matgl.ext.ase import PESCalculator

    potential = entry.load(entry.name).double().eval()
    potential.calc_forces = potential.calc_stresses = True
    return PESCalculator(potential, stress_unit="eV/A3")
