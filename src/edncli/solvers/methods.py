"""Reconstruction methods by name, each with its stopping semantics (DESIGN §4 "When to stop").

- ``gd`` (Landweber): steepest descent on ``E = 1/2||Au - f||^2`` with step ``1/||A||^2``
  (Armijo-safeguarded); classical early stopping at the first iterate with ``||Au - f|| <= δ``.
- ``tv``: minimise ``E + α R`` (``R`` Huber-TV) to tolerance; ``α`` given, or chosen per sample
  by the discrepancy principle (Morozov: the largest ``α`` whose minimiser meets δ).

Learned methods register themselves here (``register_method``) from their own modules.
"""

from __future__ import annotations

import math
import numbers
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Callable, Dict, List, Optional, Sequence

import torch

from ..energies import DataFidelity, Energy, HuberTV
from ..operators.base import LinearOperator
from .options import DEFAULT_MAX_ITER
from .descent import ConjugateDirections, DirectionProvider, LineSearch, StopRule, descend, negative_gradient
from .stopping import DeltaChoice
from .trace import IterationRecord, SolveResult

if TYPE_CHECKING:  # pragma: no cover
    from ..networks.inference import InferenceConfig


@dataclass
class Problem:
    """A linear inverse problem ``f = A u + noise``, batched over the first dimension.

    ``f``: ``(B, *op.out_shape)``; ``u0``: ``(B, *op.in_shape)`` initial guess;
    ``delta``: δ for every sample, or per sample (:meth:`DeltaChoice.stack`);
    ``reference``: ground truth of ``u`` when known (adds PSNR to the trace).
    """

    op: LinearOperator
    f: torch.Tensor
    u0: torch.Tensor
    delta: Optional[DeltaChoice] = None
    reference: Optional[torch.Tensor] = None
    task: str = "generic"

    def __post_init__(self) -> None:
        """A number as ``delta`` means δ as given (any real scalar: numpy's float32 included);
        ``f``, ``u0`` and ``reference`` are held in float32, the solvers' precision (arrays read with
        numpy are float64), contiguous, so a result does not depend on the inputs' memory layout,
        and detached from any autograd graph. Shapes that do not fit ``op`` and a δ that is not a
        finite number > 0 are a :class:`UsageError`; NaN/Inf in ``f`` or ``u0`` an :class:`InputError`."""
        from ..errors import InputError, UsageError

        if isinstance(self.delta, numbers.Real) and not isinstance(self.delta, bool):
            self.delta = DeltaChoice(float(self.delta), "given")
        self.f, self.u0 = self.f.detach().float().contiguous(), self.u0.detach().float().contiguous()
        if self.reference is not None:
            self.reference = self.reference.detach().float().contiguous()
        for name, t, shape in (("f", self.f, self.op.out_shape), ("u0", self.u0, self.op.in_shape),
                               ("reference", self.reference, self.op.in_shape)):
            if t is not None and tuple(t.shape[1:]) != tuple(shape):
                raise UsageError(f"Problem: {name} has shape {tuple(t.shape)}; {type(self.op).__name__} needs "
                                 f"(B, {', '.join(map(str, shape))}) with a leading batch dimension B")
        for name, t in (("u0", self.u0), ("reference", self.reference)):
            if t is not None and t.shape[0] != self.f.shape[0]:
                raise UsageError(f"Problem: {name} has {t.shape[0]} samples and f has {self.f.shape[0]}; give one per sample")
        for name, t in (("f", self.f), ("u0", self.u0)):
            bad = int(t.numel() - torch.isfinite(t).sum())
            if bad:
                raise InputError(f"Problem: {name} holds {bad} NaN/Inf values; replace them (e.g. torch.nan_to_num) first")
        if self.delta is not None:
            wrong = [d for d in self.deltas() if not (math.isfinite(d) and d > 0)]
            if wrong:
                raise UsageError(f"Problem: δ must be a finite number > 0 for every sample, got {wrong[0]!r}; "
                                 "give delta=None to stop by iterations only")

    def deltas(self) -> Optional[List[float]]:
        """δ of each of the ``B`` samples (``None``: no δ stop)."""
        return None if self.delta is None else self.delta.per_sample(self.f.shape[0])

    @staticmethod
    def stack(problems: Sequence["Problem"]) -> "Problem":
        """Problems of one operator and task, stacked along the batch; δ becomes per sample.

        The operator of the first problem is used: every problem must have the same shapes of
        ``f`` and ``u0`` (and the same operator, which the caller guarantees). Split the result
        with ``result.split([p.f.shape[0] for p in problems])``.
        """
        first = problems[0]
        for p in problems[1:]:
            if p.f.shape[1:] != first.f.shape[1:] or p.u0.shape[1:] != first.u0.shape[1:] or p.task != first.task:
                raise ValueError(
                    f"cannot stack problems of data shapes {tuple(first.f.shape)} and {tuple(p.f.shape)} "
                    f"(tasks {first.task!r}, {p.task!r})"
                )
        refs = [p.reference for p in problems]
        if any(r is None for r in refs) and not all(r is None for r in refs):
            raise ValueError("problems with and without a reference cannot be stacked into one batch")
        return Problem(
            op=first.op,
            f=torch.cat([p.f for p in problems]),
            u0=torch.cat([p.u0 for p in problems]),
            delta=DeltaChoice.stack([p.delta for p in problems], [p.f.shape[0] for p in problems]),
            reference=None if refs[0] is None else torch.cat(refs),  # type: ignore[arg-type]
            task=first.task,
        )


