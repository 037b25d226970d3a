"""M3GNet backbone and the published matgl universal potential M3GNet-MatPES-PBE-v2025.1-PES.

The backbone is the potential's network up to its per-atom representation (the node features after the last
block, the input of the per-atom energy readout), averaged over the atoms of each structure, like TensorNet's.
The graphs are matgl's ``Structure2Graph`` radius graphs with the potential's own 5 Å cutoff; the three-body line
graph (bonds within the 4 Å three-body cutoff, ``net.threebody_cutoff``) is built by matgl's M3GNet from each
batch's radius graph in the forward pass, as matgl's own ``Potential`` does.

Convention change: matgl 4.1 sums M3GNet's node-update messages onto each edge's *source* node; the DGL code that
trained and published these weights (matgl <= 1.x, e.g. 1.2.1) sums them onto its *destination*. Loaded as they are,
the weights give wrong energies for any crystal with inequivalent atoms (rock-salt NaCl, 8 atoms: -19.62 eV
instead of -26.95 eV; SiO2: -3.97 instead of -7.89 eV/atom); :func:`convert_destination_messages` fixes the two-body
message passing exactly. The three-body term cannot be converted by weights (see the function), but this model's
trained three-body gates are nearly closed: the residual against the DGL code is at most 1.4e-4 eV/atom on the
structures of ``tests/test_m3gnet.py`` (measurements: ``experiments/backbones-quick/m3gnet.md``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matgl
import torch
from matgl import load_model
from matgl.config import DEFAULT_ELEMENTS
from matgl.models import M3GNet
from torch import nn

from paraisite.models.megnet import attach_positions
from paraisite.models.potential import PotentialBackbone, published_matgl_dir, published_model_json

#: Published M3GNet potentials: name -> folder in the matgl repository.
PUBLISHED_M3GNET: dict[str, str] = {
    "M3GNet-MatPES-PBE-v2025.1-PES": "pretrained_models/M3GNet-MatPES-PBE-v2025.1-PES",
}
#: ``@model_version`` of the published files, ``M3GNet.__version__`` and matgl's major version for which
#: :func:`convert_destination_messages` was verified (against matgl 1.2.1's DGL code); others are refused.
CONVERTED_VERSIONS = (2, 2, "4")


def published_m3gnet_dir(name: str) -> Path:
    """Fetch the files of a published M3GNet potential through the registry and return their folder.

    Raises:
        ValueError: ``name`` is not in :data:`PUBLISHED_M3GNET` (the message lists the valid names).
    """
    return published_matgl_dir(name, PUBLISHED_M3GNET)


def convert_destination_messages(m3gnet: M3GNet) -> None:
    """Convert, in place, M3GNet weights trained with destination-summed node messages to matgl 4.1's rule.

    Each block's edge update and node message read ``[v_i, v_j, e_ij]`` for edge ``(i, j)``; the node messages were
    summed onto ``j``, matgl 4.1 sums them onto ``i``. Swapping the ``v_i`` and ``v_j`` column blocks of the first
    layer (value and gate) of both ``edge_update_func`` and ``node_update_func`` makes every edge carry the features
    of its reverse edge, so summing onto sources equals the old summing onto destinations. This is exact for the
    two-body message passing because ``Structure2Graph`` always contains the reverse of every edge (same distance,
    hence the same radial weights). It is not for the three-body bond update, which matgl 4.1 centres on each bond's
    source atom (as before), so the converted bond ``(i, j)`` gets the three-body sum around ``i`` where the
    published model had the one around ``j``; the DGL code also indexed the full bond list with ids of the bonds
    within the three-body cutoff. No weight change reproduces either; this model's three-body updates are about 1e-4
    of its edge features, and the energies differ from the DGL code's by at most 1.4e-4 eV/atom where measured.
    The swap is its own inverse.
    """
    width = m3gnet.embedding.layer_node_embedding.weight.shape[1]
    with torch.no_grad():
        for block in m3gnet.graph_layers:
            for function in (block.conv.edge_update_func, block.conv.node_update_func):
                for linear in (function.layers[0], function.gates[0]):
                    weight = linear.weight
                    if weight.shape[1] < 2 * width:
                        raise ValueError(f"first layer of width {weight.shape[1]} is not [v_i, v_j, e_ij]")
                    swapped = [weight[:, width : 2 * width], weight[:, :width], weight[:, 2 * width :]]
                    weight.copy_(torch.cat(swapped, dim=1))


def load_published_m3gnet(name: str) -> Any:
    """Load a published M3GNet potential, converted to matgl's current node-message rule.

    Returns:
        The matgl ``Potential`` (energies in eV, forces in eV/Å); the network is ``.model``.

    Raises:
        ValueError: the files' ``@model_version``, this matgl's ``M3GNet.__version__`` and major version are not
            :data:`CONVERTED_VERSIONS` (a combination whose conversion was not verified).
    """
    model_version = published_model_json(name, PUBLISHED_M3GNET)["@model_version"]
    versions = (model_version, M3GNet.__version__, matgl.__version__.split(".")[0])
    if versions != CONVERTED_VERSIONS:
        raise ValueError(
            f"{name}: @model_version {versions[0]} loaded by M3GNet version {versions[1]} of matgl {versions[2]}.x; "
            f"only {CONVERTED_VERSIONS} is converted and verified"
        )
    potential = load_model(published_m3gnet_dir(name))
    convert_destination_messages(potential.model)
    return potential


class _NoReadout(nn.Module):
    """Stands in for the per-atom energy readout: zero energy per atom, no parameters."""

    def forward(self, node_feat: torch.Tensor) -> torch.Tensor:
        return node_feat.new_zeros((node_feat.shape[0], 1))


class M3GNetBackbone(PotentialBackbone):
    """M3GNet up to its per-atom representation, mean-pooled per structure: a graph -> ``[B, dim_node_embedding]``.

    Defaults are the architecture of M3GNet-MatPES-PBE-v2025.1-PES. ``__init__`` builds random weights only; load
    published ones with :meth:`load_published`, so that a checkpoint rebuilds the module offline. The per-atom
    energy readout (``final_layer``) is left out (the LTC head replaces it). Elements are always
    ``matgl.config.DEFAULT_ELEMENTS`` (the 89 elements of MatPES), as in the graphs of
    :class:`~paraisite.data.graphs.MEGNetGraphBuilder`.
    """

    PUBLISHED = PUBLISHED_M3GNET
    ARCH_ARGS = (
        "element_types",
        "dim_node_embedding",
        "dim_edge_embedding",
        "units",
        "max_n",
        "max_l",
        "nblocks",
        "rbf_type",
        "use_smooth",
        "use_phi",
        "activation_type",
        "cutoff",
        "threebody_cutoff",
    )

    def __init__(
        self,
        *,
        dim_node_embedding: int = 64,
        dim_edge_embedding: int = 64,
        units: int = 128,
        max_n: int = 3,
        max_l: int = 3,
        nblocks: int = 3,
        rbf_type: str = "SphericalBessel",
        use_smooth: bool = True,
        use_phi: bool = False,
        activation_type: str = "swish",
        cutoff: float = 5.0,
        threebody_cutoff: float = 4.0,
    ) -> None:
        super().__init__()
        self.arch: dict[str, Any] = {
            "element_types": list(DEFAULT_ELEMENTS),
            "dim_node_embedding": int(dim_node_embedding),
            "dim_edge_embedding": int(dim_edge_embedding),
            "units": int(units),
            "max_n": int(max_n),
            "max_l": int(max_l),
            "nblocks": int(nblocks),
            "rbf_type": rbf_type,
            "use_smooth": bool(use_smooth),
            "use_phi": bool(use_phi),
            "activation_type": activation_type,
            "cutoff": float(cutoff),
            "threebody_cutoff": float(threebody_cutoff),
        }
        self.cutoff = float(cutoff)
        arguments = {**self.arch, "element_types": tuple(DEFAULT_ELEMENTS)}
        self.m3gnet = M3GNet(**arguments, is_intensive=False)
        self.m3gnet.final_layer = _NoReadout()  # the per-atom energy readout
        self.out_dim = int(dim_node_embedding)

    @property
    def network(self) -> nn.Module:
        """The M3GNet network."""
        return self.m3gnet

    def atom_features(self, graph: Any, lattice: torch.Tensor) -> torch.Tensor:
        """``[N, out_dim]`` per-atom representation (the input of the potential's per-atom energy readout)."""
        attach_positions(graph, lattice)
        self.m3gnet(graph)
        return self.m3gnet.feature_dict[f"gc_{self.arch['nblocks']}"]["node_feat"]

    @classmethod
    def load_published_potential(cls, name: str) -> Any:
        """:func:`load_published_m3gnet`."""
        return load_published_m3gnet(name)
