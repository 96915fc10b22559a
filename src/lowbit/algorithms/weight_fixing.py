"""Weight fixing: every weight of the network ends on one of a few shared values.

Probabilistic weight fixing (PWFN, Subia-Waud & Dasmahapatra, NeurIPS 2023), in its spirit:

- each Conv/Linear weight has a Gaussian posterior ``w = mu + eps * sigma`` (``eps ~ N(0, 1)``
  redrawn every forward pass in training; ``w = mu`` in eval). ``sigma`` starts from the
  relative distance of ``mu`` to its neighbouring powers of two,
  ``r = |(mu - p_up) / mu| * |(mu - p_down) / mu|``, ``sigma0 = clamp(0.0025 r / q75(r), 2^-30, 0.05)``
  per layer, so weights already near a power of two start confident;
- the regulariser ``(lambda / 2) sum |eps| relu(0.05 - sigma)^2`` (lambda = 2^-11) pushes
  sigma up where the loss allows it;
- candidate centres are zero and ``±`` sums of one to four powers of two ``2^e``,
  ``min_exp <= e < ceil(log2 max|mu|)``; the distance of a weight to a centre is
  ``|mu - c| / sigma``, weights with ``|mu| < 2^min_exp`` are at distance 0 from zero;
- at each round of the schedule (cumulative fractions 0.2, 0.4, 0.6, 0.7, 0.8, 0.9, 0.95,
  0.975, 0.99, 1.0) the centre that can absorb the most weights within ``tau`` (weights
  already fixed to it included, so existing centres are preferred) takes its closest
  free weights; when no centre absorbs any, ``tau`` doubles and the number of terms
  grows, alternately; a few epochs of training go between rounds;
- fixed weights are frozen exactly on their centre (no gradient, no noise; ``lowbit`` preset)
  or keep noise and are re-clustered every round (``pwfn`` preset).

``mode="deterministic"`` is the WFN-style baseline (ECCV 2022): no sigma and no noise; the
tolerance is relative, ``|mu - c| <= delta * tau * |mu|``, with the same centres and schedule.

Two presets (``preset=``; every knob can be switched alone, see
:mod:`lowbit.algorithms.fixing_presets` for the side-by-side table):

- ``"lowbit"`` (the default; this library's behaviour before presets existed): Adam
  (lr 1e-3, no clipping), fixed weights frozen exactly on their centre with no noise and
  never re-assigned, the regulariser on free weights only, ``tau`` raised before the number
  of terms, biases left float (trained, not fixed, not counted), a warm-up of
  ``start_epochs`` full epochs, and per round cluster -> test -> train. Frozen fixed weights
  keep the accuracy of small networks trained for few epochs; under Adam the regulariser's
  small constant push (~2.4e-5 per step) becomes a full step, so sigmas climb to the cap and
  fixing is coarser than the original's.
- ``"pwfn"``: the original (subiawaud/PWFN @8dc0410): SGD lr 1e-3, momentum 0.9, weight
  decay 1e-4 (on sigmas and fixed mus too), gradient-norm clipping at 1; the regulariser on
  every weight sigma, fixed ones included (bias sigmas never); biases noisy, fixed and
  counted like weights; fixed weights keep noise (sigma = std of their group's mus) and every
  round re-clusters all weights (:func:`~lowbit.algorithms.pwfn_cluster.pwfn_cluster_round`);
  more power-of-two terms before a larger ``tau``; a warm-up on 5 % of one epoch; per round
  train -> test -> cluster. ``faithful_bugs=True`` adds the original's zero-fix index
  (``len(centres)//2``) and refuses exactly-zero weights (the original's sigma is NaN there).
"""
from __future__ import annotations

import copy
import dataclasses
import itertools
import math
from typing import Iterator, Sequence

import torch
from torch import Tensor, nn
from torch.func import functional_call

from ..info import attach
from ..loop import Hook, LoopState, run_epochs
from .convert import check_int, check_loader, to_codebook_model, train_loop
from .fixing_presets import PRESETS, FixingPreset, fixing_preset
from .pwfn_cluster import ClusterRound, pwfn_cluster_round
from .stats import shared_layers

__all__ = ["PWFN_SCHEDULE", "MODES", "PRESETS", "FixingPreset", "candidate_centres", "init_sigma", "WeightFixer", "weight_fixing"]

