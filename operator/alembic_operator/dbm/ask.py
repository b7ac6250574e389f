"""How kubectl dbm says no (exit code 2, with why) and asks a person before it changes something."""

from __future__ import annotations

import sys


class Refused(Exception):
    """The request cannot be done as asked (nothing to approve, the plan changed, no one to confirm): exit code 2."""


def confirm(question: str, instead: str) -> bool:
    """A person's yes to `question` on the terminal (anything else is a no). With no terminal no one can answer:
    refused, naming the flags to pass `instead`."""
    if not sys.stdin.isatty():
        raise Refused(f"not a terminal: pass {instead}")
    sys.stdout.write(f"{question} [y/N] ")
    sys.stdout.flush()
    return sys.stdin.readline().strip().lower() in ("y", "yes")
