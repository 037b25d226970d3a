"""TensorNet backbone and the published matgl universal potential TensorNet-MatPES-PBE-v2025.1-PES.

The backbone is the potential's network up to its per-atom representation (``forward_features(...)["readout"]``,
the input of the per-atom energy readout), averaged over the atoms of each structure: a crystal descriptor that
does not grow with the cell, like MEGNet's. The graphs are matgl's ``Structure2Graph`` radius graphs with the
potential's own cutoff (5 Å).

Convention change: matgl 4.1 sums TensorNet's embedding messages onto each edge's *source* node, the code that
trained and published the MatPES weights (matgl at the pinned commit, ``@model_version`` 1) onto its
*destination*. Loaded as they are, the weights give wrong energies (-160.31 eV instead of the published
-247.286789 eV, see ``tests/test_tensornet.py``); :func:`convert_destination_embedding` makes them exact again.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import torch
from matgl import load_model
from matgl.config import DEFAULT_ELEMENTS
from matgl.models import TensorNet
from torch import nn

from paraisite.models.megnet import attach_positions
from paraisite.models.potential import PotentialBackbone, published_matgl_dir, published_model_json

#: Published TensorNet potentials: name -> folder in the matgl repository.
PUBLISHED_TENSORNET: dict[str, str] = {
    "TensorNet-MatPES-PBE-v2025.1-PES": "pretrained_models/TensorNet-MatPES-PBE-v2025.1-PES",
}
#: ``@model_version`` of the published files that :func:`convert_destination_embedding` converts, and the
#: ``TensorNet.__version__`` of the matgl code it converts them for; any other pair is refused (unverified).
CONVERTED_VERSIONS = (1, 2)


def published_tensornet_dir(name: str) -> Path:
    """Fetch the files of a published TensorNet potential through the registry and return their folder.

    Raises:
        ValueError: ``name`` is not in :data:`PUBLISHED_TENSORNET` (the message lists the valid names).
    """
    return published_matgl_dir(name, PUBLISHED_TENSORNET)


def convert_destination_embedding(tensornet: TensorNet) -> None:
    """Convert, in place, TensorNet weights trained with destination-summed embedding messages to matgl 4.1's rule.

    The embedding's message on edge ``(i, j)`` is ``emb2([x_i, x_j])`` times radial tensors of the unit bond
    vector ``r_ij``; it was summed onto ``j``, matgl 4.1 sums it onto ``i``. Swapping the two column blocks of
    ``emb2.weight`` makes each edge compute the message of its reverse edge, except that ``r_ji = -r_ij`` flips the
    sign of the antisymmetric part: every atom's embedding becomes the transpose of the old one. This is exact for
    everything downstream because ``Structure2Graph`` always contains the reverse of every edge (same distance)
    and TensorNet is transpose-equivariant (products of transposed matrices are the transposed products in reverse
    order, and the interaction sums ``msg @ Y + Y @ msg``), while its readout uses only the norms of the scalar,
    antisymmetric and traceless parts. The swap is its own inverse.
    """
    weight = tensornet.tensor_embedding.emb2.weight
    width, remainder = divmod(weight.shape[1], 2)
    if remainder:
        raise ValueError(f"emb2 input of width {weight.shape[1]} is not [x_i, x_j]")
    with torch.no_grad():
        weight.copy_(torch.cat([weight[:, width:], weight[:, :width]], dim=1))


def load_published_tensornet(name: str) -> Any:
    """Load a published TensorNet potential, converted to matgl's current embedding rule.

    Returns:
        The matgl ``Potential`` (energies in eV, forces in eV/Å); the network is ``.model``.

    Raises:
        ValueError: the files' ``@model_version`` and this matgl's ``TensorNet.__version__`` are not
            :data:`CONVERTED_VERSIONS` (a combination whose conversion was not verified).
    """
    versions = (published_model_json(name, PUBLISHED_TENSORNET)["@model_version"], TensorNet.__version__)
    if versions != CONVERTED_VERSIONS:
        raise ValueError(
            f"{name}: @model_version {versions[0]} loaded by matgl's TensorNet version {versions[1]}; only "
            f"{CONVERTED_VERSIONS} is converted and verified against published energies"
        )
    with warnings.catch_warnings():
        # The version mismatch this warns about (the embedding rule) is what convert_destination_embedding fixes.
        warnings.filterwarnings("ignore", message="Incompatible model version", category=UserWarning)
        potential = load_model(published_tensornet_dir(name))
    convert_destination_embedding(potential.model)
    return potential


class TensorNetBackbone(PotentialBackbone):
    """TensorNet up to its per-atom representation, mean-pooled per structure: a graph -> ``[B, units]``.

    Defaults are the architecture of TensorNet-MatPES-PBE-v2025.1-PES. ``__init__`` builds random weights only;
    load published ones with :meth:`load_published`, so that a checkpoint rebuilds the module offline. The
    per-atom energy readout (``final_layer``) is left out (the LTC head replaces it). Elements are always
    ``matgl.config.DEFAULT_ELEMENTS`` (the 89 elements of MatPES), as in the graphs of
    :class:`~paraisite.data.graphs.MEGNetGraphBuilder`.
    """

    PUBLISHED = PUBLISHED_TENSORNET
    ARCH_ARGS = (
        "element_types",
        "units",
        "nblocks",
        "num_rbf",
        "max_n",
        "max_l",
        "rbf_type",
        "use_smooth",
        "activation_type",
        "cutoff",
        "equivariance_invariance_group",
        "width",
    )

    def __init__(
        self,
        *,
        units: int = 128,
        nblocks: int = 2,
        num_rbf: int = 32,
        max_n: int = 3,
        max_l: int = 3,
        rbf_type: str = "SphericalBessel",
        use_smooth: bool = True,
        activation_type: str = "swish",
        cutoff: float = 5.0,
        equivariance_invariance_group: str = "O(3)",
        width: float = 0.5,
    ) -> None:
        super().__init__()
        self.arch: dict[str, Any] = {
            "element_types": list(DEFAULT_ELEMENTS),
            "units": int(units),
            "nblocks": int(nblocks),
            "num_rbf": int(num_rbf),
            "max_n": int(max_n),
            "max_l": int(max_l),
            "rbf_type": rbf_type,
            "use_smooth": bool(use_smooth),
            "activation_type": activation_type,
            "cutoff": float(cutoff),
            "equivariance_invariance_group": equivariance_invariance_group,
            "width": float(width),
        }
        self.cutoff = float(cutoff)
        arguments = {**self.arch, "element_types": tuple(DEFAULT_ELEMENTS)}
        # use_warp=False: the same (PyG) message passing on every machine, the one the conversion was verified with
        self.tensornet = TensorNet(**arguments, is_intensive=False, use_warp=False)
        self.tensornet.final_layer = nn.Identity()  # the per-atom energy readout
        self.out_dim = int(units)

    @property
    def network(self) -> nn.Module:
        """The TensorNet network."""
        return self.tensornet

    def atom_features(self, graph: Any, lattice: torch.Tensor) -> torch.Tensor:
        """``[N, out_dim]`` per-atom representation (the input of the potential's per-atom energy readout)."""
        attach_positions(graph, lattice)
        return self.tensornet.forward_features(graph)["readout"]

    @classmethod
    def load_published_potential(cls, name: str) -> Any:
        """:func:`load_published_tensornet`."""
        return load_published_tensornet(name)
