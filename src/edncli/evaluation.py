"""Evaluation protocol: simulate measurements from clean images, run methods, tabulate quality.

Images are evaluated as grayscale (luminance, BT.601) in [0, 1]; PSNR and SSIM on the full
image after cropping ``border`` pixels on each side. Noise is seeded per image
(``seed + index``), so every method sees the same data. Each method runs to the same δ
(``δ = τ σ sqrt(m)`` with the known σ) or, with ``iterations``, for that fixed number of steps.
"""

from __future__ import annotations

import math
import platform
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence

import numpy as np
import torch

from .errors import UsageError
from .metrics import psnr, ssim
from .networks.inference import InferenceConfig
from .solvers.options import METHOD_OPTIONS, NETWORK_EVAL_METHODS
from .solvers.methods import MethodOptions, Problem, check_handover, solve
from .solvers.stopping import DeltaChoice
from .tasks import TaskSpec


@dataclass
class EvalConfig:
    """Protocol of one evaluation run."""

    spec: TaskSpec
    methods: Sequence[str]
    noise_sigma: float = 0.01
    seed: int = 0
    tau: float = 1.0
    iterations: Optional[int] = None
    max_iter: Optional[int] = None  # None: 300, and the potential/red/pnp presets' own caps
    border: int = 4
    size: Optional[int] = None  # ct: images are centre-cropped/resized to size x size
    limit: Optional[int] = None
    kernel_sigma: float = 1.6
    extra: Dict[str, object] = field(default_factory=dict)
    #: ``edn``: network steps before Landweber takes over (``None``: the checkpoint's min-iter,
    #: or every step with ``iterations``).
    learned_steps: Optional[int] = None
    #: ``edn``: what continues after the network steps, ``"gd"`` (Landweber) or ``"cg"``.
    handover: str = "cg"
    #: Networks: autocast dtype (``"fp32"``, ``"bf16"``, ``"fp16"``), as ``--precision``.
    precision: str = "fp32"
    #: RGB to gray: ``"full"`` (BT.601 luma on [0, 1]) or ``"ycbcr"`` (studio-swing Y, the SR
    #: benchmark convention); see :data:`edncli.io.images.LUMAS`.
    luma: str = "full"
    #: Networks: 1, or 8 for the geometric self-ensemble (``--ensemble``).
    ensemble: int = 1


#: How the protocol names each ``luma`` convention (RGB images; gray images pass through).
LUMA_TEXT = {
    "full": "BT.601 luma 0.299R+0.587G+0.114B in [0, 1]",
    "ycbcr": "Y of BT.601 Y'CbCr, studio swing (16+219*luma)/255 (MATLAB rgb2ycbcr; SR benchmark convention)",
}


def parse_methods(spec: str) -> List[str]:
    methods = [m.strip() for m in spec.split(",") if m.strip()]
    if not methods:
        raise UsageError("--methods is empty; e.g. --methods gd,tv,edn")
    return methods


def _split(method: str) -> tuple[str, Optional[str]]:
    if ":" in method:
        name, weights = method.split(":", 1)
        return name, weights
    return method, None


def check_methods(methods: Sequence[str]) -> None:
    """A usage error for an unknown method, or ``method:weights`` on a method that loads no checkpoint."""
    from .solvers import learned, potential  # noqa: F401  (they register the learned methods)
    from .solvers.learned import CHECKPOINT_METHODS
    from .solvers.methods import METHODS

    repeated = sorted({m for m in methods if list(methods).count(m) > 1})
    if repeated:  # the table has one entry per method: a repeat would count its images twice
        raise UsageError(f"--methods lists {', '.join(repeated)} more than once; give each method once")
    for method in methods:
        name, weights = _split(method)
        if name not in METHODS:
            raise UsageError(f"--methods: unknown method {name!r}; choose from {', '.join(sorted(METHODS))}")
        if weights is not None and name not in CHECKPOINT_METHODS:
            raise UsageError(f"--methods {method}: method {name} uses no checkpoint; name:weights is for "
                             f"{', '.join(CHECKPOINT_METHODS)}")
        if weights is not None and not weights.strip():
            raise UsageError(f"--methods {method}: empty checkpoint name after ':'")


