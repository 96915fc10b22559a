"""The graph path: activation quantizers on the edges of the traced graph, functional ops included.

Module swapping (``api._swap``) puts an activation quantizer on the input of each
quantized layer; it cannot see what ``forward`` computes with functions. When the
config quantizes activations (``a8``, ``a:*=uint8``) and ``torch.fx`` traces a
model whose ``forward`` holds functional ops (``F.relu``, ``torch.relu``,
``+``/``torch.add`` of residuals, ``torch.cat``, ``mean``, pooling), ``quantize``
and ``prepare_qat`` return an ``fx.GraphModule`` instead, with:

- one :class:`~lowbit.nn.ActQuant` per quantized tensor, shared by every consumer,
  under ``lowbit_acts.<fx node name>`` (names are stable: ``load`` re-traces the
  float model and inserts the same ones);
- quantized: the output of every functional op above (spec: the activation rule
  that matches ``<module path>.<node name>``, e.g. ``layer1.0.add``; PACT rules do
  not apply to functions), and every tensor read by a quantized layer whose rule
  quantizes its input. A tensor read by that one layer alone keeps the layer's
  own ``input_quant`` (as module swapping does); a tensor read by several
  consumers gets one edge quantizer and the layers' ``input_quant`` is removed;
- shape-only ops (``flatten``, ``reshape``, ``view``, ``nn.Flatten``,
  ``nn.Identity``...) keep their input's grid and get no quantizer of their own.

So ``a8`` means "every activation a quantized layer reads, and every result of a
functional op, is 8-bit": models whose ``forward`` has only modules and shape
ops (the reference MLP and VGG) take the module path unchanged.
"""
from __future__ import annotations

import copy
import operator
import warnings
from typing import Any, Mapping

import torch
import torch.fx as fx
import torch.nn.functional as F
from torch import nn

from .config import QuantConfig, as_config
from .info import info_of, set_info
from .nn.act import PACT, ActQuant
from .nn.handlers import act_quantizer, is_pact_spec
from .nn.layers import QuantLayer

__all__ = ["trace", "quantize_edges", "rebuild_edges", "edge_quantizers", "freeze_edges", "EDGE_FUNCTIONS", "EDGE_METHODS", "EDGES"]

EDGES = "lowbit_acts"  # the submodule that holds the edge quantizers

EDGE_FUNCTIONS = {
    operator.add, operator.iadd, operator.sub, operator.mul, torch.add, torch.sub, torch.mul,
    torch.cat, torch.concat, torch.stack, torch.mean, torch.relu, F.relu, F.relu6, F.hardtanh, F.leaky_relu,
    F.adaptive_avg_pool1d, F.adaptive_avg_pool2d, F.avg_pool1d, F.avg_pool2d,
}
EDGE_METHODS = {"add", "add_", "sub", "mul", "relu", "relu_", "mean"}
_SHAPE_FUNCTIONS = {torch.flatten, torch.reshape, torch.squeeze, torch.unsqueeze, torch.permute, torch.transpose}
_SHAPE_METHODS = {"flatten", "reshape", "view", "squeeze", "unsqueeze", "permute", "transpose", "contiguous"}
_SHAPE_MODULES = (nn.Identity, nn.Flatten)
_NOT_TENSOR_METHODS = {"size", "dim", "numel", "item", "tolist"}
_NO_MODULE = nn.Module()


class _Tracer(fx.Tracer):
    """torch.fx's tracer, with lowbit's own modules (quantized layers, quantizers, neurons) as leaves."""

    def is_leaf_module(self, m: nn.Module, module_qualified_name: str) -> bool:
        if isinstance(m, (QuantLayer, ActQuant, PACT)) or type(m).__module__.startswith(("lowbit.nn", "lowbit.snn")):
            return True
        return super().is_leaf_module(m, module_qualified_name)


class QuantGraphModule(fx.GraphModule):
    """An ``fx.GraphModule`` that keeps lowbit's record (``lowbit_info``) through ``copy.deepcopy``."""

    def __deepcopy__(self, memo: dict[int, Any]) -> "QuantGraphModule":
        res = super().__deepcopy__(memo)
        for k, v in self.__dict__.items():
            if k.startswith("lowbit_"):  # GraphModule's own deepcopy keeps only what the graph uses
                object.__setattr__(res, k, copy.deepcopy(v, memo))
        return res


