"""MEGNet backbone and the published matgl MEGNet models, converted to matgl's current edge convention.

matgl >= 3 averages MEGNet edge messages onto each edge's *source* node, matgl <= 2.2 (DGL) onto its
*destination*. The published weights were trained under the old rule: they load without complaint and
give wrong numbers. :func:`convert_dgl_edge_messages` makes them exact again (see its docstring), and
:func:`load_published_megnet` applies it once after loading.
"""

from __future__ import annotations

import json
import logging
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any, cast

import torch
from matgl import load_model
from matgl.config import DEFAULT_ELEMENTS
from matgl.data.transformer import Normalizer
from matgl.models import MEGNet
from torch import nn

from paraisite.data import registry
from paraisite.models.architecture import check_same_architecture
from paraisite.models.backbone import Backbone

logger = logging.getLogger(__name__)

MATGL_REPO = "materialsvirtuallab/matgl"
#: Published MEGNet models: name -> folder in the matgl repository.
PUBLISHED_MEGNET: dict[str, str] = {
    "MEGNet-MP-2018.6.1-Eform": "pretrained_models/MEGNet-MP-2018.6.1-Eform",
    "MEGNet-MP-2019.4.1-BandGap-mfi": "pretrained_models/MEGNet-MP-2019.4.1-BandGap-mfi",
}
MODEL_FILES = ("model.json", "model.pt", "state.pt")


def published_megnet_dir(name: str) -> Path:
    """Fetch the files of a published MEGNet model through the registry and return their folder.

    Raises:
        KeyError: ``name`` is not in :data:`PUBLISHED_MEGNET`.
    """
    if name not in PUBLISHED_MEGNET:
        raise KeyError(f"unknown published MEGNet {name!r}; valid names: {', '.join(PUBLISHED_MEGNET)}")
    return fetch_matgl_model(PUBLISHED_MEGNET[name])


def fetch_matgl_model(folder: str) -> Path:
    """Fetch the files (:data:`MODEL_FILES`) of a model folder of the matgl repository; return their local folder."""
    (local,) = {registry.fetch(MATGL_REPO, f"{folder}/{file}").parent for file in MODEL_FILES}
    return local


def published_megnet_arch(name: str) -> dict[str, Any]:
    """The :class:`MEGNetBackbone` constructor arguments that rebuild a published model's architecture."""
    model_json = json.loads((published_megnet_dir(name) / "model.json").read_text())
    init_args = model_json["kwargs"]["model"]["init_args"]
    return {key: init_args[key] for key in MEGNetBackbone.ARCH_ARGS}


def convert_dgl_edge_messages(megnet: MEGNet) -> None:
    """Convert, in place, MEGNet weights trained under the DGL edge rule to matgl's current one.

    The first Linear of each block's ``conv.edge_func`` reads ``[v_src, v_dst, e, u]``; swapping the
    ``v_src`` and ``v_dst`` column blocks of its weight makes every edge compute the message of its
    reverse edge, so averaging onto sources equals the old averaging onto destinations. This is exact
    because ``Structure2Graph`` always contains the reverse of every edge (with the same distance), and
    everything downstream of the edges (set2set, means) is invariant to relabelling them. The swap is its
    own inverse: applying it twice restores the unconverted weights.
    """
    for block in megnet.blocks:
        first_linear = next(m for m in block.conv.edge_func.modules() if isinstance(m, nn.Linear))
        width, remainder = divmod(first_linear.in_features, 4)
        if remainder:
            raise ValueError(f"edge_func input of width {first_linear.in_features} is not [v_src, v_dst, e, u]")
        with torch.no_grad():
            weight = first_linear.weight
            weight.copy_(torch.cat([weight[:, width : 2 * width], weight[:, :width], weight[:, 2 * width :]], dim=1))


def load_published_megnet(name: str) -> Any:
    """Load a published MEGNet, converted to the current edge rule.

    Returns:
        The matgl ``TransformedTargetModel``: the inner MEGNet is ``.model``, the target normaliser
        ``.transformer``; ``predict_structure`` gives the published predictions.
    """
    folder = published_megnet_dir(name)
    torch.serialization.add_safe_globals([Normalizer])
    with warnings.catch_warnings():
        # The nested MEGNet in model.pt carries no @model_version; the incompatibility this warns about
        # (the edge rule) is exactly what convert_dgl_edge_messages fixes below.
        warnings.filterwarnings("ignore", message="Incompatible model version", category=UserWarning)
        model = load_model(folder)
    convert_dgl_edge_messages(model.model)
    return model


def attach_positions(g: Any, lat: torch.Tensor) -> Any:
    """Set Cartesian ``g.pos`` and ``g.pbc_offshift`` from fractional coordinates and lattices, as matgl's training.

    Args:
        g: PyG graph or batch from ``Structure2Graph`` (``frac_coords``, ``pbc_offset``, ``edge_index``).
        lat: Lattice matrices, ``(3, 3)`` or ``(1, 3, 3)`` for one graph, ``(B, 3, 3)`` for a batch.

    Returns:
        ``g``, modified in place.
    """
    if lat.dim() == 2:
        lat = lat.unsqueeze(0)
    batch = getattr(g, "batch", None)
    if batch is None:
        batch = torch.zeros(g.num_nodes, dtype=torch.long, device=g.frac_coords.device)
    g.pos = (g.frac_coords.unsqueeze(dim=-1) * lat[batch]).sum(dim=1)
    g.pbc_offshift = (g.pbc_offset.unsqueeze(dim=-1) * lat[batch[g.edge_index[0]]]).sum(dim=1)
    return g


