"""Real microcontroller targets: the exported C cross-compiled for Cortex-M0/M4 (arm-none-eabi-gcc,
picolibc, QEMU MPS2) and RV32IMC/RV32EC (riscv64-unknown-elf-gcc, picolibc, QEMU virt), run in
the emulator with semihosting on 200 digits inputs per model and weight type (one run per
binary): the int32 logits must equal the NumPy integer reference bit for bit.

Without the toolchains these tests skip saying which tools are missing -- except in CI
(``CI=true``), where they fail: .ci/run installs the Debian packages.
"""
from __future__ import annotations

import copy
import os
import re
import subprocess
from types import SimpleNamespace

import numpy as np
import pytest

import lowbit
from lowbit.cli import main
from lowbit.targets.mcu import export, reference
from lowbit.targets.mcu.cross import TARGETS, build_target, linked_size, missing_tools, run_target, target

EMULATED = ("cortex-m0", "cortex-m4", "rv32imc", "rv32ec")
N_INPUTS = 200
# weight type -> (quantize config, kernel kind)
TYPES = {
    "int8": ("w8,a8", "i8"),
    "int4": ("w4,a8", "p4"),
    "int2": ("w2,a8", "p2"),
    "ternary": ("*=ternary:channel,a8", "t3"),
    "nf4-lut": ("*=nf4:channel,a8", "l4"),
}


def _need(tgt: str) -> None:
    miss = missing_tools(tgt)
    if miss:
        msg = f"target {tgt} needs {', '.join(miss)} (apt-get install gcc-arm-none-eabi gcc-riscv64-unknown-elf picolibc-arm-none-eabi picolibc-riscv64-unknown-elf qemu-system-arm qemu-system-misc)"
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(msg + "; CI must have them (.ci/run installs them)")
        pytest.skip(msg)


def _export(float_model, digits, tmp_path_factory, config):
    x_cal = digits.train.tensors[0][:256]
    q = lowbit.quantize(copy.deepcopy(float_model), config, calib=[(x_cal, None)])
    out = tmp_path_factory.mktemp("cross")
    x = digits.train.tensors[0][:N_INPUTS]
    return SimpleNamespace(q=q, x_cal=x_cal, out=out, x=x)


@pytest.fixture(scope="module", params=[(m, t) for m in ("mlp", "cnn") for t in TYPES], ids=lambda p: f"{p[0]}-{p[1]}")
def case(request, _float_mlp, _float_cnn, digits, tmp_path_factory):
    model, wtype = request.param
    base = _export((_float_mlp if model == "mlp" else _float_cnn)[0], digits, tmp_path_factory, TYPES[wtype][0])
    res = export(base.q, base.out / "host", calib=base.x_cal, harness=True)
    xi = res.program.quantize_input(base.x)
    return SimpleNamespace(base=base, program=res.program, xi=xi, ref=reference.run(res.program, xi), kind=TYPES[wtype][1], name=f"{model}-{wtype}")


@pytest.mark.parametrize("tgt", EMULATED)
def test_emulated_logits_equal_the_reference_bit_for_bit(case, tgt):
    _need(tgt)
    d = case.base.out / tgt
    res = export(case.base.q, d, calib=case.base.x_cal, harness=True, target=tgt)
    assert [o.kind for o in res.program.compute_ops][-1] == case.kind
    elf = build_target(d, tgt)
    c = run_target(elf, tgt, res.program, case.xi)
    assert c.shape == (N_INPUTS, 10) and c.dtype == np.int32
    np.testing.assert_array_equal(c, case.ref, err_msg=f"{case.name} on {tgt}")
    assert len(np.unique(c)) > 500  # real logits, not constants or saturation
    # the linked image holds at least the packed weights, and the data fits the RAM estimate's order
    size = linked_size(elf, tgt)
    assert size.flash > res.report.weights
    assert size.ram >= res.report.activations


def test_rv32ec_is_rve_without_multiplies(tmp_path, _float_mlp, digits):
    _need("rv32ec")
    x_cal = digits.train.tensors[0][:64]
    q = lowbit.quantize(copy.deepcopy(_float_mlp[0]), "w4,a8", calib=[(x_cal, None)])
    export(q, tmp_path / "c", calib=x_cal, harness=True, target="rv32ec")
    elf = build_target(tmp_path / "c", "rv32ec")
    hdr = subprocess.run(["riscv64-unknown-elf-readelf", "-h", str(elf)], capture_output=True, text=True, check=True).stdout
    assert "RVE" in hdr and "RVC" in hdr
    dis = subprocess.run(["riscv64-unknown-elf-objdump", "-d", str(elf)], capture_output=True, text=True, check=True).stdout
    assert "\tmul\t" not in dis  # no M extension: multiplies are library calls or shift-adds


def test_export_writes_the_build_line_and_a_semihosting_harness(tmp_path, _float_mlp, digits):
    x_cal = digits.train.tensors[0][:64]
    q = lowbit.quantize(copy.deepcopy(_float_mlp[0]), "w4,a8", calib=[(x_cal, None)])
    for tgt in TARGETS:
        files = export(q, tmp_path / tgt, calib=x_cal, harness=True, target=tgt).files
        script = files["lowbit_model_build.sh"].read_text()
        main_c = files["lowbit_model_main.c"].read_text()
        t = target(tgt)
        assert script.splitlines()[4].startswith(t.cc) and all(a in script for a in t.arch)
        if t.is_host:
            assert "stdin" in main_c and "fopen" not in main_c
        else:
            assert "--oslib=semihost" in script and "-kernel lowbit_model.elf" in script and t.qemu[0] in script
            assert 'fopen(LB_IN_FILE, "rb")' in main_c
    with pytest.raises(ValueError, match=r"target must be one of host, cortex-m0, cortex-m4, rv32imc, rv32ec, got 'avr'"):
        export(q, tmp_path / "x", calib=x_cal, harness=True, target="avr")
    assert not (tmp_path / "x").exists()


def test_export_c_command_target(tmp_path, _float_mlp, digits, capsys):
    _need("rv32imc")
    x_cal = digits.train.tensors[0][:64]
    q = lowbit.quantize(copy.deepcopy(_float_mlp[0]), "w4,a8", calib=[(x_cal, None)])
    path = tmp_path / "m.pt"
    lowbit.save(q, path)
    rc = main(["export-c", str(path), "--out", str(tmp_path / "c"), "--data", "digits", "--target", "rv32imc",
               "--no-eval", "--calib-samples", "64", "--progress", "none"])
    assert rc == 0
    out = capsys.readouterr().out
    assert "riscv64-unknown-elf-gcc -march=rv32imc" in out  # the build line
    assert (tmp_path / "c" / "lowbit_model_main.c").is_file()
    # the linker's flash and RAM beside the estimate: the estimate is within 10 % for this MLP
    m = re.search(r"linked \(rv32imc, -O2\): model flash ([\d,]+) B \(estimate ([\d,]+)\)", out)
    assert m, out
    linked, est = (int(g.replace(",", "")) for g in m.groups())
    assert abs(linked - est) <= 0.1 * est, (linked, est)
    # a budget the model exceeds fails and says so
    rc = main(["export-c", str(path), "--out", str(tmp_path / "c2"), "--data", "digits", "--target", "rv32imc",
               "--no-eval", "--calib-samples", "64", "--progress", "none", "--flash", "9k"])
    assert rc != 0 and "does not fit" in capsys.readouterr().err
