"""Where the project's tables live: a local directory or an object-store prefix (`s3://`, `gs://`, `az://` ...), and
how delta-rs and polars reach it. Every table URI and every storage option is derived here and nowhere else.

Credentials and endpoints come from the standard environment variables of each store (AWS_ACCESS_KEY_ID,
AWS_ENDPOINT_URL, AWS_ALLOW_HTTP, GOOGLE_SERVICE_ACCOUNT, AZURE_STORAGE_ACCOUNT_NAME ...), read when a table is
opened, never kept in a `TableLocation`: a location is a Prefect task parameter, and parameters are recorded by the
Prefect API, where a secret must not end up.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

from storage.errors import UnsupportedLocationError

DATA_DIR_ENV = "IBKR_DATA_DIR"

AWS_VARIABLES = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_REGION", "AWS_ENDPOINT_URL",
                 "AWS_ALLOW_HTTP", "AWS_VIRTUAL_HOSTED_STYLE_REQUEST")
"""Passed on when set. AWS_PROFILE is not: polars refuses it next to AWS_ALLOW_HTTP, and delta-rs reads it from the
environment itself. AWS_S3_ALLOW_UNSAFE_RENAME is not either: delta-rs 1.x commits with conditional puts
(If-None-Match), which is what makes two writers safe, and that switch would turn it off."""
GCS_VARIABLES = ("GOOGLE_SERVICE_ACCOUNT", "GOOGLE_SERVICE_ACCOUNT_PATH", "GOOGLE_SERVICE_ACCOUNT_KEY",
                 "GOOGLE_APPLICATION_CREDENTIALS")
AZURE_VARIABLES = ("AZURE_STORAGE_ACCOUNT_NAME", "AZURE_STORAGE_ACCOUNT_KEY", "AZURE_STORAGE_SAS_TOKEN",
                   "AZURE_STORAGE_CLIENT_ID", "AZURE_STORAGE_CLIENT_SECRET", "AZURE_STORAGE_TENANT_ID",
                   "AZURE_STORAGE_USE_EMULATOR", "AZURE_STORAGE_ENDPOINT", "AZURE_ALLOW_HTTP")
OBJECT_STORES: dict[str, tuple[str, ...]] = {
    "s3": AWS_VARIABLES, "s3a": AWS_VARIABLES,
    "gs": GCS_VARIABLES, "gcs": GCS_VARIABLES,
    "az": AZURE_VARIABLES, "abfs": AZURE_VARIABLES, "abfss": AZURE_VARIABLES,
}
"""The URI schemes a data directory may have, and the environment variables that configure each store."""

_SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*)://(.*)$")


def _scheme(text: str) -> str | None:
    match = _SCHEME.match(text)
    return match.group(1).lower() if match else None


def storage_options(table_uri: str) -> dict[str, str] | None:
    """What delta-rs and polars need to reach `table_uri`: the store's variables that are set in the environment
    (AWS_DEFAULT_REGION standing in for an unset AWS_REGION); None for a local path."""
    scheme = _scheme(table_uri)
    if scheme is None or scheme == "file":
        return None
    names = OBJECT_STORES.get(scheme)
    if names is None:
        raise UnsupportedLocationError(table_uri, sorted(OBJECT_STORES))
    options = {name: os.environ[name] for name in names if os.environ.get(name)}
    if "AWS_REGION" in names and "AWS_REGION" not in options and os.environ.get("AWS_DEFAULT_REGION"):
        options["AWS_REGION"] = os.environ["AWS_DEFAULT_REGION"]
    return options


def is_remote(table_uri: str) -> bool:
    """True for an object-store URI, False for a local path (with or without `file://`)."""
    return _scheme(table_uri) not in (None, "file")


@dataclass(frozen=True)
class TableLocation:
    """A data directory holding the project's Delta tables, one sub-directory (or key prefix) each.

    `root` is a `Path` for a local directory and the URI itself (`s3://bucket/prefix`, no trailing slash) for an
    object store: pathlib would turn `s3://bucket` into `s3:/bucket`."""

    root: Path | str

    def __post_init__(self) -> None:
        text = str(self.root)
        scheme = _scheme(text)
        if scheme is None:
            root: Path | str = Path(self.root).expanduser()
        elif scheme == "file":
            root = Path(text.split("://", 1)[1]).expanduser()
        elif scheme in OBJECT_STORES:
            root = text.rstrip("/")
        else:
            raise UnsupportedLocationError(text, sorted(OBJECT_STORES))
        object.__setattr__(self, "root", root)

    @classmethod
    def default(cls) -> TableLocation:
        """`$IBKR_DATA_DIR` (a path or an object-store URI), or `./data` relative to where the command runs."""
        return cls(os.environ.get(DATA_DIR_ENV) or "data")

    @classmethod
    def at(cls, data_dir: str | None) -> TableLocation:
        """A chosen directory or URI, or the default when none is given (an empty flow parameter, no CLI option)."""
        return cls(data_dir) if data_dir else cls.default()

    def table(self, name: str) -> str:
        """The URI (object store) or path (local) of the table `name`."""
        return f"{self.root}/{name}" if isinstance(self.root, str) else str(self.root / name)

    @property
    def bars(self) -> str:
        return self.table("bars")

    @property
    def quarantine(self) -> str:
        return self.table("quarantine")

    @property
    def backtest_results(self) -> str:
        return self.table("backtest_results")

    @property
    def backtest_trades(self) -> str:
        return self.table("backtest_trades")

    @property
    def grid_results(self) -> str:
        return self.table("grid_results")
