"""The one way the operator posts a Kubernetes Event: its reason is a declared `Reason` (reasons.py), so no literal
becomes an Event's reason (mypy refuses one; tests/unit/test_reasons.py checks nothing else calls `kopf.event`)."""

from __future__ import annotations

from typing import Literal

import kopf

from .reasons import Reason

EventType = Literal["Normal", "Warning"]


def post(body: kopf.Body, kind: EventType, reason: Reason, message: str) -> None:
    """Post an Event on `body` (through Kopf's poster: batched, never blocking the handler)."""
    kopf.event(body, type=kind, reason=reason, message=message)
