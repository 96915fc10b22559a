"""Energy, latency and area of one inference on crossbars, from a small documented parameter table.

``cost(model, cfg, example=x)`` counts, for each layer ``simulate`` would put on crossbars,
the sub-arrays, cell columns, input cycles and ADC conversions of one input sample, and
prices them with :class:`CostParams`. A first-order estimate in the spirit of DNN+NeuroSim's
per-layer report (read energy, ADC, accumulation, peripheries), not a circuit simulation.

Per layer (``P`` output positions per sample: ``oh*ow`` for a conv, 1 for a Linear; ``T``
sub-arrays; ``S`` slices; ``Z = ceil(input_bits / input_bits_per_cycle)`` input cycles;
``cols`` = weight columns ``S*C`` plus reference columns, ``S`` per tile for ``signed="dummy"``,
``S*C`` for differential pairs):

- **array**: ``P*Z*T * rows * cols * activity * V^2 * G_mean * t_read`` with
  ``G_mean = G_off + (G_on - G_off)/2`` (a cell at half its range, on average);
- **ADC**: ``conversions = P*Z*T*cols`` (``adc_input="difference"``: ``P*Z*T*S*C``), each
  ``FOM * 2^adc_bits`` (the Walden figure of merit: energy doubles per bit);
- **DAC / row drivers**: ``P*Z*T*rows * activity * e_driver``;
- **shift-add**: ``conversions * (adc_bits + shift bits) * e_add_bit``;
- **latency**: tiles work in parallel, output positions and cycles in sequence:
  ``P*Z * (t_read + col_mux * adc_bits * t_clk)`` (a SAR ADC resolves one bit per clock
  and is shared by ``col_mux`` columns);
- **area**: cells ``T*rows*cols * cell_area`` + ADCs ``T*ceil(cols/col_mux) * adc_area_5b * 2^(b-5)``
  + ``T * periphery_area`` (drivers, shift-add, buffers per sub-array).

Defaults, and where each comes from:

| parameter | default | source |
|---|---|---|
| ``v_read`` | 0.5 V | DNN+NeuroSim V1.3 ``Param.cpp`` readVoltage |
| ``t_read`` | 10 ns | NeuroSim ``Param.cpp`` readPulseWidth |
| ``r_on`` | 6 kΩ | NeuroSim ``Param.cpp`` resistanceOn (RRAM); ``G_off = G_on / cfg.on_off_ratio``, 150 if infinite (NeuroSim's Roff = 150 Ron) |
| ``cell_area_f2`` / ``feature_nm`` | 48 F² at 22 nm | NeuroSim 1T1R cell 4F x 12F, technode 22 nm |
| ``t_clk`` | 1 ns | NeuroSim clkFreq 1 GHz |
| ``col_mux`` | 8 | NeuroSim numColMuxed (8 columns share one ADC) |
| ``adc_fom`` | 10 fJ / conversion step | Walden FOM of SAR ADCs at 0.1-1 GS/s (B. Murmann, "ADC Performance Survey 1997-2024": most designs 1-100 fJ/step); lowbit's round figure |
| ``adc_area_5b`` | 300 µm² | lowbit's estimate, order of a 5-bit SAR ADC at 22-28 nm in CIM macros; scaled by ``2^(b-5)`` (capacitor DAC area) |
| ``e_driver`` | 5 fJ per active row and cycle | lowbit's estimate (a wordline switch at 22 nm, C·V² with ~20 fF) |
| ``e_add_bit`` | 1 fJ per bit | lowbit's estimate (a 22 nm full-adder bit, NeuroSim's adder activity δ = 0.15 ignored) |
| ``periphery_area`` | 2000 µm² per sub-array | lowbit's estimate (drivers, shift-add, registers) |
| ``activity`` | 0.5 | fraction of rows with a non-zero input digit per cycle (lowbit's assumption) |

Change any of them with ``CostParams(...)``; compare settings by ratio, not by absolute number.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, fields
from typing import Sequence

import torch
from torch import Tensor, nn

from ...nn.layers import QuantConv2d, QuantLayer, QuantLinear
from .array import n_slices, tile_layout
from .config import CrossbarConfig
from .layers import weight_grid
from ...nn.act import ActQuant
from .simulate import _in_scope, _matches, _pact_before, check_digital

__all__ = ["CostParams", "LayerCost", "cost", "adc_energy", "cost_table"]

_NEUROSIM_ON_OFF = 150.0  # NeuroSim Param.cpp: Roff = 150 * Ron, used when the config's ratio is infinite


@dataclass(frozen=True)
class CostParams:
    """Device and circuit parameters of :func:`cost` (module doc: each default's source)."""

    v_read: float = 0.5
    t_read: float = 10e-9
    r_on: float = 6e3
    cell_area_f2: float = 48.0
    feature_nm: float = 22.0
    t_clk: float = 1e-9
    col_mux: int = 8
    adc_fom: float = 10e-15
    adc_area_5b: float = 300.0
    e_driver: float = 5e-15
    e_add_bit: float = 1e-15
    periphery_area: float = 2000.0
    activity: float = 0.5

    def __post_init__(self) -> None:
        for f in fields(self):
            v = getattr(self, f.name)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or v <= 0:
                raise ValueError(f"{f.name} must be a finite number > 0, got {v!r}")
        if not self.activity <= 1:
            raise ValueError(f"activity must be in (0, 1], got {self.activity}")


@dataclass(frozen=True)
class LayerCost:
    """One layer's cost per inference: energies in J by part, latency in s, area in µm², and the counts behind them."""

    name: str
    tiles: int
    columns: int
    cycles: int
    conversions: int
    e_array: float
    e_adc: float
    e_driver: float
    e_shift_add: float
    latency: float
    area: float

    @property
    def energy(self) -> float:
        """Total energy per inference (J)."""
        return self.e_array + self.e_adc + self.e_driver + self.e_shift_add


def adc_energy(bits: int, params: CostParams | None = None) -> float:
    """Energy of one ADC conversion (J): the Walden figure of merit times ``2^bits``."""
    if isinstance(bits, bool) or not isinstance(bits, int) or bits < 1:
        raise ValueError(f"bits must be an int >= 1, got {bits!r}")
    return (params or CostParams()).adc_fom * 2.0**bits


def _positions(model: nn.Module, names: Sequence[str], example: Tensor | None) -> dict[str, int]:
    """Output positions per sample of each named layer (1 for a Linear), from one forward of ``example``."""
    mods = dict(model.named_modules())
    out = {n: 1 for n in names if not isinstance(mods[n], QuantConv2d)}
    convs = [n for n in names if n not in out]
    if not convs:
        return out
    if example is None:
        raise ValueError(f"example is needed to size the conv layers ({', '.join(convs)}): pass an input batch")
    handles = [mods[n].register_forward_hook(lambda m, i, o, n=n: out.__setitem__(n, int(o[0, 0].numel()))) for n in convs]
    was = model.training
    try:
        model.eval()
        with torch.no_grad():
            model(example[:1])
    finally:
        model.train(was)
        for h in handles:
            h.remove()
    return out


def cost(model: nn.Module, config: CrossbarConfig | None = None, *, example: Tensor | None = None,
         digital: Sequence[str] = (), params: CostParams | None = None) -> list[LayerCost]:  # fmt: skip
    """Per-layer energy, latency and area of one inference of ``model`` on crossbars ``config`` (see module doc).

    ``example`` (an input batch; its first sample is run) sizes the conv layers' outputs.
    Layers kept digital (``digital`` patterns, ``config.analog``) are not counted.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be an nn.Module, got {type(model).__name__}")
    cfg = CrossbarConfig() if config is None else config
    if not isinstance(cfg, CrossbarConfig):
        raise TypeError(f"config must be a CrossbarConfig, got {type(cfg).__name__}")
    p = CostParams() if params is None else params
    if not isinstance(p, CostParams):
        raise TypeError(f"params must be a CostParams, got {type(p).__name__}")
    if isinstance(digital, str):
        digital = (digital,)
    mods = [(n, m) for n, m in model.named_modules() if n]
    quant = [n for n, m in mods if isinstance(m, (QuantLinear, QuantConv2d)) and m.weight_quant is not None]
    check_digital(digital, quant)
    first_conv = next((n for n, m in mods if isinstance(m, QuantConv2d)), None)
    analog = [n for n, m in mods if n in quant and not any(_matches(d, n) for d in digital) and _in_scope(cfg, n, m, first_conv)]
    positions = _positions(model, analog, example)
    g_on = 1.0 / p.r_on
    g_off = g_on / (_NEUROSIM_ON_OFF if math.isinf(cfg.on_off_ratio) else cfg.on_off_ratio)
    g_mean = g_off + (g_on - g_off) / 2
    cell_um2 = p.cell_area_f2 * (p.feature_nm * 1e-3) ** 2
    out: list[LayerCost] = []
    by_name = dict(mods)
    for name in analog:
        layer = by_name[name]
        assert isinstance(layer, QuantLayer)
        codes, bits, _, _, _ = weight_grid(layer)
        c, k = codes.shape
        taps = k // layer.in_channels if isinstance(layer, QuantConv2d) else 1
        t = int(tile_layout(k, cfg.rows, taps, cfg.mapping, cfg.drop_remainder).shape[0])
        if cfg.signed == "dummy":
            s = n_slices(bits, cfg.cell_bits)
            cols = s * c + s
        else:
            s = n_slices(max((2**bits - 1) // 2, 2**bits - 1 - (2**bits - 1) // 2).bit_length(), cfg.cell_bits)
            cols = 2 * s * c
        x_bits = _input_bits(layer, mods, [n for n, _ in mods].index(name))
        z = n_slices(x_bits, cfg.input_bits_per_cycle)
        reads = positions[name] * z * t
        conv_cols = s * c if cfg.adc_input == "difference" else cols
        conversions = reads * conv_cols
        b = cfg.adc_bits if cfg.adc_bits is not None else _lossless_bits(cfg)
        out.append(LayerCost(
            name=name, tiles=t, columns=cols, cycles=z, conversions=conversions,
            e_array=reads * cfg.rows * cols * p.activity * p.v_read**2 * g_mean * p.t_read,
            e_adc=conversions * adc_energy(b, p),
            e_driver=reads * cfg.rows * p.activity * p.e_driver,
            e_shift_add=conversions * (b + cfg.cell_bits * (s - 1) + cfg.input_bits_per_cycle * (z - 1)) * p.e_add_bit,
            latency=positions[name] * z * (p.t_read + p.col_mux * b * p.t_clk),
            area=t * (cfg.rows * cols * cell_um2 + math.ceil(cols / p.col_mux) * p.adc_area_5b * 2.0 ** (b - 5) + p.periphery_area),
        ))  # fmt: skip
    return out


def _lossless_bits(cfg: CrossbarConfig) -> int:
    """ADC bits that read any column sum exactly (used to price an ideal read-out, ``adc_bits=None``)."""
    return max(1, math.ceil(math.log2(cfg.rows * (2**cfg.input_bits_per_cycle - 1) * cfg.cell_levels + 1)))


def _input_bits(layer: QuantLayer, mods: list[tuple[str, nn.Module]], i: int) -> int:
    """Bits of the layer's integer input: its input quantizer's, or the PACT's that feeds it (as :func:`simulate` finds it)."""
    if isinstance(layer.input_quant, ActQuant):
        return int(layer.input_quant.q.fmt.bits)
    pact = _pact_before(mods, i)
    if pact is None:
        raise ValueError(f"layer {mods[i][0]!r} has no integer input (no input quantizer, no PACT before it): keep it digital")
    return int(pact.bits)


def cost_table(costs: Sequence[LayerCost]) -> str:
    """Per-layer and total energy (nJ), ADC share, latency (µs) and area (mm²) as a markdown table."""
    lines = ["| layer | tiles | columns | ADC conversions | energy nJ | ADC share | latency µs | area mm² |",
             "|---|---:|---:|---:|---:|---:|---:|---:|"]  # fmt: skip
    for lc in costs:
        share = lc.e_adc / lc.energy if lc.energy else 0.0
        lines.append(f"| {lc.name} | {lc.tiles} | {lc.columns} | {lc.conversions} | {lc.energy * 1e9:.3f} | {share:.0%} | "
                     f"{lc.latency * 1e6:.2f} | {lc.area * 1e-6:.4f} |")  # fmt: skip
    e = sum(lc.energy for lc in costs)
    a = sum(lc.e_adc for lc in costs)
    lines.append(f"| **total** | {sum(lc.tiles for lc in costs)} | {sum(lc.columns for lc in costs)} | "
                 f"{sum(lc.conversions for lc in costs)} | {e * 1e9:.3f} | {a / e if e else 0.0:.0%} | "
                 f"{sum(lc.latency for lc in costs) * 1e6:.2f} | {sum(lc.area for lc in costs) * 1e-6:.4f} |")  # fmt: skip
    return "\n".join(lines)
