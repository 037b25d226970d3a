"""The LTC target: log10(TC + 1), standardised; statistics travel with the model as buffers."""

from __future__ import annotations

import torch
from torch import nn


def log_target(tc: torch.Tensor) -> torch.Tensor:
    """log10(TC + 1) of a thermal conductivity in W/mK."""
    return torch.log10(tc + 1.0)


def target_statistics(tc: torch.Tensor) -> dict[str, float]:
    """Mean and population std (ddof=0, as the paper's scaler) of log10(TC+1)."""
    y = log_target(tc.double())
    return {"mean": float(y.mean()), "std": float(y.std(unbiased=False))}


def encode_tc(tc: torch.Tensor, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    """TC in W/mK -> standardised log target (``mean``/``std`` broadcast, e.g. one per ensemble member)."""
    return (log_target(tc) - mean) / std


def decode_tc(z: torch.Tensor, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    """Standardised log target -> TC in W/mK (``mean``/``std`` broadcast)."""
    return torch.pow(10.0, z * std + mean) - 1.0


class TargetScaler(nn.Module):
    """TC (W/mK) <-> standardised log10(TC+1). Buffers are saved in checkpoints."""

    mean: torch.Tensor
    std: torch.Tensor

    def __init__(self, mean: float = 0.0, std: float = 1.0) -> None:
        super().__init__()
        if not std > 0:
            raise ValueError(f"target std must be positive, got {std}")
        self.register_buffer("mean", torch.tensor(float(mean)))
        self.register_buffer("std", torch.tensor(float(std)))

    def encode(self, tc: torch.Tensor) -> torch.Tensor:
        """TC in W/mK -> standardised log target."""
        return encode_tc(tc, self.mean, self.std)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """Standardised log target -> TC in W/mK."""
        return decode_tc(z, self.mean, self.std)

    def extra_repr(self) -> str:
        """Statistics shown in the module's repr."""
        return f"mean={float(self.mean):.5f}, std={float(self.std):.5f}"
