"""The verbs for spiking networks: ``lowbit.quantize`` / ``prepare_qat`` / ``convert`` / ``save`` / ``load`` on an SNN.

Registered for :class:`~lowbit.snn.base.SpikingNetwork` (``SNN`` and ``EventPropSNN``) in the
verbs' model registry (:mod:`lowbit.model_handlers`), so a spiking network goes through the
same five calls as a CNN::

    q = lowbit.quantize(snn, "fxp4:p99")                     # mlGeNN fixed point, one scale per population
    q = lowbit.quantize(snn, "fxp4:p99, scope=connection")   # one scale per connection
    q = lowbit.prepare_qat(snn, "fxp4:p99, out=fxp8:p99")     # QAT: Q(w) every batch, shadow weights stepped
    lowbit.save(lowbit.convert(q), "snn.lowbit"); lowbit.load("snn.lowbit", model=SNN(...))

The config: its ``scope`` token chooses the groups that share a scale — ``population``
(every connection into one population: ``hidden<k>`` takes ``fc<k>`` and ``rec<k>``, ``out``
takes ``out``) or ``connection`` (``fc<k>``, ``rec<k>``, ``out`` each on their own). A config
string without a ``scope`` token takes the model's ``default_scope``: ``population`` for
``SNN``, ``connection`` for ``EventPropSNN`` (mlGeNN's EventProp compiler quantizes per
connection); a ``QuantConfig`` object keeps its own. Rule patterns are globs over those group names (``*``, ``hidden0``, ``rec*``; last
match wins; ``none`` keeps a group float); a pattern that names no group is an error that
lists them. Spiking networks send spikes, not activations: activation rules and type
patterns are errors. Weight scales are refitted to the float shadow weights at every forward
pass (mlGeNN's semantics), so a learned range (``lsq``) is refused.

One file format, ``lowbit.save``'s: the float shadow parameters (PTQ/QAT) with each quantized
connection's QTensor beside them (``<parameter>:q``), or, once converted, the QTensors alone
under the parameter names; state quantizers set with ``set_state_quant`` (a
:class:`~lowbit.quantizers.StateQuantizer`) as their levels (``<module>:levels``); and the
groups, specs and state-quantizer kinds in the ``lowbit.snn`` metadata record.
"""
from __future__ import annotations

import copy
import dataclasses
import fnmatch
import json
import os
import re
import warnings
from typing import Iterable, Mapping

import torch
from torch import Tensor, nn

from ..config import QuantConfig, as_config
from ..info import LowbitInfo, info_of, set_info
from ..model_handlers import register_model_handler
from ..qtensor import QTensor, load_qtensors, save_qtensors
from ..quantizers.state import StateQuantizer
from .base import SpikingNetwork
from .profiles import profile_record, restore_profile
from .quant import WeightQuant

__all__ = ["SpikingVerbs", "weight_groups", "save_checkpoint", "load_checkpoint"]

_RECORD = "lowbit.snn"  # metadata key of the spiking network's record
_RECORD_VERSION = 1
_STATE_ATTRS = ("state_quant", "syn_quant")


def _check_model(model: object) -> SpikingNetwork:
    if not isinstance(model, SpikingNetwork):
        raise TypeError(f"model must be a lowbit spiking network (SNN, EventPropSNN), got {type(model).__name__}")
    return model


def _config_for(model: SpikingNetwork, config: "QuantConfig | str | Mapping") -> QuantConfig:
    """The config, with the model's default scope where a config string names none (EventProp: per connection)."""
    cfg = as_config(config)  # type: ignore[arg-type]
    default = getattr(model, "default_scope", "population")
    if isinstance(config, str) and cfg.scope != default and not re.search(r"(^|[,\s])scope\s*=", config, re.IGNORECASE):
        cfg = dataclasses.replace(cfg, scope=default)
    return cfg