#: What ``edn`` may continue with after its network steps (``--handover``).
HANDOVERS = ("cg", "gd")


def check_handover(name: str) -> str:
    """``name`` if it is one of :data:`HANDOVERS`, else a one-line usage error."""
    if name not in HANDOVERS:
        from ..errors import UsageError

        raise UsageError(f"--handover must be gd or cg, got {name!r}")
    return name


@dataclass
class MethodOptions:
    """Options shared by the methods; each method reads the ones it needs."""

    #: Iteration cap; ``None``: :data:`~edncli.solvers.options.DEFAULT_MAX_ITER`, and for
    #: potential/red/pnp their preset's. A value given, even 300, is the cap of every method.
    max_iter: Optional[int] = None
    min_iter: Optional[int] = None
    #: edn: network steps at most (None: ``min_iter``); then ``handover`` steps until δ.
    learned_steps: Optional[int] = None
    #: edn: after the network steps, ``"cg"`` (conjugate gradients) or ``"gd"`` (Landweber).
    handover: str = "cg"
    grad_tol: float = 0.0
    c: float = 1e-4
    rho: float = 0.5
    alpha: Optional[float] = None
    huber_eps: float = 0.01
    tv_inner_iter: int = 100
    tv_search_steps: int = 8
    weights: Optional[str] = None
    record_ssim: bool = False
    extra: Dict[str, object] = field(default_factory=dict)
    #: How networks are evaluated: an ``edncli.networks.inference.InferenceConfig`` (tiles,
    #: precision); ``None`` = whole image, float32. Methods without a network ignore it.
    inference: Optional["InferenceConfig"] = None

    def __post_init__(self) -> None:
        check_handover(self.handover)
        if self.max_iter is not None and self.max_iter < 0:
            from ..errors import UsageError

            raise UsageError(f"--max-iter must be >= 0, got {self.max_iter}")
        if self.alpha is not None and not (self.alpha > 0 and math.isfinite(self.alpha)):
            from ..errors import UsageError

            raise UsageError(f"--alpha must be > 0 and finite, got {self.alpha}")

    @property
    def iteration_cap(self) -> int:
        """``max_iter``, or :data:`~edncli.solvers.options.DEFAULT_MAX_ITER` when not given."""
        return DEFAULT_MAX_ITER if self.max_iter is None else int(self.max_iter)


Callback = Optional[Callable[[IterationRecord], None]]
MethodFn = Callable[[Problem, MethodOptions, Callback], SolveResult]
METHODS: Dict[str, MethodFn] = {}


def register_method(name: str) -> Callable[[MethodFn], MethodFn]:
    def wrap(fn: MethodFn) -> MethodFn:
        METHODS[name] = fn
        return fn

    return wrap


def solve(problem: Problem, method: str, options: MethodOptions = MethodOptions(), callback: Callback = None) -> SolveResult:
    """Run ``method`` on ``problem``; the result carries the trace and per-sample verdicts."""
    if method not in METHODS:
        _load_learned_methods()
    if method not in METHODS:
        from ..errors import UsageError

        raise UsageError(f"unknown method {method!r}; choose from {', '.join(sorted(METHODS))}")
    return METHODS[method](problem, options, callback)


def _load_learned_methods() -> None:
    """Import modules that register learned methods (kept lazy: they need networks)."""
    import importlib

    for module in ("edncli.solvers.learned", "edncli.solvers.potential"):
        try:
            importlib.import_module(module)
        except ModuleNotFoundError as exc:
            if exc.name != module:
                raise


