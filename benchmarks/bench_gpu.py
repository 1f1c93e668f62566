"""Issue 6's device numbers in one run: SR x4 images/s and CT slices/s, float32 vs mixed precision.

Two cases, each on a batch of luminance images (Set12, centre-cropped and resized to the size),
noise seeded per image, solved exactly as ``edn sr`` / ``edn ct`` solve a batch
(:meth:`Problem.stack`, :func:`solve`):

- ``sr``: ``--sr-size``² (default 512²), x4 average pooling, noise σ = 0.01, initial guess
  bicubic upsampling; ``edn`` (shipped ``edn-sr-x4``) for a fixed 15 iterations (the paper's
  protocol: ``--learned-steps`` from the checkpoint, then CG) and to δ = σ √m; ``gd`` to δ as the
  baseline of the ratios.
- ``ct``: ``--ct-size``² with ``--ct-angles`` parallel-beam angles (default 512²/360; astra's CUDA
  projectors on a GPU, the sparse matrix or astra's CPU projector elsewhere), noise σ = 0.1 in
  sinogram units, FBP start; ``edn`` (shipped ``edn-ct``), ``cg`` and ``gd`` to δ.

Every network case runs with ``--precision`` fp32, bf16 and fp16 (fp16 on CUDA only): the
energy, the descent-set layer and the line search stay float32, so δ and the monotone energy
are checked for each, and the PSNR difference to fp32 is reported per image (issue 6 asks for
mixed precision within 0.05 dB). Times are synchronised wall times, the median of
``--repeat`` solves of the whole batch after one untimed warm-up solve; per image = batch time
/ batch size. Targets (issue 6, on an H100): 512² SR x4 to δ (15 iterations) under 0.1 s and
CT 512²/360 under 0.5 s per slice with ``edn``.

    python benchmarks/bench_gpu.py --device cuda --json gpu.json
    python benchmarks/bench_gpu.py --device cpu --sr-size 128 --ct-size 64 --ct-angles 45 \\
        --batches 1,2 --repeat 1          # a quick check of the script itself on a CPU
"""

from __future__ import annotations

import argparse
import datetime
import json
import platform
import statistics
import sys
import time
from pathlib import Path
from typing import Callable, Dict, List, Optional

import numpy as np
import torch

from edncli.io.images import read_image, to_luminance
from edncli.metrics import psnr
from edncli.networks.inference import InferenceConfig
from edncli.solvers.methods import MethodOptions, Problem, solve
from edncli.solvers.stopping import choose_delta
from edncli.tasks import TaskSpec

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "set12"
SR_SIGMA, CT_SIGMA = 0.01, 0.1


def square_images(folder: Path, size: int, count: int) -> List[torch.Tensor]:
    """``count`` images ``(1, size, size)`` in [0, 1]: luminance, centre square, resized (cycled)."""
    from skimage.transform import resize

    files = sorted(p for p in folder.iterdir() if p.suffix.lower() in (".png", ".tif", ".tiff"))
    if not files:
        raise SystemExit(f"no images in {folder}")
    out = []
    for i in range(count):
        x = to_luminance(read_image(str(files[i % len(files)]))[0])
        side = min(x.shape)
        r, c = (x.shape[0] - side) // 2, (x.shape[1] - side) // 2
        x = x[r : r + side, c : c + side]
        if side != size:
            x = resize(x, (size, size), anti_aliasing=True)
        out.append(torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))[None])
    return out


def build(task: str, clean: List[torch.Tensor], args, device: torch.device, ops: dict) -> Problem:
    """One stacked problem for the clean images: data with noise seeded by image index."""
    size = clean[0].shape[-1]
    spec = TaskSpec("sr", scale=4, downsampler="average") if task == "sr" else TaskSpec("ct", angles=args.ct_angles)
    if (task, size) not in ops:
        ops[(task, size)] = spec.operator((size, size), device=device)
    op = ops[(task, size)]
    sigma = SR_SIGMA if task == "sr" else CT_SIGMA
    problems = []
    for i, x in enumerate(clean):
        x = x.to(device)
        gen = torch.Generator().manual_seed(args.seed + i)
        y = op(x)
        f = y + sigma * torch.randn(y.shape, generator=gen).to(device)
        problems.append(Problem(op=op, f=f, u0=spec.initial(op, f), delta=choose_delta(None, sigma, 1.0, int(f[0].numel())),
                                reference=x, task=task))
    return Problem.stack(problems)


def clock(device: torch.device) -> Callable[[], float]:
    if device.type == "cuda":
        return lambda: (torch.cuda.synchronize(device), time.perf_counter())[1]
    return time.perf_counter


