"""``lowbit eval``: test accuracy of a saved model (float, QAT or integer)."""
from __future__ import annotations

import argparse

from ..api import quantized_layers
from ..data import loader
from ..train import evaluate
from ._common import add_common, add_model_source, data_packages, model_source, setup

HELP = "evaluate a saved model (float, QAT or integer) on a dataset's test split"


def add_arguments(p: argparse.ArgumentParser) -> None:
    """Options of ``lowbit eval``."""
    add_model_source(p, positional_help="a model saved by lowbit (train, quantize, demo)")
    add_common(p, data_from_checkpoint=True)


def requires(args: argparse.Namespace) -> tuple[str, ...]:
    """The reader of ``--data``."""
    return data_packages(args.data)


def run(args: argparse.Namespace) -> int:
    """Print the test accuracy and the model's quantized layers."""
    setup(args)
    src = model_source(args)
    model, meta, ds = src.model, src.meta, src.dataset
    acc = evaluate(model, loader(ds.test, 256))
    layers = quantized_layers(model)
    print(f"{src.label}: stage {meta.get('lowbit.stage', 'float')}, config {meta.get('lowbit.config') or '-'}, "
          f"{len(layers)} quantized layers; test accuracy on {ds.name}: {acc:.2f} %")
    return 0
