"""``lowbit quantize``: post-training quantization of a saved float model; prints the accuracies."""
from __future__ import annotations

import argparse
from pathlib import Path

from ..api import convert, quantize, save
from ..config import QuantConfig
from ..data import loader
from ..train import evaluate
from ._common import _stem, add_common, add_model_source, add_out, data_packages, model_source, setup

HELP = "post-training quantization of a float model (calibrate, convert, save the integer model)"


def add_arguments(p: argparse.ArgumentParser) -> None:
    """Options of ``lowbit quantize``."""
    add_model_source(p, positional_help="a float model saved by 'lowbit train'")
    add_common(p, data_from_checkpoint=True)
    p.add_argument("--config", default="w8", help="quantization config, e.g. 'w4', 'w4,a8', '*=int4:channel:mse,classifier=int8' (default: w8)")
    p.add_argument("--calib-batches", type=int, default=8, help="calibration batches for activation ranges (default: 8)")
    p.add_argument("--method", default="nearest", choices=("nearest", "gptq", "adaround", "brecq"),
                   help="weight rounding: nearest, or layer by layer on the calibration batches with GPTQ or AdaRound, or BRECQ block by block (default: nearest)")
    add_out(p, None, "where to save the integer model (default: <checkpoint>.<config>.lowbit, or <model>.<config>.lowbit)")


def requires(args: argparse.Namespace) -> tuple[str, ...]:
    """The reader of ``--data``."""
    return data_packages(args.data)


def run(args: argparse.Namespace) -> int:
    """Quantize, convert, save; print float and quantized test accuracy."""
    setup(args)
    QuantConfig.parse(args.config)  # a typo fails before the data is read
    if args.calib_batches < 1:
        raise ValueError(f"--calib-batches must be >= 1, got {args.calib_batches}")
    src = model_source(args)
    model, ds = src.model, src.dataset
    data = args.data or src.meta.get("lowbit.data") or "digits"
    test = loader(ds.test, 256)
    calib = loader(ds.train, 64, shuffle=True, seed=args.seed)
    acc_f = evaluate(model, test)
    qmodel = convert(quantize(model, args.config, calib=calib, calib_batches=args.calib_batches, method=args.method))
    acc_q = evaluate(qmodel, test)
    safe = "".join(c if c.isalnum() else "_" for c in args.config)
    stem = str(Path(args.checkpoint).with_suffix("")) if args.checkpoint else _stem(args.model)
    out = args.out or f"{stem}.{safe}.lowbit"
    save(qmodel, out, metadata={**src.record, "lowbit.data": data, "lowbit.accuracy": f"{acc_q:.4f}",
                                "lowbit.seed": str(args.seed)})
    print(f"float {acc_f:.2f} %  ->  {args.config}: {acc_q:.2f} %  ({acc_q - acc_f:+.2f} pt) -> {out}")
    return 0
