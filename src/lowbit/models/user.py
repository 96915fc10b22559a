"""A user's own network: built by a function the user names, or read from a ``torch.export`` program.

A *builder* is one of

- ``path/to/file.py:build_fn`` — the file is imported (it runs) and ``build_fn`` called;
- ``package.module:build_fn`` — an importable module;
- ``path/to/program.pt2`` — a ``torch.export`` program (``torch.export.load``), whose
  functional ``linear``/``conv`` calls are lifted back into ``nn.Linear``/``nn.ConvNd``
  modules so that lowbit can quantize them;
- a Python callable.

``build_fn`` is called with the keywords of ``input_shape`` and ``num_classes`` that its
signature names (and that are known), else with none. Only the caller names a builder:
``lowbit.load`` never takes one from a file's metadata (that would run code a file names).
"""
from __future__ import annotations

import copy
import hashlib
import importlib
import importlib.util
import inspect
import os
import sys
from pathlib import Path
from typing import Any, Callable, Sequence

import torch
from torch import nn

__all__ = ["ExportedModel", "build_user_model", "load_builder", "is_builder_spec", "lift_exported", "load_state_dict_file"]


def is_builder_spec(spec: object) -> bool:
    """True when ``spec`` names a builder (``file.py:fn``, ``package.module:fn`` or ``program.pt2``)."""
    if not isinstance(spec, str):
        return False
    if spec.endswith(".pt2"):
        return True
    mod, sep, fn = spec.rpartition(":")
    return bool(sep and mod and fn.isidentifier())


def load_builder(spec: str) -> Callable[..., nn.Module]:
    """The function that ``path/to/file.py:build_fn`` or ``package.module:build_fn`` names (importing it)."""
    if not is_builder_spec(spec) or spec.endswith(".pt2"):
        raise ValueError(f"builder must look like path/to/file.py:build_fn or package.module:build_fn, got {spec!r}")
    where, _, fn_name = spec.rpartition(":")
    if where.endswith(".py") or os.sep in where or "/" in where:
        path = Path(where)
        if not path.is_file():
            raise FileNotFoundError(f"builder file {where} does not exist")
        # a private module name per file path: two files called model.py do not collide
        digest = hashlib.sha1(str(path.resolve()).encode()).hexdigest()[:10]
        name = f"lowbit_user_{path.stem if path.stem.isidentifier() else 'model'}_{digest}"
        module = sys.modules.get(name)
        if module is None:
            spec_obj = importlib.util.spec_from_file_location(name, path)
            if spec_obj is None or spec_obj.loader is None:
                raise ValueError(f"builder file {where} cannot be imported as Python")
            module = importlib.util.module_from_spec(spec_obj)
            sys.modules[name] = module  # dataclasses and pickling look a class's module up here
            try:
                spec_obj.loader.exec_module(module)
            except BaseException:
                del sys.modules[name]
                raise
    else:
        try:
            module = importlib.import_module(where)
        except ModuleNotFoundError as e:
            raise ValueError(f"builder module {where!r} cannot be imported ({e}); give path/to/file.py:{fn_name} "
                             "or put the package on PYTHONPATH") from None
    fn = getattr(module, fn_name, None)
    if not callable(fn):
        raise ValueError(f"builder {spec!r}: {where} has no function {fn_name!r}")
    return fn


def _call(fn: Callable[..., Any], what: str, input_shape: Sequence[int] | None, num_classes: int | None) -> nn.Module:
    known = {"input_shape": tuple(int(s) for s in input_shape) if input_shape is not None else None,
             "num_classes": int(num_classes) if num_classes is not None else None}
    try:
        params = inspect.signature(fn).parameters
    except (TypeError, ValueError):
        params = {}  # type: ignore[assignment]
    kwargs = {k: v for k, v in known.items() if k in params and v is not None}
    model = fn(**kwargs)
    if not isinstance(model, nn.Module):
        raise TypeError(f"builder {what} returned {type(model).__name__}, not an nn.Module")
    return model


def build_user_model(builder: "str | Callable[..., nn.Module]", *, input_shape: Sequence[int] | None = None,
                     num_classes: int | None = None) -> nn.Module:
    """Build a user's model from a builder spec (``file.py:fn``, ``package.module:fn``, ``program.pt2``) or a callable."""
    if callable(builder):
        return _call(builder, getattr(builder, "__name__", "callable"), input_shape, num_classes)
    if not isinstance(builder, str):
        raise TypeError(f"builder must be a string such as 'model.py:build' or a callable, got {type(builder).__name__}")
    if builder.endswith(".pt2"):
        if not Path(builder).is_file():
            raise FileNotFoundError(f"torch.export program {builder} does not exist")
        try:
            program = torch.export.load(builder)
        except Exception as e:  # noqa: BLE001 - torch raises many types on a foreign or truncated file
            raise ValueError(f"{builder} is not a torch.export program ({type(e).__name__}: {e})") from None
        return lift_exported(program.module())
    return _call(load_builder(builder), builder, input_shape, num_classes)


