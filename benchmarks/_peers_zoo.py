"""bench_peers' zoo section (issue 21): which zoo models lowbit, Brevitas and torchao quantize, run and export.

Every cell runs on the same seeded random-init zoo model (small widths, BatchNorms that
have seen three random batches, as a trained model's have) and the same inputs; nothing
is downloaded. A cell says ``works`` (with how many of the model's weight tensors were
actually quantized, ``k/n``) or ``fails`` with the first line of the error, shortened.
Runs inside the peers' virtualenv (``bench_peers.py --only zoo``).
"""
from __future__ import annotations

import copy
import tempfile
import traceback
import warnings
from pathlib import Path
from typing import Any, Callable

COLUMNS = [
    "lowbit W8 PTQ", "lowbit W4A8 QAT → convert", "lowbit ONNX + verify",
    "Brevitas graph `quantize`", "Brevitas `layerwise_quantize`", "Brevitas QCDQ ONNX",
    "torchao int8 weight-only", "torchao int8-dyn-act / int4-weight", "torchao `torch.export`",
]


def _short(e: BaseException, n: list[str] = 90) -> str:
    """The error's type and first line, at most ``n`` characters, safe in a markdown cell."""
    line = (str(e).strip().splitlines() or [""])[0]
    kind = next(c for c in type(e).__mro__ if not c.__name__.startswith("_")).__name__  # a private subclass: its public base
    s = f"{kind}: {line}".replace("|", "/")
    return s if len(s) <= n else s[: n - 1] + "…"


def _owners(model: Any) -> list[str]:
    """Names of the modules that own a 2+-dim ``*weight*`` tensor: Conv, Linear, attention, embedding, RNN."""
    return [name for name, m in model.named_modules()
            if any("weight" in pn and p.dim() >= 2 for pn, p in m.named_parameters(recurse=False))]


def _count(float_owners: list[str], qmodel: Any, quantized: Callable[[Any], bool]) -> str:
    """``k/n``: how many of the float model's weight layers are quantized in ``qmodel``.

    A float layer counts when the module at its name (or, where the quantizer replaced a
    parent, at the nearest ancestor that still exists) is inside a quantized module, or
    when every weight tensor under it is (a container whose projections were swapped).
    """
    mods = dict(qmodel.named_modules())
    inside: set[int] = set()
    for m in mods.values():
        if quantized(m):
            inside.update(id(s) for s in m.modules())

    def all_in(m: Any) -> bool:  # every weight under m (a container such as an unfused attention) is quantized
        owners = [s for s in m.modules() if any("weight" in pn and p.dim() >= 2 for pn, p in s.named_parameters(recurse=False))]
        return bool(owners) and all(id(s) in inside for s in owners)

    k = 0
    for name in float_owners:
        parts = name.split(".")
        while parts and ".".join(parts) not in mods:
            parts.pop()
        m = mods.get(".".join(parts), qmodel)
        k += id(m) in inside or all_in(m)
    return f"{k}/{len(float_owners)}"


def _ort_diff(model: Any, path: Path, x: Any) -> str:
    """``, ort Δ …``: the largest difference between onnxruntime and the model on ``x``, in units of the output range."""
    import torch

    try:
        import onnxruntime as ort

        so = ort.SessionOptions()
        so.log_severity_level = 3  # Brevitas' TorchScript graphs list initializers as inputs: one warning each
        sess = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
        got = torch.from_numpy(sess.run(None, {sess.get_inputs()[0].name: x.numpy()})[0])
        with torch.no_grad():
            ref = model(x)
        ref = (ref.value if hasattr(ref, "value") else ref).float()
        return f", ort Δ {float((got - ref).abs().max() / (ref.max() - ref.min())):.1e} of range"
    except Exception as e:
        return ", ort fails: " + _short(e, 60)


def _finite(y: Any) -> None:
    import torch

    y = y.value if hasattr(y, "value") else y  # a Brevitas QuantTensor
    if not torch.isfinite(y).all():
        raise ValueError("output has NaN/inf")


def _setup(name: str) -> tuple[Any, list[Any], Any, list[str]]:
    """The float model (BN stats seen), three calibration batches, an input, and how many weight tensors it has."""
    import torch

    from lowbit.models import build_model
    from lowbit.models.zoo import ZOO, zoo_input

    e = ZOO[name]
    model = build_model(name, e.small_input_shape or e.input_shape, min(e.num_classes, 10), seed=0, **e.small)
    batches = [zoo_input(name, 4, seed=10 + i) for i in range(3)]
    model.train()
    with torch.no_grad():
        for b in batches:
            model(b)
    return model.eval(), batches, zoo_input(name, 2, seed=99), _owners(model)


def _lowbit(fm: Any, batches: list[Any], x: Any, n: list[str], tmp: Path) -> list[str]:
    import torch
    import torch.nn.functional as F

    import lowbit
    from lowbit.targets.onnx_export import export_onnx

    from lowbit.nn import QuantLayer

    def is_q(m: Any) -> bool:
        return isinstance(m, QuantLayer)

    cells = []
    try:
        q = lowbit.quantize(fm, "w8", calib=batches)
        with torch.no_grad():
            _finite(q(x))
        cells.append("works " + _count(n, q, is_q))
    except Exception as e:
        cells.append("fails: " + _short(e))
    fq = None
    try:
        fq = lowbit.prepare_qat(fm, "w4:lsq,a8")
        opt = torch.optim.SGD(fq.parameters(), lr=1e-3)
        fq.train()
        g = torch.Generator().manual_seed(7)
        for b in batches[:2]:  # two steps, so that weights, LSQ steps and ranges move
            opt.zero_grad()
            F.cross_entropy(fq(b), torch.randint(0, 2, (b.shape[0],), generator=g)).backward()
            opt.step()
        fq.eval()
        conv = lowbit.convert(fq)
        with torch.no_grad():
            same = torch.equal(fq(x), conv(x))
        cells.append(("works " if same else "runs, convert ≠ QAT ") + _count(n, fq, is_q)
                     + (", bit-exact" if same else ""))
    except Exception as e:
        fq = None
        cells.append("fails: " + _short(e))
    try:
        if fq is None:
            raise RuntimeError("no QAT model")
        export_onnx(fq, tmp / "lowbit.onnx", x)  # verify=True: example + 5 random inputs in onnxruntime
        cells.append("works, verified")
    except Exception as e:
        cells.append("fails: " + _short(e))
    return cells


