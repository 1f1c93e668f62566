"""The discrepancy level δ: given, from a known noise level, or estimated from the data.

``||A u - f|| <= δ`` is the promise. δ is absolute, in the units of the data ``f``, per
sample (image, colour channel or CT slice):
- ``--delta 0.5``: used as given;
- ``--noise-sigma σ --tau τ``: ``δ = τ σ sqrt(m)``, ``m`` the number of measurements per sample;
- ``--delta auto``: the same with σ estimated from each sample of ``f`` (wavelet MAD
  estimator, Donoho & Johnstone); the estimates are stated in the report.

A batch of several images has one δ per sample: :meth:`DeltaChoice.stack` joins the choices
of the images, and every method reads ``δ`` through :func:`per_sample_deltas`.
"""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass
from typing import List, Optional, Sequence, Union

import numpy as np

from ..errors import UsageError


#: δ of a batch: one value for every sample, or one value per sample.
Deltas = Union[float, Sequence[float]]


def _is_scalar(delta: Deltas) -> bool:
    """A Python or numpy number, or a 0-d array or tensor (numpy's float32 is no Python float)."""
    return isinstance(delta, numbers.Real) or getattr(delta, "ndim", None) == 0


def delta_values(delta: Deltas) -> List[float]:
    """The values of ``delta``: one scalar, or a sequence with one value per sample."""
    return [float(delta)] if _is_scalar(delta) else [float(d) for d in delta]  # type: ignore[arg-type, union-attr]


def per_sample_deltas(delta: Optional[Deltas], batch: int) -> Optional[List[float]]:
    """``delta`` as a list of ``batch`` floats (``None`` stays ``None``: no δ stop)."""
    if delta is None:
        return None
    values = delta_values(delta)
    if _is_scalar(delta):
        return values * batch
    if len(values) != batch:
        raise ValueError(f"{len(values)} δ values for a batch of {batch} samples")
    return values


@dataclass
class DeltaChoice:
    """The δ a run aims for, and how it was chosen (for the report).

    ``delta`` is one value for every sample, or a list with one value per sample of the batch
    (from :meth:`stack`).
    """

    delta: Deltas
    rule: str  # "given" | "noise_sigma" | "auto" | "stacked"
    sigma: Optional[Deltas] = None  # one σ, or one per sample (``auto`` on a stack)
    tau: Optional[float] = None
    measurements: Optional[int] = None
    sigma_fallback: Optional[List[int]] = None  # samples whose own σ estimate was 0 (``auto``)

    def as_dict(self) -> dict:
        doc = dict(vars(self))
        if doc["sigma_fallback"] is None:
            del doc["sigma_fallback"]
        return doc

    def chunk(self, lo: int, hi: int) -> "DeltaChoice":
        """The choice for samples ``lo:hi`` of the batch (a torchrun rank's slices)."""
        if _is_scalar(self.delta):
            return self
        sigma = self.sigma if self.sigma is None or _is_scalar(self.sigma) else list(self.sigma)[lo:hi]  # type: ignore[arg-type]
        fallback = [i - lo for i in self.sigma_fallback or [] if lo <= i < hi] or None
        return DeltaChoice(list(self.delta)[lo:hi], self.rule, sigma, self.tau, self.measurements, fallback)

    def per_sample(self, batch: int) -> List[float]:
        """δ of each of the ``batch`` samples."""
        return per_sample_deltas(self.delta, batch)  # type: ignore[return-value]

    @staticmethod
    def stack(choices: Sequence[Optional["DeltaChoice"]], sizes: Sequence[int]) -> Optional["DeltaChoice"]:
        """The δ of problems stacked into one batch (``sizes[j]`` samples of choice ``j``): per sample.

        ``None`` when no problem has a δ; problems with and without one cannot share a batch.
        The stacked choice keeps only the values; each problem's own choice describes its rule.
        """
        if all(c is None for c in choices):
            return None
        if any(c is None for c in choices):
            raise ValueError("problems with and without a δ cannot be stacked into one batch")
        deltas = [d for c, n in zip(choices, sizes) for d in c.per_sample(n)]  # type: ignore[union-attr]
        return DeltaChoice(delta=deltas, rule="stacked")


def estimate_noise_sigma(f: np.ndarray) -> float:
    """Gaussian noise level of 2D data ``f`` (image or sinogram).

    ``σ = median(|HH|) / 0.6745`` with ``HH`` the finest diagonal Haar detail band
    (orthonormal, so white noise keeps its σ there; Donoho & Johnstone 1994).
    """
    arr = np.asarray(f, dtype=np.float64)
    if arr.ndim != 2:
        raise ValueError(f"noise estimation expects 2D data, got shape {arr.shape}")
    h, w = arr.shape[0] // 2 * 2, arr.shape[1] // 2 * 2
    if h < 2 or w < 2:
        raise UsageError(f"--delta auto: data of shape {arr.shape} is too small to estimate the noise from")
    a = arr[:h:2, :w:2]
    b = arr[:h:2, 1:w:2]
    c = arr[1:h:2, :w:2]
    d = arr[1:h:2, 1:w:2]
    hh = (a - b - c + d) / 2.0
    return float(np.median(np.abs(hh)) / 0.6744897501960817)


