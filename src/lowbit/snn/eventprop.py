"""EventProp: exact gradients of a discretised spiking network by an adjoint pass backwards in time.

The network (:class:`EventPropSNN`): input spikes -> LIF layer(s) with exponential-current
synapses (optionally recurrent) -> leaky-integrator readout. One step ``k`` of a hidden layer::

    I_k   = alpha I_{k-1} + W z^in_k (+ R z_{k-1})       exponential synapse
    U_k   = beta V_{k-1} + I_k                           membrane before the threshold test
    S_k   = [U_k >= thr]
    V_k   = U_k - thr (capped below thr) where S_k, else U_k   (``reset="zero"``: 0 where S_k)
    phi_k = (U_k - thr) / (U_k - V_{k-1})                how early in the step it crossed (0..1)
    z_k   = S_k phi_k + S_{k-1} (1 - phi_{k-1})          what the layer sends on at step k

A spike that crossed the threshold a fraction ``phi`` of a step before ``t_k`` is delivered
linearly interpolated between the two grid points around ``t_k - phi dt + dt`` (one step of
synaptic delay): ``phi`` at step ``k``, ``1 - phi`` at step ``k + 1``. Earlier spikes thus act
earlier, the loss is a smooth function of every weight while the spike pattern stays the same,
and the gradient of *this* discretisation is exact: the tests compare it with finite differences
and with autograd through :func:`reference_forward` (BPTT without a surrogate). The readout is
``Io_k = alpha_o Io_{k-1} + W_out z_k``, ``Vo_k = beta_o Vo_{k-1} + Io_k``, read out over time
as mean / sum / max / last / exp (``sum_k e^{-k/T} Vo_k / T``, mlGeNN's ``AvgVarExpWeight``;
the default, because it rewards an early right answer and trains best with exact gradients).
With ``readout="ttfs"`` the output is a spiking LIF population instead and the logits are minus
each output neuron's first crossing time ``k - phi`` (a neuron that stays silent reads as firing
after the trial, the later the lower its peak membrane, so that it gets a gradient); its loss is
Wunderlich & Pehle's ``CE(softmax(-t/tau0)) + alpha (e^{t_y/tau1} - 1)`` (``eventprop_loss(..., "ttfs")``).

:class:`EventPropFunction` runs the forward without autograd, keeping only each spike's
index and the three values its jump needs (``phi``, ``V_{k-1}``, ``U_k``) and the input's
spikes: memory grows with the number of spikes, not with time steps x neurons. Its backward
runs the adjoint ``(lambda_I, lambda_V)`` of every layer from ``T-1`` down to 0: linear decay
between spikes, a jump at each recorded spike, and weight gradients from the adjoint of the
synaptic current and the spike signal of the presynaptic layer (rebuilt from the records).
Both passes go through time in chunks of ``chunk_steps`` steps, layer by layer within a chunk,
so that a layer's input (forward) and its weight gradient (backward) are one matrix product per
chunk and the step loops are a handful of elementwise kernels; only a chunk is ever dense.

Quantization-aware training: with :meth:`EventPropSNN.quantize_weights` the forward pass uses
``Q(w)`` (refitted to the float shadow weights at every forward pass, i.e. every batch, by
:class:`~lowbit.snn.quant.WeightQuant`; one scale per connection by default, as mlGeNN's
EventProp compiler) and the weight gradient passes straight through to the shadow weights.
Two knobs choose between mlGeNN's QAT (PR #88) and lowbit's:

- ``error_routing``: mlGeNN sends the adjoint errors to the presynaptic layer through the
  float shadow weights ``gBack`` (``addToPre(gBack (lambda_V - lambda_I))``) while the forward
  pass uses ``g = Q(gBack)``: ``"float"``. lowbit's default, ``"quantized"``, routes them
  through ``Q(w)``, the weights the forward pass used (the exact gradient of the quantized
  network, up to the straight-through estimator). The weight gradients themselves
  (``-lambda_I`` times the presynaptic spikes) involve no weight, so only the errors of the
  layers below a quantized connection differ. Without quantization the two are identical.
- ``gradient_timing``: mlGeNN runs the backward pass of batch ``n`` interleaved with the
  forward pass of batch ``n + 1``, so the optimizer step at the end of batch ``n`` applies the
  gradient of batch ``n - 1``: the forward weights ``Q(gBack)`` are current, the *gradient* is
  one batch late (and validation or a checkpoint sees weights one update behind). ``"mlgenn"``
  reproduces that (:func:`~lowbit.snn.eventprop_train.delay_gradients`, used by
  :func:`~lowbit.snn.eventprop_train.train_eventprop`); ``"same_batch"`` (lowbit's default)
  applies each batch's gradient at its own step.
"""
from __future__ import annotations

