"""QuantConfig: which modules get which weight and activation quantizers.

A config is two ordered rule lists, *the last matching rule wins*:

- ``weights``: pattern -> weight spec (or None to keep the module float);
- ``acts``: pattern -> activation spec for the inputs of quantized layers
  (``uint8``, ``a8``), or PACT for ReLU modules (``a4:pact`` / ``uint4:pact``).

A pattern is a glob over module names (``*``, ``features.*``, ``classifier``;
a name also matches its children: ``classifier`` covers ``classifier.0``) or a
module type (``nn.Conv2d`` in Python, ``type:Conv2d`` in strings).

One-line form (the command line): comma-separated items::

    *=int4:channel:mse, classifier=int8, features.0=none, a:*=uint8
    w4, a8                     # shorthands: every layer, weights and inputs
    w4:lsq, type:Linear=int8   # 'w4:lsq' = int4:channel:lsq
    w2:lsq, fold_bn=false
    fxp4:p99, scope=connection # spiking networks: one scale per connection (default: per population)

Shorthands: ``w<b>`` = ``int<b>:channel:mse``; ``w<b>:<tokens>`` = ``int<b>:channel:<tokens>``
(or ``<tokens>`` when they start with a format, e.g. ``w4:nf4:group64``);
``a<b>`` = ``uint<b>:p99.99``; ``a<b>:<tokens>`` = ``uint<b>:<tokens>`` (``a4:pact``).
"""
from __future__ import annotations

import fnmatch
import re
from dataclasses import dataclass, field
from typing import Mapping, Union

from torch import nn

from .formats.registry import is_format_token
from .quantizers import QuantSpec, parse_spec
from .ranges import Granularity

__all__ = ["QuantConfig", "as_config", "expand_spec", "Pattern"]

Pattern = Union[str, type]

_NONE = ("none", "float", "fp32", "")
SCOPES = ("population", "connection")  # spiking networks: which weights share a scale
_TRUE, _FALSE = ("1", "true", "yes", "on"), ("0", "false", "no", "off")


def _has_granularity(tokens: list[str]) -> bool:
    for t in tokens:
        try:
            Granularity.from_spec(t)
            return True
        except ValueError:
            pass
    return False


def expand_spec(spec: str | None, role: str = "weight") -> str | None:
    """Expand shorthands (``w4``, ``a8``, ``none``) and validate a spec; None means float."""
    return _expand(spec, role)[0]


def _expand(spec: str | None, role: str) -> tuple[str | None, QuantSpec | None]:
    """The expanded spec string and its parsed form (without the activation-only ``pact`` token)."""
    if role not in ("weight", "act"):
        raise ValueError(f"role must be 'weight' or 'act', got {role!r}")
    if spec is None:
        return None, None
    if not isinstance(spec, str):
        raise TypeError(f"a spec must be a string or None, got {type(spec).__name__}")
    text = spec.strip().lower()
    if text in _NONE:
        return None, None
    tokens = text.split(":")
    m = re.fullmatch(r"([wa])(\d+)", tokens[0])
    if m:
        kind, bits = m.group(1), int(m.group(2))
        if bits < 1:
            raise ValueError(f"spec {spec!r}: bits must be >= 1")
        rest = tokens[1:]
        if rest and is_format_token(rest[0]):
            fmt_bits = parse_spec(rest[0]).bits
            if fmt_bits != bits:
                raise ValueError(f"spec {spec!r}: format {rest[0]!r} has {fmt_bits} bits, not {bits}")
            tokens = rest
        elif kind == "w":
            tokens = [f"int{bits}"] + (rest or ["mse"])
            if not _has_granularity(rest):
                tokens.insert(1, "channel")
        else:
            tokens = [f"uint{bits}"] + (rest or ["p99.99"])
    out = ":".join(tokens)
    check = ":".join(t for t in tokens if t != "pact")
    if "pact" in tokens and role == "weight":
        raise ValueError(f"spec {spec!r}: 'pact' is an activation quantizer; use it in an activation rule")
    return out, parse_spec(check)  # raises a ValueError naming the bad token


def _check_pattern(p: object) -> Pattern:
    if isinstance(p, type):
        if not issubclass(p, nn.Module):
            raise TypeError(f"a type pattern must be an nn.Module subclass, got {p!r}")
        return p
    if not isinstance(p, str) or not p.strip():
        raise ValueError(f"a pattern must be a module-name glob or an nn.Module type, got {p!r}")
    return p.strip()


def _pattern_str(p: Pattern) -> str:
    return f"type:{p.__name__}" if isinstance(p, type) else p


