"""A convolutional SNN's NIR graph read by snnTorch 1.0 and Norse 1.1: same spikes in every layer, same readout.

What each reader maps (their importers in site-packages): snnTorch 1.0 -- Conv2d, AvgPool2d,
Flatten, Linear/Affine, LIF, CubaLIF, IF, and SumPool2d through nirtorch's default map; Norse 1.1 --
Conv2d, SumPool2d, Flatten, Linear/Affine, LIF, CubaLIF, IF. Neither maps Conv1d, LI or CubaLI;
Norse has no AvgPool2d. So the tests export ``portable=True`` (readout as a never-firing CubaLIF,
Conv1d as Conv2d over frames of height 1); snnTorch reads both pooling nodes (``pool="avg"`` moves
the window size into the next weights), Norse the ``"sum"`` one. Both readers apply NIR's ``Flatten`` with
the batch axis counted (``torch.nn.Flatten(start_dim, end_dim)``), so the portable graph writes
``start_dim=1`` and is built without NIR's type check, which counts no batch axis.
"""
import numpy as np
import pytest
import torch

nir = pytest.importorskip("nir")

from lowbit.snn.conv import ConvSNN  # noqa: E402
from lowbit.targets.nir import NEVER, to_nir  # noqa: E402

from test_nir_clients import DT, _need  # noqa: E402

CLIENT_POOL = {"snntorch": "avg", "norse": "sum"}


def _model(dims: int, quantized: bool, reset: str = "subtract", pool_kind: str = "sum") -> ConvSNN:
    shape = (1, 8, 8) if dims == 2 else (2, 16)
    m = ConvSNN(shape, channels=(4, 8), kernel=3, pool=2, n_out=5, pool_kind=pool_kind, reset=reset,
                init_scale=3.0, seed=0)
    return m.quantize_weights("fxp4:p99") if quantized else m


def _inputs(m: ConvSNN, steps: int = 30, batch: int = 6, seed: int = 1) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return (torch.rand(batch, steps, m.sizes[0], generator=g) < 0.3).float()


def _frames(m: ConvSNN, x: torch.Tensor) -> torch.Tensor:
    """The readers' input per step: [batch, time, C, H, W] (a Conv1d network's frames have height 1)."""
    shape = m.in_shape if m.dims == 2 else (m.in_shape[0], 1, m.in_shape[1])
    return x.reshape(*x.shape[:2], *shape)


def _run_snntorch(m, graph, x):  # type: ignore[no-untyped-def]
    snn = _need("snntorch")
    from snntorch.import_nir import import_from_nir

    net = import_from_nir(graph)
    n = len(m.hidden)
    if graph.metadata["reset"] == "subtract":
        for k in range(n):  # the importer builds NIR's reset to zero; the metadata says subtract
            old = getattr(net, f"lif{k}")
            setattr(net, f"lif{k}", snn.Synaptic(alpha=old.alpha, beta=old.beta, threshold=float(old.threshold),
                                                 reset_mechanism="subtract", reset_delay=True, init_hidden=True))
    spikes: list[list[torch.Tensor]] = [[] for _ in range(n)]
    for k in range(n):
        getattr(net, f"lif{k}").register_forward_hook(lambda mod, i, o, k=k: spikes[k].append(o.clone()))
    mems = []
    with torch.no_grad():
        state = None
        for xt in _frames(m, x).unbind(1):
            _, state = net(xt, state)
            mems.append(net.readout.mem.clone())
    return [torch.stack(s, 1).flatten(2) for s in spikes], torch.stack(mems, 1)


def _run_norse(m, graph, x):  # type: ignore[no-untyped-def]
    _need("norse")
    from norse.torch import from_nir
    from norse.torch.functional import reset

    method = reset.reset_value
    if graph.metadata["reset"] == "subtract":
        beta = m.hidden[0].beta  # Norse subtracts before the next step's decay, lowbit after it
        method = lambda z, v, v_reset, th: v - z * th / beta  # noqa: E731
    net = from_nir(graph, dt=DT, reset_method=method)
    n = len(m.hidden)
    spikes: list[list[torch.Tensor]] = [[] for _ in range(n)]
    mems = []
    with torch.no_grad():
        state = None
        for xt in _frames(m, x).unbind(1):
            _, state = net(xt, state)
            for k in range(n):
                spikes[k].append(state.cache[f"lif{k}"].clone())
            mems.append(state.state["readout"][0][1].v.clone())
    return [torch.stack(s, 1).flatten(2) for s in spikes], torch.stack(mems, 1)


