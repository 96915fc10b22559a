"""``lowbit eval``: test accuracy of a saved model (float, QAT or integer)."""
from __future__ import annotations

import argparse

from ..api import load, quantized_layers, read_metadata
from ..data import get_dataset, loader
from ..train import evaluate
from ._common import add_common, setup

HELP = "evaluate a saved model (float, QAT or integer) on a dataset's test split"


def add_arguments(p: argparse.ArgumentParser) -> None:
    """Options of ``lowbit eval``."""
    p.add_argument("checkpoint", help="a model saved by lowbit (train, quantize, demo)")
    add_common(p, data_from_checkpoint=True)


def run(args: argparse.Namespace) -> int:
    """Print the test accuracy and the model's quantized layers."""
    setup(args)
    meta = read_metadata(args.checkpoint)
    data = args.data or meta.get("lowbit.data", "digits")
    model = load(args.checkpoint)
    acc = evaluate(model, loader(get_dataset(data).test, 256))
    layers = quantized_layers(model)
    print(f"{args.checkpoint}: stage {meta.get('lowbit.stage')}, config {meta.get('lowbit.config') or '-'}, "
          f"{len(layers)} quantized layers; test accuracy on {data}: {acc:.2f} %")
    return 0
