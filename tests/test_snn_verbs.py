"""Spiking networks through lowbit's verbs: quantize / prepare_qat / convert / save / load, scopes, one file format."""
import warnings

import numpy as np
import pytest
import torch

import lowbit
from lowbit.model_handlers import model_handler_for, register_model_handler
from lowbit.qtensor import QTensor, load_qtensors
from lowbit.quantizer import quantizer
from lowbit.snn import SNN, EventPropSNN, load_checkpoint, save_checkpoint, state_quantizer
from lowbit.snn.verbs import SpikingVerbs


def _x(n_in=6, b=5, t=30, seed=0):
    g = torch.Generator().manual_seed(seed)
    return (torch.rand(b, t, n_in, generator=g) < 0.3).float()


def _snn():
    return SNN(6, [8, 5], 3, recurrent=True, beta=0.85, alpha=0.6, init_scale=1.5, seed=1)


def _same_run(a, b, x):
    ra, rb = a.run(x, record=True), b.run(x, record=True)
    assert torch.equal(ra["logits"], rb["logits"]) and torch.equal(ra["out"], rb["out"])  # readout trace too
    for sa, sb, ma, mb in zip(ra["spikes"], rb["spikes"], ra["mem"], rb["mem"]):
        assert torch.equal(sa, sb) and torch.equal(ma, mb)
    assert sum(float(s.detach().sum()) for s in ra["spikes"]) > 0  # spikes happen: the comparison has something to compare


def test_quantize_shares_one_scale_per_population():
    m = _snn()
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # used to return the model unchanged with two warnings
        q = lowbit.quantize(m, "fxp4:p99")
    assert m.weight_quant is None and q is not m  # a copy, as for every verb
    assert q.lowbit_info.stage == "ptq" and set(q.lowbit_info.layers) == {"hidden0", "hidden1", "out"}
    assert q.weight_quant.groups == {"hidden0": ["fc0", "rec0"], "hidden1": ["fc1", "rec1"], "out": ["out"]}
    codes = q.weight_quant.encode(q.connections())
    w = q.connections()
    for pop, conns in q.populations().items():
        ref = quantizer("fxp4:p99").fit([w[c].detach() for c in conns])  # one scale fitted to all of them
        for c in conns:  # every connection into the population has that scale
            assert torch.equal(codes[c].scale, ref.scale), (pop, c)
            assert torch.equal(q.effective_weights()[c], ref(w[c].detach()))
    assert not torch.equal(codes["fc0"].scale, codes["fc1"].scale) or not torch.equal(codes["fc0"].scale, codes["out"].scale)
    for c, qt in codes.items():
        assert len(torch.unique(qt.dequantize())) <= 16  # 4-bit codes


def test_scope_connection_and_patterns():
    m = _snn()
    with torch.no_grad():
        m.fc[0].mul_(0.1)  # small feed-forward weights beside larger recurrent ones
    pop = lowbit.quantize(m, "fxp4:p99").weight_quant.encode(m.connections())
    assert torch.equal(pop["fc0"].scale, pop["rec0"].scale)
    q = lowbit.quantize(m, "fxp4:p99, scope=connection")
    assert q.weight_quant.groups == {c: [c] for c in ("fc0", "rec0", "fc1", "rec1", "out")}
    codes = q.weight_quant.encode(q.connections())
    for c, w in q.connections().items():
        assert torch.equal(codes[c].scale, quantizer("fxp4:p99").fit(w.detach()).scale)
    assert codes["fc0"].scale < pop["fc0"].scale  # on its own the small connection gets a finer grid
    # last matching rule wins; none keeps a population float
    q2 = lowbit.quantize(m, "*=fxp4:p99, out=fxp8:p99, hidden1=none")
    assert q2.weight_quant.specs == {"hidden0": "fxp4:p99", "out": "fxp8:p99"}
    assert torch.equal(q2.effective_weights()["fc1"], m.fc[1])
    assert lowbit.quantize(m, "w4").weight_quant.spec == "int4:channel:mse"
    with pytest.raises(ValueError, match="fc0.*scope=connection"):
        lowbit.quantize(m, "fc0=fxp4:p99")
    with pytest.raises(ValueError, match="matches no population.*hidden0, hidden1, out"):
        lowbit.quantize(m, "hiden0=fxp4:p99")
    with pytest.raises(ValueError, match="activation"):
        lowbit.quantize(m, "w4,a8")
    with pytest.raises(ValueError, match="lsq"):
        lowbit.prepare_qat(m, "w4:lsq")
    with pytest.raises(ValueError, match="scope must be one of population, connection"):
        lowbit.quantize(m, "w4, scope=layer")
    with pytest.raises(ValueError, match="already quantized"):
        lowbit.quantize(lowbit.quantize(m, "w4"), "w4")
    with pytest.warns(UserWarning, match="no connection"):
        assert lowbit.quantize(m, "*=none").weight_quant is None


