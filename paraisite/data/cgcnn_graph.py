"""Crystal graphs for CGCNN (Xie & Grossman, PRL 120, 145301, 2018): a structure becomes a PyG ``Data``.

The graph follows the original ``txie-93/cgcnn`` data pipeline: each atom is linked to its ``max_num_neighbors``
(12) nearest periodic neighbours within ``radius`` (8 Å), sorted by distance (ties kept in pymatgen's neighbour-list
order, as the original's stable sort does). An atom with fewer neighbours is padded, as in the original, with edges
to atom 0 of the same structure at distance ``radius + 1`` Å; those padded edges are real inputs of the pretrained
models (their Gaussian features are ~1e-11, but the convolution's bias still sends a message), so they are kept.

A graph holds only integer and float tensors (small to cache; the Gaussian expansion and the element-feature lookup
happen in :class:`paraisite.models.cgcnn.CGCNN`):

- ``atomic_numbers`` ``[N]`` int64: element of each atom (row of the ``atom_init.json`` table);
- ``edge_index`` ``[2, N * M]`` int64: row 0 the neighbour, row 1 the centre atom; centre-major, each centre's ``M``
  neighbours by increasing distance (PyG shifts both rows when batching);
- ``edge_dist`` ``[N * M]`` float32: the distances in Å (``radius + 1`` for padding).

:class:`CGCNNGraphBuilder` is the :class:`~paraisite.data.graphs.GraphBuilder` of the trainable CGCNN backbone: the
same graphs (same padding, so published weights see the inputs they were trained on), plus ``node_type``,
``lattice`` and a dummy ``state_attr`` for the datamodule, the applicability reference and the LTC predictor. An atom
with *no* neighbour within ``radius`` is never padded: it is a :class:`~paraisite.data.errors.GraphError` of kind
``isolated_atom`` (the datamodule's ``on_isolated`` drops or refuses the structure). Padding of atoms with 1 to
``M - 1`` neighbours warns; none of the structures of Dataset1, Dataset2 or AFLOW needs it at 8 Å.
"""

from __future__ import annotations

import json
import os
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from pymatgen.core import Element, Structure
from pymatgen.optimization.neighbors import find_points_in_spheres
from torch_geometric.data import Data

from paraisite.data import registry
from paraisite.data.errors import GraphError

CGCNN_REPO = "txie-93/cgcnn"
ATOM_INIT_PATH = "data/sample-regression/atom_init.json"
#: Data defaults of the original ``CIFData`` (not stored in the checkpoints).
DEFAULT_RADIUS = 8.0
DEFAULT_MAX_NUM_NEIGHBORS = 12
#: Distance tolerance of pymatgen's neighbour search (coincident self-images are dropped below it).
NEIGHBOR_TOLERANCE = 1e-8
#: Version of the graph layout of :class:`CGCNNGraphBuilder` (part of the graph-cache key).
CGCNN_GRAPH_VERSION = 1


def load_atom_init_table(
    path: str | os.PathLike | None = None,
    *,
    cache: str | os.PathLike | None = None,
    mirror: str | os.PathLike | None = None,
) -> torch.Tensor:
    """Element features of ``atom_init.json`` as a float32 table indexed by atomic number.

    Args:
        path: a local ``atom_init.json``; by default the original file, fetched through the registry.
        cache: registry cache root (see :func:`paraisite.data.registry.fetch`).
        mirror: registry mirror root.

    Returns:
        ``[max_Z + 1, 92]`` table; row ``Z`` is the vector of element ``Z``, rows of absent elements (and row 0) are
        zero. Every present element has a non-zero (one-hot blocks) vector.
    """
    source = Path(path) if path is not None else registry.fetch(CGCNN_REPO, ATOM_INIT_PATH, cache=cache, mirror=mirror)
    vectors = {int(z): vector for z, vector in json.loads(Path(source).read_text()).items()}
    table = torch.zeros(max(vectors) + 1, len(next(iter(vectors.values()))), dtype=torch.float32)
    for z, vector in vectors.items():
        table[z] = torch.tensor(vector, dtype=torch.float32)
    return table


