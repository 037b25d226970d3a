"""Prediction intervals in log10(TC), calibrated on crystals of held-out groups (out of family).

The interval of a prediction is ``centre +- q * (spread + floor)`` in log10(TC): ``centre`` the members' mean of
log10 TC, ``spread`` their population std, ``floor`` a width every prediction has however much the members agree
(members trained on the same data share their blind spots: out of family, their spread alone under-covers).
``q`` is the split-conformal quantile of ``|log10 TC - centre| / (spread + floor)`` on held-out groups. In W/mK the
interval is ``[10**(centre - h), 10**(centre + h)]``: its lower end is never 0.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from paraisite.evaluation.uncertainty import Calibration, conformal_quantile

#: Nominal levels: the 68 % and 95 % intervals.
LEVELS = (0.68, 0.95)
#: Floors tried by :func:`choose_floor` (log10 units; 1.0 is close to a constant width).
FLOOR_CANDIDATES = (0.0, 0.02, 0.05, 0.1, 0.2, 0.3, 0.5, 1.0)


@dataclass(frozen=True)
class LogIntervals:
    """Calibrated interval quantiles (``{level: q}``), the floor, and what they were fitted on."""

    quantiles: dict[float, float]
    floor: float
    fitted_on: str
    rows: int

    def half_width(self, spread_log10: np.ndarray, level: float) -> np.ndarray:
        """Half width in log10 units."""
        return self.quantiles[level] * (np.asarray(spread_log10, dtype=np.float64) + self.floor)

    def bounds(self, centre_log10: np.ndarray, spread_log10: np.ndarray, level: float) -> tuple[np.ndarray, np.ndarray]:
        """``(tc_low, tc_high)`` in W/mK; ``tc_low > 0`` for every finite centre."""
        centre = np.asarray(centre_log10, dtype=np.float64)
        half = self.half_width(spread_log10, level)
        return np.power(10.0, centre - half), np.power(10.0, centre + half)

    def interval(self, member_tc: np.ndarray, level: float = 0.95) -> tuple[np.ndarray, np.ndarray]:
        """``(tc_low, tc_high)`` in W/mK from ``[M, B]`` member predictions (centre: their mean of log10 TC)."""
        logs = np.log10(np.clip(np.asarray(member_tc, dtype=np.float64), 1e-6, None))
        return self.bounds(logs.mean(axis=0), logs.std(axis=0), level)

    def to_dict(self) -> dict[str, object]:
        """JSON form (levels as strings)."""
        return {
            "method": "split-conformal on held-out groups, |log10 TC - centre| / (member spread + floor)",
            "space": "log10(TC)",
            "floor": self.floor,
            "quantiles": {f"{level:.2f}": q for level, q in self.quantiles.items()},
            "fitted_on": self.fitted_on,
            "rows": self.rows,
        }

    @classmethod
    def from_dict(cls, data: dict[str, object], source: str) -> LogIntervals:
        """Inverse of :meth:`to_dict`; ``source`` names the file in errors."""
        try:
            if data.get("space") != "log10(TC)":
                raise ValueError(f"space {data.get('space')!r} is not log10(TC)")
            quantiles = {float(k): float(v) for k, v in dict(data["quantiles"]).items()}  # type: ignore[call-overload]
            floor = float(data["floor"])  # type: ignore[arg-type]
            if not all(math.isfinite(q) and q > 0 for q in quantiles.values()) or not 0 <= floor < 10:
                raise ValueError(f"quantiles {quantiles} and floor {floor} must be finite and positive")
            return cls(quantiles, floor, str(data["fitted_on"]), int(data["rows"]))  # type: ignore[call-overload]
        except (KeyError, TypeError, ValueError) as error:
            raise ValueError(f"{source}: malformed interval calibration ({type(error).__name__}: {error})") from None


class FidelityIntervals(dict[str, LogIntervals]):
    """A multi-fidelity model's intervals, one calibration per fidelity (``{"measured": LogIntervals, ...}``)."""

    def to_dict(self) -> dict[str, object]:
        """JSON form: ``{"space": "log10(TC)", "by_fidelity": {name: LogIntervals.to_dict()}}``."""
        return {"space": "log10(TC)", "by_fidelity": {name: item.to_dict() for name, item in self.items()}}


