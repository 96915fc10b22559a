"""One clustering round of the original PWFN (``clustering/Cluster.py`` of subiawaud/PWFN @8dc0410), rule for rule.

:func:`pwfn_cluster_round` re-clusters *all* weights from scratch (a weight fixed last round
may move to another centre, or fall free when the quota fills first):

- ``left = ceil(total * fraction)``; ``terms = 1``; ``counter = 1`` (``terms_first``) or 0
  (``tau_first``, lowbit's order); ``tau`` is the round's tolerance;
- centres = zero and ± sums of ``terms`` powers of two up to the largest free ``|mu|``
  (:func:`~lowbit.algorithms.weight_fixing.candidate_centres`);
- repeatedly: distance ``d = |mu - c| / max(sigma, 2^-20)`` of every free weight; with
  ``zero_fix`` the weights ``|mu| < 2^min_exp`` are at distance 0 from the zero-fix centre;
  the centre with the most free weights at ``d <= tau`` wins (first one on a tie); its closest
  such weights (stable order), at most ``left``, take its value, and their sigma becomes the
  population std of their ``mu`` (``sigma_join = std_mu``); the centre leaves the list;
- when no centre absorbs anything: ``counter`` odd and ``terms < max_terms`` -> ``terms += 1``,
  else ``tau *= inc``; ``counter += 1``; the centre list is rebuilt.

``faithful_bugs=True`` keeps the original's zero-fix row ``len(centres) // 2``: once more
negative centres (or zero) than positive ones have left the list, it no longer points at
zero and the small weights snap to the smallest positive centre left. ``False`` (the
default) uses the real zero centre, while it is in the list.

Counting uses sorted interval ends (``mu ± tau sigma``) rather than the original's dense
``[centres, weights]`` distance matrix; the two can differ only for a weight exactly on
the ``tau`` boundary.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
from torch import Tensor

__all__ = ["ESCALATIONS", "ClusterStep", "ClusterRound", "pwfn_cluster_round"]

ESCALATIONS = ("terms_first", "tau_first")
SIGMA_FLOOR = 2.0**-20  # the original clamps sigmas to this before dividing


@dataclass(frozen=True)
class ClusterStep:
    """One centre taking weights: its value, the weights' indices, the tolerance and number of terms then."""

    centre: float
    members: tuple[int, ...]
    tau: float
    terms: int


@dataclass
class ClusterRound:
    """The result of a round: centre per weight (NaN where free), the new sigmas (NaN where free), the steps."""

    centre: Tensor
    sigma: Tensor
    steps: list[ClusterStep] = field(default_factory=list)
    escalations: list[str] = field(default_factory=list)  # "terms" or "tau", in order

    @property
    def fixed(self) -> Tensor:
        """Which weights took a centre."""
        return ~torch.isnan(self.centre)


def pwfn_cluster_round(
    mu: Tensor,
    sigma: Tensor,
    fraction: float,
    *,
    tau: float = 1.0,
    inc: float = 2.0,
    max_terms: int = 4,
    min_exp: int = -7,
    zero_fix: bool = True,
    escalation: str = "terms_first",
    faithful_bugs: bool = False,
) -> ClusterRound:
    """Assign ``ceil(fraction * numel)`` of the weights ``mu`` (stds ``sigma``) to power-of-two centres, as PWFN's ``cluster_round``."""
    from .weight_fixing import candidate_centres

    if escalation not in ESCALATIONS:
        raise ValueError(f"escalation must be one of {ESCALATIONS}, got {escalation!r}")
    if not isinstance(mu, Tensor) or not isinstance(sigma, Tensor) or mu.shape != sigma.shape or mu.dim() != 1:
        raise ValueError("mu and sigma must be 1-D tensors of the same length")
    if not (isinstance(fraction, (int, float)) and 0 <= fraction <= 1):
        raise ValueError(f"fraction must be a number in [0, 1], got {fraction!r}")
    m = mu.detach().double()
    if not torch.isfinite(m).all():
        raise ValueError("mu contains NaN or Inf values")
    s = sigma.detach().double().clamp_min(SIGMA_FLOOR)
    n = m.numel()
    centre = torch.full((n,), math.nan, dtype=torch.float64)
    new_sigma = torch.full((n,), math.nan, dtype=torch.float64)
    out = ClusterRound(centre, new_sigma)
    left = min(n, math.ceil(n * fraction - 1e-9))
    small = m.abs() < 2.0**min_exp
    terms, counter = 1, 1 if escalation == "terms_first" else 0
    while left > 0:
        free = torch.isnan(centre).nonzero().squeeze(1)
        C = candidate_centres(float(m[free].abs().max()), terms, min_exp)
        while left > 0 and C.numel():
            free = torch.isnan(centre).nonzero().squeeze(1)
            mf, sf = m[free], s[free]
            lo, hi = (mf - tau * sf).sort().values, (mf + tau * sf).sort().values
            count = torch.searchsorted(lo, C, right=True) - torch.searchsorted(hi, C)  # #{lo <= c <= hi}
            zf = -1
            if zero_fix:
                if faithful_bugs:
                    zf = C.numel() // 2
                elif bool((C == 0).any()):
                    zf = int((C == 0).nonzero()[0])
            if zf >= 0:
                near = (mf - C[zf]).abs() / sf <= tau
                count[zf] = int((near | small[free]).sum())
            j = int(count.argmax())
            if int(count[j]) == 0:
                break
            d = (mf - C[j]).abs() / sf
            if j == zf:
                d = torch.where(small[free], torch.zeros_like(d), d)
            order = d.argsort(stable=True)
            take = min(int((d <= tau).sum()), left)
            pick = free[order[:take]]
            c = float(C[j])
            centre[pick] = c
            new_sigma[pick] = float(m[pick].std(unbiased=False)) if take > 1 else 0.0
            out.steps.append(ClusterStep(c, tuple(pick.tolist()), tau, terms))
            left -= take
            C = C[C != C[j]]
        if left <= 0:
            break
        if terms < max_terms and counter % 2 == 1:
            terms += 1
            out.escalations.append("terms")
        else:
            tau *= inc
            out.escalations.append("tau")
        counter += 1
    return out