def trace(model: nn.Module) -> fx.GraphModule | None:
    """The model as an ``fx.GraphModule`` (same submodule names), or None where ``torch.fx`` cannot trace it."""
    try:
        graph = _Tracer().trace(model)
    except Exception:  # noqa: BLE001 - any tracing failure means: the module path
        return None
    return QuantGraphModule(model, graph, type(model).__name__)


def _is_edge_op(n: fx.Node) -> bool:
    return (n.op == "call_function" and n.target in EDGE_FUNCTIONS) or (n.op == "call_method" and n.target in EDGE_METHODS)


def _is_shape_op(gm: fx.GraphModule, n: fx.Node) -> bool:
    if n.op == "call_function":
        return n.target in _SHAPE_FUNCTIONS
    if n.op == "call_method":
        return n.target in _SHAPE_METHODS
    return n.op == "call_module" and isinstance(gm.get_submodule(n.target), _SHAPE_MODULES)


def _tensor_nodes(gm: fx.GraphModule) -> set[fx.Node]:
    """Nodes known to produce a tensor (unknown ones, such as tuple items, are left out: they are never touched)."""
    known: set[fx.Node] = set()
    for n in gm.graph.nodes:
        flat: list[fx.Node] = []
        fx.node.map_arg((n.args, n.kwargs), flat.append)
        if n.op in ("placeholder", "get_attr"):
            known.add(n)
        elif n.op == "call_module":
            if not any(u.op == "call_function" and u.target is operator.getitem for u in n.users):
                known.add(n)  # modules whose result is indexed return tuples (RNNs)
        elif n.op == "call_method":
            if n.target not in _NOT_TENSOR_METHODS and n.args and n.args[0] in known:
                known.add(n)
        elif n.op == "call_function":
            if n.target is getattr:
                continue
            if n.target is operator.getitem:
                if n.args[0] in known:
                    known.add(n)
            elif any(a in known for a in flat):
                known.add(n)
    return known


def _scope(n: fx.Node) -> str:
    stack = n.meta.get("nn_module_stack") or {}
    return f"{list(stack)[-1]}.{n.name}" if stack else n.name


def _op_spec(cfg: QuantConfig, n: fx.Node) -> str | None:
    spec = cfg.act_spec(_scope(n), _NO_MODULE)  # a function has no module type: only name patterns match
    return None if spec is None or is_pact_spec(spec) else spec


def _layer_input_spec(layers: Mapping[str, Mapping[str, Any]], gm: fx.GraphModule, n: fx.Node) -> str | None:
    """The input spec of the quantized layer that node ``n`` calls, or None."""
    if n.op != "call_module" or n.target not in layers:
        return None
    if not isinstance(gm.get_submodule(n.target), QuantLayer):
        return None
    spec = layers[n.target].get("act")
    return None if spec is None or is_pact_spec(spec) else spec  # type: ignore[return-value]


def _plan(gm: fx.GraphModule, cfg: QuantConfig, layers: Mapping[str, Mapping[str, Any]]) -> dict[fx.Node, str]:
    """Which tensors get an edge quantizer (root node -> spec)."""
    tensors = _tensor_nodes(gm)
    root: dict[fx.Node, fx.Node] = {}
    for n in gm.graph.nodes:
        src = n.args[0] if n.args and isinstance(n.args[0], fx.Node) else None
        root[n] = root[src] if src is not None and _is_shape_op(gm, n) else n
    readers: dict[fx.Node, list[fx.Node]] = {}
    for n in gm.graph.nodes:
        if _is_shape_op(gm, n) and root[n] is not n:
            continue
        flat: list[fx.Node] = []
        fx.node.map_arg((n.args, n.kwargs), flat.append)
        for a in flat:
            readers.setdefault(root[a], []).append(n)
    plan: dict[fx.Node, str] = {}
    for n in gm.graph.nodes:
        if n not in tensors or root[n] is not n:
            continue
        spec = _op_spec(cfg, n) if _is_edge_op(n) else None
        users = readers.get(n, [])
        layer_specs = [s for s in (_layer_input_spec(layers, gm, u) for u in users) if s is not None]
        if spec is None and layer_specs and len(users) > 1:
            spec = layer_specs[0]  # one quantizer for the tensor, shared by every reader
        if spec is not None:
            plan[n] = spec
    return plan


