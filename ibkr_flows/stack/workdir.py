"""The working directory of every deployment's flow runs, chosen on the machine that runs them.

prefect.yaml's pull step calls `enter_workdir` in each flow-run process, before the flow is imported. The
directory matters because a run resolves relative paths there: the default data directory `./data` and the
`.env` file with the IBKR_* settings. It comes from the worker's environment, not from the machine that ran
`prefect deploy`, so one set of deployments serves workers in any directory on any machine:

1. `IBKR_WORKDIR`, when set (`ibkr up` sets it for the worker it starts);
2. else the source checkout this package is imported from (an editable install), like a run used to get;
3. else nothing sensible is left (a wheel install and no IBKR_WORKDIR): a `WorkdirError` says what to set.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from pathlib import Path
from uuid import UUID

WORKDIR_ENV = "IBKR_WORKDIR"


class WorkdirError(RuntimeError):
    """No usable working directory for a flow run on this worker; the message says what to set."""


def checkout_dir(module_file: Path = Path(__file__)) -> Path | None:
    """The source checkout this module runs from, or None when it runs from an installed wheel."""
    root = module_file.resolve().parents[2]
    return root if (root / "prefect.yaml").is_file() and (root / "pyproject.toml").is_file() else None


CHECKOUT_DIR = checkout_dir()


def resolve_workdir(environ: Mapping[str, str] = os.environ, checkout: Path | None = CHECKOUT_DIR) -> Path:
    """The directory flow runs start in on this worker (see the module docstring for the order)."""
    configured = environ.get(WORKDIR_ENV, "").strip()
    if configured:
        directory = Path(configured).expanduser()
        if not directory.is_dir():
            raise WorkdirError(f"{WORKDIR_ENV}={configured} is not a directory on this worker; fix: create it, or "
                               f"restart the worker with {WORKDIR_ENV} set to the directory that holds your .env "
                               "and data/ (e.g. a checkout of ibkr-flows)")
        return directory.resolve()
    if checkout is not None:
        return checkout
    raise WorkdirError(f"{WORKDIR_ENV} is not set for this worker and ibkr_flows is installed from a wheel, so flow "
                       f"runs have no working directory; fix: start the worker with {WORKDIR_ENV}=<the directory "
                       f"that holds your .env and data/>, e.g. `{WORKDIR_ENV}=$PWD prefect worker start --pool "
                       "ibkr-local` (`ibkr up` sets it for the worker it starts)")


def _run_logger() -> logging.Logger | logging.LoggerAdapter[logging.Logger]:
    """The flow run's own logger (shown in the UI) when Prefect runs this step for a flow run: Prefect 3.8 prints
    a failing pull step's exception only to the worker's output, and the run just says its process exited."""
    flow_run_id = os.environ.get("PREFECT__FLOW_RUN_ID")
    if not flow_run_id:
        return logging.getLogger(__name__)
    from prefect.logging.loggers import flow_run_logger

    return flow_run_logger(flow_run_id=UUID(flow_run_id))


def enter_workdir() -> dict[str, str]:
    """The pull step: change into the worker's directory and return it the way Prefect's own
    `set_working_directory` does (`directory`, where Prefect then starts the flow's process)."""
    logger = _run_logger()
    try:
        directory = resolve_workdir()
    except WorkdirError as exc:
        logger.error(str(exc))
        raise
    os.chdir(directory)
    source = WORKDIR_ENV if os.environ.get(WORKDIR_ENV, "").strip() else "the checkout ibkr_flows runs from"
    logger.info("working directory %s (%s)", directory, source)
    return {"directory": str(directory)}
