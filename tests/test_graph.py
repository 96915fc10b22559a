"""The graph path (issue 21): BatchNorm folded wherever a conv/linear feeds it, activation quantizers on graph edges."""
from __future__ import annotations

import warnings

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import lowbit
from lowbit.nn import fold_bn


def _seen(model: nn.Module, x: torch.Tensor) -> nn.Module:
    """Give every BatchNorm random statistics (as training would) and return the model in eval mode."""
    g = torch.Generator().manual_seed(1)
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            n = m.num_features
            m.running_mean.copy_(torch.randn(n, generator=g))
            m.running_var.copy_(torch.rand(n, generator=g) + 0.5)
            m.weight.data.copy_(torch.randn(n, generator=g))
            m.bias.data.copy_(torch.randn(n, generator=g))
            m.num_batches_tracked.fill_(1)
    return model.eval()


class Branchy(nn.Module):
    """A residual block, a ModuleDict branch, getattr-built names and a conv shared by two calls."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8)
        self.branch = nn.ModuleDict({"conv": nn.Conv2d(8, 8, 3, padding=1, bias=False), "bn": nn.BatchNorm2d(8)})
        for i in range(2):
            setattr(self, f"c{i}", nn.Conv2d(8, 8, 1))
            setattr(self, f"b{i}", nn.BatchNorm2d(8))
        self.shared, self.bn_shared = nn.Conv2d(8, 8, 1), nn.BatchNorm2d(8)
        self.fc, self.bnf = nn.Linear(8, 4), nn.BatchNorm1d(4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.bn1(self.conv1(x)))
        x = x + self.branch["bn"](self.branch["conv"](x))
        for i in range(2):
            x = F.relu(getattr(self, f"b{i}")(getattr(self, f"c{i}")(x)))
        y = self.shared(x)
        x = self.bn_shared(y) + self.shared(y)  # shared is called twice: its BN must not be folded
        return self.bnf(self.fc(x.mean((2, 3))))


def test_fold_bn_follows_the_graph_through_residuals_moduledicts_and_getattr_names():
    x = torch.randn(2, 3, 8, 8)
    m = _seen(Branchy(), x)
    ref = m(x)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        folded = fold_bn(m)
    assert sorted(folded) == ["b0", "b1", "bn1", "bnf", "branch.bn"]
    assert isinstance(m.bn1, nn.Identity) and isinstance(m.branch["bn"], nn.Identity) and isinstance(m.bnf, nn.Identity)
    assert isinstance(m.bn_shared, nn.BatchNorm2d)  # fed by a conv that has another use
    assert [str(w.message) for w in caught if "bn_shared" in str(w.message)]
    assert type(m) is Branchy  # the user's class and forward stay
    torch.testing.assert_close(m(x), ref, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("conv", [
    nn.ConvTranspose1d(4, 6, 3, stride=2), nn.ConvTranspose2d(4, 6, 3, groups=2, bias=False),
    nn.Conv3d(4, 6, 3, padding=1), nn.Conv1d(6, 6, 3, groups=6, dilation=2),
])
def test_fold_bn_keeps_outputs_of_transposed_grouped_and_3d_convs(conv):
    dims = conv.weight.dim() - 2
    bn = [nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d][dims - 1](6)
    m = _seen(nn.Sequential(conv, bn), None)
    x = torch.randn(2, conv.in_channels, *([5] * dims))
    ref = m(x)
    assert fold_bn(m) == ["1"]
    torch.testing.assert_close(m(x), ref, rtol=1e-5, atol=1e-5)


class Untraceable(nn.Module):
    """Python control flow on a shape: fx cannot trace it, torch.export can (specialised on the example)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv, self.bn = nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[0] > 1:
            x = x * 2
        return F.relu(self.bn(self.conv(x)))


