"""The wheel as users get it: built, installed into a fresh virtual environment outside the checkout, and run
from a directory outside the checkout, so only what the wheel ships is importable.

The environment is installed from the lock (`uv export --frozen`) out of uv's cache, which `make` has warmed:
offline first, online only if the cache lacks something. The whole module takes ~20 s (build and install ~2 s).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.conftest import free_port
from tests.helpers_cli import cli_env, wait_listening

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = {"ibkr_flows", "flows", "tasks", "storage"}

# Run inside the installed environment: every command path of the Typer app (so new commands are covered) and
# what its --help does, all in one process (one `ibkr ... --help` process each takes ~1 s per command).
HELP_OF_EVERY_COMMAND = """
import json, traceback, typer.main
from typer.testing import CliRunner
from ibkr_flows.cli.app import app

def walk(command, path):
    yield path
    for name, sub in (getattr(command, "commands", None) or {}).items():
        yield from walk(sub, [*path, name])

helps = {}
for path in walk(typer.main.get_command(app), []):
    result = CliRunner().invoke(app, [*path, "--help"], prog_name="ibkr", env={"COLUMNS": "200"})
    error = "".join(traceback.format_exception(result.exception)) if result.exception else None
    helps[" ".join(["ibkr", *path])] = {"exit_code": result.exit_code, "output": result.output, "error": error}
print(json.dumps(helps))
"""

# Run inside the installed environment: import every module of every package, report failures and origins.
IMPORT_ALL = """
import importlib, json, pkgutil, sys, traceback
imported, failed = {}, {}
for top in sys.argv[1:]:
    package = importlib.import_module(top)
    imported[top] = package.__file__
    record = lambda name: failed.setdefault(name, traceback.format_exc(limit=-3))  # a package walk could not enter
    for info in pkgutil.walk_packages(package.__path__, prefix=top + ".", onerror=record):
        try:
            imported[info.name] = importlib.import_module(info.name).__file__
        except BaseException:
            failed[info.name] = traceback.format_exc(limit=-3)
print(json.dumps({"imported": imported, "failed": failed}))
"""

# Run inside the installed environment: which prefect.yaml and working directory `ibkr up` would use, and whether
# every deployment's entrypoint resolves to a flow.
STACK_PATHS = """
import importlib, json, sys
import yaml
from prefect import Flow
from ibkr_flows.stack.local import CHECKOUT_DIR, UpOptions

options = UpOptions(home=sys.argv[1])
spec = yaml.safe_load(options.prefect_file.read_text())
entrypoints = {}
for deployment in spec["deployments"]:
    module, _, name = deployment["entrypoint"].partition(":")
    entrypoints[deployment["entrypoint"]] = isinstance(getattr(importlib.import_module(module), name), Flow)
print(json.dumps({"checkout": CHECKOUT_DIR and str(CHECKOUT_DIR), "prefect_file": str(options.prefect_file),
                  "project_dir": str(options.project_dir), "entrypoints": entrypoints}))
"""


@dataclass(frozen=True)
class Installed:
    wheel: Path
    venv: Path
    workdir: Path
    env: dict[str, str]

    @property
    def python(self) -> str:
        return str(self.venv / "bin" / "python")

    @property
    def ibkr(self) -> str:
        return str(self.venv / "bin" / "ibkr")

    def run(self, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        return subprocess.run(args, cwd=self.workdir, env=self.env, capture_output=True, text=True, timeout=timeout)

    def run_python(self, code: str, *args: str) -> object:
        result = self.run(self.python, "-c", code, *args)
        assert result.returncode == 0, result.stderr[-3000:]
        return json.loads(result.stdout)

    @property
    def site_packages(self) -> Path:
        return self.venv / "lib" / f"python{sys.version_info.major}.{sys.version_info.minor}" / "site-packages"


def _uv() -> str:
    found = ROOT / ".tools" / "bin" / "uv"
    if found.exists():
        return str(found)
    on_path = shutil.which("uv")
    if on_path is None:
        pytest.fail("uv not found: run `make` first (it bootstraps .tools/bin/uv)")
    return on_path


def _uv_run(*args: str, cwd: Path) -> None:
    """Offline first (uv's cache is warm after `make`); online only when the cache lacks something."""
    env = {k: v for k, v in os.environ.items() if k not in ("UV_COMPILE_BYTECODE", "VIRTUAL_ENV")}
    for offline in (["--offline"], []):
        result = subprocess.run([_uv(), *args, *offline], cwd=cwd, env=env, capture_output=True, text=True,
                                timeout=300)
        if result.returncode == 0:
            return
    pytest.fail(f"uv {' '.join(args)} failed:\n{result.stderr[-3000:]}")


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Installed]:
    base = tmp_path_factory.mktemp("wheel")
    assert not base.resolve().is_relative_to(ROOT), "the test environment must lie outside the checkout"
    dist, venv, workdir, home = base / "dist", base / "venv", base / "work", base / "prefect"
    for directory in (dist, workdir, home):
        directory.mkdir()
    _uv_run("build", "--quiet", "--wheel", "--out-dir", str(dist), str(ROOT), cwd=ROOT)
    (wheel,) = dist.glob("*.whl")
    requirements = base / "requirements.txt"
    _uv_run("export", "--quiet", "--frozen", "--no-dev", "--no-hashes", "--no-emit-project", "--project", str(ROOT),
            "--output-file", str(requirements), cwd=ROOT)
    _uv_run("venv", "--quiet", "--python", sys.executable, str(venv), cwd=base)
    _uv_run("pip", "install", "--quiet", "--python", str(venv / "bin" / "python"), "-r", str(requirements),
            str(wheel), cwd=base)
    yield Installed(wheel, venv, workdir, cli_env(home, IBKR_PACING_DIR=str(base / "pacing")))


