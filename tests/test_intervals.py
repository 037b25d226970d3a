"""Log10(TC) intervals calibrated on held-out folds: coverage on a synthetic case, bounds never at 0 W/mK."""

from __future__ import annotations

import numpy as np
import pytest

from paraisite.evaluation import intervals


def synthetic(n: int = 3000, seed: int = 0):
    """Held-out rows whose error has a part the members see (their spread) and a shared blind spot of 0.2 dex."""
    rng = np.random.default_rng(seed)
    spread = rng.uniform(0.02, 0.3, n)
    true = rng.uniform(-0.5, 2.5, n)
    centre = true + rng.normal(0.0, 1.0, n) * np.hypot(spread, 0.2)
    fold = rng.integers(0, 5, n)
    return centre, spread, true, fold


def test_calibrated_intervals_cover_their_level_on_unseen_folds():
    centre, spread, true, fold = synthetic()
    figures = intervals.cross_fitted(centre, spread, true, fold, floor=0.2)
    assert figures["coverage_95"] == pytest.approx(0.95, abs=0.015)
    assert figures["coverage_68"] == pytest.approx(0.68, abs=0.025)
    # the members' spread alone (no floor) misses the blind spot: still calibrated, but wider where it matters less
    assert intervals.cross_fitted(centre, spread, true, fold, floor=0.0)["coverage_95"] == pytest.approx(0.95, abs=0.02)


def test_fitted_intervals_cover_fresh_rows_drawn_the_same_way():
    centre, spread, true, _ = synthetic(seed=1)
    calibration = intervals.fit(centre, spread, true, floor=0.2, fitted_on="synthetic")
    centre2, spread2, true2, _ = synthetic(seed=2)
    low, high = calibration.bounds(centre2, spread2, 0.95)
    inside = (10.0**true2 >= low) & (10.0**true2 <= high)
    assert inside.mean() == pytest.approx(0.95, abs=0.015)


def test_choose_floor_picks_a_calibrated_narrow_one():
    centre, spread, true, fold = synthetic()
    floor, figures = intervals.choose_floor(centre, spread, true, fold)
    assert 0.90 <= figures[floor]["coverage_95"] <= 0.97
    assert figures[floor]["width_95"] <= min(x["width_95"] for x in figures.values()) + 1e-12


def test_lower_bound_is_never_zero_even_for_tiny_predictions_and_wide_intervals():
    calibration = intervals.LogIntervals({0.68: 3.0, 0.95: 40.0}, 0.5, "test", 10)
    low, high = calibration.bounds(np.array([-3.0, 0.0, 3.0]), np.array([0.0, 1.0, 0.1]), 0.95)
    assert np.all(low > 0)
    assert np.all(high > low)


def test_calibration_round_trips_and_refuses_nonsense():
    calibration = intervals.LogIntervals({0.68: 1.1, 0.95: 2.3}, 0.1, "folds", 500)
    assert intervals.LogIntervals.from_dict(calibration.to_dict(), "m.json") == calibration
    bad = {**calibration.to_dict(), "quantiles": {"0.68": 1.1, "0.95": 0.0}}
    with pytest.raises(ValueError, match=r"m\.json: malformed interval calibration"):
        intervals.LogIntervals.from_dict(bad, "m.json")
    with pytest.raises(ValueError, match="space"):
        intervals.LogIntervals.from_dict({**calibration.to_dict(), "space": "log10(TC+1)"}, "m.json")


def test_interval_of_member_predictions_is_centred_on_their_log_mean():
    calibration = intervals.LogIntervals({0.68: 1.0, 0.95: 2.0}, 0.1, "test", 10)
    member_tc = np.array([[1.0, 100.0], [10.0, 100.0]])  # log10: 0 and 1 (centre 0.5, std 0.5); 2 and 2
    low, high = calibration.interval(member_tc, 0.95)
    np.testing.assert_allclose(low, [10 ** (0.5 - 2.0 * 0.6), 10 ** (2 - 2.0 * 0.1)])
    np.testing.assert_allclose(high, [10 ** (0.5 + 2.0 * 0.6), 10 ** (2 + 2.0 * 0.1)])


def test_read_calibration_takes_every_stored_form_and_names_the_file_on_nonsense():
    from paraisite.evaluation.uncertainty import Calibration

    measured = intervals.LogIntervals({0.68: 1.1, 0.95: 2.3}, 0.5, "measured folds", 155)
    agl = intervals.LogIntervals({0.68: 1.0, 0.95: 1.9}, 1.0, "agl folds", 3643)
    by_fidelity = intervals.FidelityIntervals(measured=measured, agl=agl)
    assert intervals.read_calibration(by_fidelity.to_dict(), "m.json") == by_fidelity
    assert intervals.read_calibration(measured.to_dict(), "m.json") == measured
    older = Calibration({0.95: 3.0}, "own validation", 214)
    assert intervals.read_calibration(older.to_dict(), "m.json") == older
    for bad in ([], {"space": "log10(TC)", "by_fidelity": {}}, {"space": "log10(TC+1)", "by_fidelity": {"a": {}}}):
        with pytest.raises(ValueError, match=r"m\.json: malformed interval calibration"):
            intervals.read_calibration(bad, "m.json")