@dataclass
class QuantConfig:
    """Weight and activation rules (pattern -> spec, last match wins) and BN folding."""

    weights: dict[Pattern, str | None] = field(default_factory=lambda: {"*": "int8:channel"})
    acts: dict[Pattern, str | None] = field(default_factory=dict)
    fold_bn: bool = True
    scope: str = "population"  # spiking networks: one weight scale per population or per connection

    def __post_init__(self) -> None:
        if not isinstance(self.weights, Mapping) or not isinstance(self.acts, Mapping):
            raise TypeError("weights and acts must be mappings of pattern -> spec")
        # Each rule is parsed once, here: the strings stay the public form, the typed specs ride along.
        w = {_check_pattern(k): _expand(v, "weight") for k, v in self.weights.items()}
        a = {_check_pattern(k): _expand(v, "act") for k, v in self.acts.items()}
        self.weights = {k: v[0] for k, v in w.items()}
        self.acts = {k: v[0] for k, v in a.items()}
        self._parsed_w: dict[Pattern, QuantSpec | None] = {k: v[1] for k, v in w.items()}
        self._parsed_a: dict[Pattern, QuantSpec | None] = {k: v[1] for k, v in a.items()}
        if not isinstance(self.fold_bn, bool):
            raise TypeError(f"fold_bn must be a bool, got {self.fold_bn!r}")
        if self.scope not in SCOPES:
            raise ValueError(f"scope must be one of {', '.join(SCOPES)}, got {self.scope!r}")

    # ------------------------------------------------------------------ string form

    @classmethod
    def parse(cls, text: str) -> "QuantConfig":
        """Parse the one-line form, e.g. ``"*=int4:channel:mse,classifier=int8,a:*=uint8"``."""
        if not isinstance(text, str) or not text.strip():
            raise ValueError(f"config must be a non-empty string such as 'w4,a8' or '*=int4:channel:mse', got {text!r}")
        weights: dict[Pattern, str | None] = {}
        acts: dict[Pattern, str | None] = {}
        fold, scope = True, "population"
        for item in (i.strip() for i in text.split(",")):
            if not item:
                continue
            if "=" not in item:
                # A bare spec applies to every layer: 'w4', 'a8', 'int4:channel:mse'.
                try:
                    role = "act" if re.match(r"a\d", item) else "weight"
                    expand_spec(item, role)
                except ValueError as e:
                    raise ValueError(
                        f"config item {item!r}: expected 'pattern=spec', 'a:pattern=spec', a bare spec "
                        f"('w4', 'a8', 'int4:channel:mse') or 'fold_bn=true|false' ({e})"
                    ) from None
                (weights if role == "weight" else acts)["*"] = item
                continue
            key, value = (s.strip() for s in item.split("=", 1))
            if key == "fold_bn":
                if value.lower() not in _TRUE + _FALSE:
                    raise ValueError(f"config item {item!r}: fold_bn must be true or false")
                fold = value.lower() in _TRUE
                continue
            if key == "scope":
                scope = value.lower()
                continue
            target = weights
            if key.startswith("a:"):
                target, key = acts, key[2:]
            elif key.startswith("w:"):
                key = key[2:]
            pattern: Pattern = _type_named(key[5:]) if key.startswith("type:") else key
            target[pattern] = value
        return cls(weights, acts, fold, scope)

    def __str__(self) -> str:
        items = [f"{_pattern_str(k)}={v or 'none'}" for k, v in self.weights.items()]
        items += [f"a:{_pattern_str(k)}={v or 'none'}" for k, v in self.acts.items()]
        if not self.fold_bn:
            items.append("fold_bn=false")
        if self.scope != "population":
            items.append(f"scope={self.scope}")
        return ",".join(items)

    # ------------------------------------------------------------------ matching

    @staticmethod
    def _matches(pattern: Pattern, name: str, module: nn.Module) -> bool:
        if isinstance(pattern, type):
            return isinstance(module, pattern)
        return name == pattern or fnmatch.fnmatchcase(name, pattern) or name.startswith(pattern + ".")

    def _lookup(self, rules: Mapping[Pattern, object], name: str, module: nn.Module) -> object:
        spec = None
        for pattern, s in rules.items():
            if self._matches(pattern, name, module):
                spec = s
        return spec

    def weight_spec(self, name: str, module: nn.Module) -> str | None:
        """The weight spec for the module called ``name`` (None: keep float)."""
        return self._lookup(self.weights, name, module)  # type: ignore[return-value]

    def act_spec(self, name: str, module: nn.Module) -> str | None:
        """The activation spec for the module called ``name`` (None: no activation quantizer)."""
        return self._lookup(self.acts, name, module)  # type: ignore[return-value]

    def weight_qspec(self, name: str, module: nn.Module) -> QuantSpec | None:
        """The parsed weight spec for the module called ``name`` (None: keep float)."""
        return self._lookup(self._parsed_w, name, module)  # type: ignore[return-value]

    def act_qspec(self, name: str, module: nn.Module) -> QuantSpec | None:
        """The parsed activation spec (without ``pact``) for the module called ``name``."""
        return self._lookup(self._parsed_a, name, module)  # type: ignore[return-value]

    def patterns(self) -> list[Pattern]:
        """Every pattern of both rule lists."""
        return list(self.weights) + list(self.acts)


def _type_named(name: str) -> type:
    t = getattr(nn, name, None)
    if isinstance(t, type) and issubclass(t, nn.Module):
        return t
    from .nn.handlers import handled_classes

    for h in handled_classes():
        if h.__name__ == name:
            return h
    raise ValueError(f"unknown module type {name!r} in 'type:{name}'; use a torch.nn class name such as Conv2d or Linear")


def as_config(config: "QuantConfig | str | Mapping[Pattern, str | None]") -> QuantConfig:
    """Accept a QuantConfig, its one-line string form, or a mapping of weight rules."""
    if isinstance(config, QuantConfig):
        return config
    if isinstance(config, str):
        return QuantConfig.parse(config)
    if isinstance(config, Mapping):
        return QuantConfig(dict(config))
    raise TypeError(f"config must be a QuantConfig, a string such as 'w4,a8', or a dict of pattern -> spec; got {type(config).__name__}")