def run_case(problem: Problem, method: str, precision: str, fixed: Optional[int], repeat: int, now) -> dict:
    """Median batch time of ``repeat`` solves (after a warm-up) and the last solve's quality."""
    opts = MethodOptions(inference=None if precision == "fp32" else InferenceConfig(precision=precision))
    if fixed is not None:
        problem = Problem(op=problem.op, f=problem.f, u0=problem.u0, delta=None, reference=problem.reference,
                          task=problem.task)
        opts.max_iter = opts.min_iter = fixed
        opts.extra["fixed_iterations"] = True
    solve(problem, method, opts)  # warm-up: kernels, cuDNN plans, checkpoint loading
    times = []
    for _ in range(repeat):
        t0 = now()
        res = solve(problem, method, opts)
        times.append(now() - t0)
    batch = problem.f.shape[0]
    parts = res.split([1] * batch) if batch > 1 else [res]
    u = res.u.clamp(0, 1)
    ref = problem.reference
    return {
        "method": method,
        "precision": precision,
        "batch": batch,
        "fixed_iterations": fixed,
        "batch_s": statistics.median(times),
        "per_image_s": statistics.median(times) / batch,
        "images_per_s": batch / statistics.median(times),
        "psnr": [psnr(u[i : i + 1], ref[i : i + 1]) for i in range(batch)],  # type: ignore[index]
        "iterations": [p.iterations for p in parts],
        "delta_reached": [p.samples[0].delta_reached for p in parts],
        "energy_monotone": [p.samples[0].energy_monotone for p in parts],
    }


def compare(rows: List[dict]) -> None:
    """Add ``max_abs_dpsnr_vs_fp32`` to each mixed-precision row (same case, method, batch, protocol)."""
    for r in rows:
        if r["precision"] == "fp32":
            continue
        base = [b for b in rows if b["precision"] == "fp32" and b["case"] == r["case"] and b["method"] == r["method"]
                and b["batch"] == r["batch"] and b["fixed_iterations"] == r["fixed_iterations"]]
        if base:
            r["max_abs_dpsnr_vs_fp32"] = max(abs(a - b) for a, b in zip(r["psnr"], base[0]["psnr"]))


def table(rows: List[dict]) -> str:
    lines = ["| case | method | precision | batch | s / image | images/s | × gd (same batch) | iterations (mean) | "
             "PSNR (dB) | max abs ΔPSNR vs fp32 | δ reached | energy monotone |",
             "|---|---|---|---:|---:|---:|---:|---:|---:|---:|---|---|"]
    for r in rows:
        gd = [b for b in rows if b["case"] == r["case"] and b["method"] == "gd" and b["batch"] == r["batch"]]
        ratio = f"{r['per_image_s'] / gd[0]['per_image_s']:.2f}" if gd and r["fixed_iterations"] is None else "–"
        d = r.get("max_abs_dpsnr_vs_fp32")
        reached = "–" if r["fixed_iterations"] else f"{sum(bool(v) for v in r['delta_reached'])}/{r['batch']}"
        lines.append(
            f"| {r['case']}{' (15 it)' if r['fixed_iterations'] else ' (to δ)'} | {r['method']} | {r['precision']} | "
            f"{r['batch']} | {r['per_image_s']:.4f} | {r['images_per_s']:.1f} | {ratio} | "
            f"{statistics.mean(r['iterations']):.1f} | {statistics.mean(r['psnr']):.2f} | "
            f"{'–' if d is None else f'{d:.4f}'} | {reached} | "
            f"{sum(bool(v) for v in r['energy_monotone'])}/{r['batch']} |")
    return "\n".join(lines)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=Path, default=DATA, help="folder of clean images (default: shared set12)")
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--cases", default="sr,ct")
    ap.add_argument("--sr-size", type=int, default=512)
    ap.add_argument("--ct-size", type=int, default=512)
    ap.add_argument("--ct-angles", type=int, default=360)
    ap.add_argument("--batches", default="1,8", help="images (slices) per solve")
    ap.add_argument("--precisions", default="fp32,bf16,fp16", help="fp16 is skipped on a CPU")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()

    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        print("bench_gpu: no CUDA device here", file=sys.stderr)
        return 2
    now = clock(device)
    precisions = [p for p in args.precisions.split(",") if p and not (p == "fp16" and device.type != "cuda")]
    batches = [int(b) for b in args.batches.split(",")]
    rows: List[dict] = []
    ops: Dict[tuple, object] = {}
    for case in [c for c in args.cases.split(",") if c]:
        size = args.sr_size if case == "sr" else args.ct_size
        clean = square_images(args.images, size, max(batches))
        for batch in batches:
            problem = build(case, clean[:batch], args, device, ops)
            plan = [("gd", "fp32", None)]
            plan += [("cg", "fp32", None)] * (case == "ct")
            plan += [("edn", p, None) for p in precisions]
            plan += [("edn", p, 15) for p in precisions] * (case == "sr")
            for method, precision, fixed in plan:
                r = run_case(problem, method, precision, fixed, args.repeat, now)
                r["case"] = f"{case} {size}²" + (f"/{args.ct_angles}" if case == "ct" else "")
                rows.append(r)
                print(f"  {r['case']} {method} {precision} batch {batch}{' 15 it' if fixed else ''}: "
                      f"{r['per_image_s']:.4f} s/image", file=sys.stderr, flush=True)
    compare(rows)
    doc = {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "command": " ".join(sys.argv),
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu",
        "torch": torch.__version__,
        "ct_backend": next((type(o).__name__ + ":" + str(getattr(o, "backend", "")) for (t, _), o in ops.items()
                            if t == "ct"), None),
        "rows": rows,
    }
    print(table(rows))
    if args.json:
        args.json.write_text(json.dumps(doc, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
