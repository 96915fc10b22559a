"""The format registry: spec tokens (full-match patterns) to format factories."""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Callable, Sequence

from .base import Format

__all__ = [
    "register_format",
    "format_from_spec",
    "format_defaults",
    "format_names",
    "format_examples",
    "is_format_token",
    "format_kinds",
    "unknown_format_message",
]


@dataclass(frozen=True)
class _Entry:
    pattern: re.Pattern[str]
    factory: Callable[[re.Match[str]], Format]
    defaults: tuple[str, ...]
    help: str
    examples: tuple[str, ...]


_REGISTRY: list[_Entry] = []


def register_format(
    pattern: str,
    factory: Callable[[re.Match[str]], Format],
    *,
    defaults: Sequence[str] = (),
    help: str = "",
    examples: Sequence[str] = (),
) -> None:
    """Register a named format: ``pattern`` (a full-match regex) maps a spec token to a Format.

    ``defaults`` are spec tokens applied unless the user gives their own of the
    same kind (for example NF4's ``group64``). ``examples`` are tokens the
    conformance suite builds; without them, literal patterns and patterns with
    a ``(?P<bits>...)`` group (tried at 1..8 bits) are enumerated.
    """
    _REGISTRY.append(_Entry(re.compile(pattern), factory, tuple(defaults), help or pattern, tuple(examples)))


def _lookup(token: str) -> tuple[Format, tuple[str, ...]] | None:
    for entry in reversed(_REGISTRY):  # later registrations win
        m = entry.pattern.fullmatch(token)
        if m:
            return entry.factory(m), entry.defaults
    return None


def format_from_spec(token: str) -> Format:
    """Build the format named by one spec token (``int4``, ``uint8``, ``int8n``, ...)."""
    found = _lookup(token)
    if found is None:
        raise ValueError(unknown_format_message(token))
    return found[0]


def is_format_token(token: str) -> bool:
    """True when ``token`` names a registered format (without building it)."""
    return any(e.pattern.fullmatch(token) for e in _REGISTRY)


def format_kinds() -> str:
    """The registered format families, short (``int<b>, uint<b>, nf4, ...``), for error messages."""
    return ", ".join(dict.fromkeys(e.help.split(" (")[0].split(" [")[0] for e in _REGISTRY))


def unknown_format_message(token: str, spec: str | None = None) -> str:
    """``unknown format 'nf5'; did you mean 'nf4'?`` (or the short list of families when nothing is close)."""
    from ..suggest import closest, pattern_words

    where = f" in spec {spec!r}" if spec is not None and spec != token else ""
    guess = closest(token, format_examples() + pattern_words([e.pattern.pattern for e in _REGISTRY], token))
    if guess is not None:
        return f"unknown format {token!r}{where}; did you mean {guess!r}?"
    return f"unknown format {token!r}{where}; valid formats: {format_kinds()}"


def format_defaults(token: str) -> tuple[str, ...]:
    """Default spec tokens that come with a named format."""
    found = _lookup(token)
    return found[1] if found else ()


def format_names() -> list[str]:
    """Human-readable list of the registered format patterns."""
    return [e.help for e in _REGISTRY]


def format_examples() -> list[str]:
    """Spec tokens of every registered format that can be built (what the conformance suite checks)."""
    out: list[str] = []
    for e in _REGISTRY:
        cands = list(e.examples)
        pat = e.pattern.pattern
        if not cands and "(?P<bits>" in pat:
            cands = [re.sub(r"\(\?P<bits>[^)]*\)", str(b), pat) for b in range(1, 9)]
        elif not cands and re.fullmatch(r"[A-Za-z0-9_]+", pat):
            cands = [pat]
        for tok in cands:
            if e.pattern.fullmatch(tok) and tok not in out:
                try:
                    e.factory(e.pattern.fullmatch(tok))  # type: ignore[arg-type]
                except ValueError:
                    continue  # e.g. int1n: not a valid member of the family
                out.append(tok)
    return out

