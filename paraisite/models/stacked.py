"""Members of one architecture computed together: parameters stacked on a leading member dimension.

An ensemble of M models with the same architecture (the seeds of one job) is trained as one module whose
every parameter is ``[M, *shape]``: a Linear runs as one batched matmul over the members, an embedding as
one gather. Adam, and any other element-wise optimiser, then updates each member exactly as it would
alone, because the loss is the sum of the members' own losses and no operation mixes members.
:meth:`StackedParameters.member_state` gives back one member's ``state_dict`` in its original names, so
each member is saved as an ordinary single-model checkpoint.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence

import torch
from torch import nn
from torch.nn import functional as F  # noqa: N812


class StackedParameters(nn.Module):
    """The parameters of ``M`` modules of one architecture, stacked along a new first dimension.

    Args:
        modules: the members, all with the same parameter names and shapes.

    Raises:
        ValueError: the members differ in parameter names or shapes.
    """

    def __init__(self, modules: Sequence[nn.Module]) -> None:
        super().__init__()
        if not modules:
            raise ValueError("StackedParameters needs at least one member")
        per_member = [dict(module.named_parameters()) for module in modules]
        self.names: tuple[str, ...] = tuple(per_member[0])
        for index, params in enumerate(per_member[1:], start=1):
            shapes = {name: tuple(p.shape) for name, p in params.items()}
            expected = {name: tuple(p.shape) for name, p in per_member[0].items()}
            if shapes != expected:
                raise ValueError(f"member {index} has other parameters than member 0; cannot stack them")
        self.size = len(modules)
        self.stacked = nn.ParameterDict(
            {
                _key(name): nn.Parameter(
                    torch.stack([params[name].detach().clone() for params in per_member]),
                    requires_grad=per_member[0][name].requires_grad,
                )
                for name in self.names
            }
        )

    def __getitem__(self, name: str) -> torch.Tensor:
        return self.stacked[_key(name)]

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and _key(name) in self.stacked

    def get(self, name: str, default: torch.Tensor | None = None) -> torch.Tensor | None:
        """The stacked parameter ``name``, or ``default``."""
        return self.stacked.get(_key(name), default)

    def items(self) -> Iterator[tuple[str, nn.Parameter]]:
        """``(original name, stacked parameter)`` pairs."""
        for name in self.names:
            yield name, self.stacked[_key(name)]

    def member_state(self, member: int) -> dict[str, torch.Tensor]:
        """Member ``member``'s parameters under their original names (detached copies)."""
        return {name: self[name][member].detach().clone() for name in self.names}


def _key(name: str) -> str:
    """ParameterDict keys may not contain dots."""
    return name.replace(".", "__")


def stacked_linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """``x [M, R, in]`` through per-member Linear layers (``weight [M, out, in]``, ``bias [M, out]``)."""
    if bias is None:
        return torch.bmm(x, weight.transpose(1, 2))
    return torch.baddbmm(bias.unsqueeze(1), x, weight.transpose(1, 2))


def ragged_linear(
    x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, offsets: Sequence[int]
) -> torch.Tensor:
    """``x [R, in]``, member ``m`` in rows ``offsets[m]:offsets[m+1]``, through per-member Linear layers.

    For rows whose count differs much between members (the edges of a batch), where padding to
    ``[M, max R, in]`` would waste more than one matmul call per member costs.
    """
    sizes = [offsets[m + 1] - offsets[m] for m in range(weight.shape[0])]
    # split (not slicing): its backward is one cat, where each slice's backward would fill a full-size zero grad.
    weights, biases = weight.unbind(0), (None,) * len(sizes) if bias is None else bias.unbind(0)
    parts = [F.linear(rows, w, b) for rows, w, b in zip(x.split(sizes), weights, biases, strict=True)]
    return torch.cat(parts)


def stacked_sequential(
    layers: Iterable[nn.Module],
    prefix: str,
    params: StackedParameters,
    x: torch.Tensor,
    training: bool,
    start: int = 0,
    offsets: Sequence[int] | None = None,
) -> torch.Tensor:
    """Run a ``Linear / activation / Dropout / Identity`` sequence with stacked weights.

    ``layers`` is the template container (only its structure is used); ``prefix`` is its parameter name
    prefix in ``params``; ``start`` skips the first layers (computed by the caller). ``x`` is ``[M, R, in]``,
    or ragged ``[R, in]`` with member row ``offsets`` (see :func:`ragged_linear`). Parameter-free modules
    (activations) are applied as they are.

    Raises:
        TypeError: a layer with parameters that is not a Linear (no stacked form).
    """
    for index, layer in enumerate(layers):
        if index < start:
            continue
        name = f"{prefix}.{index}"
        if isinstance(layer, nn.Linear):
            bias = params.get(f"{name}.bias", None)
            weight = params[f"{name}.weight"]
            x = stacked_linear(x, weight, bias) if offsets is None else ragged_linear(x, weight, bias, offsets)
        elif isinstance(layer, nn.Identity):
            continue
        elif isinstance(layer, nn.Dropout):
            x = F.dropout(x, layer.p, training)
        elif any(True for _ in layer.parameters()):
            raise TypeError(f"{name}: {type(layer).__name__} has parameters and no stacked form")
        else:
            x = layer(x)
    return x


def masked_index_mean(
    values: torch.Tensor, index: torch.Tensor, mask: torch.Tensor | None, size: int, counts: torch.Tensor
) -> torch.Tensor:
    """Mean of ``values [R, F]`` over rows sharing ``index``, rows with ``mask`` 0 left out; empty groups give 0.

    ``counts [size]`` is the number of unmasked rows per group.
    """
    kept = values if mask is None else values * mask.unsqueeze(-1)
    total = values.new_zeros(size, values.shape[-1]).index_add(0, index, kept)
    return total / counts.clamp(min=1).unsqueeze(-1)


def masked_softmax(logits: torch.Tensor, index: torch.Tensor, mask: torch.Tensor | None, size: int) -> torch.Tensor:
    """Softmax of ``logits [R]`` within groups of ``index``, as ``torch_geometric.utils.softmax``; masked rows get 0."""
    valid = torch.ones_like(logits, dtype=torch.bool) if mask is None else mask.bool()
    group_max = logits.new_zeros(size).scatter_reduce(
        0, index, logits.detach().masked_fill(~valid, float("-inf")), reduce="amax", include_self=False
    )
    group_max = group_max.masked_fill(torch.isinf(group_max), 0.0)
    weights = (logits - group_max[index]).masked_fill(~valid, 0.0).exp()
    if mask is not None:
        weights = weights * mask
    denominator = logits.new_zeros(size).index_add(0, index, weights) + 1e-16
    return weights / denominator[index]
