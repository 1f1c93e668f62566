"""Per-iteration cost of Algorithm 1 against the bare cost of its operator calls.

One iteration of ``gd`` needs ``A d`` (line restriction) and ``A^T r`` (gradient); the residual
is updated in place, so no further ``A u``. The solver's own overhead (line search, norms,
bookkeeping, the trace) is ``(t_iteration - t_ops) / t_iteration``; the target is < 10%.

    python benchmarks/bench_solver.py --iterations 50 --repeat 3
"""

from __future__ import annotations

import argparse
import platform
import statistics
import time

import torch

from edncli.energies import DataFidelity
from edncli.operators.blur import Blur, gaussian_kernel
from edncli.operators.downsample import BicubicDownsample
from edncli.solvers.descent import LineSearch, StopRule, descend


def _ops_time(op, u, f, n):
    d = torch.randn_like(u)
    t0 = time.perf_counter()
    for _ in range(n):
        ad = op.forward(d)
        r = f - ad
        op.adjoint(r)
    return (time.perf_counter() - t0) / n


def _solver_time(op, u0, f, n):
    """Seconds per iteration, from runs of n and 2n iterations (set-up cost cancels)."""
    times = []
    for its in (n, 2 * n):
        energy = DataFidelity(op, f)
        t0 = time.perf_counter()
        res = descend(energy, u0, line=LineSearch(initial="lipschitz"), stop=StopRule(max_iter=its))
        times.append(time.perf_counter() - t0)
        assert res.iterations == its, "the run stopped early; use a problem that needs more iterations"
    return (times[1] - times[0]) / n


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
    ap.add_argument("--iterations", type=int, default=50)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"machine: {platform.processor() or platform.machine()}, torch {torch.__version__}, threads {torch.get_num_threads()}")
    print("| case | solver ms/iter | A + Aᵀ ms | overhead |")
    print("|---|---|---|---|")
    for name, op, shape in cases():
        x = torch.rand(shape)
        f = op(x) + 0.01 * torch.randn((1, *op.out_shape))
        u0 = torch.zeros(shape)
        op.opnorm()
        _solver_time(op, u0, f, 3)  # warm-up (caches, threads)
        solver = []
        bare = []
        for _ in range(args.repeat):  # interleaved, so load changes hit both alike
            solver.append(_solver_time(op, u0, f, args.iterations))
            bare.append(_ops_time(op, u0, f, args.iterations))
        s, b = statistics.median(solver), statistics.median(bare)
        print(f"| {name} | {s * 1e3:.2f} | {b * 1e3:.2f} | {100 * (s - b) / s:.1f}% |")


if __name__ == "__main__":
    main()
