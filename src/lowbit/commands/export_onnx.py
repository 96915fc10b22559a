"""``lowbit export-onnx MODEL out.onnx``: a saved lowbit model as a QDQ ONNX graph, checked in onnxruntime."""
from __future__ import annotations

import argparse

import numpy as np
import torch

from ._common import (add_model_source, add_progress, add_seed, add_threads, data_packages, example_input, model_source,
                      setup)

HELP = "export a lowbit model to ONNX (QDQ graph; integer weights, codebooks as Gather) and check it in onnxruntime"
REQUIRES = ("onnx",)


def add_arguments(p: argparse.ArgumentParser) -> None:
    """Options of ``lowbit export-onnx``."""
    from ..targets.onnx_export import DEFAULT_OPSET, WEIGHT_FORMATS

    add_model_source(p, positional_help="a model saved by lowbit (lowbit train / quantize / demo, or lowbit.save)")
    p.add_argument("output", help="the ONNX file to write (written atomically)")
    p.add_argument("--opset", type=int, default=DEFAULT_OPSET, help=f"ONNX opset, 13..23 (default: {DEFAULT_OPSET})")
    p.add_argument("--weight-format", choices=WEIGHT_FORMATS, default="int",
                   help="'int': integer initializers + DequantizeLinear (default); 'qcdq': float grid values "
                        "behind QuantizeLinear/Clip/DequantizeLinear")
    p.add_argument("--static-batch", action="store_true", help="fix the batch dimension instead of leaving it dynamic")
    p.add_argument("--no-verify", action="store_true", help="do not run the graph in onnxruntime before writing it")
    p.add_argument("--data", default=None,
                   help="also compare onnxruntime with PyTorch on this dataset's test split (e.g. digits)")
    add_seed(p, "random seed of the example input and of the verification's random inputs")
    add_threads(p)
    add_progress(p)


def requires(args: argparse.Namespace) -> tuple[str, ...]:
    """onnxruntime when the graph is run (verification or --data) and the reader of ``--data``."""
    run_it = not args.no_verify or args.data
    return (("onnxruntime",) if run_it else ()) + data_packages(args.data)


def run(args: argparse.Namespace) -> int:
    """Load the model, export it, and print what was written."""
    from ..targets.onnx_export import export_onnx, onnx_ops, run_onnx

    setup(args)
    if args.data and args.static_batch:
        raise ValueError("--data needs a dynamic batch dimension; drop --static-batch")
    src = model_source(args, file_attr="checkpoint", need_data=False, seed=0)
    meta, ds, shape = src.meta, src.dataset, src.input_shape
    if shape is None:
        raise ValueError(f"{src.label} does not record its input shape: pass --input-shape C,H,W")
    model = src.model.eval()
    gen = torch.Generator().manual_seed(args.seed)
    example = example_input(model, shape, generator=gen)
    path = export_onnx(model, args.output, example, opset=args.opset, weight_format=args.weight_format,
                       dynamic_batch=not args.static_batch, verify=not args.no_verify, seed=args.seed)
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
        print(f"onnxruntime on {ds.name} test ({len(x)} inputs): accuracy {acc:.2f} %, "
              f"predictions equal to PyTorch {agree:.2f} %, max |logit diff| {np.abs(got - ref).max() / span:.2e} of the range")
    return 0
