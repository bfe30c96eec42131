"""Parameter grids: every combination of a strategy's parameters backtested on the same bars, ranked, and checked
for overfitting (holdout, walk-forward, deflated Sharpe ratio, plateau score).

Modules: `spec` (what to sweep, validated), `kernel` (the numba fill loop for every combination, fed target rows
or decision masks; `charges`, `compiled` and `indicators` are its parts), `builtin` (the built-in strategies'
rules in the kernel, block by block), `realism` (the fill loop with stop-loss, take-profit, trailing stop, flatten
at the close and borrow fees), `evaluate` (one row of metrics per combination), `overfitting` (splits and
statistics), `report` (`run_grid`, the whole procedure).
"""

from ibkr_flows.backtest.grid.evaluate import METRIC_COLUMNS, combination_config, evaluate_grid, metric_row
from ibkr_flows.backtest.grid.overfitting import (
    Fold,
    deflated_sharpe_ratio,
    expected_max_sharpe,
    holdout_split,
    plateau_score,
    walk_forward_folds,
)
from ibkr_flows.backtest.grid.report import Evaluate, GridReport, WalkForward, rank, run_grid
from ibkr_flows.backtest.grid.spec import (
    RANK_METRICS,
    Combination,
    EmptyGridError,
    GridSpec,
    GridSpecError,
    UnknownMetricError,
    UnknownParameterError,
)

__all__ = [
    "METRIC_COLUMNS", "RANK_METRICS", "Combination", "EmptyGridError", "Evaluate", "Fold", "GridReport", "GridSpec",
    "GridSpecError", "UnknownMetricError", "UnknownParameterError", "WalkForward", "combination_config",
    "deflated_sharpe_ratio", "evaluate_grid", "expected_max_sharpe", "holdout_split", "metric_row",
    "plateau_score", "rank", "run_grid", "walk_forward_folds",
]
