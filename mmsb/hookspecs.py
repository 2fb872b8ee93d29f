"""The pluggy hook specifications of project ``"mmsb"``.

A plugin is a module (or any object) whose functions are marked with :data:`mmsb.plugins.hookimpl`
(re-exported as ``mmsb.hookimpl``). Installed plugins advertise themselves through the entry-point group
``"mmsb"``; in-process ones are added with :func:`mmsb.plugins.register_plugin`.
"""
from __future__ import annotations

from typing import Any

import pluggy

PROJECT = "mmsb"

hookspec = pluggy.HookspecMarker(PROJECT)


@hookspec
def mmsb_register_semirings(registry: Any) -> None:
    """Register the plugin's semirings by calling ``registry.register(sr)`` for each.

    ``registry.register(sr, replace=False)`` checks the semiring laws and records this plugin as the semiring's
    provider; it raises :class:`mmsb.errors.SemiringError` on a failed law or a name already taken. If the
    hook raises, everything it registered is rolled back and the plugin is reported as a
    :class:`mmsb.errors.PluginError`. ``registry.get(name)`` and ``registry.names()`` are also available.
    """


@hookspec(firstresult=False)
def mmsb_on_error(error: BaseException, context: dict) -> None:
    """Observe an error: called once with every :class:`mmsb.errors.MMSBError` mmsb raises from a public call.

    ``context`` is a dict describing the call (at least ``"op"``, e.g. ``"semirings.get"``). The return value
    is ignored, and an exception raised here is logged and swallowed: it never changes the error the caller
    sees, nor stops the other implementations from running.
    """
