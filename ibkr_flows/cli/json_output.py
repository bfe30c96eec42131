"""What every `--json` prints: strict JSON that any parser reads.

Python's `json` writes NaN and Infinity, which JavaScript's `JSON.parse`, jq and most other parsers refuse. A
metric without a value (the Sharpe ratio of a flat equity curve, the profit factor without losing trades) is null
instead; datetimes are ISO 8601 strings, durations seconds.
"""

from __future__ import annotations

import json
import math
from datetime import date, datetime, timedelta
from typing import Any


def strict_json(value: Any) -> str:
    return json.dumps(_finite(value), indent=2, default=_plain, allow_nan=False)


def _finite(value: Any) -> Any:
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {str(k): _finite(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_finite(v) for v in value]
    return value


def _plain(value: Any) -> Any:
    if isinstance(value, datetime | date):
        return value.isoformat()
    if isinstance(value, timedelta):
        return value.total_seconds()
    return str(value)
