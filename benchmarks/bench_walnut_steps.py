"""Walnut: CG from FBP stopped after k steps, against the FIPS reference slice (semi-convergence).

    python benchmarks/bench_walnut_steps.py [--steps 5,10,12,13,15,19,28,40] [--size 328]

Prints ``k, ||Au - f||, PSNR`` per k. The reference (``walnut.png``) has its own intensity scale
and orientation, so each iterate is compared after a least-squares fit of scale and offset, in
the best of its 8 flips/rotations. Shows where δ should be: the iterate closest to the
reference explains the data to the noise level, later ones fit noise.
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path

import numpy as np
import torch

from edncli.energies import DataFidelity
from edncli.io.images import read_image, to_luminance
from edncli.io.sinograms import WALNUT_DIR, load_walnut
from edncli.operators.tomography import make_ct_operator
from edncli.solvers.descent import ConjugateDirections, LineSearch, StopRule, descend
from edncli.solvers.stopping import estimate_noise_sigma


def fitted_psnr(u: np.ndarray, ref: np.ndarray) -> float:
    """PSNR (dB, peak = the reference's range) of the best affine fit of ``u`` to ``ref`` over the 8 symmetries."""
    best = -math.inf
    for t in (u, u.T):
        for cand in (t, t[::-1], t[:, ::-1], t[::-1, ::-1]):
            a = np.stack([cand.ravel(), np.ones(cand.size)], 1)
            coef, *_ = np.linalg.lstsq(a, ref.ravel(), rcond=None)
            mse = float(np.mean((ref.ravel() - a @ coef) ** 2))
            best = max(best, 10 * math.log10(float(np.ptp(ref)) ** 2 / mse))
    return best


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", default="5,10,12,13,15,19,28,40")
    ap.add_argument("--size", type=int, default=328)
    args = ap.parse_args()
    sino, geom = load_walnut(size=args.size)
    op = make_ct_operator(geom)
    f = torch.from_numpy(sino.data)
    f = f / float(f.abs().max())  # as bench_ct.py: unknown absolute scale, data to max 1
    sigma = estimate_noise_sigma(f[0].numpy())
    print(f"--delta auto: sigma {sigma:.5f}, delta {sigma * math.sqrt(f[0].numel()):.3f}")
    ref = to_luminance(read_image(Path(WALNUT_DIR) / "walnut.png")[0]).astype(np.float64)
    if ref.shape != (args.size, args.size):
        raise SystemExit(f"the reference is {ref.shape[0]}x{ref.shape[1]}: use --size {ref.shape[0]}")
    u0 = op.fbp(f)
    print("| CG steps | ||Au - f|| | PSNR vs reference (dB) |")
    print("|---:|---:|---:|")
    print(f"| 0 (FBP) | - | {fitted_psnr(u0[0].numpy().astype(np.float64), ref):.2f} |")
    for k in (int(s) for s in args.steps.split(",")):
        res = descend(DataFidelity(op, f), u0, ConjugateDirections(), line=LineSearch(initial="exact"), stop=StopRule(max_iter=k))
        print(f"| {k} | {res.samples[0].final_discrepancy:.3f} | {fitted_psnr(res.u[0].numpy().astype(np.float64), ref):.2f} |")


if __name__ == "__main__":
    main()
