"""The one redactor: every text the runner, the Jobs and the operator write passes through it.

Standard library only (it runs in the app's image too). It replaces the known secrets (a database URL, its password
in every spelling) with ``***``, and, for secrets it was never told about, the password of any ``scheme://user:pw@``
URL and, unless told otherwise, any ``password=...`` / ``sslpassword=...`` connection parameter (the runner keeps
those: it writes rendered SQL, where ``password = 'x'`` is data).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any, TextIO
from urllib.parse import quote, quote_plus

_URL_PASSWORD = re.compile(r"(://[^\s:/@]*:)[^\s@]+@")
_PASSWORD_PARAM = re.compile(r"((?:ssl)?password\s*=\s*)('(?:[^'\\]|\\.)*'|\S+)", re.IGNORECASE)


class Redactor:
    """Replaces known secrets, any URL's password and (`parameters`) any password=... parameter with ***."""

    def __init__(self, parameters: bool = True) -> None:
        self.secrets: list[str] = []
        self.parameters = parameters

    def add(self, secret: str | None, min_length: int = 1) -> None:
        if secret and len(secret) >= min_length and secret not in self.secrets:
            self.secrets.append(secret)
            self.secrets.sort(key=len, reverse=True)

    def add_password(self, password: str | None, min_length: int = 4) -> None:
        """A password as typed and as it appears percent-encoded in a URL."""
        if password:
            for spelling in (password, quote(password, safe=""), quote_plus(password)):
                self.add(spelling, min_length=min_length)

    def __call__(self, text: str) -> str:
        for secret in self.secrets:
            text = text.replace(secret, "***")
        text = _URL_PASSWORD.sub(r"\1***@", text)
        return _PASSWORD_PARAM.sub(r"\1***", text) if self.parameters else text

    def values(self, value: Any) -> Any:
        """Every string in a JSON-like value redacted (then serialized: the JSON stays valid)."""
        if isinstance(value, str):
            return self(value)
        if isinstance(value, dict):
            return {key: self.values(item) for key, item in value.items()}
        if isinstance(value, (list, tuple)):
            return [self.values(item) for item in value]
        return value


class RedactingStream:
    """A text stream wrapper that redacts everything written through it (stdout/stderr, logging handlers)."""

    def __init__(self, stream: TextIO, redact: Redactor) -> None:
        self._stream = stream
        self._redact = redact

    def write(self, text: str) -> int:
        self._stream.write(self._redact(text))
        return len(text)

    def writelines(self, lines: Sequence[str]) -> None:
        for line in lines:
            self.write(line)

    def flush(self) -> None:
        self._stream.flush()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._stream, name)
