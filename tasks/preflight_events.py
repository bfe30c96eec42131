"""The preflight task as the flows run it: its verdict also goes out as a Prefect event (`alerts.events`), which
the server's alert automations react to. `tasks.preflight` stays free of alerting concerns."""

from __future__ import annotations

from ibkr_flows.alerts.events import emit_on_completion, emit_on_failure
from tasks.preflight import tws_preflight as _tws_preflight

tws_preflight = _tws_preflight.with_options(on_completion=[emit_on_completion], on_failure=[emit_on_failure])
