"""Offline spiking data: Randman, Yin-Yang, spike-encoded digits, SHD files."""
import numpy as np
import pytest
import torch

from lowbit.data.spiking import (
    events_to_rasters,
    load_shd,
    randman,
    randman_manifold,
    randman_raster,
    spiking_digits,
    spiking_yin_yang,
    split,
    yin_yang,
)


def test_randman_shapes_and_one_spike_per_unit():
    ev, lab = randman(nb_classes=3, nb_units=7, nb_steps=20, dim_manifold=2, nb_spikes=2, nb_samples=11, seed=1)
    assert ev.shape == (33, 14, 2) and lab.shape == (33,)
    assert np.bincount(lab).tolist() == [11, 11, 11]
    assert ev[..., 0].min() >= 0 and ev[..., 0].max() < 20
    assert sorted(np.unique(ev[0, :, 1]).tolist()) == list(range(7))
    x, y = randman_raster(nb_classes=3, nb_units=7, nb_steps=20, nb_samples=11, seed=1)
    assert x.shape == (33, 20, 7)
    assert torch.equal(x.sum(1), torch.ones(33, 7))  # every unit spikes exactly once: timing carries the class


def test_randman_deterministic_by_seed():
    a = randman(nb_classes=2, nb_units=5, nb_samples=4, seed=3)
    b = randman(nb_classes=2, nb_units=5, nb_samples=4, seed=3)
    c = randman(nb_classes=2, nb_units=5, nb_samples=4, seed=4)
    assert np.array_equal(a[0], b[0]) and np.array_equal(a[1], b[1])
    assert not np.array_equal(a[0], c[0])


def test_randman_manifold_formula():
    # alpha = 2, prec 1e-3 -> 32 frequencies; without bias the i = 0 term vanishes
    f = randman_manifold(3, 1, alpha=2.0, seed=0)
    g = torch.Generator().manual_seed(0)
    theta = torch.rand(3, 1, 3, 32, generator=g, dtype=torch.float64)
    theta[:, :, 0, 0] = 0
    i = torch.arange(32, dtype=torch.float64)
    s = 1.0 / ((i + 1) ** 2 + 1)
    x = torch.tensor([[0.3]], dtype=torch.float64)
    expect = (theta[:, 0, 0] * s * torch.sin(2 * np.pi * (i * 0.3 * theta[:, 0, 1] + theta[:, 0, 2]))).sum(-1)
    assert torch.allclose(f(x)[0], expect)
    with pytest.raises(ValueError, match="manifold_dim"):
        randman_manifold(3, 0)


def test_events_to_rasters_floor_and_clip():
    ev = np.array([[[0.2, 0], [4.99, 1], [5.0, 1]]], dtype=np.float32)
    r = events_to_rasters(ev, 5, 2)
    assert r[0, 0, 0] == 1 and r[0, 4, 1] == 2  # 4.99 -> bin 4; 5.0 clips to the last bin


def test_yin_yang():
    x, y = yin_yang(600, seed=0)
    assert x.shape == (600, 4) and x.min() >= 0 and x.max() <= 1
    assert torch.allclose(x[:, 0] + x[:, 2], torch.ones(600)) and torch.allclose(x[:, 1] + x[:, 3], torch.ones(600))
    counts = torch.bincount(y, minlength=3)
    assert counts.min() > 150  # balanced in expectation
    # inside the dots (centres (0.25, 0.5) and (0.75, 0.5) in unit coordinates) is class 2
    d = torch.minimum(torch.hypot(x[:, 0] - 0.25, x[:, 1] - 0.5), torch.hypot(x[:, 0] - 0.75, x[:, 1] - 0.5))
    assert (y[d < 0.09] == 2).all() and (y[d > 0.11] != 2).all()
    assert torch.equal(yin_yang(50, seed=2)[0], yin_yang(50, seed=2)[0])
    s, ys = spiking_yin_yang(30, num_steps=10)
    assert s.shape == (30, 10, 4) and torch.equal(s.sum(1), torch.ones(30, 4))


def test_spiking_digits():
    x, y = spiking_digits(num_steps=12)
    assert x.shape == (1797, 12, 64) and y.shape == (1797,)
    assert x.sum(1).max() == 1  # latency: at most one spike per pixel
    xr, _ = spiking_digits(num_steps=12, encoding="rate", seed=1)
    assert torch.equal(xr, spiking_digits(num_steps=12, encoding="rate", seed=1)[0])
    with pytest.raises(ValueError, match="encoding"):
        spiking_digits(encoding="phase")


def test_shd_loader(tmp_path):
    h5py = pytest.importorskip("h5py")
    path = tmp_path / "shd_tiny.h5"
    with h5py.File(path, "w") as f:
        vf, vi = h5py.vlen_dtype(np.float32), h5py.vlen_dtype(np.uint16)
        t = f.create_dataset("spikes/times", (2,), dtype=vf)
        u = f.create_dataset("spikes/units", (2,), dtype=vi)
        t[0], u[0] = np.array([0.0, 0.015, 0.5, 1.2], np.float32), np.array([3, 3, 699, 1], np.uint16)
        t[1], u[1] = np.array([0.999], np.float32), np.array([0], np.uint16)
        f.create_dataset("labels", data=np.array([7, 19], np.uint8))
    x, y = load_shd(path, num_steps=100, max_time=1.0)
    assert x.shape == (2, 100, 700) and y.tolist() == [7, 19]
    assert x[0, 0, 3] == 1 and x[0, 1, 3] == 1 and x[0, 50, 699] == 1 and x[0].sum() == 3  # 1.2 s is dropped
    assert x[1, 99, 0] == 1
    with pytest.raises(FileNotFoundError, match="SHD file not found"):
        load_shd(tmp_path / "shd_train.h5")


def test_split():
    x, y = torch.arange(10.0).reshape(10, 1, 1), torch.arange(10)
    a = split(x, y, 0.3, seed=0)
    assert len(a[1]) == 7 and len(a[3]) == 3 and sorted(torch.cat([a[1], a[3]]).tolist()) == list(range(10))
    with pytest.raises(ValueError, match="test_frac"):
        split(x, y, 1.5)


def test_data_is_a_leaf_and_encoders_keep_their_snn_names():
    import subprocess
    import sys

    import lowbit.data.encoders as de
    import lowbit.snn as snn
    import lowbit.snn.encoders as se

    # one set of functions under both names
    assert se.latency_encode is de.latency_encode and snn.rate_encode is de.rate_encode
    assert se.events_to_raster is de.events_to_raster
    # importing the spiking data sets no longer imports the spiking-network package (no folder cycle)
    code = "import sys, lowbit.data.spiking; print(sorted(m for m in sys.modules if m.startswith('lowbit.snn')))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert out == "[]"
