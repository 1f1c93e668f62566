"""``edn eval sr|ct|deblur``: the quality table of several methods on a folder of clean images."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer
from typing_extensions import Annotated

from ..errors import UsageError
from . import common as c

app = typer.Typer(help="Evaluate methods on simulated measurements from clean images (PSNR, SSIM, ||Au-f||², time).",
                  no_args_is_help=True)

Images = Annotated[str, typer.Option("--images", help="Folder of clean images.")]
Methods = Annotated[str, typer.Option("--methods", help="Comma-separated; method:weights picks a checkpoint, e.g. potential:dnicnn.")]
Noise = Annotated[float, typer.Option("--noise-sigma", help="Noise std added to the measurements (data units).")]
Iterations = Annotated[Optional[int], typer.Option("--iterations", help="Run a fixed number of iterations instead of stopping at δ.")]
JsonOut = Annotated[Optional[str], typer.Option("--json", help="Write the table with per-image rows to this JSON file.")]
Border = Annotated[int, typer.Option("--border", help="Pixels cropped on each side before PSNR/SSIM.")]
Limit = Annotated[Optional[int], typer.Option("--limit", help="Use only the first N images.")]
MaxIter = Annotated[Optional[int], typer.Option(
    "--max-iter", help="Iteration cap when stopping at δ (default 300; potential, red, pnp: their preset's), for every method.")]
Luma = Annotated[str, typer.Option(
    "--luma",
    help="RGB images to gray: full (BT.601 luma on [0, 1]) or ycbcr (Y of Y'CbCr, 16-235 studio swing, as "
    "MATLAB rgb2ycbcr: the 'Y channel' of SR benchmark tables; 1.32 dB higher for the same relative error). "
    "Gray images are used as they are.")]


EvalAlpha = Annotated[Optional[float], typer.Option(
    "--alpha", help="tv: a fixed α (default: chosen by the discrepancy principle from the known noise level).")]


def _run(spec, images, methods, noise_sigma, seed, tau, iterations, max_iter, border, limit, json_out, device, quiet,
         force, size=None, kernel_sigma=1.6, extra=None, learned_steps=None, handover=None, precision="fp32", luma="full",
         ensemble=1, alpha=None):
    from ..evaluation import EvalConfig, check_config, format_table, parse_methods, run_eval
    from ..io.images import IMAGE_SUFFIXES, write_bytes

    cfg = EvalConfig(spec=spec, methods=parse_methods(methods), noise_sigma=noise_sigma, seed=seed, tau=tau,
                     iterations=iterations, max_iter=max_iter, border=border, limit=limit, size=size,
                     kernel_sigma=kernel_sigma, extra={**(extra or {}), **({} if alpha is None else {"alpha": alpha})},
                     learned_steps=learned_steps,
                     handover=handover or EvalConfig.handover, precision=precision, luma=luma, ensemble=ensemble)
    check_config(cfg)  # option values first: usage errors before any file is looked at
    if json_out == "-":  # the table goes to stdout: two things there would mix
        raise UsageError("--json -: the table is printed on stdout; give --json FILE")
    files = c.expand_inputs(images, exts=IMAGE_SUFFIXES)
    if json_out is not None:
        c.check_not_inputs({"--json": json_out}, files, "an input")
        c.check_exists_for_write([json_out], force)
    dev = c.resolve_device(device)
    doc = run_eval([Path(f) for f in files], cfg, dev, progress=None if quiet else (lambda m: c.say(m, False)))
    from ..io.stdout import write_stdout

    write_stdout(format_table(doc) + "\n")
    if json_out is not None:
        from ..io.reports import strict_json

        write_bytes(json_out, (strict_json(doc, indent=2) + "\n").encode(), force=force)


@app.command("sr")
def eval_sr(
    images: Images,
    methods: Methods = "gd,tv,baseline,edn",
    scale: Annotated[int, typer.Option("--scale", help="Upscaling factor (integer >= 2).")] = 4,
    downsampler: Annotated[str, typer.Option("--downsampler", help="average (pooling, the paper's) or bicubic.")] = "average",
    noise_sigma: Noise = 0.01,
    seed: c.Seed = 0,
    tau: c.EvalTau = 1.0,
    alpha: EvalAlpha = None,
    iterations: Iterations = None,
    learned_steps: c.LearnedSteps = None,
    handover: c.Handover = None,
    precision: c.Precision = "fp32",
    luma: Luma = "full",
    ensemble: c.Ensemble = 1,
    max_iter: MaxIter = None,
    border: Border = 4,
    limit: Limit = None,
    json_out: JsonOut = None,
    device: c.Device = "auto",
    quiet: c.Quiet = False,
    force: c.Force = False,
) -> None:
    """Super-resolution: downsample each clean image, add noise, reconstruct with each method."""
    from ..operators.downsample import check_scale
    from ..tasks import TaskSpec

    spec = TaskSpec("sr", scale=check_scale(scale), downsampler=downsampler)
    _run(spec, images, methods, noise_sigma, seed, tau, iterations, max_iter, border, limit, json_out, device, quiet, force,
         learned_steps=learned_steps, handover=handover, precision=precision, luma=luma, ensemble=ensemble, alpha=alpha)


@app.command("deblur")
def eval_deblur(
    images: Images,
    methods: Methods = "gd,tv,edn",
    kernel_sigma: Annotated[float, typer.Option("--kernel-sigma", help="Gaussian blur σ in pixels.")] = 1.6,
    kernel_size: Annotated[int, typer.Option("--kernel-size", help="Gaussian kernel side (odd).")] = 25,
    boundary: Annotated[str, typer.Option("--boundary", help="reflect, zero or circular.")] = "reflect",
    noise_sigma: Noise = 0.01,
    seed: c.Seed = 0,
    tau: c.EvalTau = 1.0,
    alpha: EvalAlpha = None,
    iterations: Iterations = None,
    learned_steps: c.LearnedSteps = None,
    handover: c.Handover = None,
    precision: c.Precision = "fp32",
    luma: Luma = "full",
    ensemble: c.Ensemble = 1,
    max_iter: MaxIter = None,
    border: Border = 4,
    limit: Limit = None,
    json_out: JsonOut = None,
    device: c.Device = "auto",
    quiet: c.Quiet = False,
    force: c.Force = False,
) -> None:
    """Deblurring: blur each clean image with a Gaussian, add noise, reconstruct with each method."""
    from ..tasks import TaskSpec

    spec = TaskSpec("deblur", kernel_sigma=(kernel_sigma, kernel_sigma), kernel_size=kernel_size, boundary=boundary)
    _run(spec, images, methods, noise_sigma, seed, tau, iterations, max_iter, border, limit, json_out, device, quiet,
         force, kernel_sigma=kernel_sigma, learned_steps=learned_steps, handover=handover, precision=precision, luma=luma, ensemble=ensemble, alpha=alpha)


@app.command("ct")
def eval_ct(
    images: Images,
    methods: Methods = "gd,tv,edn",
    size: Annotated[int, typer.Option("--size", help="Images are centre-cropped and resized to size x size.")] = 128,
    angles: Annotated[int, typer.Option("--angles", help="Parallel-beam angles over 180°.")] = 90,
    noise_sigma: Noise = 0.1,
    seed: c.Seed = 0,
    tau: c.EvalTau = 1.0,
    alpha: EvalAlpha = None,
    iterations: Iterations = None,
    learned_steps: c.LearnedSteps = None,
    handover: c.Handover = None,
    precision: c.Precision = "fp32",
    luma: Luma = "full",
    ensemble: c.Ensemble = 1,
    max_iter: MaxIter = None,
    border: Border = 0,
    limit: Limit = None,
    json_out: JsonOut = None,
    device: c.Device = "auto",
    quiet: c.Quiet = False,
    force: c.Force = False,
) -> None:
    """CT: project each clean image (parallel beam), add noise, reconstruct with each method."""
    from ..tasks import TaskSpec

    if size < 8:
        raise UsageError(f"--size must be >= 8, got {size}")
    spec = TaskSpec("ct", angles=angles)
    _run(spec, images, methods, noise_sigma, seed, tau, iterations, max_iter, border, limit, json_out, device, quiet,
         force, size=size, learned_steps=learned_steps, handover=handover, precision=precision, luma=luma, ensemble=ensemble, alpha=alpha)
