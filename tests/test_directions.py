"""Property tests: the descent-set layers land in their sets for any input (paper 001 eq. 21, 22)."""

from __future__ import annotations

import numpy as np
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from edncli.directions import ConeBallMap, HalfSpaceProjection, map_cone_ball, project_halfspace

floats = st.floats(min_value=-1e3, max_value=1e3, allow_nan=False, width=32)
pairs = st.integers(min_value=1, max_value=4).flatmap(
    lambda b: st.tuples(arrays(np.float32, (b, 3, 5), elements=floats), arrays(np.float32, (b, 3, 5), elements=floats))
)


def _dot(a, b):
    return (a.double() * b.double()).flatten(1).sum(1)


def _norm(a):
    return a.double().flatten(1).norm(dim=1)


@settings(max_examples=200, deadline=None)
@given(pairs, st.floats(min_value=1e-3, max_value=10.0))
def test_halfspace_lands_in_set(zg, zeta):
    z, g = (torch.from_numpy(a) for a in zg)
    d = project_halfspace(z, g, zeta)
    gn = _norm(g)
    ok = gn > 1e-6
    lhs = _dot(d, g)
    # <d, g> >= zeta ||g|| for every sample with a gradient
    tol = 1e-5 * (zeta + _norm(z)[ok]) * gn[ok] + 1e-6  # float32 round-off
    assert torch.all(lhs[ok] >= zeta * gn[ok] - tol)


@settings(max_examples=200, deadline=None)
@given(pairs, st.floats(min_value=1e-3, max_value=10.0))
def test_halfspace_is_identity_inside_and_idempotent(zg, zeta):
    z, g = (torch.from_numpy(a) for a in zg)
    gn = _norm(g)
    inside = _dot(z, g) >= zeta * gn + 1e-3 * (1 + _norm(z) * gn)
    d = project_halfspace(z, g, zeta)
    assert torch.allclose(d[inside], z[inside])
    # Idempotent where the layer is a projection: ||g|| above the eps that guards the division.
    proj = gn > 1e-5
    assert torch.allclose(project_halfspace(d, g, zeta)[proj], d[proj], atol=1e-3, rtol=1e-4)


@settings(max_examples=200, deadline=None)
@given(pairs, st.floats(min_value=0.01, max_value=5.0), st.floats(min_value=1.0, max_value=100.0))
def test_cone_ball_lands_in_set(zg, zeta1, ratio):
    zeta2 = zeta1 * ratio
    z, g = (torch.from_numpy(a) for a in zg)
    d = map_cone_ball(z, g, zeta1, zeta2)
    gn = _norm(g)
    ok = gn > 1e-3
    rel = 1e-4
    # float32 round-off: z - eta g cancels when z is nearly parallel to g and much longer (e.g.
    # z = -1026 g), leaving errors of ~eps32 |z| per entry in d (as in the half-space test).
    tol = 1e-5 * _norm(z)[ok] * gn[ok]
    assert torch.all(_dot(d, g)[ok] >= zeta1 * gn[ok] ** 2 * (1 - rel) - tol)
    assert torch.all(_norm(d)[ok] <= zeta2 * gn[ok] * (1 + rel) + 1e-5 * _norm(z)[ok])
    assert torch.isfinite(d).all()


def test_layers_are_finite_at_zero_gradient():
    z = torch.randn(2, 4, 4)
    g = torch.zeros(2, 4, 4)
    assert torch.isfinite(HalfSpaceProjection(0.1)(z, g)).all()
    assert torch.isfinite(ConeBallMap(1.0, 10.0)(z, g)).all()


def test_cone_ball_keeps_points_already_inside():
    g = torch.randn(3, 8)
    z = 2.0 * g + 0.1 * torch.randn(3, 8)
    assert torch.allclose(map_cone_ball(z, g, 1.0, 100.0), z, atol=1e-5)


def test_layers_are_differentiable():
    z = torch.randn(2, 5, requires_grad=True)
    g = torch.randn(2, 5)
    (HalfSpaceProjection(0.5)(z, g).sum() + ConeBallMap(0.5, 5.0)(z, g).sum()).backward()
    assert z.grad is not None and torch.isfinite(z.grad).all()
