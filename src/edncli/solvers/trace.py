"""Per-iteration records and the result object every solver returns (the report's core)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional

import torch

#: Relative round-off allowed before an energy increase counts as a broken promise.
MONOTONE_RTOL = 1e-5


@dataclass
class IterationRecord:
    """One row of the trace; batch quantities are aggregated over the samples of the batch.

    ``energy`` is the sum of the per-sample energies, ``discrepancy`` the Euclidean norm of
    the whole residual ``||A u - f||`` over the batch, ``grad_norm`` likewise; ``step`` is the
    mean accepted step size ``tau`` over the samples that moved, ``backtracks`` the largest
    number of step reductions any sample needed; ``time_s`` is wall time since the start.
    """

    iter: int
    energy: float
    discrepancy: Optional[float]
    grad_norm: float
    step: float
    backtracks: int
    time_s: float
    active: int
    psnr: Optional[float] = None
    ssim: Optional[float] = None

    def as_dict(self) -> Dict[str, Any]:
        d = {
            "iter": self.iter,
            "energy": self.energy,
            "discrepancy": self.discrepancy,
            "grad_norm": self.grad_norm,
            "step": self.step,
            "backtracks": self.backtracks,
            "time_s": self.time_s,
            "active": self.active,
        }
        if self.psnr is not None:
            d["psnr"] = self.psnr
        if self.ssim is not None:
            d["ssim"] = self.ssim
        return d


@dataclass
class SampleVerdict:
    """How one sample of the batch ended."""

    iterations: int
    final_energy: float
    final_discrepancy: Optional[float]
    delta: Optional[float]
    delta_reached: Optional[bool]
    max_energy_increase: float
    energy_monotone: bool
    stop_reason: str
    fallback_steps: int = 0

    def as_dict(self) -> Dict[str, Any]:
        return dict(vars(self))


@dataclass
class SolveResult:
    """What a solver returns: the iterate, the trace and per-sample verdicts."""

    u: torch.Tensor
    trace: List[IterationRecord]
    samples: List[SampleVerdict]
    method: str
    elapsed_s: float
    extra: Dict[str, Any] = field(default_factory=dict)

    @property
    def iterations(self) -> int:
        return max((s.iterations for s in self.samples), default=0)

    @property
    def delta_reached(self) -> Optional[bool]:
        flags = [s.delta_reached for s in self.samples]
        if any(f is None for f in flags):
            return None
        return all(flags)

    @property
    def max_energy_increase(self) -> float:
        return max((s.max_energy_increase for s in self.samples), default=0.0)

    @property
    def energy_monotone(self) -> bool:
        """True when no sample's energy rose beyond round-off (``MONOTONE_RTOL`` relative)."""
        return all(s.energy_monotone for s in self.samples)

    @property
    def final_discrepancy(self) -> Optional[float]:
        return self.trace[-1].discrepancy if self.trace else None