def _early_stopping(problem: Problem, options: MethodOptions, callback: Callback, method: str,
                    direction: DirectionProvider, initial: str) -> SolveResult:
    """Algorithm 1 on ``1/2||Au - f||^2`` alone, stopped at the first iterate meeting δ."""
    return descend(
        DataFidelity(problem.op, problem.f),
        problem.u0,
        direction,
        line=LineSearch(c=options.c, rho=options.rho, initial=initial),
        stop=StopRule(delta=problem.deltas(), min_iter=options.min_iter or 0, max_iter=options.iteration_cap, grad_tol=options.grad_tol),
        method=method,
        reference=problem.reference,
        callback=callback,
        record_ssim=options.record_ssim,
    )


@register_method("gd")
def solve_gd(problem: Problem, options: MethodOptions, callback: Callback = None) -> SolveResult:
    """Landweber iteration with Armijo safeguard, stopped at the first iterate meeting δ."""
    return _early_stopping(problem, options, callback, "gd", negative_gradient, "lipschitz")


@register_method("cg")
def solve_cg(problem: Problem, options: MethodOptions, callback: Callback = None) -> SolveResult:
    """CGLS as Algorithm 1 (conjugate directions, exact line minimisation), stopped at the first
    iterate meeting δ: the same early stopping as ``gd``, in far fewer iterations."""
    return _early_stopping(problem, options, callback, "cg", ConjugateDirections(), "exact")


class _PerSampleWeighted(Energy):
    """``w_b R(u_b)`` with one weight per sample (so Morozov can pick ``α`` per sample)."""

    def __init__(self, term: Energy, weights: torch.Tensor):
        self.term = term
        self.weights = weights
        self.name = f"weighted_{term.name}"
        self.lipschitz = float(weights.max()) * term.lipschitz if term.lipschitz else None

    def _w(self, like: torch.Tensor) -> torch.Tensor:
        return self.weights.to(like.device).view(-1, *([1] * (like.dim() - 1)))

    def value(self, u):
        return self.weights.to(u.device) * self.term.value(u)

    def grad(self, u):
        return self._w(u) * self.term.grad(u)

    def describe(self):
        return {**self.term.describe(), "alpha": [float(a) for a in self.weights]}


#: tv's α search ends for a sample when the largest α known to meet δ has a discrepancy of at
#: least (1 - this) δ: the discrepancy principle's α to within ~1.5% of its value.
TV_DISC_RTOL = 0.01
#: A search solve that ran to its iteration cap while its discrepancy still moved towards δ says
#: nothing about disc(α) on the other side: it is continued at the same α, up to this many times.
TV_UNSURE_REPEATS = 12


def _tv_solve(problem: Problem, alpha: torch.Tensor, u0: torch.Tensor, options: MethodOptions, callback: Callback, max_iter: int) -> SolveResult:
    data = DataFidelity(problem.op, problem.f)
    # α on u's device once: a CPU α would be copied to the GPU at every energy and gradient call
    energy = data + _PerSampleWeighted(HuberTV(options.huber_eps), alpha.to(u0.device))
    # Minimise to tolerance: stop when ||grad|| has fallen by 1e-4 relative to the start.
    g0 = energy.grad(u0).flatten(1).norm(dim=1).max()
    tol = max(options.grad_tol, 1e-4 * float(g0))
    return descend(
        energy,
        u0,
        line=LineSearch(c=options.c, rho=options.rho, initial="bb"),
        stop=StopRule(delta=None, max_iter=max_iter, grad_tol=tol),
        method="tv",
        reference=problem.reference,
        callback=callback,
        record_ssim=options.record_ssim,
    )


def _discrepancies(problem: Problem, u: torch.Tensor) -> torch.Tensor:
    """``||A u_i - f_i||`` per sample, float64 on the host: (B,)."""
    with torch.no_grad():
        r = (problem.op(u) - problem.f).flatten(1).double()
    return r.norm(dim=1).cpu()


def _discrepancies_at(result: SolveResult, k: int) -> torch.Tensor:
    """Per-sample ``||A u - f||`` recorded at iteration ``k`` of a solve (the last record before
    it for a sample that stopped earlier): (B,) float64."""
    rec = result.trace[min(k, len(result.trace) - 1)]
    values = rec.rows.discrepancy if rec.rows is not None else [rec.discrepancy]
    return torch.tensor(values, dtype=torch.float64)


