"""Bit-exactness matrix of the MCU export on the emulated ISAs: model x weight type x ISA, the C
logits in QEMU against the NumPy integer reference, bit for bit (issue 22).

    python benchmarks/bench_mcu_matrix.py                                   # everything, 200 inputs a cell
    python benchmarks/bench_mcu_matrix.py --models mlp,cnn,dscnn --jobs 2
    python benchmarks/bench_mcu_matrix.py --models resnet8 --weights int8,ternary --isas rv32ec --check 50

Models: the digits MLP and CNN (trained as the tests train them; the first N digits test images)
and the MLPerf Tiny shapes (random weights, synthetic inputs: see bench_mcu.py's MLPERF). Each
(model, weight type) is quantized and lowered once; its program is exported, cross-compiled
(lowbit.targets.mcu.cross.build_target) and run in QEMU (run_target) per ISA. A cell reads
"✓ N" when all N inputs' logits are identical, else the first mismatching input and output.
Cells accumulate in benchmarks/results/mcu_matrix.md across runs (``--fresh`` starts over).
"""
from __future__ import annotations

import argparse
import copy
import json
import re
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timezone
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _mcu_common import WEIGHT_TYPES, train_digits, warm_zoo, weight_config  # noqa: E402
from bench_mcu import MLPERF  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results" / "mcu_matrix.md"
MODELS = ("mlp", "cnn", "dscnn", "resnet8", "mobilenetv1", "autoencoder")
ISAS = ("rv32ec", "rv32imc", "cortex-m4")  # cortex-m0 and host may be asked for too
ALL_ISAS = ("rv32ec", "rv32imc", "cortex-m4", "cortex-m0", "host")
# the layer whose input is signed (int8) in the MLPerf shapes: MFCC features, mel energies
FIRST_SIGNED = {"dscnn": "stem", "autoencoder": "layers.0"}
LABELS = {"mlp": "digits MLP", "cnn": "digits CNN", "nf4": "nf4 (LUT)"}
_MARK = "<!-- cells: "


def _csv(text: str, allowed: tuple[str, ...], what: str) -> list[str]:
    items = [s.strip() for s in text.split(",") if s.strip()]
    bad = [s for s in items if s not in allowed]
    if bad or not items:
        raise ValueError(f"{what} must name some of {', '.join(allowed)}, got {text!r}")
    return items


def _git_state() -> str:
    """HEAD and whether the C template or the lowering has uncommitted edits (others edit the tree while this runs)."""
    head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True).stdout.strip()
    dirty = subprocess.run(["git", "status", "--porcelain", "--", "src/lowbit/targets/mcu"], cwd=ROOT,
                           capture_output=True, text=True).stdout.split("\n")
    dirty = [ln[3:] for ln in dirty if ln.strip()]
    return head + (f" + uncommitted {', '.join(Path(d).name for d in dirty)}" if dirty else "")


def prepare(model: str, wtype: str, n: int, cache: dict) -> tuple[object, object]:
    """(IntProgram, integer inputs [n, input_size]) for ``model`` quantized with ``wtype`` weights."""
    import numpy as np  # noqa: F401  (the program's arrays)

    import lowbit
    from lowbit.targets.mcu import lower

    if model in ("mlp", "cnn"):
        if model not in cache:
            cache[model] = train_digits(model)
        fm, ds = cache[model]
        x_cal, x = ds.train.tensors[0][:256], ds.test.tensors[0][:n]
        if len(x) < n:
            raise ValueError(f"check must be <= {len(x)} for the digits models (the test set's size), got {n}")
        config = weight_config(wtype)
    else:
        factory, shape, outputs, signed, _ = MLPERF[model]
        if model not in cache:
            cache[model] = warm_zoo(factory, shape, outputs, signed, max(n, 64))
        fm, x_cal = cache[model]
        x = x_cal[:n]
        config = weight_config(wtype, FIRST_SIGNED.get(model))
    q = lowbit.quantize(copy.deepcopy(fm), config, calib=[(x_cal, None)])
    prog = lower(q, x_cal)
    return prog, prog.quantize_input(x)