PWFN_SCHEDULE = (0.2, 0.4, 0.6, 0.7, 0.8, 0.9, 0.95, 0.975, 0.99, 1.0)
MODES = ("probabilistic", "deterministic")
_SIGMA_MIN = 2.0**-30


def candidate_centres(max_abs: float, terms: int, min_exp: int = -7) -> Tensor:
    """Zero and ± sums of ``terms`` powers of two ``2^e`` (``min_exp <= e < ceil(log2 max_abs)``, repeats allowed) up to ``max_abs``; float64, sorted."""
    check_int("terms", terms, 1, 8)
    if isinstance(min_exp, bool) or not isinstance(min_exp, int):
        raise ValueError(f"min_exp must be an int, got {min_exp!r}")
    if not (isinstance(max_abs, (int, float)) and math.isfinite(max_abs) and max_abs >= 0):
        raise ValueError(f"max_abs must be a finite number >= 0, got {max_abs!r}")
    zero = torch.zeros(1, dtype=torch.float64)
    if max_abs <= 0:
        return zero
    top = math.ceil(math.log2(max_abs)) - 1
    if top < min_exp:
        return zero
    e = torch.cat([zero, 2.0 ** torch.arange(min_exp, top + 1, dtype=torch.float64)])  # 0 lets a sum use fewer terms
    sums = e
    for _ in range(terms - 1):  # a few outer sums over ~10 values, de-duplicated each time
        sums = torch.unique(sums[:, None] + e[None, :])
        sums = sums[sums <= max_abs]
    pos = sums[(sums > 0) & (sums <= max_abs)]
    return torch.cat([-pos.flip(0), zero, pos])


def init_sigma(mu: Tensor, base: float = 0.0025, sigma_max: float = 0.05) -> Tensor:
    """PWFN's prior: sigma from the product of the relative distances of ``mu`` to its two neighbouring powers of two."""
    a = mu.detach().abs().double()
    nz = a > 0
    safe = torch.where(nz, a, torch.ones_like(a))
    up, down = torch.exp2(torch.ceil(torch.log2(safe))), torch.exp2(torch.floor(torch.log2(safe)))
    r = torch.where(nz, ((safe - up) / safe).abs() * ((safe - down) / safe).abs(), torch.zeros_like(a))
    q = torch.quantile(r.reshape(-1)[:16_000_000], 0.75)
    s = base * r / q if q > 0 else torch.full_like(r, base)
    return s.clamp(_SIGMA_MIN, sigma_max).to(mu.dtype)


class _FirstBatches:
    """The first ``n`` batches of a loader (PWFN's warm-up on a fraction of one epoch)."""

    def __init__(self, loader: object, n: int) -> None:
        self.loader, self.n = loader, n

    def __iter__(self) -> Iterator[object]:
        return itertools.islice(iter(self.loader), self.n)  # type: ignore[call-overload]

    def __len__(self) -> int:
        return self.n


class _SigmaClamp(Hook):
    """lowbit preset: sigma never below 2^-30 after a step."""

    def __init__(self, fixer: "WeightFixer") -> None:
        self.fixer = fixer

    def on_step_end(self, s: LoopState) -> None:
        """Clamp the sigmas."""
        with torch.no_grad():
            self.fixer.sigma.clamp_(min=_SIGMA_MIN)


