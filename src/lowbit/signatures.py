"""One parameter list for a function and the wrappers that take the same arguments (a leaf: imports nothing of lowbit)."""
from __future__ import annotations

import functools
import inspect
from typing import Any, Callable, TypeVar

__all__ = ["parameters_of"]

R = TypeVar("R")
_NAMED = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)


def parameters_of(source: Callable[..., Any]) -> Callable[[Callable[..., R]], Callable[..., R]]:
    """Give the decorated ``f(**arguments)`` the parameters of ``source``: calls bind to them, defaults filled in.

    The wrapper is called as ``source`` is (positionally or by name, the same defaults and the
    same ``TypeError`` for a wrong argument) and receives every argument by name; ``help()`` and
    editors show ``source``'s parameters. The list is written once, in ``source``.
    """
    sig = inspect.signature(source)
    if any(p.kind not in _NAMED for p in sig.parameters.values()):
        raise TypeError(f"source must take only named parameters (no *args, **kwargs or positional-only), got {sig}")

    def decorate(f: Callable[..., R]) -> Callable[..., R]:
        @functools.wraps(f)
        def wrapper(*args: Any, **kwargs: Any) -> R:
            bound = sig.bind(*args, **kwargs)
            bound.apply_defaults()
            return f(**bound.arguments)

        wrapper.__signature__ = sig.replace(return_annotation=inspect.signature(f).return_annotation)  # type: ignore[attr-defined]
        return wrapper

    return decorate
