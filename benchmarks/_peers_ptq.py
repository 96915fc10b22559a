"""bench_peers' PTQ side by side (issue 17): lowbit's GPTQ and AdaRound vs Brevitas' GPTQ and learned rounding.

Same float model, data, calibration set and bit widths as ``bench_ptq.py``: the digits VGG
and the MNIST-5k CNN (``build_model("vgg")``), trained as ``lowbit demo`` trains it (Adam
lr 3e-3, batch 64), 512 calibration samples (8 batches of 64 from the training set), W4/W3/W2
per-channel weights, float activations, BatchNorm folded. lowbit: ``quantize(model, "w<b>",
calib=..., method=...)``. Brevitas 0.13: ``preprocess_for_quantize`` (fx trace, BN merged),
``layerwise_quantize`` with weight-only ``QuantConv2d``/``QuantLinear`` (``Int8WeightPerChannelFloatMSE``
at ``weight_bit_width=b``, full range, as lowbit's MSE-clipped int<b>), then ``gptq_mode`` as in
its ImageNet PTQ example, or the example's ``LearnedRoundTrainer`` (hard-sigmoid AdaRound,
regularised MSE, layerwise, Adam lr 1e-3, batch 32, the same iterations as lowbit, no AMP on CPU).
Runs inside the peers' virtualenv (``bench_peers.py --only ptq2``).
"""
from __future__ import annotations

import copy
import functools
import statistics
import time
from typing import Any

METHODS = ("nearest", "gptq", "adaround")


def _float_model(data: str, seed: int, epochs: int) -> tuple[Any, list[Any], Any]:
    """The float model, 8 calibration batches of 64 and the test loader, exactly as bench_ptq builds them."""
    from lowbit.data import get_dataset, loader
    from lowbit.models import build_model
    from lowbit.train import fit, seed_everything

    seed_everything(seed)
    ds = get_dataset(data)
    model = build_model("vgg", ds.input_shape, ds.num_classes)
    fit(model, loader(ds.train, 64, shuffle=True, seed=seed), epochs=epochs, lr=3e-3, desc="float", progress=False)
    model.eval()
    calib = list(loader(ds.train, 64, shuffle=True, seed=seed + 100))[:8]
    return model, calib, loader(ds.test, 256)


def _brevitas_model(float_model: Any, bits: int) -> Any:
    """Brevitas' weight-only per-channel ``bits``-bit copy of ``float_model`` (BN merged by its graph preprocessing)."""
    import brevitas.nn as qnn
    from brevitas.graph.quantize import layerwise_quantize, preprocess_for_quantize
    from brevitas.quant import Int8WeightPerChannelFloatMSE
    from torch import nn

    wq = Int8WeightPerChannelFloatMSE.let(narrow_range=False)
    kw = {"weight_quant": wq, "weight_bit_width": bits, "input_quant": None, "output_quant": None,
          "bias_quant": None, "return_quant_tensor": False}
    m = preprocess_for_quantize(copy.deepcopy(float_model).eval(), equalize_iters=0, merge_bn=True, relu6_to_relu=False)
    return layerwise_quantize(m, compute_layer_map={nn.Conv2d: (qnn.QuantConv2d, kw), nn.Linear: (qnn.QuantLinear, kw)}).eval()


def _brevitas_gptq(m: Any, calib: list[Any]) -> None:
    import torch
    from brevitas.graph.gptq import gptq_mode

    with torch.no_grad(), gptq_mode(m, use_quant_activations=False, act_order=False, create_weight_orig=False) as g:
        for _ in range(g.num_layers):
            for xb, _y in calib:
                g.model(xb)
            g.update()


def _brevitas_learned_round(m: Any, calib: list[Any], iters: int) -> None:
    from brevitas_examples.common.learned_round.learned_round_args import (
        HandlerSpec, LossArgs, OptimizerArgs, TrainerConfig, TrainingArgs)
    from brevitas_examples.common.learned_round.learned_round_method import LearnedRoundArgs
    from brevitas_examples.common.learned_round.learned_round_trainer import LearnedRoundTrainer, get_blocks
    from brevitas_examples.imagenet_classification.ptq.learned_round_utils import (
        CacheVision, is_layer, vision_block_forward, vision_forward)

    cfg = TrainerConfig(
        training_args=TrainingArgs(
            optimizers_args=[OptimizerArgs(target_params="learned_round", optimizer_cls="Adam", lr=1e-3,
                                           optimizer_kwargs={}, lr_scheduler_args=None)],
            batch_size=32, iters=iters,
            losses_args=[LossArgs(cls="round_reg", kwargs=None), LossArgs(cls="mse", kwargs={"reduction": "none", "dim": 1})],
            loss_scaling_factor=1.0, use_best_model=False, use_amp=False, fast_update=False),
        training_handlers=[HandlerSpec[LearnedRoundArgs](name="learned_round",
                                                         config=LearnedRoundArgs(learned_round_param="hard_sigmoid",
                                                                                 learned_round_kwargs=None))])
    LearnedRoundTrainer(config=cfg).train(
        model=m, model_forward=vision_forward, block_forward=vision_block_forward, data_loader=calib,
        cache=CacheVision(), get_blocks_fn=functools.partial(get_blocks, block_check_fn=is_layer), keep_gpu=True)


