# Two entry points (see README): `make demo` runs the main job on the built-in simulator, `make test` runs the
# tests. Both bootstrap everything on a machine that has only Python 3.11, pip and make: uv is installed into
# .tools/ from PyPI, then the locked environment into .venv/.

PYTHON ?= python3
UV_VERSION := 0.13.8
UV := .tools/bin/uv

export UV_COMPILE_BYTECODE := 1
export UV_PYTHON_DOWNLOADS := never
export DO_NOT_TRACK := 1
export PREFECT_SERVER_ANALYTICS_ENABLED := false
export PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS := 120
export PREFECT_SERVER_LOGGING_LEVEL := CRITICAL
export PREFECT_LOGGING_LEVEL ?= WARNING

.PHONY: demo test lint bench clean browser postgres

demo: .venv/.synced
	PREFECT_HOME=$${PREFECT_HOME:-$(CURDIR)/.prefect} .venv/bin/ibkr demo

test: .venv/.synced browser postgres
	.venv/bin/pytest

# The browser tests (tests/test_artifacts_browser.py) open the Prefect UI in Debian's headless Chromium through its
# chromedriver. Installed here when missing (as root, or through sudo); nothing to do once both are there.
browser:
	@if [ -x /usr/bin/chromium ] && [ -x /usr/bin/chromedriver ]; then exit 0; fi; \
	sudo=$$([ "$$(id -u)" = 0 ] || echo sudo); \
	echo "installing Debian's chromium and chromium-driver for the browser tests"; \
	$$sudo apt-get update -qq && \
	$$sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver

# The Prefect-on-Postgres tests (tests/test_stack_postgres.py) start a throwaway cluster with Debian's initdb and
# pg_ctl from /usr/lib/postgresql/<version>/bin. Installed here when missing (as root, or through sudo).
postgres:
	@if ls /usr/lib/postgresql/*/bin/initdb /usr/lib/postgresql/*/bin/pg_ctl >/dev/null 2>&1; then exit 0; fi; \
	sudo=$$([ "$$(id -u)" = 0 ] || echo sudo); \
	echo "installing Debian's postgresql for the Prefect-on-Postgres tests"; \
	$$sudo apt-get update -qq && \
	$$sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql

lint: .venv/.synced
	.venv/bin/ruff check .

bench: .venv/.synced postgres
	$(UV) sync --frozen --group bench --python $(PYTHON)
	.venv/bin/python bench/doctor_verdicts.py
	.venv/bin/python bench/pacing_backfill.py
	.venv/bin/python bench/merge_bars.py
	.venv/bin/python bench/quality_checks.py
	.venv/bin/python bench/backtest_engine.py
	.venv/bin/python bench/cli_backtest.py
	.venv/bin/python bench/grid_sma.py
	.venv/bin/python bench/grid_strategies.py
	.venv/bin/python bench/nightly_pacing.py
	.venv/bin/python bench/sim_latency.py
	.venv/bin/python bench/prefect_database.py
	.venv/bin/python bench/pacing_shared.py
	.venv/bin/python bench/rolled_es.py
	.venv/bin/python bench/growth.py
	.venv/bin/python bench/grid_dask.py

$(UV):
	$(PYTHON) -m venv .tools
	.tools/bin/python -m pip install --quiet --disable-pip-version-check uv==$(UV_VERSION)

.venv/.synced: $(UV) pyproject.toml uv.lock
	$(UV) sync --frozen --python $(PYTHON)
	touch $@

clean:
	rm -rf .venv .tools .prefect
