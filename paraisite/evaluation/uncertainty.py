"""How well an ensemble knows its own error: spread against error, interval coverage, conformal calibration.

Everything is measured in the model's target space, ``y = log10(TC + 1)``, on **held-out** rows only:

- *own validation* rows: a crystal of the fine-tuning dataset is scored with the members whose validation split
  held it (out-of-bag, as in the jackknife+-after-bootstrap of Kim, Xu & Barber 2020); crystals that every member
  trained on are left out;
- *cross-dataset* rows: crystals of a dataset none of the members trained on, scored with all members.

The interval of a prediction is ``centre +- q * spread``: ``centre`` the members' mean of ``y``, ``spread`` the
members' population std of ``y`` (what a user sees for a new crystal). Uncalibrated, ``q`` is the Gaussian quantile
(1.0 for 68 %, 1.96 for 95 %). Calibrated, ``q`` is the split-conformal quantile of the normalised error
``|y - centre| / spread`` on own-validation rows (:func:`conformal_quantile`). ``tc_low``/``tc_high`` are the interval
ends mapped back to W/mK.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

#: Nominal levels reported, with their Gaussian quantiles (the uncalibrated intervals).
LEVELS = {0.68: 0.994458, 0.95: 1.959964}
#: Smallest spread used as a denominator (log10 units): members that agree to 1e-6 are not "certain".
MIN_SPREAD = 1e-6


def to_log(tc: np.ndarray) -> np.ndarray:
    """``log10(TC + 1)``, the models' target space."""
    return np.log10(np.asarray(tc, dtype=np.float64) + 1.0)


def from_log(y: np.ndarray) -> np.ndarray:
    """Inverse of :func:`to_log`, in W/mK."""
    return np.power(10.0, np.asarray(y, dtype=np.float64)) - 1.0


@dataclass
class HeldOutRows:
    """Member predictions on an evaluation set, with which members never trained on each row.

    Attributes:
        name: evaluation set (``Dataset1 (own validation)``, ``Dataset2 (cross-dataset)``, ...).
        ids: row identities (``source:id``).
        true_y: ``[N]`` reference ``log10(TC + 1)``.
        member_y: ``[M, N]`` members' predicted ``log10(TC + 1)``.
        held_out: ``[M, N]`` whether member ``m`` never trained on row ``n``.
        percentile: ``[N]`` latent-distance percentile (mean over members), ``None`` without a reference.
        unseen: ``[N]`` whether a row has an element absent from the training data.
    """

    name: str
    ids: list[str]
    true_y: np.ndarray
    member_y: np.ndarray
    held_out: np.ndarray
    percentile: np.ndarray | None
    unseen: np.ndarray

    def usable(self) -> HeldOutRows:
        """Only the rows held out from at least one member."""
        keep = np.asarray(self.held_out.any(axis=0))
        return HeldOutRows(
            self.name,
            [i for i, k in zip(self.ids, keep, strict=True) if k],
            self.true_y[keep],
            self.member_y[:, keep],
            self.held_out[:, keep],
            None if self.percentile is None else self.percentile[keep],
            self.unseen[keep],
        )

    @property
    def centre(self) -> np.ndarray:
        """``[N]`` mean over the held-out members of each row (all members on cross-dataset rows)."""
        weights = self.held_out.astype(np.float64)
        return (self.member_y * weights).sum(axis=0) / np.maximum(weights.sum(axis=0), 1.0)

    @property
    def spread(self) -> np.ndarray:
        """``[N]`` population std over all members (the spread a user sees)."""
        return np.maximum(self.member_y.std(axis=0), MIN_SPREAD)

    @property
    def abs_error(self) -> np.ndarray:
        """``[N]`` ``|y - centre|`` in log10 units."""
        return np.abs(self.true_y - self.centre)

    @property
    def scores(self) -> np.ndarray:
        """``[N]`` normalised errors ``|y - centre| / spread``."""
        return self.abs_error / self.spread

    def to_csv(self, path: str | os.PathLike) -> None:
        """One line per row: id, reference and predicted TC, centre, spread, held-out members, domain inputs."""
        frame = pd.DataFrame(
            {
                "id": self.ids,
                "true_tc": from_log(self.true_y),
                "pred_tc": from_log(self.centre),
                "true_log10": self.true_y,
                "centre_log10": self.centre,
                "spread_log10": self.spread,
                "held_out_members": self.held_out.sum(axis=0),
                "latent_percentile": np.nan if self.percentile is None else self.percentile,
                "unseen_elements": self.unseen,
            }
        )
        frame.to_csv(path, index=False, float_format="%.6g")

    @classmethod
    def from_csv(cls, path: str | os.PathLike, name: str) -> HeldOutRows:
        """Rows written by :meth:`to_csv`, as a one-member view: centres and domain inputs, no spread."""
        frame = pd.read_csv(path)
        centre = frame["centre_log10"].to_numpy(dtype=np.float64)
        percentile = frame["latent_percentile"].to_numpy(dtype=np.float64)
        return cls(
            name,
            frame["id"].astype(str).tolist(),
            frame["true_log10"].to_numpy(dtype=np.float64),
            centre[None, :],
            np.ones((1, len(frame)), dtype=bool),
            None if np.isnan(percentile).all() else percentile,
            frame["unseen_elements"].to_numpy(dtype=bool),
        )

    def mape(self, mask: np.ndarray | None = None) -> float:
        """MAPE of TC (``|pred - true| / true``) of the centre, on ``mask`` rows (all by default)."""
        true_tc, pred_tc = from_log(self.true_y), from_log(self.centre)
        keep = np.ones(len(self.ids), dtype=bool) if mask is None else mask
        if not keep.any():
            return math.nan
        return float(np.mean(np.abs(pred_tc[keep] - true_tc[keep]) / true_tc[keep]))


