"""Per-iteration cost of Algorithm 1 against the bare cost of its operator calls.

One iteration of ``gd`` needs ``A d`` (line restriction) and ``A^T r`` (gradient); the residual
is updated in place, so no further ``A u`` (except an exact refresh every 25 steps). The
operator is wrapped in a timing proxy, so ``t_ops`` is the time spent inside ``A``/``Aᵀ`` *in
the same run*; the solver's own overhead (update, inner products, line search, stopping tests,
the trace) is ``(t_iteration - t_ops) / t_iteration``; the target is < 10%. For ``gd`` the next
column is the same ratio for a hand-written Landweber loop (:func:`_bare_time`): the floor that
separate torch passes over the vectors set, measured in the same run. With ``--threads 1``
times are thread CPU times, so load from other processes on a shared machine does not count.

For ``gd`` a second table splits ``descend``'s iteration the way issue 6 names the parts:
operators (``A d``, ``Aᵀ r``), line search (the step's scalars: ``‖A d‖²``, ``‖∇E‖²`` and their
trip to the host), update (``r + τ A d``, ``u − τ ∇E``) and bookkeeping (everything ``descend``
does beyond the hand-written loop: closed-form energy, stopping tests, the trace, refreshes,
Python). The line-search/update division of the loop's arithmetic comes from a copy of the loop
with a timer around each group (:func:`_bare_split`); the columns are shares of ``descend``'s
iteration and add up to 100%.

    python benchmarks/bench_solver.py --iterations 20 --repeat 7 --threads 1

(50 iterations would run the bicubic SR case into float32 precision and stop early.)
"""

from __future__ import annotations

import argparse
import math
import platform
import statistics
import time

import torch

from edncli.energies import DataFidelity
from edncli.operators.blur import Blur, gaussian_kernel
from edncli.operators.downsample import BicubicDownsample
from edncli.solvers.descent import ConjugateDirections, LineSearch, StopRule, descend, negative_gradient


def _clock() -> float:
    """CPU time of this thread: with one torch thread, time spent preempted by other processes
    on a shared machine is not counted, so the ratio stays meaningful under load."""
    return time.thread_time() if torch.get_num_threads() == 1 else time.perf_counter()


class _TimedOperator:
    """Proxy that accumulates the CPU time spent inside ``forward``/``adjoint`` of an operator."""

    def __init__(self, op):
        self._op = op
        self.seconds = 0.0
        self.calls = 0

    def __getattr__(self, name):
        return getattr(self._op, name)

    def _timed(self, fn, x):
        t0 = _clock()
        y = fn(x)
        self.seconds += _clock() - t0
        self.calls += 1
        return y

    def forward(self, x):
        return self._timed(self._op.forward, x)

    def adjoint(self, y):
        return self._timed(self._op.adjoint, y)


def _solver_time(op, u0, f, n, method="gd"):
    """(seconds per iteration, of which inside A/Aᵀ), from runs of n and 2n iterations.

    Differencing the two runs cancels the set-up cost (first residual and gradient, clone of u0).
    """
    total, inside = [], []
    for its in (n, 2 * n):
        timed = _TimedOperator(op)
        energy = DataFidelity(timed, f)
        t0 = _clock()
        if method == "cg":
            res = descend(energy, u0, ConjugateDirections(), line=LineSearch(initial="exact"), stop=StopRule(max_iter=its))
        else:
            res = descend(energy, u0, negative_gradient, line=LineSearch(initial="lipschitz"), stop=StopRule(max_iter=its))
        total.append(_clock() - t0)
        inside.append(timed.seconds)
        assert res.iterations == its, "the run stopped early; use a problem that needs more iterations"
    return (total[1] - total[0]) / n, (inside[1] - inside[0]) / n


def _bare_time(op, u0, f, n):
    """The same for a hand-written Landweber loop: only what any gd must do per iteration in torch.

    ``A g``, ``||A g||^2``, ``r += t A g``, ``u -= t g``, ``g = A^T r``, ``||g||^2`` and the two
    scalars to the host (the step needs them): the floor of separate torch passes, no line search,
    stopping test, trace or refresh. ``descend``'s overhead minus this loop's is its own cost.
    """
    total, inside = [], []
    step = 1.0 / op.sqnorm()
    for its in (n, 2 * n):
        timed = _TimedOperator(op)
        t0 = _clock()
        u = u0.clone()
        r = timed.forward(u) - f
        g = timed.adjoint(r)
        gg = torch.dot(g.view(-1), g.view(-1)).item()
        for _ in range(its):
            ad = timed.forward(g)
            adad = torch.dot(ad.view(-1), ad.view(-1)).item()
            r = torch.add(r, ad, alpha=-step, out=ad)
            u = torch.add(u, g, alpha=-step, out=g)
            g = timed.adjoint(r)
            gg = torch.dot(g.view(-1), g.view(-1)).item()
        total.append(_clock() - t0)
        inside.append(timed.seconds)
        assert math.isfinite(gg + adad)
    return (total[1] - total[0]) / n, (inside[1] - inside[0]) / n


