"""Time the CT operator backends (A and A^T) for parallel-beam geometries.

Usage::

    python benchmarks/bench_ct_operators.py --sizes 256:180,512:360 --repeat 7

For each ``size:angles`` (detectors = ceil(size * sqrt(2)), angles over [0, pi)), every available
backend (``matrix``, ``astra-cpu``, and ``cuda`` when astra has CUDA) is timed on a single
slice: median wall time of ``--repeat`` calls after one warm-up call. The table gives ms, the
ratio to ``astra-cpu`` in the same run, and for ``matrix`` a memory-bandwidth lower bound.

Bandwidth model for one CSR product ``y = M x`` (float32 values, int32 column indices and row
pointers): bytes moved >= nnz * (4 + 4) (values + column indices, streamed once)
+ (rows + 1) * 4 (row pointers) + B * (rows + cols) * 4 (write y, read x once; the gathers
x[col] are assumed cached). Lower bound = bytes / BW, with BW the memcpy bandwidth measured by
``numpy.copyto`` of a 400 MB float32 array (counted as read + write bytes).
"""

from __future__ import annotations

import argparse
import datetime
import math
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from edncli.operators.tomography import CTGeometry, cuda_available, make_ct_operator  # noqa: E402


def memcpy_bandwidth(n_bytes: int = 400_000_000, repeat: int = 5) -> float:
    """Bytes per second of a large numpy copy, counting read + write (best of ``repeat``)."""
    a = np.ones(n_bytes // 4, dtype=np.float32)
    b = np.empty_like(a)
    np.copyto(b, a)
    best = math.inf
    for _ in range(repeat):
        t = time.perf_counter()
        np.copyto(b, a)
        best = min(best, time.perf_counter() - t)
    return 2 * a.nbytes / best


def time_call(fn, arg, repeat: int) -> float:
    fn(arg)  # warm-up
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn(arg)
        times.append(time.perf_counter() - t)
    return statistics.median(times) * 1e3


def cpu_model() -> str:
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
        for line in out.splitlines():
            if line.startswith("Model name"):
                return line.split(":", 1)[1].strip()
    except Exception:
        pass
    return platform.processor() or "unknown"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sizes", default="256:180,512:360", help="comma list of size:angles")
    ap.add_argument("--repeat", type=int, default=7, help="timed calls per measurement (median)")
    ap.add_argument("--backends", default="matrix,astra-cpu,cuda", help="backends to time (if available)")
    ap.add_argument("--batch", type=int, default=1, help="slices per call (times are per call)")
    ap.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's)")
    ap.add_argument("--cache-dir", default=None, help="matrix cache (default: a temporary folder)")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    backends = [b for b in args.backends.split(",") if b != "cuda" or cuda_available()]
    bw = memcpy_bandwidth()
    tmp = tempfile.TemporaryDirectory() if args.cache_dir is None else None
    cache = args.cache_dir or tmp.name
    print(f"machine: {cpu_model()}, {os.cpu_count()} cores, torch {torch.__version__} "
          f"({torch.get_num_threads()} threads); date {datetime.date.today()}")
    print(f"memcpy bandwidth (numpy copyto, read+write): {bw / 1e9:.1f} GB/s")
    print(f"load average before: {os.getloadavg()[0]:.2f} (1 min); batch {args.batch}")
    print(f"command: python {' '.join(sys.argv)}\n")
    print("| size | angles | detectors | backend | nnz | A (ms) | A^T (ms) | A+A^T (ms) | vs astra-cpu | bw bound A+A^T (ms) | build (s) |")
    print("|---:|---:|---:|---|---:|---:|---:|---:|---:|---:|---:|")
    for spec in args.sizes.split(","):
        size, n_ang = (int(v) for v in spec.split(":"))
        g = CTGeometry.parallel(size, n_ang)
        x = torch.rand(args.batch, size, size)
        y = torch.rand(args.batch, *g.sino_shape)
        rows = {}
        for backend in backends:
            t0 = time.perf_counter()
            dev = "cuda" if backend == "cuda" and torch.cuda.is_available() else "cpu"
            op = make_ct_operator(g, backend=backend, device=dev, cache_dir=cache)
            x_, y_ = x.to(dev), y.to(dev)
            op.forward(x_)
            build = time.perf_counter() - t0
            tf = time_call(op.forward, x_, args.repeat)
            ta = time_call(op.adjoint, y_, args.repeat)
            nnz = getattr(op, "nnz", None)
            bound = None
            if nnz is not None:
                m, n = g.n_angles * g.detectors, size * size
                per = lambda r, c: nnz * 8 + (r + 1) * 4 + (r + c) * 4 * args.batch  # noqa: E731
                bound = (per(m, n) + per(n, m)) / bw * 1e3
            rows[backend] = (nnz, tf, ta, bound, build)
            del op
        ref = rows.get("astra-cpu")
        for backend, (nnz, tf, ta, bound, build) in rows.items():
            ratio = f"{(ref[1] + ref[2]) / (tf + ta):.1f}x faster" if ref and backend != "astra-cpu" else "1.0"
            print(f"| {size} | {n_ang} | {g.detectors} | {backend} | {nnz if nnz else '-'} | {tf:.1f} | {ta:.1f} | "
                  f"{tf + ta:.1f} | {ratio} | {f'{bound:.1f}' if bound else '-'} | {build:.1f} |")
    print(f"\nload average after: {os.getloadavg()[0]:.2f} (1 min)")
    if tmp is not None:
        tmp.cleanup()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
