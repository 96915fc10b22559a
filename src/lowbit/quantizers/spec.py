"""Spec strings: ``int4:channel:mse`` parsed once into a typed :class:`QuantSpec`.

A string is parsed once (the parse is cached per string); the factory
(:func:`lowbit.quantizers.build_quantizer`) builds every quantizer class from the typed spec,
so a string means the same in ``lowbit.quantizer``, a config rule and a QAT layer.

Tokens, in any order after the format:

- format: ``int<b>``, ``uint<b>``, ``int<b>n`` (narrow), ``fxp<b>`` (fixed point), and the
  codebooks other modules register;
- granularity: ``tensor`` (default), ``channel`` / ``channel<axis>``, ``group<size>``;
- range: ``minmax`` (default), ``p<pct>`` (``p99``), ``mse``, ``octav``, ..., learned ``lsq`` / ``lsq.<range>``;
- ``pow2``: power-of-two scale (fixed point);
- rounding: ``nearest`` (default; half to even for integers), ``stochastic``;
- gradient: ``ste`` (default), ``clipped`` (zero gradient outside the range).
"""
from __future__ import annotations

from dataclasses import dataclass, field

from ..formats import Format, format_defaults, format_from_spec
from ..formats.registry import _REGISTRY as _FORMATS
from ..formats.registry import is_format_token, unknown_format_message
from ..ranges import Granularity, RangeEstimator, range_from_token, range_names
from ..ranges.registry import _RANGES
from ..suggest import closest, pattern_words

__all__ = ["QuantSpec", "parse_spec", "ROUNDINGS", "GRADIENTS"]

ROUNDINGS = ("nearest", "stochastic")
GRADIENTS = ("ste", "clipped")
_ROUNDINGS, _GRADIENTS = ROUNDINGS, GRADIENTS


@dataclass(frozen=True)
class QuantSpec:
    """A parsed spec string: every part named, defaults filled in.

    ``format``, ``granularity`` and ``range`` are the canonical tokens; ``fmt`` is the
    format the token names (built once, at parse time, for its bits and levels; each
    quantizer gets its own instance from :meth:`build_format`, since a learned codebook's
    levels change).
    """

    format: str
    granularity: str = "tensor"
    range: str = "minmax"
    pow2: bool = False
    rounding: str = "nearest"
    gradient: str = "ste"
    fmt: Format | None = field(default=None, compare=False, repr=False)

    def __str__(self) -> str:
        parts = [self.format]
        if self.granularity != "tensor":
            parts.append(self.granularity)
        if self.range != "minmax":
            parts.append(self.range)
        if self.pow2:
            parts.append("pow2")
        if self.rounding != "nearest":
            parts.append(self.rounding)
        if self.gradient != "ste":
            parts.append(self.gradient)
        return ":".join(parts)

    @property
    def bits(self) -> int:
        """Storage bits per code of the format."""
        return (self.fmt if self.fmt is not None else format_from_spec(self.format)).bits

    @property
    def learned(self) -> bool:
        """True when the range is learned (``lsq`` / ``lsq.<range>``): the factory builds an LSQ quantizer."""
        return self.range == "lsq" or self.range.startswith("lsq.")

    def build_format(self) -> Format:
        """A fresh instance of the format."""
        return format_from_spec(self.format)

    def build_range(self) -> RangeEstimator:
        """The range estimator the range token names."""
        est = range_from_token(self.range)
        if est is None:
            raise ValueError(f"spec {str(self)!r}: unknown range {self.range!r}; valid ranges: {', '.join(range_names())}")
        return est

    def build_granularity(self) -> Granularity:
        """The granularity the token names."""
        return Granularity.from_spec(self.granularity)


def _short(helps: list[str]) -> str:
    return ", ".join(dict.fromkeys(h.split(" (")[0] for h in helps))


def _valid_tokens() -> str:
    # Short on purpose: the families, not every format (lowbit.formats.format_names() has them all).
    return (
        "formats: the first token (lowbit.formats.format_names() lists them); "
        "granularity: tensor, channel, channel<axis>, group<size>; "
        f"ranges: {_short(range_names())}; pow2; rounding: {', '.join(ROUNDINGS)}; gradient: {', '.join(GRADIENTS)}"
    )


def _suggest_token(token: str) -> str | None:
    words = ["tensor", "channel", "pow2", *ROUNDINGS, *GRADIENTS]
    words += pattern_words([r"channel(-?\d+)?", r"group(\d+)"] + [p.pattern for p, _, _ in _RANGES], token)
    return closest(token, words)


def _unknown_token(token: str, spec: str) -> str:
    guess = _suggest_token(token)
    if guess is not None:
        return f"unknown token {token!r} in spec {spec!r}; did you mean {guess!r}?"
    return f"unknown token {token!r}; valid tokens are {_valid_tokens()} (in spec {spec!r})"


_CACHE: dict[str, QuantSpec] = {}


def parse_spec(spec: "str | QuantSpec") -> QuantSpec:
    """Parse a spec string such as ``int4:channel:mse`` into a :class:`QuantSpec` (a QuantSpec passes through)."""
    if isinstance(spec, QuantSpec):
        return spec
    if not isinstance(spec, str) or not spec.strip():
        raise ValueError(f"spec must be a non-empty string such as 'int4:channel:mse', got {spec!r}")
    # Registries only grow: their sizes key the cache, so a new registration re-parses.
    key = f"{len(_FORMATS)}:{len(_RANGES)}:{spec}"
    hit = _CACHE.get(key)
    if hit is None:
        hit = _CACHE[key] = _parse(spec)
    return hit


def _parse(spec: str) -> QuantSpec:
    tokens = [t.strip().lower() for t in spec.split(":")]
    fmt_token, rest = tokens[0], tokens[1:]
    if not is_format_token(fmt_token):
        raise ValueError(unknown_format_message(fmt_token, spec))
    try:
        fmt = format_from_spec(fmt_token)
    except ValueError as e:
        raise ValueError(f"spec {spec!r}: {e}") from None
    fields: dict[str, object] = {}

    def put(kind: str, value: object, token: str, user: bool) -> None:
        if kind in fields and user:
            raise ValueError(f"spec {spec!r}: more than one {kind} token ({token!r})")
        fields[kind] = value

    for user, toks in ((True, rest), (False, format_defaults(fmt_token))):
        for t in toks:
            kind: str
            if t in ROUNDINGS:
                kind, value = "rounding", t
            elif t in GRADIENTS:
                kind, value = "gradient", t
            elif t == "pow2":
                kind, value = "pow2", True
            elif range_from_token(t) is not None:
                kind, value = "range", t
            else:
                try:
                    value = Granularity.from_spec(t).spec
                    kind = "granularity"
                except ValueError:
                    raise ValueError(_unknown_token(t, spec)) from None
            if not user and kind in fields:
                continue  # the user's own token wins over the format's default
            put(kind, value, t, user)
    out = QuantSpec(format=fmt_token, fmt=fmt, **fields)  # type: ignore[arg-type]
    if out.learned and (out.pow2 or out.gradient != "ste"):
        raise ValueError(f"spec {spec!r}: 'lsq' learns its step size; it cannot be combined with pow2 or a gradient token")
    return out
