"""Shared by the MCU benchmarks: the zoo models warmed up with random weights, the digits models
trained as the tests train them, and the quantize configs per weight type.
"""
from __future__ import annotations

import torch

from lowbit.models.zoo import warm_zoo  # noqa: F401 (the benchmarks import it from here)

# weight type -> the weights part of a quantize config (activations: a8, plus the model's first-layer input)
WEIGHT_TYPES = {
    "int8": "w8",
    "int4": "w4",
    "int2": "w2",
    "ternary": "*=ternary:channel",
    "nf4": "*=nf4:channel",  # 4-bit codes into an int8 LUT codebook
}


def weight_config(wtype: str, first_signed: str | None = None) -> str:
    """The quantize config for weight type ``wtype``, 8-bit activations; ``first_signed``: a layer whose input is int8."""
    if wtype not in WEIGHT_TYPES:
        raise ValueError(f"wtype must be one of {', '.join(WEIGHT_TYPES)}, got {wtype!r}")
    return f"{WEIGHT_TYPES[wtype]},a8" + (f",a:{first_signed}=int8" if first_signed else "")


def train_digits(name: str, seed: int = 0) -> tuple[torch.nn.Module, object]:
    """The float digits model the MCU tests use ("mlp": 15 epochs; "cnn": the small VGG, widths 16/32, 8 epochs), and the dataset."""
    from lowbit.data.images import load_digits, loader
    from lowbit.models import build_model
    from lowbit.train import fit

    if name not in ("mlp", "cnn"):
        raise ValueError(f"name must be 'mlp' or 'cnn', got {name!r}")
    ds = load_digits(seed=0)
    arch, epochs, kw = ("mlp", 15, {}) if name == "mlp" else ("vgg", 8, {"widths": (16, 32)})
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        model = build_model(arch, ds.input_shape, ds.num_classes, seed=seed, **kw)
        fit(model, loader(ds.train, 64, shuffle=True, seed=seed), epochs=epochs, lr=3e-3, progress=False)
    finally:
        torch.set_num_threads(threads)
    return model.eval(), ds
