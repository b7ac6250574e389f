"""What a webhook receives for one notification: a Slack-compatible message or a CloudEvents 1.0 event (structured
mode, JSON). Pure: built only from the notification's record (itself built from the status, which holds no secret),
the resource's name and uid. The same record gives the same bytes, so a repeat (a retry, or a new leader sending again
after a crash between the receiver's 2xx and the status write) is the same request: its CloudEvents ``id`` and its
``Idempotency-Key`` header are both ``<resource uid>/<notification id>``, stable across retries and restarts and
distinct for a resource deleted and created again under the same name (whose ids would otherwise repeat).
"""

from __future__ import annotations

import json
from typing import Literal, TypedDict

from pydantic import JsonValue

from .. import constants as c
from ..api import NotificationFormat, NotificationRecord, dump
from ..fleet.api import SetNotificationRecord
from .due import Ref

CLOUDEVENTS_CONTENT_TYPE = "application/cloudevents+json; charset=utf-8"
JSON_CONTENT_TYPE = "application/json; charset=utf-8"
TYPE_PREFIX = "io.alembic-operator."  # then the kind and the notification, lower case
EMOJI = {"AwaitingApproval": ":raised_hand:", "Succeeded": ":white_check_mark:", "Failed": ":x:",
         "DriftDetected": ":warning:"}


class CloudEvent(TypedDict):
    specversion: Literal["1.0"]
    id: str
    source: str
    type: str
    subject: str
    time: str
    datacontenttype: Literal["application/json"]
    data: dict[str, JsonValue]


class SlackText(TypedDict):
    type: Literal["mrkdwn", "plain_text"]
    text: str


class SlackBlock(TypedDict, total=False):
    type: Literal["section", "context"]
    text: SlackText
    elements: list[SlackText]


class SlackMessage(TypedDict):
    text: str
    blocks: list[SlackBlock]


def data(ref: Ref, uid: str, ident: str, record: NotificationRecord) -> dict[str, JsonValue]:
    """The notification as JSON (camelCase, as in status), without its deliveries, with the resource it is about (a
    set's says its kind; a DatabaseMigration's is as it always was, byte for byte)."""
    body = dump(record.model_copy(update={"deliveries": {}}))
    body.pop("deliveries", None)
    kind: dict[str, JsonValue] = {"kind": ref.kind} if ref.kind != c.KIND else {}
    return {"id": ident, **kind, "namespace": ref.namespace, "name": ref.name, "uid": uid, **body}


def cloudevent(ref: Ref, uid: str, ident: str, record: NotificationRecord) -> CloudEvent:
    """A CloudEvents 1.0 event: `id` unique within its source (the resource's path) and the same on every attempt
    (source + id is what a receiver deduplicates on), type per kind and notification."""
    plural = c.SET_PLURAL if ref.kind == c.SET_KIND else c.PLURAL
    return CloudEvent(
        specversion="1.0", id=idempotency_key(uid, ident),
        source=f"/apis/{c.GROUP}/{c.VERSION}/namespaces/{ref.namespace}/{plural}/{ref.name}",
        type=f"{TYPE_PREFIX}{ref.kind.lower()}.{record.type.lower()}", subject=ref.name,
        time=str(dump(record)["occurredAt"]), datacontenttype="application/json", data=data(ref, uid, ident, record))


def slack(ref: Ref, ident: str, record: NotificationRecord) -> SlackMessage:
    """A message for a Slack incoming webhook (Mattermost and Rocket.Chat read the same `text`)."""
    lines = [f"{EMOJI[record.type]} *{record.summary}*"]
    if record.message:
        lines.append(record.message)
    if record.rollback:
        lines.append(f"Rollback: {record.rollback}")
    if isinstance(record, SetNotificationRecord) and record.type == "AwaitingApproval" and record.migrations:
        more = f" ... ({record.waiting} in all)" if record.waiting > len(record.migrations) else ""
        lines.append(f"Waiting: {', '.join(record.migrations)}{more}")
    lines += [f"• {x}" for x in record.findings]
    lines += [f"`{x}`" for x in record.commands]
    return SlackMessage(text=record.summary, blocks=[
        SlackBlock(type="section", text=SlackText(type="mrkdwn", text="\n".join(lines)[:2900])),
        SlackBlock(type="context", elements=[SlackText(type="mrkdwn", text=(
            f"{ref.namespace}/{ref.name}{' (DatabaseMigrationSet)' if ref.kind != c.KIND else ''} · {ident}"))]),
    ])


def render(fmt: NotificationFormat, ref: Ref, uid: str, ident: str, record: NotificationRecord) -> tuple[bytes, str]:
    """The request's body and Content-Type in this format."""
    if fmt == "Slack":
        return json.dumps(slack(ref, ident, record)).encode(), JSON_CONTENT_TYPE
    return json.dumps(cloudevent(ref, uid, ident, record)).encode(), CLOUDEVENTS_CONTENT_TYPE


def idempotency_key(uid: str, ident: str) -> str:
    """What identifies one notification for good: the resource's uid (a new object under the same name has another)
    and the notification's id (derived from the status)."""
    return f"{uid}/{ident}"
