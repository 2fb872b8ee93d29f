"""A name -> object registry whose entries can be registered lazily as ``"module:attribute"`` strings (imported
on first use), as dask registers its array backends. Device backends and propagation engines use one each."""
from __future__ import annotations

import importlib
import threading
from typing import Any, Callable, Generic, Optional, TypeVar

T = TypeVar("T")


class LazyRegistry(Generic[T]):
    """Entries registered directly or lazily; ``make`` turns an imported attribute into the entry (a class into
    an instance, say)."""

    def __init__(self, entries: dict, lazy: dict, make: Optional[Callable[[Any], T]] = None):
        self._lock = threading.Lock()
        self._entries: dict[str, T] = dict(entries)
        self._lazy: dict[str, str] = dict(lazy)
        self._make = make

    def register(self, name: str, entry: T) -> None:
        """Register ``entry`` as ``name`` (replacing a lazy registration of that name)."""
        with self._lock:
            self._entries[name] = entry
            self._lazy.pop(name, None)

    def register_lazy(self, name: str, target: str) -> None:
        """Register ``"module:attribute"`` as ``name``; imported on first use (ignored if ``name`` is loaded)."""
        with self._lock:
            if name not in self._entries:
                self._lazy[name] = target

    def get(self, name: str) -> Optional[T]:
        """The entry ``name`` (importing a lazy one), or None when nothing is registered under it."""
        e = self._entries.get(name)
        if e is not None:
            return e
        with self._lock:
            e = self._entries.get(name)
            if e is None:
                target = self._lazy.get(name)
                if target is None:
                    return None
                mod, _, attr = target.partition(":")
                obj = getattr(importlib.import_module(mod), attr)
                e = self._entries[name] = self._make(obj) if self._make is not None else obj
                del self._lazy[name]
            return e

    def known(self, name: str) -> bool:
        """Whether ``name`` is registered (loaded or lazily)."""
        return name in self._entries or name in self._lazy

    def loaded(self) -> dict[str, T]:
        """The entries imported so far."""
        return dict(self._entries)
