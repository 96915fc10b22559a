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
- fixed weights are frozen exactly on their centre (no gradient, no noise).

``mode="deterministic"`` is the WFN-style baseline (ECCV 2022): no sigma and no noise; the
tolerance is relative, ``|mu - c| <= delta * tau * |mu|``, with the same centres and schedule.

Differences from the reference code, on purpose: fixed weights are never re-assigned
(PWFN re-clusters all weights each round but they land on the same centre), fixed
weights carry no noise, and the optimiser is Adam (small networks, few epochs).
"""
from __future__ import annotations

import copy
import math
from typing import Sequence

import torch
from torch import Tensor, nn
from torch.func import functional_call

from ..info import attach
from .convert import check_int, check_loader, to_codebook_model, train_loop
from .stats import shared_layers

__all__ = ["PWFN_SCHEDULE", "MODES", "candidate_centres", "init_sigma", "WeightFixer", "weight_fixing"]

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


class WeightFixer(nn.Module):
    """A model whose Conv/Linear weights are fixed to shared centres round by round (see the module docs)."""

    def __init__(
        self,
        model: nn.Module,
        mode: str = "probabilistic",
        *,
        max_terms: int = 4,
        min_exp: int = -7,
        tau: float = 1.0,
        inc: float = 2.0,
        delta: float = 0.015,
        reg: float = 2.0**-11,
        sigma_max: float = 0.05,
        zero_fix: bool = True,
    ) -> None:
        super().__init__()
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
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
        self._names = list(layers)
        self._shapes = [layers[n].weight.shape for n in self._names]
        ws = [layers[n].weight.detach().float().reshape(-1) for n in self._names]
        flat = torch.cat(ws)
        if not torch.isfinite(flat).all():
            raise ValueError("model weights contain NaN or Inf values")
        self.mu = nn.Parameter(flat.clone())
        self.sigma = nn.Parameter(torch.cat([init_sigma(w, sigma_max=sigma_max) for w in ws]), requires_grad=mode == "probabilistic")
        self.register_buffer("fixed", torch.zeros_like(flat, dtype=torch.bool))
        self.register_buffer("centre", torch.zeros_like(flat))
        self._eps: Tensor | None = None
        self.rounds: list[dict[str, float]] = []

    # ------------------------------------------------------------------ forward

    @property
    def probabilistic(self) -> bool:
        """True in PWFN mode (sampled weights, learned sigma)."""
        return self.mode == "probabilistic"

    def flat_weights(self, sample: bool = False) -> Tensor:
        """All shared weights as one vector: the centre where fixed, else ``mu`` (plus ``eps * sigma`` if ``sample``)."""
        w = self.mu
        if sample and self.probabilistic:
            self._eps = torch.randn_like(self.mu)
            w = w + self._eps * self.sigma.clamp_min(_SIGMA_MIN)
        return torch.where(self.fixed, self.centre, w)

    def weights(self, sample: bool = False) -> dict[str, Tensor]:
        """Each layer's weight (see :meth:`flat_weights`)."""
        parts = self.flat_weights(sample).split([s.numel() for s in self._shapes])
        return {n: p.reshape(s) for n, p, s in zip(self._names, parts, self._shapes)}

    def forward(self, x: Tensor) -> Tensor:
        """The model's output with the shared weights (sampled in training mode)."""
        ws = self.weights(sample=self.training)
        return functional_call(self.model, {f"{n}.weight": w for n, w in ws.items()}, (x,))

    def regulariser(self) -> Tensor:
        """PWFN's sigma push-up ``(lambda/2) sum |eps| relu(sigma_max - sigma)^2`` over free weights (0 without a sample)."""
        if not self.probabilistic or self._eps is None or self.reg == 0:
            return self.mu.new_zeros(())
        gap = torch.relu(self.sigma_max - self.sigma) * (~self.fixed)
        return 0.5 * self.reg * (self._eps.detach().abs() * gap * gap).sum()

    def trainable(self) -> list[nn.Parameter]:
        """``mu``, ``sigma`` (probabilistic mode) and every other model parameter (biases, BatchNorm)."""
        tied = {id(self.model.get_submodule(n).weight) for n in self._names}
        own = [self.mu] + ([self.sigma] if self.probabilistic else [])
        return own + [p for p in self.model.parameters() if id(p) not in tied and p.requires_grad]

    def fit(self, loader: object, epochs: int, lr: float = 1e-3, *, progress: bool | None = None) -> float:
        """Train the free weights (and sigmas, biases, BatchNorm) for ``epochs``; fixed weights stay on their centres."""
        check_int("epochs", epochs, 0)
        if epochs == 0:
            return float("nan")
        check_loader("loader", loader)

        def clamp() -> None:
            with torch.no_grad():
                self.sigma.clamp_(min=_SIGMA_MIN)

        done = f"{100 * self.fraction_fixed:.0f}%"
        return train_loop(self, self.trainable(), loader, epochs, lr, extra_loss=self.regulariser,
                          after_step=clamp, desc=f"fixing ({done} fixed)", progress=progress)  # fmt: skip

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
        terms, tau, turn = 1, self.tau, 0
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

    def to_model(self) -> nn.Module:
        """The converted model: every layer a codebook QTensor over the network's centres (needs 100 % fixed)."""
        if not bool(self.fixed.all()):
            raise ValueError(f"only {100 * self.fraction_fixed:.1f}% of the weights are fixed; call fix(1.0) first")
        with torch.no_grad():
            ws = {n: w.detach().clone() for n, w in self.weights().items()}
        return to_codebook_model(self.model, ws, per_network=True, tag=f"fixing:{self.mode}")


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
    schedule: Sequence[float] = PWFN_SCHEDULE,
    epochs_per_round: int = 3,
    start_epochs: int = 1,
    lr: float = 1e-3,
    test_loader: object | None = None,
    progress: bool | None = None,
    **fixer_kw: object,
) -> nn.Module:
    """Fix every Conv/Linear weight to a few shared values (PWFN or WFN-style); a converted copy with per-network codebook QTensors.

    The per-round log (fraction fixed, distinct centres, test accuracy if ``test_loader``) is the
    result's ``lowbit_info.extra["fixing_log"]`` (also ``lowbit_fixing_log``, the earlier name).
    """
    check_loader("loader", loader)
    if test_loader is not None:
        check_loader("test_loader", test_loader)
    sched = _check_schedule(schedule)
    check_int("epochs_per_round", epochs_per_round, 0)
    check_int("start_epochs", start_epochs, 0)
    if not (isinstance(lr, (int, float)) and math.isfinite(lr) and lr > 0):
        raise ValueError(f"lr must be a finite number > 0, got {lr!r}")
    fixer = WeightFixer(model, mode, **fixer_kw)  # type: ignore[arg-type]
    fixer.fit(loader, start_epochs, lr, progress=progress)
    log: list[dict[str, float]] = []
    for i, frac in enumerate(sched):
        fixer.fix(frac)
        entry = {"target": frac, "fixed": fixer.fraction_fixed, "centres": float(fixer.centres().numel())}
        if test_loader is not None:
            from ..train import evaluate

            entry["accuracy"] = evaluate(fixer, test_loader)  # type: ignore[arg-type]
        log.append(entry)
        if i < len(sched) - 1:
            fixer.fit(loader, epochs_per_round, lr, progress=progress)
    out = fixer.to_model()
    attach(out, "fixing_log", log)
    return out