def weight_groups(model: SpikingNetwork, config: "QuantConfig | str | Mapping") -> tuple[dict[str, list[str]], dict[str, str]]:
    """The config's (groups that share a scale, spec per quantized group) for ``model``; float groups are left out."""
    cfg = _config_for(model, config)
    if any(spec is not None for spec in cfg.acts.values()):
        raise ValueError(f"config {str(cfg)!r}: spiking networks send spikes, not activations; drop the activation rules "
                         "(quantize neuron states with set_state_quant)")
    pops = model.populations()
    groups = pops if cfg.scope == "population" else {c: [c] for c in model.connections()}
    for p in cfg.weights:
        if not isinstance(p, str):
            raise ValueError(f"config pattern {p!r}: a spiking network's rules name its {cfg.scope}s, not module types")
        if not any(fnmatch.fnmatchcase(g, p) for g in groups):
            other = "connection" if cfg.scope == "population" else "population"
            hint = f" (a {other} name: add scope={other})" if any(fnmatch.fnmatchcase(n, p) for n in (pops if other == "population" else model.connections())) else ""
            raise ValueError(f"config pattern {p!r} matches no {cfg.scope}{hint}; the {cfg.scope}s are: {', '.join(groups)}")
    specs: dict[str, str] = {}
    for g in groups:
        spec = None
        for p, s in cfg.weights.items():  # last matching rule wins, as for layers
            if fnmatch.fnmatchcase(g, p):  # type: ignore[arg-type]
                spec = s
        if spec is not None:
            if "lsq" in spec.split(":"):
                raise ValueError(f"config {str(cfg)!r}: a spiking network refits its weight scales every batch; "
                                 f"a learned range ('lsq') has nothing to learn (use e.g. fxp4:p99 or int4:mse)")
            specs[g] = spec
    return {g: groups[g] for g in specs}, specs


