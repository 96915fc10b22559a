"""The verbs: ``quantize`` (PTQ), ``prepare_qat``, ``calibrate``, ``convert``, ``save``, ``load``.

::

    qmodel = lowbit.quantize(model, "w4,a8", calib=loader)      # post-training
    qat = lowbit.prepare_qat(model, "w4:lsq")                    # then train as usual
    imodel = lowbit.convert(qat)                                 # integer weights (QTensor)
    lowbit.save(imodel, "model.lowbit"); lowbit.load("model.lowbit")

Every verb copies the model unless ``inplace=True`` (as ``torch.ao``).

BatchNorm: folded (inference statistics) into the conv/linear that alone feeds it
in the traced graph (``lowbit.nn.fold``: residual blocks, branches, ``ModuleDict``;
``nn.Sequential`` pairs where the model cannot be traced), *before* quantization
(``QuantConfig.fold_bn``, default on): the integers trained, converted and saved
are the deployed ones.
``fold_bn=false`` keeps BN float (DoReFa weights need it to absorb their scale).

Limits of ``load``: reference models (``lowbit.models``) rebuild from the stored
architecture; any other model needs ``model=`` (a float instance of the same
architecture); custom handlers must be registered before loading. Activation
quantizers sit on the inputs of quantized layers, PACT replaces ``nn.ReLU``
modules; where ``forward`` has functional ops (``F.relu``, ``+``, ``torch.cat``)
the graph path (``lowbit.graph``) returns an ``fx.GraphModule`` with one quantizer
per tensor on the graph's edges, and ``load`` re-traces ``model=`` to rebuild it.
"""
from __future__ import annotations

import copy
import dataclasses
import os
import warnings
from itertools import islice
from typing import Callable, Iterable, Mapping

import torch
from torch import Tensor, nn

from .config import QuantConfig, as_config
from .graph import freeze_edges, quantize_edges, rebuild_edges
from .info import STAGES, LowbitInfo, info_of, set_info
from .model_handlers import model_handler_for
from .nn.act import PACT, ActQuant
from .nn.fold import fold_bn
from .nn.handlers import handled_types, handler_for, is_pact_spec
from .nn.layers import QuantLayer
from .qtensor import QTensor, load_qtensors, save_qtensors

__all__ = ["quantize", "prepare_qat", "calibrate", "convert", "save", "load", "quantized_layers", "read_metadata"]


def _set_module(model: nn.Module, name: str, new: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, child, new)


def _own_params(m: nn.Module) -> bool:
    return any(True for _ in m.parameters(recurse=False))


def _swap(model: nn.Module, cfg: QuantConfig) -> dict[str, dict[str, object]]:
    """Replace the modules the config selects; return the layer description (name -> kind/specs)."""
    named = [(n, m) for n, m in model.named_modules() if n]
    if not named:
        raise ValueError("model has no submodules to quantize")
    for p in cfg.patterns():
        if isinstance(p, str) and not any(cfg._matches(p, n, m) for n, m in named):
            some = ", ".join(n for n, _ in named[:12])
            raise ValueError(f"config pattern {p!r} matches no module; module names are: {some}{', ...' if len(named) > 12 else ''}")
    layers: dict[str, dict[str, object]] = {}
    shells: set[str] = set()  # replaced containers whose children the config still quantizes one by one
    unhandled: list[str] = []
    device = next((p.device for p in model.parameters()), None)
    for name, mod in named:
        if isinstance(mod, (QuantLayer, PACT, ActQuant)) or any(name.startswith(k + ".") for k in layers if k not in shells):
            continue
        wspec, aspec = cfg.weight_spec(name, mod), cfg.act_spec(name, mod)
        handler = handler_for(mod)
        if handler is None:
            explicit = [p for p in cfg.patterns() if isinstance(p, str) and p == name]
            if explicit and _own_params(mod):
                raise ValueError(
                    f"module {name!r} ({type(mod).__name__}) cannot be quantized: no handler for its type; "
                    f"handled types: {', '.join(handled_types())} (add one with lowbit.nn.register_handler)"
                )
            if wspec and _own_params(mod) and not isinstance(mod, (nn.modules.batchnorm._BatchNorm, nn.LayerNorm, nn.GroupNorm)):
                unhandled.append(f"{name} ({type(mod).__name__})")
            continue
        if isinstance(mod, nn.ReLU) and not is_pact_spec(aspec):
            continue
        try:
            new = handler(mod, wspec, aspec)
        except ValueError as e:
            raise ValueError(f"module {name!r} ({type(mod).__name__}): {e}") from None
        if new is mod:
            continue
        if device is not None:
            new.to(device)  # quantizers built now start on the CPU
        _set_module(model, name, new)
        if getattr(new, "lowbit_shell", False):
            shells.add(name)
        if isinstance(new, PACT):
            layers[name] = {"kind": "PACT", "act": new.spec}
        else:
            layers[name] = {"kind": type(new).__name__, "weight": wspec, "act": aspec if not is_pact_spec(aspec) else None}
    if unhandled:
        warnings.warn(f"no quantization handler for {', '.join(unhandled)}; they stay float", stacklevel=3)
    if not layers:
        warnings.warn("the config selected no module: the model is unchanged", stacklevel=3)
    return layers