def test_ptq_save_load_is_bit_exact_with_state_quantizers(tmp_path):
    m = _snn()
    q = lowbit.quantize(m, "fxp4:p99").set_state_quant([state_quantizer("thr", 4), state_quantizer("uniform", 3)])
    lowbit.save(q, tmp_path / "q.lowbit")
    r = lowbit.load(tmp_path / "q.lowbit", model=m)
    assert r.lowbit_info.stage == "ptq" and not r.training
    assert r.weight_quant.groups == q.weight_quant.groups and r.weight_quant.spec == "fxp4:p99"
    for a, b in zip(q.hidden, r.hidden):
        assert torch.equal(a.state_quant.levels, b.state_quant.levels) and a.state_quant.kind == b.state_quant.kind
    for n, p in q.named_parameters():
        assert torch.equal(p, r.get_parameter(n))  # the float shadow weights, not their quantized values
    _same_run(q, r, _x())
    tensors = load_qtensors(tmp_path / "q.lowbit")
    assert isinstance(tensors["fc.0:q"], QTensor) and torch.equal(tensors["fc.0:q"].dequantize(), q.effective_weights()["fc0"])


def test_weights_quantized_outside_the_verbs_are_saved(tmp_path):
    m = _snn().quantize_weights("fxp4:p99", scope="connection")  # lowbit.save used to drop this
    lowbit.save(m, tmp_path / "m.lowbit")
    r = lowbit.load(tmp_path / "m.lowbit", model=_snn())
    assert r.weight_quant.groups == m.weight_quant.groups and r.lowbit_info.stage == "qat"
    _same_run(m, r, _x())


def test_convert_save_load_is_bit_exact_and_stores_integers(tmp_path):
    m = _snn()
    q = lowbit.quantize(m, "fxp4:p99")
    c = lowbit.convert(q)
    x = _x()
    _same_run(q, c, x)  # converting changes nothing the network computes
    assert c.lowbit_info.stage == "converted" and c.weight_quant.converted
    assert all(not p.requires_grad for p in c.connections().values())
    lowbit.save(c, tmp_path / "c.lowbit")
    tensors = load_qtensors(tmp_path / "c.lowbit")
    for conn, pname in c.connection_params().items():
        assert isinstance(tensors[pname], QTensor) and tensors[pname].bits == 4  # the integers, no float copy
        assert f"{pname}:q" not in tensors
    r = lowbit.load(tmp_path / "c.lowbit", model=m)
    assert r.lowbit_info.stage == "converted" and r.weight_quant.converted
    _same_run(c, r, x)
    for conn, qt in c.weight_quant.qweights.items():
        assert torch.equal(r.weight_quant.qweights[conn].codes(), qt.codes())
    with pytest.raises(ValueError, match="no quantized weights"):
        lowbit.convert(m)


def test_qat_trains_and_round_trips(tmp_path):
    m = _snn()
    q = lowbit.prepare_qat(m, "fxp4:p99")
    assert q.training and q.lowbit_info.stage == "qat"
    x, y = _x(), torch.tensor([0, 1, 2, 0, 1])
    opt = torch.optim.SGD(q.parameters(), lr=0.5)
    torch.nn.functional.cross_entropy(q(x), y).backward()
    opt.step()
    assert not torch.equal(q.fc[0], m.fc[0])  # the shadow weights moved
    lowbit.save(q, tmp_path / "qat.lowbit")
    r = lowbit.load(tmp_path / "qat.lowbit", model=m)
    assert r.training
    _same_run(q, r, x)


@pytest.mark.parametrize("recurrent,readout", [(True, "exp"), (False, "ttfs")])
def test_eventprop_save_load_is_bit_exact(tmp_path, recurrent, readout):
    m = EventPropSNN(6, [9, 7], 3, recurrent=recurrent, readout=readout, init_scale=2.0, init_mean=0.3, seed=2,
                     dtype=torch.float64)
    x = _x(t=40)
    q = lowbit.quantize(m, "fxp4:p99, scope=population")  # EventPropSNN's default is per connection (mlGeNN's)
    assert q.weight_quant.groups["hidden0"] == (["fc0", "rec0"] if recurrent else ["fc0"])
    lowbit.save(q, tmp_path / "q.lowbit")
    r = lowbit.load(tmp_path / "q.lowbit", model=m)
    assert torch.equal(q(x), r(x))
    spikes = q.record_spikes(x)
    assert all(torch.equal(a, b) for a, b in zip(spikes, r.record_spikes(x))) and sum(int(s.sum()) for s in spikes) > 0
    c = lowbit.convert(q)
    assert torch.equal(c(x), q(x))
    lowbit.save(c, tmp_path / "c.lowbit")
    rc = lowbit.load(tmp_path / "c.lowbit", model=m)
    assert torch.equal(rc(x), c(x)) and all(torch.equal(a, b) for a, b in zip(c.record_spikes(x), rc.record_spikes(x)))
    assert all(v.dtype == torch.float64 for v in rc.connections().values())