def read_calibration(data: object, source: str) -> Calibration | LogIntervals | FidelityIntervals:
    """A manifest's ``calibration`` entry: per fidelity, in log10(TC), or the older own-validation form.

    ``source`` names the file in errors.
    """
    if not isinstance(data, dict):
        raise ValueError(f"{source}: malformed interval calibration (not a JSON object)")
    if "by_fidelity" in data:
        by_fidelity = data["by_fidelity"]
        if data.get("space") != "log10(TC)" or not isinstance(by_fidelity, dict) or not by_fidelity:
            raise ValueError(f"{source}: malformed interval calibration (by_fidelity)")
        return FidelityIntervals({str(k): LogIntervals.from_dict(v, source) for k, v in by_fidelity.items()})
    if "space" in data:
        return LogIntervals.from_dict(data, source)
    return Calibration.from_dict(data, source)


def scores(centre: np.ndarray, spread: np.ndarray, true_log10: np.ndarray, floor: float) -> np.ndarray:
    """Normalised errors ``|true - centre| / (spread + floor)`` (a zero scale counts as 1e-9)."""
    scale = np.maximum(np.asarray(spread, dtype=np.float64) + floor, 1e-9)
    return np.abs(np.asarray(true_log10) - np.asarray(centre)) / scale


def fit(
    centre: np.ndarray, spread: np.ndarray, true_log10: np.ndarray, floor: float, fitted_on: str,
    levels: Sequence[float] = LEVELS,
) -> LogIntervals:  # fmt: skip
    """Conformal quantiles at ``levels`` of the rows' normalised errors."""
    values = scores(centre, spread, true_log10, floor)
    return LogIntervals({level: conformal_quantile(values, level) for level in levels}, floor, fitted_on, len(values))


def cross_fitted(
    centre: np.ndarray, spread: np.ndarray, true_log10: np.ndarray, fold: np.ndarray, floor: float,
    levels: Sequence[float] = LEVELS,
) -> dict[str, float]:  # fmt: skip
    """Coverage and mean width of intervals for each fold's rows, calibrated on the other folds' rows only.

    Returns ``coverage_<68|95>`` and ``width_<68|95>`` (mean full width, log10 units).
    """
    centre, spread, true_log10, fold = map(np.asarray, (centre, spread, true_log10, fold))
    values = scores(centre, spread, true_log10, floor)
    result: dict[str, float] = {}
    for level in levels:
        covered = np.zeros(len(values), dtype=bool)
        width = np.zeros(len(values))
        for k in np.unique(fold):
            inside = fold == k
            q = conformal_quantile(values[~inside], level)
            covered[inside] = values[inside] <= q
            width[inside] = 2 * q * (spread[inside] + floor)
        tag = round(level * 100)
        result[f"coverage_{tag}"] = float(covered.mean())
        result[f"width_{tag}"] = float(width.mean())
    return result


def choose_floor(
    centre: np.ndarray, spread: np.ndarray, true_log10: np.ndarray, fold: np.ndarray,
    candidates: Sequence[float] = FLOOR_CANDIDATES,
) -> tuple[float, dict[float, dict[str, float]]]:  # fmt: skip
    """The floor whose cross-fitted 95 % intervals are narrowest among the calibrated ones.

    Calibrated: 95 % intervals covering 90-97 % and 68 % ones 60-76 %. If none is, the floor whose 95 % coverage is
    closest to 95 %. Returns it and every candidate's figures.
    """
    figures = {floor: cross_fitted(centre, spread, true_log10, fold, floor) for floor in candidates}
    good = [f for f, x in figures.items() if 0.90 <= x["coverage_95"] <= 0.97 and 0.60 <= x["coverage_68"] <= 0.76]
    if good:
        return min(good, key=lambda f: figures[f]["width_95"]), figures
    return min(figures, key=lambda f: abs(figures[f]["coverage_95"] - 0.95)), figures
