"""Crystal graphs, built once per (source, builder settings) and cached as plain tensors.

A graph builder turns a Structure into a PyG ``Data`` (with ``lattice`` and ``state_attr``) and may flag
structures it cannot use (an atom with no neighbour inside the cutoff, an unknown element). The graph
cache file is keyed by the source's key and the builder's settings, and holds only tensors, strings and
numbers, so it loads with ``torch.load(weights_only=True)``.
"""

from __future__ import annotations

import io
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import matgl
import numpy as np
import torch
from matgl.config import DEFAULT_ELEMENTS
from matgl.ext.pymatgen import Structure2Graph
from pymatgen.core import Structure
from torch_geometric.data import Data
from torch_geometric.data.collate import collate
from torch_geometric.data.separate import separate

from paraisite.data import registry
from paraisite.data.cache import read_verified, settings_key, write_verified
from paraisite.data.errors import GraphError
from paraisite.data.sources import CrystalRecord, load_source, source_key

log = logging.getLogger(__name__)

GRAPH_FORMAT_VERSION = 1
ISOLATED_POLICIES = ("drop", "raise")


class GraphBuilder(Protocol):
    """Structure -> graph, with settings that identify the result."""

    def settings(self) -> dict[str, Any]:
        """Everything that changes the graphs (goes into the cache key)."""
        ...

    def build(self, structure: Structure, name: str = "structure") -> Data:
        """The graph of one structure, with ``lattice`` [1,3,3] and ``state_attr`` [1,S]; raises GraphError."""
        ...


class MEGNetGraphBuilder:
    """matgl's ``Structure2Graph`` (periodic radius graph) with a check for atoms without neighbours."""

    def __init__(self, cutoff: float = 4.0, element_types: tuple[str, ...] | list[str] | None = None) -> None:
        self.cutoff = float(cutoff)
        self.element_types = tuple(element_types or DEFAULT_ELEMENTS)
        self._converter = Structure2Graph(element_types=self.element_types, cutoff=self.cutoff)

    def settings(self) -> dict[str, Any]:
        """Builder kind, cutoff, element list and matgl's major version."""
        return {
            "kind": "megnet",
            "cutoff": self.cutoff,
            "element_types": list(self.element_types),
            "matgl_major": matgl.__version__.split(".")[0],
        }

    def build(self, structure: Structure, name: str = "structure") -> Data:
        """Graph of ``structure``; raises :class:`GraphError` for unknown elements or isolated atoms."""
        unknown = sorted({el.symbol for el in structure.composition} - set(self.element_types))
        if unknown:
            raise GraphError(f"{name}: element(s) {', '.join(unknown)} not in the model's element list", "element")
        graph, lattice, state_attr = self._converter.get_graph(structure)
        num_edges = graph.edge_index.shape[1]
        if num_edges == 0:
            raise GraphError(f"{name}: no pair of atoms within the {self.cutoff} A cutoff (no edges)", "no_edges")
        with_neighbours = torch.zeros(len(structure), dtype=torch.bool)
        with_neighbours[graph.edge_index[0]] = True
        if not bool(with_neighbours.all()):
            lonely = [f"{structure[i].specie}{i}" for i in torch.nonzero(~with_neighbours).flatten().tolist()]
            raise GraphError(
                f"{name}: atom(s) {', '.join(lonely)} have no neighbour within {self.cutoff} A", "isolated_atom"
            )
        graph.lattice = lattice.reshape(1, 3, 3).to(matgl.float_th)
        graph.state_attr = torch.as_tensor(np.asarray(state_attr), dtype=matgl.float_th).reshape(1, -1)
        return graph


def collate_item(stored: Data, tc: float | torch.Tensor = 0.0) -> tuple[Data, torch.Tensor, torch.Tensor, dict]:
    """A built graph as the ``(graph, lattice, state_attr, {"tc": tc})`` item of matgl's ``collate_fn_graph``.

    The stored graph is left untouched; the returned copy carries neither ``lattice`` nor ``state_attr``.
    """
    graph = stored.clone()
    lattice, state_attr = graph.lattice, graph.state_attr
    del graph.lattice, graph.state_attr
    return graph, lattice, state_attr[0], {"tc": tc}