def test_load_checks_the_model(tmp_path):
    q = lowbit.quantize(_snn(), "fxp4:p99")
    lowbit.save(q, tmp_path / "q.lowbit")
    with pytest.raises(ValueError, match="pass model="):
        lowbit.load(tmp_path / "q.lowbit")
    with pytest.raises(ValueError, match="holds a SNN, but model is a EventPropSNN"):
        lowbit.load(tmp_path / "q.lowbit", model=EventPropSNN(6, [8, 5], 3, recurrent=True))
    with pytest.raises(ValueError, match="does not match the model"):
        lowbit.load(tmp_path / "q.lowbit", model=SNN(6, 8, 3))
    with pytest.raises(ValueError, match="shape"):
        lowbit.load(tmp_path / "q.lowbit", model=SNN(6, [8, 4], 3))
    q.hidden[0].state_quant = torch.tanh  # a callable lowbit cannot rebuild
    with pytest.raises(ValueError, match="hidden.0.state_quant is a builtin_function_or_method"):
        lowbit.save(q, tmp_path / "bad.lowbit")
    assert not (tmp_path / "bad.lowbit").exists()


def test_deprecated_checkpoints_wrap_save_and_load(tmp_path):
    m = lowbit.quantize(_snn(), "fxp4:p99")
    with pytest.deprecated_call():
        save_checkpoint(m, tmp_path / "ck.lowbit", {"run": "7"})
    r = lowbit.load(tmp_path / "ck.lowbit", model=_snn())  # one file format
    _same_run(m, r, _x())
    fresh = SNN(6, [8, 5], 3, recurrent=True, beta=0.85, alpha=0.6, seed=9)
    with pytest.deprecated_call():
        meta = load_checkpoint(fresh, tmp_path / "ck.lowbit", "quantized")
    assert meta["run"] == "7" and meta["weight_spec"] == "fxp4:p99"
    for c, w in fresh.connections().items():
        assert torch.equal(w, m.effective_weights()[c])


def test_registry_dispatches_on_type():
    assert isinstance(model_handler_for(_snn()), SpikingVerbs)
    assert isinstance(model_handler_for(EventPropSNN(2, 3, 2)), SpikingVerbs)
    assert model_handler_for(torch.nn.Linear(2, 2)) is None
    with pytest.raises(TypeError, match="model_type"):
        register_model_handler(int, SpikingVerbs())
    with pytest.raises(TypeError, match="lacks"):
        register_model_handler(torch.nn.Linear, object())


def test_nir_export_of_eventprop_has_the_quantized_weights(tmp_path):
    nir = pytest.importorskip("nir")
    from lowbit.targets.nir import export_nir

    m = EventPropSNN(6, 5, 3, recurrent=True, tau_mem=10.0, tau_syn=4.0, dt=0.5, seed=3, dtype=torch.float64)
    q = lowbit.quantize(m, "fxp4:p99")
    g = nir.read(export_nir(q, tmp_path / "ep.nir"))
    assert set(map(tuple, g.edges)) == {("input", "fc0"), ("fc0", "lif0"), ("lif0", "rec0"), ("rec0", "lif0"),
                                        ("lif0", "out"), ("out", "readout"), ("readout", "output")}
    eff = {k: v.detach() for k, v in q.effective_weights().items()}
    codes = q.weight_quant.encode(q.connections())
    for name in ("fc0", "rec0", "out"):
        w = g.nodes[name].weight
        assert np.array_equal(w, eff[name].numpy())  # exactly the quantized weights
        assert float(g.nodes[name].metadata["scale"]) == float(codes[name].scale[0])
        assert int(g.nodes[name].metadata["bits"]) == 4
    assert float(g.nodes["fc0"].metadata["scale"]) == float(g.nodes["rec0"].metadata["scale"])  # one population
    lif = g.nodes["lif0"]
    assert isinstance(lif, nir.CubaLIF)
    # decays exp(-dt / tau) become the forward-Euler time constants dt / (1 - decay) that reproduce them
    tau_mem, tau_syn = 0.5 / (1 - np.exp(-0.5 / 10.0)), 0.5 / (1 - np.exp(-0.5 / 4.0))
    assert np.allclose(lif.tau_mem, tau_mem) and np.allclose(lif.tau_syn, tau_syn) and np.allclose(lif.r, tau_mem / 0.5)
    assert np.allclose(lif.w_in, tau_syn / 0.5) and np.allclose(lif.v_threshold, 1.0) and lif.tau_mem.shape == (5,)
    assert isinstance(g.nodes["readout"], nir.LI) and np.allclose(g.nodes["readout"].tau, tau_mem)
    assert g.metadata["network"] == "EventPropSNN" and g.metadata["readout"] == "exp" and "phi" in g.metadata["spike_timing"]
    ttfs = EventPropSNN(4, 3, 2, readout="ttfs", seed=0)
    out = nir.read(export_nir(ttfs, tmp_path / "t.nir")).nodes["readout"]
    assert isinstance(out, nir.CubaLIF) and np.allclose(out.v_threshold, 1.0)  # a spiking, first-spike output
