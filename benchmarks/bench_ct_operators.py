"""Time the CT operator backends (A and A^T) for parallel-beam geometries.

Usage::

    python benchmarks/bench_ct_operators.py --sizes 256:180,512:360,1024:720 --repeat 3

For each ``size:angles`` (detectors = ceil(size * sqrt(2)), angles over [0, pi)) every available
backend is timed on the same batch: ``matrix`` (astra's system matrix as torch CSR), ``astra-cpu``
and ``cuda`` (CUDA tensors, when torch sees a GPU and astra has CUDA). Repetitions are
interleaved (A and A^T of every backend, then the next repetition), so a load spike on a shared
machine hits all backends alike; the table gives the median of ``--repeat`` calls after one
warm-up, and each backend's ratio to ``astra-cpu`` in the same run. The ``matrix`` backend is
skipped where :func:`estimate_matrix_bytes` exceeds ``--matrix-budget`` ("n/a (X GB)").

Bandwidth bound of the CSR product ``y = M x`` (float32 values, int32 column indices and row
pointers): bytes >= nnz * (4 + 4) + (rows + 1) * 4 + B * cols * 4 (x, each entry read once:
the gathers ``x[col]`` are assumed to hit cache) + B * rows * 4 (y written), summed over A and
A^T (both stored as CSR). The best possible time is bytes / BW with BW a STREAM-like bandwidth
measured in the same run (torch copy and add of 256 MB float32 tensors, best of 5, with one
thread and with the thread count used for the timings); "achieved" is bound / measured.
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from edncli.operators.tomography import (  # noqa: E402
    CTGeometry,
    cuda_available,
    estimate_matrix_bytes,
    make_ct_operator,
)


def stream_bandwidth(threads: int, n_bytes: int = 256 * 2**20, repeat: int = 5) -> dict[str, float]:
    """Bytes/s of ``b.copy_(a)`` (2 arrays moved) and ``torch.add(a, b, out=c)`` (3 arrays)
    with ``threads`` torch threads, best of ``repeat``; the caller's thread count is restored."""
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        a = torch.ones(n_bytes // 4)
        b, c = torch.empty_like(a), torch.empty_like(a)
        out = {}
        for name, fn, arrays in (("copy", lambda: b.copy_(a), 2), ("add", lambda: torch.add(a, b, out=c), 3)):
            fn()
            best = float("inf")
            for _ in range(repeat):
                t = time.perf_counter()
                fn()
                best = min(best, time.perf_counter() - t)
            out[name] = arrays * a.nbytes / best
        return out
    finally:
        torch.set_num_threads(before)


def csr_bytes(nnz: int, rows: int, cols: int, batch: int) -> int:
    """Least bytes moved by one CSR product ``(rows x cols) @ (cols, batch)`` (see module doc)."""
    return nnz * 8 + (rows + 1) * 4 + batch * (rows + cols) * 4


def cpu_model() -> str:
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
        for line in out.splitlines():
            if line.startswith("Model name"):
                return line.split(":", 1)[1].strip()
    except Exception:
        pass
    return platform.processor() or "unknown"


def _sync(dev: str) -> None:
    if dev == "cuda":
        torch.cuda.synchronize()


def bench_size(size: int, n_angles: int, backends: list[str], args, cache: str) -> list[dict]:
    g = CTGeometry.parallel(size, n_angles)
    gen = torch.Generator().manual_seed(0)
    x = torch.rand(args.batch, size, size, generator=gen)
    y = torch.rand(args.batch, *g.sino_shape, generator=gen)
    runs, rows = {}, []
    for backend in backends:
        row = {"size": size, "angles": n_angles, "det": g.detectors, "backend": backend}
        rows.append(row)
        if backend == "matrix":
            est = estimate_matrix_bytes(g)
            row["matrix_est_gb"] = est / 1e9
            if est > args.matrix_budget * 1e9:
                row["skipped"] = f"n/a ({est / 1e9:.0f} GB est.)"
                continue
        dev = "cuda" if backend == "cuda" else "cpu"
        t0 = time.perf_counter()
        op = make_ct_operator(g, backend=backend, device=dev, cache_dir=cache)
        x_, y_ = x.to(dev), y.to(dev)
        op.forward(x_), op.adjoint(y_)  # warm-up (and, for matrix, the first touch of A and A^T)
        _sync(dev)
        row["build_s"] = time.perf_counter() - t0
        row["nnz"] = getattr(op, "nnz", None)
        runs[backend] = (op, x_, y_, dev, {"A": [], "At": []})
    with torch.no_grad():
        for _ in range(args.repeat):
            for op, x_, y_, dev, times in runs.values():
                for key, fn, arg in (("A", op.forward, x_), ("At", op.adjoint, y_)):
                    _sync(dev)
                    t = time.perf_counter()
                    fn(arg)
                    _sync(dev)
                    times[key].append(time.perf_counter() - t)
    for row in rows:
        if row["backend"] in runs:
            times = runs[row["backend"]][-1]
            row["A_ms"] = statistics.median(times["A"]) * 1e3
            row["At_ms"] = statistics.median(times["At"]) * 1e3
    runs.clear()
    return rows


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sizes", default="256:180,512:360,1024:720", help="comma list of size:angles")
    ap.add_argument("--repeat", type=int, default=3, help="timed calls per measurement (median)")
    ap.add_argument("--backends", default="matrix,astra-cpu,cuda", help="backends to time (if available)")
    ap.add_argument("--batch", type=int, default=1, help="slices per call (times are per call)")
    ap.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's)")
    ap.add_argument("--matrix-budget", type=float, default=4.0,
                    help="skip matrix where estimate_matrix_bytes exceeds this many GB (default 4)")
    ap.add_argument("--cache-dir", default=None, help="matrix cache (default: a temporary folder)")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    threads = torch.get_num_threads()
    gpu = torch.cuda.is_available() and cuda_available()  # torch first: astra may abort without a GPU
    backends = [b for b in args.backends.split(",") if b != "cuda" or gpu]
    bw1 = stream_bandwidth(1)
    bwn = stream_bandwidth(threads)
    tmp = tempfile.TemporaryDirectory() if args.cache_dir is None else None
    cache = args.cache_dir or tmp.name
    import astra  # noqa: PLC0415

    print(f"machine: {cpu_model()}, {os.cpu_count()} logical CPUs, "
          f"{'GPU ' + torch.cuda.get_device_name() if gpu else 'no GPU used'}")
    print(f"torch {torch.__version__} ({threads} threads), astra {astra.__version__}; date {datetime.date.today()}")
    print("STREAM-like bandwidth (torch, 256 MB float32): "
          f"1 thread copy {bw1['copy'] / 1e9:.1f} / add {bw1['add'] / 1e9:.1f} GB/s; "
          f"{threads} threads copy {bwn['copy'] / 1e9:.1f} / add {bwn['add'] / 1e9:.1f} GB/s")
    print(f"load average before: {os.getloadavg()[0]:.2f} (1 min); batch {args.batch}; repeat {args.repeat}")
    print(f"command: python {' '.join(sys.argv)}\n")
    bw = max(bwn.values())
    print("| size | angles | det | backend | nnz | A (ms) | Aᵀ (ms) | A+Aᵀ (ms) | vs astra-cpu | "
          "bw bound A+Aᵀ (ms) | achieved | build (s) |")
    print("|---:|---:|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for spec in args.sizes.split(","):
        size, n_ang = (int(v) for v in spec.split(":"))
        rows = bench_size(size, n_ang, backends, args, cache)
        ref = next((r for r in rows if r["backend"] == "astra-cpu" and "A_ms" in r), None)
        for r in rows:
            head = f"| {r['size']} | {r['angles']} | {r['det']} | {r['backend']} |"
            if "skipped" in r:
                print(f"{head} – | {r['skipped']} | | | | | | |")
                continue
            tot = r["A_ms"] + r["At_ms"]
            ratio = "1.0" if r["backend"] == "astra-cpu" or ref is None else \
                f"{(ref['A_ms'] + ref['At_ms']) / tot:.1f}× faster"
            bound = achieved = "–"
            if r.get("nnz"):
                m, n = n_ang * r["det"], size * size
                ms = (csr_bytes(r["nnz"], m, n, args.batch) + csr_bytes(r["nnz"], n, m, args.batch)) / bw * 1e3
                bound, achieved = f"{ms:.1f}", f"{ms / tot:.0%}"
            print(f"{head} {r.get('nnz') or '–'} | {r['A_ms']:.1f} | {r['At_ms']:.1f} | {tot:.1f} | {ratio} | "
                  f"{bound} | {achieved} | {r['build_s']:.1f} |", flush=True)
    print(f"\nload average after: {os.getloadavg()[0]:.2f} (1 min)")
    if tmp is not None:
        tmp.cleanup()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
