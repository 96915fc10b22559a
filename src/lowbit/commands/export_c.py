"""``lowbit export-c``: integer-only C for microcontrollers from a saved quantized model."""
from __future__ import annotations

import argparse

from ._common import add_data, add_model_source, add_progress, add_seed, add_threads, data_packages, model_source, setup

HELP = "export a quantized model as integer-only C (header + one source file) with a memory report"


def add_arguments(p: argparse.ArgumentParser) -> None:
    """Options of ``lowbit export-c``."""
    add_model_source(p, positional_help="a quantized model written by lowbit.save (lowbit quantize / train --qat)")
    p.add_argument("--out", required=True, help="output folder for <name>.h and <name>.c (created; files replaced)")
    add_data(p, from_checkpoint=True)
    p.add_argument("--calib-samples", type=int, default=512, help="training inputs used to calibrate activation ranges (default: 512)")
    p.add_argument("--shift", choices=("static", "dynamic"), default="static",
                   help="requantization: static per-layer shifts from calibration, or BitNetMCU's dynamic max-based shift")
    p.add_argument("--ternary", choices=("base3", "2bit"), default="base3", help="packing of ternary weights (default: base3, 1.6 bits)")
    p.add_argument("--flash", default=None, help="flash budget, e.g. 16k: fail if the model needs more")
    p.add_argument("--ram", default=None, help="RAM budget, e.g. 2k: fail if the model needs more")
    p.add_argument("--name", default="lowbit_model", help="file name stem (default: lowbit_model)")
    p.add_argument("--harness", action="store_true", help="also write <name>_main.c (stdin inputs -> stdout int32 logits)")
    p.add_argument("--target", choices=("host", "cortex-m0", "cortex-m4", "rv32imc", "rv32ec"), default=None,
                   help="also write a harness for this target (semihosting file I/O on a microcontroller) and <name>_build.sh; "
                        "when the cross compiler is installed, build it and print the linked flash and RAM")
    p.add_argument("--no-eval", action="store_true", help="skip the test-split accuracy of the integer model")
    add_seed(p)
    add_threads(p)
    add_progress(p)


def requires(args: argparse.Namespace) -> tuple[str, ...]:
    """The reader of ``--data``."""
    return data_packages(args.data)


def run(args: argparse.Namespace) -> int:
    """Lower, check the budgets, write the C files, print the memory report (and accuracies)."""
    import torch

    from ..targets.mcu import reference
    from ..targets.mcu.export import export_program
    from ..targets.mcu.lower import lower
    from ..targets.mcu.report import memory_report, parse_bytes

    setup(args)
    if args.calib_samples < 1:
        raise ValueError(f"--calib-samples must be >= 1, got {args.calib_samples}")
    for opt in ("flash", "ram"):
        if getattr(args, opt) is not None:
            try:
                parse_bytes(getattr(args, opt))  # a malformed budget fails before any work
            except ValueError as e:
                raise ValueError(f"--{opt}: {e}") from None
    src = model_source(args)
    model, ds = src.model, src.dataset
    x_train = ds.train.tensors[0][: args.calib_samples]
    program = lower(model, x_train, shift=args.shift, ternary=args.ternary)
    report = memory_report(program)
    print(report.markdown())
    res = export_program(program, args.out, name=args.name, harness=args.harness or args.target is not None,
                         flash=args.flash, ram=args.ram, target=args.target)
    print(f"wrote {', '.join(str(p) for p in res.files.values())}")
    if args.target is not None:
        from ..targets.mcu.cross import linked_report

        print(linked_report(res, args.out, args.target, name=args.name, flash=args.flash, ram=args.ram))
    if not args.no_eval:
        x, y = ds.test.tensors
        model.eval()
        with torch.no_grad():
            fq = float((model(x).argmax(1) == y).float().mean()) * 100
        acc = reference.accuracy(program, x, y)
        print(f"test accuracy on {ds.name}: fake-quantized {fq:.2f} %, integer (C = NumPy reference) {acc:.2f} %")
    return 0
