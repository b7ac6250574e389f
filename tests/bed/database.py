"""A test database, whatever its engine: its name, the application's URL to it (a secret) and where it listens.

Each engine's module (``bed.postgres``, ``bed.mariadb``) extends it with how to connect and query.
"""

from __future__ import annotations

import dataclasses
from typing import Self


@dataclasses.dataclass(frozen=True)
class Database:
    name: str
    url: str  # SQLAlchemy URL with the application user's password: a secret
    host: str
    port: int
    user: str
    password: str

    def at(self, host: str, port: int) -> Self:
        """The same database reached at another address, e.g. the real bed's relay that pods and processes in its
        network namespace use: ``database.at(*bed.expose_host_port(database.port))``."""
        url = self.url.replace(f"@{self.host}:{self.port}/", f"@{host}:{port}/")
        return dataclasses.replace(self, url=url, host=host, port=port)
