"""The data directory on object storage (issue 17): every table, the ingestion, a backtest, the table upkeep, two
writer processes racing and a writer killed mid-commit, against a real S3 API over HTTP — moto's standalone server,
started here as its own process — with credentials and endpoint taken from the standard AWS_* environment
variables, as a user configures them."""

from __future__ import annotations

import asyncio
import multiprocessing
import os
import signal
import socket
import subprocess
import sys
import textwrap
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import boto3
import polars as pl
import pytest
from deltalake import CommitProperties, DeltaTable, write_deltalake
from deltalake.exceptions import CommitFailedError
from typer.testing import CliRunner

from storage.bars_table import merge_bars, read_bars, scan_bars, table_version
from storage.errors import NotADeltaTableError, UnsupportedLocationError
from storage.grid_results_table import GRID_RESULTS_SCHEMA, append_grid_results, read_grid_results
from storage.location import TableLocation, storage_options
from storage.maintenance import compact, vacuum
from storage.quarantine_table import append_quarantine, read_quarantine
from storage.results_table import RESULTS_SCHEMA, append_backtest_results, read_backtest_results, result_row
from storage.tables import append_once, exists, open_table
from storage.trades_table import append_trades, read_trades
from tests.test_bars_append_race import curve, expected_keys, writer
from tests.test_storage import JULY, make_bars