class ExportedModel(torch.fx.GraphModule):
    """A lifted ``torch.export`` program that keeps lowbit's record (``lowbit_*`` attributes) through ``copy.deepcopy``."""

    def __deepcopy__(self, memo: dict[int, Any]) -> "ExportedModel":
        res = super().__deepcopy__(memo)
        for k, v in self.__dict__.items():
            if k.startswith("lowbit_"):  # GraphModule's own deepcopy keeps only what the graph uses
                object.__setattr__(res, k, copy.deepcopy(v, memo))
        return res


_LIFTED = {
    torch.ops.aten.linear.default: nn.Linear,
    torch.ops.aten.conv1d.default: nn.Conv1d,
    torch.ops.aten.conv2d.default: nn.Conv2d,
}


def _param_owner(gm: torch.fx.GraphModule, node: Any) -> tuple[str, str] | None:
    """(module path, attribute) of a ``get_attr`` node, else None."""
    if not isinstance(node, torch.fx.Node) or node.op != "get_attr":
        return None
    owner, _, attr = str(node.target).rpartition(".")
    return owner, attr


def lift_exported(gm: torch.fx.GraphModule) -> torch.fx.GraphModule:
    """Turn the functional ``linear``/``conv1d``/``conv2d`` calls of an exported program's module into modules.

    Module swapping sees modules only; a ``torch.export`` program calls ``aten.linear`` on
    its parameters. Each call whose weight (and bias) are parameters of one submodule becomes
    an ``nn.Linear``/``nn.ConvNd`` in that submodule's place, holding the same tensors, so
    the state-dict keys do not change. The export's input guards (a fixed batch size unless
    the program was exported with a dynamic one) are dropped: lowbit calibrates and
    evaluates with other batch sizes.
    """
    graph = gm.graph
    for node in list(graph.nodes):
        if node.op == "call_module" and str(node.target).startswith("_guards"):
            graph.erase_node(node)
    for node in list(graph.nodes):
        cls = _LIFTED.get(node.target) if node.op == "call_function" else None
        if cls is None:
            continue
        args = list(node.args)
        w = _param_owner(gm, args[1]) if len(args) > 1 else None
        b = _param_owner(gm, args[2]) if len(args) > 2 and args[2] is not None else None
        if w is None or (b is not None and b[0] != w[0]) or (len(args) > 2 and args[2] is not None and b is None):
            continue  # a weight computed in the graph: leave the call functional
        owner = w[0]
        weight = gm.get_parameter(str(args[1].target))
        bias = gm.get_parameter(str(args[2].target)) if b is not None else None
        if cls is nn.Linear:
            mod: nn.Module = nn.Linear(weight.shape[1], weight.shape[0], bias=bias is not None)
        else:
            stride, padding, dilation, groups = (list(args[3:]) + [1, 0, 1, 1][len(args) - 3:])[:4]
            if isinstance(padding, str):
                continue
            mod = cls(weight.shape[1] * int(groups), weight.shape[0], tuple(weight.shape[2:]), stride=stride,
                      padding=padding, dilation=dilation, groups=int(groups), bias=bias is not None)
        mod.weight = weight
        if bias is not None:
            mod.bias = bias
        if not owner or owner in {n.target for n in graph.nodes if n.op == "call_module"}:
            continue  # the parameters' module is itself called (or is the root): keep it as it is
        leftovers = [n for n, _ in gm.get_submodule(owner).named_parameters(recurse=False) if n not in (w[1], b and b[1])]
        if leftovers or list(gm.get_submodule(owner).children()):
            continue
        parent, _, leaf = owner.rpartition(".")
        setattr(gm.get_submodule(parent) if parent else gm, leaf, mod)
        with graph.inserting_before(node):
            new = graph.call_module(owner, (args[0],))
        node.replace_all_uses_with(new)
        graph.erase_node(node)
    for node in list(graph.nodes):
        if node.op == "get_attr" and not node.users:
            graph.erase_node(node)
    graph.lint()
    # a fresh GraphModule: the unlifted module also checks input shapes in a forward pre-hook
    return ExportedModel(gm, graph, class_name="ExportedModel")


def load_state_dict_file(path: str) -> dict[str, torch.Tensor]:
    """A ``state_dict`` from a file: ``torch.load(weights_only=True)`` (.pt/.pth/.bin) or safetensors."""
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"weights file {path} does not exist")
    if p.suffix == ".safetensors":
        from safetensors.torch import load_file

        try:
            return load_file(str(p))
        except Exception as e:  # noqa: BLE001 - a foreign or truncated file
            raise ValueError(f"{path} is not a safetensors file ({e})") from None
    try:
        state = torch.load(str(p), map_location="cpu", weights_only=True)  # never unpickles code
    except Exception as e:  # noqa: BLE001 - pickle and zip errors of many types
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ValueError(f"{path} is not a state_dict that loads with weights_only=True ({first})") from None
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]  # the common {'state_dict': ..., 'epoch': ...} checkpoint
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ValueError(f"{path} does not hold a state_dict (a mapping of names to tensors)")
    return state
