"""What the commands of our image's Jobs share (``jobtools`` and the engines' and stores' Job-side code): the
failure they report, the process-wide redactor and the log. Below them all, so an engine never imports the CLI."""

from __future__ import annotations

import sys
from typing import Final

from .constants import URL_ENV
from .reasons import Reason
from .runner.redact import Redactor

__all__ = ["REDACT", "URL_ENV", "JobError", "log", "remember_secret", "sanitize"]


class JobError(Exception):
    """A failure with a stable CamelCase reason and a message that says what to do. Never holds a secret."""

    def __init__(self, reason: Reason, message: str) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message


REDACT: Final = Redactor()  # the one redactor (runner/redact.py); every secret value seen in this process


def remember_secret(value: str | None) -> None:
    REDACT.add(value, min_length=3)


def sanitize(text: str) -> str:
    """Scrub secrets from free text: the known secret values, user:password@ in URLs, password=... in conninfos."""
    return REDACT(text)


def log(message: str) -> None:
    print(sanitize(message), file=sys.stderr, flush=True)
