"""One layer's weights on crossbar sub-arrays: bit slicing, tiling, bit-serial reads, ADC, shift-add.

Units: a cell at level ``r`` conducts ``g_min + r`` (one unit = one level step of
conductance), an input digit ``d`` drives ``d`` units of read voltage, so an ideal
column reads the integer ``sum_i d_i r_i``. Everything is batched: all tiles, slices
and input cycles are one ``bmm``; the ADC and the shift-add are elementwise passes.
"""
from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from .config import CrossbarConfig
from .drift import age, compensation_scale, with_read_noise

__all__ = ["slice_codes", "combine_slices", "adc", "tile_layout", "n_slices", "CrossbarArray"]


def n_slices(bits: int, cell_bits: int) -> int:
    """Cells needed for a ``bits``-bit code at ``cell_bits`` bits per cell."""
    return max(1, math.ceil(bits / cell_bits))


def slice_codes(codes: Tensor, cell_bits: int, slices: int) -> Tensor:
    """Split non-negative integer codes into ``slices`` cell values, LSB first: shape ``[slices, *codes.shape]``."""
    c = codes.long()
    if c.numel() and (int(c.min()) < 0 or int(c.max()) >= 2 ** (cell_bits * slices)):
        raise ValueError(f"codes must lie in 0..{2 ** (cell_bits * slices) - 1} to fit {slices} cells of {cell_bits} bits")
    shifts = (torch.arange(slices, device=c.device) * cell_bits).view(-1, *[1] * c.dim())
    return (c.unsqueeze(0) >> shifts) & (2**cell_bits - 1)


def combine_slices(slices: Tensor, cell_bits: int) -> Tensor:
    """Shift-add cell values (LSB first along dim 0) back into integers."""
    w = (2 ** (cell_bits * torch.arange(slices.shape[0], device=slices.device))).to(slices.dtype)
    return (slices * w.view(-1, *[1] * (slices.dim() - 1))).sum(0)


def adc(x: Tensor, bits: int, lo: Tensor | float, hi: Tensor | float, unit: float = 1.0, transfer: str = "lowbit") -> Tensor:
    """Uniform ADC with ``2^bits`` levels from ``lo``; ``transfer`` says how the step is chosen.

    ``lowbit``: step ``(hi - lo) / (2^bits - 1)`` but never finer than ``unit`` (one
    cell-level current), so integer partial sums read exactly with enough bits.
    ``torchinference`` (TorchInference_RRAM's ``LinearQuantizeOut``): step ``(hi - lo) / 2^bits``,
    no minimum, codes clamped to ``2^bits - 1`` (``hi`` itself is unreachable); where
    ``hi == lo`` the input comes back unchanged. Values outside the range saturate.
    """
    top = 2**bits - 1
    lo_t = torch.as_tensor(lo, dtype=x.dtype, device=x.device)
    hi_t = torch.as_tensor(hi, dtype=x.dtype, device=x.device)
    if transfer == "torchinference":
        step = (hi_t - lo_t) / 2**bits
        flat = step == 0
        code = torch.clamp(torch.round((x - lo_t) / torch.where(flat, torch.ones_like(step), step)), 0, top)
        return torch.where(flat, x, lo_t + code * step)
    if transfer != "lowbit":
        raise ValueError(f"transfer must be 'lowbit' or 'torchinference', got {transfer!r}")
    step = torch.clamp((hi_t - lo_t) / top, min=unit)
    code = torch.clamp(torch.round((x - lo_t) / step), 0, top)
    return lo_t + code * step


