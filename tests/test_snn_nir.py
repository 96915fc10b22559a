"""NIR export of a trained quantized SNN, read back with nir and checked parameter by parameter."""
import math

import numpy as np
import pytest
import torch

nir = pytest.importorskip("nir")

from lowbit.snn import SNN, state_quantizer  # noqa: E402
from lowbit.targets.nir import export_nir  # noqa: E402


def test_nir_round_trip_quantized(tmp_path):
    torch.manual_seed(0)
    m = SNN(6, 5, 3, recurrent=True, beta=0.8, threshold=1.5, readout="mean").quantize_weights("fxp4:p99")
    m.set_state_quant(state_quantizer("thr", 4, threshold=1.5))
    path = export_nir(m, tmp_path / "snn.nir")
    g = nir.read(path)
    assert {"input", "fc0", "lif0", "rec0", "out", "readout", "output"} <= set(g.nodes)
    assert set(map(tuple, g.edges)) == {("input", "fc0"), ("fc0", "lif0"), ("lif0", "rec0"), ("rec0", "lif0"),
                                        ("lif0", "out"), ("out", "readout"), ("readout", "output")}
    eff = {k: v.detach().numpy() for k, v in m.effective_weights().items()}
    for name in ("fc0", "rec0", "out"):
        w = g.nodes[name].weight
        assert np.array_equal(w, eff[name])  # the quantized values, exactly
        scale = float(g.nodes[name].metadata["scale"])
        assert math.log2(scale) == int(math.log2(scale))  # a power of two: fixed point
        codes = w / scale
        assert np.array_equal(codes, np.round(codes)) and codes.min() >= -8 and codes.max() <= 7  # 4-bit integers
    lif = g.nodes["lif0"]
    assert isinstance(lif, nir.LIF)
    tau = 1.0 / (1.0 - 0.8)
    assert np.allclose(lif.tau, tau) and np.allclose(lif.r, tau) and np.allclose(lif.v_leak, 0)
    assert np.allclose(lif.v_threshold, 1.5) and np.allclose(lif.v_reset, 0) and lif.tau.shape == (5,)
    ro = g.nodes["readout"]
    assert isinstance(ro, nir.LI) and np.allclose(ro.tau, tau) and ro.tau.shape == (3,)
    assert g.metadata["readout"] == "mean" and g.metadata["reset"] == "subtract"
    assert g.metadata["weight_spec"] == "fxp4:p99"
    assert np.array_equal(g.metadata["state_levels0"], m.hidden[0].state_quant.levels.numpy())


def test_nir_cuba_and_float(tmp_path):
    m = SNN(4, 3, 2, recurrent=False, beta=0.9, alpha=0.5)
    g = nir.read(export_nir(m, tmp_path / "f.nir"))
    c = g.nodes["lif0"]
    assert isinstance(c, nir.CubaLIF)
    assert np.allclose(c.tau_syn, 2.0) and np.allclose(c.w_in, 2.0) and np.allclose(c.tau_mem, 10.0)
    assert np.array_equal(g.nodes["fc0"].weight, m.fc[0].detach().numpy())
    assert "rec0" not in g.nodes and g.metadata["weight_spec"] == "float32"
    with pytest.raises(TypeError, match="SNN"):
        export_nir(torch.nn.Linear(2, 2), tmp_path / "x.nir")
