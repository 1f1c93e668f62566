"""How a convolutional network is evaluated: whole or on overlapping tiles, in fp32, bf16 or fp16.

Only the *network* is affected. The energy, the descent-set layer (paper 001 eq. 21/22) and the
line search always act on the whole image in float32, so a direction network's output is a
descent direction for any tile size and precision, and the energy still falls at every step.

Tiling
------
The image ``(B, C, H, W)`` is cut into tiles of side ``tile`` (fewer pixels along an axis that is
shorter than a tile), spread evenly so that neighbouring tiles share at least ``overlap`` rows or
columns. Each tile is evaluated alone (its borders zero-padded by the convolutions), the outputs
are multiplied by a window and summed, and the sum is divided by the summed windows, so the
weights of the tiles covering a pixel add up to 1 everywhere.

A network of receptive field ``2r + 1`` (``r`` = receptive radius, the depth of a DnCNN of 3x3
convs) computes a tile's pixels exactly except within ``r`` of a tile edge that is inside the
image. The window is zero on that band (``m = min(r, overlap // 2)`` pixels wide), then rises as
``sin^2`` over the rest of the shared band. Hence:

- ``overlap >= 2r`` (= receptive field - 1): the tiled output equals the whole-image output up to
  float rounding (measured in ``tests/test_inference.py``: max abs difference ~1e-6 in fp32);
- ``r <= overlap < 2r``: the seams use pixels at least ``overlap // 2`` from a tile edge; the
  error is that of the zero padding seen through ``r - overlap // 2`` layers (small for trained
  networks, whose effective receptive field is much narrower than the nominal one).

Memory holds the input, the output and one tile's activations, so it is bounded by the tile size,
not the image size (for ``B`` images at once: ``B`` tiles' activations).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, replace
from typing import Callable, List, Optional, Tuple

import torch

from ..errors import UsageError

#: Precision names and their autocast dtypes (``None``: no autocast, plain float32).
PRECISIONS = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}
#: Self-ensemble sizes: off, or the 8 elements of the dihedral group of the square.
ENSEMBLES = (1, 8)


def dihedral(t: torch.Tensor, k: int) -> torch.Tensor:
    """The ``k``-th (0..7) symmetry of the square on the last two axes: ``k % 4`` quarter turns,
    then a left-right flip for ``k >= 4``."""
    t = torch.rot90(t, k % 4, dims=(-2, -1)) if k % 4 else t
    return t.flip(-1) if k >= 4 else t


def dihedral_inverse(t: torch.Tensor, k: int) -> torch.Tensor:
    """Undo :func:`dihedral` ``k``."""
    t = t.flip(-1) if k >= 4 else t
    return torch.rot90(t, -(k % 4), dims=(-2, -1)) if k % 4 else t


@dataclass(frozen=True)
class InferenceConfig:
    """How networks are evaluated (``--tile``, ``--tile-overlap``, ``--precision``, ``--channels-last``).

    Parameters
    ----------
    tile: side of a square tile in pixels; ``None`` evaluates the whole image at once.
    tile_overlap: rows/columns shared by neighbouring tiles (>= 0, < ``tile``); ``None``: 32, or
        ``tile // 2`` for tiles under 64 (:attr:`overlap`). Exact results need
        ``overlap >= receptive field - 1`` (module docstring).
    precision: ``"fp32"``, ``"bf16"`` or ``"fp16"``: the dtype of ``torch.autocast`` around the
        network; outputs are returned as float32. ``fp16`` needs a GPU.
    channels_last: feed the network NHWC (``torch.channels_last``) tensors; ``None`` (auto):
        decided per device by :meth:`resolved` (NHWC on CPU, NCHW on CUDA).
    ensemble: 1, or 8 for the geometric self-ensemble: the network is evaluated on the 8 flips
        and 90° rotations of its input and the back-transformed outputs are averaged (8x the
        network's time). For a direction network the average is the backbone's output, which the
        descent-set layer then projects, so the guarantee is untouched.

    Values that cannot work raise :class:`~edncli.errors.UsageError` here; the checks that need the
    network or the device are :meth:`check_for` and :meth:`check_device`.
    """

    tile: Optional[int] = None
    tile_overlap: Optional[int] = None
    precision: str = "fp32"
    channels_last: Optional[bool] = None
    ensemble: int = 1

    def __post_init__(self) -> None:
        if self.precision not in PRECISIONS:
            raise UsageError(f"--precision must be one of {', '.join(PRECISIONS)}, got {self.precision!r}")
        if self.ensemble not in ENSEMBLES:
            raise UsageError(f"--ensemble must be 1 (off) or 8 (flips and 90° rotations), got {self.ensemble}")
        if self.tile is None and self.tile_overlap is not None:
            raise UsageError(f"--tile-overlap {self.tile_overlap} needs --tile N: it is the band neighbouring tiles share")
        if self.tile_overlap is not None and self.tile_overlap < 0:
            raise UsageError(f"--tile-overlap must be >= 0, got {self.tile_overlap}")
        if self.tile is not None:
            if self.tile < 1:
                raise UsageError(f"--tile must be a positive number of pixels, got {self.tile}; e.g. --tile 512")
            if self.tile_overlap is not None and self.tile_overlap >= self.tile:
                raise UsageError(
                    f"--tile-overlap {self.tile_overlap} must be smaller than --tile {self.tile}; "
                    f"e.g. --tile-overlap {max(self.tile // 4, 0)}"
                )

    @property
    def overlap(self) -> int:
        """The overlap in use: ``tile_overlap``, or by default ``min(32, tile // 2)``."""
        if self.tile_overlap is not None:
            return self.tile_overlap
        return 32 if self.tile is None else min(32, self.tile // 2)

    @property
    def dtype(self) -> Optional[torch.dtype]:
        """The autocast dtype, ``None`` for fp32."""
        return PRECISIONS[self.precision]

    def resolved(self, device) -> "InferenceConfig":
        """This config with an automatic ``channels_last`` decided for ``device``: NHWC on CPU,
        where it makes a call of a full-resolution 7-layer, 24-channel direction network ~2.3x
        faster at 256² (``benchmarks/bench_compile.py``; ~1.1x for the space-to-depth SR network)
        with the same result up to float rounding, NCHW on CUDA (not measured there)."""
        if self.channels_last is not None:
            return self
        return replace(self, channels_last=torch.device(device).type == "cpu")

    @property
    def is_default(self) -> bool:
        """Whole image, float32, NCHW: the network is called exactly as without this config."""
        return self.tile is None and self.precision == "fp32" and not self.channels_last and self.ensemble == 1

    def check_for(self, receptive_field: int, what: str = "the network", align: int = 1) -> "InferenceConfig":
        """Refuse a tile smaller than the receptive field ``2r + 1`` of ``what``, or tiles closer
        than its ``align``-pixel block grid allows (:func:`tile_starts`); returns ``self``."""
        if self.tile is not None and self.tile < receptive_field:
            raise UsageError(
                f"--tile {self.tile} is smaller than the receptive field of {what} ({receptive_field} px); "
                f"use --tile >= {receptive_field} (e.g. 512) or leave --tile out"
            )
        if self.tile is not None:
            check_tile_step(self.tile, self.overlap, align, what)
        return self

    def check_device(self, device) -> "InferenceConfig":
        """Refuse fp16 on CPU (use bf16 there); returns ``self``."""
        if self.precision == "fp16" and torch.device(device).type == "cpu":
            raise UsageError("--precision fp16 needs a GPU (CPU has no fast float16 convolutions); use --precision bf16 on CPU")
        return self

    def describe(self) -> dict:
        """For reports: the settings and what stays float32 on the whole image."""
        return {**asdict(self), "tile_overlap": self.overlap if self.tile else None, "whole_image_fp32": "energy, descent-set layer, line search"}


def receptive_radius(receptive_field: int) -> int:
    """``r`` with ``receptive_field = 2 r + 1``."""
    return max(int(receptive_field) // 2, 0)


def check_tile_step(tile: int, overlap: int, align: int, what: str = "the network") -> None:
    """Refuse tiles whose step ``tile - overlap`` is below the block grid ``align``: starts on the
    grid could not keep the overlap, and pixels between the tiles' valid parts would get no weight."""
    if align > 1 and tile - overlap < align:
        raise UsageError(
            f"--tile {tile} with --tile-overlap {overlap} steps {tile - overlap} px between tiles, less than the "
            f"{align}-pixel block grid of {what}; use --tile-overlap <= {tile - align} or --tile >= {overlap + align}"
        )


def tile_starts(size: int, tile: int, overlap: int, align: int = 1) -> List[int]:
    """Start indices of tiles of side ``min(tile, size)`` covering ``[0, size)`` with overlaps ``>= overlap``.

    The tiles are spread evenly on the ``align``-pixel grid, in blocks of ``align`` pixels: the
    first at 0, the last at ``size - tile`` rounded down to the grid, consecutive starts at most
    ``step = (tile - overlap) // align`` blocks apart, so ``n = 1 + ceil(last / step)`` tiles
    (``ceil((size - overlap) / (tile - overlap))`` for ``align = 1``). With ``align > 1`` the
    last tile is stretched by up to ``align - 1`` pixels to end at ``size`` (:func:`axis_windows`).
    """
    if size <= tile:
        return [0]
    check_tile_step(tile, overlap, align)
    last, step = (size - tile) // align, (tile - overlap) // align
    n = 1 + math.ceil(last / step)
    return [align * round(i * last / (n - 1)) for i in range(n)] if n > 1 else [0]


def _ramp(d: torch.Tensor, margin: int, length: int) -> torch.Tensor:
    """Window as a function of the distance ``d`` (pixels) to an inner tile edge.

    0 for ``d < margin`` (pixels the zero padding reaches), ``sin^2`` up to 1 over ``length``
    pixels, 1 beyond. ``ramp(t) + ramp(margin*2 + length - 1 - t) = 1`` across a shared band of
    width ``2 margin + length``, so two tiles blend to a partition of unity on their own.
    """
    x = ((d - margin).double() + 0.5) / length
    w = torch.sin(0.5 * math.pi * x.clamp(0.0, 1.0)) ** 2
    return torch.where(d < margin, torch.zeros_like(w), w)


def axis_windows(size: int, tile: int, overlap: int, radius: int, align: int = 1) -> List[Tuple[int, int, torch.Tensor]]:
    """Per tile along one axis: ``(start, stop, window (stop - start,) float64)``.

    Windows are 1 near the image borders, 0 within ``m = min(radius, overlap // 2)`` of an edge
    shared with another tile, and rise smoothly over the next ``max(overlap - 2m, 1)`` pixels.
    Every pixel has a positive summed weight (checked in the tests over many sizes). Starts are
    multiples of ``align`` (:func:`tile_starts`); the last tile ends at ``size``.
    """
    starts = tile_starts(size, tile, overlap, align)
    side = min(tile, size)
    margin = min(radius, overlap // 2)
    length = max(overlap - 2 * margin, 1)
    out = []
    for i, s in enumerate(starts):
        stop = size if i == len(starts) - 1 else s + side
        idx = torch.arange(stop - s)
        w = torch.ones(stop - s, dtype=torch.float64)
        if i > 0:  # an inner edge on the low side
            w = w * _ramp(idx, margin, length)
        if i < len(starts) - 1:  # an inner edge on the high side
            w = w * _ramp(stop - s - 1 - idx, margin, length)
        out.append((s, stop, w))
    return out


def run_network(
    fn: Callable[[torch.Tensor], torch.Tensor],
    x: torch.Tensor,
    config: Optional[InferenceConfig] = None,
    receptive_field: int = 1,
    align: int = 1,
) -> torch.Tensor:
    """Evaluate a fully convolutional ``fn: (B, C, H, W) -> (B, C', H, W)`` whole or tiled.

    Parameters
    ----------
    fn: the network (shape preserving in ``H, W``; e.g. a :class:`~edncli.networks.backbones.DnCNN`).
    x: input ``(B, C, H, W)``, float32.
    config: tiling, precision and memory format; ``None`` (or the default config) calls ``fn(x)``.
    receptive_field: ``2 r + 1`` of ``fn``; sets the band at tile edges the blending ignores.
    align: tile starts are multiples of this (a space-to-depth network's block size, so tiles
        see the same blocks as the whole image).

    Returns
    -------
    ``(B, C', H, W)`` float32 (contiguous NCHW). With ``tile_overlap >= receptive_field - 1`` and
    fp32 it equals ``fn(x)`` up to float rounding; under autocast it carries the rounding of
    ``config.precision``. Gradients flow through it as through ``fn`` (autocast included).
    """
    if config is None or config.is_default:
        return fn(x)
    if config.ensemble > 1:
        # Mean of the network on the 8 symmetries of the input, each mapped back (eq. of the
        # geometric self-ensemble); each call is whole or tiled, at the configured precision.
        single = replace(config, ensemble=1)
        total = run_network(fn, x, single, receptive_field, align)
        for k in range(1, config.ensemble):
            total = total + dihedral_inverse(run_network(fn, dihedral(x, k).contiguous(), single, receptive_field, align), k)
        return total / config.ensemble
    dtype = config.dtype

    def call(t: torch.Tensor) -> torch.Tensor:
        if config.channels_last:
            t = t.contiguous(memory_format=torch.channels_last)
        if dtype is None:
            y = fn(t)
        else:
            with torch.autocast(device_type=t.device.type, dtype=dtype):
                y = fn(t)
        return y.float().contiguous()

    H, W = x.shape[-2:]
    if config.tile is None or (H <= config.tile and W <= config.tile):
        return call(x)
    r = receptive_radius(receptive_field)
    rows = axis_windows(H, config.tile, config.overlap, r, align)
    cols = axis_windows(W, config.tile, config.overlap, r, align)
    out: Optional[torch.Tensor] = None
    weight = torch.zeros(H, W, dtype=torch.float32, device=x.device)
    for y0, y1, wy in rows:
        for x0, x1, wx in cols:
            w = (wy[:, None] * wx[None, :]).to(device=x.device, dtype=torch.float32)
            y = call(x[..., y0:y1, x0:x1])
            if out is None:
                out = torch.zeros(*y.shape[:-2], H, W, dtype=torch.float32, device=x.device)
            out[..., y0:y1, x0:x1] += w * y
            weight[y0:y1, x0:x1] += w
    assert out is not None
    return out / weight


__all__ = ["PRECISIONS", "ENSEMBLES", "dihedral", "dihedral_inverse", "InferenceConfig", "run_network", "tile_starts", "axis_windows", "receptive_radius", "check_tile_step"]