def _prepare(model: nn.Module, config: object, inplace: bool) -> tuple[nn.Module, QuantConfig]:
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be an nn.Module, got {type(model).__name__}")
    cfg = as_config(config)  # type: ignore[arg-type]
    if any(isinstance(m, QuantLayer) for m in model.modules()):
        raise ValueError("model is already quantized; start again from the float model")
    if not inplace:
        model = copy.deepcopy(model)
    folded: list[str] = []
    if cfg.fold_bn:
        was = model.training
        model.eval()
        folded = fold_bn(model)
        model.train(was)
    layers = _swap(model, cfg)
    model = quantize_edges(model, cfg, layers)  # the graph path, where forward has functional ops (lowbit.graph)
    set_info(model, stage="float", folded=tuple(folded), layers=layers, config=str(cfg), fold_bn=cfg.fold_bn)
    return model, cfg


def batch_inputs(batch: object) -> Tensor:
    """The inputs of a batch: the tensor itself, or the first element of an (inputs, targets) tuple."""
    if isinstance(batch, Tensor):
        return batch
    if isinstance(batch, (list, tuple)) and batch and isinstance(batch[0], Tensor):
        return batch[0]
    raise TypeError(f"calibration batches must be tensors or (inputs, targets) tuples, got {type(batch).__name__}")


_inputs = batch_inputs  # the earlier private name


def _act_quants(model: nn.Module) -> list[ActQuant]:
    return [m for m in model.modules() if isinstance(m, ActQuant)]


def _check_calib(calib: object) -> None:
    # a common slip is passing the loader *function* (calib=loader) instead of a DataLoader
    if not isinstance(calib, Iterable) or isinstance(calib, (str, bytes)):
        raise TypeError(
            f"calib must be batches: a DataLoader, or a list of tensors or (inputs, targets) tuples; got {type(calib).__name__}"
        )


@torch.no_grad()
def calibrate(
    model: nn.Module, batches: Iterable[object], max_batches: int = 8, *, sync: Callable[[nn.Module], object] | None = None
) -> nn.Module:
    """Fix the activation ranges of a quantized model from a few batches (inputs or (inputs, targets)).

    ``sync(model)`` runs after the observations and before the ranges freeze (distributed
    calibration reduces the observations across ranks there).
    """
    if max_batches < 1:
        raise ValueError(f"max_batches must be >= 1, got {max_batches}")
    _check_calib(batches)
    aqs = [a for a in _act_quants(model) if not a.learned]
    was = model.training
    model.eval()
    for a in aqs:
        a.q.reset()
        a.tracking, a.calibrating = False, True
    seen = 0
    try:
        for b in islice(batches, max_batches):
            model(batch_inputs(b))
            seen += 1
        if seen and sync is not None:
            sync(model)
    finally:
        for a in aqs:
            if seen:
                a.freeze()
            a.calibrating = False
    if seen == 0:
        raise ValueError("calib gave no batches")
    # LSQ activation quantizers take their first batch as their initial scale.
    model.train(was)
    return model


