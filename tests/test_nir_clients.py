"""lowbit's NIR graphs read by real simulators (snnTorch 1.0, Norse 1.1): same spikes and readout on the same inputs.

Both readers need ``to_nir(..., portable=True)`` (neither maps NIR's ``LI`` readout) and a ``dt`` in
NIR's time unit (snnTorch's importer assumes 1e-4). NIR's LIF resets to ``v_reset``; lowbit's
default reset by subtraction is set on the reader from the graph's ``reset`` metadata (see the
conventions in :mod:`lowbit.targets.nir`). A reader that is not installed skips its tests, except
under ``CI=true``, where it fails.
"""
import importlib
import os

import numpy as np
import pytest
import torch

nir = pytest.importorskip("nir")

from lowbit.snn import SNN, EventPropSNN  # noqa: E402
from lowbit.targets.nir import NEVER, export_nir, to_nir  # noqa: E402

DT = 1e-4  # snnTorch 1.0's importer fixes dt = 1e-4 s; Norse takes it as an argument


def _need(name: str):  # type: ignore[no-untyped-def]
    try:
        return importlib.import_module(name)
    except ImportError as e:
        msg = f"{name} is not installed (pip install torch==2.13.0 {name}): {e}"
        if os.environ.get("CI") == "true":
            pytest.fail(msg)
        pytest.skip(msg)


def _inputs(n_in: int, steps: int = 60, batch: int = 8, p: float = 0.25, seed: int = 1) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return (torch.rand(batch, steps, n_in, generator=g) < p).float()


def _lowbit(m, x):  # type: ignore[no-untyped-def]
    """lowbit's hidden spikes [batch, time, n] and readout potential [batch, time, n_out]."""
    with torch.no_grad():
        if isinstance(m, EventPropSNN):
            spk = m.record_spikes(x)[0].float()
            # NIR carries no sub-step spike timing: the readers' readout integrates whole spikes,
            # so the reference is lowbit's readout equations driven by the same binary spikes
            w_out = m.effective_weights()["out"]
            v, vs = torch.zeros(x.shape[0], w_out.shape[0]), []
            for st in spk.unbind(1):
                v = m.cfg.out_beta * v + st @ w_out.t()
                vs.append(v)
            return spk, torch.stack(vs, 1)
        r = m.run(x, record=True)
        return r["spikes"][0], r["out"]


def _delayed(m) -> bool:  # type: ignore[no-untyped-def]
    """True when the reset of a spike at step t acts at step t+1 (lowbit's SNN), False when at once (EventProp)."""
    return not isinstance(m, EventPropSNN)


def _run_snntorch(m, graph, x):  # type: ignore[no-untyped-def]
    snn = _need("snntorch")
    from snntorch.import_nir import import_from_nir

    net = import_from_nir(graph)
    parent = net.lif0 if m.recurrent else net
    name = "lif" if m.recurrent else "lif0"
    old = getattr(parent, name)
    assert isinstance(old, snn.Synaptic) and isinstance(net.readout, snn.Synaptic)
    assert float(net.readout.threshold) == pytest.approx(NEVER, rel=1e-6)
    if graph.metadata["reset"] == "subtract":
        # the importer always builds reset-to-zero (NIR's v_reset); the graph's metadata says subtract
        setattr(parent, name, snn.Synaptic(alpha=old.alpha, beta=old.beta, threshold=float(old.threshold),
                                           reset_mechanism="subtract", reset_delay=_delayed(m), init_hidden=True))
    spikes, mems = [], []
    getattr(parent, name).register_forward_hook(lambda mod, i, o: spikes.append(o.clone()))
    with torch.no_grad():
        state = None
        for xt in x.unbind(1):
            _, state = net(xt, state)
            mems.append(net.readout.mem.clone())
    return torch.stack(spikes, 1), torch.stack(mems, 1)


def _run_norse(m, graph, x):  # type: ignore[no-untyped-def]
    _need("norse")
    from norse.torch import from_nir
    from norse.torch.functional import reset

    method = reset.reset_value
    if graph.metadata["reset"] == "subtract":
        if _delayed(m):
            # Norse subtracts before the next step's decay; lowbit after it: subtract thr / beta
            beta = m.hidden[0].beta
            method = lambda z, v, v_reset, th: v - z * th / beta  # noqa: E731
        else:
            method = reset.reset_subtract
    net = from_nir(graph, dt=DT, reset_method=method)
    spikes, mems = [], []
    with torch.no_grad():
        state = None
        for xt in x.unbind(1):
            _, state = net(xt, state)
            spikes.append(state.cache["lif0"].clone())
            mems.append(state.state["readout"][0][1].v.clone())
    return torch.stack(spikes, 1), torch.stack(mems, 1)


