"""The `ibkr` command line: `ibkr data connect|ingest`, `ibkr backtest run`, `ibkr sim ...`, `ibkr demo`,
`ibkr up|down` (a local Prefect server with the deployments), `ibkr alerts sync`.

Heavy imports (Prefect, Great Expectations) stay inside the commands that need them so `--help` and the doctor
start fast.
"""

from __future__ import annotations

import os

EPHEMERAL_STARTUP_TIMEOUT_S = "180"
"""Prefect's default (20 s) is too short for a first start on a slow machine (its SQLite database is created then):
a command that needs the temporary server waits up to three minutes, saying so on stderr. Set before Prefect is
imported, and only if the user has not set it."""
os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", EPHEMERAL_STARTUP_TIMEOUT_S)

import typer  # noqa: E402

from ibkr_flows.cli.alerts import alerts_app  # noqa: E402
from ibkr_flows.cli.backtest import backtest_app  # noqa: E402
from ibkr_flows.cli.data import data_app  # noqa: E402
from ibkr_flows.cli.demo import demo  # noqa: E402
from ibkr_flows.cli.sim import sim_app  # noqa: E402
from ibkr_flows.cli.stack import down, up  # noqa: E402

app = typer.Typer(
    help="Interactive Brokers research pipelines: TWS connectivity doctor, historical-bar ingestion into "
    "Delta Lake, and backtests, orchestrated by Prefect. Connection settings come from IBKR_HOST, IBKR_PORT "
    "and IBKR_CLIENT_ID (environment or .env).",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
app.add_typer(data_app, name="data")
app.add_typer(sim_app, name="sim")
app.add_typer(backtest_app, name="backtest")
app.add_typer(alerts_app, name="alerts")
app.command()(demo)
app.command()(up)
app.command()(down)

if __name__ == "__main__":
    app()
