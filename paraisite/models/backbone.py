"""The backbone contract: what the LTC module, the trainer and the tests may rely on.

A backbone is one module plus one config file in ``conf/model/backbone/`` with three keys: ``net`` (the
``_target_`` and arguments of a :class:`Backbone` subclass; the architecture only, built offline),
``graph`` (the ``_target_`` and arguments of the graph builder whose graphs it reads) and ``pretrained``
(one of :meth:`Backbone.published_names`, or null).

A backbone provides:

- ``forward(graph, lattice, state_attr) -> [B, out_dim]`` features of a batch from matgl's
  ``collate_fn_graph`` (``lattice`` ``[B, 3, 3]``, ``state_attr`` ``[B, S]``);
- ``out_dim``, the width of those features (the head's ``in_dim``);
- :attr:`Backbone.graph_fields`, the attributes it reads from each graph (the graph builder must set them;
  ``tests/test_backbones.py`` checks every config);
- optional capabilities, declared by overriding, never detected with ``hasattr``:
  :meth:`Backbone.published_names` (empty: no published weights) with :meth:`Backbone.load_published`,
  and :attr:`Backbone.stackable` with :meth:`Backbone.stack` (ensemble members computed as one module).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, ClassVar

import torch
from hydra.utils import get_class
from torch import nn


class Backbone(nn.Module):
    """Base class of every backbone (see the module docstring for the contract)."""

    #: Width of the features ``forward`` returns; set in ``__init__``.
    out_dim: int
    #: Graph attributes ``forward`` reads (set by the backbone's graph builder, batched by ``collate_fn_graph``).
    graph_fields: ClassVar[tuple[str, ...]] = ()
    #: Whether :meth:`stack` computes several members of this class as one module.
    stackable: ClassVar[bool] = False
    #: Whether ``forward`` reads the global state (``state_attr``): what a multi-fidelity dataset sets per fidelity.
    reads_state: ClassVar[bool] = False

    def forward(self, graph: Any, lattice: torch.Tensor, state_attr: torch.Tensor) -> torch.Tensor:
        """Features ``[B, out_dim]`` of a batch (also for B = 1)."""
        raise NotImplementedError

    @classmethod
    def published_names(cls) -> tuple[str, ...]:
        """Names accepted by :meth:`load_published` (``model.backbone.pretrained``); empty: none."""
        return ()

    def load_published(self, name: str) -> None:
        """Copy the published weights ``name`` into this backbone (strictly; the architecture must match).

        Raises:
            ValueError: ``name`` is not one of :meth:`published_names` (the message lists them).
        """
        valid = ", ".join(self.published_names()) or "none"
        raise ValueError(f"{type(self).__name__} has no published weights {name!r}; valid: {valid}")

    @classmethod
    def stack(cls, members: Sequence[Backbone]) -> nn.Module:
        """The members as one module computing all of them at once: ``StackedGraphs`` -> ``[M, B, out_dim]``.

        Raises:
            TypeError: this backbone is not :attr:`stackable`.
        """
        raise TypeError(f"{cls.__name__} has no stacked form; train its seeds one by one (seed=...)")


def backbone_class(target: str) -> type[Backbone]:
    """The :class:`Backbone` subclass named by a config's ``_target_``.

    Raises:
        TypeError: ``target`` is not a :class:`Backbone` subclass.
    """
    cls = get_class(target)
    if not (isinstance(cls, type) and issubclass(cls, Backbone)):
        raise TypeError(f"{target} is not a paraisite.models.backbone.Backbone subclass")
    return cls