class MEGNetBackbone(Backbone):
    """MEGNet up to its penultimate layer: a structure graph -> ``out_dim`` features per structure.

    Defaults are the published MEGNet architecture. ``__init__`` builds random weights only; load
    published ones with :meth:`load_published`, so that a checkpoint can rebuild the module offline.
    Arguments are those of ``matgl.models.MEGNet`` (keyword only); all but ``dropout`` define the
    architecture, kept in ``arch``. Elements are always ``matgl.config.DEFAULT_ELEMENTS``.
    """

    graph_fields = ("node_type", "frac_coords", "pbc_offset", "edge_index")
    stackable = True
    reads_state = True
    #: Constructor arguments that define the architecture (what must match a published model).
    ARCH_ARGS = (
        "dim_node_embedding",
        "dim_edge_embedding",
        "dim_state_embedding",
        "ntypes_state",
        "nblocks",
        "hidden_layer_sizes_input",
        "hidden_layer_sizes_conv",
        "hidden_layer_sizes_output",
        "nlayers_set2set",
        "niters_set2set",
        "activation_type",
        "cutoff",
        "gauss_width",
    )

    def __init__(
        self,
        *,
        dim_node_embedding: int = 16,
        dim_edge_embedding: int = 100,
        dim_state_embedding: int = 2,
        ntypes_state: int | None = None,
        nblocks: int = 3,
        hidden_layer_sizes_input: Sequence[int] = (64, 32),
        hidden_layer_sizes_conv: Sequence[int] = (64, 64, 32),
        hidden_layer_sizes_output: Sequence[int] = (32, 16),
        nlayers_set2set: int = 1,
        niters_set2set: int = 2,
        activation_type: str = "softplus2",
        cutoff: float = 4.0,
        gauss_width: float = 0.5,
        dropout: float = 0.0,
    ):
        super().__init__()
        self.arch: dict[str, Any] = {
            "dim_node_embedding": dim_node_embedding,
            "dim_edge_embedding": dim_edge_embedding,
            "dim_state_embedding": dim_state_embedding,
            "ntypes_state": ntypes_state,
            "nblocks": nblocks,
            "hidden_layer_sizes_input": [int(size) for size in hidden_layer_sizes_input],
            "hidden_layer_sizes_conv": [int(size) for size in hidden_layer_sizes_conv],
            "hidden_layer_sizes_output": [int(size) for size in hidden_layer_sizes_output],
            "nlayers_set2set": nlayers_set2set,
            "niters_set2set": niters_set2set,
            "activation_type": activation_type,
            "cutoff": float(cutoff),
            "gauss_width": float(gauss_width),
        }
        self.element_types = DEFAULT_ELEMENTS
        self.cutoff = float(cutoff)
        sizes = {key: tuple(value) for key, value in self.arch.items() if key.startswith("hidden_layer_sizes")}
        self.megnet = MEGNet(**{**self.arch, **sizes}, element_types=self.element_types, dropout=dropout)
        final_linear = self.megnet.output_proj.last_linear
        self.out_dim = final_linear.in_features
        self.megnet.output_proj.layers[-1] = nn.Identity()

    def forward(self, g: Any, lat: torch.Tensor, state_attr: torch.Tensor) -> torch.Tensor:
        """Features ``(B, out_dim)`` of a batch from ``collate_fn_graph`` (also for B = 1)."""
        attach_positions(g, lat)
        return self.megnet(g, state_attr=state_attr).reshape(-1, self.out_dim)

    @classmethod
    def stack(cls, members: Sequence[Backbone]) -> nn.Module:
        """The members as one module computing all of them at once (ensemble training)."""
        from paraisite.models.megnet_stacked import StackedMEGNet

        return StackedMEGNet([cast(MEGNetBackbone, member) for member in members])

    @classmethod
    def published_names(cls) -> tuple[str, ...]:
        """Names accepted by :meth:`load_published` (``model.backbone.pretrained``)."""
        return tuple(PUBLISHED_MEGNET)

    def load_published(self, name: str) -> None:
        """Copy every tensor of a published MEGNet (converted) except its final Linear into this backbone.

        Raises:
            ValueError: This backbone's architecture differs from the published one.
            RuntimeError: Tensors are missing, unexpected or of another shape (from ``load_state_dict``).
        """
        check_same_architecture("MEGNetBackbone", name, self.arch, published_megnet_arch(name), self.ARCH_ARGS)
        published = load_published_megnet(name).model
        skipped = _module_name(published, published.output_proj.last_linear) + "."
        state = {key: value for key, value in published.state_dict().items() if not key.startswith(skipped)}
        self.megnet.load_state_dict(state, strict=True)
        logger.info("Loaded %d tensors of %s into MEGNetBackbone (left out its final Linear).", len(state), name)


def _module_name(root: nn.Module, module: nn.Module) -> str:
    """Dotted name of ``module`` inside ``root``."""
    return next(name for name, candidate in root.named_modules() if candidate is module)
