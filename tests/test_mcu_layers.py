"""MCU export of general layers: any conv kernel, stride, dilation and padding (symmetric and
'same'), depthwise and pointwise convs, Conv1d, max/average/global-average pooling and mixed
bit widths per layer. Each model is compiled with the host compiler (strict C99, once with
ASan+UBSan) and its int32 logits must equal the NumPy integer reference on 256 inputs; the
integer logits must also follow the fake-quantized model's (correlation), so the geometry
(padding sides, window order) is PyTorch's and not only self-consistent.
"""
from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from torch import nn

import lowbit
from lowbit.targets.mcu import export, reference
from lowbit.targets.mcu.lower import PoolOp, avg_multiplier
from lowbit.targets.mcu.toolchain import SANITIZE_FLAGS, compile_harness, find_cc, run_harness

pytestmark = pytest.mark.skipif(find_cc() is None, reason="needs a system C compiler (cc)")

N = 256


def _warm(model: nn.Module, x: torch.Tensor) -> nn.Module:
    """Give BatchNorm real running statistics (as training would), then eval mode."""
    model.train()
    with torch.no_grad():
        for _ in range(3):
            model(x)
    return model.eval()


def _conv2d_net() -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(2, 8, (5, 3), stride=(2, 1), padding=(2, 1)), nn.BatchNorm2d(8), nn.ReLU(),  # non-square, strided
        nn.Conv2d(8, 8, 3, padding=1, groups=8), nn.BatchNorm2d(8), nn.ReLU(),  # depthwise
        nn.Conv2d(8, 12, 1), nn.ReLU(),  # pointwise
        nn.MaxPool2d(3, 1),  # overlapping max windows
        nn.Conv2d(12, 12, 3, padding=2, dilation=2, groups=4), nn.ReLU(),  # dilated, grouped
        nn.AvgPool2d(3, 2),  # a 9-value window: multiplier + shift
        nn.Conv2d(12, 8, (2, 4), padding="same"), nn.ReLU(),  # even kernel: PyTorch pads the odd one at the end
        nn.AdaptiveAvgPool2d(1), nn.Flatten(),  # global average
        nn.Linear(8, 6),
    )


def _conv1d_net() -> nn.Module:
    return nn.Sequential(
        nn.Conv1d(3, 8, 5, padding=2), nn.ReLU(),
        nn.Conv1d(8, 8, 3, stride=2, padding=1, groups=8), nn.ReLU(),
        nn.MaxPool1d(2), nn.Conv1d(8, 8, 1), nn.ReLU(),
        nn.AvgPool1d(2), nn.Flatten(), nn.Linear(8 * 5, 4),
    )


# name -> (model factory, input shape, config, signed input)
CASES = {
    "conv2d-int4": (_conv2d_net, (2, 17, 11), "w4,a8", False),
    "conv2d-int8-signed": (_conv2d_net, (2, 17, 11), "w8,a8,a:0=int8", True),
    "conv2d-ternary": (_conv2d_net, (2, 17, 11), "*=ternary:channel,a8", False),
    "conv1d-int4": (_conv1d_net, (3, 40), "w4,a8", False),
    # 8-bit first conv, 2-bit pointwise, ternary grouped conv, NF4 LUT, 4-bit the rest
    "conv2d-mixed": (_conv2d_net, (2, 17, 11), "w4,0=int8:channel,6=int2:channel,9=ternary:channel,12=nf4:channel,a8", False),
}
KINDS = {"conv2d-mixed": ["i8", "p4", "p2", "t3", "l4", "p4"]}


@pytest.fixture(scope="module", params=list(CASES))
def case(request, tmp_path_factory):
    make, shape, config, signed = CASES[request.param]
    torch.manual_seed(0)
    gen = torch.Generator().manual_seed(1)
    x = torch.randn((N, *shape), generator=gen) if signed else torch.rand((N, *shape), generator=gen)
    model = _warm(make(), x)
    q = lowbit.quantize(copy.deepcopy(model), config, calib=[(x, None)])
    out = tmp_path_factory.mktemp("layers") / "c"
    res = export(q, out, calib=x, harness=True)
    xi = res.program.quantize_input(x)
    c = run_harness(compile_harness(out), res.program, xi)
    with torch.no_grad():
        fq = lowbit.convert(q)(x).numpy()
    return request.param, res, xi, c, reference.run(res.program, xi), fq, out


