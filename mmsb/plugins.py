"""The plugin manager of project ``"mmsb"``: lazy entry-point loading, in-process plugins, error observers.

Nothing here runs at ``import mmsb``. The entry points of group ``"mmsb"`` are loaded once, on first need (an
unknown semiring name, :func:`mmsb.semirings.names`, :func:`providers`, :func:`notify_error`...), unless the
environment sets ``MMSB_DISABLE_PLUGIN_AUTOLOAD=1``. Each plugin is loaded on its own: one that fails to import
or whose ``mmsb_register_semirings`` hook raises is recorded as a :class:`~mmsb.errors.PluginError` naming it
(see :func:`failures`) and emitted as a :class:`PluginWarning`; the built-ins and the other plugins are unaffected.
"""
from __future__ import annotations

import importlib.metadata
import logging
import os
import threading
import warnings
from typing import Any, Optional

import pluggy

from mmsb import hookspecs
from mmsb.errors import PluginError
from mmsb.semiring import Semiring

GROUP = "mmsb"
AUTOLOAD_ENV = "MMSB_DISABLE_PLUGIN_AUTOLOAD"

hookimpl = pluggy.HookimplMarker(hookspecs.PROJECT)
"""Marks a plugin's hook implementations (re-exported as ``mmsb.hookimpl``)."""

logger = logging.getLogger("mmsb")


class PluginWarning(UserWarning):
    """A plugin failed to load or to register; the error is kept in :func:`failures`."""


class _State:
    """The process-wide plugin state, created lazily."""

    def __init__(self) -> None:
        self.lock = threading.RLock()
        self.manager: Optional[pluggy.PluginManager] = None
        self.loaded = False
        self.entrypoint_plugins: list[str] = []
        self.failures: list[PluginError] = []


_state = _State()


class PluginRegistry:
    """The ``registry`` a plugin's ``mmsb_register_semirings`` hook receives: registers on the plugin's behalf."""

    def __init__(self, plugin: str) -> None:
        self.plugin = plugin
        self.registered: list[tuple[Semiring, Optional[Semiring]]] = []

    def register(self, sr: Semiring, replace: bool = False) -> Semiring:
        """Check the laws and register ``sr`` with this plugin as its provider (see :func:`mmsb.semirings.register`)."""
        from mmsb import semirings

        previous = semirings._register(sr, replace=replace, provider=self.plugin)
        self.registered.append((sr, previous))
        return sr

    def get(self, name: Any) -> Semiring:
        """:func:`mmsb.semirings.get`."""
        from mmsb import semirings

        return semirings.get(name)

    def names(self) -> list[str]:
        """:func:`mmsb.semirings.names`."""
        from mmsb import semirings

        return semirings.names()

    def rollback(self) -> None:
        """Undo this plugin's registrations (restoring any semiring one of them replaced)."""
        from mmsb import semirings

        for sr, previous in reversed(self.registered):
            semirings._restore(sr, previous)
        self.registered.clear()


def get_manager() -> pluggy.PluginManager:
    """The :class:`pluggy.PluginManager` of project ``"mmsb"`` (created on first call; loads no entry point)."""
    with _state.lock:
        if _state.manager is None:
            pm = pluggy.PluginManager(hookspecs.PROJECT)
            pm.add_hookspecs(hookspecs)
            _state.manager = pm
        return _state.manager


def autoload_disabled() -> bool:
    """True when the environment sets ``MMSB_DISABLE_PLUGIN_AUTOLOAD=1``."""
    return os.environ.get(AUTOLOAD_ENV, "") == "1"


def load_entrypoints() -> list[str]:
    """Load the plugins of entry-point group ``"mmsb"`` (once per process); return the names loaded.

    Does nothing and returns ``[]`` while ``MMSB_DISABLE_PLUGIN_AUTOLOAD=1``. Never raises for a broken
    plugin: its :class:`PluginError` goes to :func:`failures` and is emitted as a :class:`PluginWarning`.
    """
    if autoload_disabled():
        return []
    with _state.lock:
        if not _state.loaded:
            _state.loaded = True
            for ep in _entry_points():
                name = _load_one(ep)
                if name is not None:
                    _state.entrypoint_plugins.append(name)
        return list(_state.entrypoint_plugins)


def _entry_points() -> list[importlib.metadata.EntryPoint]:
    seen: dict[tuple[str, str], importlib.metadata.EntryPoint] = {}
    for ep in importlib.metadata.entry_points(group=GROUP):
        seen.setdefault((ep.name, ep.value), ep)
    return sorted(seen.values(), key=lambda ep: (ep.name, ep.value))


def _load_one(ep: importlib.metadata.EntryPoint) -> Optional[str]:
    pm = get_manager()
    if pm.has_plugin(ep.name):
        return None
    dist = getattr(ep, "dist", None)
    origin = f"{ep.value}" + (f" from {dist.name} {dist.version}" if dist is not None else "")
    try:
        obj = ep.load()
    except (Exception, SystemExit) as exc:
        msg = f"mmsb plugin {ep.name!r} ({origin}) failed to import: {type(exc).__name__}: {exc}"
        _warn(_fail(PluginError(msg), ep.name, exc))
        return None
    if pm.is_registered(obj):
        return None
    try:
        return _register(obj, ep.name)
    except PluginError as err:
        _warn(err)
        return None