def quantize(
    model: nn.Module,
    config: "QuantConfig | str | Mapping" = "w8",
    calib: Iterable[object] | None = None,
    *,
    calib_batches: int = 8,
    inplace: bool = False,
    method: str = "nearest",
    bias_correction: bool = False,
    equalize: bool = False,
    method_options: Mapping[str, object] | None = None,
) -> nn.Module:
    """Post-training quantization: swap modules, fit weight scales, calibrate activation ranges.

    ``method`` rounds the weights: ``nearest``, ``gptq``, ``adaround`` or ``brecq`` (layer by layer,
    or block by block for ``brecq``, on ``calib``; options such as ``act_order``/``iters`` in ``method_options``); ``equalize``
    first equalizes ReLU chains across layers; ``bias_correction`` removes each layer's mean
    output error on ``calib`` (lowbit.algorithms.layerwise).
    """
    layerwise = method != "nearest" or bias_correction or bool(method_options)
    if layerwise:  # the algorithms layer sits above the verbs: imported only when asked for
        from .algorithms.layerwise import check_method

        check_method(method, method_options)
        if calib is None:
            raise ValueError(f"method={method!r} / bias_correction need calib=<batches or DataLoader>")
    if (h := model_handler_for(model)) is not None:  # a whole-model handler (spiking networks: lowbit.snn.verbs)
        if layerwise or equalize:
            raise ValueError("method=, bias_correction= and equalize= apply to conv/linear networks, not to this model")
        return h.quantize(model, config, calib, inplace=inplace)
    model, cfg = _prepare(model, config, inplace)
    if equalize:
        from .algorithms.equalization import equalize as _equalize

        _equalize(model)  # before any weight scale is fitted: the ranges it evens out are the ones fitted next
    model.eval()
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, QuantLayer) and m.weight_quant is not None and not m.weight_quant.frozen:
                m.weight_quant.fit(m.weight)
    if _act_quants(model):
        if calib is None:
            raise ValueError("config quantizes activations: pass calib=<batches or DataLoader> to calibrate their ranges")
        calibrate(model, calib, calib_batches)
    # weights only: their scales come from the weights themselves, calib is not needed
    if layerwise:
        from .algorithms.layerwise import apply_method

        apply_method(model, calib, method, calib_batches=calib_batches, bias_correction=bias_correction,  # type: ignore[arg-type]
                     options=method_options)
    set_info(model, stage="ptq")
    return model


def prepare_qat(
    model: nn.Module,
    config: "QuantConfig | str | Mapping" = "w4:lsq",
    calib: Iterable[object] | None = None,
    *,
    inplace: bool = False,
) -> nn.Module:
    """Ready a model for quantization-aware training: shadow float weights, fake-quantized forward."""
    if (h := model_handler_for(model)) is not None:  # a whole-model handler (spiking networks: lowbit.snn.verbs)
        return h.prepare_qat(model, config, calib, inplace=inplace)
    model, cfg = _prepare(model, config, inplace)
    for a in _act_quants(model):
        a.tracking = not a.learned
    if calib is not None:
        _check_calib(calib)
        was = model.training
        model.train()
        with torch.no_grad():
            for b in islice(calib, 4):
                model(batch_inputs(b))  # seeds the moving averages / LSQ steps
        model.train(was)
    model.train()
    set_info(model, stage="qat")
    return model


def quantized_layers(model: nn.Module) -> dict[str, QuantLayer]:
    """The model's quantized layers by name."""
    return {n: m for n, m in model.named_modules() if isinstance(m, QuantLayer)}


def convert(model: nn.Module, *, inplace: bool = False, kernels: str = "exact") -> nn.Module:
    """Freeze to integer weights (packed QTensor codes + scales) and fixed activation scales, for inference.

    ``kernels="exact"`` (default): every layer decodes its packed weight and equals the
    fake-quantized model bit for bit. ``"auto"``: linears whose format PyTorch has a low-bit
    kernel for (int8 per channel, int4 group-wise) keep the kernel's layout and take the
    kernel where a measured table says it is faster (``lowbit.nn.kernels``: within a stated
    accumulation bound, not bit-equal).
    """
    from .nn.kernels import KERNEL_MODES

    if kernels not in KERNEL_MODES:
        raise ValueError(f"kernels must be one of {KERNEL_MODES}, got {kernels!r}")
    if (h := model_handler_for(model)) is not None:  # a whole-model handler (spiking networks: lowbit.snn.verbs)
        return h.convert(model, inplace=inplace)
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be an nn.Module, got {type(model).__name__}")
    layers = quantized_layers(model)
    if not layers and not any(isinstance(m, PACT) for m in model.modules()):
        raise ValueError("model has no quantized layers: run lowbit.quantize or lowbit.prepare_qat first")
    if not inplace:
        model = copy.deepcopy(model)
        layers = quantized_layers(model)
    with torch.no_grad():
        for name, m in layers.items():
            try:
                m.convert_()
            except ValueError as e:
                raise ValueError(f"layer {name!r}: {e}") from None
        if kernels == "auto":
            use_kernels(model)
        freeze_edges(model)
    set_info(model, info_of(model).converted())
    model.eval()
    return model


