"""Prediction heads on top of backbone features."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

ACTIVATIONS: dict[str, type[nn.Module]] = {
    "relu": nn.ReLU,
    "silu": nn.SiLU,
    "softplus": nn.Softplus,
    "tanh": nn.Tanh,
    "gelu": nn.GELU,
}


class MLPHead(nn.Module):
    """Multi-layer perceptron: ``[Linear, activation, dropout]`` per hidden layer, then a final Linear."""

    def __init__(
        self,
        in_dim: int,
        hidden: Sequence[int] = (450, 350, 350),
        activation: str = "relu",
        dropout: float = 0.0,
        out_dim: int = 1,
    ):
        """Build the head.

        Args:
            in_dim: Size of the input features.
            hidden: Sizes of the hidden layers; empty for a single Linear.
            activation: Name of the activation, a key of :data:`ACTIVATIONS`.
            dropout: Dropout probability after each hidden activation (0 for none).
            out_dim: Number of outputs.
        """
        super().__init__()
        if activation not in ACTIVATIONS:
            raise ValueError(f"unknown activation {activation!r}; valid names: {', '.join(ACTIVATIONS)}")
        layers: list[nn.Module] = []
        width = in_dim
        for size in hidden:
            layers += [nn.Linear(width, size), ACTIVATIONS[activation]()]
            if dropout:
                layers.append(nn.Dropout(dropout))
            width = size
        layers.append(nn.Linear(width, out_dim))
        self.layers = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Outputs ``(B, out_dim)`` for features ``(B, in_dim)``."""
        return self.layers(x)