BUCKET = "ibkr-flows-test"
CREDENTIALS = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_REGION": "us-east-1",
               "AWS_ALLOW_HTTP": "true"}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def s3_endpoint(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """moto's S3 server in a process of its own, on a free port; its URL once it accepts connections."""
    port = _free_port()
    log = tmp_path_factory.mktemp("moto") / "server.log"
    with log.open("w") as out:
        server = subprocess.Popen([str(Path(sys.executable).parent / "moto_server"), "-H", "127.0.0.1", "-p",
                                   str(port)], stdout=out, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                if server.poll() is not None or time.monotonic() > deadline:
                    pytest.fail(f"moto_server did not start: {log.read_text()}")
                time.sleep(0.1)
        endpoint = f"http://127.0.0.1:{port}"
        boto3.client("s3", endpoint_url=endpoint, aws_access_key_id="testing", aws_secret_access_key="testing",
                     region_name="us-east-1").create_bucket(Bucket=BUCKET)
        yield endpoint
    finally:
        server.terminate()
        server.wait(timeout=30)


@pytest.fixture
def s3_env(s3_endpoint: str, monkeypatch: pytest.MonkeyPatch) -> str:
    """The environment a user sets for an S3-compatible store (processes started by the test inherit it)."""
    for name, value in {**CREDENTIALS, "AWS_ENDPOINT_URL": s3_endpoint}.items():
        monkeypatch.setenv(name, value)
    return s3_endpoint


@pytest.fixture
def s3_location(s3_env: str) -> TableLocation:
    """A data directory of its own under the bucket, as IBKR_DATA_DIR would name it."""
    return TableLocation(f"s3://{BUCKET}/{uuid.uuid4().hex[:12]}/")


def s3_keys(s3_endpoint: str, prefix: str) -> list[str]:
    client = boto3.client("s3", endpoint_url=s3_endpoint, aws_access_key_id="testing",
                          aws_secret_access_key="testing", region_name="us-east-1")
    pages = client.get_paginator("list_objects_v2").paginate(Bucket=BUCKET, Prefix=prefix)
    return [item["Key"] for page in pages for item in page.get("Contents", [])]


def _prefix(uri: str) -> str:
    return uri.removeprefix(f"s3://{BUCKET}/")


def test_a_data_dir_uri_stays_a_uri_and_its_options_come_from_the_environment(s3_env: str) -> None:
    location = TableLocation.at(f"s3://{BUCKET}/research/")
    assert location.bars == f"s3://{BUCKET}/research/bars"  # pathlib would have made it s3:/ibkr-flows-test/...
    assert storage_options(location.bars) == {**CREDENTIALS, "AWS_ENDPOINT_URL": s3_env}
    assert storage_options(TableLocation("data").bars) is None
    assert TableLocation("file:///tmp/x").bars == "/tmp/x/bars"
    with pytest.raises(UnsupportedLocationError, match="s3://"):
        TableLocation("ftp://host/data")


def test_every_table_writes_reads_and_travels_in_time_on_s3(s3_location: TableLocation) -> None:
    first = merge_bars(s3_location, make_bars("AAPL", JULY, 120))
    assert (first.operation, first.version) == ("create", 0)
    merge_bars(s3_location, make_bars("AAPL", JULY + timedelta(minutes=120), 60))
    assert merge_bars(s3_location, make_bars("AAPL", JULY, 120)).operation == "none"  # a re-run stores nothing
    bars, version = read_bars(s3_location, ["AAPL"], columns=["ts", "close"], bar_size="1 min", start=JULY,
                              end=JULY + timedelta(days=1))
    assert (bars.height, version) == (180, 1) and bars["ts"].is_sorted()
    before, _ = read_bars(s3_location, ["AAPL"], columns=["ts"], bar_size="1 min", start=JULY,
                          end=JULY + timedelta(days=1), version=0)
    assert before.height == 120

    bad = make_bars("AAPL", JULY, 2).with_columns(failed_check=pl.lit("high_ge_low"), check_detail=pl.lit("x"))
    assert append_quarantine(s3_location, bad) == 2 and append_quarantine(s3_location, bad) == 0
    assert read_quarantine(s3_location).height == 2

    trades = pl.DataFrame({"entry_time": [JULY], "exit_time": [JULY + timedelta(minutes=5)], "side": ["long"],
                           "size": [10.0], "entry_price": [1.0], "exit_price": [1.1], "pnl": [1.0],
                           "return_pct": [10.0], "commission": [1.0]})
    assert append_trades(s3_location, "run1", {"AAPL": trades}) == 1
    assert append_trades(s3_location, "run1", {"AAPL": trades}) == 0  # a retried store appends nothing
    assert read_trades(s3_location, "run1")["duration"].to_list() == [timedelta(minutes=5)]

    row = result_row(identity={"run_id": "run1", "symbol": "AAPL", "params": {"fast": 5}}, metrics={"bars": 180})
    row = {**dict.fromkeys(RESULTS_SCHEMA), **row}
    assert append_backtest_results(s3_location, "run1", [row]) == 1
    assert append_backtest_results(s3_location, "run1", [row]) == 0
    assert read_backtest_results(s3_location)["params"].to_list() == ['{"fast": 5}']

    assert read_grid_results(s3_location).is_empty()  # no grid table yet
    grid = pl.concat([pl.DataFrame(schema=GRID_RESULTS_SCHEMA),
                      pl.DataFrame({"run_id": ["g1", "g1"], "rank": [1, 2], "params": ['{"a": 1}', '{"a": 2}']})],
                     how="diagonal_relaxed")
    assert append_grid_results(s3_location, "g1", grid) == 2 and append_grid_results(s3_location, "g1", grid) == 0
    assert read_grid_results(s3_location, "g1")["rank"].to_list() == [1, 2]

    keys = s3_keys(os.environ["AWS_ENDPOINT_URL"], _prefix(str(s3_location.root)))
    tables = {key.split("/")[1] for key in keys}
    assert tables == {"bars", "quarantine", "backtest_trades", "backtest_results", "grid_results"}


def test_a_missing_table_is_named_not_created_by_reading(s3_location: TableLocation) -> None:
    assert not exists(s3_location.bars) and table_version(s3_location) is None
    with pytest.raises(NotADeltaTableError, match="no table there yet"):
        read_bars(s3_location, ["AAPL"], columns=["ts"], bar_size="1 min", start=JULY, end=JULY + timedelta(1))
    assert read_backtest_results(s3_location).is_empty()


def test_delta_rs_commits_with_a_conditional_put_on_s3(s3_location: TableLocation) -> None:
    """What makes concurrent writers on S3 safe without a lock service (delta-rs >= 1.0): a commit of a version
    another writer already committed is refused by the store (If-None-Match), not written over it."""
    path = s3_location.table("probe")
    frame = pl.DataFrame({"x": [1, 2]}).to_arrow()
    write_deltalake(path, frame, mode="error", storage_options=storage_options(path))
    stale = DeltaTable(path, storage_options=storage_options(path))  # a writer that read version 0
    write_deltalake(path, frame, mode="append", storage_options=storage_options(path))  # another lands version 1
    with pytest.raises(CommitFailedError):  # the stale writer's version-1 commit: the object exists, refused
        write_deltalake(stale, frame, mode="append", commit_properties=CommitProperties(max_commit_retries=0))
    table = DeltaTable(path, storage_options=storage_options(path))
    assert table.version() == 1 and len(table.history()) == 2


def test_compaction_and_vacuum_on_s3_keep_every_row(s3_location: TableLocation) -> None:
    for k in range(6):  # six small files in one month
        merge_bars(s3_location, make_bars("SPY", JULY + timedelta(minutes=30 * k), 30))
    before = read_all(s3_location)
    result = compact(s3_location.bars)
    assert result.files_removed >= 6 and result.files_added >= 1
    assert read_all(s3_location).equals(before)
    data_files = [k for k in s3_keys(os.environ["AWS_ENDPOINT_URL"], _prefix(s3_location.bars))
                  if k.endswith(".parquet")]
    deleted = vacuum(s3_location.bars, retention_hours=0)
    assert len(deleted) == result.files_removed
    remaining = [k for k in s3_keys(os.environ["AWS_ENDPOINT_URL"], _prefix(s3_location.bars))
                 if k.endswith(".parquet")]
    assert len(remaining) == len(data_files) - len(deleted)
    assert read_all(s3_location).equals(before)  # the compacted version reads from the files kept
    assert len(open_table(s3_location.bars).file_uris()) == len(remaining)


def read_all(location: TableLocation) -> pl.DataFrame:
    lazy, _ = scan_bars(location, ["AAPL", "MSFT", "SPY"], bar_size="1 min", start=JULY, end=JULY + timedelta(365))
    return lazy.collect()


def test_append_once_on_s3_stores_a_run_once_however_often_it_is_retried(s3_location: TableLocation) -> None:
    path = s3_location.table("runs")
    frame = pl.DataFrame({"run_id": ["r1"] * 3, "value": [1.0, 2.0, 3.0]})
    assert [append_once(path, frame, "runs:r1", what="test") for _ in range(3)] == [3, 0, 0]
    assert pl.read_delta(path, storage_options=storage_options(path)).height == 3


NOW = datetime(2024, 7, 12, 22, 0, tzinfo=UTC)


def test_an_ingestion_into_s3_and_a_backtest_reading_it_there(s3_location: TableLocation, tmp_path: Path) -> None:
    """The real ingestion (ib_async against the simulator, quality checks, Delta MERGEs) with IBKR_DATA_DIR an S3
    URI, run twice (the second resumes from the watermark it reads on S3), then `ibkr backtest run` on the bars
    stored there, its result and trades stored there too."""
    from ibkr_flows.cli.app import app
    from ibkr_flows.ingest.engine import ingest_async
    from ibkr_flows.ingest.pacing import PacingBudget
    from ibkr_flows.ingest.request import IngestRequest
    from ibkr_flows.settings import IBKRSettings
    from ibkr_flows.sim.embedded import EmbeddedSimulator

    def ingest(sim: EmbeddedSimulator) -> Any:
        request = IngestRequest(symbols=("AAPL", "MSFT"), start=datetime(2024, 7, 10, tzinfo=UTC), end=NOW,
                                quality_engine="polars")
        settings = IBKRSettings(host=sim.host, port=sim.port, client_id=71, connect_timeout=2.0)
        budget = PacingBudget(tmp_path / "pacing.json", time_scale=0.01)
        return asyncio.run(ingest_async(request, s3_location, settings, flow_run_id="s3-test", budget=budget))

    with EmbeddedSimulator(clock=lambda: NOW) as sim:
        first = ingest(sim)
        second = ingest(sim)
    assert [(s.status, s.rows_inserted) for s in first.symbols] == [("ok", 390 * 3), ("ok", 390 * 3)]
    assert all(s.rows_inserted == 0 for s in second.symbols)
    stored, version = read_bars(s3_location, ["AAPL", "MSFT"], columns=["symbol", "ts"], bar_size="1 min",
                                start=datetime(2024, 7, 10, tzinfo=UTC), end=NOW)
    assert stored.height == 2 * 390 * 3 and stored.select(pl.struct("symbol", "ts").is_unique().all()).item()

    args = ["backtest", "run", "--strategy", "sma_crossover", "--symbol", "AAPL", "--start", "2024-07-11 13:30:00",
            "--end", "2024-07-11 20:00:00", "--fast-period", "5", "--slow-period", "10", "--json"]
    result = CliRunner().invoke(app, args, env={"IBKR_DATA_DIR": str(s3_location.root)})
    assert result.exit_code == 0, result.output
    results = read_backtest_results(s3_location)
    assert results.height == 1 and results["bars_version"].to_list() == [version]
    assert results["bars"].to_list() == [390]
    assert read_trades(s3_location, results["run_id"][0]).height == results["trades"][0]


ROOT = Path(__file__).resolve().parents[1]
ROUNDS = 6


def test_two_processes_racing_on_s3_both_land_and_never_duplicate(s3_location: TableLocation) -> None:
    """The bars race of tests/test_bars_append_race.py on S3: delta-rs' conditional put refuses the later of two
    commits of one version, the loser plans again; every bar of both writers is stored once."""
    merge_bars(s3_location, curve("AAPL", 100.0).slice(0, 100))
    ctx = multiprocessing.get_context("spawn")
    barrier, results = ctx.Barrier(2), ctx.Queue()
    processes = [ctx.Process(target=writer, args=(str(s3_location.root), role, barrier, results, ROUNDS))
                 for role in (0, 1)]
    for p in processes:
        p.start()
    reports = dict(results.get(timeout=600)[::2] for _ in processes)
    for p in processes:
        p.join(timeout=60)
    assert reports == {0: None, 1: None} and [p.exitcode for p in processes] == [0, 0]
    stored = read_all(s3_location)
    assert stored.select(pl.struct("con_id", "ts").is_duplicated().sum()).item() == 0
    assert stored.select("symbol", "ts").sort("symbol", "ts").equals(expected_keys(ROUNDS))


def _store_runs(path: str, first: int, barrier: multiprocessing.synchronize.Barrier) -> None:  # type: ignore[name-defined]
    barrier.wait()
    for run in range(first, first + 4):  # runs 2 and 3 are stored by both processes
        append_once(path, pl.DataFrame({"run_id": [f"r{run}"] * 2, "x": [1.0, 2.0]}), f"runs:r{run}", what="race")


def test_two_processes_appending_runs_on_s3_store_each_once(s3_location: TableLocation) -> None:
    path = s3_location.table("backtest_results")
    append_once(path, pl.DataFrame({"run_id": ["seed"], "x": [0.0]}), "runs:seed", what="seed")
    ctx = multiprocessing.get_context("spawn")
    barrier = ctx.Barrier(2)
    processes = [ctx.Process(target=_store_runs, args=(path, first, barrier)) for first in (0, 2)]
    for p in processes:
        p.start()
    for p in processes:
        p.join(timeout=300)
    assert [p.exitcode for p in processes] == [0, 0]
    counts = pl.read_delta(path, storage_options=storage_options(path)).group_by("run_id").len().sort("run_id")
    assert counts["run_id"].to_list() == ["r0", "r1", "r2", "r3", "r4", "r5", "seed"]
    assert counts["len"].to_list() == [2] * 6 + [1]


WRITER = textwrap.dedent("""
    import sys
    from datetime import timedelta
    import polars as pl
    from storage.bars_table import merge_bars
    from storage.location import TableLocation
    from tests.test_storage import JULY, make_bars
    offset = int(sys.argv[2])
    batch = pl.concat([make_bars(s, JULY + timedelta(minutes=offset), 60_000) for s in ("AAPL", "MSFT", "SPY")])
    print("ready", flush=True)
    merge_bars(TableLocation(sys.argv[1]), batch)
    print("merged", flush=True)
""")
SEED = 20_000
OFFSETS = {"merge": 10_000, "append": SEED}
"""At 10k the writer's first 10k bars per symbol are stored (same values: an append of the other 50k after the
collision read); at 20k every bar is new."""


def _writer(location: TableLocation, mode: str) -> subprocess.Popen[str]:
    process = subprocess.Popen([sys.executable, "-c", WRITER, str(location.root), str(OFFSETS[mode])], cwd=ROOT,
                               stdout=subprocess.PIPE, text=True, start_new_session=True)
    assert process.stdout is not None and process.stdout.readline().strip() == "ready"
    return process


def _seeded(name: str) -> TableLocation:
    location = TableLocation(f"s3://ibkr-flows-test/crash-{name}")
    merge_bars(location, pl.concat([make_bars(s, JULY, SEED) for s in ("AAPL", "MSFT", "SPY")]))
    return location


@pytest.mark.parametrize("mode", ["merge", "append"])
def test_a_writer_killed_mid_commit_on_s3_leaves_a_readable_table(mode: str, s3_env: str) -> None:
    """The write is timed once; then writers are killed at fractions of it: whatever the moment, the table reads
    as the version before or the complete next one, and running the write again completes it."""
    timing = _seeded(f"{mode}-timing-{time.monotonic_ns()}")
    started = time.perf_counter()
    _writer(timing, mode).wait(timeout=300)
    seconds = time.perf_counter() - started
    total = OFFSETS[mode] + 60_000
    killed = 0
    for fraction in (0.1, 0.4, 0.7):
        location = _seeded(f"{mode}-{fraction}-{time.monotonic_ns()}")
        before = table_version(location)
        process = _writer(location, mode)
        time.sleep(fraction * seconds)
        process.send_signal(signal.SIGKILL)
        killed += process.wait(timeout=30) == -signal.SIGKILL
        assert table_version(location) in (before, (before or 0) + 1)
        assert read_all(location).height in (3 * SEED, 3 * total)
        merge_bars(location, pl.concat([make_bars(s, JULY + timedelta(minutes=OFFSETS[mode]), 60_000)
                                        for s in ("AAPL", "MSFT", "SPY")]))
        rows = read_all(location)
        assert rows.height == 3 * total and rows.select(pl.struct("con_id", "ts").is_unique().all()).item()
    assert killed  # at least one writer died before it finished (the write takes seconds; the first kill is early)
