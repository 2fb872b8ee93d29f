"""The semiring registry: ``mmsb.semirings.get(name)``, ``.names()``, ``.register(sr)``, ``.unregister(name)``.

The built-ins (:data:`mmsb.semiring.BUILTINS`) are always registered and can be neither replaced nor
unregistered. Third-party semirings arrive through plugins (:mod:`mmsb.plugins`), which are loaded lazily: the
first unknown name, or the first call to :func:`names`, :func:`register` or :func:`unregister`, loads them.
Every semiring records its provider in ``sr.provider``: ``"mmsb"`` for a built-in, ``"runtime"`` for one
registered with :func:`register`, else the plugin's name. All functions are thread-safe.
"""
from __future__ import annotations

import threading
from typing import Optional, Union

from mmsb.errors import SemiringError
from mmsb.semiring import BUILTINS, Semiring, check_laws

BUILTIN_NAMES: tuple[str, ...] = tuple(sr.name for sr in BUILTINS)
"""Names of the built-in semirings, in their canonical order."""

_lock = threading.RLock()
_registry: dict[str, Semiring] = {sr.name: sr for sr in BUILTINS}

SemiringLike = Union[str, Semiring]


def get(name: SemiringLike) -> Semiring:
    """The registered semiring called ``name``; a :class:`Semiring` is returned if it is the registered one.

    Raises :class:`SemiringError` for an unknown name (listing the known ones), or for a Semiring object that
    is not the one registered under its name.
    """
    if type(name) is str:
        sr = _registry.get(name)           # a dict read is atomic: no lock on the hot path
        if sr is not None:
            return sr
    try:
        return _get(name)
    except SemiringError as exc:
        _report(exc, "get", name)
        raise


def names() -> list[str]:
    """Names of every registered semiring: the built-ins first, then the others in registration order."""
    _load_plugins()
    with _lock:
        return list(_registry)


def register(sr: Semiring, replace: bool = False) -> Semiring:
    """Check the laws of ``sr`` and register it under ``sr.name``; return it.

    Raises :class:`SemiringError`, registering nothing, if a law fails (the message lists every failure), if
    the name is taken and ``replace`` is false, or if the name is a built-in's (even with ``replace=True``).
    """
    _load_plugins()
    try:
        _register(sr, replace=replace, provider="runtime")
    except SemiringError as exc:
        _report(exc, "register", sr)
        raise
    return sr


def unregister(name: SemiringLike) -> Semiring:
    """Remove a registered semiring and return it; built-ins and unknown names raise :class:`SemiringError`."""
    try:
        return _unregister(name)
    except SemiringError as exc:
        _report(exc, "unregister", name)
        raise


def is_builtin(name: SemiringLike) -> bool:
    """True when ``name`` (or the Semiring's name) is one of the built-ins."""
    return (name.name if isinstance(name, Semiring) else name) in BUILTIN_NAMES


def _get(name: SemiringLike) -> Semiring:
    key = _key(name)
    sr = _lookup(key)
    if sr is None:
        _load_plugins()
        sr = _lookup(key)
    if isinstance(name, Semiring):
        if sr is name:
            return sr
        if sr is None:
            raise SemiringError(f"semiring {key!r} is not registered; call mmsb.semirings.register(sr) first")
        raise SemiringError(f"a different semiring named {key!r} is registered (provided by {sr.provider}); "
                            f"use mmsb.semirings.get({key!r}), or register this one with replace=True")
    if sr is None:
        raise SemiringError(f"unknown semiring {key!r}; known semirings: {', '.join(_names())}{_plugin_hint()}")
    return sr


def _register(sr: Semiring, replace: bool, provider: str) -> Optional[Semiring]:
    """Register ``sr`` for ``provider``; return the semiring it replaced (None if none). Used by plugins."""
    if not isinstance(sr, Semiring):
        raise SemiringError(f"register() takes an mmsb.Semiring, got {type(sr).__name__}")
    if sr.name in BUILTIN_NAMES:
        raise SemiringError(f"{sr.name!r} is a built-in semiring; built-ins can never be replaced "
                            "(choose another name)")
    problems = check_laws(sr)
    if problems:
        raise SemiringError(f"semiring {sr.name!r} was not registered (nothing changed): "
                            + "; ".join(problems))
    with _lock:
        previous = _registry.get(sr.name)
        if previous is not None and not replace:
            raise SemiringError(f"a semiring named {sr.name!r} is already registered (provided by "
                                f"{previous.provider}); pass replace=True to replace it")
        _registry[sr.name] = sr
        sr.provider = provider
    return previous


def _unregister(name: SemiringLike) -> Semiring:
    key = _key(name)
    if key in BUILTIN_NAMES:
        raise SemiringError(f"{key!r} is a built-in semiring; built-ins cannot be unregistered")
    if _lookup(key) is None:
        _load_plugins()
    with _lock:
        sr = _registry.get(key)
        if sr is None:
            raise SemiringError(f"unknown semiring {key!r}; known semirings: {', '.join(_registry)}")
        if isinstance(name, Semiring) and sr is not name:
            raise SemiringError(f"a different semiring named {key!r} is registered (provided by {sr.provider}); "
                                "nothing was unregistered")
        del _registry[key]
    return sr


def _restore(sr: Semiring, previous: Optional[Semiring]) -> None:
    """Undo ``_register(sr)`` if ``sr`` is still registered: put ``previous`` back (or drop the name)."""
    with _lock:
        if _registry.get(sr.name) is sr:
            if previous is None:
                del _registry[sr.name]
            else:
                _registry[sr.name] = previous


def _unregister_provider(provider: str) -> list[str]:
    """Drop every non-built-in semiring ``provider`` registered; return their names."""
    with _lock:
        gone = [n for n, sr in _registry.items() if sr.provider == provider and n not in BUILTIN_NAMES]
        for n in gone:
            del _registry[n]
    return gone


def _snapshot() -> dict[str, Semiring]:
    with _lock:
        return dict(_registry)


def _key(name: SemiringLike) -> str:
    if isinstance(name, Semiring):
        return name.name
    if isinstance(name, str):
        return name
    raise SemiringError(f"a semiring is given by name (str) or as an mmsb.Semiring, got {type(name).__name__}")


def _lookup(key: str) -> Optional[Semiring]:
    with _lock:
        return _registry.get(key)


def _names() -> list[str]:
    with _lock:
        return list(_registry)


def _load_plugins() -> None:
    from mmsb import plugins

    plugins.load_entrypoints()


def _plugin_hint() -> str:
    from mmsb import plugins

    if plugins.autoload_disabled():
        return f" (plugin autoload is disabled by {plugins.AUTOLOAD_ENV}=1)"
    failed = plugins.failures()
    if failed:
        return f" ({len(failed)} plugin(s) failed to load; see mmsb.plugins.failures())"
    return ""


def _report(exc: SemiringError, op: str, name: object) -> None:
    from mmsb import plugins

    shown = name.name if isinstance(name, Semiring) else name
    plugins.notify_error(exc, {"op": f"semirings.{op}", "semiring": shown})


__all__ = ["BUILTIN_NAMES", "get", "names", "register", "unregister", "is_builtin"]
