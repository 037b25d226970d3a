"""CGCNN (Xie & Grossman, PRL 120, 145301, 2018) in PyTorch Geometric, and the 8 original pretrained models.

:class:`CGCNN` keeps the parameter names of the original ``CrystalGraphConvNet`` so that the checkpoints of
``txie-93/cgcnn/pre-trained`` load strictly; it reproduces the original ``predict.py`` (see ``tests/test_cgcnn.py``).
Inputs are the graphs of :mod:`paraisite.data.cgcnn_graph` (one ``Data`` or a PyG ``Batch``).
:class:`CGCNNBackbone` is the trainable LTC backbone (``model/backbone=cgcnn_scratch`` / ``cgcnn_pretrained``).
"""

from __future__ import annotations

import builtins
import logging
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from pymatgen.core import Structure
from torch import nn
from torch.nn import functional
from torch_geometric.data import Batch, Data
from torch_geometric.nn import global_mean_pool

from paraisite.data import registry
from paraisite.data.cgcnn_graph import (
    CGCNN_REPO,
    DEFAULT_MAX_NUM_NEIGHBORS,
    DEFAULT_RADIUS,
    CGCNNFeaturizer,
    load_atom_init_table,
)
from paraisite.models.architecture import check_same_architecture
from paraisite.models.backbone import Backbone

logger = logging.getLogger(__name__)

#: Gaussian basis of the original data pipeline: centres ``dmin, dmin + step, ..., radius``, width ``step``.
DEFAULT_GAUSSIAN_STEP = 0.2
DEFAULT_GAUSSIAN_DMIN = 0.0


class GaussianDistance(nn.Module):
    """Expands distances on Gaussians ``exp(-(d - c_k)^2 / width^2)`` with centres ``c_k = dmin + k * step``."""

    centres: torch.Tensor

    def __init__(self, dmin: float, dmax: float, step: float) -> None:
        """Centres from ``dmin`` to ``dmax`` included, spaced and wide ``step`` (as in the original)."""
        super().__init__()
        num_centres = round((dmax - dmin) / step) + 1
        centres = torch.linspace(dmin, dmin + step * (num_centres - 1), num_centres)
        self.register_buffer("centres", centres, persistent=False)
        self.width = step

    def forward(self, distances: torch.Tensor) -> torch.Tensor:
        """``[E]`` distances -> ``[E, num_centres]`` features."""
        return torch.exp(-((distances.unsqueeze(-1) - self.centres) ** 2) / self.width**2)


class CGCNNConv(nn.Module):
    """One CGCNN convolution: gated messages from neighbours, summed, batch-normalised, residual, softplus."""

    def __init__(self, atom_fea_len: int, nbr_fea_len: int) -> None:
        """Layers named as in the original ``ConvLayer`` (``fc_full``, ``bn1``, ``bn2``)."""
        super().__init__()
        self.fc_full = nn.Linear(2 * atom_fea_len + nbr_fea_len, 2 * atom_fea_len)
        self.bn1 = nn.BatchNorm1d(2 * atom_fea_len)
        self.bn2 = nn.BatchNorm1d(atom_fea_len)

    def forward(self, atom_fea: torch.Tensor, bond_fea: torch.Tensor, edge_index: torch.Tensor) -> torch.Tensor:
        """New atom features ``[N, F]`` from atom ``[N, F]``, bond ``[E, nbr_fea_len]`` and edge ``[2, E]`` tensors.

        ``edge_index`` rows are (neighbour, centre): messages flow from row 0 to row 1.
        """
        neighbour, centre = edge_index
        # fc_full([x_centre, x_neighbour, bond]) computed as per-atom projections gathered per edge (fewer FLOPs)
        width = atom_fea.shape[1]
        weight = self.fc_full.weight
        centre_part = functional.linear(atom_fea, weight[:, :width])
        neighbour_part = functional.linear(atom_fea, weight[:, width : 2 * width])
        bond_part = functional.linear(bond_fea, weight[:, 2 * width :], self.fc_full.bias)
        gated = self.bn1(centre_part[centre] + neighbour_part[neighbour] + bond_part)
        gate, core = gated.chunk(2, dim=1)
        messages = torch.sigmoid(gate) * functional.softplus(core)
        summed = torch.zeros_like(atom_fea).index_add_(0, centre, messages)
        return functional.softplus(atom_fea + self.bn2(summed))


