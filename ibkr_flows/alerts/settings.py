"""Alert settings from `IBKR_ALERT_*` environment variables (or `.env`), next to the connection settings.

Only block *names* live here: URLs and tokens stay in Prefect blocks, so nothing secret passes through the
environment of every flow run or ends up in a deployment's parameters.
"""

from __future__ import annotations

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from ibkr_flows.alerts.blocks import BlockRef, parse_block_refs


class AlertSettings(BaseSettings):
    """Where alerts go and how often the same failure may repeat one."""

    model_config = SettingsConfigDict(env_prefix="IBKR_ALERT_", env_file=".env", extra="ignore")

    blocks: str = Field("", description="comma-separated notification blocks, `<block-type-slug>/<block-name>`, "
                                        "e.g. `custom-webhook/ibkr-alerts,slack-webhook/trading`; empty = no alerts "
                                        "from flow hooks")
    window_seconds: float = Field(3600.0, gt=0, description="a failure class already alerted for a TWS stays quiet "
                                                            "for this long (both routes)")

    @property
    def block_refs(self) -> list[BlockRef]:
        return parse_block_refs(self.blocks)
