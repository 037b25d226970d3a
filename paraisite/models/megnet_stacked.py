"""MEGNet for M members at once: the members' batches padded side by side, every layer batched over members.

Layout: member ``m``'s batch has ``n_m`` nodes, ``e_m`` edges and ``B`` graphs (the same ``B`` for every
member). Node features are padded to ``[M, N, F]`` with ``N = max n_m`` (flat index ``m * N + i``; padding
rows belong to their own member's first graph and are masked out of every sum, mean and softmax). Edges,
~15x more numerous and more uneven between members, are not padded: ``[sum e_m, F]``, member ``m`` in rows
``edge_offsets[m]:edge_offsets[m+1]``, their Linear layers one matmul per member. Graphs are ``m * B + b``.
Verified member by member against :class:`paraisite.models.megnet.MEGNetBackbone` in the tests.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from matgl.graph._compute import compute_pair_vector_and_distance
from torch import nn
from torch.nn import functional as F  # noqa: N812

from paraisite.models.megnet import MEGNetBackbone, attach_positions
from paraisite.models.stacked import (
    StackedParameters,
    masked_index_mean,
    masked_softmax,
    ragged_linear,
    stacked_linear,
    stacked_sequential,
)


@dataclass
class StackedGraphs:
    """M member batches of crystal graphs in the stacked layout (see the module docstring)."""

    members: int
    num_graphs: int
    node_type: torch.Tensor  # [M, N]
    node_mask: torch.Tensor  # [M, N]
    node_graph: torch.Tensor  # [M * N] flat graph index
    edge_offsets: list[int]  # M + 1 row offsets of the members' edges
    edge_src: torch.Tensor  # [sum e_m] flat node index
    edge_dst: torch.Tensor  # [sum e_m]
    edge_graph: torch.Tensor  # [sum e_m] flat graph index
    bond_dist: torch.Tensor  # [sum e_m]
    state_attr: torch.Tensor  # [M, B, S]
    edges_per_node: torch.Tensor  # [M * N] edges leaving each node
    nodes_per_graph: torch.Tensor  # [M * B]
    edges_per_graph: torch.Tensor  # [M * B]

    @property
    def max_nodes(self) -> int:
        """``N``."""
        return self.node_type.shape[1]

    @classmethod
    def from_batches(cls, batches: Sequence[tuple[Any, torch.Tensor, torch.Tensor]]) -> StackedGraphs:
        """Stack ``(graph, lattice, state_attr)`` batches from ``collate_fn_graph``, one per member.

        Raises:
            ValueError: the members' batches hold different numbers of graphs, or a graph has no edge.
        """
        members = len(batches)
        sizes = {int(graph.num_graphs) for graph, _, _ in batches}
        if len(sizes) != 1:
            raise ValueError(f"member batches must hold the same number of graphs, got {sorted(sizes)}")
        (num_graphs,) = sizes
        max_nodes = max(int(graph.num_nodes) for graph, _, _ in batches)
        device = batches[0][1].device
        node_type = torch.zeros(members, max_nodes, dtype=torch.long, device=device)
        node_mask = torch.zeros(members, max_nodes, device=device)
        node_graph = torch.zeros(members, max_nodes, dtype=torch.long, device=device)
        sources, targets, distances, states, offsets = [], [], [], [], [0]
        for m, (graph, lattice, state_attr) in enumerate(batches):
            nodes = int(graph.num_nodes)
            attach_positions(graph, lattice)
            _, dist = compute_pair_vector_and_distance(graph.pos, graph.edge_index, graph.pbc_offshift)
            node_type[m, :nodes] = graph.node_type
            node_mask[m, :nodes] = 1.0
            node_graph[m, :nodes] = graph.batch + m * num_graphs
            # Padding rows join their own member's first graph: masked (x 0) out of its sums, and never another
            # member's (inf x 0 is NaN, so one diverged member would reach every other one).
            node_graph[m, nodes:] = m * num_graphs
            sources.append(graph.edge_index[0] + m * max_nodes)
            targets.append(graph.edge_index[1] + m * max_nodes)
            distances.append(dist)
            states.append(state_attr.reshape(num_graphs, -1))
            offsets.append(offsets[-1] + int(graph.edge_index.shape[1]))
        node_graph = node_graph.reshape(-1)
        edge_src, edge_dst = torch.cat(sources).long(), torch.cat(targets).long()
        edge_graph = node_graph[edge_src]
        ones = torch.ones(len(edge_src), device=device)
        edges_per_node = torch.zeros(members * max_nodes, device=device).index_add(0, edge_src, ones)
        nodes_per_graph = torch.zeros(members * num_graphs, device=device).index_add(
            0, node_graph, node_mask.reshape(-1)
        )
        edges_per_graph = torch.zeros(members * num_graphs, device=device).index_add(0, edge_graph, ones)
        if bool((edges_per_graph == 0).any()):
            raise ValueError("a graph without edges cannot be stacked (its atoms have no neighbour in the cutoff)")
        return cls(
            members=members,
            num_graphs=num_graphs,
            node_type=node_type,
            node_mask=node_mask,
            node_graph=node_graph,
            edge_offsets=offsets,
            edge_src=edge_src,
            edge_dst=edge_dst,
            edge_graph=edge_graph,
            bond_dist=torch.cat(distances),
            state_attr=torch.stack(states),
            edges_per_node=edges_per_node,
            nodes_per_graph=nodes_per_graph,
            edges_per_graph=edges_per_graph,
        )


class StackedMEGNet(nn.Module):
    """M :class:`MEGNetBackbone` members of one architecture as one module: ``StackedGraphs`` -> ``[M, B, out_dim]``.

    Args:
        members: the backbones, with the weights each member starts from.
    """

    def __init__(self, members: Sequence[MEGNetBackbone]) -> None:
        super().__init__()
        archs = [member.arch for member in members]
        if any(arch != archs[0] for arch in archs):
            raise ValueError("stacked MEGNet members must share one architecture")
        self.params = StackedParameters(members)
        # The first member's modules give the structure (activations, which layers exist); never its weights.
        self._template = [members[0].megnet]
        self.out_dim = members[0].out_dim

    #: The input of :meth:`forward` from one ``(graph, lattice, state_attr)`` batch per member.
    graphs = staticmethod(StackedGraphs.from_batches)

    @property
    def template(self) -> Any:
        """The layer structure shared by all members (a matgl ``MEGNet``, untyped: see pyproject's mypy section)."""
        return self._template[0]

    def _mlp(self, module: Any, name: str, x: torch.Tensor, offsets: list[int] | None = None) -> torch.Tensor:
        layers = module.layers
        return stacked_sequential(layers, f"megnet.{name}.layers", self.params, x, self.training, offsets=offsets)

    def forward(self, graphs: StackedGraphs) -> torch.Tensor:
        """Features ``[M, B, out_dim]`` of the members' batches."""
        net, p = self.template, self.params
        members, max_nodes, num_graphs = graphs.members, graphs.max_nodes, graphs.num_graphs
        offsets = graphs.edge_offsets
        # The Gaussian centres are fixed by the architecture (not trained), hence equal for every member.
        centers = p["megnet.bond_expansion.rbf.centers"][0]
        edge = torch.exp(-net.bond_expansion.rbf.width * (graphs.bond_dist.unsqueeze(-1) - centers) ** 2)

        embedding = net.embedding
        node_table = p["megnet.embedding.layer_node_embedding.weight"]  # [M, T, D]
        types = node_table.shape[1]
        flat_types = graphs.node_type + torch.arange(members, device=node_table.device).unsqueeze(1) * types
        node = node_table.reshape(members * types, -1)[flat_types.reshape(-1)].reshape(members, max_nodes, -1)
        if embedding.dim_edge_embedding is not None:
            edge = self._mlp(embedding.layer_edge_embedding, "embedding.layer_edge_embedding", edge, offsets)
        if hasattr(embedding, "layer_state_embedding"):
            raise NotImplementedError("stacked MEGNet supports the published models' raw state only")
        state = graphs.state_attr.to(edge.dtype)
        edge = self._mlp(net.edge_encoder, "edge_encoder", edge, offsets)
        node = self._mlp(net.node_encoder, "node_encoder", node)
        state = self._mlp(net.state_encoder, "state_encoder", state)

        node_mask = graphs.node_mask.reshape(-1)
        for i, block in enumerate(net.blocks):
            inputs = (edge, node, state)
            if block.has_dense:
                edge = self._mlp(block.edge_func, f"blocks.{i}.edge_func", edge, offsets)
                node = self._mlp(block.node_func, f"blocks.{i}.node_func", node)
                state = self._mlp(block.state_func, f"blocks.{i}.state_func", state)
            conv, prefix = block.conv, f"blocks.{i}.conv"
            flat_node = node.reshape(members * max_nodes, -1)
            flat_state = state.reshape(members * num_graphs, -1)
            edge = self._edge_update(conv.edge_func, f"megnet.{prefix}.edge_func.layers", graphs, node, edge, state)
            edge_mean = masked_index_mean(edge, graphs.edge_src, None, members * max_nodes, graphs.edges_per_node)
            node_in = torch.cat([flat_node, edge_mean, flat_state[graphs.node_graph]], dim=-1)
            node = self._mlp(conv.node_func, f"{prefix}.node_func", node_in.reshape(members, max_nodes, -1))
            graph_edge_mean = masked_index_mean(
                edge, graphs.edge_graph, None, members * num_graphs, graphs.edges_per_graph
            )
            graph_node_mean = masked_index_mean(
                node.reshape(members * max_nodes, -1), graphs.node_graph, node_mask, members * num_graphs,
                graphs.nodes_per_graph,
            )  # fmt: skip
            state_in = torch.cat([flat_state, graph_edge_mean, graph_node_mean], dim=-1)
            state = self._mlp(conv.state_func, f"{prefix}.state_func", state_in.reshape(members, num_graphs, -1))
            if block.dropout is not None:
                edge, node, state = (F.dropout(t, block.dropout.p, self.training) for t in (edge, node, state))
            if block.skip:
                edge, node, state = edge + inputs[0], node + inputs[1], state + inputs[2]

        flat_node = node.reshape(members * max_nodes, -1)
        node_vec = self._set2set("node_s2s", flat_node, graphs.node_graph, node_mask, members, num_graphs)
        edge_vec = self._set2set("edge_s2s", edge, graphs.edge_graph, None, members, num_graphs)
        vec = torch.cat([node_vec, edge_vec, state], dim=-1)
        if net.dropout is not None:
            vec = net.dropout(vec)
        return self._mlp(net.output_proj, "output_proj", vec)

    def _edge_update(
        self,
        mlp: Any,
        prefix: str,
        graphs: StackedGraphs,
        node: torch.Tensor,
        edge: torch.Tensor,
        state: torch.Tensor,
    ) -> torch.Tensor:
        """MEGNet's edge update ``MLP([v_src, v_dst, e, u])`` without building ``[v_src, v_dst, e, u]``.

        The first Linear is split by input block: ``W [v_src, v_dst, e, u] = W_s v_src + W_d v_dst + W_e e + W_u u``.
        The node and state products are computed once per node and per graph (an edge list is ~15x longer)
        and gathered per edge: the same sum in another order, with a quarter of the first layer's products.
        """
        first = mlp.layers[0]
        if not isinstance(first, nn.Linear):
            raise TypeError(f"{prefix}: the edge update must start with a Linear")
        weight, bias = self.params[f"{prefix}.0.weight"], self.params[f"{prefix}.0.bias"]
        width = weight.shape[2] // 4
        w_src, w_dst, w_edge, w_state = weight.split(width, dim=2)
        members, max_nodes = graphs.members, graphs.max_nodes
        from_src = stacked_linear(node, w_src, None).reshape(members * max_nodes, -1)
        from_dst = stacked_linear(node, w_dst, None).reshape(members * max_nodes, -1)
        from_state = stacked_linear(state, w_state, bias).reshape(members * graphs.num_graphs, -1)
        hidden = ragged_linear(edge, w_edge, None, graphs.edge_offsets)
        hidden = hidden + from_src[graphs.edge_src] + from_dst[graphs.edge_dst] + from_state[graphs.edge_graph]
        return stacked_sequential(
            mlp.layers, prefix, self.params, hidden, self.training, start=1, offsets=graphs.edge_offsets
        )

    def _set2set(
        self,
        name: str,
        flat: torch.Tensor,
        index: torch.Tensor,
        mask: torch.Tensor | None,
        members: int,
        num_graphs: int,
    ) -> torch.Tensor:
        """Set2Set readout (PyG's, as matgl's node and edge readouts) of rows ``flat [R, F]`` -> ``[M, B, 2F]``."""
        module = getattr(self.template, name)
        lstm: nn.LSTM = module.lstm
        width = flat.shape[-1]
        hidden = [flat.new_zeros(members, num_graphs, lstm.hidden_size) for _ in range(lstm.num_layers)]
        cell = [flat.new_zeros(members, num_graphs, lstm.hidden_size) for _ in range(lstm.num_layers)]
        q_star = flat.new_zeros(members, num_graphs, 2 * width)
        steps = module.processing_steps if hasattr(module, "processing_steps") else module.n_iters
        for _ in range(steps):
            q = q_star
            for layer in range(lstm.num_layers):
                q, hidden[layer], cell[layer] = self._lstm_cell(
                    f"megnet.{name}.lstm", layer, q, hidden[layer], cell[layer]
                )
            flat_q = q.reshape(members * num_graphs, -1)
            logits = (flat * flat_q[index]).sum(dim=-1)
            attention = masked_softmax(logits, index, mask, members * num_graphs)
            readout = flat.new_zeros(members * num_graphs, width).index_add(0, index, flat * attention.unsqueeze(-1))
            q_star = torch.cat([q, readout.reshape(members, num_graphs, width)], dim=-1)
        return q_star

    def _lstm_cell(
        self, prefix: str, layer: int, x: torch.Tensor, h: torch.Tensor, c: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        p = self.params
        gates = stacked_linear(x, p[f"{prefix}.weight_ih_l{layer}"], p[f"{prefix}.bias_ih_l{layer}"])
        gates = gates + stacked_linear(h, p[f"{prefix}.weight_hh_l{layer}"], p[f"{prefix}.bias_hh_l{layer}"])
        i, f, g, o = gates.chunk(4, dim=-1)
        c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
        h = torch.sigmoid(o) * torch.tanh(c)
        return h, h, c
