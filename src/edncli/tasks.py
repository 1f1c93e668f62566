"""Task settings shared by training, evaluation and the learned methods: operator and initial guess.

A :class:`TaskSpec` is stored in every direction-network checkpoint (``meta["operator"]``), so
a checkpoint knows the forward model it was trained for, and using it for another is an error.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Optional, Sequence, Tuple

import torch

from .errors import CheckpointError, UsageError
from .operators.base import LinearOperator

TASKS = ("sr", "deblur", "ct")


@dataclass
class TaskSpec:
    """Forward-model settings of a task.

    sr: ``scale``, ``downsampler`` (average | bicubic). deblur: Gaussian ``kernel_sigma`` range
    ``(lo, hi)`` (one σ drawn per training batch), ``kernel_size``, ``boundary``. ct: parallel
    beam with ``angles`` equally spaced over [0, π) and ``detectors = ceil(size * sqrt(2))``;
    ``angle_choices``, when not empty, are the angle counts training draws from (one per batch;
    ``angles``, the first of them, is the count validation uses).
    """

    task: str
    scale: int = 4
    downsampler: str = "average"
    kernel_sigma: Tuple[float, float] = (1.6, 1.6)
    kernel_size: int = 25
    boundary: str = "reflect"
    angles: int = 90
    angle_choices: Tuple[int, ...] = ()
    beam: str = "parallel"
    noise_sigma: Tuple[float, float] = (0.0, 0.02)
    init: str = "classic"  # "classic" (bicubic / data / FBP) or "zero"
    extra: dict = field(default_factory=dict)

    def __post_init__(self):
        if self.init not in ("classic", "zero"):
            raise UsageError(f"--init must be classic or zero, got {self.init!r}")
        if self.task not in TASKS:
            raise UsageError(f"--task must be one of {', '.join(TASKS)}, got {self.task!r}")
        self.kernel_sigma = tuple(self.kernel_sigma)  # type: ignore[assignment]
        self.noise_sigma = tuple(self.noise_sigma)  # type: ignore[assignment]
        self.angle_choices = tuple(int(a) for a in self.angle_choices)
        bad = [a for a in (self.angles, *self.angle_choices) if a < 1]
        if bad:
            raise UsageError(f"--angles must be >= 1, got {bad[0]}")

    def as_dict(self) -> dict:
        return asdict(self)

    def forward_model(self) -> dict:
        """Only the settings that apply to this task's forward model and initial guess (what an
        evaluation states; :meth:`as_dict` also carries the training ranges and other tasks' fields)."""
        d: dict = {"task": self.task}
        if self.task == "sr":
            d.update(scale=self.scale, downsampler=self.downsampler)
        elif self.task == "deblur":
            lo, hi = self.kernel_sigma
            d.update(kernel_sigma=lo if lo == hi else [lo, hi], kernel_size=self.kernel_size, boundary=self.boundary)
        else:
            d.update(angles=self.angles, beam=self.beam, detectors="ceil(size * sqrt(2))")
        d["init"] = self.init
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "TaskSpec":
        return cls(**d)

    def operator(
        self, shape: Sequence[int], kernel_sigma: Optional[float] = None, device="cpu", angles: Optional[int] = None
    ) -> LinearOperator:
        """The forward operator for images of ``shape`` (``(H, W)``); ``kernel_sigma`` (deblur) and
        ``angles`` (ct) override the spec's for one draw of training."""
        h, w = shape[-2:]
        if self.task == "sr":
            from .operators.downsample import make_sr_operator

            return make_sr_operator((h, w), self.scale, self.downsampler)
        if self.task == "deblur":
            from .operators.blur import Blur, gaussian_kernel

            sigma = kernel_sigma if kernel_sigma is not None else self.kernel_sigma[0]
            return Blur((h, w), gaussian_kernel(sigma, self.kernel_size), self.boundary, sigma=sigma).to(device)
        from .operators.tomography import CTGeometry, make_ct_operator

        import math

        import numpy as np

        geom = CTGeometry(
            size=h,
            angles=np.linspace(0, np.pi, angles or self.angles, endpoint=False),
            detectors=int(math.ceil(h * math.sqrt(2))),
            beam="parallel",
        )
        return make_ct_operator(geom, device=str(device))

    def initial(self, op: LinearOperator, f: torch.Tensor) -> torch.Tensor:
        """The initial guess: zero, or (classic) bicubic upsampling (sr), the data (deblur), FBP (ct).

        Energy dissipating networks start from zero by default: every later iterate must have
        lower energy than the start, and a classical guess that already fits the data (bicubic
        upsampling often meets δ) would leave the network no room to move towards the truth.
        """
        if self.init == "zero":
            return torch.zeros((f.shape[0], *op.in_shape), device=f.device, dtype=f.dtype)
        if self.task == "sr":
            from .operators.downsample import upsample

            return upsample(f, self.scale, "bicubic")
        if self.task == "deblur":
            return f.clone()
        fbp = getattr(op, "fbp", None)
        if fbp is not None:
            return fbp(f)
        return op.adjoint(f) / op.sqnorm(device=f.device)

    def outside_training(self, other: "TaskSpec", name: str) -> Optional[str]:
        """Why a problem described by ``other`` lies outside what a checkpoint trained for ``self``
        saw (a warning, not an error: the energy still falls and the δ stop holds, only the quality
        is not what was validated), or ``None``. Deblurring: the Gaussian σ range and the boundary;
        ``other.extra["kernel"] == "file"`` is a kernel read from a file."""
        if self.task != "deblur" or other.task != "deblur":
            return None
        lo, hi = self.kernel_sigma
        seen = f"Gaussian blur σ {lo:g}" + ("" if lo == hi else f"–{hi:g}") + f", {self.boundary} boundary"
        if other.extra.get("kernel") == "file":
            why = "this kernel has no stated Gaussian σ (a kernel file, or Blur(..., sigma=None))"
        elif not lo - 1e-6 <= other.kernel_sigma[0] <= hi + 1e-6:
            why = f"this blur has σ {other.kernel_sigma[0]:g}"
        elif other.boundary != self.boundary:
            why = f"this run uses the {other.boundary} boundary"
        else:
            return None
        return (f"checkpoint {name} was trained on {seen}; {why}: the energy still falls and the δ stop holds, "
                "but the quality is not what was validated")

    def check_compatible(self, other: "TaskSpec", name: str) -> None:
        """A checkpoint trained for ``self`` used on a problem described by ``other``."""
        if self.task != other.task:
            raise CheckpointError(f"checkpoint {name} is for task {self.task!r}, not {other.task!r}")
        if self.task == "sr" and (self.scale != other.scale or self.downsampler != other.downsampler):
            raise CheckpointError(
                f"checkpoint {name} was trained for x{self.scale} {self.downsampler} downsampling, "
                f"not x{other.scale} {other.downsampler}; train one with edn train --task sr --scale {other.scale}"
            )