class SpikingVerbs:
    """The five verbs for spiking networks (registered for :class:`SpikingNetwork`)."""

    def _quantize(self, model: nn.Module, config: object, stage: str, inplace: bool) -> SpikingNetwork:
        model = _check_model(model)
        cfg = _config_for(model, config)
        if model.weight_quant is not None:
            raise ValueError("model is already quantized; start again from the float model")
        groups, specs = weight_groups(model, cfg)
        if not inplace:
            model = copy.deepcopy(model)
        layers: dict[str, dict[str, object]] = {}
        if groups:
            model.weight_quant = WeightQuant(groups, specs)
            layers = {g: {"kind": "WeightQuant", "weight": specs[g], "act": None, "connections": groups[g]} for g in groups}
        else:
            warnings.warn("the config selected no connection: the model is unchanged", stacklevel=4)
        set_info(model, stage=stage, config=str(cfg), layers=layers, fold_bn=False)
        return model

    def quantize(self, model: nn.Module, config: object, calib: Iterable[object] | None = None, *,
                 inplace: bool = False) -> nn.Module:
        """Post-training quantization of the weights (their scales come from the weights: ``calib`` is not needed)."""
        model = self._quantize(model, config, "ptq", inplace)
        model.eval()
        with torch.no_grad():
            model.effective_weights()  # fits every group's scale now, so that scales() reads them before a forward pass
        return model

    def prepare_qat(self, model: nn.Module, config: object, calib: Iterable[object] | None = None, *,
                    inplace: bool = False) -> nn.Module:
        """Quantization-aware training: the forward pass uses Q(w) refitted every batch; the optimizer steps w."""
        model = self._quantize(model, config, "qat", inplace)
        model.train()
        return model

    def convert(self, model: nn.Module, *, inplace: bool = False) -> nn.Module:
        """Fix the integer weights: each connection holds its dequantized codes, kept as QTensors for saving."""
        model = _check_model(model)
        if model.weight_quant is None:
            raise ValueError("model has no quantized weights: run lowbit.quantize or lowbit.prepare_qat first")
        if not inplace:
            model = copy.deepcopy(model)
        assert model.weight_quant is not None
        model.weight_quant.convert_(model.connections())
        info = info_of(model)
        if info.stage == "float":  # quantized with quantize_weights, outside the verbs
            info = _info_from(model.weight_quant, "qat")
        set_info(model, info.converted())
        model.eval()
        return model

    # ------------------------------------------------------------------ files

    def save(self, model: nn.Module, path: "str | os.PathLike[str]", metadata: Mapping[str, str] | None = None) -> None:
        """Write the network (float, PTQ, QAT or converted, state quantizers included) in lowbit's file format."""
        model = _check_model(model)
        wq = model.weight_quant
        params = model.connection_params()
        tensors: dict[str, Tensor | QTensor] = {k: v.detach().clone() for k, v in model.state_dict().items() if v.numel()}
        info = info_of(model)
        record: dict[str, object] = {"version": _RECORD_VERSION, "type": type(model).__name__, "sizes": model.sizes}
        if wq is not None:
            codes = wq.encode(model.connections())
            for conn, qt in codes.items():
                if wq.converted:
                    tensors[params[conn]] = qt  # the integers alone: the float values are their dequantization
                else:
                    tensors[f"{params[conn]}:q"] = qt
            record.update(groups=wq.groups, specs=wq.specs, converted=wq.converted)
            if info.stage == "float":  # quantized with quantize_weights, outside the verbs: trained as QAT
                info = _info_from(wq, "qat")
        record["state_quant"] = _state_quantizers(model, tensors)
        if profile_record(model) is not None:  # a chip profile (lowbit.snn.profiles) is re-applied on load
            record["profile"] = profile_record(model)
        meta = info.to_metadata()
        meta[_RECORD] = json.dumps(record, sort_keys=True)
        for k, v in (metadata or {}).items():
            if k in meta:
                raise ValueError(f"metadata key {k!r} is reserved")
            meta[k] = str(v)
        save_qtensors(path, tensors, meta)

    def load(self, path: "str | os.PathLike[str]", model: nn.Module) -> nn.Module:
        """A copy of ``model`` (same architecture) holding the saved network, with identical outputs."""
        model = _check_model(model)
        tensors, meta = load_qtensors(path, with_metadata=True)
        if meta.get("lowbit.model") != "1" or _RECORD not in meta:
            raise ValueError(f"{path} is not a spiking network written by lowbit.save")
        record = json.loads(meta[_RECORD])
        if int(record.get("version", 1)) > _RECORD_VERSION:
            raise ValueError(f"{path}: the spiking-network record is version {record['version']}; this lowbit reads up to {_RECORD_VERSION}")
        if record.get("type") != type(model).__name__:
            raise ValueError(f"{path} holds a {record.get('type')}, but model is a {type(model).__name__}")
        saved = LowbitInfo.from_metadata(meta)
        model = copy.deepcopy(model)
        model.weight_quant = None
        if "groups" in record:
            model.weight_quant = WeightQuant(record["groups"], record["specs"])
        _set_state_quantizers(model, record.get("state_quant", {}), tensors, path)
        params = model.connection_params()
        qcodes = {c: tensors[p] for c, p in params.items() if isinstance(tensors.get(p), QTensor)}
        state = {k: v for k, v in tensors.items() if isinstance(v, Tensor) and ":" not in k}
        state.update({k: v.dequantize() for k, v in tensors.items() if isinstance(v, QTensor) and ":" not in k})
        _check_state(model, state, path)
        try:
            model.load_state_dict(state, strict=False)
        except RuntimeError as e:
            raise ValueError(f"{path} does not fit the model; is it the same architecture? {e}") from None
        if record.get("converted"):
            assert model.weight_quant is not None
            model.weight_quant.set_qweights(qcodes, model.connections())
        restore_profile(model, record.get("profile"))
        set_info(model, saved)
        model.train(saved.stage == "qat")
        return model


def _info_from(wq: WeightQuant, stage: str) -> LowbitInfo:
    layers = {g: {"kind": "WeightQuant", "weight": wq.specs[g], "act": None, "connections": c} for g, c in wq.groups.items()}
    return LowbitInfo(stage=stage, config=",".join(f"{g}={s}" for g, s in wq.specs.items()), layers=layers)


