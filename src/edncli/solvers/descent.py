"""Algorithm 1 of paper 001: descent along any provided direction with Armijo backtracking.

For every sample of the batch, from ``u0``: ``d = G(u, grad E(u))``; ``tau = tau0``; while
``E(u + tau d) > E(u) - c tau <d, -grad E(u)>``: ``tau = rho tau``; ``u = u + tau d``.
Each sample stops on its own (DESIGN §4 "When to stop"): after at least ``min_iter`` steps at
the first iterate with ``||A u - f|| <= delta`` (its own δ when ``StopRule.delta`` holds one per
sample), or when ``||grad E|| <= grad_tol``, or at ``max_iter``. A stopped sample is frozen.
The energy is non-increasing for every sample at every step; the result records the largest
increase seen so the promise is checked, not assumed.

Cost per iteration: the direction, one ``A d`` (closed-form line restriction of the quadratic
data term), one ``A^T r`` (gradient), and four passes over the data (the update, the residual
update, ``||A d||^2``, ``||grad E||^2``). For the data term alone, once a step lowers ``E`` by
less than ``CLOSED_FORM_MAX_DROP`` of its value, the new energy is the line's closed form at the
accepted step (host arithmetic, no pass); the residual and ``E`` are recomputed exactly from
``A u`` every ``DataFidelity.REFRESH_EVERY`` steps, and the round-off guard checks those values.
The update and the residual update write into the memory of ``grad E`` and ``A d`` where the
energy and operator say nothing else holds them (``grad_returns_new``, ``returns_new``): two
memory streams instead of three.
The per-sample scalars of an iteration cross to the host in two small transfers — the line's
coefficients before the step, the new energy and gradient norm after it — and the backtracking,
the stopping tests and the trace run on those host numbers, so the solver adds no further kernel
launches or device synchronisations. For a batch of more than one sample each trace record keeps
those per-sample numbers too, so that the result can be split per image
(:meth:`~edncli.solvers.trace.SolveResult.split`). Gradient descent on the data term alone for one
sample on the CPU (methods ``gd`` and ``cg``) runs a shorter loop with the same arithmetic
(:func:`_data_term_single`; ``tests/test_landweber_path.py`` checks that both give the same
iterates and trace, bit for bit).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Callable, List, Optional, Protocol

import numpy as np
import torch

from ..energies import Energy, data_term_of, fast_dot, fast_dot_host
from ..metrics import quality_each
from .stopping import Deltas, delta_values, per_sample_deltas
from .trace import IterationRecord, SampleVerdict, SolveResult, residual_resolution, rose_beyond_roundoff


#: Route every run through the general loop (tests compare it with the specialised one).
_GENERAL_ONLY = False

#: Largest relative drop ``|E(u_new) - E(u)| / E(u)`` for which the new energy is taken from the
#: line's closed form instead of a float64 norm of the residual.
CLOSED_FORM_MAX_DROP = 0.05

#: ``clamp_min(1e-38)`` of :class:`ConjugateDirections`, as the float32 number it is.
_F32_CLAMP = float(np.float32(1e-38))


class DirectionProvider(Protocol):
    """``(u, grad, k) -> d``: a direction for the iterate ``u`` given ``grad = grad E(u)``.

    A provider may also define ``initial_step(k) -> Optional[str]``: the line search's first
    trial for step ``k`` (one of :class:`LineSearch`'s ``initial`` values; None keeps the
    line search's own), e.g. unit steps for network directions, then exact ones for CG;
    ``wants_grad_norm_sq = True`` to be called as ``(u, grad, k, grad_norm_sq)`` with the
    solver's per-sample ``||grad||^2`` ``(B,)``; and ``used(d)``, called with the direction actually
    taken when the solver replaced a non-descent direction by ``-grad`` for some samples.
    """

    def __call__(self, u: torch.Tensor, grad: torch.Tensor, k: int) -> torch.Tensor: ...


def negative_gradient(u: torch.Tensor, grad: torch.Tensor, k: int) -> torch.Tensor:
    """The steepest-descent direction ``d = -grad E(u)`` (methods ``gd`` and ``tv``).

    :func:`descend` recognises this provider and steps along ``grad`` with a negative step
    instead, so ``-grad`` is never materialised.
    """
    return -grad


class ConjugateDirections:
    """Fletcher-Reeves directions ``d_k = -g_k + beta_k d_{k-1}``, ``beta_k = ||g_k||^2 / ||g_{k-1}||^2``.

    Per sample of the batch. With ``E = 1/2||A u - f||^2`` and the exact line minimisation
    (``LineSearch(initial="exact")``) this is CGLS, conjugate gradients on the normal equations
    (Hestenes & Stiefel 1952): the k-th iterate minimises ``||A u - f||`` over
    ``u0 + span{g_0, (A^T A) g_0, ..., (A^T A)^(k-1) g_0}``, so the residual is never above
    Landweber's after as many steps, and stopped at δ it is a regularisation method like
    Landweber's early stopping (Hanke 1995). A direction that is not a descent direction (after
    an inexact step or round-off) is replaced by ``-g`` for that sample by :func:`descend`, which
    reports it through :meth:`used` (a CG restart; counted as a fallback step). Keeps the previous
    direction, negated, and builds the next one in its memory in one pass,
    ``-d_k = g_k + beta_k (-d_{k-1})`` (:meth:`negated`; :func:`descend` steps along ``-d`` with a
    negative step, as for ``-grad E``, and holds no direction across steps): one instance per run.
    """

    wants_grad_norm_sq = True

    def __init__(self) -> None:
        self._p: Optional[torch.Tensor] = None  # -d of the last step
        self._gg: Optional[torch.Tensor] = None

    def negated(self, u: torch.Tensor, grad: torch.Tensor, k: int, grad_norm_sq: Optional[torch.Tensor] = None) -> torch.Tensor:
        """``-d_k``, in the memory of ``-d_{k-1}`` (overwritten by the next call)."""
        gg = fast_dot(grad, grad) if grad_norm_sq is None else grad_norm_sq
        if k == 0 or self._p is None:
            p = grad.clone()
        else:
            beta = torch.where(self._gg > 0, gg / self._gg.clamp_min(1e-38), torch.zeros_like(gg))  # type: ignore[operator]
            p = torch.addcmul(grad, _bcast(beta, grad), self._p, out=self._p)
        self._p, self._gg = p, gg
        return p

    def __call__(self, u: torch.Tensor, grad: torch.Tensor, k: int, grad_norm_sq: Optional[torch.Tensor] = None) -> torch.Tensor:
        return -self.negated(u, grad, k, grad_norm_sq)

    def used(self, d: torch.Tensor, negated: bool = False) -> None:
        """The direction the solver took instead (``-g`` for the samples it restarted; ``negated``:
        given as ``-d``)."""
        self._p = d if negated else -d


@dataclass
class LineSearch:
    """Armijo backtracking settings (paper 001, Alg. 1: ``c in (0, 0.5)``, ``rho in (0, 1)``).

    ``initial`` picks the first trial step: ``"unit"`` (``tau = 1``, the paper's choice for
    networks), ``"lipschitz"`` (``1/L`` from the energy's known Lipschitz constant: the
    Landweber step for ``d = -grad E``), ``"bb"`` (Barzilai-Borwein from the last two
    iterates, clipped to ``[1/L, 1e4/L]``), or ``"exact"`` (the minimiser ``-a1/a2`` of the line's
    closed form ``E + a1 t + a2 t^2/2`` where the energy is quadratic, which passes the Armijo test
    for any ``c <= 1/2``; ``"lipschitz"`` elsewhere). Every trial is still checked by the Armijo test.
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
        if self.initial not in ("unit", "lipschitz", "bb", "exact"):
            raise ValueError(f"line search initial must be unit, lipschitz, bb or exact, got {self.initial!r}")


