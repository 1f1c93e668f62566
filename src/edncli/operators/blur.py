"""Deblurring forward operator: 2D convolution with a Gaussian or file-given kernel."""

from __future__ import annotations

import math
import warnings
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from ..errors import InputError, UsageError
from .base import LinearOperator

BOUNDARIES = ("circular", "reflect", "zero")


#: Side of a Gaussian blur kernel when a command is given none (the paper's 25x25): edn deblur,
#: simulate deblur, eval deblur and train --task deblur all use it, so one σ means one operator.
DEFAULT_KERNEL_SIZE = 25


def gaussian_kernel(sigma: float, size: int | None = None) -> torch.Tensor:
    """Normalised 2D Gaussian, ``size x size`` (default ``2 ceil(3 sigma) + 1``), sums to 1.

    The commands default to :data:`DEFAULT_KERNEL_SIZE` instead, one size for all of them.
    """
    if not (sigma > 0 and math.isfinite(sigma)):  # inf: a box blur that no sigma describes
        raise UsageError(f"--kernel-sigma must be > 0 and finite, got {sigma}")
    if size is None:
        size = 2 * int(np.ceil(3 * sigma)) + 1
    if size < 1 or size % 2 == 0:
        raise UsageError(f"--kernel-size must be a positive odd integer, got {size}")
    r = torch.arange(size, dtype=torch.float64) - (size - 1) / 2
    g = torch.exp(-(r**2) / (2 * sigma**2))
    k = g[:, None] * g[None, :]
    return (k / k.sum()).float()


def check_kernel(kernel: np.ndarray, source: str = "kernel") -> torch.Tensor:
    """Validate a blur kernel (2D, finite, positive sum) and normalise it to sum 1."""
    k = np.asarray(kernel)
    if k.dtype.kind not in "biuf":
        raise UsageError(f"{source}: a blur kernel must hold numbers, got {k.dtype} values")
    k = k.astype(np.float64)
    if k.size == 0:
        raise UsageError(f"{source}: the kernel is empty")
    while k.ndim > 2 and (k.shape[0] == 1 or k.shape[-1] == 1):  # (1, 1, h, w) or (h, w, 1); keep 1 x N
        k = k[0] if k.shape[0] == 1 else k[..., 0]
    if k.ndim != 2:
        raise UsageError(f"{source}: a blur kernel must be a 2D array, got shape {k.shape}")
    if not np.all(np.isfinite(k)):
        raise UsageError(f"{source}: the kernel holds NaN or Inf values")
    total = k.sum()
    if not total > 0:
        raise UsageError(f"{source}: the kernel must sum to a positive number, got {total:g}")
    return torch.from_numpy(k / total).float()


def read_kernel(path: str | Path, dataset: Optional[str] = None) -> torch.Tensor:
    """Read a kernel from ``.npy``, ``.txt``/``.csv`` (whitespace or comma separated), an image or
    HDF5 (``dataset``, from ``--kernel-dataset``, picks one of several)."""
    from ..errors import not_a_file
    from ..io.images import load_npy, read_image_array

    p = Path(path)
    if not p.is_file():
        raise InputError(f"--kernel {p}: {not_a_file(p)}")
    if dataset is not None and p.suffix.lower() in (".npy", ".txt", ".csv", ".dat"):
        raise UsageError(f"--kernel-dataset {dataset} applies to an HDF5 kernel only, and {p} is not HDF5; drop it")
    try:
        if p.suffix == ".npy":
            arr = load_npy(p, f"--kernel {p}")
        elif p.suffix in (".txt", ".csv", ".dat"):
            text = p.read_text()
            with warnings.catch_warnings():  # an empty file: numpy warns, check_kernel says it in one line
                warnings.simplefilter("ignore", UserWarning)
                arr = np.loadtxt(p, delimiter="," if "," in text else None, ndmin=2)
        else:
            arr = read_image_array(p, dataset, option="--kernel-dataset")
    except UsageError:  # --kernel-dataset on an image (read_image_array's check): as it is
        raise
    except (OSError, ValueError) as exc:
        raise InputError(f"--kernel {p}: cannot read a kernel ({exc})") from None
    if np.asarray(arr).dtype.kind in "fc" and not np.all(np.isfinite(arr)):
        raise InputError(f"--kernel {p}: the kernel holds NaN or Inf values")
    return check_kernel(arr, f"--kernel {p}")


