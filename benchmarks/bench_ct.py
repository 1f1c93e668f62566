"""CT quality: PSNR per iteration of gd, tv and edn (paper 001 Fig. 4 shape), and the measured walnut.

    python benchmarks/bench_ct.py --out benchmarks/ct          # writes ct_psnr.png, walnut.png, ct.json
    python benchmarks/bench_ct.py --out benchmarks/ct --start zero --weights edn-ct-zero --angles 90 --no-walnut

Simulated part: centre crops of ../shared/data/set12 resized to --size, parallel beam over
180° with --angles, Gaussian noise --noise-sigma (sinogram units); every method runs a fixed
--iterations from the same FBP start (edn from its checkpoint's start) and PSNR is recorded each
iteration. Walnut part: the measured fan-beam sinogram (120 angles over 360°), each method run
to δ from --delta auto (or --iterations), shown side by side.
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

import numpy as np
import torch

from edncli.io.images import read_image, to_luminance
from edncli.metrics import psnr
from edncli.operators.tomography import CTGeometry, make_ct_operator
from edncli.solvers.methods import MethodOptions, Problem, solve
from edncli.solvers.stopping import DeltaChoice, choose_delta

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


def simulated(args):
    from skimage.transform import resize

    files = sorted((DATA / "set12").glob("*.png"))[: args.images]
    geom = CTGeometry.parallel(args.size, args.angles)
    op = make_ct_operator(geom)
    curves = {m: [] for m in args.methods}
    for i, path in enumerate(files):
        arr, _ = read_image(path)
        x = to_luminance(arr)
        s = min(x.shape)
        x = resize(x[:s, :s], (args.size, args.size), anti_aliasing=True).astype(np.float32)
        xt = torch.from_numpy(x)[None]
        gen = torch.Generator().manual_seed(i)
        f = op(xt) + args.noise_sigma * torch.randn((1, *op.out_shape), generator=gen)
        u0 = op.fbp(f) if args.start == "fbp" else torch.zeros((1, *op.in_shape))
        for m in args.methods:
            opts = MethodOptions(max_iter=args.iterations, min_iter=args.iterations, alpha=args.alpha if m == "tv" else None,
                                 weights=args.weights if m == "edn" else None)
            res = solve(Problem(op, f, u0, None, reference=xt, task="ct"), m, opts)
            c = [r.psnr for r in res.trace]
            curves[m].append(c + [c[-1]] * (args.iterations + 1 - len(c)))  # a run that stopped early stays put
    mean = {m: np.mean(np.array([c[: args.iterations + 1] for c in v]), axis=0).tolist() for m, v in curves.items()}
    return mean, {"images": [p.name for p in files], "size": args.size, "angles": args.angles, "noise_sigma": args.noise_sigma,
                  "alpha_tv": args.alpha, "iterations": args.iterations,
                  "start": args.start, "weights": args.weights}


def walnut(args):
    from edncli.io.sinograms import load_walnut

    sino, geom = load_walnut(size=args.walnut_size)
    op = make_ct_operator(geom)
    f = torch.from_numpy(sino.data)
    scale = float(f.abs().max())
    f = f / scale  # unknown absolute scale: normalise the data to max 1
    u0 = op.fbp(f)
    delta = choose_delta("auto", None, 1.0, int(f[0].numel()), f.numpy())
    # The FIPS reference slice, compared after an affine fit (bench_walnut_steps.fitted_psnr),
    # where the reconstruction has its size.
    from bench_walnut_steps import fitted_psnr  # benchmarks/ is on sys.path when run as a script

    from edncli.io.sinograms import WALNUT_DIR

    ref_path = Path(WALNUT_DIR) / "walnut.png"
    ref = to_luminance(read_image(ref_path)[0]).astype(np.float64) if ref_path.is_file() else None
    if ref is not None and ref.shape != (args.walnut_size, args.walnut_size):
        ref = None
    fbp_psnr = None if ref is None else fitted_psnr(u0[0].numpy().astype(np.float64), ref)
    out = {}
    for m in args.methods:
        # measured data: tv's α by the discrepancy principle (the simulated part's fixed α has no
        # meaning at this scan's scale)
        opts = MethodOptions(max_iter=args.walnut_iterations)
        res = solve(Problem(op, f, u0, delta, task="ct"), m, opts)
        stats = {"iterations": res.iterations, "delta_reached": res.delta_reached,
                 "energy_monotone": res.energy_monotone, "final_discrepancy": res.final_discrepancy}
        if "alpha" in res.extra:
            stats.update(alpha=res.extra["alpha"][0], search_iterations=sum(res.extra["search_iterations"]))
        if ref is not None:
            stats["psnr_vs_reference"] = fitted_psnr(res.u[0].numpy().astype(np.float64), ref)
        out[m] = (res.u[0].numpy(), stats)
    return u0[0].numpy(), out, delta, fbp_psnr


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=Path("benchmarks/ct"))
    ap.add_argument("--methods", default="gd,tv,edn")
    ap.add_argument("--size", type=int, default=96)
    ap.add_argument("--angles", type=int, default=60)
    ap.add_argument("--noise-sigma", type=float, default=0.5)
    ap.add_argument("--alpha", type=float, default=0.05)
    ap.add_argument("--iterations", type=int, default=30)
    ap.add_argument("--images", type=int, default=4)
    ap.add_argument("--start", choices=("fbp", "zero"), default="fbp",
                    help="simulated part: every method from FBP, or from zero as in the paper's Fig. 4")
    ap.add_argument("--weights", default=None, help="edn checkpoint (default: the method's, edn-ct)")
    ap.add_argument("--no-walnut", action="store_true", help="only the simulated part")
    ap.add_argument("--walnut-size", type=int, default=164)
    ap.add_argument("--walnut-iterations", type=int, default=100)
    args = ap.parse_args()
    args.methods = args.methods.split(",")
    args.out.mkdir(parents=True, exist_ok=True)
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    mean, proto = simulated(args)
    fig, ax = plt.subplots(figsize=(5, 3.5), constrained_layout=True)
    for m, c in mean.items():
        ax.plot(range(len(c)), c, marker=".", label=m)
    ax.set(xlabel="iteration", ylabel="mean PSNR (dB)",
           title=f"CT {args.size}², {args.angles} angles, σ={args.noise_sigma}, from {args.start}")
    ax.legend()
    suffix = "" if args.start == "fbp" else f"_{args.start}"
    fig.savefig(args.out / f"ct_psnr{suffix}.png", dpi=100)
    plt.close(fig)
    if args.no_walnut:
        (args.out / f"ct{suffix}.json").write_text(json.dumps({"simulated": {"protocol": proto, "mean_psnr_per_iteration": mean}}, indent=2))
        for m, c in mean.items():
            best = int(np.argmax(c))
            print(f"| {m} | " + " | ".join(f"{c[k]:.2f}" for k in (0, 1, 3, 5, 10, 20, args.iterations)) + f" | {c[best]:.2f} ({best}) |")
        return

    fbp, rec, delta, fbp_psnr = walnut(args)
    fig, axes = plt.subplots(1, 1 + len(rec), figsize=(3 * (1 + len(rec)), 3.2), constrained_layout=True)
    vmax = np.percentile(fbp, 99.5)
    axes[0].imshow(fbp, cmap="gray", vmin=0, vmax=vmax)
    db = (lambda v: "" if v is None else f", {v:.2f} dB")  # PSNR against the reference slice
    axes[0].set_title(f"FBP (start){db(fbp_psnr)}")
    for ax, (m, (img, info)) in zip(axes[1:], rec.items()):
        ax.imshow(img, cmap="gray", vmin=0, vmax=vmax)
        ax.set_title(f"{m}: {info['iterations']} it, δ {'met' if info['delta_reached'] else 'not met'}"
                     f"{db(info.get('psnr_vs_reference'))}")
    for ax in axes:
        ax.axis("off")
    fig.savefig(args.out / "walnut.png", dpi=100)
    plt.close(fig)
    doc = {"simulated": {"protocol": proto, "mean_psnr_per_iteration": mean},
           "walnut": {"delta": delta.as_dict(), "fbp_psnr_vs_reference": fbp_psnr,
                      "methods": {m: info for m, (_, info) in rec.items()}}}
    (args.out / "ct.json").write_text(json.dumps(doc, indent=2))
    print("| method | " + " | ".join(f"it {k}" for k in (0, 5, 10, 20, args.iterations)) + " | best (it) |")
    print("|---|" + "---|" * 6)
    for m, c in mean.items():
        best = int(np.argmax(c))
        print(f"| {m} | " + " | ".join(f"{c[k]:.2f}" for k in (0, 5, 10, 20, args.iterations)) + f" | {c[best]:.2f} ({best}) |")
    print(json.dumps(doc["walnut"], indent=2))


if __name__ == "__main__":
    main()