def test_wheel_ships_exactly_the_project_packages_and_prefect_yaml(installed: Installed) -> None:
    with zipfile.ZipFile(installed.wheel) as wheel:
        names = wheel.namelist()
        packaged = wheel.read("ibkr_flows/prefect.yaml")
    top_level = {name.split("/", 1)[0] for name in names if not name.split("/", 1)[0].endswith(".dist-info")}
    assert top_level == PACKAGES
    assert packaged == (ROOT / "prefect.yaml").read_bytes()
    installed_copy = installed.site_packages / "ibkr_flows" / "prefect.yaml"
    assert installed_copy.read_bytes() == (ROOT / "prefect.yaml").read_bytes()


def test_every_module_imports_from_the_installed_wheel(installed: Installed) -> None:
    outcome = installed.run_python(IMPORT_ALL, *sorted(PACKAGES))
    assert isinstance(outcome, dict)
    assert outcome["failed"] == {}, "\n".join(outcome["failed"].values())
    with zipfile.ZipFile(installed.wheel) as wheel:
        shipped = {name.removesuffix(".py").removesuffix("/__init__").replace("/", ".")
                   for name in wheel.namelist() if name.endswith(".py")}
    assert set(outcome["imported"]) == shipped
    site = str(installed.site_packages)
    assert [m for m, origin in outcome["imported"].items() if not origin.startswith(site)] == []


def test_every_cli_command_has_help(installed: Installed) -> None:
    helps = installed.run_python(HELP_OF_EVERY_COMMAND)
    assert isinstance(helps, dict)
    assert {"ibkr data connect", "ibkr sim start", "ibkr backtest grid", "ibkr demo", "ibkr up"} <= set(helps)
    failures = [f"{name}: exit {h['exit_code']}\n{h['error'] or h['output'][-1500:]}" for name, h in helps.items()
                if h["exit_code"] != 0 or h["error"] or "Usage: ibkr" not in h["output"]]
    assert failures == [], "\n\n".join(failures)
    script = installed.run(installed.ibkr, "--help")  # the console script itself
    assert script.returncode == 0 and "Usage: ibkr" in script.stdout, script.stderr[-3000:]


def test_simulator_and_doctor_from_the_installed_cli(installed: Installed) -> None:
    port, control = free_port(), free_port()
    log = installed.workdir / "sim.log"
    with log.open("wb") as out:
        sim = subprocess.Popen([installed.ibkr, "sim", "start", "--port", str(port), "--control-port", str(control)],
                               cwd=installed.workdir, env=installed.env, stdout=out, stderr=subprocess.STDOUT)
    try:
        try:
            wait_listening(port, sim)
        except AssertionError as exc:
            raise AssertionError(f"{exc}\n{log.read_text()[-3000:]}") from None
        result = installed.run(installed.ibkr, "data", "connect", "--host", "127.0.0.1", "--port", str(port),
                               "--json", timeout=60)
    finally:
        sim.terminate()
        sim.wait(timeout=15)
    assert result.returncode == 0, result.stdout + result.stderr
    verdict = json.loads(result.stdout)
    assert verdict["status"] == "healthy" and verdict["ok"] is True, verdict
    assert verdict["port"] == port and verdict["server_version"] == 178


def test_ibkr_up_deploys_the_packaged_prefect_yaml_outside_a_checkout(installed: Installed) -> None:
    paths = installed.run_python(STACK_PATHS, str(installed.workdir / "home"))
    assert isinstance(paths, dict)
    assert paths["checkout"] is None
    assert paths["prefect_file"] == str(installed.site_packages / "ibkr_flows" / "prefect.yaml")
    assert Path(paths["project_dir"]).resolve() == installed.workdir.resolve()
    assert paths["entrypoints"] and all(paths["entrypoints"].values()), paths["entrypoints"]


def test_ibkr_up_deploys_the_checkout_prefect_yaml_in_a_checkout(tmp_path: Path) -> None:
    from ibkr_flows.stack.local import CHECKOUT_DIR, UpOptions, checkout_dir

    options = UpOptions(home=tmp_path)
    assert CHECKOUT_DIR == ROOT
    assert (options.prefect_file, options.project_dir) == (ROOT / "prefect.yaml", ROOT)
    # the layout of an installed wheel: no prefect.yaml / pyproject.toml two levels above the module
    assert checkout_dir(tmp_path / "site-packages" / "ibkr_flows" / "stack" / "local.py") is None