def tile_layout(n_rows: int, rows: int, taps: int = 1, mapping: str = "unrolled", drop_remainder: bool = False) -> Tensor:
    """Row index of each (tile, row) slot, -1 where a remainder tile is padded: shape ``[tiles, rows]``.

    Input rows are ordered as ``F.unfold`` orders them (channel major, then kernel tap).
    ``unrolled`` cuts that order into tiles; ``tap`` gives each tap its own tiles of channels.
    ``drop_remainder`` (``tap`` only) leaves out each tap's last ``channels % rows`` channels.
    """
    if n_rows % taps:
        raise ValueError(f"n_rows ({n_rows}) must be a multiple of taps ({taps})")
    idx = torch.arange(n_rows)
    groups = idx.view(n_rows // taps, taps).t() if mapping == "tap" else idx.view(1, n_rows)
    if drop_remainder:
        keep = (groups.shape[1] // rows) * rows
        if keep == 0:
            raise ValueError(f"drop_remainder: {groups.shape[1]} channels per tap fill no sub-array of {rows} rows; keep the layer digital")
        groups = groups[:, :keep]
    pad = (-groups.shape[1]) % rows
    groups = torch.cat([groups, torch.full((groups.shape[0], pad), -1, dtype=torch.long)], dim=1)
    return groups.reshape(-1, rows)


class CrossbarArray(nn.Module):
    """Integer weights ``codes - offset`` (``[K, C]``) programmed into tiled, bit-sliced crossbars.

    ``forward(x)`` takes unsigned integer inputs ``[M, K]`` and returns the read-out of
    ``x @ (codes - offset)`` in integer units: exact when the configuration is ideal.
    """

    g_pos: Tensor
    g_ref: Tensor
    layout: Tensor
    kept: Tensor

    def __init__(self, codes: Tensor, bits: int, offset: int, cfg: CrossbarConfig, *, taps: int = 1,
                 generator: torch.Generator | None = None, drift_generator: torch.Generator | None = None) -> None:  # fmt: skip
        super().__init__()
        if codes.dim() != 2:
            raise ValueError(f"codes must be a [rows, columns] matrix, got shape {tuple(codes.shape)}")
        if not 0 <= offset < 2**bits:
            raise ValueError(f"offset must lie in 0..{2**bits - 1}, got {offset}")
        self.cfg = cfg
        k, c = codes.shape
        self.n_rows, self.n_cols = k, c
        self.register_buffer("layout", tile_layout(k, cfg.rows, taps, cfg.mapping, cfg.drop_remainder))
        kept = torch.zeros(k, dtype=torch.bool)
        kept[self.layout[self.layout >= 0]] = True
        self.register_buffer("kept", kept)  # rows on an array (all unless drop_remainder)
        cb = cfg.cell_bits
        codes = codes.long()
        # The integer the array stores below each code: the offset code, or the midpoint of the code range.
        self.offset: float = (2**bits - 1) / 2 if cfg.dummy == "midpoint" else float(offset)
        if cfg.signed == "dummy":
            self.slices = n_slices(bits, cb)
            pos = slice_codes(codes, cb, self.slices)  # [S, K, C]
            if cfg.dummy == "midpoint":  # an analog level (2^c - 1)/2 in every cell of every slice
                ref = torch.full((self.slices, k, 1), cfg.cell_levels / 2)
            else:
                ref = slice_codes(torch.full((k, 1), offset), cb, self.slices)  # one reference column per slice
        else:
            s = codes - offset
            self.slices = n_slices(max(offset, 2**bits - 1 - offset).bit_length(), cb)
            pos = slice_codes(s.clamp(min=0), cb, self.slices)
            ref = slice_codes((-s).clamp(min=0), cb, self.slices)
        self.register_buffer("g_pos", self._program(self._tile(pos), generator))  # [T, R, S*C]
        self.register_buffer("g_ref", self._program(self._tile(ref), generator))  # [T, R, S*C'] (C' = 1 or C)
        self.drift_scale = 1.0  # global drift compensation factor (1: none)
        if cfg.ages:
            # Time draws come from their own generator so that the chip's variation and faults stay the same chip.
            ref_read = self._reference_read() if cfg.drift_compensation else None
            self.g_pos.copy_(age(self.g_pos, cfg, drift_generator))
            self.g_ref.copy_(age(self.g_ref, cfg, drift_generator))
            if ref_read is not None:
                self.drift_scale = compensation_scale(ref_read, self._reference_read())

    def _reference_read(self) -> Tensor:
        """The array's read-out of the one-hot inputs ``eye(K)`` (aihwkit's drift reference read), noise-free."""
        return self._product(torch.eye(self.n_rows, dtype=torch.uint8), 1, self.g_pos, self.g_ref)

    def _tile(self, cells: Tensor) -> Tensor:
        # [S, K, C] -> [T, R, S*C]; padded rows hold level 0 (their inputs are always 0).
        s, _, c = cells.shape
        padded = torch.cat([cells, torch.zeros(s, 1, c, dtype=cells.dtype)], dim=1)
        tiles = padded[:, self.layout]  # [S, T, R, C]
        return tiles.permute(1, 2, 0, 3).reshape(self.layout.shape[0], self.layout.shape[1], s * c)

    def _program(self, levels: Tensor, generator: torch.Generator | None) -> Tensor:
        """Conductances (in level units) of cells programmed to ``levels``, with faults and variation."""
        cfg = self.cfg
        lv = levels.to(torch.float32)
        if cfg.stuck_at_zero or cfg.stuck_at_one:
            u = torch.rand(lv.shape, generator=generator)
            lv = torch.where(u < cfg.stuck_at_zero, 0.0, lv)
            lv = torch.where((u >= cfg.stuck_at_zero) & (u < cfg.stuck_at_zero + cfg.stuck_at_one), float(cfg.cell_levels), lv)
        g = lv + cfg.g_min
        if cfg.variation:
            g = (g * (1 + cfg.variation * torch.randn(g.shape, generator=generator))).clamp_min(0.0)
        return g

    @property
    def tiles(self) -> int:
        """Number of sub-arrays (tiles of ``rows`` rows)."""
        return int(self.layout.shape[0])

    def _read(self, psum: Tensor) -> Tensor:
        """ADC read-out, in place, of column sums ``[T, Z, M, S, C]`` (range per tile, cycle and slice)."""
        cfg = self.cfg
        if cfg.adc_bits is None:
            return psum
        if cfg.adc_range == "dynamic":
            lo = psum.amin(dim=(2, 4), keepdim=True)
            hi = psum.amax(dim=(2, 4), keepdim=True)
        else:
            full = cfg.rows * (2**cfg.input_bits_per_cycle - 1) * (cfg.cell_levels + cfg.g_min)
            # A difference column swings both ways; a plain column reads 0..full.
            lo = torch.tensor(-full if cfg.adc_input == "difference" else 0.0, dtype=psum.dtype)
            hi = torch.tensor(full, dtype=psum.dtype)
        if cfg.adc_transfer == "torchinference":
            return adc(psum, cfg.adc_bits, lo, hi, transfer="torchinference")
        # adc(), without temporaries: these tensors are the largest of the simulation.
        top = 2**cfg.adc_bits - 1
        # The one-level minimum step keeps integer column sums exact; an aged array's sums are off that
        # grid (a drifted level reads 0.6, not 1), so there the ADC spreads its levels over the range alone.
        step = torch.clamp((hi - lo) / top, min=1e-12 if cfg.time_changes else 1.0)
        return psum.sub_(lo).div_(step).round_().clamp_(0, top).mul_(step).add_(lo)

    def _digits(self, x: Tensor, x_bits: int) -> Tensor:
        """Input digits per read cycle, laid out for the tiles: ``[T, Z*M, R]`` (LSB cycle first)."""
        t, r = self.layout.shape
        m, k = x.shape
        b = self.cfg.input_bits_per_cycle
        z = n_slices(x_bits, b)
        if x.numel() and (float(x.min()) < 0 or float(x.max()) >= 2**x_bits):
            raise ValueError(f"inputs must be integers in 0..{2**x_bits - 1}")
        codes = x.to(torch.uint8 if x_bits <= 8 else torch.int32)
        codes = torch.cat([codes, codes.new_zeros(m, 1)], dim=1)  # column k: the zero input of padded rows
        if self.cfg.mapping == "unrolled":
            codes = torch.nn.functional.pad(codes[:, :k], (0, t * r - k))
        else:
            codes = codes.index_select(1, torch.where(self.layout < 0, k, self.layout).flatten())
        codes = codes.view(m, t, r).permute(1, 0, 2).contiguous().unsqueeze(1)  # [T, 1, M, R]
        shifts = (torch.arange(z, device=x.device) * b).to(codes.dtype).view(1, z, 1, 1)
        digits = (codes >> shifts) & (2**b - 1)  # [T, Z, M, R]
        return digits.to(self.g_pos.dtype).reshape(t, z * m, r)

    def forward(self, x: Tensor, x_bits: int) -> Tensor:
        """Bit-serial crossbar product of unsigned integer inputs ``[M, K]`` (``x_bits`` bits) with the weights."""
        sigma = self.cfg.read_noise
        y = self._product(x, x_bits, with_read_noise(self.g_pos, sigma), with_read_noise(self.g_ref, sigma))
        return y * self.drift_scale if self.drift_scale != 1.0 else y

    def _product(self, x: Tensor, x_bits: int, g_pos: Tensor, g_ref: Tensor) -> Tensor:
        """The read-out of ``x`` through conductances ``g_pos`` / ``g_ref`` (ADC, shift-add), before compensation."""
        cfg = self.cfg
        m = x.shape[0]
        t = self.layout.shape[0]
        z, s = n_slices(x_bits, cfg.input_bits_per_cycle), self.slices
        xt = self._digits(x, x_bits)
        if cfg.adc_input == "difference":
            # One ADC per column on the analog difference (the reference column broadcasts).
            raw = torch.bmm(xt, g_pos).view(t, z, m, s, -1) - torch.bmm(xt, g_ref).view(t, z, m, s, -1)
            diff = self._read(raw).sum(0).double()
        else:
            # The ADC reads every column, the reference columns too; the tiles are added after it.
            pos = self._read(torch.bmm(xt, g_pos).view(t, z, m, s, -1)).sum(0)
            ref = self._read(torch.bmm(xt, g_ref).view(t, z, m, s, -1)).sum(0)
            diff = (pos - ref).double()  # [Z, M, S, C]
        # Shift-add in float64: the integer sums of wide layers pass float32's 2^24.
        shift = 2.0 ** (cfg.cell_bits * torch.arange(s, device=x.device, dtype=torch.float64))
        cycle = 2.0 ** (cfg.input_bits_per_cycle * torch.arange(z, device=x.device, dtype=torch.float64))
        return torch.einsum("zmsc,zs->mc", diff, cycle[:, None] * shift[None, :])
