"""Names the table command needs before anything heavy is imported (``paraisite --help`` builds every parser)."""

from __future__ import annotations

#: Metrics a run records per evaluated split, and that ``paraisite table --metric`` can reduce.
METRICS: tuple[str, ...] = ("mape", "mae_log10", "rmse_log10", "r2_log10", "true_tc_mape")
