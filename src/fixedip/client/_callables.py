"""Decorator plumbing shared by guard() and retrying(), without inspect or functools
(importing them costs a function's cold start more than the whole SDK)."""

from __future__ import annotations

TYPE_CHECKING = False  # typing.TYPE_CHECKING, without importing typing at run time
if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import Any, ParamSpec, TypeVar

    P = ParamSpec("P")
    T = TypeVar("T")

_CO_COROUTINE = 0x80  # inspect.CO_COROUTINE


def is_async(fn: object) -> bool:
    code = getattr(fn, "__code__", None)
    if code is not None:
        return bool(code.co_flags & _CO_COROUTINE)
    import inspect

    return inspect.iscoroutinefunction(fn)


def wraps(wrapper: Callable[..., Any], wrapped: Callable[P, T]) -> Callable[P, T]:
    """functools.wraps, without importing functools at a function's cold start."""
    for name in ("__module__", "__name__", "__qualname__", "__doc__"):
        if hasattr(wrapped, name):
            setattr(wrapper, name, getattr(wrapped, name))
    wrapper.__dict__.update(getattr(wrapped, "__dict__", {}))
    wrapper.__wrapped__ = wrapped  # type: ignore[attr-defined]
    return wrapper