def _check(m, run, x, min_agree: float = 0.99) -> float:  # type: ignore[no-untyped-def]
    spk, out = _lowbit(m, x)
    assert spk.sum() > 0.03 * spk.numel()  # the comparison means something only if neurons fire
    c_spk, c_out = run(m, to_nir(m, dt=DT, portable=True), x)
    agree = (c_spk == spk).float().mean().item()
    assert agree >= min_agree, f"spike trains agree on {agree:.4f} of neurons x steps"
    # the readout is comparable only where the spikes that drive it are the same: every sample whose
    # spikes all agree (a float-rounding flip of one spike on another CPU spoils one sample, not the test)
    same = (c_spk == spk).flatten(1).all(1)
    assert same.float().mean() >= 0.75, f"only {int(same.sum())} of {len(same)} samples spike identically"
    torch.testing.assert_close(c_out[same], out[same], rtol=1e-4, atol=1e-4)
    if not isinstance(m, EventPropSNN):
        torch.testing.assert_close(m.readout.reduce(c_out)[same], m(x)[same], rtol=1e-4, atol=1e-4)
    return agree


def _default_snn(quantized: bool, reset: str = "subtract") -> SNN:
    # `lowbit snn`'s network (recurrent LIF, beta 0.9, subtract reset, max readout), smaller
    m = SNN(20, 32, 5, recurrent=True, beta=0.9, reset=reset, readout="max", init_scale=1.5, seed=3)
    return m.quantize_weights("fxp4:p99") if quantized else m


@pytest.mark.parametrize("client", ["snntorch", "norse"])
@pytest.mark.parametrize("quantized", [False, True])
def test_default_snn_same_spikes_and_readout(client, quantized):
    m = _default_snn(quantized)
    assert _check(m, _run_snntorch if client == "snntorch" else _run_norse, _inputs(20)) >= 0.99


@pytest.mark.parametrize("client", ["snntorch", "norse"])
def test_zero_reset_needs_no_reader_settings(client):
    # reset to zero is NIR's own LIF: the graph is read as written, no reader configuration
    m = _default_snn(True, reset="zero")
    assert _check(m, _run_snntorch if client == "snntorch" else _run_norse, _inputs(20)) >= 0.99


@pytest.mark.parametrize("client", ["snntorch", "norse"])
def test_eventprop_hidden_spikes_and_readout(client):
    # feed-forward: a recurrent EventProp layer feeds back sub-step (graded) spikes, which NIR cannot carry.
    # Weights small enough that a membrane rarely reaches twice the threshold in one step, where
    # EventProp caps the residue (one spike per step) and the readers do not (see targets/nir.py)
    m = EventPropSNN(20, 32, 5, recurrent=False, tau_mem=20.0, tau_syn=5.0, init_scale=0.2, readout="mean", seed=2)
    m.quantize_weights("fxp8:p99")
    assert _check(m, _run_snntorch if client == "snntorch" else _run_norse, _inputs(20)) >= 0.99


def test_portable_graph_nodes(tmp_path):
    m = _default_snn(True)
    g = nir.read(export_nir(m, tmp_path / "p.nir", dt=DT, portable=True))
    sub = g.nodes["lif0"]
    assert isinstance(sub, nir.NIRGraph) and set(sub.edges) >= {("input", "lif"), ("lif", "rec"), ("rec", "lif")}
    lif = sub.nodes["lif"]
    assert isinstance(lif, nir.CubaLIF)
    # a CubaLIF whose synapse forgets at once: tau_syn = dt, w_in = 1; tau_mem = dt / (1 - beta), r = tau_mem / dt
    assert np.allclose(lif.tau_syn, DT) and np.allclose(lif.w_in, 1.0)
    assert np.allclose(lif.tau_mem, DT / 0.1) and np.allclose(lif.r, 10.0)
    ro = g.nodes["readout"]
    assert isinstance(ro, nir.CubaLIF) and np.all(ro.v_threshold == np.float32(NEVER))
    assert np.array_equal(sub.nodes["rec"].weight, m.effective_weights()["rec0"].detach().numpy())
    assert int(g.metadata["portable"]) == 1 and float(g.metadata["dt"]) == DT


def test_export_options_are_checked():
    m = _default_snn(False)
    with pytest.raises(ValueError, match="dt"):
        to_nir(m, dt=0.0)
    with pytest.raises(TypeError, match="portable"):
        to_nir(m, portable="yes")