def _one(float_model: Any, calib: list[Any], test: Any, bits: int, method: str, who: str, iters: int, seed: int) -> tuple[float, float]:
    """(test accuracy %, seconds) of one PTQ run."""
    import contextlib
    import io

    import torch

    import lowbit
    from lowbit.train import evaluate

    torch.manual_seed(seed)
    t0 = time.perf_counter()
    if who == "lowbit":
        opts = {"iters": iters, "seed": seed} if method == "adaround" else None
        qm = lowbit.quantize(float_model, f"w{bits}", calib=calib, method=method, method_options=opts)
    else:
        qm = _brevitas_model(float_model, bits)
        with torch.no_grad():
            qm(calib[0][0])  # the quantizers' scales are initialised on the first forward
        with contextlib.redirect_stdout(io.StringIO()):  # its trainer prints per-iteration progress
            if method == "gptq":
                _brevitas_gptq(qm, calib)
            elif method == "adaround":
                _brevitas_learned_round(qm, calib, iters)
        qm.eval()
    dt = time.perf_counter() - t0
    return evaluate(qm, test), dt


def ptq_rows(datasets: list[str], seeds: list[int], epochs: int, iters: int, bits: tuple[int, ...] = (4, 3, 2),
             rows_file: str | None = None) -> dict[str, Any]:
    """Accuracy and time of lowbit vs Brevitas per dataset, method and bit width; lowbit and Brevitas alternate.

    ``rows_file``: append each run as a JSON line, so that slices run in separate processes (one
    per core) can be merged by :func:`ptq_from_rows`.
    """
    import json

    import lowbit.progress
    from lowbit.train import evaluate

    lowbit.progress.set_mode("none")
    out: dict[str, Any] = {}
    for data in datasets:
        res: dict[tuple[str, str, int], list[tuple[float, float]]] = {}
        floats = []
        for seed in seeds:
            fm, calib, test = _float_model(data, seed, epochs)
            floats.append(evaluate(fm, test))
            for b in bits:
                for method in METHODS:
                    for who in ("lowbit", "brevitas"):  # alternating, so that the machine's load hits both alike
                        try:
                            r = _one(fm, calib, test, b, method, who, iters, seed)
                        except Exception as e:
                            line = (str(e).strip().splitlines() or [""])[0][:100]
                            print(f"  {data} seed {seed} W{b} {method} {who}: fails {type(e).__name__}: {line}", flush=True)
                            r = (float("nan"), float("nan"))
                        res.setdefault((method, who, b), []).append(r)
                        if rows_file:
                            with open(rows_file, "a") as f:
                                f.write(json.dumps({"data": data, "seed": seed, "float": floats[-1], "bits": b,
                                                    "method": method, "who": who, "acc": r[0], "s": r[1]}) + "\n")
                        print(f"  {data} seed {seed} W{b} {method} {who}: {r[0]:.2f} % in {r[1]:.2f} s", flush=True)
        out[data] = (statistics.mean(floats), res, len(seeds))
    return out


def ptq_from_rows(rows_file: str) -> tuple[dict[str, Any], list[int]]:
    """The ``ptq_rows`` result (and the seeds) rebuilt from the JSON lines of one or more runs."""
    import json

    with open(rows_file) as f:
        rows = [json.loads(line) for line in f if line.strip()]
    out: dict[str, Any] = {}
    seeds = sorted({r["seed"] for r in rows})
    for data in dict.fromkeys(r["data"] for r in rows):
        mine = [r for r in rows if r["data"] == data]
        floats = {r["seed"]: r["float"] for r in mine}
        res: dict[tuple[str, str, int], list[tuple[float, float]]] = {}
        for r in mine:
            res.setdefault((r["method"], r["who"], r["bits"]), []).append((r["acc"], r["s"]))
        out[data] = (statistics.mean(floats.values()), res, len(floats))
    return out, seeds


def ptq_markdown(out: dict[str, Any], header: str, bits: tuple[int, ...] = (4, 3, 2)) -> str:
    """One table per dataset: accuracy (Δ to float) lowbit | Brevitas, and the time ratio lowbit / Brevitas."""
    title = {"digits": "digits VGG", "mnist": "MNIST-5k CNN"}
    lines = [header]
    for data, (f, res, n) in out.items():
        lines += ["", f"### {title.get(data, data)}: float {f:.2f} % (mean of {n} seed{'s' if n > 1 else ''})", "",
                  "| Method | Bits | lowbit acc. (Δ float) | Brevitas acc. (Δ float) | lowbit − Brevitas | lowbit s | Brevitas s | time lowbit / Brevitas |",
                  "|---|---:|---:|---:|---:|---:|---:|---:|"]
        for method in METHODS:
            for b in bits:
                la = statistics.mean(a for a, _ in res[method, "lowbit", b])
                ba = statistics.mean(a for a, _ in res[method, "brevitas", b])
                lt = statistics.median(t for _, t in res[method, "lowbit", b])
                bt = statistics.median(t for _, t in res[method, "brevitas", b])
                name = {"nearest": "round to nearest", "gptq": "GPTQ", "adaround": "AdaRound / learned round"}[method]
                lines.append(f"| {name} | W{b} | {la:.2f} ({la - f:+.2f}) | {ba:.2f} ({ba - f:+.2f}) | {la - ba:+.2f} pt | "
                             f"{lt:.2f} | {bt:.2f} | {lt / bt:.2f}x |")
    return "\n".join(lines) + "\n"