def fast_fft_len(n: int) -> int:
    """Smallest ``m >= n`` whose prime factors are 2, 3 and 5 (sizes FFT libraries handle fastest)."""
    m = max(int(n), 1)
    while True:
        k = m
        for p in (2, 3, 5):
            while k % p == 0:
                k //= p
        if k == 1:
            return m
        m += 1


def reflect_pad_adjoint(p: torch.Tensor, pads: Sequence[int]) -> torch.Tensor:
    """Adjoint of ``F.pad(x, pads, mode="reflect")`` for ``x`` ``(B, H, W)``; ``pads = (left, right, top, bottom)``.

    Reflect padding copies ``x[1 : t + 1]`` (reversed) above the image and ``x[H - 1 - b : H - 1]``
    below it (likewise for columns), so the adjoint adds those padded strips back, flipped, onto
    the rows/columns they came from. ``p``: ``(B, H + top + bottom, W + left + right)``.
    """
    left, right, top, bottom = pads
    h = p.shape[-2] - top - bottom
    x = p[..., top : top + h, :].clone()
    if top:
        x[..., 1 : top + 1, :] += p[..., :top, :].flip(-2)
    if bottom:
        x[..., h - 1 - bottom : h - 1, :] += p[..., top + h :, :].flip(-2)
    w = x.shape[-1] - left - right
    out = x[..., :, left : left + w].clone()
    if left:
        out[..., :, 1 : left + 1] += x[..., :, :left].flip(-1)
    if right:
        out[..., :, w - 1 - right : w - 1] += x[..., :, left + w :].flip(-1)
    return out


