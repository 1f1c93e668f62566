"""Random-ellipse phantoms for CT training (in the spirit of the Shepp-Logan phantom)."""

from __future__ import annotations

import numpy as np
import torch


def random_ellipses(n: int, size: int, rng: np.random.Generator, max_ellipses: int = 10) -> torch.Tensor:
    """``n`` phantoms ``(n, size, size)`` in [0, 1]: a body ellipse plus random inner ellipses.

    Intensities add up as in Shepp-Logan (inner ellipses may be negative), then clip to [0, 1].
    """
    yy, xx = np.mgrid[-1 : 1 : size * 1j, -1 : 1 : size * 1j]
    out = np.zeros((n, size, size), dtype=np.float32)
    for k in range(n):
        img = np.zeros((size, size))
        a, b = rng.uniform(0.6, 0.9), rng.uniform(0.6, 0.9)
        th = rng.uniform(0, np.pi)
        img += rng.uniform(0.3, 0.8) * _ellipse(xx, yy, 0, 0, a, b, th)
        for _ in range(rng.integers(2, max_ellipses + 1)):
            cx, cy = rng.uniform(-0.5, 0.5, 2)
            ea, eb = rng.uniform(0.03, 0.35, 2)
            img += rng.uniform(-0.3, 0.5) * _ellipse(xx, yy, cx, cy, ea, eb, rng.uniform(0, np.pi))
        out[k] = np.clip(img, 0, 1)
    return torch.from_numpy(out)


def _ellipse(xx, yy, cx, cy, a, b, theta) -> np.ndarray:
    c, s = np.cos(theta), np.sin(theta)
    x, y = xx - cx, yy - cy
    return ((((c * x + s * y) / a) ** 2 + ((-s * x + c * y) / b) ** 2) <= 1.0).astype(np.float64)
