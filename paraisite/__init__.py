"""paraisite: graph neural networks for crystal properties (MEGNet transfer learning for thermal conductivity)."""

from __future__ import annotations

__version__ = "0.1.0"