def register_plugin(obj: object, name: Optional[str] = None) -> str:
    """Register an in-process plugin and call its ``mmsb_register_semirings`` hook at once; return its name.

    Raises :class:`PluginError` (also recorded in :func:`failures`) if the plugin cannot be registered or its
    hook raises; the plugin is then removed again and nothing it registered stays registered.
    """
    return _register(obj, name)


def _register(obj: object, name: Optional[str]) -> str:
    pm = get_manager()
    with _state.lock:
        if name is None:
            name = pm.get_canonical_name(obj)
        added = False
        try:
            pm.register(obj, name=name)
            added = True
            pm.check_pending()
        except Exception as exc:
            if added:
                pm.unregister(obj)
            raise _fail(PluginError(f"mmsb plugin {name!r} could not be registered: {exc}"), name, exc) from exc
        registry = PluginRegistry(name)
        try:
            for impl in pm.hook.mmsb_register_semirings.get_hookimpls():
                if impl.plugin is obj:
                    impl.function(**{k: registry for k in impl.argnames})
        except Exception as exc:
            registry.rollback()
            pm.unregister(obj)
            msg = f"mmsb plugin {name!r}: mmsb_register_semirings raised {type(exc).__name__}: {exc}"
            raise _fail(PluginError(msg), name, exc) from exc
    logger.debug("mmsb plugin %r registered semirings %s", name, [sr.name for sr, _ in registry.registered])
    return name


def unregister_plugin(name: str) -> list[str]:
    """Remove a plugin and the semirings it provided; return those semirings' names. Unknown -> PluginError."""
    from mmsb import semirings

    pm = get_manager()
    if not pm.has_plugin(name):
        err = PluginError(f"no mmsb plugin named {name!r} is registered (registered: {', '.join(plugin_names())})")
        err.plugin = name
        notify_error(err, {"op": "plugins.unregister_plugin", "plugin": name})
        raise err
    with _state.lock:
        pm.unregister(name=name)
        if name in _state.entrypoint_plugins:
            _state.entrypoint_plugins.remove(name)
        return semirings._unregister_provider(name)


def plugin_names() -> list[str]:
    """Names of the registered plugins (entry-point ones are named after their entry point)."""
    pm = get_manager()
    return sorted(n for n, p in pm.list_name_plugin() if p is not None)


def providers() -> dict[str, str]:
    """Map every registered semiring name to its provider: ``"mmsb"``, ``"runtime"`` or a plugin's name."""
    from mmsb import semirings

    load_entrypoints()
    return {name: sr.provider for name, sr in semirings._snapshot().items()}


def failures() -> list[PluginError]:
    """The :class:`PluginError` of every plugin that failed to load or to register, in order."""
    with _state.lock:
        return list(_state.failures)


def _fail(err: PluginError, plugin: str, cause: BaseException) -> PluginError:
    """Record ``err`` (caused by ``cause``) as a failure of ``plugin``, tell the observers, return it."""
    err.plugin = plugin  # type: ignore[attr-defined]
    err.__cause__ = cause
    with _state.lock:
        _state.failures.append(err)
    notify_error(err, {"op": "plugins.register", "plugin": plugin})
    return err


def _warn(err: PluginError) -> None:
    """Emit ``err`` as a :class:`PluginWarning` located at the plugin (``<mmsb plugin NAME>``), not at mmsb's source."""
    plugin = getattr(err, "plugin", None) or "?"
    warnings.warn_explicit(f"{err} (the plugin is skipped; see mmsb.plugins.failures())", PluginWarning,
                           filename=f"<mmsb plugin {plugin}>", lineno=0, module="mmsb.plugins")


def notify_error(error: BaseException, context: Optional[dict] = None) -> None:
    """Tell the ``mmsb_on_error`` observers about ``error`` (once per error object; never raises).

    Logs at debug level on logger ``"mmsb"``; an observer that raises is logged and skipped.
    """
    if getattr(error, "_mmsb_notified", False):
        return
    try:
        error._mmsb_notified = True  # type: ignore[attr-defined]
    except AttributeError:
        pass
    context = dict(context or {})
    logger.debug("mmsb error %s: %s (context %r)", type(error).__name__, error, context)
    try:
        load_entrypoints()
        impls = get_manager().hook.mmsb_on_error.get_hookimpls()
    except Exception:
        logger.exception("mmsb: could not reach the mmsb_on_error observers")
        return
    for impl in impls:
        args = {"error": error, "context": context}
        try:
            impl.function(**{k: args[k] for k in impl.argnames})
        except Exception:
            logger.warning("mmsb plugin %r: mmsb_on_error raised", impl.plugin_name, exc_info=True)


__all__ = ["GROUP", "AUTOLOAD_ENV", "hookimpl", "PluginWarning", "PluginRegistry", "get_manager",
           "autoload_disabled", "load_entrypoints", "register_plugin", "unregister_plugin", "plugin_names",
           "providers", "failures", "notify_error"]