def _brevitas(fm: Any, batches: list[Any], x: Any, n: list[str], tmp: Path) -> list[str]:
    import torch
    from brevitas.export import export_onnx_qcdq
    from brevitas.graph.calibrate import calibration_mode
    from brevitas.graph.quantize import layerwise_quantize, preprocess_for_quantize, quantize

    def is_q(m: Any) -> bool:
        return type(m).__module__.startswith("brevitas.nn") and (
            hasattr(m, "weight_quant") or type(m).__name__ in ("QuantMultiheadAttention", "QuantLSTM", "QuantRNN", "QuantEmbedding"))

    cells, graph, layer = [], None, None
    try:
        graph = quantize(preprocess_for_quantize(copy.deepcopy(fm)))
        graph.eval()
        with torch.no_grad(), calibration_mode(graph):
            for b in batches:
                graph(b)
        with torch.no_grad():
            _finite(graph(x))
        cells.append("works " + _count(n, graph, is_q))
    except Exception as e:
        graph = None
        cells.append("fails: " + _short(e))
    try:
        layer = layerwise_quantize(copy.deepcopy(fm)).eval()
        with torch.no_grad():
            _finite(layer(x))
        cells.append("works " + _count(n, layer, is_q))
    except Exception as e:
        layer = None
        cells.append("fails: " + _short(e))
    done = []
    for tag, m in (("graph", graph), ("layerwise", layer)):
        if m is None:
            continue
        errs = []
        for dynamo in (True, False):  # Brevitas' default exporter first, then the TorchScript one
            path = tmp / f"brevitas_{tag}_{dynamo}.onnx"
            try:
                export_onnx_qcdq(m, args=x, export_path=str(path), dynamo=dynamo)
                done.append(f"{tag}: works ({'dynamo' if dynamo else 'TorchScript'}{_ort_diff(m, path, x)})")
                break
            except Exception as e:
                errs.append(f"{'dynamo' if dynamo else 'TorchScript'} " + _short(e, 70))
        else:
            done.append(f"{tag}: fails: " + "; ".join(errs))
    cells.append("; ".join(done) or "nothing to export")
    return cells


def _torchao(fm: Any, x: Any, n: list[str]) -> list[str]:
    import torch
    from torchao.quantization import Int8DynamicActivationIntxWeightConfig, Int8WeightOnlyConfig, quantize_
    from torchao.quantization.granularity import PerAxis

    def is_q(m: Any) -> bool:  # torchao swaps the weight for a tensor subclass
        return any(type(p.data) is not torch.Tensor for p in m.parameters(recurse=False))

    cells, exports = [], []
    configs = (("int8wo", lambda: Int8WeightOnlyConfig()),
               ("int8da-int4w", lambda: Int8DynamicActivationIntxWeightConfig(weight_dtype=torch.int4, weight_granularity=PerAxis(0))))
    for tag, cfg in configs:
        try:
            m = copy.deepcopy(fm)
            quantize_(m, cfg())
            m.eval()
            with torch.no_grad():
                _finite(m(x))
            cells.append("works " + _count(n, m, is_q))
        except Exception as e:
            cells.append("fails: " + _short(e))
            continue
        try:
            torch.export.export(m, (x,))
            exports.append(f"{tag} works")
        except Exception as e:
            exports.append(f"{tag} fails: " + _short(e, 70))
    cells.append("; ".join(exports) or "nothing to export")
    return cells


def zoo_rows(models: list[str] | None = None) -> list[tuple[str, list[str]]]:
    """One row of cells (in ``COLUMNS`` order) per zoo model."""
    import torch

    from lowbit.models.zoo import ZOO

    rows = []
    for name in models or sorted(ZOO):
        fm, batches, x, n = _setup(name)
        with tempfile.TemporaryDirectory() as d, warnings.catch_warnings():
            warnings.simplefilter("ignore")
            tmp = Path(d)
            cells: list[str] = []
            for part in (lambda: _lowbit(fm, batches, x, n, tmp), lambda: _brevitas(fm, batches, x, n, tmp),
                         lambda: _torchao(fm, x, n)):
                torch.manual_seed(0)
                try:
                    cells += part()
                except Exception as e:  # an import or set-up error: the whole group fails alike
                    traceback.print_exc()
                    cells += ["fails: " + _short(e)] * 3
        print(f"  {name}: " + " | ".join(cells), flush=True)
        rows.append((name, cells))
    return rows


def zoo_markdown(rows: list[tuple[str, list[str]]], header: str) -> str:
    """The works/fails table under ``header``."""
    lines = [header, "", "| Model | " + " | ".join(COLUMNS) + " |", "|---" * (len(COLUMNS) + 1) + "|"]
    lines += [f"| {name} | " + " | ".join(cells) + " |" for name, cells in rows]
    return "\n".join(lines) + "\n"