class CGCNN(nn.Module):
    """Crystal graph convolutional network; constructor arguments as the checkpoints' ``args``.

    Parameter names match the original ``CrystalGraphConvNet`` (``embedding``, ``convs.i.{fc_full,bn1,bn2}``,
    ``conv_to_fc``, ``fcs.i``, ``fc_out``). The element table (``atom_init.json``) and the Gaussian centres are
    non-persistent buffers, so they are not part of the state dict.
    """

    atom_init_table: torch.Tensor

    def __init__(
        self,
        orig_atom_fea_len: int = 92,
        nbr_fea_len: int = 41,
        atom_fea_len: int = 64,
        n_conv: int = 3,
        h_fea_len: int = 128,
        n_h: int = 1,
        classification: bool = False,
        *,
        atom_init_table: torch.Tensor | None = None,
        radius: float = DEFAULT_RADIUS,
        gaussian_step: float = DEFAULT_GAUSSIAN_STEP,
        gaussian_dmin: float = DEFAULT_GAUSSIAN_DMIN,
    ) -> None:
        """Build the network.

        Args:
            orig_atom_fea_len: length of the element vectors (92 for ``atom_init.json``).
            nbr_fea_len: number of Gaussians (41 for 0..8 Å by 0.2 Å).
            atom_fea_len: hidden atom features in the convolutions.
            n_conv: number of convolutions.
            h_fea_len: crystal features after pooling (the length of :meth:`features`).
            n_h: hidden layers after pooling (``conv_to_fc`` and ``n_h - 1`` more).
            classification: two-class log-probabilities (with dropout before the hidden layers) instead of one value.
            atom_init_table: ``[max_Z + 1, orig_atom_fea_len]`` element table; default: the original
                ``atom_init.json`` through the registry.
            radius: largest Gaussian centre (the neighbour cutoff of the graphs).
            gaussian_step: spacing and width of the Gaussians.
            gaussian_dmin: first Gaussian centre.
        """
        super().__init__()
        table = atom_init_table if atom_init_table is not None else load_atom_init_table()
        if table.shape[1] != orig_atom_fea_len:
            raise ValueError(f"atom_init table has {table.shape[1]} features, orig_atom_fea_len is {orig_atom_fea_len}")
        self.register_buffer("atom_init_table", table.to(torch.float32), persistent=False)
        self.gaussian = GaussianDistance(gaussian_dmin, radius, gaussian_step)
        if self.gaussian.centres.numel() != nbr_fea_len:
            raise ValueError(
                f"{self.gaussian.centres.numel()} Gaussians from dmin={gaussian_dmin}, radius={radius}, "
                f"step={gaussian_step}, but nbr_fea_len is {nbr_fea_len}"
            )
        self.classification = classification
        self.embedding = nn.Linear(orig_atom_fea_len, atom_fea_len)
        self.convs = nn.ModuleList([CGCNNConv(atom_fea_len, nbr_fea_len) for _ in range(n_conv)])
        self.conv_to_fc = nn.Linear(atom_fea_len, h_fea_len)
        self.fcs = nn.ModuleList([nn.Linear(h_fea_len, h_fea_len) for _ in range(n_h - 1)])
        self.dropout = nn.Dropout(p=0.5)
        self.fc_out: nn.Module = nn.Linear(h_fea_len, 2 if classification else 1)

    @classmethod
    def from_checkpoint_args(cls, args: Mapping[str, Any], atom_init_table: torch.Tensor | None = None) -> CGCNN:
        """The network described by a checkpoint's ``args`` dict (``atom_fea_len``, ``n_conv``, ``task``, ...)."""
        return cls(
            atom_fea_len=args["atom_fea_len"],
            n_conv=args["n_conv"],
            h_fea_len=args["h_fea_len"],
            n_h=args["n_h"],
            classification=args["task"] == "classification",
            atom_init_table=atom_init_table,
        )

    def atom_features(self, batch: Data) -> torch.Tensor:
        """``[N, atom_fea_len]`` atom features after the embedding and the ``n_conv`` convolutions."""
        atom_fea = self.embedding(self.atom_init_table[batch.atomic_numbers])
        bond_fea = self.gaussian(batch.edge_dist)
        for conv in self.convs:
            atom_fea = conv(atom_fea, bond_fea, batch.edge_index)
        return atom_fea

    def features(self, batch: Data) -> torch.Tensor:
        """``[B, h_fea_len]`` crystal features: the input of ``fc_out``.

        That is ``softplus(conv_to_fc(softplus(mean over atoms of atom_features)))``, then (classification only)
        dropout, then the ``n_h - 1`` layers ``softplus(fcs[i](.))``; ``forward`` is ``fc_out`` of it.
        """
        graph_index = batch.batch
        if graph_index is None:  # a single Data, not a Batch
            graph_index = torch.zeros(batch.num_nodes, dtype=torch.long, device=batch.atomic_numbers.device)
            num_graphs = 1
        else:
            num_graphs = batch.num_graphs
        crystal = global_mean_pool(self.atom_features(batch), graph_index, size=num_graphs)
        crystal = functional.softplus(self.conv_to_fc(functional.softplus(crystal)))
        if self.classification:
            crystal = self.dropout(crystal)
        for fc in self.fcs:
            crystal = functional.softplus(fc(crystal))
        return crystal

    def forward(self, batch: Data) -> torch.Tensor:
        """Regression: ``[B]`` outputs in the normalised space; classification: ``[B, 2]`` log-probabilities."""
        out = self.fc_out(self.features(batch))
        return functional.log_softmax(out, dim=1) if self.classification else out.squeeze(-1)


