"""CrossbarConfig: the knobs of a simulated RRAM crossbar (cells, arrays, ADC, devices), and two named presets.

| knob | ``preset("neurosim")`` (lowbit's model, the default) | ``preset("torchinference_rram")`` (mengjian0502/TorchInference_RRAM @a62e7bc) |
|---|---|---|
| ADCs | two: the weight column and the reference column digitised separately, then subtracted (as NeuroSim V1.3) | one, on the analog difference column sum - dummy column |
| reference column | the offset code ``(2^bits-1)//2`` bit-sliced into cells | an analog midpoint ``(2^c-1)/2`` per cell of every slice |
| ADC transfer | step ``(hi-lo)/(2^N-1)`` but never finer than one cell level (lossless with enough bits), round | step ``(hi-lo)/2^N``, round, clamp to ``2^N-1`` (the top level is unreachable), no minimum step |
| ADC range | min..max of the batch per (tile, input cycle, slice) | the same: per (tap, sub-array, slice, input bit) over the whole difference tensor |
| mapping | ``unrolled``: Cin*kh*kw rows tiled in order | ``tap``: each kernel tap gets its own tiles of 128 channels |
| analog scope | every quantized layer not listed in ``digital`` | ``convs``: every Conv2d but the first; the first conv and the Linear layers stay digital |

The original truncates ``Cin // 128`` (remainder channels are dropped) and sends convs with
Cin < 128 down another branch (a62e7bc: ``*a_scale`` bug; HEAD: no ADC). VGG7's Cin are
multiples of 128 and its Cin >= 128 rule selects exactly "every conv but the first", so the
preset keeps every channel (``drop_remainder=False``) and uses the ``convs`` scope, which
also means something for narrower models; ``analog="wide_convs", drop_remainder=True`` is
the code's literal rule. Where ``hi == lo`` the original returns its input only when the
whole tensor is zero (NaN otherwise); here the read-out is then the input itself.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

__all__ = ["CrossbarConfig", "CELL_BITS", "ADC_RANGES", "SIGNED_MODES", "MAPPINGS", "ADC_INPUTS", "ADC_TRANSFERS", "DUMMIES",
           "ANALOG_SCOPES", "PRESETS"]

CELL_BITS = (1, 2, 4)
ADC_RANGES = ("dynamic", "full_scale")
SIGNED_MODES = ("dummy", "differential")
MAPPINGS = ("unrolled", "tap")
ADC_INPUTS = ("columns", "difference")
ADC_TRANSFERS = ("lowbit", "torchinference")
DUMMIES = ("code", "midpoint")
ANALOG_SCOPES = ("all", "convs", "wide_convs")
PRESETS = ("neurosim", "torchinference_rram")


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
    - ``adc_input``: ``columns`` (each column digitised, then weight minus reference) or
      ``difference`` (the analog difference digitised once).
    - ``adc_transfer``: ``lowbit`` (step ``(hi-lo)/(2^N-1)``, at least one level) or
      ``torchinference`` (step ``(hi-lo)/2^N``, clamp to ``2^N-1``, no minimum).
    - ``dummy``: reference column of ``signed="dummy"``: ``code`` (the offset code in cells) or
      ``midpoint`` (``(2^c-1)/2`` per cell, offset ``(2^bits-1)/2``).
    - ``analog``: which quantized layers go on crossbars: ``all``; ``convs`` (Conv2d but the
      first); ``wide_convs`` (Conv2d with in_channels >= rows).
    - ``drop_remainder``: ``tap`` mapping only: drop the ``Cin % rows`` channels of each tap
      that do not fill a sub-array, as the original's ``Cin // 128`` does.
    - ``drift_nu``: ``(mean, std)`` of the PCM drift exponent: each device gets its own
      ``nu ~ N(mean, std)`` clipped at 0 and conducts ``g(t0) (t/t0)^-nu`` (None: no drift).
    - ``t_seconds`` / ``t0``: time of the read after programming and the time the programmed
      conductances refer to (``t_seconds=None`` reads at ``t0``), see :mod:`.drift`.
    - ``drift_compensation``: global drift compensation, one digital scalar per layer from a
      reference read at programming time (as aihwkit's ``GlobalDriftCompensation``).
    - ``read_noise``: std of a multiplicative Gaussian on every conductance, redrawn per forward.
    - ``retention``: ``(relax, sigma)`` per decade of ``t/t0``, RRAM-style (None: none): each cell
      moves ``relax * log10(t/t0)`` of the way (at most all of it) toward the mid-range conductance
      and spreads by ``sigma * log10(t/t0)`` of the cell's range, see :mod:`.drift`.
    - ``fault_rate``: fraction of the still-working cells that become stuck (at G_min or G_max,
      even odds) per decade of ``t/t0``; a cell stuck at ``t`` stays stuck later.
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
    adc_input: str = "columns"
    adc_transfer: str = "lowbit"
    dummy: str = "code"
    analog: str = "all"
    drop_remainder: bool = False
    drift_nu: tuple[float, float] | None = None
    t_seconds: float | None = None
    t0: float = 1.0
    drift_compensation: bool = False
    read_noise: float = 0.0
    retention: tuple[float, float] | None = None
    fault_rate: float = 0.0

    @classmethod
    def preset(cls, name: str, **overrides: object) -> "CrossbarConfig":
        """``neurosim`` (lowbit's two-ADC model, the defaults) or ``torchinference_rram`` (the original's), with any field overridden."""
        if name == "neurosim":
            base: dict[str, object] = {}
        elif name == "torchinference_rram":
            base = {"mapping": "tap", "adc_input": "difference", "adc_transfer": "torchinference", "dummy": "midpoint",
                    "analog": "convs"}  # fmt: skip
        else:
            raise ValueError(f"preset must be one of {PRESETS}, got {name!r}")
        return cls(**{**base, **overrides})  # type: ignore[arg-type]

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
                                     ("signed", self.signed, SIGNED_MODES), ("adc_input", self.adc_input, ADC_INPUTS),
                                     ("adc_transfer", self.adc_transfer, ADC_TRANSFERS), ("dummy", self.dummy, DUMMIES),
                                     ("analog", self.analog, ANALOG_SCOPES)):  # fmt: skip
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
        if not isinstance(self.drop_remainder, bool):
            raise TypeError(f"drop_remainder must be a bool, got {self.drop_remainder!r}")
        if self.drop_remainder and self.mapping != "tap":
            raise ValueError("drop_remainder needs mapping='tap' (the original drops channels per kernel tap)")
        if self.dummy == "midpoint" and self.signed != "dummy":
            raise ValueError("dummy='midpoint' needs signed='dummy'")
        self._check_time()

    def _check_time(self) -> None:
        """Validate the drift, read-time and read-noise knobs."""
        nu = self.drift_nu
        if nu is not None:
            if (not isinstance(nu, (tuple, list)) or len(nu) != 2
                    or any(isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or v < 0 for v in nu)):
                raise ValueError(f"drift_nu must be None or a (mean, std) pair of numbers >= 0, got {nu!r}")
            object.__setattr__(self, "drift_nu", (float(nu[0]), float(nu[1])))  # a hashable, comparable tuple
        t0 = self.t0
        if isinstance(t0, bool) or not isinstance(t0, (int, float)) or not math.isfinite(t0) or t0 <= 0:
            raise ValueError(f"t0 must be a number of seconds > 0, got {t0!r}")
        t = self.t_seconds
        if t is not None and (isinstance(t, bool) or not isinstance(t, (int, float)) or not math.isfinite(t) or t < t0):
            raise ValueError(f"t_seconds must be None or a number of seconds >= t0 ({t0}), got {t!r}")
        if not isinstance(self.drift_compensation, bool):
            raise TypeError(f"drift_compensation must be a bool, got {self.drift_compensation!r}")
        _fraction("read_noise", self.read_noise, hi=10.0)
        ret = self.retention
        if ret is not None:
            if (not isinstance(ret, (tuple, list)) or len(ret) != 2
                    or any(isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or v < 0 for v in ret)
                    or ret[0] > 1):  # fmt: skip
                raise ValueError(f"retention must be None or a (relax, sigma) pair per decade, relax in [0, 1], sigma >= 0, got {ret!r}")
            object.__setattr__(self, "retention", (float(ret[0]), float(ret[1])))
        _fraction("fault_rate", self.fault_rate)

    @property
    def drifts(self) -> bool:
        """True when the read happens after ``t0`` with a drift model set (ν may still be 0)."""
        return self.drift_nu is not None and self.t_seconds is not None and self.t_seconds > self.t0

    @property
    def ages(self) -> bool:
        """True when the read happens after ``t0`` with any time model set (drift, retention or faults over time)."""
        late = self.t_seconds is not None and self.t_seconds > self.t0
        return late and (self.drift_nu is not None or self.retention is not None or self.fault_rate > 0)

    @property
    def time_changes(self) -> bool:
        """True when aging moves conductances: drift with ν ≠ 0, retention ≠ (0, 0) or faults, read after ``t0``."""
        if not self.ages:
            return False
        return (self.drift_nu not in (None, (0.0, 0.0)) or self.retention not in (None, (0.0, 0.0))
                or self.fault_rate > 0)  # fmt: skip

    @property
    def decades(self) -> float:
        """``log10(t/t0)`` of the read (0 at ``t0``)."""
        return 0.0 if self.t_seconds is None else math.log10(self.t_seconds / self.t0)

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
                and self.stuck_at_zero == 0 and self.stuck_at_one == 0 and self.read_noise == 0
                and not self.time_changes)
