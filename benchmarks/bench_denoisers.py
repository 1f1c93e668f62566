"""Benchmark: RED/PnP with DnCNN vs potential descent (paper 000 Alg. 1) with the shipped denoisers.

Protocols (images in [0, 1], noise seeded per image):
- deblur: Gaussian blur σ = 1.6, 25x25, reflect boundary; noise σ = 0.01; init = the blurred image.
- sr: x4 average pooling; noise σ = 0.01; init = bilinear upsampling.
Each method runs with its preset (``edncli.solvers.potential.PRESETS``) and δ = σ sqrt(m) stopping.
Reported per method: mean PSNR/SSIM, mean iterations, total time, F monotone on every image.

Usage::

    python benchmarks/bench_denoisers.py --task deblur --images ../shared/data/set12 \\
        --crop 128 --out benchmarks/results_denoisers.json
    # a fixed half of a folder (--every 2 --start 0|1), another preset (--preset paper-deblur),
    # and one table from several --out files:
    python benchmarks/bench_denoisers.py --merge even.json odd.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch

from edncli.io.images import read_image, to_luminance
from edncli.metrics import psnr, ssim
from edncli.operators.blur import Blur, gaussian_kernel
from edncli.operators.downsample import AveragePool, upsample
from edncli.solvers.methods import MethodOptions, Problem, solve
from edncli.solvers.stopping import DeltaChoice
from edncli.training.data import list_images

METHODS = "pnp,red,potential:gradncnn,potential:dnicnn,potential:dndicnn"


def make_problem(x: torch.Tensor, task: str, noise: float, seed: int) -> Problem:
    """Simulate ``f = A x + σ n`` for one image ``x`` ``(1, H, W)`` and build the problem."""
    gen = torch.Generator().manual_seed(seed)
    if task == "deblur":
        op = Blur(x.shape[-2:], gaussian_kernel(1.6, 25), "reflect")
    else:
        op = AveragePool(x.shape[-2:], 4)
    clean = op(x)
    f = clean + noise * torch.randn(clean.shape, generator=gen)
    u0 = f.clone() if task == "deblur" else upsample(f, 4, "bilinear")
    m = f[0].numel()
    delta = DeltaChoice(noise * m**0.5, "noise_sigma", sigma=noise, tau=1.0, measurements=m)
    return Problem(op=op, f=f, u0=u0, delta=delta, reference=x, task=task)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--task", choices=("deblur", "sr"), default="deblur")
    ap.add_argument("--images", default="../shared/data/set12")
    ap.add_argument("--methods", default=METHODS)
    ap.add_argument("--crop", type=int, default=0, help="central crop side (0: full image)")
    ap.add_argument("--limit", type=int, default=0, help="first N images only (0: all)")
    ap.add_argument("--every", type=int, default=1, help="every N-th image only (a fixed subset; applied before --limit)")
    ap.add_argument("--start", type=int, default=0, help="index of the first image taken by --every")
    ap.add_argument("--preset", default=None, help="preset name for every method (default: the task's; e.g. paper-deblur)")
    ap.add_argument("--noise-sigma", type=float, default=0.01)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--out", default=None, help="JSON file for per-image results")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    import edncli.solvers.potential  # noqa: F401  (registers potential, red, pnp)

    files = list_images(args.images)[args.start :: max(1, args.every)]
    if args.limit:
        files = files[: args.limit]
    images = []
    step = max(1, args.every)
    for gi, p in zip(range(args.start, args.start + step * len(files), step), files):  # gi: index in the folder (noise seed)
        arr, _ = read_image(p)
        x = torch.from_numpy(to_luminance(arr)).float()[None]
        if args.crop:
            c = args.crop
            i, j = (x.shape[1] - c) // 2, (x.shape[2] - c) // 2
            x = x[:, i : i + c, j : j + c].contiguous()
        if args.task == "sr":
            h, w = x.shape[1] // 4 * 4, x.shape[2] // 4 * 4
            x = x[:, :h, :w].contiguous()
        images.append((p.name, x, gi))

    rows, per_image = [], []
    for spec in args.methods.split(","):
        name, _, weights = spec.partition(":")
        ps, ss, its, mono, reached, t0 = [], [], [], [], [], time.perf_counter()
        for fname, x, gi in images:
            pb = make_problem(x, args.task, args.noise_sigma, args.seed + gi)
            r = solve(pb, name, MethodOptions(weights=weights or None, extra={"preset": args.preset} if args.preset else {}))
            u = r.u.clamp(0, 1)
            ps.append(psnr(u, x))
            ss.append(ssim(u, x))
            its.append(r.iterations)
            mono.append(r.energy_monotone)
            reached.append(bool(r.delta_reached))
            per_image.append({"method": spec, "image": fname, "psnr": ps[-1], "ssim": ss[-1], "iterations": its[-1],
                              "energy_monotone": mono[-1], "max_energy_increase": r.max_energy_increase,
                              "delta_reached": reached[-1], "time_s": r.elapsed_s, "checkpoint": r.extra.get("checkpoint", {}).get("name")})
            print(json.dumps(per_image[-1]), flush=True)
        rows.append({"method": spec, "psnr": statistics.mean(ps), "ssim": statistics.mean(ss), "iterations": statistics.mean(its),
                     "time_s": time.perf_counter() - t0, "all_monotone": all(mono), "delta_reached": sum(reached), "n": len(images)})
        init_psnr = statistics.mean(psnr(make_problem(x, args.task, args.noise_sigma, args.seed + gi).u0.clamp(0, 1), x) for _, x, gi in images)
    print(f"\n{args.task} on {args.images} ({len(images)} images{', crop ' + str(args.crop) if args.crop else ''}); init PSNR {init_psnr:.2f} dB")
    print("| method | PSNR (dB) | SSIM | iterations | time (s) | energy monotone on every image | δ reached |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['method']} | {r['psnr']:.2f} | {r['ssim']:.4f} | {r['iterations']:.0f} | {r['time_s']:.0f} | {r['all_monotone']} | {r['delta_reached']}/{r['n']} |")
    if args.out:
        Path(args.out).write_text(json.dumps({"args": vars(args), "summary": rows, "init_psnr": init_psnr, "images": per_image}, indent=1))


def merge(paths) -> None:
    """One table from several ``--out`` files (e.g. the two halves of a folder run with ``--every 2``)."""
    docs = [json.loads(Path(p).read_text()) for p in paths]
    imgs = [r for d in docs for r in d["images"]]
    n_all = sum(len({r["image"] for r in d["images"]}) for d in docs)
    init = sum(d["init_psnr"] * len({r["image"] for r in d["images"]}) for d in docs) / n_all
    print(f"{n_all} images from {', '.join(map(str, paths))}; init PSNR {init:.2f} dB")
    print("| method | PSNR (dB) | SSIM | iterations (mean) | solver time (s, all images) | energy monotone on every image | max energy increase | δ reached |")
    print("|---|---|---|---|---|---|---|---|")
    by = {}
    for r in imgs:
        by.setdefault(r["method"], {})[r["image"]] = r
    for m, rs in by.items():
        v = list(rs.values())
        print(f"| {m} | {statistics.mean(r['psnr'] for r in v):.2f} | {statistics.mean(r['ssim'] for r in v):.4f} | "
              f"{statistics.mean(r['iterations'] for r in v):.0f} | {sum(r['time_s'] for r in v):.0f} | "
              f"{all(r['energy_monotone'] for r in v)} | {max(r['max_energy_increase'] for r in v):.2e} | "
              f"{sum(bool(r['delta_reached']) for r in v)}/{len(v)} |")
    methods = list(by)
    pot = [m for m in methods if m.startswith("potential")]
    for p in pot:
        for o in (m for m in methods if not m.startswith("potential")):
            d = [by[p][i]["psnr"] - by[o][i]["psnr"] for i in by[p] if i in by[o]]
            print(f"{p} - {o}: mean {statistics.mean(d):+.2f} dB, {p} higher on {sum(x > 0 for x in d)}/{len(d)} images")


if __name__ == "__main__":
    import sys

    if len(sys.argv) > 2 and sys.argv[1] == "--merge":
        merge(sys.argv[2:])
    else:
        main()
