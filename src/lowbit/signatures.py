"""One parameter list for a function and the wrappers that take the same arguments (a leaf: imports nothing of lowbit)."""
from __future__ import annotations

import functools
import inspect
from typing import Any, Callable, TypeVar

__all__ = ["parameters_of", "keywords_of"]

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


def keywords_of(source: Callable[..., Any]) -> Callable[[Callable[..., R]], Callable[..., R]]:
    """Let the decorated ``f(..., **kw)`` take ``source``'s keyword-only parameters too, checked and defaulted.

    For a function that adds a step in front of ``source`` and passes the rest on: its own
    parameters come first, then ``source``'s keyword-only ones (one list, kept in ``source``);
    a keyword neither knows raises ``TypeError`` before anything runs.
    """
    extra = [p for p in inspect.signature(source).parameters.values() if p.kind is inspect.Parameter.KEYWORD_ONLY]

    def decorate(f: Callable[..., R]) -> Callable[..., R]:
        own = inspect.signature(f)
        mine = [p for p in own.parameters.values() if p.kind is not inspect.Parameter.VAR_KEYWORD]
        if len(mine) == len(own.parameters) or any(p.kind not in _NAMED for p in mine):
            raise TypeError(f"f must take named parameters and **kwargs, got {own}")
        clash = {p.name for p in mine} & {p.name for p in extra}
        if clash:
            raise TypeError(f"f and source both define {sorted(clash)}")
        sig = own.replace(parameters=mine + extra)

        @functools.wraps(f)
        def wrapper(*args: Any, **kwargs: Any) -> R:
            bound = sig.bind(*args, **kwargs)
            bound.apply_defaults()
            return f(**bound.arguments)

        wrapper.__signature__ = sig  # type: ignore[attr-defined]
        return wrapper

    return decorate
