"""Self-registering implementations, shared by the database engines (``engines/``) and the backup stores
(``backupstores/``).

An implementation is a subclass that sets a ``name`` class attribute; ``__init_subclass__`` of its base class
adds an instance to that base's `Registry` (as SQLAlchemy dialects and Alembic implementations register by
``__dialect__``). The registry imports every module of its package the first time it is asked, so adding an
implementation means adding one module to the package and nothing else.
"""

from __future__ import annotations

import importlib
import pkgutil
from collections.abc import Iterator
from typing import Generic, TypeVar

T = TypeVar("T")


class Registry(Generic[T]):
    """Implementations by name; the modules of `package` (but `base`) are imported on the first lookup."""

    def __init__(self, package: str) -> None:
        self.package = package
        self._items: dict[str, T] = {}
        self._discovered = False

    def add(self, name: str, item: T) -> None:
        if name in self._items and type(self._items[name]) is not type(item):
            raise ValueError(f"{self.package}: two implementations named {name!r}")
        self._items[name] = item

    def remove(self, name: str) -> None:
        self._items.pop(name, None)

    def get(self, name: str) -> T | None:
        self.discover()
        return self._items.get(name)

    def __iter__(self) -> Iterator[T]:
        self.discover()
        return iter(list(self._items.values()))

    def names(self) -> list[str]:
        self.discover()
        return sorted(self._items)

    def discover(self) -> None:
        if self._discovered:
            return
        self._discovered = True
        module = importlib.import_module(self.package)
        for info in pkgutil.iter_modules(module.__path__):
            if info.name != "base" and not info.name.startswith("_"):
                importlib.import_module(f"{self.package}.{info.name}")