def check_cell(prog: object, xi: object, ref: object, isa: str, work: Path) -> tuple[bool, str]:
    """Export, build and run on ``isa``; (bit-exact, cell text)."""
    import numpy as np

    from lowbit.targets.mcu import export_program
    from lowbit.targets.mcu.cross import build_target, run_target

    export_program(prog, work, harness=True, target=isa)
    elf = build_target(work, isa)
    c = run_target(elf, isa, prog, xi, timeout=4 * 3600)
    if np.array_equal(c, ref):
        return True, f"✓ {len(ref)}"
    bad = np.argwhere(c != ref)
    i, j = (int(v) for v in bad[0])
    rows = len(np.unique(bad[:, 0]))
    return False, f"✗ {rows}/{len(ref)} inputs differ; first: input {i} output {j}: C {int(c[i, j])} != ref {int(ref[i, j])}"


def _kinds(prog: object) -> str:
    """The kernel kinds of the program's compute layers, run-length coded: "i8, p4 x8, i8"."""
    kinds = [o.kind for o in prog.compute_ops]  # type: ignore[attr-defined]
    runs: list[list] = []
    for k in kinds:
        if runs and runs[-1][0] == k:
            runs[-1][1] += 1
        else:
            runs.append([k, 1])
    return ", ".join(k if n == 1 else f"{k} x{n}" for k, n in runs)


def _load(path: Path) -> dict:
    if not path.is_file():
        return {}
    for line in path.read_text().splitlines():
        if line.startswith(_MARK):
            return json.loads(line[len(_MARK):-len(" -->")])
    return {}