def _bare_split(op, u0, f, n):
    """The loop of :func:`_bare_time` with a timer around each group of lines: seconds per
    iteration in (line-search scalars, vector updates). The timers cost ~1 µs each."""
    step = 1.0 / op.sqnorm()
    u = u0.clone()
    r = op.forward(u) - f
    g = op.adjoint(r)
    gg = torch.dot(g.view(-1), g.view(-1)).item()
    scalars = updates = 0.0
    for _ in range(n):
        ad = op.forward(g)
        t0 = _clock()
        adad = torch.dot(ad.view(-1), ad.view(-1)).item()
        t1 = _clock()
        r = torch.add(r, ad, alpha=-step, out=ad)
        u = torch.add(u, g, alpha=-step, out=g)
        t2 = _clock()
        g = op.adjoint(r)
        t3 = _clock()
        gg = torch.dot(g.view(-1), g.view(-1)).item()
        t4 = _clock()
        scalars += (t1 - t0) + (t4 - t3)
        updates += t2 - t1
    assert math.isfinite(gg + adad)
    return scalars / n, updates / n


def cases():
    torch.manual_seed(0)
    # Average pooling is solved by one Landweber step, so time the bicubic downsampler instead.
    yield "SR x4 bicubic, 512²", BicubicDownsample((512, 512), 4), (1, 512, 512)
    yield "deblur σ=1.6 25x25 reflect, 256²", Blur((256, 256), gaussian_kernel(1.6, 25), "reflect"), (1, 256, 256)
    yield "deblur σ=1.6 25x25 circular, 512²", Blur((512, 512), gaussian_kernel(1.6, 25), "circular"), (1, 512, 512)
    try:
        from edncli.operators.tomography import CTGeometry, make_ct_operator

        yield "CT 256²/180 parallel, matrix", make_ct_operator(CTGeometry.parallel(256, 180), backend="matrix"), (1, 256, 256)
    except Exception as exc:  # astra missing
        print(f"(CT skipped: {exc})")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--iterations", type=int, default=20)
    ap.add_argument("--repeat", type=int, default=7)
    ap.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    ap.add_argument("--method", choices=("gd", "cg"), default="gd", help="gd (Landweber) or cg (CGLS)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"machine: {platform.processor() or platform.machine()}, torch {torch.__version__}, threads {torch.get_num_threads()}")
    bare = args.method == "gd"
    print("| case | solver ms/iter | of which A, Aᵀ ms | overhead |" + (" hand-written loop's overhead |" if bare else ""))
    print("|---|---|---|---|" + ("---|" if bare else ""))
    splits = []
    for name, op, shape in cases():
        x = torch.rand(shape)
        f = op(x) + 0.01 * torch.randn((1, *op.out_shape))
        u0 = torch.zeros(shape)
        op.opnorm()
        _solver_time(op, u0, f, 3, args.method)  # warm-up (caches, threads)
        runs, floor, parts = [], [], []
        for _ in range(args.repeat):  # interleaved, so both see the same machine state
            runs.append(_solver_time(op, u0, f, args.iterations, args.method))
            if bare:
                floor.append(_bare_time(op, u0, f, args.iterations))
                parts.append(_bare_split(op, u0, f, args.iterations))
        s = statistics.median(r[0] for r in runs)
        b = statistics.median(r[1] for r in runs)
        over = statistics.median((r[0] - r[1]) / r[0] for r in runs)
        extra = ""
        if bare:
            fs, fb = statistics.median(r[0] for r in floor), statistics.median(r[1] for r in floor)
            fover = statistics.median((r[0] - r[1]) / r[0] for r in floor)
            extra = f" {fs * 1e3:.2f} ms, of which A, Aᵀ {fb * 1e3:.2f}: {100 * fover:.1f}% |"
            # Per repetition: the loop's arithmetic (floor time minus its operators), divided as
            # the timed copy divides it; bookkeeping is what descend adds over that arithmetic.
            shares = []
            for (t, o), (tb, ob), (ls, up) in zip(runs, floor, parts):
                arith = tb - ob
                ls_part = arith * ls / (ls + up)
                shares.append((o / t, ls_part / t, (arith - ls_part) / t, (t - o - arith) / t))
            splits.append((name, [statistics.median(x[k] for x in shares) for k in range(4)]))
        print(f"| {name} | {s * 1e3:.2f} | {b * 1e3:.2f} | {100 * over:.1f}% |{extra}")
    if splits:
        print()
        print("| case | operators | line search | update | bookkeeping |")
        print("|---|---:|---:|---:|---:|")
        for name, shares in splits:
            print(f"| {name} | " + " | ".join(f"{100 * x:.1f}%" for x in shares) + " |")


if __name__ == "__main__":
    main()
