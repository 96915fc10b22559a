"""Every module that moved still imports from its old path, warns naming its new place, and gives the same objects.

(``lowbit.codebooks``, whose names went to several homes, is checked in tests/test_core_spec.py;
``snn.save_checkpoint`` / ``load_checkpoint`` in tests/test_snn_verbs.py.)
"""
from __future__ import annotations

import importlib
import sys

import pytest

ALIASES = {
    "lowbit.experiments.cmd_common": "lowbit.commands._common",
    "lowbit.experiments.demo": "lowbit.commands.demo",
    "lowbit.experiments.eval_cmd": "lowbit.commands.eval",
    "lowbit.experiments.quantize_checkpoint": "lowbit.commands.quantize_checkpoint",
    "lowbit.experiments.quantize_cmd": "lowbit.commands.quantize",
    "lowbit.experiments.tour": "lowbit.commands.tour",
    "lowbit.experiments.train_cmd": "lowbit.commands.train",
    "lowbit.snn.cli": "lowbit.commands.snn",
    "lowbit.targets.cim_cli": "lowbit.commands.cim",
    "lowbit.targets.onnx_cli": "lowbit.commands.export_onnx",
    "lowbit.targets.mcu.cli": "lowbit.commands.export_c",
    "lowbit.algorithms.share_cli": "lowbit.commands.share",
    "lowbit.snn.nir_export": "lowbit.targets.nir",
}


@pytest.mark.parametrize("old", sorted(ALIASES))
def test_old_module_path_imports_warns_and_forwards(old, monkeypatch):
    new = importlib.import_module(ALIASES[old])
    monkeypatch.delitem(sys.modules, old, raising=False)  # the warning fires once per import: import afresh
    with pytest.warns(DeprecationWarning, match=f"{old} is deprecated; use {ALIASES[old]}"):
        mod = importlib.import_module(old)
    names = [n for n in vars(new) if not n.startswith("__")]
    assert names  # something to compare
    for name in names:
        assert getattr(mod, name) is getattr(new, name), name
    with pytest.raises(AttributeError):
        mod.no_such_name  # noqa: B018


def test_snn_quant_still_gives_the_checkpoint_wrappers():
    import lowbit.snn.quant as quant
    import lowbit.snn.verbs as verbs

    assert quant.save_checkpoint is verbs.save_checkpoint and quant.load_checkpoint is verbs.load_checkpoint
    with pytest.raises(AttributeError):
        quant.no_such_name  # noqa: B018