def test_fold_bn_falls_back_to_torch_export_then_warns_without_an_example():
    x = torch.randn(2, 3, 6, 6)
    m = _seen(Untraceable(), x)
    ref = m(x)
    with pytest.warns(UserWarning, match=r"\['bn'\].*could not be traced"):
        assert fold_bn(m) == []
    assert fold_bn(m, example=x) == ["bn"]
    torch.testing.assert_close(m(x), ref, rtol=1e-5, atol=1e-5)


def test_load_refolds_the_same_batchnorms(tmp_path):
    x = torch.randn(2, 3, 8, 8)
    m = _seen(Branchy(), x)
    q = lowbit.prepare_qat(m, "w4:lsq")
    assert sorted(q.lowbit_info.folded) == ["b0", "b1", "bn1", "bnf", "branch.bn"]
    lowbit.save(q, tmp_path / "m.lowbit")
    back = lowbit.load(tmp_path / "m.lowbit", model=_seen(Branchy(), x))
    assert isinstance(back.branch["bn"], nn.Identity) and isinstance(back.bn_shared, nn.BatchNorm2d)
    assert torch.equal(back.eval()(x), q.eval()(x))


@pytest.mark.parametrize("conv, shape", [
    (nn.Conv1d(6, 6, 3, groups=6, dilation=2, stride=2), (2, 6, 20)),
    (nn.Conv2d(4, 8, 3, groups=2, stride=2, padding=2, dilation=2), (2, 4, 9, 9)),
    (nn.Conv3d(2, 4, 3, padding=1), (2, 2, 5, 5, 5)),
    (nn.ConvTranspose1d(4, 6, 3, stride=2, output_padding=1), (2, 4, 7)),
    (nn.ConvTranspose2d(4, 6, 3, stride=2, groups=2, dilation=2), (2, 4, 5, 5)),
])
def test_convolutions_quantize_per_output_channel_and_convert_exactly(conv, shape, tmp_path):
    torch.manual_seed(0)
    model = nn.Sequential(conv).eval()
    x = torch.randn(*shape)
    q = lowbit.quantize(model, "w4,a8", calib=[x])
    layer = q[0]
    assert type(layer).__name__ == "Quant" + type(conv).__name__
    w = layer.quantized_weight().detach()
    out_axis = 1 if isinstance(conv, nn.modules.conv._ConvTransposeNd) else 0
    # per output channel: every slice along the output axis uses its own grid of at most 16 levels
    for j in range(w.shape[out_axis]):
        assert len(torch.unique(w.select(out_axis, j))) <= 16
    scale = layer.weight_quant.scale.flatten()
    assert scale.numel() == w.shape[out_axis]
    torch.testing.assert_close(q(x), model(x), rtol=0.2, atol=0.3)  # 4-bit weights: close to float, not equal
    c = lowbit.convert(q)
    assert torch.equal(c(x), q(x))
    lowbit.save(c, tmp_path / "c.lowbit")
    assert torch.equal(lowbit.load(tmp_path / "c.lowbit", model=model)(x), c(x))


def _zoo(name: str) -> tuple[nn.Module, list[torch.Tensor]]:
    from lowbit.models import build_model
    from lowbit.models.zoo import ZOO, zoo_input

    e = ZOO[name]
    m = build_model(name, e.small_input_shape or e.input_shape, 5, seed=0, **e.small)
    batches = [zoo_input(name, 4, seed=i) for i in range(2)]
    m.train()
    with torch.no_grad():
        for b in batches:
            m(b)
    return m.eval(), batches


