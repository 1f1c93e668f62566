"""Algorithm 1 of paper 001: descent along any provided direction with Armijo backtracking.

For every sample of the batch, from ``u0``: ``d = G(u, grad E(u))``; ``tau = tau0``; while
``E(u + tau d) > E(u) - c tau <d, -grad E(u)>``: ``tau = rho tau``; ``u = u + tau d``.
Each sample stops on its own (DESIGN §4 "When to stop"): after at least ``min_iter`` steps at
the first iterate with ``||A u - f|| <= delta``, or when ``||grad E|| <= grad_tol``, or at
``max_iter``. A stopped sample is frozen. The energy is non-increasing for every sample at
every step; the result records the largest increase seen so the promise is checked, not assumed.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Callable, List, Optional, Protocol

import torch

from ..energies import Energy, data_term_of, dot
from ..metrics import psnr, ssim
from .trace import MONOTONE_RTOL, IterationRecord, SampleVerdict, SolveResult


class DirectionProvider(Protocol):
    """``(u, grad, k) -> d``: a direction for the iterate ``u`` given ``grad = grad E(u)``."""

    def __call__(self, u: torch.Tensor, grad: torch.Tensor, k: int) -> torch.Tensor: ...


def negative_gradient(u: torch.Tensor, grad: torch.Tensor, k: int) -> torch.Tensor:
    """The steepest-descent direction ``d = -grad E(u)`` (methods ``gd`` and ``tv``)."""
    return -grad


@dataclass
class LineSearch:
    """Armijo backtracking settings (paper 001, Alg. 1: ``c in (0, 0.5)``, ``rho in (0, 1)``).

    ``initial`` picks the first trial step: ``"unit"`` (``tau = 1``, the paper's choice for
    networks), ``"lipschitz"`` (``1/L`` from the energy's known Lipschitz constant: the
    Landweber step for ``d = -grad E``), or ``"bb"`` (Barzilai-Borwein from the last two
    iterates, clipped to ``[1/L, 1e4/L]``; still safeguarded by the Armijo test).
    """

    c: float = 1e-4
    rho: float = 0.5
    max_backtracks: int = 60
    initial: str = "unit"

    def __post_init__(self):
        if not 0 < self.c < 0.5:
            raise ValueError(f"line search c must be in (0, 0.5), got {self.c}")
        if not 0 < self.rho < 1:
            raise ValueError(f"line search rho must be in (0, 1), got {self.rho}")
        if self.initial not in ("unit", "lipschitz", "bb"):
            raise ValueError(f"line search initial must be unit, lipschitz or bb, got {self.initial!r}")


@dataclass
class StopRule:
    """When a sample stops. ``delta`` is absolute, in the units of the data (``||A u - f||``)."""

    delta: Optional[float] = None
    min_iter: int = 0
    max_iter: int = 100
    grad_tol: float = 0.0

    def __post_init__(self):
        if self.delta is not None and not self.delta > 0:
            raise ValueError(f"delta must be > 0, got {self.delta}")
        if self.max_iter < 0 or self.min_iter < 0:
            raise ValueError("min_iter and max_iter must be >= 0")


def _bcast(t: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    return t.view(-1, *([1] * (like.dim() - 1)))


def _rows(x: torch.Tensor) -> torch.Tensor:
    return x.flatten(1)


def descend(
    energy: Energy,
    u0: torch.Tensor,
    direction: DirectionProvider = negative_gradient,
    *,
    line: LineSearch = LineSearch(),
    stop: StopRule = StopRule(),
    method: str = "gd",
    reference: Optional[torch.Tensor] = None,
    callback: Optional[Callable[[IterationRecord], None]] = None,
    record_ssim: bool = False,
) -> SolveResult:
    """Run Algorithm 1 (paper 001) from ``u0`` (shape ``(B, ...)``) and return the result.

    ``reference`` (same shape as ``u0``), when given, adds PSNR (and SSIM with
    ``record_ssim``) per iteration to the trace. ``callback`` receives every record (progress).
    """
    start = time.perf_counter()
    u = u0.detach().clone().float()
    batch = u.shape[0]
    data = data_term_of(energy)
    delta = stop.delta
    lipschitz = energy.lipschitz if line.initial in ("lipschitz", "bb") else None
    if line.initial in ("lipschitz", "bb") and not lipschitz:
        raise ValueError(f"initial step {line.initial!r} needs an energy with a known Lipschitz constant")

    e = energy.value(u)
    g = energy.grad(u)
    disc = data.discrepancy(u) if data is not None else None
    gnorm = _rows(g).norm(dim=1)

    active = torch.ones(batch, dtype=torch.bool, device=u.device)
    iters = torch.zeros(batch, dtype=torch.long)
    max_inc = torch.full((batch,), -math.inf, dtype=torch.float64)
    monotone = torch.ones(batch, dtype=torch.bool)
    fallbacks = torch.zeros(batch, dtype=torch.long)
    reasons: List[str] = [""] * batch
    prev_u: Optional[torch.Tensor] = None
    prev_g: Optional[torch.Tensor] = None
    trace: List[IterationRecord] = []

    def record(k: int, step: float, backtracks: int) -> None:
        rec = IterationRecord(
            iter=k,
            energy=float(e.double().sum()),
            discrepancy=None if disc is None else float(disc.double().pow(2).sum().sqrt()),
            grad_norm=float(gnorm.double().pow(2).sum().sqrt()),
            step=step,
            backtracks=backtracks,
            time_s=time.perf_counter() - start,
            active=int(active.sum()),
        )
        if reference is not None:
            rec.psnr = psnr(u.clamp(0, 1), reference)
            if record_ssim:
                rec.ssim = ssim(u.clamp(0, 1), reference)
        trace.append(rec)
        if callback is not None:
            callback(rec)

    def update_active(k: int) -> None:
        for i in range(batch):
            if not active[i]:
                continue
            reached = delta is not None and disc is not None and float(disc[i]) <= delta
            if k >= stop.min_iter and reached:
                reasons[i] = "delta"
            elif float(gnorm[i]) <= stop.grad_tol:
                reasons[i] = "grad_tol"
            elif k >= stop.max_iter:
                reasons[i] = "max_iter"
            else:
                continue
            active[i] = False
            iters[i] = k

    record(0, 0.0, 0)
    update_active(0)
    k = 0
    while bool(active.any()):
        k += 1
        steepest = direction is negative_gradient
        d = direction(u, g, k - 1).float()
        # <d, -grad E>, > 0 for a descent direction (known without a pass for d = -grad E)
        slope = gnorm**2 if steepest else -dot(d, g).to(d.dtype)
        # A direction that is not a descent direction (only possible for providers without a
        # descent-set layer) is replaced by -grad for that sample, and counted.
        bad = active & ~(slope > 0) & (gnorm > 0)
        if bool(bad.any()):
            d = torch.where(_bcast(bad, d), -g, d)
            slope = torch.where(bad, gnorm**2, slope)
            fallbacks += bad.cpu().long()

        if line.initial == "unit":
            tau = torch.ones(batch, device=u.device)
        else:
            tau0 = torch.full((batch,), 1.0 / lipschitz, device=u.device)  # type: ignore[operator]
            if line.initial == "bb" and prev_u is not None:
                s = _rows(u - prev_u)
                y = _rows(g - prev_g)
                sy = (s * y).sum(1)
                bb = (s * s).sum(1) / sy.clamp_min(1e-30)
                bb = torch.where(sy > 0, bb, tau0)
                tau0 = bb.clamp(1.0 / lipschitz, 1e4 / lipschitz)  # type: ignore[operator]
            tau = tau0
            if line.initial == "lipschitz":
                # For d = -grad E the Landweber step 1/L satisfies Armijo; for other directions
                # scale so the first trial moves as far as a 1/L gradient step would.
                if not steepest:
                    dn = _rows(d).norm(dim=1).clamp_min(1e-30)
                    tau = torch.where(gnorm > 0, tau * gnorm / dn, tau)

        phi = energy.along(u, d, e)
        tau = torch.where(active, tau, torch.zeros_like(tau))
        trials = torch.zeros(batch, dtype=torch.long, device=u.device)
        e_new = phi(tau)
        ok = (e_new <= e - line.c * tau * slope) | ~active
        while not bool(ok.all()):
            fail = ~ok
            if bool((trials[fail] >= line.max_backtracks).all()):
                break
            tau = torch.where(fail, tau * line.rho, tau)
            trials = trials + fail.long()
            e_new = phi(tau)
            ok = (e_new <= e - line.c * tau * slope) | ~active
        stalled = ~ok
        tau = torch.where(stalled, torch.zeros_like(tau), tau)

        prev_u, prev_g = u, g
        u = torch.addcmul(u, _bcast(tau.to(u.dtype), u), d)
        e_old = e
        if hasattr(energy, "moved"):
            energy.moved(u, prev_u, d, tau)  # type: ignore[attr-defined]
        e = energy.value(u)
        # Round-off guard: the Armijo test used the line's closed form; if the energy evaluated
        # directly at the new point is higher (possible only at the limit of float32 precision),
        # the step is undone and that sample stops: the recorded energy never rises.
        rose = active & (e > e_old)
        if bool(rose.any()):
            u = torch.where(_bcast(rose, u), prev_u, u).clone()
            # Reverted samples are back at their previous point: keep its recorded energy (an
            # exact re-evaluation may differ from the incrementally updated one by round-off).
            e = torch.where(rose, e_old, energy.value(u))
            stalled = stalled | rose
        g = energy.grad(u)
        # For E = 1/2||Au - f||^2 alone the discrepancy is sqrt(2E): no extra pass.
        disc = (2 * e).clamp_min(0).sqrt().float() if energy is data else (data.discrepancy(u) if data is not None else None)
        gnorm = _rows(g).norm(dim=1)

        inc = (e - e_old).double().cpu()
        moved = active.cpu()
        max_inc = torch.where(moved, torch.maximum(max_inc, inc), max_inc)
        tol = MONOTONE_RTOL * e_old.double().abs().cpu() + 1e-12
        monotone &= ~(moved & (inc > tol))
        for i in torch.nonzero(stalled & active).flatten().tolist():
            active[i] = False
            iters[i] = k
            reasons[i] = "precision_limit" if bool(rose[i]) else "line_search_stalled"
        moved_tau = tau[active | moved.to(tau.device)]
        record(k, float(moved_tau.mean()) if moved_tau.numel() else 0.0, int(trials.max()))
        update_active(k)

    samples = []
    for i in range(batch):
        di = None if disc is None else float(disc[i])
        samples.append(
            SampleVerdict(
                iterations=int(iters[i]),
                final_energy=float(e[i]),
                final_discrepancy=di,
                delta=delta,
                delta_reached=None if (delta is None or di is None) else di <= delta,
                max_energy_increase=float(max_inc[i]) if math.isfinite(float(max_inc[i])) else 0.0,
                energy_monotone=bool(monotone[i]),
                stop_reason=reasons[i],
                fallback_steps=int(fallbacks[i]),
            )
        )
    return SolveResult(u=u, trace=trace, samples=samples, method=method, elapsed_s=time.perf_counter() - start)