class Blur(LinearOperator):
    """``A u = k * u`` (true convolution), same-size output, shapes ``(B, H, W) -> (B, H, W)``.

    Boundary: ``"circular"`` (periodic, via FFT), ``"reflect"`` (symmetric extension, then
    valid convolution) or ``"zero"``. The adjoint is exact for each (correlation with the
    kernel, with the boundary's adjoint). For a kernel ``k >= 0`` of sum 1, ``||A|| <= 1`` with the
    circular and zero boundaries; the reflect extension repeats border pixels, so there ``||A||``
    can exceed 1 by a few per cent on small images (1.025 for 16x16 with a 25x25 kernel).
    ``sigma``: the Gaussian σ the kernel was made with, when it was (stated by :meth:`describe`,
    and checked against a learned method's training range).
    """

    name = "blur"
    returns_new = True

    def __init__(self, shape: Sequence[int], kernel: torch.Tensor, boundary: str = "reflect",
                 sigma: Optional[float] = None):
        if boundary not in BOUNDARIES:
            raise UsageError(f"--boundary must be one of {', '.join(BOUNDARIES)}, got {boundary!r}")
        h, w = shape[-2:]
        kh, kw = kernel.shape
        if boundary == "reflect" and (kh // 2 >= h or kw // 2 >= w):
            raise UsageError(f"kernel {kh}x{kw} is too large for a {h}x{w} image with reflect boundary (its half-width must "
                             "be below the image's side); use a smaller --kernel-size, or --boundary zero")
        if boundary == "circular" and (kh > h or kw > w):  # the kernel must fit on the image's period
            raise UsageError(f"kernel {kh}x{kw} is larger than the {h}x{w} image; circular boundary needs it to fit: use a "
                             "smaller --kernel-size, or --boundary zero")
        super().__init__((h, w), (h, w))
        self.kernel = kernel.float()
        self.boundary = boundary
        self.sigma = None if sigma is None else float(sigma)
        # Kernel centre at index (k - 1) // 2 on each axis: y[i] = sum_m k[m] x[i + c - m].
        ch, cw = (kh - 1) // 2, (kw - 1) // 2
        self.pads = (kw - 1 - cw, cw, kh - 1 - ch, ch)
        # FFT size for 'valid' convolution: the padded size rounded up to a product of 2, 3 and 5
        # (any size at least the padded one gives the same valid part; e.g. 536 = 8 * 67 would be
        # several times slower than 540).
        self._fft_grid = (fast_fft_len(h + kh - 1), fast_fft_len(w + kw - 1))
        self._otf: torch.Tensor | None = None
        self._otf_pad: torch.Tensor | None = None

    def _weight(self, x: torch.Tensor) -> torch.Tensor:
        # conv2d correlates; flipping gives a true convolution.
        return self.kernel.flip(0, 1).to(x.device, x.dtype)[None, None]

    def _otf_for(self, x: torch.Tensor) -> torch.Tensor:
        if self._otf is None or self._otf.device != x.device:
            h, w = self.in_shape
            kh, kw = self.kernel.shape
            psf = torch.zeros(h, w, dtype=torch.float32)
            psf[:kh, :kw] = self.kernel
            psf = torch.roll(psf, shifts=(-((kh - 1) // 2), -((kw - 1) // 2)), dims=(0, 1))
            self._otf = torch.fft.rfft2(psf).to(x.device)
        return self._otf

    #: Kernels with at least this many taps are applied by FFT (same result, exact adjoint).
    FFT_MIN_TAPS = 49

    def _padded_otf(self, x: torch.Tensor) -> torch.Tensor:
        """OTF of the kernel on the FFT grid ``_fft_grid``, for 'valid' FFT convolution."""
        if getattr(self, "_otf_pad", None) is None or self._otf_pad.device != x.device:
            kh, kw = self.kernel.shape
            psf = torch.zeros(*self._fft_grid, dtype=torch.float32)
            psf[:kh, :kw] = self.kernel
            self._otf_pad = torch.fft.rfft2(psf).to(x.device)
        return self._otf_pad

    def _valid(self, xp: torch.Tensor) -> torch.Tensor:
        """'valid' convolution of a padded image, ``(B, H+kh-1, W+kw-1) -> (B, H, W)``."""
        kh, kw = self.kernel.shape
        if self.kernel.numel() >= self.FFT_MIN_TAPS:
            h, w = self.in_shape
            grid = self._fft_grid
            full = torch.fft.irfft2(torch.fft.rfft2(xp, s=grid) * self._padded_otf(xp), s=grid)
            # contiguous: every consumer (inner products, residual updates) reads it as one block
            return full[..., kh - 1 : kh - 1 + h, kw - 1 : kw - 1 + w].contiguous()
        return F.conv2d(xp.unsqueeze(1), self._weight(xp)).squeeze(1)

    def _valid_adjoint(self, y: torch.Tensor) -> torch.Tensor:
        """Adjoint of :meth:`_valid`, ``(B, H, W) -> (B, H+kh-1, W+kw-1)``."""
        kh, kw = self.kernel.shape
        if self.kernel.numel() >= self.FFT_MIN_TAPS:
            h, w = self.in_shape
            grid = self._fft_grid
            emb = F.pad(y, (kw - 1, 0, kh - 1, 0))
            full = torch.fft.irfft2(torch.fft.rfft2(emb, s=grid) * self._padded_otf(y).conj(), s=grid)
            return full[..., : h + kh - 1, : w + kw - 1]
        return F.conv_transpose2d(y.unsqueeze(1), self._weight(y)).squeeze(1)

    def forward(self, x):
        x = self._check(x, self.in_shape, "image")
        if self.boundary == "circular":
            return torch.fft.irfft2(torch.fft.rfft2(x) * self._otf_for(x), s=self.in_shape)
        mode = "reflect" if self.boundary == "reflect" else "constant"
        return self._valid(F.pad(x.unsqueeze(1), self.pads, mode=mode).squeeze(1))

    def adjoint(self, y):
        y = self._check(y, self.out_shape, "blurred image")
        if self.boundary == "circular":
            return torch.fft.irfft2(torch.fft.rfft2(y) * self._otf_for(y).conj(), s=self.in_shape)
        full = self._valid_adjoint(y)
        if self.boundary == "zero":
            l, r, t, b = self.pads
            h, w = self.in_shape
            return full[..., t : t + h, l : l + w].contiguous()
        return reflect_pad_adjoint(full, self.pads)

    def describe(self):
        return {**super().describe(), "kernel_shape": list(self.kernel.shape), "boundary": self.boundary,
                "kernel_sigma": self.sigma}
