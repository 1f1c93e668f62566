"""Exact Euclidean projections onto the Sudoku constraint sets (paper 001, §5.4).

All functions act on ``u`` of shape ``(B, 9, 9, 9)`` = (row, column, digit), float, and
return a tensor of the same shape. Each of C1-C4 is a product of probability simplices over
disjoint fibres of the tensor, so its projection is the sort-based simplex projection applied
fibre by fibre; C5 (the givens) is an affine set whose projection overwrites the given cells.
"""

from __future__ import annotations

from typing import Callable, List

import torch

Projection = Callable[[torch.Tensor], torch.Tensor]


def project_simplex(x: torch.Tensor) -> torch.Tensor:
    """Project every row of ``x`` (shape ``(..., n)``) onto ``{y : y >= 0, sum(y) = 1}``.

    Sort-based algorithm (Held et al. 1974; Duchi et al. 2008): with ``s`` sorted decreasingly,
    ``rho = max{k : s_k - (sum_{j<=k} s_j - 1)/k > 0}``, ``theta = (sum_{j<=rho} s_j - 1)/rho``,
    ``y = max(x - theta, 0)``. Exact up to round-off; ``O(n log n)`` per row. The projection
    commutes with adding a constant to a row, so each row is first shifted to a maximum of 0:
    with entries far above 1 (e.g. 3e7 in float32) ``sum - 1`` would otherwise lose the 1.
    """
    n = x.shape[-1]
    x = x - x.amax(dim=-1, keepdim=True)
    s, _ = torch.sort(x, dim=-1, descending=True)
    css = s.cumsum(dim=-1) - 1.0
    k = torch.arange(1, n + 1, dtype=x.dtype, device=x.device)
    cond = (s - css / k) > 0
    rho = cond.sum(dim=-1, keepdim=True).clamp_min(1)  # cond is true exactly for the first rho entries
    theta = css.gather(-1, rho - 1) / rho.to(x.dtype)
    return (x - theta).clamp_min(0.0)


def project_cells(u: torch.Tensor) -> torch.Tensor:
    """C1: each cell ``(r, c)`` holds a probability vector over digits (simplex along axis 3)."""
    return project_simplex(u)


def project_rows(u: torch.Tensor) -> torch.Tensor:
    """C2: each digit appears once per row: simplex over columns for every ``(r, d)``."""
    return project_simplex(u.transpose(2, 3)).transpose(2, 3)


def project_columns(u: torch.Tensor) -> torch.Tensor:
    """C3: each digit appears once per column: simplex over rows for every ``(c, d)``."""
    return project_simplex(u.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)


def _to_boxes(u: torch.Tensor) -> torch.Tensor:
    """``(B, 9, 9, 9) -> (B, 3, 3, 9, 9)`` = (box row, box column, digit, cell within box)."""
    b = u.shape[0]
    return u.reshape(b, 3, 3, 3, 3, 9).permute(0, 1, 3, 5, 2, 4).reshape(b, 3, 3, 9, 9)


def _from_boxes(v: torch.Tensor) -> torch.Tensor:
    b = v.shape[0]
    return v.reshape(b, 3, 3, 9, 3, 3).permute(0, 1, 4, 2, 5, 3).reshape(b, 9, 9, 9)


def project_boxes(u: torch.Tensor) -> torch.Tensor:
    """C4: each digit appears once per 3x3 box: simplex over the 9 cells of a box, per digit."""
    return _from_boxes(project_simplex(_to_boxes(u)))


def givens_onehot(givens: torch.Tensor) -> torch.Tensor:
    """``(B, 9, 9)`` integer grid, 0 = blank, 1-9 = digit -> ``(B, 9, 9, 9)`` one-hot (blanks 0)."""
    g = givens.long()
    out = torch.zeros(*g.shape, 9, dtype=torch.float32, device=g.device)
    mask = g > 0
    out[mask] = torch.nn.functional.one_hot(g[mask] - 1, 9).float()
    return out


def make_project_givens(givens: torch.Tensor) -> Projection:
    """C5 for the grids ``givens`` (``(B, 9, 9)``, 0 = blank): given cells are their one-hot vector.

    ``C5 = {u : u[r, c, :] = e_{g(r,c)} for every given cell}`` is affine; its projection
    replaces the given cells and leaves the others unchanged.
    """
    onehot = givens_onehot(givens)
    mask = (givens > 0).unsqueeze(-1)

    def project_givens(u: torch.Tensor) -> torch.Tensor:
        return torch.where(mask, onehot.to(u.dtype), u)

    return project_givens


def sudoku_projections(givens: torch.Tensor) -> List[Projection]:
    """The five projections ``[C1 cells, C2 rows, C3 columns, C4 boxes, C5 givens]`` (N = 5)."""
    return [project_cells, project_rows, project_columns, project_boxes, make_project_givens(givens)]
