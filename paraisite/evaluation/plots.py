"""Pictures of a run: its training curves, and predicted vs true TC (parity) on log axes.

matplotlib is imported inside the functions (0.4 s): importing this module costs nothing.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

#: File names a run writes.
CURVES_NAME = "curves.png"
VAL_PREDICTIONS_NAME = "val_predictions.csv"
#: Columns of :data:`VAL_PREDICTIONS_NAME` (and what ``paraisite plot parity`` reads from a CSV by default).
TRUE_COLUMN = "true_tc_W_per_mK"
PREDICTED_COLUMN = "tc_W_per_mK"


def _integer_ticks(axis: Any) -> None:
    from matplotlib.ticker import MaxNLocator

    axis.xaxis.set_major_locator(MaxNLocator(integer=True))


def _figure(width: float, height: float) -> Any:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(figure)
    return figure


def plot_curves(
    train_loss: Sequence[Sequence[float]],
    val_mape: Sequence[Sequence[float]],
    path: str | os.PathLike,
    names: Sequence[str] = (),
    title: str = "",
) -> Path:
    """Training loss and validation MAPE per epoch, one line per member (one member: a single model).

    Args:
        train_loss: per member, the training loss of each epoch (NaN where not recorded).
        val_mape: per member, the validation MAPE of each epoch.
        path: the PNG to write.
        names: a label per member (legend shown for more than one).
        title: the figure's title.
    """
    figure = _figure(10.0, 4.0)
    loss_axis, mape_axis = figure.subplots(1, 2)
    for axis, series, label in ((loss_axis, train_loss, "training loss"), (mape_axis, val_mape, "validation MAPE")):
        for member, values in enumerate(series):
            epochs = np.arange(len(values))
            name = names[member] if member < len(names) else f"member {member}"
            axis.plot(epochs, np.asarray(values, dtype=float), marker="." if len(values) < 30 else None, label=name)
        axis.set_xlabel("epoch")
        _integer_ticks(axis)
        axis.set_ylabel(label)
        axis.set_title(label)
        axis.grid(alpha=0.3)
        if len(series) > 1:
            axis.legend(fontsize=8)
    figure.suptitle(title)
    figure.savefig(path, dpi=110)
    return Path(path)


def plot_parity(
    true: np.ndarray, predicted: np.ndarray, path: str | os.PathLike, title: str = "", label: str = "TC (W/mK)"
) -> Path:
    """Predicted vs true on log axes, with the line y = x and the MAPE in the legend; non-positive pairs left out.

    Raises:
        ValueError: no pair with both values finite and positive.
    """
    true, predicted = np.asarray(true, dtype=float), np.asarray(predicted, dtype=float)
    keep = np.isfinite(true) & np.isfinite(predicted) & (true > 0) & (predicted > 0)
    if not keep.any():
        raise ValueError("no structure has both a positive true and a positive predicted value to plot")
    true, predicted = true[keep], predicted[keep]
    mape = float(np.mean(np.abs(predicted - true) / true))
    figure = _figure(5.0, 5.0)
    axis = figure.subplots()
    low = 10 ** np.floor(np.log10(min(true.min(), predicted.min())))
    high = 10 ** np.ceil(np.log10(max(true.max(), predicted.max())))
    axis.plot([low, high], [low, high], color="grey", linewidth=1, label="y = x")
    axis.scatter(true, predicted, s=12, alpha=0.7, label=f"{keep.sum()} structures, MAPE {mape:.3f}")
    axis.set_xscale("log")
    axis.set_yscale("log")
    axis.set_xlim(low, high)
    axis.set_ylim(low, high)
    axis.set_aspect("equal")
    axis.set_xlabel(f"true {label}")
    axis.set_ylabel(f"predicted {label}")
    axis.grid(alpha=0.3, which="both")
    axis.legend(loc="upper left", fontsize=8)
    axis.set_title(title, fontsize=9)
    figure.savefig(path, dpi=110)
    return Path(path)
