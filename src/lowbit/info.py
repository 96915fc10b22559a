"""One typed record of what lowbit did to a model: ``model.lowbit_info`` (a frozen :class:`LowbitInfo`).

The verbs (``quantize``, ``prepare_qat``, ``convert``, ``load``), weight sharing, the
reference-model builder and the crossbar simulator all write it through :func:`set_info`;
``save`` serialises it into the file's metadata (:meth:`LowbitInfo.to_metadata`, sorted
JSON: the same record gives the same bytes) and ``load`` reads it back.

The eight loose attributes of earlier versions (``lowbit_stage``, ``lowbit_config``,
``lowbit_layers``, ``lowbit_fold_bn``, ``lowbit_folded``, ``lowbit_arch``, and
``lowbit_fixing_log`` / ``lowbit_cim`` from ``extra``) are still set, as copies of the
record, for code that reads them; lowbit itself reads only ``lowbit_info``, so
assigning to an old name changes nothing.
"""
from __future__ import annotations

import copy
import dataclasses
import json
from dataclasses import dataclass, field
from typing import Any, Mapping

__all__ = ["LowbitInfo", "STAGES", "FORMAT_VERSION", "info_of", "set_info", "attach"]

FORMAT_VERSION = 1
STAGES = ("float", "ptq", "qat", "converted")
# old attribute name -> LowbitInfo field
_LEGACY = {
    "lowbit_stage": "stage",
    "lowbit_config": "config",
    "lowbit_layers": "layers",
    "lowbit_fold_bn": "fold_bn",
    "lowbit_folded": "folded",
    "lowbit_arch": "arch",
}
_LEGACY_EXTRA = ("fixing_log", "cim")


@dataclass(frozen=True)
class LowbitInfo:
    """What lowbit did to a model: stage, config, per-layer specs, BatchNorm folding, architecture, attached results.

    ``layers`` maps a layer name to ``{"kind", "weight", "act", "converted"}`` (``kind`` is
    the quantized module's class); ``arch`` describes a reference model so that ``load``
    can rebuild it; ``extra`` holds results that algorithms and targets attach
    (``fixing_log``, ``cim``). Change it with :func:`set_info` or ``dataclasses.replace``.
    """

    stage: str = "float"
    config: str = ""
    layers: dict[str, dict[str, Any]] = field(default_factory=dict)
    fold_bn: bool = False
    folded: tuple[str, ...] = ()
    arch: dict[str, Any] | None = None
    extra: dict[str, Any] = field(default_factory=dict)
    version: int = FORMAT_VERSION

    def __post_init__(self) -> None:
        if self.stage not in STAGES:
            raise ValueError(f"stage must be one of {', '.join(STAGES)}, got {self.stage!r}")
        if not isinstance(self.config, str):
            raise TypeError(f"config must be a string, got {type(self.config).__name__}")
        if not isinstance(self.layers, Mapping):
            raise TypeError(f"layers must be a mapping of layer name -> description, got {type(self.layers).__name__}")
        # private copies: a caller's later change to its dicts must not reach a frozen record
        object.__setattr__(self, "layers", {str(k): dict(v) for k, v in self.layers.items()})
        object.__setattr__(self, "folded", tuple(str(n) for n in self.folded))
        object.__setattr__(self, "fold_bn", bool(self.fold_bn))
        object.__setattr__(self, "extra", dict(self.extra))

    def converted(self) -> LowbitInfo:
        """The record after ``convert``: stage ``converted``, every layer marked converted."""
        return dataclasses.replace(self, stage="converted", layers={n: {**d, "converted": True} for n, d in self.layers.items()})

    def to_metadata(self) -> dict[str, str]:
        """The record as string metadata (``lowbit.*`` keys, sorted JSON values) for a checkpoint file."""
        meta = {
            "lowbit.model": "1",
            "lowbit.info_version": str(self.version),
            "lowbit.stage": self.stage,
            "lowbit.layers": json.dumps(self.layers, sort_keys=True),
            "lowbit.config": self.config,
            "lowbit.fold_bn": "1" if self.fold_bn else "0",
            "lowbit.folded": json.dumps(list(self.folded)),
        }
        if self.arch is not None:
            meta["lowbit.arch"] = json.dumps(self.arch, sort_keys=True)
        return meta

    @classmethod
    def from_metadata(cls, meta: Mapping[str, str]) -> LowbitInfo:
        """The record a checkpoint's metadata describes (files without ``lowbit.info_version`` are version 1)."""
        version = int(meta.get("lowbit.info_version", "1"))
        if version > FORMAT_VERSION:
            raise ValueError(f"the file's model record is version {version}; this lowbit reads up to {FORMAT_VERSION}")
        return cls(
            stage=meta.get("lowbit.stage", "float"),
            config=meta.get("lowbit.config", ""),
            layers=json.loads(meta.get("lowbit.layers", "{}")),
            fold_bn=meta.get("lowbit.fold_bn") == "1",
            folded=tuple(json.loads(meta.get("lowbit.folded", "[]"))),
            arch=json.loads(meta["lowbit.arch"]) if "lowbit.arch" in meta else None,
            version=version,
        )


_DEFAULTS = {f.name: getattr(LowbitInfo(), f.name) for f in dataclasses.fields(LowbitInfo)}


def info_of(model: Any) -> LowbitInfo:
    """The model's record (a float model without one gets the default; attributes of earlier versions are read)."""
    info = getattr(model, "lowbit_info", None)
    if isinstance(info, LowbitInfo):
        return info
    found = {f: getattr(model, a) for a, f in _LEGACY.items() if getattr(model, a, None) is not None}
    extra = {k: getattr(model, f"lowbit_{k}") for k in _LEGACY_EXTRA if getattr(model, f"lowbit_{k}", None) is not None}
    return LowbitInfo(**found, extra=extra)


def set_info(model: Any, info: LowbitInfo | None = None, **changes: Any) -> LowbitInfo:
    """Store ``info`` (default: the model's record) with ``changes`` applied as ``model.lowbit_info``; return it."""
    base = info if info is not None else info_of(model)
    if not isinstance(base, LowbitInfo):
        raise TypeError(f"info must be a LowbitInfo, got {type(base).__name__}")
    new = dataclasses.replace(base, **changes) if changes else base
    model.lowbit_info = new
    # copies under the earlier names, for code that still reads them (lowbit reads lowbit_info)
    quantized = new.stage != "float" or bool(new.layers)
    for attr, f in _LEGACY.items():
        value = getattr(new, f)
        if value is None or not (quantized or value != _DEFAULTS[f]):
            continue  # a float model carried only lowbit_arch before
        setattr(model, attr, list(value) if f == "folded" else copy.deepcopy(value))
    for k in _LEGACY_EXTRA:
        if k in new.extra:
            setattr(model, f"lowbit_{k}", new.extra[k])
    return new


def attach(model: Any, key: str, value: Any) -> LowbitInfo:
    """Record a result (a weight-fixing log, a crossbar description) under ``extra[key]`` of the model's record."""
    if not isinstance(key, str) or not key.isidentifier():
        raise ValueError(f"key must be an identifier such as 'fixing_log', got {key!r}")
    return set_info(model, extra={**info_of(model).extra, key: value})
