"""``lowbit export-onnx MODEL out.onnx``: a saved lowbit model as a QDQ ONNX graph, checked in onnxruntime."""
from __future__ import annotations

import argparse

import numpy as np
import torch

from ._common import add_progress, add_seed, add_threads, check_finite, check_fits, data_packages, model_arch, setup

HELP = "export a saved lowbit model to ONNX (QDQ graph; integer weights, codebooks as Gather) and check it in onnxruntime"
REQUIRES = ("onnx",)


def _shape(text: str) -> tuple[int, ...]:
    try:
        dims = tuple(int(d) for d in text.replace("x", ",").split(",") if d.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"--input-shape must be comma-separated integers such as 1,8,8, got {text!r}") from None
    if not dims or any(d < 1 for d in dims):
        raise argparse.ArgumentTypeError(f"--input-shape must hold positive integers, got {text!r}")
    return dims


def add_arguments(p: argparse.ArgumentParser) -> None:
    """Options of ``lowbit export-onnx``."""
    from ..targets.onnx_export import DEFAULT_OPSET, WEIGHT_FORMATS

    p.add_argument("model", help="a model saved by lowbit (lowbit train / quantize / demo, or lowbit.save)")
    p.add_argument("output", help="the ONNX file to write (written atomically)")
    p.add_argument("--input-shape", type=_shape, default=None,
                   help="shape of one input without the batch dimension, e.g. 1,8,8 (default: from the model file)")
    p.add_argument("--opset", type=int, default=DEFAULT_OPSET, help=f"ONNX opset, 13..23 (default: {DEFAULT_OPSET})")
    p.add_argument("--weight-format", choices=WEIGHT_FORMATS, default="int",
                   help="'int': integer initializers + DequantizeLinear (default); 'qcdq': float grid values "
                        "behind QuantizeLinear/Clip/DequantizeLinear")
    p.add_argument("--static-batch", action="store_true", help="fix the batch dimension instead of leaving it dynamic")
    p.add_argument("--no-verify", action="store_true", help="do not run the graph in onnxruntime before writing it")
    p.add_argument("--data", default=None,
                   help="also compare onnxruntime with PyTorch on this dataset's test split (e.g. digits)")
    add_seed(p, "random seed of the example input")
    add_threads(p)
    add_progress(p)


def requires(args: argparse.Namespace) -> tuple[str, ...]:
    """onnxruntime when the graph is run (verification or --data) and the reader of ``--data``."""
    run_it = not args.no_verify or args.data
    return (("onnxruntime",) if run_it else ()) + data_packages(args.data)


def run(args: argparse.Namespace) -> int:
    """Load the model, export it, and print what was written."""
    from ..api import load, read_metadata
    from ..targets.onnx_export import export_onnx, onnx_ops, run_onnx

    setup(args)
    if args.data and args.static_batch:
        raise ValueError("--data needs a dynamic batch dimension; drop --static-batch")
    meta = read_metadata(args.model)
    shape = args.input_shape
    if shape is None:
        arch = model_arch(meta)
        if not arch:
            raise ValueError(f"{args.model} does not record its input shape: pass --input-shape C,H,W")
        shape = tuple(int(s) for s in arch["input_shape"])
    check_fits(args.model, meta, shape, None, f"--input-shape {','.join(map(str, shape))}")
    ds = None
    if args.data:
        from ..data import get_dataset

        ds = get_dataset(args.data)
        check_fits(args.model, meta, ds.input_shape, ds.num_classes, f"--data {args.data}")
    model = load(args.model).eval()
    check_finite(model, args.model)
    gen = torch.Generator().manual_seed(args.seed)
    example = torch.rand((2, *shape), generator=gen)
    path = export_onnx(model, args.output, example, opset=args.opset, weight_format=args.weight_format,
                       dynamic_batch=not args.static_batch, verify=not args.no_verify)
    ops = onnx_ops(path)
    print(f"wrote {path} ({path.stat().st_size} bytes; stage {meta.get('lowbit.stage', '?')}, "
          f"config {meta.get('lowbit.config') or '-'}); operators: "
          + ", ".join(f"{k} x{v}" for k, v in sorted(ops.items())))
    if ds is not None:
        x, y = ds.test.tensors
        with torch.no_grad():
            ref = model(x).numpy()
        got = run_onnx(path, x)
        span = float(ref.max() - ref.min()) or 1.0
        agree = float((got.argmax(1) == ref.argmax(1)).mean()) * 100
        acc = float((got.argmax(1) == y.numpy()).mean()) * 100
        print(f"onnxruntime on {args.data} test ({len(x)} inputs): accuracy {acc:.2f} %, "
              f"predictions equal to PyTorch {agree:.2f} %, max |logit diff| {np.abs(got - ref).max() / span:.2e} of the range")
    return 0
