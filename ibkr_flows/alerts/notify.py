"""Send one alert through every configured notification block, without ever echoing a block's secrets.

Webhook URLs carry their tokens (Slack's path, a custom webhook's query), and the texts of HTTP client errors
quote the URL. Failures are therefore reported by exception type and HTTP status only, and never re-raised: an
alert that cannot be delivered must not turn into a traceback in the flow run's logs.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

from ibkr_flows.alerts.blocks import AlertConfigError, BlockRef, load_notification_block
from ibkr_flows.alerts.messages import AlertMessage

Logger = logging.Logger | logging.LoggerAdapter  # type: ignore[type-arg]


def safe_reason(exc: BaseException) -> str:
    """What went wrong, minus anything that could contain the URL: our own config errors verbatim, others by
    type and HTTP status."""
    if isinstance(exc, AlertConfigError):
        return str(exc)
    status = getattr(getattr(exc, "response", None), "status_code", None)
    return type(exc).__name__ + (f" (HTTP {status})" if status else "")


def deliver(message: AlertMessage, refs: Sequence[BlockRef], logger: Logger) -> list[BlockRef]:
    """Notify through each block in turn; returns the blocks that accepted the message."""
    delivered = []
    for ref in refs:
        try:
            block = load_notification_block(ref)
            with block.raise_on_failure():
                block.notify(body=message.body, subject=message.subject)
        except Exception as exc:  # any failure: logged without its text, see the module docstring
            logger.error("alert %r via %s not delivered: %s", message.subject, ref, safe_reason(exc))
            continue
        delivered.append(ref)
        logger.info("alert %r sent via %s", message.subject, ref)
    return delivered
