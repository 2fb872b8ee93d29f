"""Error observation: every :class:`~mmsb.errors.MMSBError` a public call raises reaches ``mmsb_on_error``."""
from __future__ import annotations

import functools
from typing import Any, Callable, Optional, TypeVar

from mmsb.errors import MMSBError

F = TypeVar("F", bound=Callable[..., Any])


def observed(fn: Optional[F] = None, *, op: Optional[str] = None) -> Any:
    """Decorate a public method: an MMSBError it raises is reported to the ``mmsb_on_error`` observers with the
    context ``{"op": <op or the method's name>, "target": repr(self)}``, then re-raised (once per error)."""

    def deco(f: F) -> F:
        name = op or f.__name__

        @functools.wraps(f)
        def wrapper(self: Any, *args: Any, **kwargs: Any) -> Any:
            try:
                return f(self, *args, **kwargs)
            except MMSBError as exc:
                report(exc, name, self)
                raise

        return wrapper  # type: ignore[return-value]

    return deco(fn) if fn is not None else deco


def report(exc: MMSBError, op: str, target: Any) -> None:
    """Report ``exc``, raised by the public call ``op`` on ``target``, to the ``mmsb_on_error`` observers (what
    :func:`observed` does; a hot verb whose own body catches its errors calls it, with no wrapper frame on every
    call)."""
    from mmsb import plugins

    plugins.notify_error(exc, {"op": op, "target": _describe(target)})


def _describe(obj: Any) -> str:
    try:
        return repr(obj)
    except Exception:                   # (a half-built object must not hide the error being reported)
        return object.__repr__(obj)
