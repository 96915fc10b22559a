"""CrossbarConfig: the knobs of a simulated RRAM crossbar (cells, arrays, ADC, devices)."""
from __future__ import annotations

import math
from dataclasses import dataclass

__all__ = ["CrossbarConfig", "CELL_BITS", "ADC_RANGES", "SIGNED_MODES", "MAPPINGS"]

CELL_BITS = (1, 2, 4)
ADC_RANGES = ("dynamic", "full_scale")
SIGNED_MODES = ("dummy", "differential")
MAPPINGS = ("unrolled", "tap")


def _int(name: str, value: object, lo: int, allowed: tuple[int, ...] | None = None) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int, got {value!r}")
    if allowed is not None and value not in allowed:
        raise ValueError(f"{name} must be one of {allowed}, got {value}")
    if value < lo:
        raise ValueError(f"{name} must be >= {lo}, got {value}")


def _fraction(name: str, value: object, hi: float = 1.0) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or not 0 <= value <= hi:
        raise ValueError(f"{name} must be a number in [0, {hi}], got {value!r}")


@dataclass(frozen=True)
class CrossbarConfig:
    """Crossbar hardware: cell bits, rows per sub-array, ADC, signed-weight scheme and device non-idealities.

    - ``cell_bits``: bits per cell (1, 2 or 4); weight codes are split LSB first.
    - ``rows``: rows per sub-array; the layer's inputs are tiled, a remainder tile is kept.
    - ``mapping``: ``unrolled`` tiles the im2col rows (Cin*kh*kw) in order; ``tap`` maps each
      kernel tap separately and tiles its input channels (the reference repo's mapping).
    - ``input_bits_per_cycle``: input bits applied per read cycle (a DAC of that many bits).
    - ``adc_bits``: ADC resolution per column read (None: an ideal, lossless read-out).
    - ``adc_range``: ``dynamic`` (min..max of the batch's partial sums per tile, slice and
      cycle) or ``full_scale`` (0..rows*(2^input_bits_per_cycle-1)*G_max in cell-level units).
    - ``signed``: ``dummy`` (offset binary + a reference column per slice) or ``differential``
      (positive and negative magnitudes in two columns).
    - ``on_off_ratio``: G_max/G_min (inf: an off cell conducts nothing).
    - ``variation``: std of the multiplicative Gaussian conductance variation (0.05 = 5 %).
    - ``stuck_at_zero`` / ``stuck_at_one``: fractions of cells stuck at G_min / G_max.
    - ``seed``: seeds the device draws (variation, faults); the same seed gives the same chip.
    """

    cell_bits: int = 1
    rows: int = 128
    mapping: str = "unrolled"
    input_bits_per_cycle: int = 1
    adc_bits: int | None = 8
    adc_range: str = "dynamic"
    signed: str = "dummy"
    on_off_ratio: float = math.inf
    variation: float = 0.0
    stuck_at_zero: float = 0.0
    stuck_at_one: float = 0.0
    seed: int = 0

    def __post_init__(self) -> None:
        _int("cell_bits", self.cell_bits, 1, CELL_BITS)
        _int("rows", self.rows, 1)
        _int("input_bits_per_cycle", self.input_bits_per_cycle, 1)
        if self.input_bits_per_cycle > 8:
            raise ValueError(f"input_bits_per_cycle must be in 1..8, got {self.input_bits_per_cycle}")
        if self.adc_bits is not None:
            _int("adc_bits", self.adc_bits, 1)
            if self.adc_bits > 24:
                raise ValueError(f"adc_bits must be in 1..24 (or None for an ideal read-out), got {self.adc_bits}")
        for name, value, allowed in (("mapping", self.mapping, MAPPINGS), ("adc_range", self.adc_range, ADC_RANGES),
                                     ("signed", self.signed, SIGNED_MODES)):  # fmt: skip
            if value not in allowed:
                raise ValueError(f"{name} must be one of {allowed}, got {value!r}")
        r = self.on_off_ratio
        if isinstance(r, bool) or not isinstance(r, (int, float)) or math.isnan(r) or not r > 1:
            raise ValueError(f"on_off_ratio must be a number > 1 (inf for an ideal off state), got {r!r}")
        _fraction("variation", self.variation, hi=10.0)
        _fraction("stuck_at_zero", self.stuck_at_zero)
        _fraction("stuck_at_one", self.stuck_at_one)
        if self.stuck_at_zero + self.stuck_at_one > 1:
            raise ValueError("stuck_at_zero + stuck_at_one must be <= 1")
        _int("seed", self.seed, 0)

    @property
    def cell_levels(self) -> int:
        """Highest level a cell stores: ``2^cell_bits - 1``."""
        return 2**self.cell_bits - 1

    @property
    def g_min(self) -> float:
        """Conductance of an off cell in units of one level step (0 for an infinite on/off ratio)."""
        return 0.0 if math.isinf(self.on_off_ratio) else self.cell_levels / (self.on_off_ratio - 1)

    @property
    def ideal(self) -> bool:
        """True when the read-out is lossless: no ADC, ideal devices, no faults."""
        return (self.adc_bits is None and self.variation == 0 and math.isinf(self.on_off_ratio)
                and self.stuck_at_zero == 0 and self.stuck_at_one == 0)  # fmt: skip