def _check(m: ConvSNN, client: str) -> list[float]:
    x = _inputs(m)
    r = m.run(x, record=True)
    graph = to_nir(m, dt=DT, portable=True, pool=CLIENT_POOL[client])
    c_spk, c_out = (_run_snntorch if client == "snntorch" else _run_norse)(m, graph, x)
    agree = []
    same = torch.ones(x.shape[0], dtype=torch.bool)
    for ours, theirs in zip(r["spikes"], c_spk):
        assert ours.mean() > 0.03  # the comparison means something only if neurons fire
        agree.append((ours == theirs).float().mean().item())
        same &= (ours == theirs).flatten(1).all(1)
    assert min(agree) >= 0.99, f"spike trains agree on {agree} of neurons x steps"
    # the readout is comparable where every spike that drives it is the same (a float-rounding flip on
    # another CPU spoils one sample, not the test)
    assert same.float().mean() >= 0.75
    torch.testing.assert_close(c_out[same], r["out"][same], rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(m.readout.reduce(c_out)[same], m(x)[same], rtol=1e-4, atol=1e-4)
    return agree


@pytest.mark.parametrize("client", ["snntorch", "norse"])
@pytest.mark.parametrize("quantized", [False, True])
def test_conv2d_snn_same_spikes_and_readout(client, quantized):
    assert min(_check(_model(2, quantized), client)) >= 0.99


@pytest.mark.parametrize("client", ["snntorch", "norse"])
def test_conv2d_zero_reset_and_avg_pooling(client):
    # NIR's own reset (no reader settings) and a model that pools by averaging
    assert min(_check(_model(2, True, reset="zero", pool_kind="avg"), client)) >= 0.99


@pytest.mark.parametrize("client", ["snntorch", "norse"])
def test_conv1d_snn_read_as_conv2d_of_height_one(client):
    assert min(_check(_model(1, True), client)) >= 0.99


def test_graph_nodes_and_pool_rewrite():
    m = _model(2, True)
    g = to_nir(m, dt=DT)  # NIR's own nodes, type-checked
    assert isinstance(g.nodes["conv0"], nir.Conv2d) and tuple(g.nodes["conv0"].input_shape) == (8, 8)
    assert isinstance(g.nodes["conv1"], nir.Conv2d) and tuple(g.nodes["conv1"].input_shape) == (4, 4)
    assert isinstance(g.nodes["pool0"], nir.SumPool2d) and list(g.nodes["pool0"].kernel_size) == [2, 2]
    assert isinstance(g.nodes["lif0"], nir.LIF) and g.nodes["lif0"].tau.shape == (4, 8, 8)
    assert g.nodes["flatten"].start_dim == 0 and list(g.nodes["flatten"].output_type["output"]) == [32]
    assert isinstance(g.nodes["readout"], nir.LI)
    w = m.effective_weights()
    assert np.array_equal(g.nodes["conv1"].weight, w["fc1"].detach().numpy())
    assert g.nodes["conv0"].metadata["bits"] == 4
    # avg pooling in the graph: the 2 x 2 window's 4 moves into the next weights (exact: a power of two)
    a = to_nir(m, dt=DT, pool="avg")
    assert isinstance(a.nodes["pool0"], nir.AvgPool2d)
    assert np.array_equal(a.nodes["conv1"].weight, 4 * w["fc1"].detach().numpy())
    assert np.array_equal(a.nodes["out"].weight, 4 * w["out"].detach().numpy())
    assert np.array_equal(a.nodes["conv0"].weight, w["fc0"].detach().numpy())
    p = to_nir(m, dt=DT, portable=True, pool="avg")
    assert p.nodes["flatten"].start_dim == 1 and isinstance(p.nodes["readout"], nir.CubaLIF)
    assert float(p.nodes["readout"].v_threshold.flat[0]) == np.float32(NEVER)


def test_conv1d_graph_and_export_errors():
    m = ConvSNN((2, 16), channels=4, kernel=3, pool=1, n_out=3)
    g = to_nir(m)
    assert isinstance(g.nodes["conv0"], nir.Conv1d) and g.nodes["conv0"].input_shape == 16
    with pytest.raises(ValueError, match="no 1-d pooling"):
        to_nir(_model(1, False))
    with pytest.raises(ValueError, match="pool"):
        to_nir(_model(2, False), pool="max")


def test_snntorch_reads_sum_pooling_too(monkeypatch):
    # snnTorch's own map has no SumPool2d, but nirtorch's default map (LPPool2d, p = 1) fills in
    monkeypatch.setitem(CLIENT_POOL, "snntorch", "sum")
    assert min(_check(_model(2, True), "snntorch")) >= 0.99


def test_norse_lacks_avg_pooling():
    # Norse 1.1 maps no AvgPool2d: it fails on that graph rather than computing something else
    _need("norse")
    from norse.torch import from_nir

    m = _model(2, False)
    graph = to_nir(m, dt=DT, portable=True, pool="avg")
    with pytest.raises(KeyError, match="pool0"):  # the unmapped node's name
        net = from_nir(graph, dt=DT)
        net(_frames(m, _inputs(m))[:, 0])


def test_portable_conv_file_reads_unchecked(tmp_path):
    # NIR's type check refuses the readers' Flatten(start_dim=1); the file says so and reads unchecked
    from lowbit.targets.nir import export_nir

    m = _model(2, True)
    path = export_nir(m, tmp_path / "conv.nir", dt=DT, portable=True)
    with pytest.raises(ValueError, match="flatten"):
        nir.read(str(path))
    graph = nir.read(str(path), type_check=False)
    assert "type_check=False" in str(graph.metadata["type_check"])
    x = _inputs(m)
    spikes, _ = _run_norse(m, graph, x)
    r = m.run(x, record=True)
    assert all((a == b).float().mean() >= 0.99 for a, b in zip(r["spikes"], spikes))