@dataclass(frozen=True)
class CGCNNModelInfo:
    """What a pretrained model predicts.

    ``log10`` models output ``log10(value / units)``; classification outputs are probabilities of ``units``.
    """

    name: str
    property: str
    units: str
    log10: bool
    task: Literal["regression", "classification"]

    @builtins.property  # the field ``property`` shadows the builtin in this class body
    def output_units(self) -> str:
        """Units of what :meth:`CGCNNPretrained.predict_structures` returns."""
        return f"log10({self.units})" if self.log10 else self.units


#: The 8 models of ``txie-93/cgcnn/pre-trained`` (all trained on Materials Project data, Jain et al. 2013).
CGCNN_MODELS: dict[str, CGCNNModelInfo] = {
    info.name: info
    for info in (
        CGCNNModelInfo("formation-energy-per-atom", "formation energy", "eV/atom", False, "regression"),
        CGCNNModelInfo("final-energy-per-atom", "absolute (DFT total) energy", "eV/atom", False, "regression"),
        CGCNNModelInfo("band-gap", "band gap", "eV", False, "regression"),
        # the upstream README writes eV/atom; a Fermi energy is an energy level, in eV
        CGCNNModelInfo("efermi", "Fermi energy", "eV", False, "regression"),
        CGCNNModelInfo("bulk-moduli", "bulk modulus (VRH)", "GPa", True, "regression"),
        CGCNNModelInfo("shear-moduli", "shear modulus (VRH)", "GPa", True, "regression"),
        CGCNNModelInfo("poisson-ratio", "Poisson ratio", "dimensionless", False, "regression"),
        CGCNNModelInfo("semi-metal-classification", "metal vs semiconductor", "P(metal)", False, "classification"),
    )
}
#: Class index of "metal" in ``semi-metal-classification`` (the README: "metal (1) or semiconductors (0)";
#: ``predict.py`` writes ``exp(output)[:, 1]``).
METAL_CLASS_INDEX = 1


def _numpy_safe_globals() -> list[Any]:
    """The numpy globals of ``semi-metal-classification.pth.tar`` (``best_mae_error`` is a ``numpy.float64``)."""
    try:
        from numpy._core.multiarray import scalar  # numpy >= 2
    except ImportError:  # numpy 1.x
        from numpy.core.multiarray import scalar  # type: ignore[no-redef]  # the same function under numpy 1.x
    # pickled under the numpy 1.x name; allowed under that name only, with the dtype of a float64
    return [(scalar, "numpy.core.multiarray.scalar"), np.dtype, type(np.dtype(np.float64))]


def read_cgcnn_checkpoint(path: str | os.PathLike) -> dict[str, Any]:
    """Load an original CGCNN ``.pth.tar`` on the CPU with ``weights_only=True`` (plus the numpy float64 globals)."""
    with torch.serialization.safe_globals(_numpy_safe_globals()):
        return torch.load(path, map_location="cpu", weights_only=True)


def cgcnn_checkpoint_path(
    name: str, *, cache: str | os.PathLike | None = None, mirror: str | os.PathLike | None = None
) -> Path:
    """Local, verified copy of the checkpoint of one of :data:`CGCNN_MODELS` (registry).

    Raises:
        KeyError: ``name`` is not one of the 8 models; the message lists them.
    """
    if name not in CGCNN_MODELS:
        raise KeyError(f"unknown CGCNN model {name!r}; valid names: {', '.join(CGCNN_MODELS)}")
    return registry.fetch(CGCNN_REPO, f"pre-trained/{name}.pth.tar", cache=cache, mirror=mirror)


