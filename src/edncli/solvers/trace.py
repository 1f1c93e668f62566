"""Per-iteration records and the result object every solver returns (the report's core).

A batched result can be split into one result per group of consecutive samples (an image is
the group of its colour channels): :meth:`SolveResult.split` aggregates each group's per-sample
rows (:class:`SampleRows`) exactly as a run of that group alone would.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass, field, replace
from typing import Any, Dict, List, Optional, Sequence

import torch

#: Relative round-off allowed before an energy increase counts as a broken promise.
MONOTONE_RTOL = 1e-5

#: float32's machine epsilon: the relative resolution of a residual computed in float32.
EPS32 = float(torch.finfo(torch.float32).eps)


def residual_resolution(f: Optional[torch.Tensor]) -> List[float]:
    """Per sample, ``eta = 4 eps ||f||``: how far two float32 computations of one residual
    ``A u - f`` (moved in place, and afresh) may lie apart in norm; ``0`` without data."""
    if f is None:
        return []
    return [4 * EPS32 * float(n) for n in f.flatten(1).double().norm(dim=1).tolist()]


def rose_beyond_roundoff(inc: float, e_old: float, eta: float = 0.0) -> bool:
    """Whether an energy change ``inc`` from ``e_old`` is a rise beyond round-off: more than
    ``MONOTONE_RTOL |e_old|``, ``1e-12``, and what recomputing a float32 residual of resolution
    ``eta`` can move ``1/2 ||r||^2`` by (``eta ||r|| + eta^2 / 2``, ``||r|| = sqrt(2 e_old)``).
    NaN counts as a rise."""
    slack = eta * math.sqrt(max(2.0 * e_old, 0.0)) + 0.5 * eta * eta if eta else 0.0
    return not inc <= MONOTONE_RTOL * abs(e_old) + max(1e-12, slack)

#: ``extra`` keys of a result holding one value per sample (sliced by :meth:`SolveResult.split`,
#: concatenated by the sharding merge).
PER_SAMPLE_EXTRA = ("alpha", "final_L", "search_iterations")
#: ``extra`` keys holding a log: a list of dicts whose list values have one entry per sample.
PER_SAMPLE_LOGS = ("alpha_search",)


@dataclass
class SampleRows:
    """The per-sample values behind one :class:`IterationRecord` of a batch (``B`` entries each).

    Kept for batches of more than one sample only (a batch of one is its own aggregate) and
    never written to reports. ``grad_norm_sq`` holds ``||grad E||^2``; ``step[i]`` is ``None``
    when sample ``i`` took no step in this iteration.
    """

    energy: List[float]
    discrepancy: Optional[List[float]]
    grad_norm_sq: List[float]
    step: List[Optional[float]]
    backtracks: List[int]
    active: List[bool]
    psnr: Optional[List[float]] = None
    ssim: Optional[List[float]] = None

    def __getitem__(self, rows: slice) -> "SampleRows":
        return SampleRows(*(None if v is None else v[rows] for v in vars(self).values()))


@dataclass
class IterationRecord:
    """One row of the trace; batch quantities are aggregated over the samples of the batch.

    ``energy`` is the sum of the per-sample energies, ``discrepancy`` the Euclidean norm of
    the whole residual ``||A u - f||`` over the batch, ``grad_norm`` likewise; ``step`` is the
    mean accepted step size ``tau`` over the samples that moved, ``backtracks`` the largest
    number of step reductions any sample needed; ``time_s`` is wall time since the start;
    ``psnr``/``ssim`` are means over the samples. ``rows`` keeps the per-sample values of a
    batch of more than one sample (not written to reports).
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
    rows: Optional[SampleRows] = None

    @classmethod
    def of_samples(
        cls,
        k: int,
        time_s: float,
        energy: Sequence[float],
        discrepancy: Optional[Sequence[float]],
        grad_norm_sq: Sequence[float],
        step: Sequence[Optional[float]],
        backtracks: Sequence[int],
        active: Sequence[bool],
        psnr: Optional[Sequence[float]] = None,
        ssim: Optional[Sequence[float]] = None,
    ) -> "IterationRecord":
        """The record of iteration ``k`` aggregated from per-sample values (``B`` entries each).

        PSNR/SSIM are the means over the samples. For ``B > 1`` the values are kept as
        :attr:`rows` (copied), so the record can be split by groups of samples.
        """
        moved = [s for s in step if s is not None]
        return cls(
            iter=k,
            energy=math.fsum(energy),
            discrepancy=None if discrepancy is None else math.sqrt(math.fsum(v * v for v in discrepancy)),
            grad_norm=math.sqrt(math.fsum(grad_norm_sq)),
            step=sum(moved) / len(moved) if moved else 0.0,
            backtracks=max(backtracks),
            time_s=time_s,
            active=sum(active),
            psnr=None if psnr is None else sum(psnr) / len(psnr),
            ssim=None if ssim is None else sum(ssim) / len(ssim),
            rows=None if len(energy) == 1 else SampleRows(
                *(None if v is None else list(v) for v in (energy, discrepancy, grad_norm_sq, step, backtracks, active, psnr, ssim))
            ),
        )

    @classmethod
    def of_one(
        cls,
        k: int,
        time_s: float,
        energy: float,
        discrepancy: Optional[float],
        grad_norm_sq: float,
        step: Optional[float],
        backtracks: int,
        active: bool,
        psnr: Optional[Sequence[float]] = None,
        ssim: Optional[Sequence[float]] = None,
    ) -> "IterationRecord":
        """:meth:`of_samples` for a batch of one, with the same arithmetic (so the same floats)."""
        return cls(
            iter=k,
            energy=energy + 0.0,
            discrepancy=None if discrepancy is None else math.sqrt(discrepancy * discrepancy),
            grad_norm=math.sqrt(grad_norm_sq),
            step=0.0 if step is None else 0 + step,
            backtracks=backtracks,
            time_s=time_s,
            active=int(active),
            psnr=None if psnr is None else 0 + psnr[0],
            ssim=None if ssim is None else 0 + ssim[0],
        )

    def group(self, lo: int, hi: int) -> "IterationRecord":
        """This record as a run of samples ``[lo, hi)`` alone would have written it."""
        if self.rows is None:
            raise ValueError("this trace keeps no per-sample rows (a batch of one, or a merged trace): it cannot be split")
        r = self.rows[lo:hi]
        return IterationRecord.of_samples(
            self.iter, self.time_s, r.energy, r.discrepancy, r.grad_norm_sq, r.step, r.backtracks, r.active, r.psnr, r.ssim
        )

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
        """True when no sample's energy rose beyond round-off (see :func:`rose_beyond_roundoff`)."""
        return all(s.energy_monotone for s in self.samples)

    @property
    def final_discrepancy(self) -> Optional[float]:
        """``||A u - f||`` the verdict is judged on: a single sample's, or for a batch the worst
        sample's (largest ``||A u_i - f_i|| / δ_i``, or largest value without δ), so that
        ``delta_reached`` is ``final_discrepancy <= delta`` whenever the samples share one δ.
        The trace's ``discrepancy`` stays the norm over the whole batch."""
        discs = [s.final_discrepancy for s in self.samples]
        if len(discs) == 1 and discs[0] is not None:  # the verdict's value (recomputed at a cap), not the trace's
            return discs[0]
        if len(discs) < 2 or any(d is None for d in discs):
            return self.trace[-1].discrepancy if self.trace else None
        deltas = [s.delta for s in self.samples]
        if all(d is not None and d > 0 for d in deltas):
            return max(zip(discs, deltas), key=lambda p: p[0] / p[1])[0]  # type: ignore[operator]
        return max(discs)  # type: ignore[type-var]

    def split(self, sizes: Sequence[int]) -> List["SolveResult"]:
        """One result per group of consecutive samples, ``sizes[j]`` samples in group ``j``.

        Each group's trace holds its records up to the group's own last iteration, aggregated
        from the per-sample rows as a run of the group alone would have; ``u`` ``(B, ...)`` and
        ``samples`` are sliced; ``extra`` is copied with its per-sample entries
        (:data:`PER_SAMPLE_EXTRA`, :data:`PER_SAMPLE_LOGS`) sliced. ``time_s`` and ``elapsed_s``
        stay those of the whole batch.
        """
        batch = len(self.samples)
        if any(n < 1 for n in sizes) or sum(sizes) != batch:
            raise ValueError(f"group sizes {list(sizes)} do not partition a batch of {batch} samples")
        parts, lo = [], 0
        for n in sizes:
            hi = lo + n
            samples = self.samples[lo:hi]
            if n == batch:
                trace = list(self.trace)
            else:
                last = max(s.iterations for s in samples)
                trace = [rec.group(lo, hi) for rec in self.trace if rec.iter <= last]
            extra = copy.deepcopy(self.extra)
            for key in PER_SAMPLE_EXTRA:
                if isinstance(extra.get(key), list) and len(extra[key]) == batch:
                    extra[key] = extra[key][lo:hi]
            for key in PER_SAMPLE_LOGS:
                for entry in extra.get(key) or []:
                    entry.update({k: v[lo:hi] for k, v in entry.items() if isinstance(v, list) and len(v) == batch})
            parts.append(replace(self, u=self.u[lo:hi], trace=trace, samples=[replace(s) for s in samples], extra=extra))
            lo = hi
        return parts