class WeightFixer(nn.Module):
    """A model whose Conv/Linear weights (and biases, preset ``pwfn``) are fixed to shared centres round by round (see the module docs)."""

    def __init__(
        self,
        model: nn.Module,
        mode: str = "probabilistic",
        *,
        preset: str | FixingPreset = "lowbit",
        max_terms: int = 4,
        min_exp: int = -7,
        tau: float = 1.0,
        inc: float = 2.0,
        delta: float = 0.015,
        reg: float = 2.0**-11,
        sigma_max: float = 0.05,
        zero_fix: bool = True,
        **knobs: object,
    ) -> None:
        super().__init__()
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
        self.preset = fixing_preset(preset, **knobs)
        if self.preset.fixed_noise and mode != "probabilistic":
            raise ValueError(f"preset {self.preset.name!r} keeps noise on fixed weights: it needs mode='probabilistic', got {mode!r}")
        check_int("max_terms", max_terms, 1, 4)
        if isinstance(min_exp, bool) or not isinstance(min_exp, int) or not -30 <= min_exp <= 0:
            raise ValueError(f"min_exp must be an int in -30..0, got {min_exp!r}")
        for name, v, lo in (("tau", tau, 0.0), ("delta", delta, 0.0), ("sigma_max", sigma_max, 0.0)):
            if not (isinstance(v, (int, float)) and math.isfinite(v) and v > lo):
                raise ValueError(f"{name} must be a finite number > {lo}, got {v!r}")
        if not (isinstance(inc, (int, float)) and math.isfinite(inc) and inc > 1):
            raise ValueError(f"inc must be a finite number > 1, got {inc!r}")
        if not (isinstance(reg, (int, float)) and math.isfinite(reg) and reg >= 0):
            raise ValueError(f"reg must be a finite number >= 0, got {reg!r}")
        self.model = copy.deepcopy(model)
        layers = shared_layers(self.model)
        self.mode, self.max_terms, self.min_exp = mode, max_terms, min_exp
        self.tau, self.inc, self.delta, self.reg, self.sigma_max, self.zero_fix = tau, inc, delta, reg, sigma_max, zero_fix
        # One entry per shared tensor: "layer.weight", and "layer.bias" when biases are fixed too.
        self._entries = [f"{n}.weight" for n in layers]
        if self.preset.include_bias:
            self._entries = [e for n, m in layers.items() for e in [f"{n}.weight"] + ([f"{n}.bias"] if m.bias is not None else [])]
        self._names = list(layers)
        self._shapes = [self.model.get_parameter(e).shape for e in self._entries]
        ws = [self.model.get_parameter(e).detach().float().reshape(-1) for e in self._entries]
        flat = torch.cat(ws)
        if not torch.isfinite(flat).all():
            raise ValueError("model weights contain NaN or Inf values")
        if self.preset.faithful_bugs:
            for e, w in zip(self._entries, ws):
                if bool((w == 0).any()):
                    raise ValueError(f"{e} has exactly-zero values: the original PWFN's sigma init is NaN for that whole "
                                     "tensor; use faithful_bugs=False (zero starts at sigma 2^-30)")  # fmt: skip
        self.mu = nn.Parameter(flat.clone())
        self.sigma = nn.Parameter(torch.cat([init_sigma(w, sigma_max=sigma_max) for w in ws]), requires_grad=mode == "probabilistic")
        self.register_buffer("is_weight", torch.cat([torch.full_like(w, e.endswith(".weight"), dtype=torch.bool)
                                                     for e, w in zip(self._entries, ws)]))  # fmt: skip
        self.register_buffer("fixed", torch.zeros_like(flat, dtype=torch.bool))
        self.register_buffer("centre", torch.zeros_like(flat))
        self._eps: Tensor | None = None
        self.rounds: list[dict[str, float]] = []
        self.last_round: ClusterRound | None = None

    # ------------------------------------------------------------------ forward

    @property
    def probabilistic(self) -> bool:
        """True in PWFN mode (sampled weights, learned sigma)."""
        return self.mode == "probabilistic"

    def flat_weights(self, sample: bool = False) -> Tensor:
        """All shared values as one vector: ``mu`` (plus ``eps * sigma`` if ``sample``); under ``lowbit`` the centre where fixed."""
        w = self.mu
        if sample and self.probabilistic:
            self._eps = torch.randn_like(self.mu)
            w = w + self._eps * self.sigma.clamp_min(_SIGMA_MIN)
        if self.preset.fixed_noise:
            return w  # pwfn: fixed weights are sampled around their (decaying) mu like any other
        return torch.where(self.fixed, self.centre, w)

    def weights(self, sample: bool = False) -> dict[str, Tensor]:
        """Each shared tensor by parameter name (``layer.weight``, and ``layer.bias`` under ``pwfn``); see :meth:`flat_weights`."""
        parts = self.flat_weights(sample).split([s.numel() for s in self._shapes])
        return {e: p.reshape(s) for e, p, s in zip(self._entries, parts, self._shapes)}

    def forward(self, x: Tensor) -> Tensor:
        """The model's output with the shared weights (sampled in training mode)."""
        return functional_call(self.model, self.weights(sample=self.training), (x,))

    def _reg_mask(self) -> Tensor:
        mask = self.is_weight  # bias sigmas are never regularised (the original hooks 'weight_sigma' only)
        return mask if self.preset.reg_on_fixed else mask & ~self.fixed

    def regulariser(self) -> Tensor:
        """PWFN's sigma push-up ``(lambda/2) sum |eps| relu(sigma_max - sigma)^2`` over the regularised sigmas (0 without a sample)."""
        if not self.probabilistic or self._eps is None or self.reg == 0:
            return self.mu.new_zeros(())
        gap = torch.relu(self.sigma_max - self.sigma) * self._reg_mask()
        return 0.5 * self.reg * (self._eps.detach().abs() * gap * gap).sum()

    def trainable(self) -> list[nn.Parameter]:
        """``mu``, ``sigma`` (probabilistic mode) and every other model parameter (biases unless fixed, BatchNorm)."""
        tied = {id(self.model.get_parameter(e)) for e in self._entries}
        own = [self.mu] + ([self.sigma] if self.probabilistic else [])
        return own + [p for p in self.model.parameters() if id(p) not in tied and p.requires_grad]

    @torch.no_grad()
    def _before_step(self, params: list[nn.Parameter]) -> None:
        """pwfn: zero the fixed entries' gradients, then add the regulariser's gradient, then clip (the original's order)."""
        for p in (self.mu, self.sigma):
            if p.grad is not None:
                p.grad[self.fixed] = 0
        if self.probabilistic and self.reg and self._eps is not None:
            if self.sigma.grad is None:
                self.sigma.grad = torch.zeros_like(self.sigma)
            push = torch.relu(self.sigma_max - self.sigma) * self._eps.abs() * self._reg_mask()
            self.sigma.grad.sub_(self.reg * push)
        if self.preset.clip_norm is not None:
            torch.nn.utils.clip_grad_norm_([p for p in params if p.grad is not None], self.preset.clip_norm)

    def fit(self, loader: object, epochs: int, lr: float | None = None, *, progress: bool | None = None,
            fraction: float = 1.0) -> float:  # fmt: skip
        """Train for ``epochs`` (on the first ``fraction`` of the batches) with the preset's optimiser; returns the last mean loss."""
        check_int("epochs", epochs, 0)
        if epochs == 0:
            return float("nan")
        check_loader("loader", loader)
        if not (isinstance(fraction, (int, float)) and 0 < fraction <= 1):
            raise ValueError(f"fraction must be a number in (0, 1], got {fraction!r}")
        lr = self.preset.lr if lr is None else lr
        if fraction < 1:  # Lightning's limit_train_batches: int(n * fraction), at least one batch
            loader = _FirstBatches(loader, max(1, int(len(loader) * fraction)))  # type: ignore[arg-type]
        done = f"{100 * self.fraction_fixed:.0f}%"
        pr = self.preset
        if not pr.fixed_noise and pr.optimizer == "adam" and pr.clip_norm is None and pr.weight_decay == 0:
            # lowbit: Adam, the regulariser as a loss term, frozen fixed weights (no gradient reaches them).
            return train_loop(self, self.trainable(), loader, epochs, lr, extra_loss=self.regulariser,
                              after_step=lambda: self.sigma.data.clamp_(min=_SIGMA_MIN),
                              desc=f"fixing ({done} fixed)", progress=progress)  # fmt: skip
        params = self.trainable()
        if pr.optimizer == "sgd":
            opt: torch.optim.Optimizer = torch.optim.SGD(params, lr=lr, momentum=pr.momentum, weight_decay=pr.weight_decay)
        else:
            opt = torch.optim.Adam(params, lr=lr, weight_decay=pr.weight_decay)
        handle = opt.register_step_pre_hook(lambda *_: self._before_step(params))
        hooks = [] if pr.fixed_noise else [_SigmaClamp(self)]  # pwfn never clamps the parameter (its forward does)
        try:
            s = run_epochs(self, loader, epochs=epochs, optimizer=opt, hooks=hooks, desc=f"fixing ({done} fixed)", progress=progress)
        finally:
            handle.remove()
        return s.history["loss"][-1] if s.history["loss"] else float("nan")

    # ------------------------------------------------------------------ fixing

    @property
    def fraction_fixed(self) -> float:
        """Fraction of the shared weights that are fixed."""
        return float(self.fixed.float().mean())

    def centres(self) -> Tensor:
        """The distinct centres in use (sorted)."""
        return torch.unique(self.centre[self.fixed])

    def _tolerance(self, mu: Tensor) -> Tensor:
        if self.probabilistic:
            return self.sigma.detach()[~self.fixed].double().clamp_min(_SIGMA_MIN)
        return self.delta * mu.abs().clamp_min(2.0**self.min_exp)

    @torch.no_grad()
    def fix(self, fraction: float) -> int:
        """Fix weights until ``fraction`` of all are fixed; returns how many were newly fixed."""
        if not (isinstance(fraction, (int, float)) and 0 <= fraction <= 1):
            raise ValueError(f"fraction must be a number in [0, 1], got {fraction!r}")
        if self.preset.fixed_noise:
            return self._recluster(fraction)
        n = self.mu.numel()
        need = min(n, math.ceil(n * fraction - 1e-9)) - int(self.fixed.sum())
        if need <= 0:
            return 0
        free = (~self.fixed).nonzero().squeeze(1)
        m = self.mu.detach()[free].double()
        s = self._tolerance(m)
        zero_ok = (m.abs() < 2.0**self.min_exp) if self.zero_fix else torch.zeros_like(m, dtype=torch.bool)
        max_abs = float(m.abs().max())
        used, used_n = torch.unique(self.centre[self.fixed].double(), return_counts=True)
        alive = torch.ones_like(m, dtype=torch.bool)
        new_centre = torch.zeros_like(m)
        total_new = need
        terms, tau = 1, self.tau
        turn = 1 if self.preset.escalation == "terms_first" else 0
        while need > 0:
            C = torch.unique(torch.cat([candidate_centres(max_abs, terms, self.min_exp), used]))
            pos = torch.searchsorted(C, used)
            fixed_n = torch.zeros(C.numel(), dtype=torch.long).index_add_(0, pos, used_n)
            idx = alive.nonzero().squeeze(1)
            lo, hi = m[idx] - tau * s[idx], m[idx] + tau * s[idx]
            z = zero_ok[idx]
            lo, hi = torch.where(z, lo.clamp(max=0), lo), torch.where(z, hi.clamp(min=0), hi)
            # Weights a centre can absorb = intervals [lo, hi] that contain it.
            count = torch.searchsorted(lo.sort().values, C, right=True) - torch.searchsorted(hi.sort().values, C)
            taken = torch.zeros(C.numel(), dtype=torch.bool)
            while need > 0:
                score = torch.where((count > 0) & ~taken, count + fixed_n, torch.full_like(count, -1))
                j = int(score.argmax())
                if score[j] < 0:
                    break
                c = C[j]
                inside = ((lo <= c) & (hi >= c)).nonzero().squeeze(1)
                d = (m[idx[inside]] - c).abs() / s[idx[inside]]
                if c == 0:
                    d = torch.where(z[inside], torch.zeros_like(d), d)
                pick = inside[d.argsort(stable=True)[:need]]
                new_centre[idx[pick]] = c
                alive[idx[pick]] = False
                need -= pick.numel()
                taken[j] = True
                fixed_n[j] += pick.numel()
                # The picked intervals no longer count for any centre (difference array over C).
                diff = torch.zeros(C.numel() + 1, dtype=torch.long)
                diff.index_add_(0, torch.searchsorted(C, lo[pick]), torch.ones(pick.numel(), dtype=torch.long))
                diff.index_add_(0, torch.searchsorted(C, hi[pick], right=True), -torch.ones(pick.numel(), dtype=torch.long))
                count -= diff.cumsum(0)[:-1]
                lo[pick], hi[pick] = math.inf, -math.inf  # removed
            keep = fixed_n > 0
            used, used_n = C[keep], fixed_n[keep]
            if turn % 2 == 1 and terms < self.max_terms:
                terms += 1
            else:
                tau *= self.inc
            turn += 1
        done = free[~alive]
        self.centre[done] = new_centre[~alive].to(self.centre.dtype)
        self.mu.data[done] = self.centre[done]
        self.fixed[done] = True
        return total_new

    def _recluster(self, fraction: float) -> int:
        """pwfn: re-cluster all values from scratch (fixed ones may move or fall free); returns how many were newly fixed."""
        res = pwfn_cluster_round(self.mu.detach(), self.sigma.detach(), fraction, tau=self.tau, inc=self.inc,
                                 max_terms=self.max_terms, min_exp=self.min_exp, zero_fix=self.zero_fix,
                                 escalation=self.preset.escalation, faithful_bugs=self.preset.faithful_bugs)  # fmt: skip
        now = res.fixed
        c = res.centre.to(self.mu.dtype)
        new = int((now & ~self.fixed).sum())
        self.mu.data[now] = c[now]
        self.sigma.data[now] = res.sigma.to(self.sigma.dtype)[now]
        self.centre.zero_()
        self.centre[now] = c[now]
        self.fixed.copy_(now)
        self.last_round = res
        return new

    def to_model(self) -> nn.Module:
        """The converted model: every layer a codebook QTensor over the network's centres (needs 100 % fixed); fixed biases as values."""
        if not bool(self.fixed.all()):
            raise ValueError(f"only {100 * self.fraction_fixed:.1f}% of the weights are fixed; call fix(1.0) first")
        with torch.no_grad():
            parts = self.centre.split([s.numel() for s in self._shapes])
            vals = {e: p.reshape(s).clone() for e, p, s in zip(self._entries, parts, self._shapes)}
        ws = {e[: -len(".weight")]: v for e, v in vals.items() if e.endswith(".weight")}
        out = to_codebook_model(self.model, ws, per_network=True, tag=f"fixing:{self.mode}")
        with torch.no_grad():
            for e, v in vals.items():
                if e.endswith(".bias"):
                    out.get_parameter(e).copy_(v)
        return out