def build_cgcnn_from_checkpoint(
    checkpoint: Mapping[str, Any], source: str, atom_init_table: torch.Tensor | None = None
) -> CGCNN:
    """The network of a checkpoint with its weights, loaded strictly; in eval mode.

    Raises:
        ValueError: naming ``source`` and listing the missing and unexpected state-dict keys, if any.
    """
    model = CGCNN.from_checkpoint_args(checkpoint["args"], atom_init_table=atom_init_table)
    # strict=False only to collect both lists; BatchNorm fills the num_batches_tracked absent from old checkpoints
    result = model.load_state_dict(checkpoint["state_dict"], strict=False)
    if result.missing_keys or result.unexpected_keys:
        raise ValueError(
            f"{source}: state dict does not match CGCNN({checkpoint['args']}); "
            f"missing keys {result.missing_keys}, unexpected keys {result.unexpected_keys}"
        )
    return model.eval()


@dataclass
class CGCNNPretrained:
    """A pretrained CGCNN with its normaliser, featuriser and metadata.

    ``epoch`` and ``best_mae_error`` are the checkpoint's: the best validation score of the original ``main.py``,
    an MAE in ``info.output_units`` for regression and an ROC AUC for classification.
    """

    info: CGCNNModelInfo
    model: CGCNN
    featurizer: CGCNNFeaturizer
    normalizer_mean: float
    normalizer_std: float
    epoch: int
    best_mae_error: float

    @torch.no_grad()
    def predict_graphs(self, graphs: Sequence[Data], batch_size: int = 256) -> np.ndarray:
        """``[B]`` predictions: de-normalised values in ``info.output_units`` (regression) or P(metal).

        Runs the model in eval mode on its device.
        """
        self.model.eval()
        device = next(self.model.parameters()).device
        outputs = []
        for start in range(0, len(graphs), batch_size):
            batch = Batch.from_data_list(list(graphs[start : start + batch_size])).to(device)
            output = self.model(batch)
            if self.model.classification:
                outputs.append(output[:, METAL_CLASS_INDEX].exp())
            else:
                outputs.append(output * self.normalizer_std + self.normalizer_mean)
        if not outputs:
            return np.zeros(0)
        return torch.cat(outputs).double().cpu().numpy()

    def predict_structures(
        self, structures: Sequence[Structure], ids: Sequence[str] | None = None, batch_size: int = 256
    ) -> np.ndarray:
        """Featurise and predict (see :meth:`predict_graphs`); ``ids`` name the structures in errors."""
        return self.predict_graphs(self.featurizer.featurize_many(structures, ids), batch_size=batch_size)

    def to_physical_units(self, predictions: np.ndarray) -> np.ndarray:
        """Predictions in ``info.units``: ``10 ** x`` for the log10 models (moduli, GPa), unchanged otherwise."""
        return np.power(10.0, predictions) if self.info.log10 else np.asarray(predictions)


def load_cgcnn_pretrained(
    name: str,
    *,
    cache: str | os.PathLike | None = None,
    mirror: str | os.PathLike | None = None,
) -> CGCNNPretrained:
    """Fetch (registry) and load one of :data:`CGCNN_MODELS`, with the original data defaults (8 Å, 12 neighbours).

    Args:
        name: e.g. ``"formation-energy-per-atom"``.
        cache: registry cache root.
        mirror: registry mirror root.
    """
    path = cgcnn_checkpoint_path(name, cache=cache, mirror=mirror)
    checkpoint = read_cgcnn_checkpoint(path)
    table = load_atom_init_table(cache=cache, mirror=mirror)
    return CGCNNPretrained(
        info=CGCNN_MODELS[name],
        model=build_cgcnn_from_checkpoint(checkpoint, source=str(path), atom_init_table=table),
        featurizer=CGCNNFeaturizer(table, radius=DEFAULT_RADIUS, max_num_neighbors=DEFAULT_MAX_NUM_NEIGHBORS),
        normalizer_mean=float(checkpoint["normalizer"]["mean"]),
        normalizer_std=float(checkpoint["normalizer"]["std"]),
        epoch=int(checkpoint["epoch"]),
        best_mae_error=float(checkpoint["best_mae_error"]),
    )