@dataclass
class GraphSet:
    """The graphs of one source with their targets and identities (index-aligned)."""

    source: str
    graphs: list[Data]
    ids: list[str]
    formulas: list[str]
    tc: torch.Tensor
    problems: list[dict[str, str]] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.graphs)


def graph_cache_path(source: str, source_key: str, builder: GraphBuilder) -> Path:
    """Cache file of a source's graphs: keyed by the source key and the builder settings."""
    key = settings_key({"source_key": source_key, "builder": builder.settings(), "format": GRAPH_FORMAT_VERSION})
    return registry.cache_dir() / "graphs" / f"{source}-{key}.pt"


def build_graphs(records: list[CrystalRecord], builder: GraphBuilder) -> tuple[list[Data], list[int], list[dict]]:
    """Graphs of the usable records, their record indices, and one problem entry per unusable record."""
    graphs, kept, problems = [], [], []
    for index, record in enumerate(records):
        try:
            graphs.append(builder.build(record.structure, name=f"{record.source}:{record.id} ({record.formula})"))
            kept.append(index)
        except GraphError as error:
            problems.append({"id": record.id, "kind": error.kind, "message": str(error)})
    return graphs, kept, problems


def _save(path: Path, graph_set: GraphSet) -> None:
    store, slices, _ = collate(Data, graph_set.graphs, increment=False, add_batch=False)
    payload = {
        "store": store.to_dict(),
        "slices": dict(slices),
        "ids": graph_set.ids,
        "formulas": graph_set.formulas,
        "tc": graph_set.tc,
        "problems": graph_set.problems,
    }
    buffer = io.BytesIO()
    torch.save(payload, buffer)
    write_verified(path, buffer.getvalue())


def _load(path: Path, source: str) -> GraphSet | None:
    """The cached graphs, or ``None`` (reported) when the file is missing, fails its sha256 or does not load."""
    data = read_verified(path)
    if data is None:
        return None
    try:
        payload = torch.load(io.BytesIO(data), weights_only=True)
        store = Data.from_dict(payload["store"])
        count = len(payload["ids"])
        graphs = [separate(Data, store, i, payload["slices"], decrement=False) for i in range(count)]
        return GraphSet(source, graphs, payload["ids"], payload["formulas"], payload["tc"], payload["problems"])
    except Exception as error:  # a verified file that still does not load (an older format): rebuild it
        log.warning("graph cache %s does not load (%s: %s); rebuilding it", path, type(error).__name__, error)
        return None


def load_graph_set(
    source: str,
    builder: GraphBuilder,
    on_isolated: str = "drop",
    on_bad_structure: str = "skip",
) -> GraphSet:
    """Graphs of a source, from the cache when the key matches; unusable structures are reported.

    ``on_isolated``: ``drop`` leaves out (with a warning) structures whose graph is unusable (an atom
    with no neighbour inside the cutoff, no edge at all, an unknown element); ``raise`` refuses them.
    """
    if on_isolated not in ISOLATED_POLICIES:
        raise ValueError(f"on_isolated={on_isolated!r}; valid: {', '.join(ISOLATED_POLICIES)}")
    path = graph_cache_path(source, source_key(source, on_bad_structure), builder)
    graph_set = _load(path, source)
    if graph_set is None:
        start = time.perf_counter()
        data = load_source(source, on_bad_structure)
        graphs, kept, problems = build_graphs(data.records, builder)
        records = [data.records[i] for i in kept]
        tc = torch.tensor([r.tc for r in records], dtype=torch.float64)
        graph_set = GraphSet(source, graphs, [r.id for r in records], [r.formula for r in records], tc, problems)
        _save(path, graph_set)
        log.info("built %d graphs of %s in %.1f s -> %s", len(graphs), source, time.perf_counter() - start, path)
    if graph_set.problems:
        summary = ", ".join(f"{p['id']} ({p['kind']})" for p in graph_set.problems[:5])
        more = f" and {len(graph_set.problems) - 5} more" if len(graph_set.problems) > 5 else ""
        if on_isolated == "raise":
            raise GraphError(f"{source}: {len(graph_set.problems)} unusable structure(s): {summary}{more}", "refused")
        log.warning("%s: dropped %d unusable structure(s): %s%s", source, len(graph_set.problems), summary, more)
    return graph_set
