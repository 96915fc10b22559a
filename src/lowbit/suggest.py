""""Did you mean ...?" for mistyped spec tokens (difflib over the tokens a registry knows)."""
from __future__ import annotations

import difflib
import re
from typing import Iterable

__all__ = ["closest", "pattern_words"]


def _distance(a: str, b: str) -> int:
    """Edits from ``a`` to ``b``: insertions, deletions, substitutions and swaps of neighbours (OSA distance)."""
    prev2: list[int] = []
    prev = list(range(len(b) + 1))
    for i, ca in enumerate(a, 1):
        cur = [i] + [0] * len(b)
        for j, cb in enumerate(b, 1):
            cur[j] = min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (ca != cb))
            if i > 1 and j > 1 and ca == b[j - 2] and a[i - 2] == cb:
                cur[j] = min(cur[j], prev2[j - 2] + 1)
        prev2, prev = prev, cur
    return prev[-1]


def closest(token: str, candidates: Iterable[str]) -> str | None:
    """The candidate a typo of ``token`` most likely meant, or None when none is close.

    Close means a few edits away (one per four characters, at least one): ``chanel`` ->
    ``channel``, ``nf5`` -> ``nf4``; ``int99x`` is close to nothing. Ties go to the most
    similar by :mod:`difflib`'s ratio.
    """
    pool = [c for c in dict.fromkeys(candidates) if c != token]
    limit = max(1, len(token) // 4)
    near = [(d, c) for c in pool if (d := _distance(token, c)) <= limit]
    if not near:
        return None
    best = min(d for d, _ in near)
    ties = [c for d, c in near if d == best]
    return max(ties, key=lambda c: difflib.SequenceMatcher(None, token, c).ratio())


def pattern_words(patterns: Iterable[str], token: str) -> list[str]:
    """Concrete tokens a list of full-match patterns suggests for ``token``.

    A literal pattern (``mse``) is itself; a pattern that starts with a word and a
    group (``octav(?P<n>\\d+)?``, ``group(\\d+)``) gives the word alone and the word
    followed by ``token``'s own trailing number (``grup64`` -> ``group64``).
    """
    digits = re.search(r"\d[\d.]*$", token)
    tail = digits.group(0) if digits else ""
    out: list[str] = []
    for pat in patterns:
        if re.fullmatch(r"[a-z0-9_.]+", pat):
            out.append(pat)
            continue
        m = re.match(r"([a-z_]+)[(\[]", pat)
        if m:  # only words the pattern accepts (``int`` alone is no format, ``octav`` is a range)
            out += [w for w in (m.group(1), m.group(1) + tail) if re.fullmatch(pat, w)]
    return out