class CGCNNBackbone(Backbone):
    """CGCNN up to the input of ``fc_out``: a batch of CGCNN graphs -> ``[B, h_fea_len]`` crystal features.

    Defaults are the architecture shared by the 8 published models (``atom_fea_len=64``, ``n_conv=4``,
    ``h_fea_len=32``, ``n_h=1``; Gaussians 0..8 Å by 0.2 Å). ``__init__`` builds random weights only; load published
    ones with :meth:`load_published`, so that a checkpoint rebuilds the module offline. The backbone has no ``fc_out``
    (the LTC head replaces it) and never applies the classification model's dropout: initialised from
    ``semi-metal-classification``, it gives that classifier's eval-mode features (dropout is the identity there) and
    fine-tunes without it (the head has its own ``dropout``).

    Construction reads the element table ``atom_init.json`` through the registry (cache, then mirror, then the
    network; sha256-pinned), on purpose and not deferred to :meth:`load_published`: the table is not a weight but the
    input of every forward pass, from scratch or not, and it is a non-persistent buffer (the state dict keeps the
    original CGCNN's names), so a module without it cannot compute anything. Every use of the backbone also reads
    the same file to build its graphs (:class:`~paraisite.data.cgcnn_graph.CGCNNGraphBuilder`), so deferring would
    spare no download; it would only move file and network access into the first forward pass of training or
    prediction and change the module's buffers after construction (after ``.to(device)``).
    """

    graph_fields = ("atomic_numbers", "edge_dist", "edge_index")
    #: Constructor arguments that define the architecture (what must match a published model).
    ARCH_ARGS = ("atom_fea_len", "n_conv", "h_fea_len", "n_h", "radius", "gaussian_step", "gaussian_dmin")

    def __init__(
        self,
        *,
        atom_fea_len: int = 64,
        n_conv: int = 4,
        h_fea_len: int = 32,
        n_h: int = 1,
        radius: float = DEFAULT_RADIUS,
        gaussian_step: float = DEFAULT_GAUSSIAN_STEP,
        gaussian_dmin: float = DEFAULT_GAUSSIAN_DMIN,
    ) -> None:
        """Build the network (arguments as :class:`CGCNN`; the element table is the original ``atom_init.json``)."""
        super().__init__()
        self.arch: dict[str, Any] = {
            "atom_fea_len": int(atom_fea_len),
            "n_conv": int(n_conv),
            "h_fea_len": int(h_fea_len),
            "n_h": int(n_h),
            "radius": float(radius),
            "gaussian_step": float(gaussian_step),
            "gaussian_dmin": float(gaussian_dmin),
        }
        table = load_atom_init_table()
        self.cgcnn = CGCNN(
            orig_atom_fea_len=table.shape[1],
            nbr_fea_len=round((radius - gaussian_dmin) / gaussian_step) + 1,
            atom_fea_len=atom_fea_len,
            n_conv=n_conv,
            h_fea_len=h_fea_len,
            n_h=n_h,
            classification=False,
            atom_init_table=table,
            radius=radius,
            gaussian_step=gaussian_step,
            gaussian_dmin=gaussian_dmin,
        )
        self.cgcnn.fc_out = nn.Identity()
        self.out_dim = int(h_fea_len)

    def forward(self, graph: Data, lattice: torch.Tensor, state_attr: torch.Tensor) -> torch.Tensor:
        """Features ``[B, out_dim]`` of a batch from ``collate_fn_graph``; ``lattice`` and ``state_attr`` are unused."""
        return self.cgcnn.features(graph).reshape(-1, self.out_dim)

    @classmethod
    def published_names(cls) -> tuple[str, ...]:
        """Names accepted by :meth:`load_published` (``model.backbone.pretrained``)."""
        return tuple(CGCNN_MODELS)

    def load_published(self, name: str) -> None:
        """Copy every tensor of a published CGCNN except ``fc_out`` into this backbone, strictly.

        Raises:
            ValueError: ``name`` is not one of :data:`CGCNN_MODELS` (the message lists them), or this backbone's
                architecture differs from the published one.
            RuntimeError: tensors are missing, unexpected or of another shape (from ``load_state_dict``).
        """
        if name not in CGCNN_MODELS:
            valid = ", ".join(CGCNN_MODELS)
            raise ValueError(f"unknown CGCNN checkpoint {name!r} (model.backbone.pretrained); valid names: {valid}")
        path = cgcnn_checkpoint_path(name)
        checkpoint = read_cgcnn_checkpoint(path)
        args = checkpoint["args"]
        published = {key: args[key] for key in ("atom_fea_len", "n_conv", "h_fea_len", "n_h")}
        published.update(
            radius=DEFAULT_RADIUS, gaussian_step=DEFAULT_GAUSSIAN_STEP, gaussian_dmin=DEFAULT_GAUSSIAN_DMIN
        )
        check_same_architecture("CGCNNBackbone", f"CGCNN {name}", self.arch, published, self.ARCH_ARGS)
        model = build_cgcnn_from_checkpoint(checkpoint, str(path), atom_init_table=self.cgcnn.atom_init_table)
        state = {key: value for key, value in model.state_dict().items() if not key.startswith("fc_out.")}
        self.cgcnn.load_state_dict(state, strict=True)
        logger.info("Loaded %d tensors of CGCNN %s into CGCNNBackbone (left out fc_out).", len(state), name)