def _state_quantizers(model: SpikingNetwork, tensors: dict[str, Tensor | QTensor]) -> dict[str, dict[str, object]]:
    """The model's state quantizers by module path (their levels go into ``tensors``); others cannot be saved."""
    out: dict[str, dict[str, object]] = {}
    for name, mod in model.named_modules():
        for attr in _STATE_ATTRS:
            q = getattr(mod, attr, None) if not isinstance(mod, StateQuantizer) else None
            if q is None:
                continue
            key = f"{name}.{attr}" if name else attr
            if not isinstance(q, StateQuantizer):
                raise ValueError(f"{key} is a {type(q).__name__}: lowbit.save stores state quantizers made by "
                                 "lowbit.snn.state_quantizer (StateQuantizer); set that, or None")
            tensors[f"{key}:levels"] = q.levels.detach().clone()
            out[key] = {"kind": q.kind, "num_bits": q.num_bits}
    return out


def _set_state_quantizers(model: SpikingNetwork, record: Mapping[str, Mapping[str, object]],
                          tensors: Mapping[str, object], path: object) -> None:
    for key, desc in record.items():
        owner, _, attr = key.rpartition(".")
        levels = tensors.get(f"{key}:levels")
        try:
            mod = model.get_submodule(owner)
        except AttributeError:
            mod = None
        if attr not in _STATE_ATTRS or mod is None or not isinstance(levels, Tensor):
            raise ValueError(f"{path}: state quantizer {key!r} does not fit the model; is it the same architecture?")
        setattr(mod, attr, StateQuantizer(levels, kind=str(desc["kind"]), num_bits=int(desc["num_bits"])))  # type: ignore[call-overload]


def _check_state(model: nn.Module, state: Mapping[str, Tensor], path: object) -> None:
    """A ValueError naming what differs when the file's parameters do not fit the model's."""
    params = dict(model.named_parameters())
    buffers = set(dict(model.named_buffers()))
    # the file's parameters: every entry but the model's buffers and the weight quantizers' scales
    saved = {k for k in state if k in params or (k not in buffers and not k.startswith("weight_quant."))}
    if set(params) != saved:
        raise ValueError(f"checkpoint {path} does not match the model: missing {sorted(set(params) - saved)}, "
                         f"unexpected {sorted(saved - set(params))}")
    for n, p in params.items():
        if state[n].shape != p.shape:
            raise ValueError(f"parameter {n!r}: checkpoint shape {tuple(state[n].shape)} != model shape {tuple(p.shape)}")


register_model_handler(SpikingNetwork, SpikingVerbs())


# --------------------------------------------------------------------------- deprecated checkpoints


def save_checkpoint(model: nn.Module, path: "str | os.PathLike[str]", metadata: Mapping[str, str] | None = None) -> None:
    """Deprecated: ``lowbit.save(model, path, metadata=...)`` (the same file)."""
    warnings.warn("lowbit.snn.save_checkpoint is deprecated; use lowbit.save", DeprecationWarning, stacklevel=2)
    SpikingVerbs().save(model, path, metadata)


def load_checkpoint(model: nn.Module, path: "str | os.PathLike[str]", weights: str = "shadow") -> dict[str, str]:
    """Deprecated: ``lowbit.load(path, model=model)``. Loads in place: the float shadow (``'shadow'``) or the quantized weights."""
    warnings.warn("lowbit.snn.load_checkpoint is deprecated; use lowbit.load(path, model=...)", DeprecationWarning, stacklevel=2)
    if weights not in ("shadow", "quantized"):
        raise ValueError(f"weights must be 'shadow' or 'quantized', got {weights!r}")
    loaded = SpikingVerbs().load(path, _check_model(model))
    wq = loaded.weight_quant  # type: ignore[union-attr]
    if weights == "quantized" and wq is None:
        raise ValueError(f"checkpoint {path} holds no quantized weights (the model was saved without weight quantization)")
    values = dict(loaded.named_parameters())
    if weights == "quantized":
        assert wq is not None
        names = loaded.connection_params()  # type: ignore[union-attr]
        values.update({names[c]: qt.dequantize() for c, qt in wq.encode(loaded.connections()).items()})  # type: ignore[union-attr]
    with torch.no_grad():
        for n, p in model.named_parameters():
            p.copy_(values[n])
    meta = load_qtensors(path, with_metadata=True)[1]
    if wq is not None:  # the keys the old checkpoint format wrote
        meta.setdefault("weight_spec", wq.spec)
        meta.setdefault("weight_groups", json.dumps(wq.groups))
    return meta