def check_config(cfg: EvalConfig) -> None:
    """Raise :class:`UsageError` for a setting that cannot work; called before any image is read."""
    if not (cfg.noise_sigma >= 0 and math.isfinite(cfg.noise_sigma)):
        raise UsageError(f"--noise-sigma must be >= 0 and finite, got {cfg.noise_sigma}")
    if cfg.noise_sigma == 0 and cfg.iterations is None:
        raise UsageError("--noise-sigma must be > 0 to stop at δ; or give --iterations for a fixed count")
    if not (cfg.tau > 0 and math.isfinite(cfg.tau)):
        raise UsageError(f"--tau must be > 0 and finite, got {cfg.tau}")
    if cfg.iterations is not None and cfg.iterations < 0:
        raise UsageError(f"--iterations must be >= 0, got {cfg.iterations}")
    if cfg.max_iter is not None and cfg.max_iter < 0:
        raise UsageError(f"--max-iter must be >= 0, got {cfg.max_iter}")
    if cfg.learned_steps is not None and cfg.learned_steps < 0:
        raise UsageError(f"--learned-steps must be >= 0, got {cfg.learned_steps}")
    if cfg.limit is not None and cfg.limit < 1:
        raise UsageError(f"--limit must be >= 1, got {cfg.limit}")
    if cfg.border < 0:
        raise UsageError(f"--border must be >= 0, got {cfg.border}")
    if cfg.luma not in LUMA_TEXT:
        raise UsageError(f"--luma must be one of {', '.join(LUMA_TEXT)}, got {cfg.luma!r}")
    check_handover(cfg.handover)
    InferenceConfig(precision=cfg.precision, ensemble=cfg.ensemble)  # bad values: usage errors
    check_methods(cfg.methods)
    # Options no listed method reads are usage errors, as in the reconstruct commands: a table
    # of gd/cg/tv "at bf16" or "with the ensemble" would claim a setting that never applied.
    names = {_split(m)[0] for m in cfg.methods}
    unread = [opt for opt, given in (("--precision", cfg.precision != "fp32"), ("--ensemble", cfg.ensemble != 1)) if given]
    if unread and not names.intersection(NETWORK_EVAL_METHODS):
        raise UsageError(f"{' and '.join(unread)}: only networks read this, and none of --methods "
                         f"{','.join(cfg.methods)} evaluates one that does ({', '.join(NETWORK_EVAL_METHODS)} do)")
    alpha = cfg.extra.get("alpha")
    if alpha is not None:
        if not (isinstance(alpha, (int, float)) and alpha > 0 and math.isfinite(alpha)):
            raise UsageError(f"--alpha must be > 0 and finite, got {alpha}")
        if "tv" not in names:
            raise UsageError(f"--alpha applies to tv, which --methods {','.join(cfg.methods)} does not list")
    elif "tv" in names and cfg.iterations is not None and cfg.noise_sigma == 0:
        # with noise, tv still takes α from the known noise level (the discrepancy principle)
        raise UsageError("tv chooses α by the discrepancy principle, and --noise-sigma 0 gives it no noise level: "
                         "give --alpha A (e.g. --alpha 0.001) or drop tv from --methods")
    if cfg.learned_steps is not None and not names.intersection(METHOD_OPTIONS["--learned-steps"]):
        raise UsageError(f"--learned-steps applies to edn, which --methods {','.join(cfg.methods)} does not list")


