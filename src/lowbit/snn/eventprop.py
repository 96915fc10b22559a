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
each output neuron's first crossing time ``k - phi`` (``-T`` if it stays silent); its loss is
Wunderlich & Pehle's ``CE(softmax(-t/tau0)) + alpha (e^{t_y/tau1} - 1)`` (``eventprop_loss(..., "ttfs")``).

:class:`EventPropFunction` runs the forward without autograd, keeping only each spike's
indices and the three values its jump needs (``phi``, ``V_{k-1}``, ``U_k``) and the input's
spikes: memory grows with the number of spikes, not with time steps x neurons. Its backward
runs the adjoint ``(lambda_I, lambda_V)`` of every layer from ``T-1`` down to 0: linear decay
between spikes, a jump at each recorded spike, and weight gradients from the adjoint of the
synaptic current and the (rebuilt, per step) spike signal of the presynaptic layer.

Quantization-aware training: with :meth:`EventPropSNN.quantize_weights` the forward pass uses
``Q(w)`` (refitted to the float shadow weights at every forward pass, i.e. every batch, by
:class:`~lowbit.snn.quant.WeightQuant`); the gradient with respect to ``Q(w)`` (errors routed
through the quantized weights the forward used) passes straight through to the shadow weights.
"""
from __future__ import annotations

import math
from typing import Sequence

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from .neurons import READOUTS
from .neurons import decay, readout_weights
from .quant import SCOPES, WeightQuant

__all__ = ["EventPropSNN", "EventPropFunction", "reference_forward", "eventprop_loss", "EP_READOUTS", "EP_LOSSES"]

EP_READOUTS = (*READOUTS, "ttfs")  # ttfs: a spiking output read out by its first-spike times
EP_LOSSES = ("ce", "mse", "ttfs")
EP_RESETS = ("subtract", "zero")
_CAP_MARGIN = 1e-2


class _Cfg:
    """Static description of the network that the autograd function needs (no tensors)."""

    def __init__(self, n_layers: int, recurrent: bool, alpha: float, beta: float, thr: float,
                 out_alpha: float, out_beta: float, readout: str, reset: str = "subtract") -> None:
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


@torch.no_grad()
def _run(x: Tensor, cfg: _Cfg, ws: Sequence[Tensor]) -> tuple[Tensor, Tensor, Tensor, list[Tensor]]:
    """Forward without autograd: (readout, argmax step, spikes per layer and step, per layer (b, n, (s, V_prev, U)))."""
    ff, rec, w_out = _split(ws, cfg)
    b, t, _ = x.shape
    dt, dev = ws[0].dtype, ws[0].device
    x = x.to(dt)
    n_l = cfg.n_layers
    I = [torch.zeros(b, w.shape[0], dtype=dt, device=dev) for w in ff]
    V = [torch.zeros_like(i) for i in I]
    z_prev = [torch.zeros_like(i) for i in I]  # z_{k-1}, for the recurrence
    late = [torch.zeros_like(i) for i in I]  # the (1 - phi) parts due at the next step
    io = torch.zeros(b, w_out.shape[0], dtype=dt, device=dev)
    vo = torch.zeros_like(io)
    rw = None if cfg.ttfs else readout_weights(t, cfg.readout, dt, dev)
    acc = torch.zeros_like(vo) if rw is not None else torch.full_like(vo, -math.inf)
    if cfg.ttfs:
        acc.fill_(-float(t))  # a silent output neuron reads as a spike at the end of the trial
        done = torch.zeros(vo.shape, dtype=torch.bool, device=dev)
        vo_prev = vo
        out_b: list[Tensor] = []
        out_n: list[Tensor] = []
        out_v: list[Tensor] = []
    arg = torch.zeros(b, w_out.shape[0], dtype=torch.long, device=dev)
    # per layer, per step: spike rows (b), neurons (n) and (phi, V_{k-1}, U_k)
    rec_b: list[list[Tensor]] = [[] for _ in range(n_l)]
    rec_n: list[list[Tensor]] = [[] for _ in range(n_l)]
    rec_v: list[list[Tensor]] = [[] for _ in range(n_l)]
    counts = torch.zeros(n_l + cfg.ttfs, t, dtype=torch.long)  # (+ the output's first spikes)
    for k in range(t):  # the only Python loop over time
        h = x[:, k]
        for l in range(n_l):
            a = h @ ff[l].t()
            if rec[l] is not None:
                a = torch.addmm(a, z_prev[l], rec[l].t())
            I[l] = torch.add(a, I[l], alpha=cfg.alpha)
            u = torch.add(I[l], V[l], alpha=cfg.beta)
            spk = u >= cfg.thr
            bi, ni = spk.nonzero(as_tuple=True)
            ub, vb = u[bi, ni], V[l][bi, ni]
            phi = (ub - cfg.thr) / (ub - vb)
            z = late[l]
            z[bi, ni] += phi
            late[l] = torch.zeros_like(u)
            late[l][bi, ni] = 1.0 - phi
            if cfg.subtract:
                V[l] = torch.where(spk, (u - cfg.thr).clamp_(max=cfg.cap), u)
            else:
                V[l] = u.masked_fill(spk, 0.0)
            z_prev[l] = z
            rec_b[l].append(bi)
            rec_n[l].append(ni)
            rec_v[l].append(torch.stack([phi, vb, ub], 1))
            counts[l, k] = bi.numel()
            h = z
        io = torch.add(h @ w_out.t(), io, alpha=cfg.out_alpha)
        vo = torch.add(io, vo, alpha=cfg.out_beta)
        if cfg.ttfs:  # output LIF: record each neuron's first crossing; later ones do not reach the loss
            first = (vo >= cfg.thr) & ~done
            bi, ni = first.nonzero(as_tuple=True)
            ub, vb = vo[bi, ni], vo_prev[bi, ni]
            phi = (ub - cfg.thr) / (ub - vb)
            acc[bi, ni] = phi - k  # logit = -(crossing time) = -(k - phi) steps
            done |= first
            vo_prev = vo.masked_fill(done, 0.0)
            vo = vo_prev
            out_b.append(bi)
            out_n.append(ni)
            out_v.append(torch.stack([phi, vb, ub], 1))
            counts[n_l, k] = bi.numel()
        elif rw is not None:
            acc.add_(vo, alpha=float(rw[k]))
        else:
            better = vo > acc
            acc = torch.where(better, vo, acc)
            arg.masked_fill_(better, k)
    flat: list[Tensor] = []
    for l in range(n_l):
        flat += [torch.cat(rec_b[l]), torch.cat(rec_n[l]), torch.cat(rec_v[l])]
    if cfg.ttfs:
        flat += [torch.cat(out_b), torch.cat(out_n), torch.cat(out_v)]
    return acc, arg, counts, flat


def _lif_adjoint_step(p_i: Tensor, p_v: Tensor, bi: Tensor, ni: Tensor, vb: Tensor, ub: Tensor, gphi: Tensor,
                      keep: Tensor | None, alpha: float, beta: float, thr: float) -> tuple[Tensor, Tensor, Tensor]:
    """One step of a LIF population's adjoint, backwards: returns (lambda_I(k), alpha lambda_I(k), dL/dV_{k-1}).

    ``p_i`` / ``p_v`` come from step ``k+1``; ``(bi, ni)`` are the step's spikes with the membrane
    before (``vb = V_{k-1}``) and at the crossing (``ub = U_k``), ``gphi = dL/dphi`` there. The
    crossing fraction ``phi = (U_k - thr) / (U_k - V_{k-1})`` is where the jump comes from; ``keep``
    (subtractive reset) is 1 where ``V_k`` still follows ``U_k`` after the spike.
    """
    den2 = (ub - vb) ** 2
    lam_u = p_v.clone()
    jump = gphi * (thr - vb) / den2  # dphi/dU_k
    if keep is not None:
        jump = jump + lam_u[bi, ni] * keep
    lam_u[bi, ni] = jump
    lam_a = p_i + lam_u
    p_v = lam_u * beta
    p_v[bi, ni] += gphi * (ub - thr) / den2  # dphi/dV_{k-1}
    return lam_a, lam_a * alpha, p_v


class EventPropFunction(torch.autograd.Function):
    """Forward: the discretised network without autograd, recording spikes; backward: the adjoint pass."""

    @staticmethod
    def forward(ctx, x: Tensor, cfg: _Cfg, *ws: Tensor) -> Tensor:  # type: ignore[override]
        acc, arg, counts, flat = _run(x, cfg, ws)
        ctx.cfg, ctx.t, ctx.b = cfg, x.shape[1], x.shape[0]
        ctx.counts = counts
        # the input is kept as its spikes only (step, row, unit, value), sorted by step
        x_tb = x.detach().to(ws[0].dtype).transpose(0, 1)
        nz = x_tb.nonzero()
        in_t, in_b, in_i = nz[:, 0], nz[:, 1].clone(), nz[:, 2].clone()  # compact: saved without the step column
        in_v = x_tb[in_t, in_b, in_i]
        ctx.in_sizes = torch.bincount(in_t, minlength=x.shape[1]).tolist()
        ctx.save_for_backward(in_b, in_i, in_v, arg, *flat, *ws)
        ctx.n_flat = len(flat)
        return acc

    @staticmethod
    def backward(ctx, g: Tensor):  # type: ignore[override]
        cfg: _Cfg = ctx.cfg
        t, b, n_l = ctx.t, ctx.b, cfg.n_layers
        saved = ctx.saved_tensors
        in_b, in_i, in_v, arg = saved[:4]
        flat = saved[4 : 4 + ctx.n_flat]
        ws = saved[4 + ctx.n_flat :]
        ff, rec, w_out = _split(ws, cfg)
        g = g.to(w_out.dtype)
        dt, dev = w_out.dtype, w_out.device
        # spikes per layer and step (views into the recorded tensors)
        spikes: list[list[tuple[Tensor, Tensor, Tensor]]] = []
        for l in range(n_l + cfg.ttfs):
            sizes = ctx.counts[l].tolist()
            bs, ns, vs = (torch.split(f, sizes) for f in flat[3 * l : 3 * l + 3])
            spikes.append(list(zip(bs, ns, vs)))
        in_bs, in_is, in_vs = (torch.split(f, ctx.in_sizes) for f in (in_b, in_i, in_v))
        # gradients are accumulated transposed ([pre, post] += z_k^T lambda_k), one matmul per step
        d_ff = [torch.zeros(w.shape[1], w.shape[0], dtype=dt, device=dev) for w in ff]
        d_rec = [torch.zeros(r.shape[1], r.shape[0], dtype=dt, device=dev) if r is not None else None for r in rec]
        d_out = torch.zeros(w_out.shape[1], w_out.shape[0], dtype=dt, device=dev)
        p_i = [torch.zeros(b, w.shape[0], dtype=dt, device=dev) for w in ff]  # alpha * lambda_I(k+1)
        p_v = [torch.zeros_like(p) for p in p_i]  # dL/dV_k from step k+1
        lam_next = [torch.zeros_like(p) for p in p_i]  # lambda_a(k+1), for the recurrent jump
        gz_carry = [torch.zeros(0, dtype=dt, device=dev) for _ in range(n_l)]  # dL/dz_{k+1} at the spikes of step k
        lam_vo = torch.zeros_like(g)
        lam_io = torch.zeros_like(g)
        p_io, p_vo = torch.zeros_like(g), torch.zeros_like(g)  # the spiking (TTFS) output's adjoint
        rw = None if cfg.ttfs else readout_weights(t, cfg.readout, dt, dev)
        thr = cfg.thr
        none = (torch.zeros(0, dtype=torch.long, device=dev),) * 2 + (torch.zeros(0, 3, dtype=dt, device=dev),)

        def at(l: int, j: int) -> tuple[Tensor, Tensor, Tensor]:
            return spikes[l][j] if j >= 0 else none

        def z_dense(l: int, j: int) -> Tensor:
            # z_j of layer l rebuilt from the recorded spikes (a transient [batch, n], freed after the step)
            z = torch.zeros(b, ff[l].shape[0], dtype=dt, device=dev)
            if j >= 0:
                pb, pn, pv = at(l, j)
                z.index_put_((pb, pn), pv[:, 0], accumulate=True)
                pb, pn, pv = at(l, j - 1)
                z.index_put_((pb, pn), 1.0 - pv[:, 0], accumulate=True)
            return z

        z_now = [z_dense(l, t - 1) for l in range(n_l)]
        for k in range(t - 1, -1, -1):
            z_before = [z_dense(l, k - 1) for l in range(n_l)]
            if cfg.ttfs:  # dL/dphi = dL/dlogit at each output neuron's first spike
                bo, no, vals = spikes[n_l][k]
                _, vb, ub = vals.unbind(1)
                lam_io, p_io, p_vo = _lif_adjoint_step(p_io, p_vo, bo, no, vb, ub, g[bo, no], None,
                                                       cfg.out_alpha, cfg.out_beta, thr)
            else:
                drive = g * float(rw[k]) if rw is not None else g * (arg == k)
                lam_vo = torch.add(drive, lam_vo, alpha=cfg.out_beta)
                lam_io = torch.add(lam_vo, lam_io, alpha=cfg.out_alpha)
            lam_up, w_up = lam_io, w_out
            d_out.addmm_(z_now[n_l - 1].t(), lam_io)
            for l in range(n_l - 1, -1, -1):
                bi, ni, vals = at(l, k)
                bj, nj, _ = at(l, k - 1)
                _, vb, ub = vals.unbind(1)
                # dL/dz_k: from the layer above and the own recurrence, read at the spikes of steps k and k-1
                gz = lam_up @ w_up
                if rec[l] is not None:
                    gz = gz.addmm_(lam_next[l], rec[l])  # type: ignore[arg-type]
                gz_k, gz_j = gz[bi, ni], gz[bj, nj]
                # phi_k enters z_k with +1 and z_{k+1} with -1
                gphi = gz_k - gz_carry[l] if gz_carry[l].numel() else gz_k
                gz_carry[l] = gz_j
                # V_k = min(U_k - thr, cap) keeps dL/dV_k where the cap is not hit
                keep = (ub - thr < cfg.cap).to(dt) if cfg.subtract else None
                lam_a, p_i[l], p_v[l] = _lif_adjoint_step(p_i[l], p_v[l], bi, ni, vb, ub, gphi, keep, cfg.alpha, cfg.beta, thr)
                if l == 0:
                    xk = torch.zeros(b, ff[0].shape[1], dtype=dt, device=dev)
                    xk[in_bs[k], in_is[k]] = in_vs[k]
                    d_ff[0].addmm_(xk.t(), lam_a)
                else:
                    d_ff[l].addmm_(z_now[l - 1].t(), lam_a)
                if rec[l] is not None:
                    d_rec[l].addmm_(z_before[l].t(), lam_a)  # type: ignore[union-attr]
                lam_next[l] = lam_a
                lam_up, w_up = lam_a, ff[l]
            z_now = z_before
        grads: list[Tensor] = []
        for l in range(n_l):
            grads.append(d_ff[l].t().contiguous())
            if rec[l] is not None:
                grads.append(d_rec[l].t().contiguous())  # type: ignore[union-attr]
        grads.append(d_out.t().contiguous())
        return (None, None, *grads)


def reference_forward(x: Tensor, cfg: _Cfg, ws: Sequence[Tensor]) -> Tensor:
    """The same discretisation with autograd through every step (hard spikes, exact timing terms): BPTT."""
    ff, rec, w_out = _split(ws, cfg)
    b, t, _ = x.shape
    x = x.to(ff[0].dtype)
    I = [x.new_zeros(b, w.shape[0]) for w in ff]
    V = [x.new_zeros(b, w.shape[0]) for w in ff]
    z_prev = [x.new_zeros(b, w.shape[0]) for w in ff]
    late = [x.new_zeros(b, w.shape[0]) for w in ff]
    io = x.new_zeros(b, w_out.shape[0])
    vo = io
    vos = []
    logit = torch.full_like(io, -float(t))  # TTFS: -(first-spike time), -T where silent
    done = torch.zeros(io.shape, dtype=torch.bool, device=io.device)
    for k in range(t):
        h = x[:, k]
        for l in range(cfg.n_layers):
            a = h @ ff[l].t()
            if rec[l] is not None:
                a = a + z_prev[l] @ rec[l].t()
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
        io = cfg.out_alpha * io + h @ w_out.t()
        vo_before = vo
        vo = cfg.out_beta * vo + io
        if cfg.ttfs:
            first = ((vo >= cfg.thr) & ~done).detach()
            den = torch.where(first, vo - vo_before, torch.ones_like(vo))
            logit = torch.where(first, (vo - cfg.thr) / den - k, logit)
            done = done | first
            vo = torch.where(done, torch.zeros_like(vo), vo)
        vos.append(vo)
    if cfg.ttfs:
        return logit
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


class EventPropSNN(nn.Module):
    """LIF network (exponential synapses, optional recurrence) with a leaky-integrator readout, trained by EventProp.

    ``method="bptt"`` runs the same discretisation through autograd instead (exact, memory per step).
    """

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
        seed: int = 0,
        dtype: torch.dtype = torch.float32,
    ) -> None:
        super().__init__()
        hidden = [n_hidden] if isinstance(n_hidden, int) and not isinstance(n_hidden, bool) else list(n_hidden)  # type: ignore[arg-type]
        for name, v in (("n_in", n_in), ("n_out", n_out)):
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"{name} must be a positive int, got {v!r}")
        if not hidden or any(isinstance(h, bool) or not isinstance(h, int) or h < 1 for h in hidden):
            raise ValueError(f"n_hidden must be a positive int or a non-empty list of them, got {n_hidden!r}")
        if readout not in EP_READOUTS:
            raise ValueError(f"readout must be one of {EP_READOUTS}, got {readout!r}")
        if reset not in EP_RESETS:
            raise ValueError(f"reset must be one of {EP_RESETS}, got {reset!r}")
        if method not in ("eventprop", "bptt"):
            raise ValueError(f"method must be 'eventprop' or 'bptt', got {method!r}")
        if not (isinstance(threshold, (int, float)) and math.isfinite(threshold) and threshold > 0):
            raise ValueError(f"threshold must be a positive number, got {threshold!r}")
        for name, v in (("init_scale", init_scale), ("init_mean", init_mean), ("out_init_scale", out_init_scale)):
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
                raise ValueError(f"{name} must be a finite number, got {v!r}")
        beta = decay(None, tau_mem, dt, "beta", "tau_mem")
        alpha = decay(None, tau_syn, dt, "alpha", "tau_syn")
        out_beta = decay(None, tau_mem if out_tau_mem is None else out_tau_mem, dt, "out_beta", "out_tau_mem")
        if out_tau_syn is not None:
            out_alpha = decay(None, out_tau_syn, dt, "out_alpha", "out_tau_syn")
        else:  # a leaky-integrator readout takes the current directly; a spiking (TTFS) one has the hidden synapses
            out_alpha = alpha if readout == "ttfs" else 0.0
        self.cfg = _Cfg(len(hidden), bool(recurrent), alpha, beta, float(threshold), out_alpha, out_beta, readout, reset)
        self.sizes = [n_in, *hidden, n_out]
        self.recurrent = bool(recurrent)
        self.method = method
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
        self.weight_quant: WeightQuant | None = None

    def extra_repr(self) -> str:
        c = self.cfg
        return (f"sizes={self.sizes}, recurrent={self.recurrent}, alpha={c.alpha:.4g}, beta={c.beta:.4g}, "
                f"threshold={c.thr:g}, reset={'subtract' if c.subtract else 'zero'!r}, readout={c.readout!r}, method={self.method!r}")

    def connections(self) -> dict[str, Tensor]:
        """Every weight matrix by connection name (post x pre): fc<k>, rec<k>, out."""
        out: dict[str, Tensor] = {}
        for k in range(self.cfg.n_layers):
            out[f"fc{k}"] = self.fc[k]
            if self.recurrent:
                out[f"rec{k}"] = self.rec[k]
        out["out"] = self.w_out
        return out

    def connection_params(self) -> dict[str, str]:
        """Connection name -> parameter name in ``named_parameters()``."""
        out: dict[str, str] = {}
        for k in range(self.cfg.n_layers):
            out[f"fc{k}"] = f"fc.{k}"
            if self.recurrent:
                out[f"rec{k}"] = f"rec.{k}"
        out["out"] = "w_out"
        return out

    def populations(self) -> dict[str, list[str]]:
        """Target population -> the connections into it (feed-forward and recurrent together)."""
        out = {f"hidden{k}": [c for c in (f"fc{k}", f"rec{k}") if c in self.connections()] for k in range(self.cfg.n_layers)}
        out["out"] = ["out"]
        return out

    def quantize_weights(self, spec: str | None = "fxp8:p99", scope: str = "population") -> "EventPropSNN":
        """Fake-quantize weights with ``spec`` per population (shared scale) or per connection; None removes it."""
        if spec is None:
            self.weight_quant = None
            return self
        if scope not in SCOPES:
            raise ValueError(f"scope must be one of {SCOPES}, got {scope!r}")
        groups = self.populations() if scope == "population" else {c: [c] for c in self.connections()}
        self.weight_quant = WeightQuant(groups, spec)
        return self

    def effective_weights(self) -> dict[str, Tensor]:
        """The weights the forward pass uses: quantized (straight-through) when weight quantization is on."""
        w = self.connections()
        return self.weight_quant(w) if self.weight_quant is not None else w

    def forward(self, x: Tensor) -> Tensor:
        """Readout [batch, n_out] for spike input ``x`` [batch, time, n_in] (gradients by EventProp or BPTT)."""
        if not isinstance(x, Tensor) or x.dim() != 3 or x.shape[-1] != self.sizes[0] or x.shape[1] < 1:
            shape = tuple(x.shape) if isinstance(x, Tensor) else type(x).__name__
            raise ValueError(f"x must have shape [batch, time, {self.sizes[0]}], got {shape}")
        if not torch.isfinite(x).all():
            raise ValueError("x contains NaN or Inf values")
        ws = list(self.effective_weights().values())  # once per forward pass (= per batch), not per step
        if self.method == "bptt":
            return reference_forward(x, self.cfg, ws)
        return EventPropFunction.apply(x, self.cfg, *ws)

    @torch.no_grad()
    def record_spikes(self, x: Tensor) -> list[Tensor]:
        """Boolean spike rasters [batch, time, neurons] of every hidden layer (what the backward pass replays)."""
        ws = list(self.effective_weights().values())
        _, _, counts, flat = _run(x, self.cfg, ws)
        out = []
        for l in range(self.cfg.n_layers):
            r = torch.zeros(x.shape[0], x.shape[1], self.sizes[l + 1], dtype=torch.bool)
            steps = torch.repeat_interleave(torch.arange(x.shape[1]), counts[l])
            r[flat[3 * l], steps, flat[3 * l + 1]] = True
            out.append(r)
        return out