import math
from typing import Sequence

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from .neurons import READOUTS
from .neurons import decay, readout_weights
from .base import SpikingNetwork

__all__ = ["EventPropSNN", "EventPropFunction", "reference_forward", "eventprop_loss", "EP_READOUTS", "EP_LOSSES",
           "ERROR_ROUTINGS", "GRADIENT_TIMINGS"]

EP_READOUTS = (*READOUTS, "ttfs")  # ttfs: a spiking output read out by its first-spike times
EP_LOSSES = ("ce", "mse", "ttfs")
EP_RESETS = ("subtract", "zero")
ERROR_ROUTINGS = ("quantized", "float")  # errors to the layer below through Q(w) (lowbit) or the float w (mlGeNN)
GRADIENT_TIMINGS = ("same_batch", "mlgenn")  # each batch's gradient at its own step, or one batch late (mlGeNN)
_CAP_MARGIN = 1e-2


class _Cfg:
    """Static description of the network that the autograd function needs (no tensors)."""

    def __init__(self, n_layers: int, recurrent: bool, alpha: float, beta: float, thr: float,
                 out_alpha: float, out_beta: float, readout: str, reset: str = "subtract", chunk: int = 32) -> None:
        self.chunk = chunk  # time steps held dense at once (forward and backward)
        self.n_layers, self.recurrent, self.subtract = n_layers, recurrent, reset == "subtract"
        self.cap = thr * (1.0 - _CAP_MARGIN)  # at most one spike per step: the residue stays below threshold
        self.alpha, self.beta, self.thr = alpha, beta, thr
        self.out_alpha, self.out_beta, self.readout = out_alpha, out_beta, readout
        self.ttfs = readout == "ttfs"  # spiking output; logits = -(first-spike time)


def _split(ws: Sequence[Tensor], cfg: _Cfg) -> tuple[list[Tensor], list[Tensor | None], Tensor]:
    """(feed-forward weights per layer, recurrent weights per layer or None, readout weight)."""
    step = 2 if cfg.recurrent else 1
    ff = [ws[step * k] for k in range(cfg.n_layers)]
    rec = [ws[step * k + 1] if cfg.recurrent else None for k in range(cfg.n_layers)]
    return ff, rec, ws[-1]


class _Spikes:
    """The spikes of one population, compact: flat indices into [time, batch, neurons], sorted, and (phi, V_{k-1}, U_k)."""

    def __init__(self, flat: Tensor, vals: Tensor, b: int, n: int) -> None:
        self.flat, self.vals, self.b, self.n = flat, vals, b, n

    def window(self, s: int, e: int) -> tuple[Tensor, Tensor]:
        """Spikes of steps ``s <= k < e`` (clipped to >= 0): flat indices relative to step ``s``, and their values."""
        per = self.b * self.n
        lo, hi = torch.searchsorted(self.flat, torch.tensor([max(s, 0) * per, max(e, 0) * per], device=self.flat.device)).tolist()
        return self.flat[lo:hi] - s * per, self.vals[lo:hi]

    def dense(self, s: int, e: int, col: int, dtype: torch.dtype) -> Tensor:
        """Column ``col`` of the values as a dense [e - s, batch, neurons] tensor (0 where no spike)."""
        out = torch.zeros(e - s, self.b, self.n, dtype=dtype, device=self.flat.device)
        f, v = self.window(s, e)
        out.view(-1)[f] = v[:, col]
        return out

    def chunk(self, s: int, e: int, thr: float, dtype: torch.dtype) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
        """What the backward pass needs of steps ``s..e-1``, dense, from one look-up of the records.

        Returns the spike signal ``z`` over steps ``s-1..e-1`` (``z_k = phi_k + (1 - phi_{k-1})`` at
        the spikes of ``k-1``), then for steps ``s..e-1``: where the spikes are (boolean),
        ``dphi/dU_k = (thr - V_{k-1}) / (U_k - V_{k-1})^2``, ``dphi/dV_{k-1} = (U_k - thr) / (U_k - V_{k-1})^2``
        and ``U_k - thr`` (all 0 off the spikes).
        """
        f, v = self.window(s - 2, e)
        shape = (e - s + 2, self.b, self.n)
        spk = torch.zeros(shape, dtype=torch.bool, device=self.flat.device)
        spk.view(-1)[f] = True

        def put(vals: Tensor) -> Tensor:
            out = torch.zeros(shape, dtype=dtype, device=self.flat.device)
            out.view(-1)[f] = vals
            return out

        phi, vb, ub = v.unbind(1)
        den2 = (ub - vb) ** 2
        phi_d = put(phi)
        z = phi_d[1:] + (spk.to(dtype) - phi_d)[:-1]
        return z, spk[2:], put((thr - vb) / den2)[2:], put((ub - thr) / den2)[2:], put(ub - thr)[2:]

    def mask(self, s: int, e: int) -> Tensor:
        """Where the spikes of steps ``s..e-1`` are, as a dense boolean [e - s, batch, neurons]."""
        out = torch.zeros(e - s, self.b, self.n, dtype=torch.bool, device=self.flat.device)
        out.view(-1)[self.window(s, e)[0]] = True
        return out