def use_kernels(model: nn.Module) -> nn.Module:
    """Give each converted linear of ``model`` PyTorch's low-bit kernel where one fits (in place; see ``convert``)."""
    from .nn.kernels import kernel_for
    from .nn.layers import QuantLinear

    for m in model.modules():
        if isinstance(m, QuantLinear) and m.converted and m.kernel is None:
            m.kernel = kernel_for(m)
    return model


# --------------------------------------------------------------------------- files

_STAGES = STAGES


def save(model: nn.Module, path: "str | os.PathLike[str]", *, metadata: Mapping[str, str] | None = None) -> None:
    """Write a model (float, PTQ, QAT or converted) to a lowbit safetensors file, atomically.

    Converted layers store only their integer weights (QTensor); PTQ/QAT layers
    store the float shadow weight *and* its quantized QTensor (``<name>.weight:q``).
    The metadata records the architecture (reference models), config and layers.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be an nn.Module, got {type(model).__name__}")
    if (h := model_handler_for(model)) is not None:  # a whole-model handler (spiking networks: lowbit.snn.verbs)
        return h.save(model, path, metadata)
    layers = quantized_layers(model)
    tensors: dict[str, object] = {}
    # a converted layer's packed buffers are written once, as the QTensor entry "<name>.weight"
    packed_keys = {f"{n}.{b}" for n, m in layers.items() if m.converted for b in m._buffers if b.startswith("qweight_")}
    for k, v in model.state_dict().items():
        if v.numel() and k not in packed_keys:  # empty buffers are quantizers that were never frozen
            # a copy: QTensors made by encode() share the quantizer's scale storage,
            # and safetensors refuses tensors that share memory
            tensors[k] = v.detach().clone()
    for name, m in layers.items():
        qt = m.encode_weight()
        if qt is None:
            continue
        tensors[f"{name}.weight" if m.converted else f"{name}.weight:q"] = qt
    info = info_of(model)
    if layers and info.stage == "float":  # quantized layers without a record: trained as QAT
        info = dataclasses.replace(info, stage="qat")
    meta = info.to_metadata()
    for k, v in (metadata or {}).items():
        if k in meta:
            raise ValueError(f"metadata key {k!r} is reserved")
        meta[k] = str(v)
    save_qtensors(path, tensors, meta)  # type: ignore[arg-type]


def read_metadata(path: "str | os.PathLike[str]") -> dict[str, str]:
    """The metadata of a file written by :func:`save`."""
    _, meta = load_qtensors(path, with_metadata=True)
    return meta


def load(
    path: "str | os.PathLike[str]", model: nn.Module | None = None, *, builder: "str | Callable[..., nn.Module] | None" = None,
    kernels: str = "exact",
) -> nn.Module:
    """Rebuild a model written by :func:`save`, with identical outputs (``kernels="auto"``: as ``convert``'s).

    Reference and zoo models (``lowbit.models``) rebuild by name from a fixed registry;
    for any other model pass ``model=`` a float instance of the same architecture (its
    values are overwritten) or ``builder=`` (``"path/to/file.py:build_fn"``,
    ``"package.module:build_fn"``, a ``torch.export`` ``.pt2`` file, or a callable) that
    builds one. A file never makes lowbit import or run code it names: only the
    caller's ``builder=`` is imported.
    """
    from .nn.kernels import KERNEL_MODES

    if kernels not in KERNEL_MODES:
        raise ValueError(f"kernels must be one of {KERNEL_MODES}, got {kernels!r}")
    if builder is not None:
        if model is not None:
            raise ValueError("pass either model= or builder=, not both")
        from .models.user import build_user_model

        hint = read_metadata(path)
        shape = hint.get("lowbit.input_shape")
        classes = hint.get("lowbit.num_classes")
        try:  # plain numbers the command line recorded: passed to the builder only if it asks for them
            dims = [int(d) for d in shape.split(",")] if shape else None
            n = int(classes) if classes else None
        except ValueError:
            dims, n = None, None
        model = build_user_model(builder, input_shape=dims, num_classes=n)
    if model is not None and (h := model_handler_for(model)) is not None:  # spiking networks: lowbit.snn.verbs
        return h.load(path, model)
    tensors, meta = load_qtensors(path, with_metadata=True)
    if meta.get("lowbit.model") != "1":
        raise ValueError(f"{path} is a lowbit tensor file but not a model written by lowbit.save")
    stage = meta.get("lowbit.stage", "")
    if stage not in _STAGES:
        raise ValueError(f"{path}: unknown stage {stage!r}; expected one of {_STAGES}")
    try:
        saved = LowbitInfo.from_metadata(meta)
    except (ValueError, TypeError) as e:  # JSON errors are ValueErrors
        raise ValueError(f"{path}: unreadable model record: {e}") from None
    if model is None:
        # what the caller must pass; the file's own note of its builder is quoted, never imported
        source = meta.get("lowbit.source", "")
        needs = ("pass model=<a float instance of the same architecture> or builder="
                 + (f"{source!r} (the file says it was built by it; lowbit imports a builder only when you pass it)"
                    if source else "'path/to/file.py:build_fn' (or 'package.module:build_fn', or a .pt2 program)"))
        if saved.arch is None:
            raise ValueError(f"{path} holds a model that is not a lowbit reference model: {needs}")
        from .models import build_from_arch

        try:
            model = build_from_arch(saved.arch)
        except ValueError as e:
            raise ValueError(f"{path}: {e}; {needs}") from None
    elif not isinstance(model, nn.Module):
        raise TypeError(f"model must be an nn.Module or None, got {type(model).__name__}")
    else:
        model = copy.deepcopy(model)
    arch = saved.arch or info_of(model).arch
    folded = saved.folded
    if saved.fold_bn:
        model.eval()
        # the saved weights are the folded ones: fold exactly the BNs the saved model folded
        folded = tuple(fold_bn(model, untrained="fold", only=list(saved.folded) if "lowbit.folded" in meta else None))
    for name, info in saved.layers.items():
        try:
            old = model.get_submodule(name)
        except AttributeError:
            raise ValueError(f"{path}: layer {name!r} does not exist in the model; is it the same architecture?") from None
        handler = handler_for(old)
        if handler is None:
            raise ValueError(f"{path}: layer {name!r} ({type(old).__name__}) has no quantization handler")
        new = handler(old, info.get("weight"), info.get("act"))  # type: ignore[arg-type]
        if type(new).__name__ != info.get("kind"):
            raise ValueError(f"{path}: layer {name!r} rebuilt as {type(new).__name__}, the file says {info.get('kind')}")
        _set_module(model, name, new)
        # a layer, or the quantized layers inside a replaced module (attention, RNN)
        subs = [(name, new)] if isinstance(new, QuantLayer) else [
            (f"{name}.{s}", m) for s, m in new.named_modules() if s and isinstance(m, QuantLayer) and m.weight_quant is not None]
        for lname, layer in subs if info.get("converted") else []:
            qt = tensors.get(f"{lname}.weight")
            if not isinstance(qt, QTensor):
                raise ValueError(f"{path}: converted layer {lname!r} has no integer weight entry")
            try:
                layer.set_qweight(qt)
            except ValueError as e:
                raise ValueError(f"{path}: layer {lname!r}: {e}; is it the same architecture?") from None
    if saved.config:  # the graph path re-traces the float model and inserts the same edge quantizers
        model = rebuild_edges(model, saved.config, saved.layers)
    # converted layers took their QTensor above (set_qweight); files from before packed layers
    # may also hold a float "<name>.weight" beside it: the packed codes are the truth
    installed = {f"{n}.weight" for n, m in quantized_layers(model).items() if m.converted}
    state = {k: v for k, v in tensors.items() if not k.endswith(":q") and isinstance(v, Tensor) and k not in installed}
    for k, v in tensors.items():
        if isinstance(v, QTensor) and not k.endswith(":q") and k not in installed:
            state[k] = v.dequantize()
    try:
        result = model.load_state_dict(state, strict=False)
    except RuntimeError as e:
        raise ValueError(f"{path} does not fit the model; is it the same architecture? {e}") from None
    if result.unexpected_keys:
        raise ValueError(f"{path}: entries {result.unexpected_keys[:5]} do not fit the model; is it the same architecture?")
    bad = [k for k in result.missing_keys if not k.rsplit(".", 1)[-1] in ("scale", "zero_point", "running_lo", "running_hi")
           and not k.rsplit(".", 1)[-1].startswith("qweight_")]
    if bad:
        raise ValueError(f"{path}: the file lacks entries {bad[:5]} of the model")
    for a in _act_quants(model):
        a.tracking = stage == "qat" and not a.learned
    set_info(model, saved, folded=folded, arch=arch)
    model.train(stage == "qat")
    if kernels == "auto" and stage == "converted":
        use_kernels(model)
    return model