def prepare_image(arr: np.ndarray, cfg: EvalConfig) -> np.ndarray:
    """Luminance in [0, 1], cropped so the forward model applies (sr: sides divisible by the scale)."""
    from .io.images import to_luminance

    x = to_luminance(arr, cfg.luma)
    if cfg.spec.task == "sr":
        s = cfg.spec.scale
        h, w = x.shape
        x = x[: h - h % s, : w - w % s]
    if cfg.spec.task == "ct":
        n = cfg.size or min(x.shape)
        side = min(x.shape)
        i, j = (x.shape[0] - side) // 2, (x.shape[1] - side) // 2
        x = x[i : i + side, j : j + side]
        if side != n:
            from skimage.transform import resize

            x = resize(x, (n, n), anti_aliasing=True).astype(np.float32)
    return np.ascontiguousarray(x, dtype=np.float32)


def simulate(x: torch.Tensor, cfg: EvalConfig, index: int, device, op_cache: dict):
    """``(op, f)`` for one clean image ``x`` ``(1, H, W)`` with seeded noise."""
    key = tuple(x.shape[-2:])
    if key not in op_cache:
        op_cache[key] = cfg.spec.operator(key, kernel_sigma=cfg.kernel_sigma, device=device)
    op = op_cache[key]
    gen = torch.Generator().manual_seed(cfg.seed + index)
    clean = op(x)
    f = clean + cfg.noise_sigma * torch.randn(clean.shape, generator=gen).to(device)
    return op, f


