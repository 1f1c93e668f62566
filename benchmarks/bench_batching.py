"""Images per second when many images are solved in one call (``edn sr --batch-size N``).

Twelve 256² luminance crops (centre crops of Set12), x4 average pooling, noise σ = 0.01, δ = σ √m
per image, initial guess bicubic upsampling (the ``edn sr`` default). For each method and batch
size the 12 images are solved in consecutive batches of that size exactly as ``edn sr`` does it
(:meth:`Problem.stack`, :func:`solve`, :meth:`SolveResult.split`); the time per pass over the
12 images is the median of ``--repeat`` passes, after one untimed warm-up pass. The speed-up is
the ratio to batch 1 in the same run. Every batched pass is checked against the batch-1 pass:
same iterations per image, outputs equal to ``max |Δu|``. A second table times one call of the
``edn`` direction network alone on batches of the same sizes (ms per image, median of
``--repeat`` calls), the part of an ``edn`` iteration that batching would speed up on a GPU.

With ``--threads 1`` on the CPU times are thread CPU times (load from other processes on a
shared machine does not count); otherwise wall times (synchronised on CUDA).

    OMP_NUM_THREADS=1 python benchmarks/bench_batching.py --threads 1
    python benchmarks/bench_batching.py --device cuda --batch-sizes 1,4,12
"""

from __future__ import annotations

import argparse
import platform
import statistics
import time
from pathlib import Path
from typing import Callable, List, Tuple

import numpy as np
import torch

from edncli.io.images import read_image, to_luminance
from edncli.operators.downsample import AveragePool, upsample
from edncli.solvers.methods import MethodOptions, Problem, solve
from edncli.solvers.stopping import choose_delta

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "set12"
SIZE, SCALE, SIGMA = 256, 4, 0.01


def problems(folder: Path, count: int, device: torch.device) -> List[Problem]:
    """One SR problem per image: centre ``SIZE``² crop of its luminance, seeded noise."""
    files = sorted(p for p in folder.iterdir() if p.suffix == ".png")[:count]
    op = AveragePool((SIZE, SIZE), SCALE)
    out = []
    for index, path in enumerate(files):
        x = to_luminance(read_image(str(path))[0])
        i, j = (x.shape[0] - SIZE) // 2, (x.shape[1] - SIZE) // 2
        clean = torch.from_numpy(np.ascontiguousarray(x[i : i + SIZE, j : j + SIZE], dtype=np.float32))[None]
        gen = torch.Generator().manual_seed(index)
        f = op(clean) + SIGMA * torch.randn((1, SIZE // SCALE, SIZE // SCALE), generator=gen)
        f = f.to(device)
        delta = choose_delta(None, SIGMA, 1.0, int(f[0].numel()))
        out.append(Problem(op=op, f=f, u0=upsample(f, SCALE, "bicubic"), delta=delta, task="sr"))
    return out


def clock(device: torch.device) -> Callable[[], float]:
    """Thread CPU time with one CPU thread (robust to other processes), else synchronised wall time."""
    if device.type == "cuda":
        return lambda: (torch.cuda.synchronize(device), time.perf_counter())[1]
    return time.thread_time if torch.get_num_threads() == 1 else time.perf_counter


def run_pass(items: List[Problem], method: str, batch: int) -> list:
    """Solve ``items`` in consecutive batches of ``batch``; the per-image results, in order."""
    results = []
    for lo in range(0, len(items), batch):
        group = items[lo : lo + batch]
        if len(group) == 1:
            results.append(solve(group[0], method, MethodOptions()))
        else:
            results += solve(Problem.stack(group), method, MethodOptions()).split([1] * len(group))
    return results


def measure(items: List[Problem], method: str, batch: int, repeat: int, now: Callable[[], float]) -> Tuple[float, list]:
    """(median seconds per pass over ``items``, the results of the last pass)."""
    run_pass(items, method, batch)  # warm-up: first-call allocations, checkpoint file cache
    times = []
    for _ in range(repeat):
        t0 = now()
        results = run_pass(items, method, batch)
        times.append(now() - t0)
    return statistics.median(times), results


def network_ms_per_image(items: List[Problem], batch: int, repeat: int, now: Callable[[], float]) -> float:
    """Median time of one call of the shipped ``edn-sr-x4`` network on ``batch`` images, per image."""
    from edncli.networks.direction import network_inputs
    from edncli.solvers.learned import load_learned

    net, _ = load_learned("edn", "edn-sr-x4", items[0].f.device)
    p = Problem.stack(items[:batch])
    data = network_inputs(p.op, p.f)
    g = torch.randn_like(p.u0)
    times = []
    with torch.no_grad():
        for _ in range(repeat + 1):  # the first call is a warm-up
            t0 = now()
            net(p.u0, g, data)
            times.append(now() - t0)
    return statistics.median(times[1:]) / batch * 1e3


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=Path, default=DATA)
    ap.add_argument("--count", type=int, default=12)
    ap.add_argument("--methods", default="gd,edn")
    ap.add_argument("--batch-sizes", default="1,4,12")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    ap.add_argument("--device", default="cpu")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or platform.machine()
    print(f"device: {name}, torch {torch.__version__}, threads {torch.get_num_threads()}")
    items = problems(args.images, args.count, device)
    now = clock(device)
    sizes = [int(s) for s in args.batch_sizes.split(",")]
    print("| method | batch | images/s | × batch 1 | mean iterations | max \\|Δu\\| vs batch 1 |")
    print("|---|---:|---:|---:|---:|---:|")
    for method in args.methods.split(","):
        base_time, base = measure(items, method, 1, args.repeat, now)
        for size in sizes:
            seconds, results = (base_time, base) if size == 1 else measure(items, method, size, args.repeat, now)
            same = [r.iterations for r in results] == [r.iterations for r in base]
            diff = max(float((r.u - b.u).abs().max()) for r, b in zip(results, base))
            iters = statistics.mean(r.iterations for r in results)
            print(
                f"| {method} | {size} | {len(items) / seconds:.1f} | {base_time / seconds:.2f} | {iters:.1f}"
                f"{'' if same else ' (differ!)'} | {diff:.1e} |"
            )
    print()
    print("| edn network alone, batch | ms per image | × batch 1 |")
    print("|---:|---:|---:|")
    base_ms = network_ms_per_image(items, 1, args.repeat, now)
    for size in sizes:
        ms = base_ms if size == 1 else network_ms_per_image(items, size, args.repeat, now)
        print(f"| {size} | {ms:.1f} | {base_ms / ms:.2f} |")


if __name__ == "__main__":
    main()
