"""What the universal-potential backbones share: a published matgl potential's per-atom representation, pooled.

A :class:`PotentialBackbone` is a matgl interatomic potential (TensorNet, M3GNet) cut before its per-atom energy
readout: the per-atom representation that readout reads, averaged over each structure's atoms (a crystal descriptor
that does not grow with the cell). A subclass defines the network (:meth:`PotentialBackbone.network`), its per-atom
features, :data:`PotentialBackbone.PUBLISHED` and how a published potential is loaded and converted
(:meth:`PotentialBackbone.load_published_potential`); fetching, the architecture check and the weight copy are here.
"""

from __future__ import annotations

import json
import logging
from abc import abstractmethod
from pathlib import Path
from typing import Any, ClassVar

import torch
from torch import nn
from torch_geometric.nn import global_mean_pool

from paraisite.models.architecture import check_same_architecture
from paraisite.models.backbone import Backbone
from paraisite.models.megnet import fetch_matgl_model

logger = logging.getLogger(__name__)


def published_matgl_dir(name: str, published: dict[str, str]) -> Path:
    """Fetch the files of published matgl model ``name`` (``published``: name -> folder in the matgl repository).

    Raises:
        ValueError: ``name`` is not in ``published`` (the message lists the valid names).
    """
    if name not in published:
        raise ValueError(f"unknown published model {name!r}; valid names: {', '.join(published)}")
    return fetch_matgl_model(published[name])


def published_model_json(name: str, published: dict[str, str]) -> dict[str, Any]:
    """The ``model`` entry of a published matgl model's ``model.json`` (``@model_version``, ``init_args``)."""
    return json.loads((published_matgl_dir(name, published) / "model.json").read_text())["kwargs"]["model"]


class PotentialBackbone(Backbone):
    """A matgl potential up to its per-atom representation, mean-pooled per structure: graph -> ``[B, out_dim]``.

    ``__init__`` of a subclass builds random weights only and sets ``arch`` (the constructor arguments named in
    :data:`ARCH_ARGS`, as in the published ``model.json``); :meth:`load_published` copies published ones, so that a
    checkpoint rebuilds the module offline.
    """

    graph_fields = ("node_type", "frac_coords", "pbc_offset", "edge_index")
    #: Published potentials: name -> folder in the matgl repository.
    PUBLISHED: ClassVar[dict[str, str]] = {}
    #: Constructor arguments that define the architecture (what must match a published model).
    ARCH_ARGS: ClassVar[tuple[str, ...]] = ()
    arch: dict[str, Any]

    @property
    @abstractmethod
    def network(self) -> nn.Module:
        """The matgl network (its ``final_layer``, the per-atom energy readout, replaced)."""

    @abstractmethod
    def atom_features(self, graph: Any, lattice: torch.Tensor) -> torch.Tensor:
        """``[N, out_dim]`` per-atom representation (the input of the potential's per-atom energy readout)."""

    @classmethod
    @abstractmethod
    def load_published_potential(cls, name: str) -> Any:
        """The published matgl ``Potential`` ``name``, converted to this matgl's conventions (refused if unverified)."""

    def forward(self, graph: Any, lattice: torch.Tensor, state_attr: torch.Tensor) -> torch.Tensor:
        """Mean over each structure's atoms of :meth:`atom_features`: ``[B, out_dim]``; ``state_attr`` is unused."""
        index = getattr(graph, "batch", None)
        if index is None:
            index = torch.zeros(graph.num_nodes, dtype=torch.long, device=graph.frac_coords.device)
        size = lattice.shape[0] if lattice.dim() == 3 else 1
        return global_mean_pool(self.atom_features(graph, lattice), index, size=size)

    @classmethod
    def published_names(cls) -> tuple[str, ...]:
        """Names accepted by :meth:`load_published` (``model.backbone.pretrained``)."""
        return tuple(cls.PUBLISHED)

    def load_published(self, name: str) -> None:
        """Copy every tensor of a published potential (converted) except its per-atom energy readout.

        Raises:
            ValueError: unknown ``name`` (the message lists the valid names), or this backbone's architecture
                differs from the published one.
            RuntimeError: tensors are missing, unexpected or of another shape (from ``load_state_dict``).
        """
        published_args = published_model_json(name, self.PUBLISHED)["init_args"]
        check_same_architecture(type(self).__name__, name, self.arch, published_args, self.ARCH_ARGS)
        published = self.load_published_potential(name).model
        state = {key: value for key, value in published.state_dict().items() if not key.startswith("final_layer.")}
        self.network.load_state_dict(state, strict=True)
        logger.info("Loaded %d tensors of %s into %s (no energy readout).", len(state), name, type(self).__name__)