def test_one_quantizer_per_tensor_shared_by_every_reader():
    m, batches = _zoo("resnet18")
    q = lowbit.quantize(m, "w4,a8", calib=batches)
    assert isinstance(q, torch.fx.GraphModule) and type(q).__name__ == "ResNet18"
    edges = lowbit.graph.edge_quantizers(q)
    # layer2.0 reads its input with conv1 and the downsample conv: one edge quantizer, no layer input quantizers
    reader = q.get_submodule("layer2.0")
    assert reader.conv1.input_quant is None and reader.downsample.get_submodule("0").input_quant is None
    shared = [n for n in q.graph.nodes if n.op == "call_module" and n.target.startswith("lowbit_acts.")
              and {u.target for u in n.users} >= {"layer2.0.conv1", "layer2.0.downsample.0"}]
    assert len(shared) == 1
    assert q.lowbit_info.layers["layer2.0.conv1"]["input_edge"] == shared[0].target
    # the stem conv reads the image alone: its own input quantizer stays (as module swapping puts it)
    assert q.conv1.input_quant is not None and "x" not in edges
    # in-place ReLUs after a quantizer are made out of place (same values, autograd allows it)
    assert not q.get_submodule("layer1.0.relu").inplace and q.relu.inplace  # the stem's ReLU feeds maxpool: untouched


def test_models_without_functional_ops_keep_the_module_path():
    from lowbit.models import build_model

    m = build_model("mlp", (1, 8, 8), 10, seed=0).eval()
    x = torch.randn(4, 1, 8, 8)
    q = lowbit.quantize(m, "w4,a8", calib=[x])
    assert type(q) is type(m) and not lowbit.graph.edge_quantizers(q)
    assert q.features[0].input_quant is not None and q.classifier.input_quant is not None


def test_weights_only_configs_keep_the_users_class():
    m, _ = _zoo("resnet8")
    q = lowbit.prepare_qat(m, "w4:lsq")
    assert type(q) is type(m) and not isinstance(q, torch.fx.GraphModule)


def test_activation_rules_name_functional_ops_by_module_path():
    m, batches = _zoo("resnet8")
    q = lowbit.quantize(m, "w4,a8,a:stack2.*=none", calib=batches)
    edges = lowbit.graph.edge_quantizers(q)
    assert "add" in edges and "add_2" in edges and "add_1" not in edges  # stack1, stack3 quantized; stack2 not
    assert q.stack2.conv1.input_quant is None and q.stack3.conv1.input_quant is None  # stack3 reads a shared edge


def test_graph_model_round_trips_and_converts_exactly(tmp_path):
    m, batches = _zoo("resnet8")
    qat = lowbit.prepare_qat(m, "w4:lsq,a8", calib=batches)
    opt = torch.optim.SGD(qat.parameters(), lr=1e-3)
    for b in batches:
        opt.zero_grad()
        qat(b).square().mean().backward()
        opt.step()
    qat.eval()
    x = batches[0]
    c = lowbit.convert(qat)
    assert c.lowbit_info.stage == "converted" and c.lowbit_info.config == qat.lowbit_info.config
    assert torch.equal(c(x), qat(x))
    for model in (qat, c):
        lowbit.save(model, tmp_path / "m.lowbit")
        from lowbit.models import build_model

        back = lowbit.load(tmp_path / "m.lowbit", model=build_model("resnet8", (3, 16, 16), 5, seed=3, filters=(8, 16, 32)))
        assert sorted(lowbit.graph.edge_quantizers(back)) == sorted(lowbit.graph.edge_quantizers(model))
        assert torch.equal(back.eval()(x), model.eval()(x))


def test_convert_names_an_edge_quantizer_without_a_range():
    m, _ = _zoo("resnet8")
    q = lowbit.prepare_qat(m, "w4,a8")  # no calibration, no training
    with pytest.raises(ValueError, match=r"lowbit_acts|layer"):
        lowbit.convert(q)


def test_an_untraceable_model_keeps_layer_input_quantizers_and_says_so(tmp_path):
    x = torch.randn(2, 3, 6, 6)
    m = _seen(Untraceable(), x)
    with pytest.warns(UserWarning, match="could not be traced by torch.fx"):
        q = lowbit.quantize(m, "w4,a8", calib=[x])
    assert type(q) is Untraceable and q.conv.input_quant is not None
    lowbit.save(q, tmp_path / "u.lowbit")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # load rebuilds quietly
        back = lowbit.load(tmp_path / "u.lowbit", model=_seen(Untraceable(), x))
    assert torch.equal(back(x), q(x))