def test_c_equals_reference_on_general_layers(case):
    name, res, xi, c, ref, fq, _ = case
    assert c.shape == (N, res.program.num_outputs) and xi.shape[0] == N
    np.testing.assert_array_equal(c, ref, err_msg=name)
    assert len(np.unique(c)) > 16  # not constants (random models after a global average vary little: the correlation below is the check)
    if name in KINDS:
        assert [o.kind for o in res.program.compute_ops] == KINDS[name]
    # the integer logits follow the fake-quantized model: same geometry as PyTorch
    r = np.corrcoef(fq.ravel(), ref.astype(np.float64).ravel() * res.program.logit_scale)[0, 1]
    assert r > 0.95, (name, r)


def test_geometry_is_recorded(case):
    name, res, *_ = case
    ops = res.program.ops
    if name.startswith("conv2d"):
        conv = res.program.compute_ops
        assert [(o.kernel, o.stride, o.pads, o.groups, o.dilation) for o in conv[:5]] == [
            ((5, 3), (2, 1), (2, 1, 2, 1), 1, (1, 1)),
            ((3, 3), (1, 1), (1, 1, 1, 1), 8, (1, 1)),
            ((1, 1), (1, 1), (0, 0, 0, 0), 1, (1, 1)),
            ((3, 3), (1, 1), (2, 2, 2, 2), 4, (2, 2)),
            ((2, 4), (1, 1), (0, 1, 1, 2), 1, (1, 1)),  # 'same': total 1 x 3, the odd pixel at the end
        ]
        assert conv[0].out_shape == (8, 9, 11) and conv[1].n == 9  # depthwise rows read 3x3 of one channel
        pools = [o for o in ops if isinstance(o, PoolOp)]
        assert [(p.kind, p.kernel, p.stride, p.mult, p.shift) for p in pools] == [
            ("max", (3, 3), (1, 1), 1, 0), ("avg", (3, 3), (2, 2), *avg_multiplier(9, 255)), ("avg", (3, 4), (3, 4), *avg_multiplier(12, 255)),
        ]
        assert res.report.col == 12 * 2 * 4  # one position's window of the widest row, not a whole im2col matrix
    else:
        conv = res.program.compute_ops
        assert conv[0].in_shape == (3, 1, 40) and conv[0].kernel == (1, 5) and conv[1].groups == 8
        assert [(p.kind, p.kernel) for p in ops if isinstance(p, PoolOp)] == [("max", (1, 2)), ("avg", (1, 2))]


def test_average_rounding_is_documented():
    # a power of two: the exact mean, rounded half up; otherwise round(2^s / count) with s as large as int32 allows
    assert avg_multiplier(4, 255) == (1, 2) and avg_multiplier(1, 255) == (1, 0) and avg_multiplier(125, 255) == (67109, 23)
    op = PoolOp("p", (1, 2, 2), (1, 1, 1), True, "avg", (2, 2), (2, 2), 1, 2, -128, 127)
    x = np.array([[[[1, 2], [2, 1]]], [[[-1, -2], [-2, -1]]], [[[127, 127], [127, 126]]]])
    from lowbit.targets.mcu.reference import _pool

    assert _pool(op, x).reshape(-1).tolist() == [2, -1, 127]  # 6/4 = 1.5 -> 2, -6/4 = -1.5 -> -1 (half up), 126.75 -> 127
    m, s = avg_multiplier(9, 255)
    sums = np.arange(0, 9 * 255 + 1)
    got = (sums * m + (1 << (s - 1))) >> s
    assert np.abs(got - sums / 9).max() <= 0.5 + 1e-9  # within rounding of the true mean over the whole range


def test_sanitizers_find_nothing_on_general_layers(tmp_path):
    torch.manual_seed(0)
    x = torch.randn(64, 2, 17, 11)
    model = _warm(_conv2d_net(), x)
    q = lowbit.quantize(model, "*=nf4:channel,a:*=int8,fold_bn=false", calib=[(x, None)])
    res = export(q, tmp_path / "c", calib=x, harness=True, shift="dynamic")
    exe = compile_harness(tmp_path / "c", opt="-O1", extra=SANITIZE_FLAGS)
    xi = res.program.quantize_input(x)
    np.testing.assert_array_equal(run_harness(exe, res.program, xi), reference.run(res.program, xi))
    assert res.program.dynamic and res.program.input_lo == -128
