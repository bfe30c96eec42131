"""Notification blocks by name: `custom-webhook/ibkr-alerts`, `slack-webhook/trading`, ...

A reference names Prefect's block type slug and the block document, exactly as `Block.load` takes it, so any
notification block type Prefect knows works (Custom Webhook, Slack, Teams, PagerDuty, Discord, e-mail...).
"""

from __future__ import annotations

from dataclasses import dataclass
from uuid import UUID

from prefect.blocks.abstract import NotificationBlock
from prefect.blocks.core import Block


class AlertConfigError(ValueError):
    """An alert destination is malformed, missing, or not a notification block."""


@dataclass(frozen=True)
class BlockRef:
    slug: str
    name: str

    def __str__(self) -> str:
        return f"{self.slug}/{self.name}"


def parse_block_refs(text: str) -> list[BlockRef]:
    """Comma-separated `<slug>/<name>` items; blanks are skipped so a trailing comma is harmless."""
    refs = []
    for item in (part.strip() for part in text.split(",")):
        if not item:
            continue
        slug, sep, name = item.partition("/")
        if not sep or not slug or not name or "/" in name:
            raise AlertConfigError(f"alert block {item!r} is not `<block-type-slug>/<block-name>`, e.g. "
                                   "`custom-webhook/ibkr-alerts`")
        refs.append(BlockRef(slug, name))
    return refs


def load_notification_block(ref: BlockRef) -> NotificationBlock:
    """Load the block document; its secrets stay inside the block object."""
    try:
        block = Block.load(str(ref))
    except ValueError as exc:  # Prefect's "Unable to find block document named ..."
        raise AlertConfigError(f"no block {ref} on this Prefect API; create it first (README: 'Deployments and "
                               "alerts')") from exc
    if not isinstance(block, NotificationBlock):
        raise AlertConfigError(f"block {ref} is a {type(block).__name__}, not a notification block")
    return block


def block_document_id(ref: BlockRef) -> UUID:
    """The id server-side automations reference the block by."""
    block = load_notification_block(ref)
    if block._block_document_id is None:
        raise AlertConfigError(f"block {ref} has no document id")
    return block._block_document_id
