"""`ibkr demo` end to end, as `make demo` runs it: a separate process with its own Prefect home and data directory;
checked on what it prints for each of its five steps and on what it stored in the Delta tables."""

from __future__ import annotations

import ast
import json
import re
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path

import polars as pl

from storage.bars_table import scan_bars, table_version
from storage.grid_results_table import read_grid_results
from storage.location import TableLocation
from storage.results_table import read_backtest_results
from tests.helpers_cli import cli_env

SYMBOLS = ["AAPL", "MSFT", "SPY"]
STEPS = ["1/5 TWS preflight", "2/5 Injected fault", "3/5 Ingest", "4/5 Backtest", "5/5 Parameter grid"]


def _sections(output: str) -> list[str]:
    """The output of each step, from its heading to the next one's (the last runs to the end)."""
    starts = [output.find(step) for step in STEPS]
    assert all(s >= 0 for s in starts) and starts == sorted(starts), f"steps missing or out of order:\n{output}"
    return [output[a:b] for a, b in zip(starts, [*starts[1:], len(output)], strict=True)]


def test_demo_runs_the_main_job_end_to_end(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    env = cli_env(tmp_path / "prefect", IBKR_DATA_DIR=str(data_dir), IBKR_PACING_DIR=str(tmp_path / "pacing"))
    result = subprocess.run([sys.executable, "-m", "ibkr_flows.cli.app", "demo", "--data-dir", str(data_dir)],
                            cwd=tmp_path, env=env, capture_output=True, text=True, timeout=280)
    output = result.stdout
    assert result.returncode == 0, f"{output[-4000:]}\n{result.stderr[-4000:]}"
    assert "demo complete" in output and "Traceback" not in output + result.stderr

    health, fault, ingest, backtest, grid = _sections(output)
    assert "HEALTHY" in health and "server version 178" in health
    assert "FAILED" in fault and "client-id-in-use" in fault and "IBKR_CLIENT_ID=11" in fault

    location = TableLocation(data_dir)
    assert table_version(location) is not None
    lazy, _ = scan_bars(location, SYMBOLS, bar_size="1 min", start=datetime(2000, 1, 1, tzinfo=UTC),
                        end=datetime(2100, 1, 1, tzinfo=UTC))
    counts = dict(lazy.group_by("symbol").len().collect().iter_rows())
    assert set(counts) == set(SYMBOLS) and min(counts.values()) >= 390, counts  # at least one full session each
    for symbol, rows in counts.items():  # the report's row for the symbol names what the table holds
        assert re.search(rf"\b{symbol}\s+ok\b.*\b{rows}\b", ingest), f"{symbol}: {rows} rows not reported\n{ingest}"

    assert "total_return_pct" in backtest and "sharpe" in backtest and all(s in backtest for s in SYMBOLS)
    results = read_backtest_results(location)
    assert sorted(results["symbol"].to_list()) == SYMBOLS
    assert results["strategy"].unique().to_list() == ["sma_crossover"]
    assert json.loads(results["params"][0]) == {"fast_period": 5, "slow_period": 10}
    assert f"bars table version {results['bars_version'][0]}" in backtest

    printed = re.search(r"(\d+) combinations in .*; best (\{.*?\}):", grid)
    assert printed, grid
    grid_rows = read_grid_results(location)
    assert grid_rows.height == int(printed.group(1)) > 1
    assert grid_rows.select(pl.col("symbol").unique(), pl.col("run_id").n_unique()).rows() == [("AAPL", 1)]
    best = grid_rows.filter(pl.col("rank") == 1)["params"].to_list()
    assert [json.loads(p) for p in best] == [ast.literal_eval(printed.group(2))]
