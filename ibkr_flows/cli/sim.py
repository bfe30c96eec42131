"""`ibkr sim ...`: run the TWS simulator standalone and steer its faults from another terminal."""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Awaitable
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer

from ibkr_flows.cli.json_output import strict_json
from ibkr_flows.sim.control import ControlError, send_command

T = TypeVar("T")

sim_app = typer.Typer(
    help="A local TWS / IB Gateway simulator speaking the real API wire protocol (server version 178). Point "
    "ib_async, this project or your own code at it; inject failures on demand.",
    no_args_is_help=True,
)

FAULT_HELP = (
    "Fault settings as key=value (repeatable): connect=none|not-listening|accept-silence|accept-close|"
    "version-silence|empty-accounts; busy_client_ids=10,11; read_only=true; farm_down=true; "
    "no_data_symbols=AAPL; no_permission_symbols=MSFT; enforce_pacing=true; pacing_all_bar_sizes=true; "
    "time_scale=0.01; latency_seconds=0.5; drop_after_messages=20; "
    "bad_bars=high-below-low:10,negative-volume:7,duplicate-ts:25,misaligned-ts:30."
)


MAX_PORT = 65535
CONTROL_OFFSET = 10000
CONTROL_DEFAULT_HELP = f"port + {CONTROL_OFFSET}, or port - {CONTROL_OFFSET} above {MAX_PORT - CONTROL_OFFSET}"


def _control_port(port: int, control_port: int | None) -> int:
    """The control port: as given, else `CONTROL_DEFAULT_HELP` (17497 for 7497), a valid port for every API port.
    Both ports are range-checked by their options; one port cannot serve both."""
    if control_port is None:
        above = port + CONTROL_OFFSET
        control_port = above if above <= MAX_PORT else port - CONTROL_OFFSET
    if control_port == port:
        raise typer.BadParameter(f"the control port must differ from the API port ({port})",
                                 param_hint="--control-port")
    return control_port


@sim_app.command("start")
def start(
    port: Annotated[int, typer.Option(help="API port to listen on (7497 = TWS paper).", min=1, max=MAX_PORT)
                    ] = 7497,
    host: Annotated[str, typer.Option(help="Bind address. Keep loopback unless you mean it.")] = "127.0.0.1",
    fault: Annotated[list[str] | None, typer.Option("--fault", "-f", help=FAULT_HELP)] = None,
    replay: Annotated[Path | None, typer.Option(help="Serve bars from this Parquet/CSV file instead of the "
                                                     "seeded generator.")] = None,
    seed: Annotated[int, typer.Option(help="Seed of the synthetic bar generator.")] = 7,
    account: Annotated[list[str] | None, typer.Option(help="Managed account ids (default DU1234567).")] = None,
    control_port: Annotated[int | None, typer.Option(
        help=f"Control port for `ibkr sim set` (default: {CONTROL_DEFAULT_HELP}).", min=1, max=MAX_PORT)] = None,
) -> None:
    """Run the simulator in the foreground until Ctrl-C."""
    from ibkr_flows.sim.bars import SyntheticBars
    from ibkr_flows.sim.control import serve_control
    from ibkr_flows.sim.faults import Faults, parse_assignments
    from ibkr_flows.sim.replay_bars import ReplayBars
    from ibkr_flows.sim.server import TWSSimulator

    ctl_port = _control_port(port, control_port)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    try:
        faults = Faults().updated(parse_assignments(fault or []))
    except ValueError as exc:
        raise typer.BadParameter(str(exc), param_hint="--fault") from exc
    source = ReplayBars(replay) if replay else SyntheticBars(seed=seed)
    sim = TWSSimulator(host, port, faults=faults, bar_source=source, accounts=account or ["DU1234567"])

    async def serve() -> None:
        await _listening(sim.start(), host, port)
        control = await _listening(serve_control(sim, "127.0.0.1", ctl_port), "127.0.0.1", ctl_port)
        typer.echo(f"TWS simulator on {host}:{port} (listening: {sim.listening}), control on 127.0.0.1:{ctl_port}; "
                   f"faults: {json.dumps(faults.to_json())}", err=True)
        try:
            await asyncio.Event().wait()
        finally:
            control.close()
            await sim.stop()

    try:
        asyncio.run(serve())
    except KeyboardInterrupt:
        typer.echo("simulator stopped", err=True)


