from __future__ import annotations

import pytest
import torch
from torch import nn

from paraisite.models.heads import MLPHead


@pytest.mark.parametrize("hidden", [[], [8], [450, 350, 350], (32, 16)])
@pytest.mark.parametrize("out_dim", [1, 3])
def test_shapes(hidden: list[int], out_dim: int):
    head = MLPHead(16, hidden=hidden, out_dim=out_dim)
    linears = [m for m in head.modules() if isinstance(m, nn.Linear)]
    assert [layer.out_features for layer in linears] == [*hidden, out_dim]
    assert head(torch.randn(5, 16)).shape == (5, out_dim)
    assert head(torch.randn(1, 16)).shape == (1, out_dim)


def test_default_hidden_and_activation():
    head = MLPHead(16, activation="silu")
    assert [m.out_features for m in head.modules() if isinstance(m, nn.Linear)] == [450, 350, 350, 1]
    assert sum(isinstance(m, nn.SiLU) for m in head.modules()) == 3


def test_dropout_only_in_train_mode():
    torch.manual_seed(0)
    head = MLPHead(16, hidden=[64, 64], dropout=0.5)
    x = torch.randn(4, 16)
    head.train()
    assert not torch.equal(head(x), head(x))
    head.eval()
    assert torch.equal(head(x), head(x))


def test_no_dropout_layers_when_zero():
    head = MLPHead(16, hidden=[8, 8], dropout=0.0)
    assert not any(isinstance(m, nn.Dropout) for m in head.modules())


def test_bad_activation():
    with pytest.raises(ValueError, match=r"unknown activation 'swish'.*relu, silu, softplus, tanh, gelu"):
        MLPHead(16, activation="swish")