def render(cells: dict) -> str:
    """The markdown matrix: rows model x weight type, a column per ISA that has a cell."""
    isas = [i for i in ALL_ISAS if any(k.split("|")[2] == i for k in cells)]
    rows = [(m, w) for m in MODELS for w in WEIGHT_TYPES if any(k.startswith(f"{m}|{w}|") for k in cells)]
    lines = [
        "# MCU export: C in QEMU == NumPy integer reference, bit for bit",
        "",
        "Written by `benchmarks/bench_mcu_matrix.py` (issue 22). ✓ N: all N inputs' int32 logits identical; "
        "✗: how many inputs differ and the first differing logit. rv32ec builds for rv32ic/ilp32 only if "
        "picolibc lacks rv32e (see lowbit.targets.mcu.cross). Digits models: the first N digits test images; "
        "MLPerf shapes: random weights, synthetic inputs. Seconds = export + build + QEMU run of the cell (under load).",
        "",
        "| model | weights | kernels | distinct logits | " + " | ".join(isas) + " |",
        "|---|---|---|---|" + "---|" * len(isas),
    ]
    for m, w in rows:
        out = []
        info = next((c for k, c in cells.items() if k.startswith(f"{m}|{w}|") and "kernels" in c), {})
        for isa in isas:
            c = cells.get(f"{m}|{w}|{isa}")
            out.append("not run" if c is None else f"{c['text']} ({c['seconds']:.0f} s)")
        lines.append(f"| {LABELS.get(m, m)} | {LABELS.get(w, w)} | {info.get('kernels', '-')} | {info.get('distinct', '-')} | "
                     + " | ".join(out) + " |")
    lines += ["", "Code the cells ran (git HEAD; uncommitted MCU files: others edit the tree while the matrix runs):"]
    for code in sorted({c["code"] for c in cells.values()}, key=lambda k: min(c["when"] for c in cells.values() if c["code"] == k)):
        when = sorted(c["when"] for c in cells.values() if c["code"] == code)
        lines.append(f"- {code}: {len(when)} cells, {when[0]} to {when[-1]} UTC")
    lines += ["", _MARK + json.dumps(cells, sort_keys=True, ensure_ascii=False) + " -->", ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Run the matrix, print it and write benchmarks/results/mcu_matrix.md."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", default=",".join(MODELS), help=f"comma-separated, of {', '.join(MODELS)}")
    p.add_argument("--weights", default=",".join(WEIGHT_TYPES), help=f"comma-separated, of {', '.join(WEIGHT_TYPES)}")
    p.add_argument("--isas", default=",".join(ISAS), help=f"comma-separated, of {', '.join(ALL_ISAS)}")
    p.add_argument("--check", type=int, default=200, help="inputs per cell (default 200)")
    p.add_argument("--jobs", type=int, default=1, help="cells built and run at once (1 or 2: QEMU is single-threaded)")
    p.add_argument("--until", default=None, help="UTC time HH:MM after which no new cell starts (its row reads 'not run')")
    p.add_argument("--out", default=str(RESULTS), help="the markdown file (cells merge into it unless --fresh)")
    p.add_argument("--fresh", action="store_true", help="drop the cells already in --out")
    args = p.parse_args(argv)
    try:
        models = _csv(args.models, MODELS, "--models")
        wtypes = _csv(args.weights, tuple(WEIGHT_TYPES), "--weights")
        isas = _csv(args.isas, ALL_ISAS, "--isas")
    except ValueError as e:
        p.error(str(e))
    if args.check < 1:
        p.error(f"--check must be >= 1, got {args.check}")
    if args.jobs not in (1, 2):
        p.error(f"--jobs must be 1 or 2, got {args.jobs}")
    stop = None
    if args.until:
        if not re.fullmatch(r"\d{1,2}:\d{2}", args.until):
            p.error(f"--until must be HH:MM (UTC), got {args.until!r}")
        h, mi = (int(v) for v in args.until.split(":"))
        stop = datetime.now(timezone.utc).replace(hour=h, minute=mi, second=0, microsecond=0)

    from lowbit.fileio import write_text
    from lowbit.targets.mcu import reference
    from lowbit.targets.mcu.cross import missing_tools

    out = Path(args.out)
    cells = {} if args.fresh else _load(out)
    code = _git_state()
    lock = threading.Lock()
    t0 = time.time()

    def record(key: str, ok: bool | None, text: str, seconds: float, **info: object) -> None:
        with lock:
            cells[key] = {"ok": ok, "text": text, "seconds": round(seconds, 1),
                          "when": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M"), "code": code, **info}
            write_text(out, render(cells))  # after every cell: an interrupted run keeps what it measured
            print(f"{time.time() - t0:7.0f} s  {key.replace('|', ' / ')}: {text} ({seconds:.0f} s)", flush=True)

    def cell(key: str, prog: object, xi: object, ref: object, isa: str) -> None:
        import numpy as np

        # which inner loops the program uses (i8, p4, p2, t3, l4, ...) and how varied the reference logits are
        info = {"kernels": _kinds(prog), "distinct": int(len(np.unique(ref)))}
        if stop is not None and datetime.now(timezone.utc) >= stop:
            return
        t = time.time()
        miss = missing_tools(isa)
        if miss:
            record(key, None, f"not built: {', '.join(miss)} missing", 0.0, **info)
            return
        try:
            with tempfile.TemporaryDirectory(prefix="lowbit_matrix_") as tmp:
                ok, text = check_cell(prog, xi, ref, isa, Path(tmp))
        except Exception as e:  # a build or run failure is a cell's result, not the end of the matrix
            first = next((ln for ln in str(e).splitlines() if "error" in ln.lower()), str(e).splitlines()[0] if str(e) else "")
            ok, text = False, f"error: {type(e).__name__}: {first.strip()[:200]}"
        record(key, ok, text, time.time() - t, **info)

    print(f"code: {code}; {args.check} inputs a cell; jobs {args.jobs}", flush=True)
    cache: dict = {}
    with ThreadPoolExecutor(max_workers=args.jobs) as pool:
        futures = []
        for m in models:
            for w in wtypes:
                if stop is not None and datetime.now(timezone.utc) >= stop:
                    break
                t = time.time()
                try:
                    prog, xi = prepare(m, w, args.check, cache)
                    ref = reference.run(prog, xi)
                except Exception as e:  # the model cannot be lowered with these weights: every ISA's cell says why
                    msg = str(e).splitlines()[0] if str(e) else ""
                    for isa in isas:
                        record(f"{m}|{w}|{isa}", False, f"lowering error: {type(e).__name__}: {msg[:200]}", time.time() - t)
                    continue
                print(f"{time.time() - t0:7.0f} s  {m} / {w}: lowered + reference in {time.time() - t:.0f} s", flush=True)
                futures += [pool.submit(cell, f"{m}|{w}|{isa}", prog, xi, ref, isa) for isa in isas]
            cache.pop(m, None)
        for f in futures:
            f.result()
    print()
    print(render(cells).split(_MARK)[0].rstrip())
    print(f"\n(wall time {time.time() - t0:.0f} s; written to {out})")
    return 0 if all(c["ok"] for c in cells.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
