"""Image quality metrics on [0, 1] images, batched ``(B, H, W)``; batch results are means."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def crop_border(x: torch.Tensor, border: int) -> torch.Tensor:
    """Drop ``border`` pixels on each side of the last two dimensions."""
    if border <= 0:
        return x
    return x[..., border:-border, border:-border]


def psnr_each(u: torch.Tensor, ref: torch.Tensor, border: int = 0, data_range: float = 1.0) -> torch.Tensor:
    """``10 log10(range^2 / MSE)`` in dB of each image of the batch ``(B, H, W)``: ``(B,)`` float64."""
    u, ref = crop_border(u, border), crop_border(ref, border)
    mse = ((u.double() - ref.double()) ** 2).flatten(1).mean(1).clamp_min(1e-20)
    return 10 * torch.log10(data_range**2 / mse)


def psnr(u: torch.Tensor, ref: torch.Tensor, border: int = 0, data_range: float = 1.0) -> float:
    """Mean over the batch of ``10 log10(range^2 / MSE)`` per image, in dB."""
    return float(psnr_each(u, ref, border, data_range).mean())


def _gaussian_window(size: int = 11, sigma: float = 1.5, device=None) -> torch.Tensor:
    r = torch.arange(size, dtype=torch.float64, device=device) - (size - 1) / 2
    g = torch.exp(-(r**2) / (2 * sigma**2))
    g = g / g.sum()
    return (g[:, None] * g[None, :])[None, None]


def ssim_each(u: torch.Tensor, ref: torch.Tensor, border: int = 0, data_range: float = 1.0) -> torch.Tensor:
    """SSIM of each image of the batch ``(B, H, W)``: ``(B,)`` float64 (see :func:`ssim`)."""
    x = crop_border(u, border).double().unsqueeze(1)
    y = crop_border(ref, border).double().unsqueeze(1)
    if min(x.shape[-2:]) < 11:
        return torch.full((x.shape[0],), float("nan"), dtype=torch.float64)
    w = _gaussian_window(device=x.device)
    c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2
    mx, my = F.conv2d(x, w), F.conv2d(y, w)
    sxx = F.conv2d(x * x, w) - mx * mx
    syy = F.conv2d(y * y, w) - my * my
    sxy = F.conv2d(x * y, w) - mx * my
    s = ((2 * mx * my + c1) * (2 * sxy + c2)) / ((mx * mx + my * my + c1) * (sxx + syy + c2))
    return s.flatten(1).mean(1)


def ssim(u: torch.Tensor, ref: torch.Tensor, border: int = 0, data_range: float = 1.0) -> float:
    """Mean SSIM over the batch (Wang et al. 2004: 11x11 Gaussian window, sigma 1.5, K1 = 0.01, K2 = 0.03).

    Statistics over 'valid' windows only (no padding), as the reference MATLAB code.
    """
    return float(ssim_each(u, ref, border, data_range).mean())


def quality_each(u: torch.Tensor, ref: torch.Tensor, with_ssim: bool):
    """Per-image ``(psnr list, ssim list or None)`` of ``u`` clamped to [0, 1] against ``ref`` (trace rows)."""
    clamped = u.clamp(0, 1)
    return psnr_each(clamped, ref).tolist(), (ssim_each(clamped, ref).tolist() if with_ssim else None)
