"""Super-resolution forward operators: average pooling and antialiased bicubic downsampling."""

from __future__ import annotations

import math
from typing import Sequence, Tuple

import torch
import torch.nn.functional as F

from ..errors import UsageError
from .base import LinearOperator


def check_scale(scale: int) -> int:
    """Validate an integer downsampling factor ``>= 2``."""
    if isinstance(scale, bool) or int(scale) != scale or scale < 2:
        raise UsageError(f"--scale must be an integer >= 2, got {scale!r}")
    return int(scale)


def _check_divisible(shape: Sequence[int], scale: int) -> None:
    h, w = shape[-2:]
    if h < scale or w < scale:
        raise UsageError(f"image size {h}x{w} is smaller than --scale {scale}; give an image of at least {scale}x{scale} pixels")
    if h % scale or w % scale:
        raise UsageError(
            f"image size {h}x{w} is not divisible by --scale {scale}; crop it to "
            f"{h - h % scale}x{w - w % scale} first"
        )


class _DownsampleBase(LinearOperator):
    """Shared set-up: a validated integer ``scale`` and shapes ``(H, W) -> (H/s, W/s)``."""

    returns_new = True

    def __init__(self, hr_shape: Sequence[int], scale: int):
        self.scale = check_scale(scale)
        _check_divisible(hr_shape, self.scale)
        h, w = hr_shape[-2:]
        super().__init__((h, w), (h // self.scale, w // self.scale))

    def describe(self):
        return {**super().describe(), "scale": self.scale}


class AveragePool(_DownsampleBase):
    """``A u``: mean over non-overlapping ``s x s`` blocks (paper 001 §5.1).

    Shapes ``(B, H, W) -> (B, H/s, W/s)``. ``A A^T = I / s^2``, so ``||A|| = 1/s`` exactly.
    """

    name = "average_pool"

    def __init__(self, hr_shape: Sequence[int], scale: int):
        super().__init__(hr_shape, scale)
        self._opnorm = 1.0 / self.scale

    def forward(self, x):
        return F.avg_pool2d(self._check(x, self.in_shape, "image").unsqueeze(1), self.scale).squeeze(1)

    def adjoint(self, y):
        s = self.scale
        b, h, w = self._check(y, self.out_shape, "low-resolution image").shape
        up = (y / (s * s)).view(b, h, 1, w, 1).expand(b, h, s, w, s)
        return up.reshape(b, h * s, w * s)


def _cubic(x: torch.Tensor, a: float = -0.5) -> torch.Tensor:
    """Keys' cubic convolution kernel with ``a = -0.5`` (MATLAB ``imresize``'s bicubic)."""
    ax = x.abs()
    ax2, ax3 = ax**2, ax**3
    near = (a + 2) * ax3 - (a + 3) * ax2 + 1
    far = a * ax3 - 5 * a * ax2 + 8 * a * ax - 4 * a
    return torch.where(ax <= 1, near, torch.where(ax < 2, far, torch.zeros_like(ax)))


def bicubic_taps(scale: int) -> Tuple[torch.Tensor, int]:
    """1D antialiased bicubic filter for downsampling by ``scale`` (``4 * scale`` taps, sums to 1).

    Output pixel ``i`` is centred at input coordinate ``i s + (s - 1)/2``; the kernel is the
    cubic stretched by ``s`` (antialiasing), as MATLAB's ``imresize(x, 1/s)``.
    """
    s = scale
    # Offsets of input pixel centres from the output centre, in input pixels.
    centre = (s - 1) / 2
    offsets = torch.arange(math.floor(centre - 2 * s) + 1, math.ceil(centre + 2 * s), dtype=torch.float64) - centre
    taps = _cubic(offsets / s)
    taps = taps / taps.sum()
    return taps.float(), int(math.floor(centre - 2 * s) + 1)


class BicubicDownsample(_DownsampleBase):
    """Antialiased bicubic downsampling by an integer factor (MATLAB ``imresize`` convention).

    Separable strided correlation with :func:`bicubic_taps`; the image is extended by
    symmetric (half-sample) reflection at the border. The adjoint is exact (the border
    extension's adjoint folds the reflected weights back). Shapes ``(B, H, W) -> (B, H/s, W/s)``.
    """

    name = "bicubic"

    def __init__(self, hr_shape: Sequence[int], scale: int):
        super().__init__(hr_shape, scale)
        taps, first = bicubic_taps(self.scale)
        self.taps = taps
        self.pad_before = -first
        self.pad_after = len(taps) - 1 + first - (self.scale - 1)
        for n in self.in_shape:
            if max(self.pad_before, self.pad_after) > n:
                raise UsageError(f"image side {n} is too small for bicubic downsampling by {self.scale}")

    def _pad(self, x: torch.Tensor, dim: int) -> torch.Tensor:
        before = x.narrow(dim, 0, self.pad_before).flip(dim)
        n = x.shape[dim]
        after = x.narrow(dim, n - self.pad_after, self.pad_after).flip(dim)
        return torch.cat([before, x, after], dim=dim)

    def _pad_adjoint(self, y: torch.Tensor, dim: int, n: int) -> torch.Tensor:
        b, a = self.pad_before, self.pad_after
        core = y.narrow(dim, b, n).clone()
        before = y.narrow(dim, 0, b).flip(dim)
        after = y.narrow(dim, b + n, a).flip(dim)
        idx = [slice(None)] * y.dim()
        idx[dim] = slice(0, b)
        core[tuple(idx)] += before
        idx[dim] = slice(n - a, n)
        core[tuple(idx)] += after
        return core

    def _filter(self, x: torch.Tensor, dim: int) -> torch.Tensor:
        taps = self.taps.to(x.device, x.dtype)
        x = self._pad(x, dim)
        if dim == -2:
            return F.conv2d(x.unsqueeze(1), taps.view(1, 1, -1, 1), stride=(self.scale, 1)).squeeze(1)
        return F.conv2d(x.unsqueeze(1), taps.view(1, 1, 1, -1), stride=(1, self.scale)).squeeze(1)

    def _filter_adjoint(self, y: torch.Tensor, dim: int, n: int) -> torch.Tensor:
        taps = self.taps.to(y.device, y.dtype)
        padded = n + self.pad_before + self.pad_after
        if dim == -2:
            out = F.conv_transpose2d(y.unsqueeze(1), taps.view(1, 1, -1, 1), stride=(self.scale, 1))
            extra = padded - out.shape[-2]
            out = F.pad(out, (0, 0, 0, extra)).squeeze(1)
        else:
            out = F.conv_transpose2d(y.unsqueeze(1), taps.view(1, 1, 1, -1), stride=(1, self.scale))
            extra = padded - out.shape[-1]
            out = F.pad(out, (0, extra)).squeeze(1)
        return self._pad_adjoint(out, dim, n)

    def forward(self, x):
        return self._filter(self._filter(self._check(x, self.in_shape, "image"), -2), -1)

    def adjoint(self, y):
        h, w = self.in_shape
        y = self._check(y, self.out_shape, "low-resolution image")
        return self._filter_adjoint(self._filter_adjoint(y, -1, w), -2, h)


def make_sr_operator(hr_shape: Sequence[int], scale: int, kind: str = "average") -> LinearOperator:
    """The SR operator by name: ``"average"`` (paper 001) or ``"bicubic"``."""
    if kind in ("average", "avg", "average_pool"):
        return AveragePool(hr_shape, scale)
    if kind == "bicubic":
        return BicubicDownsample(hr_shape, scale)
    raise UsageError(f"--downsampler must be 'average' or 'bicubic', got {kind!r}")


def upsample(y: torch.Tensor, scale: int, mode: str = "bicubic") -> torch.Tensor:
    """Interpolating upsampling ``(B, h, w) -> (B, s h, s w)`` for initial guesses."""
    if mode == "nearest":
        return y.repeat_interleave(scale, -2).repeat_interleave(scale, -1)
    out = F.interpolate(y.unsqueeze(1), scale_factor=scale, mode=mode, align_corners=False)
    return out.squeeze(1)