def run_eval(
    files: Sequence[Path], cfg: EvalConfig, device, progress: Optional[Callable[[str], None]] = None
) -> dict:
    """Evaluate every method on every image; returns the table document (see module doc)."""
    from .io.images import read_image

    check_config(cfg)
    files = list(files)[: cfg.limit] if cfg.limit is not None else list(files)
    clean = []  # every image is read and checked before any method runs
    for path in files:
        arr, _ = read_image(path)
        x = prepare_image(arr, cfg)
        if 2 * cfg.border >= min(x.shape):
            raise UsageError(f"--border {cfg.border} leaves no pixels of {Path(path).name} ({x.shape[0]}x{x.shape[1]} as evaluated)")
        clean.append(x)
    from .solvers.learned import check_learned

    for method in cfg.methods:  # every checkpoint before any work (not at its method's turn)
        name, weights = _split(method)
        if name in ("edn", "baseline"):
            check_learned(name, weights, cfg.spec, what=f"--methods {method}: checkpoint")
    rows: List[dict] = []
    op_cache: dict = {}
    for index, (path, image) in enumerate(zip(files, clean)):
        x = torch.from_numpy(image)[None].to(device)
        op, f = simulate(x, cfg, index, device, op_cache)
        m = int(f[0].numel())
        known = None if cfg.noise_sigma == 0 else DeltaChoice(
            cfg.tau * cfg.noise_sigma * math.sqrt(m), "noise_sigma", cfg.noise_sigma, cfg.tau, m)
        # every method stops at δ, or with --iterations runs that many steps; tv then still
        # takes its α from δ (it needs a noise level for that), and its final solve is capped
        delta = known if cfg.iterations is None else None
        u0 = cfg.spec.initial(op, f)
        for method in cfg.methods:
            name, weights = _split(method)
            opts = MethodOptions(max_iter=cfg.iterations if cfg.iterations is not None else cfg.max_iter, weights=weights,
                                 learned_steps=cfg.learned_steps, handover=cfg.handover,
                                 inference=InferenceConfig(precision=cfg.precision, ensemble=cfg.ensemble))
            if cfg.iterations is not None:
                opts.min_iter = cfg.iterations
                opts.extra["fixed_iterations"] = True
            opts.extra.update(cfg.extra)
            if name == "tv" and cfg.extra.get("alpha") is not None:
                opts.alpha = float(cfg.extra["alpha"])  # type: ignore[arg-type]
            fixed_tv = name == "tv" and cfg.iterations is not None and opts.alpha is None
            problem = Problem(op=op, f=f, u0=u0, delta=known if fixed_tv else delta, task=cfg.spec.task)
            t0 = time.perf_counter()
            result = solve(problem, name, opts)
            elapsed = time.perf_counter() - t0
            u = result.u.clamp(0, 1)
            res = op(result.u) - f
            rows.append(
                {
                    "image": Path(path).name,
                    "method": method,
                    "psnr": psnr(u, x, border=cfg.border),
                    "ssim": ssim(u, x, border=cfg.border),
                    "residual_sq": float((res.double() ** 2).sum()),
                    "iterations": result.iterations,
                    "time_s": elapsed,
                    "delta": None if delta is None else delta.delta,
                    "delta_reached": result.delta_reached,
                    "energy_monotone": result.energy_monotone,
                    "max_energy_increase": result.max_energy_increase,
                    "psnr_init": psnr(u0.clamp(0, 1), x, border=cfg.border),
                }
            )
            if "search_iterations" in result.extra:  # tv's α search: work outside `iterations`
                rows[-1]["search_iterations"] = int(sum(result.extra["search_iterations"]))
            if "alpha" in result.extra:  # tv: the α it used (given, or by the discrepancy principle)
                rows[-1]["alpha"] = float(result.extra["alpha"][0])
            if progress is not None:
                r = rows[-1]
                progress(f"{r['image']}: {method}: {r['psnr']:.2f} dB, {r['iterations']} it, {r['time_s']:.2f} s")
    methods: Dict[str, dict] = {}
    for method in cfg.methods:
        mine = [r for r in rows if r["method"] == method]
        mean = {k: float(np.mean([r[k] for r in mine])) for k in ("psnr", "ssim", "residual_sq", "iterations", "time_s")}
        if any("search_iterations" in r for r in mine):
            mean["search_iterations"] = float(np.mean([r.get("search_iterations", 0) for r in mine]))
        methods[method] = {
            "mean": mean,
            "images": len(mine),
            # None (printed n/a) when no row tested δ (--iterations, noise-free data): "all of
            # nothing" is not a reached δ
            "delta_reached_all": (None if all(r["delta_reached"] is None for r in mine)
                                  else all(r["delta_reached"] is not False for r in mine)),
            "energy_monotone_all": all(r["energy_monotone"] for r in mine),
        }
    return {
        "task": cfg.spec.forward_model(),
        "protocol": {
            "noise_sigma": cfg.noise_sigma,
            "seed": cfg.seed,
            "tau": cfg.tau,
            "delta_rule": "tau * sigma * sqrt(m) per image" if cfg.iterations is None else None,
            "iterations": cfg.iterations,
            "learned_steps": cfg.learned_steps,
            "handover": cfg.handover,
            "precision": cfg.precision,
            "ensemble": cfg.ensemble,
            "border": cfg.border,
            "images": [Path(p).name for p in files],
            "luma": cfg.luma,
            "grayscale": LUMA_TEXT[cfg.luma],
            "residual_sq": "||A u - f||^2 per image (sum of squares)",
        },
        "machine": {"platform": platform.platform(), "processor": platform.processor(), "device": str(device)},
        "methods": methods,
        "rows": rows,
    }


def format_table(doc: dict) -> str:
    """A markdown table of the means."""
    lines = [
        "| method | PSNR (dB) | SSIM | ‖Au−f‖² | iterations | time (s) | δ reached (all) | energy monotone (all) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name, m in doc["methods"].items():
        mean = m["mean"]
        search = f" (+{mean['search_iterations']:.1f} α search)" if "search_iterations" in mean else ""
        lines.append(
            f"| {name} | {mean['psnr']:.2f} | {mean['ssim']:.4f} | {mean['residual_sq']:.3g} | {mean['iterations']:.1f}{search} | "
            f"{mean['time_s']:.3f} | {'n/a' if m['delta_reached_all'] is None else m['delta_reached_all']} | {m['energy_monotone_all']} |"
        )
    return "\n".join(lines)
