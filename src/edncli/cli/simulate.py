"""``edn simulate sr|deblur|ct``: make measurements ``f = A u + σ n`` from a clean image."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer
from typing_extensions import Annotated

from ..errors import UsageError
from . import common as c

app = typer.Typer(help="Simulate measurements from a clean image (for testing and evaluation).", no_args_is_help=True)

NoiseOpt = Annotated[float, typer.Option("--noise-sigma", help="Std of additive Gaussian noise (data units).")]
Crop = Annotated[bool, typer.Option("--crop", help="Crop the image so its sides divide by --scale.")]


def _noisy(clean, sigma: float, seed: int):
    import math

    import torch

    if not (sigma >= 0 and math.isfinite(sigma)):
        raise UsageError(f"--noise-sigma must be a finite number >= 0, got {sigma}")
    gen = torch.Generator().manual_seed(seed)
    return clean + sigma * torch.randn(clean.shape, generator=gen).to(clean.device)


def _write(output: str, f, ndim: int, fmt, depth, force: bool) -> None:
    """Write the measurement; a PNG clips values outside [0, 1], which changes the noise: say so."""
    from ..io.images import output_format, write_image

    arr = c.from_tensor(f, ndim)
    if output_format(output, fmt) == "png":
        clipped = int(((arr < 0) | (arr > 1)).sum())
        if clipped:
            c.warn(f"{output}: the PNG clips {clipped} of {arr.size} noisy value(s) to [0, 1], so its noise is no "
                   "longer Gaussian with the given σ; write .tif or .npy to keep it exact")
    write_image(output, arr, fmt=fmt, bit_depth=depth, force=force)


def _read_clean(path: str):
    from ..io.images import read_image

    arr, _ = read_image(path)
    return arr


@app.command("sr")
def simulate_sr(
    input: Annotated[str, typer.Argument(help="Clean high-resolution image.")],
    output: c.Output,
    scale: Annotated[int, typer.Option("--scale", "-s", help="Downscaling factor (integer >= 2).")] = 4,
    downsampler: Annotated[str, typer.Option("--downsampler", help="average or bicubic.")] = "average",
    noise_sigma: NoiseOpt = 0.01,
    crop: Crop = False,
    seed: c.Seed = 0,
    fmt: c.Format = None,
    bit_depth: c.BitDepth = None,
    force: c.Force = False,
) -> None:
    """Downsample by --scale and add noise. Use .tif/.npy output to keep the noise exact."""
    from ..io.images import check_writable, output_format
    from ..operators.downsample import check_scale, make_sr_operator

    scale = check_scale(scale)
    c.check_not_inputs({"-o": output}, [input], "the clean image")
    check_writable(output, force)
    depth = c.png_bit_depth(bit_depth, [output_format(output, fmt)])  # before any work
    arr = _read_clean(input)
    h, w = arr.shape[-2:]
    if crop and min(h, w) >= scale:  # too small to crop: the operator names the original size
        arr = arr[..., : h - h % scale, : w - w % scale]
    elif min(h, w) >= scale and (h % scale or w % scale):
        raise UsageError(f"{input}: image size {h}x{w} is not divisible by --scale {scale}; pass --crop to crop it to "
                         f"{h - h % scale}x{w - w % scale}")
    u = c.to_tensor(arr, "cpu")
    op = make_sr_operator(u.shape[-2:], scale, downsampler)
    f = _noisy(op(u), noise_sigma, seed)
    _write(output, f, arr.ndim, fmt, depth, force)


@app.command("deblur")
def simulate_deblur(
    input: Annotated[str, typer.Argument(help="Clean image.")],
    output: c.Output,
    kernel_sigma: Annotated[Optional[float], typer.Option("--kernel-sigma", help="Gaussian blur σ in pixels.")] = 1.6,
    kernel_size: Annotated[Optional[int], typer.Option("--kernel-size", help="Gaussian kernel side (odd).")] = 25,
    kernel: Annotated[Optional[Path], typer.Option("--kernel", help="Kernel file instead of a Gaussian.")] = None,
    kernel_dataset: Annotated[Optional[str], typer.Option("--kernel-dataset", help="Dataset of an HDF5 --kernel holding several.")] = None,
    boundary: Annotated[str, typer.Option("--boundary", help="reflect, zero or circular.")] = "reflect",
    noise_sigma: NoiseOpt = 0.01,
    seed: c.Seed = 0,
    fmt: c.Format = None,
    bit_depth: c.BitDepth = None,
    force: c.Force = False,
) -> None:
    """Blur with a Gaussian (or file) kernel and add noise."""
    from ..io.images import check_writable, output_format
    from ..operators.blur import Blur

    c.check_not_inputs({"-o": output}, [input, *([str(kernel)] if kernel else [])], "an input")
    check_writable(output, force)
    depth = c.png_bit_depth(bit_depth, [output_format(output, fmt)])  # before any work
    k = c.kernel_from_options(kernel, kernel_dataset, kernel_sigma, kernel_size)  # type: ignore[arg-type]
    arr = _read_clean(input)
    u = c.to_tensor(arr, "cpu")
    f = _noisy(Blur(u.shape[-2:], k, boundary)(u), noise_sigma, seed)
    _write(output, f, arr.ndim, fmt, depth, force)