def _attach_delta(result: SolveResult, deltas: Optional[List[float]]) -> SolveResult:
    for i, s in enumerate(result.samples):
        s.delta = None if deltas is None else deltas[i]
        s.delta_reached = None if s.delta is None or s.final_discrepancy is None else s.final_discrepancy <= s.delta
    return result


@register_method("tv")
def solve_tv(problem: Problem, options: MethodOptions, callback: Callback = None) -> SolveResult:
    """Huber-TV regularised least squares; ``α`` given or by the discrepancy principle.

    ``elapsed_s`` counts the whole method, the α search's solves included (the trace's
    ``time_s`` are those of the final solve)."""
    started = time.perf_counter()
    batch = problem.f.shape[0]
    deltas = problem.deltas()
    if options.alpha is not None:  # > 0 and finite: MethodOptions checks it
        alpha = torch.full((batch,), float(options.alpha))
        result = _tv_solve(problem, alpha, problem.u0, options, callback, options.iteration_cap)
        result.extra["alpha"] = [float(a) for a in alpha]
        result.extra["alpha_rule"] = "given"
        return _attach_delta(result, deltas)
    if deltas is None:
        from ..errors import UsageError

        raise UsageError("method tv needs --alpha, or a δ (--delta / --noise-sigma) to choose α by the discrepancy principle")

    # Morozov: disc(α) grows with α; per sample, find the largest α with disc(α) <= δ by
    # stepping in decades until bracketed, then by the Illinois method (regula falsi that halves
    # the weight of an end point kept twice) on log disc against log α, which is nearly linear:
    # 3-5 solves instead of bisection's 8. A sample is done when its largest α meeting δ has a
    # discrepancy within TV_DISC_RTOL of δ, or after `tv_search_steps` bracketed steps. Warm
    # starts keep solves short. A solve stopped by its cap is evidence only where its
    # discrepancy moved away from δ's other side: one that misses δ while still falling (from an
    # FBP or other rough start), or meets it while still rising (from the minimiser of a smaller
    # α), and is nearer δ than the second half of its run moved it, is continued at the same α
    # (TV_UNSURE_REPEATS); on CT, trusting such a miss once put α two decades too low and the
    # result at 0.56 δ.
    tv = HuberTV(options.huber_eps)
    u0 = problem.u0
    # Start where the two terms balance at a discrepancy of δ: α R(u) ~ δ^2 / 2, with u the
    # initial guess (or A^T f rescaled when the guess is flat).
    probe = u0 if float(tv.value(u0).min()) > 0 else problem.op.adjoint(problem.f) / problem.op.sqnorm()
    r0 = tv.value(probe).clamp_min(1e-12)
    delta = torch.tensor(deltas, dtype=torch.float64)  # (B,), per sample
    log_delta = torch.log10(delta)
    log_alpha = torch.log10(((0.5 * delta**2).to(r0) / r0).clamp(1e-12, 1e12)).cpu().double()
    lo = torch.full((batch,), -math.inf, dtype=torch.float64)  # largest log α known to meet δ
    hi = torch.full((batch,), math.inf, dtype=torch.float64)  # smallest log α known to miss δ
    f_lo = torch.full((batch,), math.nan, dtype=torch.float64)  # log disc - log δ there (<= 0) ...
    f_hi = torch.full((batch,), math.nan, dtype=torch.float64)  # ... (> 0), as the Illinois weights
    d_lo = torch.full((batch,), -math.inf, dtype=torch.float64)  # log disc at lo, unweighted
    d_hi = torch.full((batch,), math.inf, dtype=torch.float64)  # log disc at hi, unweighted
    kept = torch.zeros(batch, dtype=torch.long)  # +1: lo moved last, -1: hi moved last
    best_u = u0.clone()
    bracketed_steps = torch.zeros(batch, dtype=torch.long)
    log: List[dict] = []
    warm = u0
    # Iterations spent outside the reported solve (the search's solves, discarded final solves):
    # per sample, so a report's `iterations` plus these is the method's whole work.
    search_iterations = [0] * batch
    repeats = torch.zeros(batch, dtype=torch.long)
    for _ in range(options.tv_search_steps + 16 + TV_UNSURE_REPEATS):
        alpha = (10.0**log_alpha).float()
        start_disc = _discrepancies(problem, warm)
        res = _tv_solve(problem, alpha, warm, options, None, options.tv_inner_iter)
        search_iterations = [n + s.iterations for n, s in zip(search_iterations, res.samples)]
        disc = torch.tensor([s.final_discrepancy for s in res.samples], dtype=torch.float64)
        meets = disc <= delta
        capped = torch.tensor([s.stop_reason == "max_iter" for s in res.samples])
        falling = disc < start_disc
        # towards δ's other side, and nearer δ than the run's second half moved it
        towards = (~meets & falling) | (meets & ~falling)
        near = (disc - delta).abs() < (disc - _discrepancies_at(res, options.tv_inner_iter // 2)).abs()
        unsure = capped & towards & near & (repeats < TV_UNSURE_REPEATS)
        repeats = torch.where(unsure, repeats + 1, torch.zeros_like(repeats))
        f = torch.log10(disc.clamp_min(1e-300)) - log_delta
        log.append({"alpha": alpha.tolist(), "discrepancy": disc.tolist(), "iterations": [s.iterations for s in res.samples],
                    "continued": unsure.tolist()})
        up_lo = meets & ~unsure & (log_alpha > lo)
        up_hi = ~meets & ~unsure & (log_alpha < hi)
        # Illinois: the end point that stays for a second step in a row counts half as much
        f_hi = torch.where(up_lo & (kept > 0), 0.5 * f_hi, f_hi)
        f_lo = torch.where(up_hi & (kept < 0), 0.5 * f_lo, f_lo)
        lo, f_lo, d_lo = (torch.where(up_lo, log_alpha, lo), torch.where(up_lo, f, f_lo),
                          torch.where(up_lo, f + log_delta, d_lo))
        hi, f_hi, d_hi = (torch.where(up_hi, log_alpha, hi), torch.where(up_hi, f, f_hi),
                          torch.where(up_hi, f + log_delta, d_hi))
        kept = torch.where(up_lo, 1, torch.where(up_hi, -1, kept))
        best_u[up_lo.to(best_u.device)] = res.u[up_lo.to(best_u.device)]
        warm = res.u
        bracketed = torch.isfinite(lo) & torch.isfinite(hi)
        bracketed_steps += bracketed.long()
        close = d_lo >= log_delta + math.log10(1 - TV_DISC_RTOL)
        finished = ~unsure & (close | (bracketed & (bracketed_steps >= options.tv_search_steps)) | (lo > 6) | (hi < -12))
        if bool(finished.all()):
            break
        t = (-f_lo / (f_hi - f_lo)).nan_to_num(0.5)
        t = torch.where((t > 0) & (t < 1), t, torch.full_like(t, 0.5)).clamp(0.02, 0.98)
        step = torch.where(
            bracketed, lo + t * (hi - lo), torch.where(torch.isfinite(hi), hi - 1.0, lo + 1.0)
        )
        log_alpha = torch.where(unsure, log_alpha, step)
    found = torch.isfinite(lo)
    final_log = torch.where(found, lo, hi - 1.0)
    final_alpha = (10.0**final_log).float()
    start = torch.where(found.to(best_u.device).view(-1, *([1] * (u0.dim() - 1))), best_u, warm)
    result = _tv_solve(problem, final_alpha, start, options, callback, options.iteration_cap)
    # The search's solves are inexact: the converged minimiser may land just above δ. Step log α
    # down along the bracket's slope of log disc against log α, aiming at the middle of the
    # TV_DISC_RTOL band below δ (halving α used to leave the discrepancy ~12% below δ); where
    # there is no bracket, or after two such steps, halve α.
    slope = ((d_hi - d_lo) / (hi - lo)).nan_to_num(0.0)
    slope = torch.where(torch.isfinite(slope) & (slope > 0), slope, torch.zeros_like(slope))
    target = log_delta + math.log10(1 - TV_DISC_RTOL / 2)
    for attempt in range(4):
        missed = torch.tensor([s.final_discrepancy > d for s, d in zip(result.samples, deltas)]) & found
        if not bool(missed.any()):
            break
        log_disc = torch.log10(torch.tensor([s.final_discrepancy for s in result.samples], dtype=torch.float64))
        down = ((log_disc - target) / slope).clamp(0.002, math.log10(2))
        down = torch.where((slope > 0) & (attempt < 2), down, torch.full_like(down, math.log10(2)))
        final_log = torch.where(missed, final_log - down, final_log)
        final_alpha = (10.0**final_log).float()
        search_iterations = [n + s.iterations for n, s in zip(search_iterations, result.samples)]
        result = _tv_solve(problem, final_alpha, start, options, callback, options.iteration_cap)
    result.extra["alpha"] = final_alpha.tolist()
    result.extra["alpha_rule"] = "discrepancy"
    result.extra["alpha_search"] = log
    result.extra["search_iterations"] = search_iterations
    result.elapsed_s = time.perf_counter() - started
    return _attach_delta(result, deltas)
