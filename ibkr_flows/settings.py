"""Connection settings, read from the environment and `.env` under the names the user's earlier CLI used."""

from __future__ import annotations

from typing import Any, Self

from pydantic import BaseModel, ConfigDict, Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class IBKRSettings(BaseSettings):
    """Where TWS / IB Gateway listens and how long to wait for it.

    Every field can be set as `IBKR_<NAME>` in the environment or in a `.env` file in the working directory.
    """

    model_config = SettingsConfigDict(env_prefix="IBKR_", env_file=".env", extra="ignore")

    host: str = Field("127.0.0.1", description="TWS / IB Gateway host")
    port: int = Field(7497, ge=1, le=65535, description="API socket port (7497 TWS paper, 7496 TWS live, "
                                                         "4002 Gateway paper, 4001 Gateway live)")
    client_id: int = Field(10, ge=0, le=2**31 - 1, description="API client id; must be unique per connection")
    connect_timeout: float = Field(4.0, gt=0, description="seconds ib_async waits for each connect phase")
    probe_timeout: float = Field(
        2.0, gt=0, description="seconds the doctor's raw probe waits for TWS to answer one handshake step; a "
                               "healthy TWS answers in milliseconds"
    )
    data_timeout: float = Field(10.0, gt=0, description="seconds the doctor waits for its one historical request")
    probe_symbol: str = Field("SPY", description="symbol of the doctor's tiny historical-data request")

    @classmethod
    def with_overrides(cls, **values: Any) -> Self:
        """The environment's settings with the given values on top; None means "not given", so optional flow
        parameters and CLI options fall back to IBKR_* instead of replacing them with nothing."""
        return cls(**{name: value for name, value in values.items() if value is not None})


class TWSEndpoint(BaseModel):
    """Which TWS / IB Gateway a flow talks to. Empty fields follow the IBKR_* environment of the process that
    runs the flow (the worker, for a deployment), so one deployment serves every machine it runs on."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    host: str | None = Field(None, description="TWS host; empty = IBKR_HOST")
    port: int | None = Field(None, ge=1, le=65535, description="API port; empty = IBKR_PORT")
    client_id: int | None = Field(None, ge=0, le=2**31 - 1, description="API client id; empty = IBKR_CLIENT_ID")

    def settings(self) -> IBKRSettings:
        return IBKRSettings.with_overrides(host=self.host, port=self.port, client_id=self.client_id)
