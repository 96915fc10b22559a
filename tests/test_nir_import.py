"""NIR import: a graph written by snnTorch 1.0 (``export_to_nir``) reads into a lowbit SNN with the same spikes.

snnTorch 1.0's exporter with nir 1.0.8 needs per-neuron ``beta`` / ``threshold`` tensors and an
unbatched sample (a scalar ``beta`` gives a 0-d ``tau`` that NIR's type check refuses). Its graph
does not record the reset mechanism: ``from_nir(reset=...)`` says it (NIR's own is reset to zero).
"""
import copy

import numpy as np
import pytest
import torch

nir = pytest.importorskip("nir")

from lowbit.snn import SNN, train  # noqa: E402
from lowbit.targets.nir import from_nir, to_nir  # noqa: E402

from test_nir_clients import _need  # noqa: E402

DT_LOWBIT = 1e-3


def _snntorch_net(kind: str, reset: str, seed: int = 0):  # type: ignore[no-untyped-def]
    snn = _need("snntorch")
    torch.manual_seed(seed)
    f = lambda n, v: torch.full((n,), v)  # noqa: E731

    def layer(n: int):  # type: ignore[no-untyped-def]
        if kind == "leaky":
            return snn.Leaky(beta=f(n, 0.85), threshold=f(n, 0.8), reset_mechanism=reset, init_hidden=True)
        return snn.Synaptic(alpha=f(n, 0.6), beta=f(n, 0.85), threshold=f(n, 0.8), reset_mechanism=reset, init_hidden=True)

    net = torch.nn.Sequential(torch.nn.Linear(20, 32, bias=False), layer(32), torch.nn.Linear(32, 5, bias=False), layer(5))
    with torch.no_grad():
        net[0].weight.mul_(3.0)
        net[2].weight.mul_(2.0)
    return net


def _snntorch_spikes(net, x):  # type: ignore[no-untyped-def]
    for mod in net:
        if hasattr(mod, "reset_hidden"):
            mod.reset_hidden()
    hidden, out = [], []
    h = net[1].register_forward_hook(lambda mod, i, o: hidden.append(o.clone()))
    with torch.no_grad():
        for xt in x.unbind(1):
            out.append(net(xt).clone())
    h.remove()
    return torch.stack(hidden, 1), torch.stack(out, 1)


def _graph(net):  # type: ignore[no-untyped-def]
    from snntorch.export_nir import export_to_nir

    return export_to_nir(net, torch.zeros(20))


def _x(seed: int = 1, batch: int = 8, steps: int = 50) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return (torch.rand(batch, steps, 20, generator=g) < 0.3).float()


@pytest.mark.parametrize("kind,reset", [("leaky", "zero"), ("leaky", "subtract"), ("synaptic", "subtract")])
def test_snntorch_graph_gives_the_same_spikes(kind, reset):
    net = _snntorch_net(kind, reset)
    m = from_nir(_graph(net), reset=reset)
    assert isinstance(m, SNN) and m.sizes == [20, 32, 5, 5]
    assert m.hidden[0].beta == pytest.approx(0.85, abs=1e-6) and m.hidden[0].threshold == pytest.approx(0.8)
    assert (m.hidden[0].alpha is None) == (kind == "leaky")
    x = _x()
    s1, s2 = _snntorch_spikes(net, x)
    assert 0.05 < s1.mean() < 0.9 and s2.mean() > 0.05  # the comparison means something only if neurons fire
    r = m.run(x, record=True)
    for ours, theirs in ((r["spikes"][0], s1), (r["spikes"][1], s2)):
        assert (ours == theirs).float().mean() >= 0.99
    # the readout of a spiking output layer: its spike counts, as snnTorch classifies
    assert torch.equal(m(x), s2.sum(1))