def _compact(u: Tensor, v_prev: Tensor, thr: float, s: int, mask: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """The spikes of a chunk of steps starting at ``s`` from its dense U and V_{k-1}: (flat indices, (phi, V_{k-1}, U))."""
    spk = u >= thr if mask is None else mask
    flat = spk.view(-1).nonzero().squeeze(1)
    ub, vb = u.view(-1)[flat], v_prev.view(-1)[flat]
    phi = (ub - thr) / (ub - vb)
    return flat + s * u[0].numel(), torch.stack([phi, vb, ub], 1)


@torch.no_grad()
def _run(x: Tensor, cfg: _Cfg, ws: Sequence[Tensor]) -> tuple[Tensor, Tensor, list[_Spikes]]:
    """Forward without autograd: (readout, argmax step, the spikes of every hidden layer (and the TTFS output)).

    Time runs in chunks of ``cfg.chunk`` steps, one layer after the other within a chunk: a layer's
    input for the whole chunk is one matrix product, the step loop is a few elementwise kernels,
    and the chunk's spikes are compacted once. Dense state lives only for one chunk.
    """
    ff, rec, w_out = _split(ws, cfg)
    b, t, _ = x.shape
    dt, dev = ws[0].dtype, ws[0].device
    xt = x.to(dt).transpose(0, 1)  # [time, batch, inputs]
    thr, n_l = cfg.thr, cfg.n_layers
    zero = torch.zeros((), dtype=dt, device=dev)
    st = [{k: torch.zeros(b, w.shape[0], dtype=dt, device=dev) for k in ("I", "V", "late", "z")} for w in ff]
    recs: list[list[tuple[Tensor, Tensor]]] = [[] for _ in range(n_l + cfg.ttfs)]
    n_out = w_out.shape[0]
    io = torch.zeros(b, n_out, dtype=dt, device=dev)
    vo = torch.zeros_like(io)
    rw = None if cfg.ttfs else readout_weights(t, cfg.readout, dt, dev)
    acc = torch.zeros_like(vo) if rw is not None else torch.full_like(vo, -math.inf)
    if cfg.ttfs:
        done = torch.zeros(b, n_out, dtype=torch.bool, device=dev)
        vmax = torch.full_like(vo, -math.inf)  # for the neurons that stay silent
    arg = torch.zeros(b, n_out, dtype=torch.long, device=dev)
    for s in range(0, t, cfg.chunk):
        e = min(s + cfg.chunk, t)
        c = e - s
        h = xt[s:e]
        for l in range(n_l):
            n, sl, r = ff[l].shape[0], st[l], rec[l]
            a_all = (h.reshape(c * b, -1) @ ff[l].t()).view(c, b, n)
            z_all, u_all, v_all = (torch.empty(c, b, n, dtype=dt, device=dev) for _ in range(3))
            I, V, late, z = sl["I"], sl["V"], sl["late"], sl["z"]
            for j in range(c):
                a = a_all[j] if r is None else torch.addmm(a_all[j], z, r.t())
                I = torch.add(a, I, alpha=cfg.alpha)
                v_all[j] = V
                u = torch.add(I, V, alpha=cfg.beta, out=u_all[j])
                spk = u >= thr
                over = u - thr
                phi = torch.where(spk, over / (u - V), zero)
                z = torch.add(late, phi, out=z_all[j])
                late = torch.where(spk, 1.0 - phi, zero)
                V = torch.where(spk, over.clamp_(max=cfg.cap), u) if cfg.subtract else u.masked_fill(spk, 0.0)
            sl.update(I=I, V=V, late=late, z=z)
            recs[l].append(_compact(u_all, v_all, thr, s))
            h = z_all
        a_out = (h.reshape(c * b, -1) @ w_out.t()).view(c, b, n_out)
        if cfg.ttfs:
            u_all, v_all = torch.empty_like(a_out), torch.empty_like(a_out)
            first_all = torch.empty(c, b, n_out, dtype=torch.bool, device=dev)
        for j in range(c):
            k = s + j
            io = torch.add(a_out[j], io, alpha=cfg.out_alpha)
            if cfg.ttfs:  # output LIF: each neuron's first crossing; later ones do not reach the loss
                v_all[j] = vo
                vo = torch.add(io, vo, alpha=cfg.out_beta, out=u_all[j])
                better = vo > vmax
                vmax = torch.where(better, vo, vmax)
                arg.masked_fill_(better, k)
                first = torch.logical_and(vo >= thr, ~done, out=first_all[j])
                acc = torch.where(first, (vo - thr) / (vo - v_all[j]) - k, acc)  # -(crossing time k - phi)
                done |= first
                vo = vo.masked_fill(done, 0.0)
            else:
                vo = torch.add(io, vo, alpha=cfg.out_beta)
                if rw is not None:
                    acc.add_(vo, alpha=float(rw[k]))
                else:
                    better = vo > acc
                    acc = torch.where(better, vo, acc)
                    arg.masked_fill_(better, k)
        if cfg.ttfs:
            recs[n_l].append(_compact(u_all, v_all, thr, s, first_all))
    if cfg.ttfs:  # silent neurons: the pseudo-time of _silent_logit, its gradient through V at its peak
        acc = torch.where(done, acc, _silent_logit(vmax, t, thr))
        arg.masked_fill_(done, -1)
    spikes = []
    for l, rl in enumerate(recs):
        n = ff[l].shape[0] if l < n_l else n_out
        spikes.append(_Spikes(torch.cat([f for f, _ in rl]), torch.cat([v for _, v in rl]), b, n))
    return acc, arg, spikes


class EventPropFunction(torch.autograd.Function):
    """Forward: the discretised network without autograd, recording spikes; backward: the adjoint pass.

    ``ws`` may be followed by as many weights again, in the same order: those route the errors to
    the layer below (mlGeNN's float ``gBack``; they get no gradient); without them the errors go
    through the weights the forward used.
    """

    @staticmethod
    def forward(ctx, x: Tensor, cfg: _Cfg, *ws: Tensor) -> Tensor:  # type: ignore[override]
        n_w = cfg.n_layers * (2 if cfg.recurrent else 1) + 1
        back = ws[n_w:] if len(ws) == 2 * n_w else None
        ws = ws[:n_w]
        acc, arg, spikes = _run(x, cfg, ws)
        ctx.cfg, ctx.t, ctx.b = cfg, x.shape[1], x.shape[0]
        # the input is kept as its spikes only: flat indices into [time, batch, inputs] and values
        x_tb = x.detach().to(ws[0].dtype).transpose(0, 1).reshape(-1)
        in_flat = x_tb.nonzero().squeeze(1)
        ctx.n_in = x.shape[2]
        flat = [tensor for sp in spikes for tensor in (sp.flat, sp.vals)]
        back = [b.detach() for b in back] if back is not None else []
        ctx.save_for_backward(in_flat, x_tb[in_flat], arg, *flat, *ws, *back)
        ctx.n_flat, ctx.n_back = len(flat), len(back)
        return acc

    @staticmethod
    def backward(ctx, g: Tensor):  # type: ignore[override]
        cfg: _Cfg = ctx.cfg
        t, b, n_l = ctx.t, ctx.b, cfg.n_layers
        saved = ctx.saved_tensors
        in_flat, in_val, arg = saved[:3]
        flat = saved[3 : 3 + ctx.n_flat]
        ws = saved[3 + ctx.n_flat : len(saved) - ctx.n_back]
        ff, rec, w_out = _split(ws, cfg)
        # the weights that carry the errors down: the forward's, or mlGeNN's float ones
        r_ff, r_rec, r_out = _split(saved[len(saved) - ctx.n_back :], cfg) if ctx.n_back else (ff, rec, w_out)
        g = g.to(w_out.dtype)
        dt, dev = w_out.dtype, w_out.device
        sizes = [w.shape[0] for w in ff] + [w_out.shape[0]]
        spikes = [_Spikes(flat[2 * l], flat[2 * l + 1], b, sizes[l]) for l in range(len(flat) // 2)]
        x_in = _Spikes(in_flat, in_val[:, None], b, ctx.n_in)
        thr, n_out = cfg.thr, w_out.shape[0]
        # gradients accumulate transposed ([pre, post] += z^T lambda), one matrix product per chunk
        d_ff = [torch.zeros(w.shape[1], w.shape[0], dtype=dt, device=dev) for w in ff]
        d_rec = [torch.zeros(r.shape[1], r.shape[0], dtype=dt, device=dev) if r is not None else None for r in rec]
        d_out = torch.zeros(w_out.shape[1], n_out, dtype=dt, device=dev)
        # adjoint state carried from step k+1: lambda_I, dL/dV_k, dL/dz_{k+1} per layer
        lam_next = [torch.zeros(b, n, dtype=dt, device=dev) for n in sizes[:n_l]]
        p_v = [torch.zeros_like(v) for v in lam_next]
        gz_next = [torch.zeros_like(v) for v in lam_next]
        lam_vo = torch.zeros_like(g)
        lam_io = torch.zeros_like(g)
        p_vo = torch.zeros_like(g)
        rw = None if cfg.ttfs else readout_weights(t, cfg.readout, dt, dev)
        starts = list(range(0, t, cfg.chunk))
        for s in reversed(starts):
            e = min(s + cfg.chunk, t)
            c = e - s
            # per layer: z over steps s-1..e-1, and the spikes and jump terms of steps s..e-1
            chunks = [spikes[l].chunk(s, e, thr, dt) for l in range(n_l)]
            zs = [ch[0] for ch in chunks]
            lam_o = torch.empty(c, b, n_out, dtype=dt, device=dev)
            if cfg.ttfs:  # the output LIF's adjoint, with dL/dphi = dL/dlogit at each neuron's first spike
                _, first, c1, c2, _ = spikes[n_l].chunk(s, e, thr, dt)
                keep = (~first).to(dt)
                gphi = g * first.to(dt)
                g_peak = g * (t / thr)  # d logit / d V_peak of a silent neuron (see _silent_logit)
                for j in range(c - 1, -1, -1):
                    lam_u = torch.addcmul(p_vo * keep[j], gphi[j], c1[j])
                    lam_u = torch.where(arg == s + j, lam_u + g_peak, lam_u)
                    lam_io = torch.add(lam_u, lam_io, alpha=cfg.out_alpha, out=lam_o[j])
                    p_vo = torch.addcmul(lam_u * cfg.out_beta, gphi[j], c2[j])
            else:
                for j in range(c - 1, -1, -1):
                    k = s + j
                    drive = g * float(rw[k]) if rw is not None else g * (arg == k)
                    lam_vo = torch.add(drive, lam_vo, alpha=cfg.out_beta)
                    lam_io = torch.add(lam_vo, lam_io, alpha=cfg.out_alpha, out=lam_o[j])
            d_out.addmm_(zs[-1][1:].reshape(c * b, -1).t(), lam_o.reshape(c * b, -1))
            lam_up, w_up = lam_o, r_out
            for l in range(n_l - 1, -1, -1):
                n, r = sizes[l], r_rec[l]
                _, spk, c1, c2, over = chunks[l]
                if cfg.subtract:  # V_k = min(U_k - thr, cap) keeps dL/dV_k where the cap is not hit
                    keep = torch.where(spk, (over < cfg.cap).to(dt), 1.0)
                else:  # reset to zero: V_k does not depend on U_k at a spike
                    keep = (~spk).to(dt)
                gz_all = (lam_up.reshape(c * b, -1) @ w_up).view(c, b, n)  # dL/dz_k from the layer above
                lam = torch.empty(c, b, n, dtype=dt, device=dev)
                la, pv, gzn = lam_next[l], p_v[l], gz_next[l]
                for j in range(c - 1, -1, -1):
                    gz = gz_all[j] if r is None else torch.addmm(gz_all[j], la, r)
                    gphi = gz - gzn  # phi_k enters z_k with +1 and z_{k+1} with -1 (0 off the spikes: c1, c2 are 0)
                    lam_u = torch.addcmul(pv * keep[j], gphi, c1[j])
                    la = torch.add(lam_u, la, alpha=cfg.alpha, out=lam[j])
                    pv = torch.addcmul(lam_u * cfg.beta, gphi, c2[j])
                    gzn = gz
                lam_next[l], p_v[l], gz_next[l] = la, pv, gzn
                pre = x_in.dense(s, e, 0, dt) if l == 0 else zs[l - 1][1:]
                d_ff[l].addmm_(pre.reshape(c * b, -1).t(), lam.reshape(c * b, -1))
                if r is not None:
                    d_rec[l].addmm_(zs[l][:-1].reshape(c * b, -1).t(), lam.reshape(c * b, -1))  # type: ignore[union-attr]
                lam_up, w_up = lam, r_ff[l]
        grads: list[Tensor] = []
        for l in range(n_l):
            grads.append(d_ff[l].t().contiguous())
            if rec[l] is not None:
                grads.append(d_rec[l].t().contiguous())  # type: ignore[union-attr]
        grads.append(d_out.t().contiguous())
        return (None, None, *grads, *([None] * ctx.n_back))


def _silent_logit(v_peak: Tensor, t: int, thr: float) -> Tensor:
    """The logit of an output neuron that never fires: as if it fired at ``T + T (thr - V_peak) / thr``.

    Later than any real spike, and the further its membrane stayed below threshold, the later: the
    loss can then pull a silent right answer up towards firing (a real first spike has no gradient
    to give when there is none), instead of only pushing the other neurons out of the trial.
    """
    return -float(t) * (2.0 - v_peak / thr)


class _Routed(torch.autograd.Function):
    """``h @ w.T`` whose gradient to ``h`` goes through ``back`` instead of ``w`` (mlGeNN's float error routing)."""

    @staticmethod
    def forward(ctx, h: Tensor, w: Tensor, back: Tensor) -> Tensor:  # type: ignore[override]
        ctx.save_for_backward(h, back)
        return h @ w.t()

    @staticmethod
    def backward(ctx, g: Tensor):  # type: ignore[override]
        h, back = ctx.saved_tensors
        return g @ back, g.t() @ h, None


def _mm(h: Tensor, w: Tensor, back: Tensor | None) -> Tensor:
    return h @ w.t() if back is None else _Routed.apply(h, w, back.detach())


def reference_forward(x: Tensor, cfg: _Cfg, ws: Sequence[Tensor], back: Sequence[Tensor] | None = None) -> Tensor:
    """The same discretisation with autograd through every step (hard spikes, exact timing terms): BPTT.

    ``back`` (as in :class:`EventPropFunction`): weights that route the errors to the layer below.
    """
    ff, rec, w_out = _split(ws, cfg)
    b_ff, b_rec, b_out = _split(back, cfg) if back is not None else ([None] * cfg.n_layers, [None] * cfg.n_layers, None)
    b, t, _ = x.shape
    x = x.to(ff[0].dtype)
    I = [x.new_zeros(b, w.shape[0]) for w in ff]
    V = [x.new_zeros(b, w.shape[0]) for w in ff]
    z_prev = [x.new_zeros(b, w.shape[0]) for w in ff]
    late = [x.new_zeros(b, w.shape[0]) for w in ff]
    io = x.new_zeros(b, w_out.shape[0])
    vo = io
    vos = []
    logit = torch.zeros_like(io)  # TTFS: -(first-spike time)
    peaks = []
    done = torch.zeros(io.shape, dtype=torch.bool, device=io.device)
    for k in range(t):
        h = x[:, k]
        for l in range(cfg.n_layers):
            a = _mm(h, ff[l], b_ff[l])
            if rec[l] is not None:
                a = a + _mm(z_prev[l], rec[l], b_rec[l])
            I[l] = cfg.alpha * I[l] + a
            u = cfg.beta * V[l] + I[l]
            spk = (u >= cfg.thr).detach()
            den = torch.where(spk, u - V[l], torch.ones_like(u))  # safe: no 0/0 where nothing spikes
            phi = torch.where(spk, (u - cfg.thr) / den, torch.zeros_like(u))
            z = late[l] + phi
            late[l] = torch.where(spk, 1.0 - phi, torch.zeros_like(u))
            if cfg.subtract:
                V[l] = torch.where(spk, torch.clamp(u - cfg.thr, max=cfg.cap), u)
            else:
                V[l] = torch.where(spk, torch.zeros_like(u), u)
            z_prev[l] = z
            h = z
        io = cfg.out_alpha * io + _mm(h, w_out, b_out)
        vo_before = vo
        vo = cfg.out_beta * vo + io
        if cfg.ttfs:
            peaks.append(vo)
            first = ((vo >= cfg.thr) & ~done).detach()
            den = torch.where(first, vo - vo_before, torch.ones_like(vo))
            logit = torch.where(first, (vo - cfg.thr) / den - k, logit)
            done = done | first
            vo = torch.where(done, torch.zeros_like(vo), vo)
        vos.append(vo)
    if cfg.ttfs:
        return torch.where(done, logit, _silent_logit(torch.stack(peaks, 1).amax(1), t, cfg.thr))
    tr = torch.stack(vos, 1)
    rw = readout_weights(t, cfg.readout, tr.dtype, tr.device)
    if rw is None:
        return tr.amax(1)
    return (tr * rw[None, :, None]).sum(1)


def eventprop_loss(logits: Tensor, y: Tensor, loss: str = "ce", *, tau0: float = 2.0, tau1: float = 20.0,
                   ttfs_alpha: float = 0.01) -> Tensor:
    """Loss of the readout: cross-entropy, mean squared error to one-hot labels, or ``ttfs``.

    ``ttfs`` (Wunderlich & Pehle 2021) is for the first-spike readout, whose logits are
    ``-t`` (first-spike times in steps): ``CE(softmax(-t / tau0)) + ttfs_alpha (e^{t_y / tau1} - 1)``,
    the second term pulling the right neuron's spike earlier.
    """
    if loss not in EP_LOSSES:
        raise ValueError(f"loss must be one of {EP_LOSSES}, got {loss!r}")
    if loss == "ce":
        return F.cross_entropy(logits, y)
    if loss == "ttfs":
        t_y = -logits.gather(1, y[:, None]).squeeze(1)
        return F.cross_entropy(logits / tau0, y) + ttfs_alpha * torch.expm1(t_y / tau1).mean()
    return F.mse_loss(logits, F.one_hot(y, logits.shape[1]).to(logits.dtype))


class EventPropSNN(SpikingNetwork):
    """LIF network (exponential synapses, optional recurrence) with a leaky-integrator readout, trained by EventProp.

    ``method="bptt"`` runs the same discretisation through autograd instead (exact, memory per step).
    ``chunk_steps`` time steps are held dense at once while the forward and backward passes run
    (transient memory ``chunk_steps x batch x neurons``; what is kept for the backward pass is the
    spikes only); the result does not depend on it.

    Weight QAT (:meth:`quantize_weights`, one scale per connection by default as in mlGeNN's
    EventProp compiler): ``error_routing="quantized"`` (default) sends the errors to the layer
    below through ``Q(w)``, ``"float"`` through the float shadow weights (mlGeNN's ``gBack``);
    ``gradient_timing="same_batch"`` (default) applies each batch's gradient at its own step,
    ``"mlgenn"`` one batch late (``train_eventprop``; see the module docstring for mlGeNN's exact behaviour).
    """

    # class defaults: models pickled before these options existed read as lowbit's behaviour
    error_routing: str = "quantized"
    gradient_timing: str = "same_batch"
    default_scope = "connection"  # lowbit.quantize's scope when the config names none (mlGeNN's EventProp: per connection)

    def __init__(
        self,
        n_in: int,
        n_hidden: int | Sequence[int],
        n_out: int,
        *,
        recurrent: bool = False,
        tau_mem: float = 20.0,
        tau_syn: float = 5.0,
        dt: float = 1.0,
        threshold: float = 1.0,
        reset: str = "subtract",
        readout: str = "exp",
        out_tau_mem: float | None = None,
        out_tau_syn: float | None = None,
        init_scale: float = 1.0,
        init_mean: float = 0.0,
        out_init_scale: float = 1.0,
        method: str = "eventprop",
        chunk_steps: int = 32,
        error_routing: str = "quantized",
        gradient_timing: str = "same_batch",
        seed: int = 0,
        dtype: torch.dtype = torch.float32,
    ) -> None:
        super().__init__(n_in, n_hidden, n_out)
        hidden = self.sizes[1:-1]
        if readout not in EP_READOUTS:
            raise ValueError(f"readout must be one of {EP_READOUTS}, got {readout!r}")
        if reset not in EP_RESETS:
            raise ValueError(f"reset must be one of {EP_RESETS}, got {reset!r}")
        if method not in ("eventprop", "bptt"):
            raise ValueError(f"method must be 'eventprop' or 'bptt', got {method!r}")
        if error_routing not in ERROR_ROUTINGS:
            raise ValueError(f"error_routing must be one of {ERROR_ROUTINGS}, got {error_routing!r}")
        if gradient_timing not in GRADIENT_TIMINGS:
            raise ValueError(f"gradient_timing must be one of {GRADIENT_TIMINGS}, got {gradient_timing!r}")
        if not (isinstance(threshold, (int, float)) and math.isfinite(threshold) and threshold > 0):
            raise ValueError(f"threshold must be a positive number, got {threshold!r}")
        for name, v in (("init_scale", init_scale), ("init_mean", init_mean), ("out_init_scale", out_init_scale)):
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
                raise ValueError(f"{name} must be a finite number, got {v!r}")
        if isinstance(chunk_steps, bool) or not isinstance(chunk_steps, int) or chunk_steps < 1:
            raise ValueError(f"chunk_steps must be a positive int, got {chunk_steps!r}")
        beta = decay(None, tau_mem, dt, "beta", "tau_mem")
        alpha = decay(None, tau_syn, dt, "alpha", "tau_syn")
        out_beta = decay(None, tau_mem if out_tau_mem is None else out_tau_mem, dt, "out_beta", "out_tau_mem")
        if out_tau_syn is not None:
            out_alpha = decay(None, out_tau_syn, dt, "out_alpha", "out_tau_syn")
        else:  # a leaky-integrator readout takes the current directly; a spiking (TTFS) one has the hidden synapses
            out_alpha = alpha if readout == "ttfs" else 0.0
        self.cfg = _Cfg(len(hidden), bool(recurrent), alpha, beta, float(threshold), out_alpha, out_beta, readout, reset,
                        chunk_steps)
        self.recurrent = bool(recurrent)
        self.method = method
        self.error_routing = error_routing  # read at every forward pass
        self.gradient_timing = gradient_timing  # read by train_eventprop (the optimizer step is the loop's)
        self.dt = float(dt)  # the step the decays were computed for (NIR export turns them back into time constants)
        g = torch.Generator().manual_seed(seed)

        def init(post: int, pre: int, mean: float, scale: float = init_scale) -> nn.Parameter:
            w = torch.randn(post, pre, generator=g, dtype=torch.float64) * (scale / math.sqrt(pre)) + mean
            return nn.Parameter(w.to(dtype))

        self.fc = nn.ParameterList()
        self.rec = nn.ParameterList()
        for k, h in enumerate(hidden):
            self.fc.append(init(h, self.sizes[k], init_mean))
            if recurrent:
                self.rec.append(init(h, h, 0.0))
        # a spiking (TTFS) output is initialised like a hidden layer, a leaky-integrator readout around 0
        self.w_out = init(n_out, hidden[-1], init_mean if readout == "ttfs" else 0.0, out_init_scale)

    def extra_repr(self) -> str:
        c = self.cfg
        return (f"sizes={self.sizes}, recurrent={self.recurrent}, alpha={c.alpha:.4g}, beta={c.beta:.4g}, "
                f"threshold={c.thr:g}, reset={'subtract' if c.subtract else 'zero'!r}, readout={c.readout!r}, method={self.method!r}"
                + (f", error_routing={self.error_routing!r}" if self.error_routing != "quantized" else "")
                + (f", gradient_timing={self.gradient_timing!r}" if self.gradient_timing != "same_batch" else ""))

    def recurrent_param(self, k: int) -> str | None:
        """Hidden layer ``k``'s recurrent weights (``rec.<k>``) when the network is recurrent."""
        return f"rec.{k}" if self.recurrent else None

    def forward(self, x: Tensor) -> Tensor:
        """Readout [batch, n_out] for spike input ``x`` [batch, time, n_in] (gradients by EventProp or BPTT)."""
        self.check_input(x)
        if not torch.isfinite(x).all():
            raise ValueError("x contains NaN or Inf values")
        ws = list(self.effective_weights().values())  # once per forward pass (= per batch), not per step
        back = None
        if self.error_routing == "float" and self.weight_quant is not None:  # mlGeNN: errors through gBack
            back = list(self.connections().values())
        if self.method == "bptt":
            return reference_forward(x, self.cfg, ws, back)
        return EventPropFunction.apply(x, self.cfg, *ws, *(back or ()))

    def quantize_weights(self, spec: str | None = "fxp8:p99", scope: str = "connection") -> "EventPropSNN":
        """Fake-quantize weights with ``spec``, one scale per connection (mlGeNN's EventProp default) or per population."""
        return super().quantize_weights(spec, scope)  # type: ignore[return-value]

    @torch.no_grad()
    def record_spikes(self, x: Tensor) -> list[Tensor]:
        """Boolean spike rasters [batch, time, neurons] of every hidden layer (what the backward pass replays)."""
        ws = list(self.effective_weights().values())
        _, _, spikes = _run(x, self.cfg, ws)
        return [sp.mask(0, x.shape[1]).transpose(0, 1) for sp in spikes[: self.cfg.n_layers]]