@dataclass
class StopRule:
    """When a sample stops. ``delta`` is absolute, in the units of the data (``||A u - f||``):
    one value for every sample, or a list with one value per sample of the batch."""

    delta: Optional[Deltas] = None
    min_iter: int = 0
    max_iter: int = 100
    grad_tol: float = 0.0
    #: A per-sample test of the iterate, ``u (B, ...) -> (B,)`` bool: a sample whose iterate passes
    #: it stops (reason ``"done"``) once ``min_iter`` steps are taken — e.g. a Sudoku whose
    #: rounding is a solution. Checked after the δ test.
    done: Optional[Callable[[torch.Tensor], torch.Tensor]] = None

    def __post_init__(self):
        if self.delta is not None:
            values = delta_values(self.delta)
            if not values or not all(d > 0 for d in values):
                raise ValueError(f"delta must be > 0 (every sample's), got {self.delta}")
        if self.max_iter < 0 or self.min_iter < 0:
            raise ValueError("min_iter and max_iter must be >= 0")


def _bcast(t: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    return t.view(-1, *([1] * (like.dim() - 1)))


def _host(*values: Optional[torch.Tensor]) -> List[Optional[List[float]]]:
    """Per-sample ``(B,)`` tensors to Python floats in one device-to-host transfer (None kept)."""
    present = [v for v in values if v is not None]
    if not present:
        return [None] * len(values)
    if present[0].device.type == "cpu":  # no transfer to batch: reading each is cheapest
        return [None if v is None else v.tolist() for v in values]
    rows = torch.stack([v.detach().to(torch.float64) for v in present]).cpu().tolist()
    it = iter(rows)
    return [None if v is None else next(it) for v in values]


def _armijo(e: float, slope: float, a1: float, a2: float, tau: float, sign: float, c: float, rho: float, cap: int):
    """Backtrack on the closed form ``phi(t) = e + a1 t + a2 t^2 / 2`` with ``t = sign * tau``.

    Returns ``(tau, trials, ok)``: the first ``tau rho^j`` with
    ``phi(sign tau) <= e - c tau slope`` (Armijo), the number of reductions ``j``, and whether
    the test passed within ``cap`` reductions.
    """
    trials = 0
    while True:
        t = sign * tau
        if e + a1 * t + 0.5 * a2 * t * t <= e - c * tau * slope:
            return tau, trials, True
        if trials >= cap:
            return tau, trials, False
        tau *= rho
        trials += 1


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
    device = u.device
    data = data_term_of(energy)
    data_only = data is not None and energy is data
    delta = per_sample_deltas(stop.delta, batch)
    # A provider may choose the first trial step per iteration (e.g. network steps, then CG).
    initial_step: Optional[Callable[[int], Optional[str]]] = getattr(direction, "initial_step", None)
    wants_gg = bool(getattr(direction, "wants_grad_norm_sq", False))
    used: Optional[Callable[[torch.Tensor], None]] = getattr(direction, "used", None)
    lipschitz = energy.lipschitz if (line.initial != "unit" or initial_step is not None) else None
    if line.initial != "unit" and not lipschitz:
        raise ValueError(f"initial step {line.initial!r} needs an energy with a known Lipschitz constant")
    steepest = direction is negative_gradient
    has_moved = hasattr(energy, "moved")
    # For d = -grad E, or conjugate directions (which keep d, not grad E), with a gradient nothing
    # else references, u + tau d is built in the gradient's memory: two memory streams instead
    # of three, ~2x faster once an image no longer fits the L2 cache. The old iterate stays
    # intact (the round-off guard's exact undo); the old gradient is recomputed in the rare case
    # that the guard needs it. Barzilai-Borwein steps need the old gradient every iteration, so
    # they keep the out-of-place update, as do other providers (a network may hold grad E).
    cg_type = type(direction) is ConjugateDirections
    reuse_grad = ((steepest or cg_type) and line.initial != "bb"
                  and bool(getattr(energy, "grad_returns_new", False)))
    # <r, A d> (data space) instead of <d, grad E> (image space) where the data are smaller.
    slope_in_data = data_only and data.f[0].numel() < u[0].numel()  # type: ignore[union-attr]
    # A fresh ConjugateDirections (no state yet) with exact steps is CGLS: its own short loop too.
    conjugate = cg_type and direction._p is None and line.initial == "exact"  # type: ignore[attr-defined]
    if ((steepest and line.initial in ("unit", "lipschitz") or conjugate) and data_only and batch == 1
            and device.type == "cpu" and stop.done is None and not _GENERAL_ONLY):
        return _data_term_single(
            energy, u, line, stop, method, reference, callback, record_ssim, start, lipschitz, delta, reuse_grad, conjugate,
            slope_in_data,
        )

    def discrepancy_of(x: torch.Tensor) -> Optional[torch.Tensor]:
        # For E = 1/2||Au - f||^2 alone the discrepancy is sqrt(2E): no extra pass.
        return None if data is None or data_only else data.discrepancy(x)

    e = energy.value(u)
    g = energy.grad(u)
    gg = fast_dot(g, g)
    e_h, gn2_h, disc_h = _host(e, gg, discrepancy_of(u))
    if data_only:
        disc_h = [math.sqrt(max(2 * v, 0.0)) for v in e_h]

    active = [True] * batch
    iters = [0] * batch
    max_inc = [-math.inf] * batch
    eta = residual_resolution(None if data is None else data.f) or [0.0] * batch  # float32 resolution of A u - f
    monotone = [math.isfinite(v) for v in e_h]  # a NaN/Inf energy certifies nothing
    fallbacks = [0] * batch
    reasons: List[str] = [""] * batch
    prev_u: Optional[torch.Tensor] = None
    prev_g: Optional[torch.Tensor] = None
    trace: List[IterationRecord] = []

    def record(k: int, steps: List[Optional[float]], backtracks: List[int]) -> None:
        quality = (None, None) if reference is None else quality_each(u, reference, record_ssim)
        rec = IterationRecord.of_samples(
            k, time.perf_counter() - start, e_h, disc_h, gn2_h, steps, backtracks, active, *quality  # type: ignore[arg-type]
        )
        trace.append(rec)
        if callback is not None:
            callback(rec)

    def update_active(k: int) -> None:
        done_h = stop.done(u).tolist() if stop.done is not None and k >= stop.min_iter else None
        for i in range(batch):
            if not active[i]:
                continue
            reached = delta is not None and disc_h is not None and disc_h[i] <= delta[i]
            if k >= stop.min_iter and reached:
                reasons[i] = "delta"
            elif done_h is not None and done_h[i]:
                reasons[i] = "done"
            elif math.sqrt(max(gn2_h[i], 0.0)) <= stop.grad_tol:
                reasons[i] = "grad_tol"
            elif k >= stop.max_iter:
                reasons[i] = "max_iter"
            else:
                continue
            active[i] = False
            iters[i] = k

    record(0, [None] * batch, [0] * batch)
    update_active(0)
    k = 0
    while any(active):
        k += 1
        # The step is taken along ``d`` with ``t = sign * tau``: for d = -grad E the provider's
        # output is known, so the solver steps along grad E itself with sign -1.
        if steepest:
            d, sign = g, -1.0
        elif cg_type:  # -d_CG along a negative step: the direction update is one pass
            d, sign = direction.negated(u, g, k - 1, gg), -1.0  # type: ignore[attr-defined]
        else:
            d = direction(u, g, k - 1, gg) if wants_gg else direction(u, g, k - 1)  # type: ignore[call-arg]
            d, sign = d.float(), 1.0
        # For the data term <r, A d> = <A^T r, d> = <grad E, d>: for d = grad E that is ||grad E||^2
        # (known), otherwise the slope and the line share one inner product, taken in the smaller
        # of the two spaces (<r, A d> over the data for SR, <d, grad E> over the image for CT).
        dg = None if (steepest or slope_in_data) else fast_dot(d, g)
        if data_only:
            phi = energy.along(u, d, e, rad=gg if steepest else dg)
        else:
            phi = energy.along(u, d, e)
        e = None  # used by the line only; stale once u moves
        quad = getattr(phi, "quadratic", None)
        bb_pull = (None, None)
        initial = (initial_step(k - 1) if initial_step is not None else None) or line.initial
        if initial in ("lipschitz", "bb") and not lipschitz:
            raise ValueError(f"initial step {initial!r} needs an energy with a known Lipschitz constant")
        if initial == "bb" and prev_u is not None:
            s, y = u - prev_u, g - prev_g
            bb_pull = (fast_dot(s, y), fast_dot(s, s))
        dg_h, a1_h, a2_h, dd_h, sy_h, ss_h = _host(
            dg,
            None if quad is None else quad[0],
            None if quad is None else quad[1],
            fast_dot(d, d) if (not steepest and (initial == "lipschitz" or (initial == "exact" and quad is None))) else None,
            *bb_pull,
        )
        # slope = <sign d, -grad E> > 0 for a descent direction.
        slope = list(gn2_h) if steepest else [-sign * v for v in (a1_h if slope_in_data else dg_h)]  # type: ignore[union-attr]
        # A direction that is not a descent direction (only possible for providers without a
        # descent-set layer), or not finite (<d, grad E> is then not finite), is replaced by -grad
        # for that sample, and counted. A stopped sample's non-finite direction is replaced too:
        # its zero step must leave it as it is (0 * inf is NaN).
        bad = [
            not steepest and (not math.isfinite(slope[i]) or (active[i] and not slope[i] > 0 and gn2_h[i] > 0))
            for i in range(batch)
        ]
        if any(bad):
            mask = torch.tensor(bad, device=device)
            d = torch.where(_bcast(mask, d), -g if sign > 0 else g, d)  # sign * d = -g
            if cg_type:
                direction.used(d, negated=True)  # type: ignore[attr-defined]
            elif used is not None:
                used(d)
            phi = energy.along(u, d, e)
            quad = getattr(phi, "quadratic", None)
            a1_h, a2_h, dd_n = _host(
                None if quad is None else quad[0], None if quad is None else quad[1],
                fast_dot(d, d) if dd_h is not None else None,
            )
            dd_h = dd_n if dd_h is not None else None
            slope = [gn2_h[i] if bad[i] else slope[i] for i in range(batch)]
            for i in range(batch):
                fallbacks[i] += int(bad[i] and active[i])

        tau0 = [1.0] * batch
        if initial != "unit":
            tau0 = [1.0 / lipschitz if lipschitz else 1.0] * batch
            if sy_h is not None:
                for i in range(batch):
                    if sy_h[i] > 0:
                        bb = ss_h[i] / max(sy_h[i], 1e-30)  # type: ignore[index]
                        tau0[i] = min(max(bb, 1.0 / lipschitz), 1e4 / lipschitz)  # type: ignore[operator]
            if dd_h is not None:
                # Scale so the first trial moves as far as a 1/L gradient step would.
                for i in range(batch):
                    if gn2_h[i] > 0:
                        tau0[i] *= math.sqrt(gn2_h[i]) / max(math.sqrt(max(dd_h[i], 0.0)), 1e-30)
            if initial == "exact" and quad is not None:
                # The line's minimiser t* = -a1/a2, as a step along sign * d.
                for i in range(batch):
                    if a2_h[i] > 0:  # type: ignore[index]
                        t_star = -sign * a1_h[i] / a2_h[i]  # type: ignore[index]
                        if 0 < t_star < math.inf:
                            tau0[i] = t_star

        tau = [0.0] * batch
        trials = [0] * batch
        ok = [True] * batch
        if quad is not None:
            for i in range(batch):
                if active[i]:
                    tau[i], trials[i], ok[i] = _armijo(
                        e_h[i], slope[i], a1_h[i], a2_h[i], tau0[i], sign, line.c, line.rho, line.max_backtracks  # type: ignore[index]
                    )
        else:
            tau = [tau0[i] if active[i] else 0.0 for i in range(batch)]
            ok = [False if active[i] else True for i in range(batch)]
            while True:
                t_dev = torch.tensor([sign * v for v in tau], device=device, dtype=torch.float32)
                (vals,) = _host(phi(t_dev))
                for i in range(batch):
                    if active[i] and not ok[i]:
                        ok[i] = vals[i] <= e_h[i] - line.c * tau[i] * slope[i]  # type: ignore[index]
                pending = [i for i in range(batch) if not ok[i] and trials[i] < line.max_backtracks]
                if not pending:
                    break
                for i in pending:
                    tau[i] *= line.rho
                    trials[i] += 1
        stalled = [active[i] and not ok[i] for i in range(batch)]
        tau = [0.0 if (stalled[i] or not active[i]) else tau[i] for i in range(batch)]

        prev_u, prev_g = u, (None if reuse_grad else g)
        u_new = g if reuse_grad else torch.empty_like(u)
        t_step: "torch.Tensor | float" = (
            sign * tau[0] if batch == 1 else torch.tensor([sign * v for v in tau], device=device, dtype=u.dtype)
        )
        # For E = 1/2||Au - f||^2 alone whose residual moved to r + tau A d, E(u_new) is the
        # line's closed form at the accepted step: evaluated on the host in float64, no pass
        # over the data. Every REFRESH_EVERY steps the residual is recomputed from A u and E
        # evaluated from it, and the guard below compares that exact value. The residual moves
        # first, while ``A d`` is still in the cache.
        closed = bool(energy.moved(u_new, prev_u, d, t_step)) if has_moved else False  # type: ignore[attr-defined]
        if batch == 1:
            u = torch.add(u, d, alpha=t_step, out=u_new)
        else:
            u = torch.addcmul(u, _bcast(t_step, u), d, out=u_new)
        closed = closed and data_only and quad is not None
        if closed:
            # Only where the step lowers E by a small fraction: the closed form's rounding error
            # is ~1e-6 of the decrease (float32 inner products), so below ~5e-8 of E here; after
            # a large drop it would be a visible fraction of the much smaller new energy.
            drop = [a1_h[i] * (sign * tau[i]) + 0.5 * a2_h[i] * tau[i] * tau[i] for i in range(batch)]  # type: ignore[index]
            closed = all(abs(drop[i]) <= CLOSED_FORM_MAX_DROP * e_h[i] for i in range(batch))
        e_new: Optional[torch.Tensor] = None if closed else energy.value(u)
        g = energy.grad(u)
        gg = fast_dot(g, g)
        e_old_h, gn2_old_h = e_h, gn2_h
        if closed:
            (gn2_h,) = _host(gg)
            e_h = [e_old_h[i] + drop[i] for i in range(batch)]  # type: ignore[index]
            disc_new = None
        else:
            e_h, gn2_h, disc_new = _host(e_new, gg, discrepancy_of(u))
        # A sample that has stopped keeps the energy it stopped with: its iterate no longer moves,
        # and re-evaluating it (from a residual refreshed every REFRESH_EVERY steps) would move
        # its recorded energy, and the batch's, by round-off, up as often as down.
        if not all(active):
            e_h = [e_h[i] if active[i] else e_old_h[i] for i in range(batch)]  # type: ignore[index]
            gn2_h = [gn2_h[i] if active[i] else gn2_old_h[i] for i in range(batch)]  # type: ignore[index]
            if disc_new is not None and disc_h is not None:
                disc_new = [disc_new[i] if active[i] else disc_h[i] for i in range(batch)]
        # Round-off guard: the Armijo test used the line's closed form; if the energy evaluated
        # at the new point is higher (possible only at the limit of float32 precision), the step
        # is undone and that sample stops: the recorded energy never rises.
        # (``not <=``: a NaN energy counts as a rise.)
        rose = [active[i] and not e_h[i] <= e_old_h[i] for i in range(batch)]  # type: ignore[index]
        if any(rose):
            mask = torch.tensor(rose, device=device)
            u = torch.where(_bcast(mask, u), prev_u, u)
            if prev_g is None:  # its memory now holds the rejected iterate: recompute it
                prev_g = energy.grad(prev_u)
            g = torch.where(_bcast(mask, g), prev_g, g)
            gg = fast_dot(g, g)
            e_new = None  # E(u) is recomputed when a line needs it (u is a new tensor)
            old_disc = disc_h
            e_h = [e_old_h[i] if rose[i] else e_h[i] for i in range(batch)]  # type: ignore[index]
            gn2_h = [gn2_old_h[i] if rose[i] else gn2_h[i] for i in range(batch)]  # type: ignore[index]
            if disc_new is not None and old_disc is not None:
                disc_new = [old_disc[i] if rose[i] else disc_new[i] for i in range(batch)]
            stalled = [stalled[i] or rose[i] for i in range(batch)]
        e = e_new
        disc_h = [math.sqrt(max(2 * v, 0.0)) for v in e_h] if data_only else disc_new  # type: ignore[union-attr]
        going = [active[i] and not stalled[i] for i in range(batch)]
        if (delta is not None and data is not None and k >= stop.min_iter and disc_h is not None
                and any(going[i] and disc_h[i] <= delta[i] for i in range(batch)) and not data.residual_is_exact(u)):
            # δ met by the residual moved in place: confirm it on A u - f (one A u for the batch)
            # before stopping; samples where it does not hold go on from the exact residual. Only
            # the claiming samples take the fresh residual, energy and gradient: the others go on
            # exactly as in a batch without them (a torchrun shard equals the single-process run).
            claim = [going[i] and disc_h[i] <= delta[i] for i in range(batch)]
            exact = data.exact_discrepancy(u, rows=claim).tolist()
            fresh_e = energy.value(u)
            (fresh,) = _host(fresh_e)
            disc_h = [exact[i] if claim[i] else disc_h[i] for i in range(batch)]
            e_h = [fresh[i] if claim[i] else e_h[i] for i in range(batch)]  # type: ignore[index]
            claimed = torch.tensor(claim, device=fresh_e.device)
            e = None if e is None else torch.where(claimed, fresh_e.to(e.dtype), e)
            if any(claim[i] and exact[i] > delta[i] for i in range(batch)):
                g_new = energy.grad(u)
                g = torch.where(_bcast(claimed.to(g_new.device), g_new), g_new, g)
                gg = fast_dot(g, g)
                (gn2_new,) = _host(gg)
                gn2_h = [gn2_new[i] if claim[i] else gn2_h[i] for i in range(batch)]  # type: ignore[index]

        moved = list(active)
        for i in range(batch):
            if not moved[i]:
                continue
            inc = e_h[i] - e_old_h[i]  # type: ignore[index]
            max_inc[i] = max(max_inc[i], inc)
            if rose_beyond_roundoff(inc, e_old_h[i], eta[i]):  # type: ignore[index]  # NaN: not certified
                monotone[i] = False
        for i in range(batch):
            if stalled[i] and active[i]:
                active[i] = False
                iters[i] = k
                reasons[i] = "precision_limit" if rose[i] else "line_search_stalled"
        record(k, [tau[i] if moved[i] and not stalled[i] else None for i in range(batch)], trials)
        update_active(k)

    if delta is not None and data is not None and not data.residual_is_exact(u):
        disc_h = data.exact_discrepancy(u).tolist()  # the verdicts are on A u - f itself
    samples = []
    for i in range(batch):
        di = None if disc_h is None else disc_h[i]
        samples.append(
            SampleVerdict(
                iterations=iters[i],
                final_energy=e_h[i],
                final_discrepancy=di,
                delta=None if delta is None else delta[i],
                delta_reached=None if (delta is None or di is None) else di <= delta[i],
                max_energy_increase=max_inc[i] if math.isfinite(max_inc[i]) else 0.0,
                energy_monotone=monotone[i],
                stop_reason=reasons[i],
                fallback_steps=fallbacks[i],
            )
        )
    return SolveResult(u=u, trace=trace, samples=samples, method=method, elapsed_s=time.perf_counter() - start)


def _data_term_single(
    energy: Energy,
    u: torch.Tensor,
    line: LineSearch,
    stop: StopRule,
    method: str,
    reference: Optional[torch.Tensor],
    callback: Optional[Callable[[IterationRecord], None]],
    record_ssim: bool,
    start: float,
    lipschitz: Optional[float],
    delta: Optional[List[float]],
    reuse_grad: bool,
    conjugate: bool,
    slope_in_data: bool,
) -> SolveResult:
    """:func:`descend` on ``E = 1/2||A u - f||^2`` alone, one sample, on the CPU: ``gd`` or ``cg``.

    ``conjugate=False``: ``d = -grad E`` (Landweber); ``True``: the directions of a fresh
    :class:`ConjugateDirections` with exact steps (CGLS). The same iterates, trace and verdict as
    the general loop, bit for bit (``tests/test_landweber_path.py`` compares them), with host
    floats instead of per-sample lists and no per-iteration closures: on a CPU the solver's own
    time is mostly code and data that the operator's calls have evicted from the caches, so the
    shorter this loop, the lower its share of an iteration. For CG, ``beta_k`` is the float32
    quotient of the two gradient norms as the general loop's tensor division gives it: the
    float64 quotient of two float32 numbers rounds to the same float32 (53 >= 2 * 24 + 2 bits).
    """
    delta0 = None if delta is None else delta[0]
    (eta,) = residual_resolution(energy.f)  # type: ignore[attr-defined]  # float32 resolution of A u - f
    e_h = energy.value_host(u)  # type: ignore[attr-defined]
    g = energy.grad(u)
    gn2_h = fast_dot_host(g, g)
    disc_h = math.sqrt(max(2 * e_h, 0.0))
    trace: List[IterationRecord] = []
    # With no one to tell and no quality to measure, the records are built after the loop from
    # their numbers (the same records): less work between the operator's calls, while the
    # caches are cold.
    lazy = callback is None and reference is None
    rows: List[tuple] = []

    def record(k: int, step: Optional[float], backtracks: int, active: bool) -> None:
        if lazy:
            rows.append((k, time.perf_counter() - start, e_h, disc_h, gn2_h, step, backtracks, active))
            return
        quality = (None, None) if reference is None else quality_each(u, reference, record_ssim)
        rec = IterationRecord.of_one(k, time.perf_counter() - start, e_h, disc_h, gn2_h, step, backtracks, active, *quality)
        trace.append(rec)
        if callback is not None:
            callback(rec)

    def stop_reason(k: int) -> str:
        if delta0 is not None and k >= stop.min_iter and disc_h <= delta0:
            return "delta"
        if math.sqrt(max(gn2_h, 0.0)) <= stop.grad_tol:
            return "grad_tol"
        return "max_iter" if k >= stop.max_iter else ""

    tau_first = 1.0 if line.initial == "unit" else 1.0 / lipschitz  # type: ignore[operator]
    max_inc, monotone, fallbacks = -math.inf, math.isfinite(e_h), 0  # a NaN/Inf energy certifies nothing
    d: Optional[torch.Tensor] = None  # CG: the previous direction (negated), the next one is built in its memory
    one = (1,) * u.dim()  # the shape of a broadcast per-sample scalar
    gn2_prev = 0.0  # CG: ||grad E||^2 when ``d`` was built
    k = 0
    record(0, None, 0, True)
    reason = stop_reason(0)
    while not reason:
        k += 1
        tau0 = tau_first
        if not conjugate:
            # <r, A grad E> = ||grad E||^2 is known: line_host() computes A d and ||A d||^2 only
            step_dir, sign = g, -1.0
            a1, a2 = energy.line_host(u, g, rad=gn2_h)  # type: ignore[attr-defined]
            slope = gn2_h
        else:
            # d holds -d_CG (as ConjugateDirections.negated builds it), stepped along with sign -1
            if d is None:
                d = g.clone()
            else:
                # rounded to float32 by torch.full: the general loop's float32 quotient
                beta = gn2_h / max(gn2_prev, _F32_CLAMP) if gn2_prev > 0 else 0.0
                d = torch.addcmul(g, torch.full(one, beta), d, out=d)
            gn2_prev = gn2_h
            dg = None if slope_in_data else fast_dot_host(d, g)
            a1, a2 = energy.line_host(u, d, rad=dg)  # type: ignore[attr-defined]
            slope = a1
            if not math.isfinite(slope) or (not slope > 0 and gn2_h > 0):  # a CG restart, as in descend
                d = g.clone()
                a1, a2 = energy.line_host(u, d)  # type: ignore[attr-defined]
                slope = gn2_h
                fallbacks += 1
            step_dir, sign = d, -1.0
            if a2 > 0:
                t_star = -sign * a1 / a2
                if 0 < t_star < math.inf:
                    tau0 = t_star
        tau, trials, ok = _armijo(e_h, slope, a1, a2, tau0, sign, line.c, line.rho, line.max_backtracks)
        if not ok:
            tau = 0.0
        t_step = sign * tau
        prev_u, prev_g = u, (None if reuse_grad else g)
        # The residual moves first, while ``A d`` is still in the cache (~1 point of overhead on
        # image-sized data); the new iterate's tensor is named before it is written.
        u_new = g if reuse_grad else torch.empty_like(u)
        closed = bool(energy.moved(u_new, prev_u, step_dir, t_step))  # type: ignore[attr-defined]
        u = torch.add(u, step_dir, alpha=t_step, out=u_new)
        drop = a1 * t_step + 0.5 * a2 * tau * tau
        closed = closed and abs(drop) <= CLOSED_FORM_MAX_DROP * e_h
        e_new = e_h + drop if closed else energy.value_host(u)  # type: ignore[attr-defined]
        g = energy.grad(u)
        e_old, gn2_old = e_h, gn2_h
        e_h = e_new
        gn2_h = fast_dot_host(g, g)
        rose = not e_h <= e_old
        if rose:  # round-off guard, as in the general loop: undo the step and stop
            u = prev_u.clone()
            g = energy.grad(prev_u) if prev_g is None else prev_g
            e_h, gn2_h = e_old, gn2_old
        disc_h = math.sqrt(max(2 * e_h, 0.0))
        stalled = rose or not ok
        if (not stalled and delta0 is not None and k >= stop.min_iter and disc_h <= delta0
                and not energy.residual_is_exact(u)):  # type: ignore[attr-defined]
            # δ met by the residual moved in place: confirm it on A u - f (one A u) before
            # stopping; if it does not hold, go on from the exact residual and gradient.
            disc_h = energy.exact_discrepancy(u).item()  # type: ignore[attr-defined]
            e_h = energy.value_host(u)  # type: ignore[attr-defined]
            if disc_h > delta0:
                g = energy.grad(u)
                gn2_h = fast_dot_host(g, g)
        inc = e_h - e_old
        max_inc = max(max_inc, inc)
        if rose_beyond_roundoff(inc, e_old, eta):  # NaN: not certified
            monotone = False
        record(k, None if stalled else tau, trials, not stalled)
        reason = ("precision_limit" if rose else "line_search_stalled") if stalled else stop_reason(k)

    if lazy:
        trace = [IterationRecord.of_one(*row) for row in rows]
    if delta0 is not None and not energy.residual_is_exact(u):  # type: ignore[attr-defined]
        disc_h = energy.exact_discrepancy(u).item()  # type: ignore[attr-defined]  # the verdict is on A u - f itself
    verdict = SampleVerdict(
        iterations=k,
        final_energy=e_h,
        final_discrepancy=disc_h,
        delta=delta0,
        delta_reached=None if delta0 is None else disc_h <= delta0,
        max_energy_increase=max_inc if math.isfinite(max_inc) else 0.0,
        energy_monotone=monotone,
        stop_reason=reason,
        fallback_steps=fallbacks,
    )
    return SolveResult(u=u, trace=trace, samples=[verdict], method=method, elapsed_s=time.perf_counter() - start)