def test_imported_snn_quantizes_and_trains(tmp_path):
    net = _snntorch_net("leaky", "subtract")
    path = tmp_path / "snntorch.nir"
    nir.write(str(path), _graph(net))
    m = from_nir(path, reset="subtract")  # from a file, too
    x = _x(seed=2, batch=64, steps=30)
    y = torch.arange(64) % 5
    q = copy.deepcopy(m).quantize_weights("fxp4:p99")
    for name, w in q.effective_weights().items():
        assert w.unique().numel() <= 16, name  # on a 4-bit grid
    loss = torch.nn.functional.cross_entropy
    with torch.no_grad():
        before = loss(q(x), y).item()
    train(q, x, y, epochs=1, batch_size=16, lr=5e-3, seed=0)
    with torch.no_grad():
        after = loss(q(x), y).item()
    assert after < before
    # the fixed identity into the spike-count readout does not move
    assert torch.equal(q.w_out, torch.eye(5))


def test_lowbit_graph_round_trips():
    # lowbit's own (non-portable) graph: LIF layers and an LI readout, dt and reset from its metadata
    m = SNN(20, [24, 16], 5, recurrent=False, beta=0.9, reset="subtract", readout="max", init_scale=1.5, seed=3)
    back = from_nir(to_nir(m, dt=1e-3))
    x = _x(steps=40)
    a, b = m.run(x, record=True), back.run(x, record=True)
    for s, t in zip(a["spikes"], b["spikes"]):
        assert (s == t).float().mean() >= 0.99
    assert back.readout.readout == "max" and back.hidden[0].reset == "subtract"
    torch.testing.assert_close(back(x), m(x), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("portable", [False, True])
def test_lowbit_graph_round_trips_with_its_readout(portable):
    # portable: CubaLIF layers whose synapse forgets at once and a never-firing CubaLIF readout, read back as LIF and LI
    m = SNN(20, 16, 5, recurrent=False, beta=0.8, reset="zero", readout="mean", init_scale=1.5, seed=4)
    m.quantize_weights("fxp4:p99")
    back = from_nir(to_nir(m, dt=DT_LOWBIT, portable=portable))
    assert back.sizes == m.sizes and back.readout.readout == "mean"
    assert back.readout.beta == pytest.approx(0.8, abs=1e-6) and back.hidden[0].alpha is None
    x = _x(steps=40)
    a, b = m.run(x, record=True), back.run(x, record=True)
    assert (a["spikes"][0] == b["spikes"][0]).float().mean() >= 0.99
    torch.testing.assert_close(back(x), m(x), rtol=1e-4, atol=1e-4)


def test_unknown_nodes_and_bad_graphs_are_named():
    m = SNN(20, 8, 5, recurrent=True, seed=0)
    with pytest.raises(ValueError, match="cycle|feeds"):
        from_nir(to_nir(m))
    g = nir.NIRGraph(nodes={"input": nir.Input(input_type={"input": np.array([4])}),
                            "fc": nir.Linear(weight=np.ones((3, 4), np.float32)),
                            "th": nir.Threshold(threshold=np.ones(3, np.float32)),
                            "output": nir.Output(output_type={"output": np.array([3])})},
                     edges=[("input", "fc"), ("fc", "th"), ("th", "output")])
    with pytest.raises(ValueError, match="'th' has NIR type Threshold"):
        from_nir(g)
    g = nir.NIRGraph(nodes={"input": nir.Input(input_type={"input": np.array([4])}),
                            "fc": nir.Affine(weight=np.ones((3, 4), np.float32), bias=np.ones(3, np.float32)),
                            "lif": nir.LIF(tau=np.full(3, 1e-3), r=np.full(3, 10.0), v_leak=np.zeros(3),
                                           v_threshold=np.ones(3), v_reset=np.zeros(3)),
                            "output": nir.Output(output_type={"output": np.array([3])})},
                     edges=[("input", "fc"), ("fc", "lif"), ("lif", "output")])
    with pytest.raises(ValueError, match="'fc' \\(Affine\\) has a non-zero bias"):
        from_nir(g)
    with pytest.raises(TypeError, match="graph_or_path"):
        from_nir(42)
    with pytest.raises(ValueError, match="reset"):
        from_nir(to_nir(SNN(4, 3, 2, recurrent=False)), reset="none")
