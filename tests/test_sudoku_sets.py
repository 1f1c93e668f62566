"""Projections onto the Sudoku sets are projections; the feasibility energy and its gradient."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from edncli.sudoku.energy import FeasibilityEnergy, SudokuEnergy
from edncli.sudoku.puzzles import generate_puzzles
from edncli.sudoku.sets import (
    make_project_givens,
    project_boxes,
    project_cells,
    project_columns,
    project_rows,
    project_simplex,
    sudoku_projections,
)

seeds = st.integers(0, 2**31 - 1)
scales = st.sampled_from([1e-3, 0.1, 1.0, 10.0])
PUZZLE, SOLUTION = (a[0] for a in generate_puzzles(1, (30, 30), seed=3))
GIVENS = torch.tensor(PUZZLE, dtype=torch.long).view(1, 9, 9)


def _rand(seed: int, scale: float, shape=(2, 9, 9, 9)) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(shape, generator=g, dtype=torch.float64) * scale) + 0.1


def _members(seed: int, n: int) -> torch.Tensor:
    """Random points of the product of simplices C1 (Dirichlet per cell), shape (n, 9, 9, 9)."""
    g = torch.Generator().manual_seed(seed)
    e = -torch.log(torch.rand((n, 9, 9, 9), generator=g, dtype=torch.float64))
    return e / e.sum(-1, keepdim=True)


def _in_set(name: str, v: torch.Tensor, tol: float = 1e-9) -> bool:
    if (v < -tol).any():
        return name == "givens" or False
    sums = {
        "cells": v.sum(3),
        "rows": v.sum(2),
        "columns": v.sum(1),
        "boxes": v.reshape(-1, 3, 3, 3, 3, 9).sum((2, 4)),
    }[name]
    return bool(((sums - 1).abs() < tol).all())


# Random members of each set, built from C1 members by permuting axes (the sets are images of
# each other under these permutations), so "closest point" can be tested against them.
def _members_of(name: str, seed: int, n: int) -> torch.Tensor:
    m = _members(seed, n)
    if name == "cells":
        return m
    if name == "rows":
        return m.transpose(2, 3)
    if name == "columns":
        return m.permute(0, 3, 1, 2)
    b = m.reshape(n, 3, 3, 9, 3, 3).permute(0, 1, 4, 2, 5, 3)  # (box r, r, box c, c, digit) from (box, digit, cell)
    return b.reshape(n, 9, 9, 9)


PROJECTIONS = {"cells": project_cells, "rows": project_rows, "columns": project_columns, "boxes": project_boxes}


@settings(max_examples=40, deadline=None)
@given(seed=seeds, scale=scales, n=st.integers(2, 12))
def test_simplex_projection_properties(seed, scale, n):
    x = _rand(seed, scale, (64, n))
    p = project_simplex(x)
    assert (p >= 0).all() and torch.allclose(p.sum(-1), torch.ones(64, dtype=x.dtype), atol=1e-10)
    assert torch.allclose(project_simplex(p), p, atol=1e-12)
    # Variational inequality: <x - P x, y - P x> <= 0 for every y in the simplex (vertices suffice).
    r = x - p
    for k in range(n):
        y = torch.zeros(n, dtype=x.dtype)
        y[k] = 1
        assert ((r * (y - p)).sum(-1) <= 1e-10).all()


@pytest.mark.parametrize("name", list(PROJECTIONS))
@settings(max_examples=25, deadline=None)
@given(seed=seeds, scale=scales)
def test_set_projection_is_projection(name, seed, scale):
    proj = PROJECTIONS[name]
    u = _rand(seed, scale)
    p = proj(u)
    assert _in_set(name, p)
    assert torch.allclose(proj(p), p, atol=1e-12)  # idempotent
    ys = _members_of(name, seed + 1, 16)
    assert all(_in_set(name, y[None]) for y in ys[:2])
    d_proj = (u - p).flatten(1).norm(dim=1)  # (2,)
    d_rand = (u[:, None] - ys[None]).flatten(2).norm(dim=2)  # (2, 16)
    assert (d_proj[:, None] <= d_rand + 1e-10).all()  # closest point among random members


@settings(max_examples=25, deadline=None)
@given(seed=seeds, scale=scales)
def test_givens_projection(seed, scale):
    proj = make_project_givens(GIVENS)
    u = _rand(seed, scale, (1, 9, 9, 9))
    p = proj(u)
    mask = GIVENS[0] > 0
    digits = p[0][mask].argmax(-1) + 1
    assert torch.equal(digits, GIVENS[0][mask])
    assert torch.allclose(p[0][mask].sum(-1), torch.ones(int(mask.sum()), dtype=p.dtype))
    assert torch.equal(p[0][~mask], u[0][~mask])  # untouched elsewhere: the closest point
    assert torch.equal(proj(p), p)


def test_energy_zero_exactly_at_solution_and_positive_elsewhere():
    e = SudokuEnergy(GIVENS)
    sol = torch.nn.functional.one_hot(torch.tensor(SOLUTION, dtype=torch.long).view(1, 9, 9) - 1, 9).float()
    assert float(e.value(sol)) == pytest.approx(0.0, abs=1e-12)
    assert float(e.value(e.initial_point())) > 1e-3


@settings(max_examples=15, deadline=None)
@given(seed=seeds, scale=st.sampled_from([0.1, 1.0]))
def test_energy_gradient_matches_autograd_and_finite_differences(seed, scale):
    e = SudokuEnergy(GIVENS.repeat(2, 1, 1))
    u = _rand(seed, scale)
    g = e.grad(u)
    # Autograd through the projections gives the same (Danskin: d/du 1/2 dist^2 = u - Pi u).
    ua = u.clone().requires_grad_(True)
    FeasibilityEnergy(sudoku_projections(GIVENS.repeat(2, 1, 1))).value(ua).sum().backward()
    assert torch.allclose(ua.grad, g, atol=1e-10)
    v = _rand(seed + 7, 1.0)
    h = 1e-6
    fd = (e.value(u + h * v) - e.value(u - h * v)) / (2 * h)
    assert torch.allclose(fd, (g * v).flatten(1).sum(1), rtol=1e-5, atol=1e-7)


def test_gradient_step_is_averaged_projections():
    e = SudokuEnergy(GIVENS)
    u = _rand(5, 1.0, (1, 9, 9, 9))
    avg = sum(p(u) for p in sudoku_projections(GIVENS)) / 5
    assert torch.allclose(u - e.grad(u), avg, atol=1e-12)
    assert e.lipschitz == 1.0


def test_infeasible_givens_keep_energy_positive():
    bad = PUZZLE.copy()
    first = int(np.flatnonzero(bad == 0)[0])
    r = first // 9
    row_given = [bad[r * 9 + c] for c in range(9) if bad[r * 9 + c]]
    bad[first] = row_given[0]  # a duplicate in the row
    e = SudokuEnergy(torch.tensor(bad, dtype=torch.long).view(1, 9, 9))
    u = e.initial_point()
    for _ in range(300):
        u = u - e.grad(u)
    assert float(e.value(u)) > 1e-3
