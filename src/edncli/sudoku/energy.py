"""The convex feasibility energy (paper 001, eq. 25) and its Sudoku instance."""

from __future__ import annotations

from typing import List, Optional, Sequence

import torch

from ..energies import Energy
from .sets import Projection, givens_onehot, sudoku_projections


class FeasibilityEnergy(Energy):
    """``E(u) = 1/(2N) sum_i ||u - Pi_i(u)||^2`` with gradient ``1/N sum_i (u - Pi_i(u))`` (eq. 25).

    The gradient is 1-Lipschitz, so a unit step ``u - grad E(u) = 1/N sum_i Pi_i(u)`` is the
    averaged-projections method. Values have shape ``(B,)``; the projections of the last ``u``
    are cached (by identity), so ``value`` and ``grad`` at one point cost one set of projections.

    Parameters
    ----------
    projections: the ``N`` maps ``(B, ...) -> (B, ...)`` onto closed convex sets.
    """

    name = "feasibility"
    lipschitz = 1.0

    def __init__(self, projections: Sequence[Projection]):
        if not projections:
            raise ValueError("a feasibility energy needs at least one set")
        self.projections = list(projections)
        self._u: Optional[torch.Tensor] = None
        self._res: List[torch.Tensor] = []

    @property
    def n_sets(self) -> int:
        return len(self.projections)

    def residuals(self, u: torch.Tensor) -> List[torch.Tensor]:
        """``[u - Pi_i(u)]`` for every set, each shaped like ``u``."""
        if self._u is not u:
            self._res = [u - p(u) for p in self.projections]
            self._u = u
        return self._res

    def distances_sq(self, u: torch.Tensor) -> torch.Tensor:
        """``dist(u, C_i)^2`` per sample and set, shape ``(B, N)``."""
        return torch.stack([r.flatten(1).pow(2).sum(1) for r in self.residuals(u)], dim=1)

    def value(self, u: torch.Tensor) -> torch.Tensor:
        return self.distances_sq(u).sum(1) / (2 * self.n_sets)

    def grad(self, u: torch.Tensor) -> torch.Tensor:
        return sum(self.residuals(u)) / self.n_sets  # type: ignore[return-value]

    def describe(self) -> dict:
        return {"name": self.name, "sets": self.n_sets}


class SudokuEnergy(FeasibilityEnergy):
    """Eq. 25 with the five Sudoku sets (N = 5) for a batch of puzzles.

    Parameters
    ----------
    givens: ``(B, 9, 9)`` integer grids, 0 = blank, 1-9 = given digit.
    """

    name = "sudoku_feasibility"

    def __init__(self, givens: torch.Tensor):
        self.givens = givens.long()
        super().__init__(sudoku_projections(self.givens))

    def initial_point(self) -> torch.Tensor:
        """``u0``: uniform ``1/9`` in blank cells, the one-hot digit in given cells, ``(B, 9, 9, 9)``."""
        u = torch.full((*self.givens.shape, 9), 1.0 / 9.0, device=self.givens.device)
        return self.projections[4](u)

    def givens_onehot(self) -> torch.Tensor:
        return givens_onehot(self.givens)
