"""Validation sweep for the paper-000 methods (potential descent, projected RED-SD, PnP-PGD).

One run per (task, method, setting, image) to ``max_iter`` with the δ stop switched off; the trace
keeps PSNR and ||Ax - y|| at every iterate, so the stopping rule of the presets ("first iterate
k >= min_iter with ||Ax - y|| <= δ, else max_iter") is replayed afterwards for every ``min_iter``
of a grid at no extra cost. Each method gets the same kind of grid (λ / µ / box / L0 and min_iter)
on the same validation crops; pick each method's best mean PSNR with ``--analyse``.

Validation set: central 128x128 crops (luminance) of Set5 (not used to train or pick the
denoisers, and not Set12/BSD68).

Usage::

    python benchmarks/sweep_denoisers.py --task deblur --method potential --grid "lam=0.01,0.02,0.04" \\
        --threads 1 --out sweep.jsonl
    python benchmarks/sweep_denoisers.py --analyse sweep.jsonl
"""

from __future__ import annotations

import argparse
import itertools
import json
import statistics
import sys
import time
from dataclasses import replace
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_denoisers import make_problem  # noqa: E402

from edncli.io.images import read_image, to_luminance  # noqa: E402
from edncli.training.data import list_images  # noqa: E402


def load_crops(folder: str, crop: int, task: str, limit: int = 0):
    files = list_images(folder)
    if limit:
        files = files[:limit]
    out = []
    for p in files:
        arr, _ = read_image(p)
        x = torch.from_numpy(to_luminance(arr)).float()[None]
        if crop:
            i, j = (x.shape[1] - crop) // 2, (x.shape[2] - crop) // 2
            x = x[:, i : i + crop, j : j + crop].contiguous()
        if task == "sr":
            x = x[:, : x.shape[1] // 4 * 4, : x.shape[2] // 4 * 4].contiguous()
        out.append((p.name, x))
    return out


def run(args) -> None:
    import edncli.solvers.potential as P
    from edncli.solvers.methods import MethodOptions, Problem

    torch.set_num_threads(args.threads)
    images = load_crops(args.images, args.crop, args.task, args.limit)
    grid = {}
    for part in args.grid.split(";") if args.grid else []:
        k, _, v = part.partition("=")
        grid[k.strip()] = [float(s) for s in v.split(",")]
    keys = list(grid)
    with open(args.out, "a") as fh:
        for combo in itertools.product(*[grid[k] for k in keys]) if keys else [()]:
            setting = dict(zip(keys, combo))
            box = bool(setting.pop("box", 0))
            base = P.PRESETS[args.task][args.method]
            changes = {k: v for k, v in setting.items()}
            changes["max_iter"] = args.max_iter or base.max_iter
            changes["min_iter"] = 0
            st = replace(base, **changes)
            model, _ = P.get_denoiser(args.weights or P.DEFAULT_WEIGHTS[args.method])
            for k, (name, x) in enumerate(images):
                pb0 = make_problem(x, args.task, args.noise_sigma, args.seed + k)
                delta = float(pb0.delta.delta)
                pb = Problem(op=pb0.op, f=pb0.f, u0=pb0.u0, delta=None, reference=x, task=args.task)
                t0 = time.perf_counter()
                if args.method == "potential":
                    r = P.potential_descent(pb, model, st, box=box)
                else:
                    r = P.projected_red_pnp(pb, model, st, kind=args.method)
                rec = {
                    "task": args.task, "method": args.method, "weights": args.weights or P.DEFAULT_WEIGHTS[args.method],
                    "setting": {**setting, "box": box}, "max_iter": st.max_iter, "image": name, "delta": delta,
                    "psnr": [t.psnr for t in r.trace], "disc": [t.discrepancy for t in r.trace],
                    "monotone": r.energy_monotone, "time_s": time.perf_counter() - t0,
                    "stop": r.samples[0].stop_reason, "n_iter": r.iterations,
                }
                fh.write(json.dumps(rec) + "\n")
                fh.flush()
                print(f"{args.task} {args.method} {rec['setting']} {name}: final {rec['psnr'][-1]:.2f} best "
                      f"{max(rec['psnr']):.2f}@{rec['psnr'].index(max(rec['psnr']))} {rec['time_s']:.0f}s", flush=True)


def stop_index(disc, delta, min_iter, max_iter):
    for k in range(min_iter, min(max_iter, len(disc) - 1) + 1):
        if disc[k] <= delta:
            return k
    return min(max_iter, len(disc) - 1)


def analyse(paths, min_iters, max_iters) -> None:
    recs = [json.loads(line) for p in paths for line in open(p) if line.strip()]
    groups = {}
    for r in recs:
        key = (r["task"], r["method"] + (":" + r["weights"] if r["method"] == "potential" else ""),
               json.dumps(r["setting"], sort_keys=True), r["max_iter"])
        groups.setdefault(key, []).append(r)
    n_img = max(len(v) for v in groups.values())
    rows = []
    for (task, method, setting, mx), rs in groups.items():
        if len(rs) < n_img:
            continue  # incomplete setting
        for mxi in sorted({m for m in max_iters if m <= mx} | {mx}):
            for mi in min_iters:
                if mi > mxi:
                    continue
                idx = [stop_index(r["disc"], r["delta"], mi, mxi) for r in rs]
                ps = statistics.mean(r["psnr"][i] for r, i in zip(rs, idx))
                rows.append((task, method, setting, mi, mxi, ps, statistics.mean(idx), all(r["monotone"] for r in rs),
                             statistics.mean(r["time_s"] * (i / max(1, len(r["psnr"]) - 1)) for r, i in zip(rs, idx))))
    print(f"validation images per setting: {n_img}")
    for task in sorted({r[0] for r in rows}):
        for method in sorted({r[1] for r in rows if r[0] == task}):
            sub = sorted((r for r in rows if r[0] == task and r[1] == method), key=lambda r: -r[5])
            first = next(g for k, g in groups.items() if k[0] == task and k[1] == method)
            init = statistics.mean(r["psnr"][0] for r in first)
            print(f"\n## {task} / {method} (init {init:.2f} dB); best per setting (over min_iter, max_iter):")
            print("| setting | min_iter | max_iter | mean PSNR | mean iters | time/img (s) | F/data monotone |")
            print("|---|---|---|---|---|---|---|")
            seen = set()
            for r in sub:
                if r[2] in seen:
                    continue
                seen.add(r[2])
                print(f"| {r[2]} | {r[3]} | {r[4]} | {r[5]:.2f} | {r[6]:.0f} | {r[8]:.1f} | {r[7]} |")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--task", choices=("deblur", "sr"), default="deblur")
    ap.add_argument("--method", choices=("potential", "red", "pnp"), default="potential")
    ap.add_argument("--weights", default=None)
    ap.add_argument("--grid", default="", help='e.g. "lam=0.01,0.02;box=0,1" (keys: lam, mu, box, L0_offset, beta)')
    ap.add_argument("--images", default="../shared/data/set5")
    ap.add_argument("--crop", type=int, default=128)
    ap.add_argument("--limit", type=int, default=0)
    ap.add_argument("--max-iter", type=int, default=0, help="0: the preset's max_iter")
    ap.add_argument("--noise-sigma", type=float, default=0.01)
    ap.add_argument("--seed", type=int, default=1000, help="noise seed of the first image (not the test seeds)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", default="sweep.jsonl")
    ap.add_argument("--analyse", nargs="*", default=None, help="JSONL files to analyse instead of running")
    ap.add_argument("--min-iters", default="0,10,25,40,60,80,100,150,200,250,300,400")
    ap.add_argument("--max-iters", default="75,125,200,400")
    args = ap.parse_args()
    if args.analyse is not None:
        analyse(args.analyse, [int(s) for s in args.min_iters.split(",")], [int(s) for s in args.max_iters.split(",")])
    else:
        run(args)


if __name__ == "__main__":
    main()
