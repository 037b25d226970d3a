"""Value columns of the LTC predictions (a leaf module: the catalog, the predictors and the scan all use them)."""

from __future__ import annotations

#: Single-checkpoint and ensemble LTC columns; calibrated ensembles add the interval columns.
LTC_COLUMNS = ("tc_W_per_mK",)
LTC_ENSEMBLE_COLUMNS = ("tc_W_per_mK", "tc_std_W_per_mK", "tc_rel_std")  # tc_W_per_mK: as one model's
LTC_INTERVAL_COLUMNS = ("tc_low_W_per_mK", "tc_high_W_per_mK", "interval_level")