def choose_delta(
    delta: Optional[str | float],
    noise_sigma: Optional[float],
    tau: Optional[float],
    measurements: int,
    data_for_estimate: Optional[np.ndarray] = None,
) -> Optional[DeltaChoice]:
    """Resolve the user's δ options into a :class:`DeltaChoice` (None: no δ stop).

    ``tau`` (``None``: 1.0) scales ``σ sqrt(m)``. ``data_for_estimate`` is a stack ``(B, ...)``
    of 2D data; with ``delta="auto"`` the noise level is estimated on each, giving one δ per
    sample when there are several (a CT stack's slices, an image's colour channels).
    """
    tau = 1.0 if tau is None else tau
    if not (tau > 0 and math.isfinite(tau)):
        raise UsageError(f"--tau must be > 0 and finite, got {tau}")
    if noise_sigma is not None and not (noise_sigma > 0 and math.isfinite(noise_sigma)):
        raise UsageError(f"--noise-sigma must be > 0 and finite, got {noise_sigma}")
    if delta is not None and str(delta).lower() != "auto":
        try:
            value = float(delta)
        except ValueError:
            raise UsageError(f"--delta must be a positive number or 'auto', got {delta!r}") from None
        if not (value > 0 and math.isfinite(value)):
            raise UsageError(f"--delta must be > 0, got {delta}")
        if noise_sigma is not None:
            raise UsageError("give either --delta or --noise-sigma, not both")
        return DeltaChoice(delta=value, rule="given")
    if noise_sigma is not None and delta is None:
        return DeltaChoice(
            delta=tau * noise_sigma * math.sqrt(measurements),
            rule="noise_sigma",
            sigma=noise_sigma,
            tau=tau,
            measurements=measurements,
        )
    if delta is not None:  # auto
        if data_for_estimate is None:
            raise UsageError("--delta auto needs the measured data to estimate the noise from")
        data = np.asarray(data_for_estimate)
        sigmas = [estimate_noise_sigma(x) for x in data.reshape(-1, *data.shape[-2:])]
        if not max(sigmas) > 0:
            raise UsageError("--delta auto: the estimated noise level is 0 (noise-free data?); pass --delta or --noise-sigma")
        scale = tau * math.sqrt(measurements)
        if len(sigmas) == 1:
            return DeltaChoice(delta=scale * sigmas[0], rule="auto", sigma=sigmas[0], tau=tau, measurements=measurements)
        # One σ per sample (slice or colour channel): noise after a log transform or a detector's
        # gain differs from slice to slice, and one δ for all would be loose for some, out of
        # reach for others. A sample whose estimate is 0 (a noise-free, e.g. zero-padded, slice)
        # takes the median of the others' and is named in ``sigma_fallback``.
        positive = [s for s in sigmas if s > 0]
        fallback = [i for i, s in enumerate(sigmas) if not s > 0]
        used = [s if s > 0 else float(np.median(positive)) for s in sigmas]
        return DeltaChoice(
            delta=[scale * s for s in used], rule="auto", sigma=used, tau=tau, measurements=measurements,
            sigma_fallback=fallback or None,
        )
    return None


def residual_floor(op, f) -> "tuple[List[float], List[int]]":
    """Per sample, ``||f||`` over the measurements no unknown reaches, and how many there are.

    A measurement ``i`` whose row of ``A`` is zero (a CT detector bin outside the shadow of the
    reconstruction grid, e.g. with too small a ``--size`` or a wrong ``--center``) is
    ``(A u)_i = 0`` for every ``u``, so ``||A u - f|| >= ||f_i||`` over those ``i``: when that
    exceeds δ, δ cannot be reached. A row counts as zero when ``A 1`` and ``A x`` (``x`` positive,
    random) are both exactly 0 there: true of every zero row, and of a non-zero row only by
    accident of measure zero (a zero-sum kernel has ``A 1 = 0`` but not ``A x = 0``). ``op`` is
    a :class:`~edncli.operators.base.LinearOperator`, ``f`` its data ``(B, *op.out_shape)``;
    returns ``([floor_b], [count_b])``.
    """
    import torch

    ones = torch.ones((1, *op.in_shape), device=f.device)
    gen = torch.Generator(device="cpu").manual_seed(0)
    x = (0.5 + torch.rand((1, *op.in_shape), generator=gen)).to(f.device)
    dead = (op.forward(ones) == 0) & (op.forward(x) == 0)  # (1, *out_shape)
    if not bool(dead.any()):
        return [0.0] * f.shape[0], [0] * f.shape[0]
    outside = torch.where(dead, f.float(), torch.zeros((), device=f.device))
    floors = torch.linalg.vector_norm(outside.flatten(1), dim=1, dtype=torch.float64)
    return [float(v) for v in floors], [int(dead.sum())] * f.shape[0]