def _check_schedule(schedule: Sequence[float]) -> tuple[float, ...]:
    try:
        s = tuple(float(f) for f in schedule)
    except (TypeError, ValueError):
        raise ValueError(f"schedule must be a sequence of fractions, got {schedule!r}") from None
    if not s or any(not 0 < f <= 1 for f in s) or any(b <= a for a, b in zip(s, s[1:])) or s[-1] != 1.0:
        raise ValueError(f"schedule must be increasing fractions in (0, 1] ending at 1.0, got {schedule!r}")
    return s


def weight_fixing(
    model: nn.Module,
    loader: object,
    *,
    mode: str = "probabilistic",
    preset: str | FixingPreset = "lowbit",
    schedule: Sequence[float] = PWFN_SCHEDULE,
    epochs_per_round: int = 3,
    start_epochs: int = 1,
    lr: float | None = None,
    test_loader: object | None = None,
    progress: bool | None = None,
    **fixer_kw: object,
) -> nn.Module:
    """Fix every Conv/Linear weight (and bias, preset ``pwfn``) to a few shared values; a converted copy with per-network codebook QTensors.

    ``preset`` is ``"lowbit"`` (default) or ``"pwfn"`` (the original's rules; see the module docs);
    any preset knob (``optimizer``, ``escalation``, ``include_bias``, ``faithful_bugs``, ...) may
    be passed to override it. ``lr`` defaults to the preset's (1e-3 for both). The per-round
    log (fraction fixed, distinct centres, test accuracy if ``test_loader``: after the round's
    fixing under ``lowbit``, before it under ``pwfn``) is the result's
    ``lowbit_info.extra["fixing_log"]`` (also ``lowbit_fixing_log``, the earlier name).
    """
    check_loader("loader", loader)
    if test_loader is not None:
        check_loader("test_loader", test_loader)
    sched = _check_schedule(schedule)
    check_int("epochs_per_round", epochs_per_round, 0)
    check_int("start_epochs", start_epochs, 0)
    if lr is not None and not (isinstance(lr, (int, float)) and math.isfinite(lr) and lr > 0):
        raise ValueError(f"lr must be a finite number > 0, got {lr!r}")
    fixer = WeightFixer(model, mode, preset=preset, **fixer_kw)  # type: ignore[arg-type]
    fixer.fit(loader, start_epochs, lr, progress=progress, fraction=fixer.preset.warmup_fraction)
    log: list[dict[str, float]] = []

    def accuracy() -> float:
        from ..train import evaluate

        return evaluate(fixer, test_loader)  # type: ignore[arg-type]

    for i, frac in enumerate(sched):
        before = accuracy() if test_loader is not None and fixer.preset.test_before_fix else None
        fixer.fix(frac)
        entry = {"target": frac, "fixed": fixer.fraction_fixed, "centres": float(fixer.centres().numel())}
        if test_loader is not None:
            entry["accuracy"] = before if before is not None else accuracy()
        log.append(entry)
        if i < len(sched) - 1:
            fixer.fit(loader, epochs_per_round, lr, progress=progress)
    out = fixer.to_model()
    attach(out, "fixing_log", log)
    attach(out, "fixing_preset", dataclasses.asdict(fixer.preset))
    return out