class CGCNNFeaturizer:
    """Turns pymatgen structures into CGCNN graphs (see the module docstring for the tensors)."""

    def __init__(
        self,
        atom_init_table: torch.Tensor,
        radius: float = DEFAULT_RADIUS,
        max_num_neighbors: int = DEFAULT_MAX_NUM_NEIGHBORS,
    ) -> None:
        """Set the element table (only to know which elements have features), the cutoff and the neighbour count."""
        self.known_elements = atom_init_table.abs().sum(dim=1).numpy() > 0
        self.radius = float(radius)
        self.max_num_neighbors = int(max_num_neighbors)

    def __call__(self, structure: Structure, structure_id: str | None = None) -> Data:
        """Graph of one structure.

        Args:
            structure: an ordered periodic structure.
            structure_id: name used in errors and warnings (default: the formula).

        Raises:
            GraphError: (a ``ValueError``) of kind ``disordered``, ``element`` (element without features) or
                ``isolated_atom`` (an atom without any neighbour within ``radius``).
        """
        label = structure_id if structure_id is not None else structure.formula
        if not structure.is_ordered:
            raise GraphError(
                f"structure {label}: disordered sites (partial occupancies) are not supported by CGCNN", "disordered"
            )
        numbers = np.asarray(structure.atomic_numbers, dtype=np.int64)
        self._check_elements(numbers, label)
        centres, neighbours, distances = self._neighbor_list(structure)
        nbr_index, nbr_dist = self._nearest(numbers.size, centres, neighbours, distances, label)
        centre_index = np.repeat(np.arange(numbers.size), self.max_num_neighbors)
        return Data(
            atomic_numbers=torch.from_numpy(numbers),
            edge_index=torch.from_numpy(np.stack([nbr_index.ravel(), centre_index])),
            edge_dist=torch.from_numpy(nbr_dist.ravel().astype(np.float32)),
            num_nodes=numbers.size,
        )

    def featurize_many(self, structures: Sequence[Structure], ids: Sequence[str] | None = None) -> list[Data]:
        """Graphs of several structures; ``ids`` (same length) name them in errors."""
        if ids is not None and len(ids) != len(structures):
            raise ValueError(f"{len(ids)} ids for {len(structures)} structures")
        names = ids if ids is not None else [None] * len(structures)
        return [self(structure, name) for structure, name in zip(structures, names, strict=True)]

    def _check_elements(self, numbers: np.ndarray, label: str) -> None:
        in_table = numbers < self.known_elements.size
        known = np.zeros_like(in_table)
        known[in_table] = self.known_elements[numbers[in_table]]
        if not known.all():
            missing = sorted({Element.from_Z(int(z)).symbol for z in numbers[~known]})
            message = f"structure {label}: no CGCNN atom features (atom_init.json) for element(s) {missing}"
            raise GraphError(message, "element")

    def _neighbor_list(self, structure: Structure) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Same search and arguments as ``Structure.get_neighbor_list`` (hence the same pair order)."""
        cart_coords = np.ascontiguousarray(structure.cart_coords, dtype=float)
        centres, neighbours, _images, distances = find_points_in_spheres(
            cart_coords,
            cart_coords,
            r=self.radius,
            pbc=np.ascontiguousarray(structure.pbc, dtype=np.int64),
            lattice=np.ascontiguousarray(structure.lattice.matrix, dtype=float),
            tol=NEIGHBOR_TOLERANCE,
        )
        keep = ~((centres == neighbours) & (distances <= NEIGHBOR_TOLERANCE))
        return centres[keep], neighbours[keep], distances[keep]

    def _nearest(
        self, num_atoms: int, centres: np.ndarray, neighbours: np.ndarray, distances: np.ndarray, label: str
    ) -> tuple[np.ndarray, np.ndarray]:
        """The ``[num_atoms, M]`` neighbour indices and distances, padded like the original."""
        counts = np.bincount(centres, minlength=num_atoms)
        isolated = np.flatnonzero(counts == 0)
        if isolated.size:
            raise GraphError(
                f"structure {label}: atom(s) {isolated.tolist()} have no neighbour within {self.radius} Å; "
                "CGCNN needs at least one",
                "isolated_atom",
            )
        if (counts < self.max_num_neighbors).any():
            warnings.warn(
                f"structure {label}: {int((counts < self.max_num_neighbors).sum())} atom(s) have fewer than "
                f"{self.max_num_neighbors} neighbours within {self.radius} Å; padded with atom 0 at "
                f"{self.radius + 1} Å as in the original CGCNN",
                stacklevel=3,
            )
        order = np.lexsort((distances, centres))  # stable: equal distances keep the neighbour-list order
        first = np.cumsum(counts) - counts
        slot = np.arange(self.max_num_neighbors)
        present = slot < counts[:, None]
        position = np.where(present, first[:, None] + slot, 0)
        nbr_index = np.where(present, neighbours[order][position], 0)
        nbr_dist = np.where(present, distances[order][position], self.radius + 1.0)
        return nbr_index, nbr_dist


class CGCNNGraphBuilder:
    """CGCNN graphs for training and LTC prediction (a :class:`~paraisite.data.graphs.GraphBuilder`).

    :class:`CGCNNFeaturizer` with the original ``atom_init.json`` element table; each graph also carries ``node_type``
    ``[N]`` (index in :attr:`element_types`, for the applicability reference), ``lattice`` ``[1, 3, 3]`` and a dummy
    ``state_attr`` ``[1, 1]`` (zeros; CGCNN has no state), so matgl's ``collate_fn_graph`` batches it like a MEGNet
    graph. Isolated atoms are errors, partial neighbour lists are padded as in the original (module docstring).
    """

    def __init__(self, radius: float = DEFAULT_RADIUS, max_num_neighbors: int = DEFAULT_MAX_NUM_NEIGHBORS) -> None:
        """Neighbour cutoff in Å and neighbours per atom (the original's 8 Å and 12)."""
        self.featurizer = CGCNNFeaturizer(load_atom_init_table(), radius, max_num_neighbors)
        known = np.flatnonzero(self.featurizer.known_elements)
        #: Elements with atom features, by atomic number; ``node_type`` indexes this tuple.
        self.element_types = tuple(Element.from_Z(int(z)).symbol for z in known)
        self._node_type = np.full(self.featurizer.known_elements.size, -1, dtype=np.int64)
        self._node_type[known] = np.arange(known.size)

    @property
    def radius(self) -> float:
        """Neighbour cutoff in Å."""
        return self.featurizer.radius

    @property
    def max_num_neighbors(self) -> int:
        """Neighbours per atom (padded up to it)."""
        return self.featurizer.max_num_neighbors

    def settings(self) -> dict[str, Any]:
        """Builder kind, cutoff, neighbour count, padding rule, element list and layout version."""
        return {
            "kind": "cgcnn",
            "radius": self.radius,
            "max_num_neighbors": self.max_num_neighbors,
            "padding": "original",
            "element_types": list(self.element_types),
            "version": CGCNN_GRAPH_VERSION,
        }

    def build(self, structure: Structure, name: str = "structure") -> Data:
        """Graph of ``structure``; raises :class:`~paraisite.data.errors.GraphError` (kinds in ``CGCNNFeaturizer``)."""
        graph = self.featurizer(structure, name)
        graph.node_type = torch.from_numpy(self._node_type[graph.atomic_numbers.numpy()])
        graph.lattice = torch.tensor(structure.lattice.matrix, dtype=torch.float32).reshape(1, 3, 3)
        graph.state_attr = torch.zeros(1, 1, dtype=torch.float32)
        return graph


def save_graphs(graphs: Sequence[Data], path: str | os.PathLike) -> None:
    """Save graphs as plain dicts of tensors (readable with ``torch.load(..., weights_only=True)``)."""
    torch.save([graph.to_dict() for graph in graphs], path)


def load_graphs(path: str | os.PathLike) -> list[Data]:
    """Load graphs written by :func:`save_graphs`."""
    return [Data.from_dict(fields) for fields in torch.load(path, weights_only=True)]