async def _listening(start: Awaitable[T], host: str, port: int) -> T:
    """Start a listener; a port that cannot be bound is a one-line error (exit 1), not a traceback."""
    try:
        return await start
    except OSError as exc:
        typer.echo(f"error: cannot listen on {host}:{port}: {exc.strerror or exc}; choose another port "
                   "(`--port`, `--control-port`)", err=True)
        raise typer.Exit(1) from exc


def _command(request: dict[str, Any], port: int, control_port: int | None) -> None:
    try:
        reply = send_command("127.0.0.1", _control_port(port, control_port), request)
    except ControlError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from exc
    typer.echo(strict_json(reply))


PortOption = Annotated[int, typer.Option(help="The simulator's API port.", min=1, max=MAX_PORT)]
ControlOption = Annotated[int | None, typer.Option(help=f"Its control port (default: {CONTROL_DEFAULT_HELP}).",
                                                   min=1, max=MAX_PORT)]


@sim_app.command("set")
def set_faults(
    assignments: Annotated[list[str], typer.Argument(help=FAULT_HELP)],
    port: PortOption = 7497,
    control_port: ControlOption = None,
) -> None:
    """Change fault settings of a running simulator, e.g. `ibkr sim set connect=accept-silence`."""
    from ibkr_flows.sim.faults import parse_assignments

    try:
        changes = parse_assignments(assignments)
    except ValueError as exc:
        raise typer.BadParameter(str(exc)) from exc
    _command({"cmd": "set", "faults": {k: sorted(v) if isinstance(v, set) else v for k, v in changes.items()}},
             port, control_port)


@sim_app.command("reset")
def reset(port: PortOption = 7497, control_port: ControlOption = None) -> None:
    """Clear every fault."""
    _command({"cmd": "reset"}, port, control_port)


@sim_app.command("status")
def status(port: PortOption = 7497, control_port: ControlOption = None) -> None:
    """Counters (connections, requests per type, pacing violations, bytes) and the current faults."""
    _command({"cmd": "status"}, port, control_port)


@sim_app.command("drop")
def drop(port: PortOption = 7497, control_port: ControlOption = None) -> None:
    """Close every client connection now."""
    _command({"cmd": "drop"}, port, control_port)


@sim_app.command("restart")
def restart(
    down_for: Annotated[float, typer.Option(help="Seconds nothing listens.")] = 5.0,
    port: PortOption = 7497,
    control_port: ControlOption = None,
) -> None:
    """Simulate TWS's nightly restart: drop everyone, stop listening for a while, come back."""
    _command({"cmd": "restart", "down_for": down_for}, port, control_port)


@sim_app.command("lose-connectivity")
def lose_connectivity(
    restore_after: Annotated[float | None, typer.Option(help="Seconds until 1102 (default: stay lost).")] = None,
    port: PortOption = 7497,
    control_port: ControlOption = None,
) -> None:
    """Send 1100 (IB servers unreachable) to every client; 1102 after --restore-after seconds."""
    _command({"cmd": "lose-connectivity", "restore_after": restore_after}, port, control_port)


@sim_app.command("restore-connectivity")
def restore_connectivity(port: PortOption = 7497, control_port: ControlOption = None) -> None:
    """Send 1102 (connectivity restored, data maintained) after `lose-connectivity`."""
    _command({"cmd": "restore-connectivity"}, port, control_port)


@sim_app.command("as-of")
def as_of(
    day: Annotated[str | None, typer.Argument(help="A day (YYYY-MM-DD) to live on for historical data.")] = None,
    clear: Annotated[bool, typer.Option("--clear", help="Back to the simulator's clock.")] = False,
    port: PortOption = 7497,
    control_port: ControlOption = None,
) -> None:
    """Serve history as IB did on DAY: no bars after it, and splits and dividends after it not yet applied.
    Ingest, move the day past a split (AAPL's 4:1 took effect 2020-08-31), ingest again, and watch the stored
    history get re-scaled."""
    from datetime import date

    if clear == (day is not None):
        raise typer.BadParameter("give a DAY or --clear (not both)")
    if day is not None:
        try:
            date.fromisoformat(day)
        except ValueError as exc:
            raise typer.BadParameter(f"DAY must be YYYY-MM-DD, got {day!r}") from exc
    _command({"cmd": "as-of", "day": day}, port, control_port)