def spearman(x: np.ndarray, y: np.ndarray) -> float:
    """Spearman rank correlation (average ranks for ties); NaN for fewer than 3 rows."""
    if len(x) < 3:
        return math.nan

    def ranks(values: np.ndarray) -> np.ndarray:
        order = np.argsort(values, kind="mergesort")
        ranked = np.empty(len(values))
        ranked[order] = np.arange(len(values), dtype=np.float64)
        for value in np.unique(values[np.diff(np.sort(values), prepend=np.nan) == 0]):  # tied values: mean rank
            tied = values == value
            ranked[tied] = ranked[tied].mean()
        return ranked

    rx, ry = ranks(np.asarray(x)), ranks(np.asarray(y))
    if rx.std() == 0 or ry.std() == 0:
        return math.nan
    return float(np.corrcoef(rx, ry)[0, 1])


def conformal_quantile(scores: np.ndarray, level: float) -> float:
    """Split-conformal quantile: the ``ceil((n + 1) level)``-th smallest score (inf when n is too small)."""
    n = len(scores)
    rank = math.ceil((n + 1) * level)
    if n == 0 or rank > n:
        return math.inf
    return float(np.sort(scores)[rank - 1])


def coverage(rows: HeldOutRows, quantile: float) -> float:
    """Share of rows whose reference lies within ``centre +- quantile * spread``."""
    if len(rows.ids) == 0:
        return math.nan
    return float(np.mean(rows.scores <= quantile))


def cross_fitted_coverage(rows: HeldOutRows, level: float, folds: int = 5, seed: int = 0) -> float:
    """Coverage of conformal intervals on ``rows`` themselves, each fold calibrated on the other folds."""
    n = len(rows.ids)
    if n < folds:
        return math.nan
    fold_of = np.random.default_rng(seed).permutation(n) % folds
    scores = rows.scores
    covered = np.zeros(n, dtype=bool)
    for fold in range(folds):
        inside = fold_of == fold
        covered[inside] = scores[inside] <= conformal_quantile(scores[~inside], level)
    return float(covered.mean())


@dataclass(frozen=True)
class Calibration:
    """Interval quantiles per nominal level (``{0.68: q, 0.95: q}``) and the rows they were fitted on."""

    quantiles: dict[float, float]
    fitted_on: str
    rows: int

    def interval(self, member_tc: np.ndarray, level: float = 0.95) -> tuple[np.ndarray, np.ndarray]:
        """``(tc_low, tc_high)`` in W/mK from ``[M, B]`` member predictions at a fitted ``level``."""
        member_y = to_log(member_tc)
        centre, spread = member_y.mean(axis=0), np.maximum(member_y.std(axis=0), MIN_SPREAD)
        half = self.quantiles[level] * spread
        return np.maximum(from_log(centre - half), 0.0), from_log(centre + half)

    def to_dict(self) -> dict[str, object]:
        """JSON form (levels as strings)."""
        return {
            "method": "split-conformal, normalised by the members' spread of log10(TC+1)",
            "quantiles": {f"{level:.2f}": q for level, q in self.quantiles.items()},
            "fitted_on": self.fitted_on,
            "rows": self.rows,
        }

    @classmethod
    def from_dict(cls, data: dict[str, object], source: str) -> Calibration:
        """Inverse of :meth:`to_dict`; ``source`` names the file in errors."""
        try:
            quantiles = {float(level): float(q) for level, q in dict(data["quantiles"]).items()}  # type: ignore[call-overload]
            return cls(quantiles, str(data["fitted_on"]), int(data["rows"]))  # type: ignore[call-overload]
        except (KeyError, TypeError, ValueError) as error:
            raise ValueError(f"{source}: malformed calibration ({type(error).__name__}: {error})") from None


def fit_calibration(rows: HeldOutRows, levels: Sequence[float] = tuple(LEVELS)) -> Calibration:
    """Conformal quantiles of ``rows``' normalised errors (own-validation rows of the ensemble)."""
    return Calibration({level: conformal_quantile(rows.scores, level) for level in levels}, rows.name, len(rows.ids))


def uncertainty_report(rows: HeldOutRows, calibration: Calibration, own: bool) -> dict[str, float]:
    """Spread-error correlation and coverage before/after calibration on one evaluation set.

    ``own``: the rows are the ones ``calibration`` was fitted on; their calibrated coverage is then cross-fitted
    (each fold calibrated on the others), so no row scores an interval fitted on itself.
    """
    report: dict[str, float] = {
        "rows": float(len(rows.ids)),
        "mape": rows.mape(),
        "spearman_spread_abs_error": spearman(rows.spread, rows.abs_error),
        "median_spread_log10": float(np.median(rows.spread)),
        "median_abs_error_log10": float(np.median(rows.abs_error)),
    }
    for level, gaussian in LEVELS.items():
        tag = f"{round(level * 100)}"
        report[f"coverage_{tag}_gaussian"] = coverage(rows, gaussian)
        report[f"coverage_{tag}_calibrated"] = (
            cross_fitted_coverage(rows, level) if own else coverage(rows, calibration.quantiles[level])
        )
    return report