def edge_quantizers(model: nn.Module) -> dict[str, ActQuant]:
    """The graph path's edge quantizers by their node name (empty for a module-path model)."""
    p = EDGES + "."
    return {n[len(p):]: m for n, m in model.named_modules() if n.startswith(p) and isinstance(m, ActQuant)}


def quantize_edges(model: nn.Module, cfg: QuantConfig, layers: dict[str, dict[str, Any]], *, quiet: bool = False) -> nn.Module:
    """The graph path: a GraphModule with edge quantizers where the config asks (functional ops), else ``model`` itself.

    ``layers`` (the description from module swapping) gets ``input_edge`` for the layers
    whose input quantizer moved onto a shared edge. ``quiet``: no warning when the model
    cannot be traced (``load`` rebuilding a module-path model).
    """
    if not any(s is not None and not is_pact_spec(s) for s in cfg.acts.values()):
        return model
    gm = trace(model)
    if gm is None:
        if quiet:
            return model
        warnings.warn(
            f"{type(model).__name__} could not be traced by torch.fx: activation quantizers sit on the inputs of "
            "quantized layers only, functional ops in forward (F.relu, +, torch.cat) are not seen",
            stacklevel=3,
        )
        return model
    if not any(_is_edge_op(n) and _op_spec(cfg, n) for n in gm.graph.nodes):
        return model  # modules and shape ops only: module swapping sees every activation
    plan = _plan(gm, cfg, layers)
    device = next((p.device for p in model.parameters()), None)
    holder = nn.ModuleDict()
    for n, spec in plan.items():
        aq = act_quantizer(spec)
        holder[n.name] = aq.to(device) if device is not None else aq
    gm.add_module(EDGES, holder)
    for n in plan:
        with gm.graph.inserting_after(n):
            q = gm.graph.call_module(f"{EDGES}.{n.name}", (n,))
        n.replace_all_uses_with(q, delete_user_cb=lambda u, q=q: u is not q)
        for u in q.users:  # an in-place op may not write into a quantizer's output (autograd forbids it)
            if u.op == "call_module" and getattr(gm.get_submodule(u.target), "inplace", False):
                gm.get_submodule(u.target).inplace = False  # type: ignore[union-attr]
            elif u.op == "call_method" and str(u.target).endswith("_") and not str(u.target).endswith("__"):
                u.target = str(u.target)[:-1]
    # a layer now reading a quantized edge drops its own input quantizer: one quantizer per tensor
    quantized = set(plan)
    for n in gm.graph.nodes:
        if n.op != "call_module" or n.target not in layers or not n.args or not isinstance(n.args[0], fx.Node):
            continue
        src = n.args[0]
        while _is_shape_op(gm, src) and isinstance(src.args[0], fx.Node):
            src = src.args[0]
        if src.op == "call_module" and str(src.target).startswith(EDGES + "."):
            m = gm.get_submodule(n.target)
            if isinstance(m, QuantLayer) and m.input_quant is not None:
                m.input_quant = None
                layers[n.target]["input_edge"] = str(src.target)
    gm.graph.lint()
    gm.recompile()
    set_info(gm, info_of(model))
    return gm


def rebuild_edges(model: nn.Module, config: str, layers: Mapping[str, Mapping[str, Any]]) -> nn.Module:
    """What ``load`` does: the same edge quantizers as ``quantize_edges`` made from this config string (if it is a QuantConfig)."""
    try:
        cfg = as_config(config)
    except (ValueError, TypeError):  # records of weight sharing and other algorithms are not QuantConfigs
        return model
    return quantize_edges(model, cfg, {n: dict(d) for n, d in layers.items()}, quiet=True)


def freeze_edges(model: nn.Module) -> None:
    """Fix the scales of the edge quantizers (``convert``), naming the one that has no range."""
    for name, aq in edge_quantizers(model).items():
        try:
            aq.freeze()
        except ValueError as e:
            raise ValueError(f"activation quantizer {EDGES}.{name!r}: {e}") from None
