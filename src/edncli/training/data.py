"""Training data: random patches from folders of images, with flips and rotations."""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional, Sequence

import numpy as np
import torch

from ..errors import InputError, UsageError

IMAGE_EXTS = (".png", ".tif", ".tiff", ".jpg", ".jpeg", ".bmp", ".pgm", ".npy")


def list_images(folder: str | Path, option: str = "--images") -> List[Path]:
    """Image files in ``folder`` (sorted); a clear error naming ``option`` if there are none.

    ``folder`` may name several folders separated by commas (``train400,bsd68``), unless it is
    itself a folder: their images in that order, each folder sorted, each folder checked.
    """
    p = Path(folder)
    if not p.is_dir() and "," in str(folder):
        parts = str(folder).split(",")
        if not all(parts):
            raise UsageError(f"{option} {folder}: an empty folder name between commas")
        return [f for part in parts for f in list_images(part, option)]
    if not p.is_dir():
        raise InputError(f"{option} {folder}: not a folder")
    files = sorted(q for q in p.iterdir() if q.suffix.lower() in IMAGE_EXTS and q.is_file())
    if not files:
        raise InputError(f"{option} {folder}: the folder holds no images ({', '.join(IMAGE_EXTS)})")
    return files


def load_gray_images(files: Sequence[Path], min_size: int = 0) -> List[np.ndarray]:
    """Read images as gray float32 in [0, 1] (colour -> luminance); images smaller than ``min_size`` are an error."""
    from ..io.images import read_image, to_luminance

    out = []
    for f in files:
        arr, _ = read_image(f)
        arr = to_luminance(arr)
        if min(arr.shape) < min_size:
            raise UsageError(f"{f}: image {arr.shape[0]}x{arr.shape[1]} is smaller than the patch size {min_size}")
        out.append(arr)
    return out


class PatchSampler:
    """Random ``size x size`` patches from a list of images, with the 8 flips/rotations.

    ``sample(n)`` returns a float32 tensor ``(n, size, size)``; reproducible from ``seed``.
    """

    def __init__(self, images: Sequence[np.ndarray], size: int, seed: int = 0, augment: bool = True):
        if not images:
            raise InputError("no training images")
        small = [i for i, im in enumerate(images) if min(im.shape) < size]
        if small:
            raise UsageError(f"{len(small)} image(s) are smaller than the patch size {size}; use a smaller --patch-size")
        self.images = list(images)
        self.size = size
        self.augment = augment
        self.rng = np.random.default_rng(seed)

    def sample(self, n: int) -> torch.Tensor:
        out = np.empty((n, self.size, self.size), dtype=np.float32)
        for k in range(n):
            im = self.images[self.rng.integers(len(self.images))]
            i = self.rng.integers(im.shape[0] - self.size + 1)
            j = self.rng.integers(im.shape[1] - self.size + 1)
            patch = im[i : i + self.size, j : j + self.size]
            if self.augment:
                patch = np.rot90(patch, self.rng.integers(4))
                if self.rng.integers(2):
                    patch = patch[:, ::-1]
            out[k] = patch
        return torch.from_numpy(out)


def parse_range(spec: str, name: str) -> tuple[float, float]:
    """``"0.01:0.1"`` -> (0.01, 0.1); ``"0.05"`` -> (0.05, 0.05)."""
    try:
        parts = [float(x) for x in str(spec).split(":")]
    except ValueError:
        raise UsageError(f"{name} must be a number or a range lo:hi, got {spec!r}") from None
    if len(parts) == 1:
        parts = parts * 2
    lo, hi = parts[0], parts[-1]
    if len(parts) != 2 or not (0 <= lo <= hi < float("inf")):  # NaN and inf fail too
        raise UsageError(f"{name} must be lo:hi with 0 <= lo <= hi, finite, got {spec!r}")
    return lo, hi


def draw_sigmas(n: int, lo: float, hi: float, gen: Optional[torch.Generator] = None) -> torch.Tensor:
    """Noise levels uniform in ``[lo, hi]``, shape ``(n,)``."""
    return lo + (hi - lo) * torch.rand(n, generator=gen)
