"""Audit of the solver core: hostile directions, frozen samples, tiny gradients, the round-off guard."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from edncli.directions import ConeBallMap, HalfSpaceProjection, map_cone_ball, project_halfspace
from edncli.energies import DataFidelity
from edncli.operators.blur import Blur, gaussian_kernel
from edncli.solvers.descent import StopRule, descend

N = 16


def _problem(batch: int = 2, scale: float = 1.0, seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    op = Blur((N, N), gaussian_kernel(1.6, 9), "reflect")
    x = torch.rand(batch, N, N, generator=gen)
    f = scale * (op(x) + 0.01 * torch.randn(batch, N, N, generator=gen))
    return x, op, f


def _exact_energy(op, f, u) -> list:
    """``1/2||A u_i - f_i||^2`` per sample from a fresh ``A u``, in float64."""
    return (0.5 * (op(u).double() - f.double()).flatten(1).pow(2).sum(1)).tolist()


def _finite_and_monotone(res) -> bool:
    energies = [r.energy for r in res.trace]
    return all(math.isfinite(e) for e in energies) and all(b <= a for a, b in zip(energies, energies[1:]))


# -- directions that are NaN or Inf ---------------------------------------------------------------


def test_a_stopped_sample_stays_frozen_whatever_direction_it_is_given():
    # Sample 1 meets δ at iteration 0 and stops; a provider (a network) that returns NaN for it
    # must not move it: a zero step along NaN is NaN, which used to overwrite the frozen iterate
    # and its energy while the verdict still said "delta reached".
    x, op, f = _problem()
    u0 = torch.stack([torch.zeros(N, N), x[1]])
    delta = 0.3
    assert math.sqrt(2 * _exact_energy(op, f, u0)[1]) <= delta

    def hostile(u, g, k):
        d = -g.clone()
        d[1] = float("nan")
        return d

    res = descend(DataFidelity(op, f), u0, hostile, stop=StopRule(delta=delta, max_iter=20))
    assert res.samples[1].iterations == 0 and res.samples[1].stop_reason == "delta"
    assert torch.equal(res.u[1], u0[1])
    assert res.samples[1].final_energy == pytest.approx(_exact_energy(op, f, u0)[1], rel=1e-6)
    assert res.samples[1].fallback_steps == 0  # a stopped sample takes no step: nothing to count
    assert torch.isfinite(res.u).all() and _finite_and_monotone(res)


@pytest.mark.parametrize("batch", [1, 2])
def test_an_infinite_direction_falls_back_to_the_gradient(batch):
    # One entry of +-inf along -grad makes <d, -grad> = +inf: it passed the "slope > 0" test, the
    # line search then backtracked on NaN and "stalled", and the zero step 0 * inf put NaN in u.
    _, op, f = _problem(batch)

    def hostile(u, g, k):
        d = -g.clone()
        d[0, 0, 0] = -math.copysign(math.inf, float(g[0, 0, 0]))
        return d

    res = descend(DataFidelity(op, f), torch.zeros_like(f), hostile, stop=StopRule(max_iter=5))
    assert torch.isfinite(res.u).all()
    assert res.samples[0].fallback_steps == 5 and res.samples[0].stop_reason == "max_iter"
    assert _finite_and_monotone(res) and res.trace[-1].energy < res.trace[0].energy
    assert [s.final_energy for s in res.samples] == pytest.approx(_exact_energy(op, f, res.u), rel=1e-5)


class _NaNBeyond(DataFidelity):
    """The data term, except that its value is NaN once an iterate exceeds ``cap`` anywhere (a
    user's energy whose closed-form line disagrees with its value)."""

    def __init__(self, op, f, cap):
        super().__init__(op, f)
        self.cap = cap

    def value(self, u):
        e = super().value(u)
        return torch.where(_rows_max(u) > self.cap, torch.full_like(e, math.nan), e)


def _rows_max(u):
    return u.flatten(1).abs().amax(1)


@pytest.mark.parametrize("batch", [1, 2])  # batch 1: the specialised Landweber loop
def test_round_off_guard_counts_a_nan_energy_as_a_rise(batch):
    # The guard compared ``E(u_new) > E(u)``, which is False for NaN: the NaN iterate was kept,
    # recorded, and the run still reported a monotone energy.
    _, op, f = _problem(batch)
    res = descend(_NaNBeyond(op, f, cap=0.05), torch.zeros_like(f), stop=StopRule(max_iter=10))
    assert all(s.stop_reason == "precision_limit" for s in res.samples)
    assert _finite_and_monotone(res) and all(math.isfinite(s.final_energy) for s in res.samples)
    assert float(_rows_max(res.u).max()) <= 0.05


# -- the descent-set layers for gradients below the paper's eps = 1e-6 -----------------------------

floats = st.floats(min_value=-1e3, max_value=1e3, allow_nan=False, width=32)
pairs = st.integers(min_value=1, max_value=4).flatmap(
    lambda b: st.tuples(arrays(np.float32, (b, 3, 5), elements=floats), arrays(np.float32, (b, 3, 5), elements=floats))
)
#: ||g|| from ~1e-17 to ~1e-4: g's raw entries (up to 1e3) times 10^s.
tiny_scales = st.floats(min_value=-20.0, max_value=-7.0)


def _dot(a, b):
    return (a.double() * b.double()).flatten(1).sum(1)


def _norm(a):
    return a.double().flatten(1).norm(dim=1)


@settings(max_examples=200, deadline=None)
@given(pairs, st.floats(min_value=1e-3, max_value=10.0), tiny_scales)
def test_halfspace_lands_in_its_set_for_tiny_gradients(zg, zeta, s):
    # With ||g|| clamped at 1e-6, n = g / 1e-6 is shorter than a unit vector and the "projection"
    # can return an ascent direction (<d, g> < 0) whenever ||g|| < 1e-6.
    z, g = (torch.from_numpy(a) for a in zg)
    g = g * 10.0**s
    gn = _norm(g)
    ok = gn > 1e-17
    d = project_halfspace(z, g, zeta)
    lhs = _dot(d, g)
    tol = 1e-5 * (zeta + _norm(z)[ok]) * gn[ok]  # float32 round-off, relative to ||g||
    assert torch.all(lhs[ok] >= zeta * gn[ok] - tol)
    assert torch.isfinite(d).all()


@settings(max_examples=200, deadline=None)
@given(pairs, st.floats(min_value=0.01, max_value=5.0), st.floats(min_value=1.0, max_value=100.0), tiny_scales)
def test_cone_ball_lands_in_its_set_for_tiny_gradients(zg, zeta1, ratio, s):
    zeta2 = zeta1 * ratio
    z, g = (torch.from_numpy(a) for a in zg)
    g = g * 10.0**s
    z = z * 10.0**s  # a network output in the units of the gradient
    gn = _norm(g)
    ok = gn > 1e-17
    d = map_cone_ball(z, g, zeta1, zeta2)
    tol = 1e-5 * _norm(z)[ok] * gn[ok]
    assert torch.all(_dot(d, g)[ok] >= zeta1 * gn[ok] ** 2 * (1 - 1e-4) - tol)
    assert torch.all(_norm(d)[ok] <= zeta2 * gn[ok] * (1 + 1e-4) + 1e-5 * _norm(z)[ok])
    assert torch.isfinite(d).all()


def test_layers_keep_the_paper_output_above_eps_and_stay_finite_at_zero():
    gen = torch.Generator().manual_seed(0)
    z, g = torch.randn(3, 40, generator=gen), torch.randn(3, 40, generator=gen)
    g[1] *= 1e-3  # ||g|| ~ 6e-3 > 1e-6: max(||g||, 1e-6) = ||g||, the paper's layer exactly
    gn = g.norm(dim=1, keepdim=True)
    n = g / gn.clamp_min(1e-6)
    assert torch.equal(project_halfspace(z, g, 0.3), z + torch.relu(0.3 - (z * n).sum(1, keepdim=True)) * n)
    eta = (z * g).sum(1, keepdim=True) / gn.clamp_min(1e-6) ** 2
    eta_hat, w = eta.clamp(0.5, 20.0), z - eta * g
    radius = torch.sqrt(20.0**2 - eta_hat**2) * gn
    wn = w.norm(dim=1, keepdim=True)
    paper = eta_hat * g + torch.where(wn > radius, radius / wn, torch.ones_like(wn)) * w
    assert torch.equal(map_cone_ball(z, g, 0.5, 20.0), paper)
    zero = torch.zeros(2, 40)
    assert torch.isfinite(HalfSpaceProjection(0.1)(z[:2], zero)).all()
    assert torch.isfinite(ConeBallMap(1.0, 10.0)(z[:2], zero)).all()


@pytest.mark.parametrize(
    "layer, raw",
    [
        (HalfSpaceProjection(0.1), lambda g: g / g.norm()),  # zeta in image units: a unit step uphill
        (ConeBallMap(0.5, 50.0), lambda g: 3 * g),  # zeta1, zeta2 relative to ||g||: uphill, as long
    ],
    ids=["halfspace", "cone_ball"],
)
def test_layer_directions_are_taken_for_data_in_small_units(layer, raw):
    # Data of ~1e-8 (gradients below 1e-6): an adverse raw output must still come out of the layer
    # as a descent direction, so the solver takes it instead of replacing it by -grad.
    _, op, f = _problem(1, scale=1e-8)
    res = descend(DataFidelity(op, f), torch.zeros_like(f), lambda u, g, k: layer(raw(g), -g), stop=StopRule(max_iter=10))
    assert res.samples[0].fallback_steps == 0
    assert _finite_and_monotone(res) and res.trace[-1].energy < 0.9 * res.trace[0].energy


# -- float64 data (numpy's default dtype) ---------------------------------------------------------


def _direction_net(u, g, k):
    return ConeBallMap(0.5, 50.0)(-g, -g)


@pytest.mark.parametrize("batch", [1, 2])
@pytest.mark.parametrize("kind", ["gd", "cg", "network"])
def test_float64_data_is_solved_in_float32(kind, batch):
    # f read with numpy is float64: the residual and gradient became float64 against float32
    # iterates, so any provider's direction crashed the inner products ("expected both vectors to
    # have same dtype") and gd returned a float64 iterate.
    from edncli.solvers.descent import ConjugateDirections, LineSearch

    _, op, f = _problem(batch)
    kw = {
        "gd": {},
        "cg": {"direction": ConjugateDirections(), "line": LineSearch(initial="exact")},
        "network": {"direction": _direction_net},
    }[kind]
    ref = descend(DataFidelity(op, f), torch.zeros_like(f), stop=StopRule(max_iter=5), **kw)
    kw = {**kw, "direction": ConjugateDirections()} if kind == "cg" else kw
    res = descend(DataFidelity(op, f.double()), torch.zeros_like(f).double(), stop=StopRule(max_iter=5), **kw)
    assert res.u.dtype == torch.float32
    assert torch.equal(res.u, ref.u)


@pytest.mark.parametrize("method", ["edn", "baseline"])
def test_learned_methods_take_float64_data(method):
    from edncli.errors import CheckpointError
    from edncli.operators.downsample import AveragePool, upsample
    from edncli.solvers.methods import MethodOptions, Problem, solve

    gen = torch.Generator().manual_seed(0)
    op = AveragePool((32, 32), 4)
    f = op(torch.rand(1, 32, 32, generator=gen)) + 0.01 * torch.randn(1, 8, 8, generator=gen)
    options = MethodOptions(max_iter=3, min_iter=2)
    try:
        ref = solve(Problem(op, f, upsample(f, 4, "bilinear"), 0.08, task="sr"), method, options)
    except CheckpointError:
        pytest.skip("shipped SR weights not available")
    res = solve(Problem(op, f.double(), upsample(f, 4, "bilinear").double(), 0.08, task="sr"), method, options)
    assert res.u.dtype == torch.float32
    assert torch.equal(res.u, ref.u)


# -- δ given as a numpy or torch scalar -----------------------------------------------------------


@pytest.mark.parametrize("make", [np.float32, np.float64, lambda v: torch.tensor(v), lambda v: np.array(v)])
def test_delta_may_be_any_real_scalar(make):
    # numpy 2 keeps float32 arithmetic in float32 (1.05 * np.float32(σ) is an np.float32), which
    # is not a Python float: the δ stop used to fail with "'numpy.float32' object is not iterable".
    from edncli.solvers.stopping import DeltaChoice

    _, op, f = _problem()
    delta = make(0.3)
    res = descend(DataFidelity(op, f), torch.zeros_like(f), stop=StopRule(delta=delta, max_iter=200))
    assert [s.delta for s in res.samples] == pytest.approx([0.3, 0.3])
    assert all(s.delta_reached for s in res.samples)
    assert DeltaChoice(delta, "given").per_sample(3) == pytest.approx([0.3] * 3)
    with pytest.raises(ValueError, match="delta must be > 0"):
        StopRule(delta=make(0.0))


@pytest.mark.parametrize("method", ["gd", "cg", "tv", "potential"])
def test_a_problem_of_float64_arrays_and_a_numpy_delta_is_solved_by_every_method(method):
    # The library's entry point: arrays from numpy are float64 and 1.05 * np.float32(σ) is an
    # np.float32. tv failed on the dtypes ("Index put requires the source and destination dtypes
    # match") and Problem took an np.float32 δ for a DeltaChoice (AttributeError 'per_sample').
    from edncli.solvers.methods import MethodOptions, Problem, solve

    x, op, f = _problem(1)
    delta = np.float32(0.05 * N)
    options = MethodOptions(max_iter=60)
    try:
        ref = solve(Problem(op, f, f.clone(), float(delta), reference=x), method, options)
        res = solve(Problem(op, f.double(), f.double(), delta, reference=x.double()), method, options)
    except Exception as exc:  # potential needs its shipped denoiser
        if method == "potential" and "weights" in str(exc).lower():
            pytest.skip("shipped denoiser weights not available")
        raise
    assert res.u.dtype == torch.float32
    assert torch.allclose(res.u, ref.u, atol=1e-6)
    assert res.samples[0].delta == pytest.approx(0.05 * N)
    assert res.samples[0].delta_reached


@pytest.mark.parametrize("alpha", [math.inf, math.nan, -1.0, 0.0])
def test_method_options_refuse_an_alpha_that_is_not_positive_and_finite(alpha):
    # The CLI refused `--alpha -1` for edn, but the library's solve(..., "edn", MethodOptions(alpha=-1))
    # minimised E - R, unbounded below: the check belongs to the options every caller builds.
    from edncli.errors import UsageError
    from edncli.solvers.methods import MethodOptions

    with pytest.raises(UsageError, match="--alpha must be > 0 and finite"):
        MethodOptions(alpha=alpha)
