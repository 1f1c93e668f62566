"""Algorithm 1: energy monotone on every run, the δ stop reached, stopping semantics per method."""

from __future__ import annotations

import math

import pytest
import torch

from edncli.directions import ConeBallMap, HalfSpaceProjection
from edncli.energies import DataFidelity, HuberTV
from edncli.operators.blur import Blur, gaussian_kernel
from edncli.operators.downsample import AveragePool, BicubicDownsample, upsample
from edncli.solvers.descent import LineSearch, StopRule, descend
from edncli.solvers.methods import MethodOptions, Problem, solve
from edncli.solvers.stopping import DeltaChoice, choose_delta, estimate_noise_sigma


def _smooth_image(n=32, seed=0):
    gen = torch.Generator().manual_seed(seed)
    x = torch.rand(1, 1, n // 4, n // 4, generator=gen)
    return torch.nn.functional.interpolate(x, size=(n, n), mode="bicubic", align_corners=False).clamp(0, 1)[:, 0]


def _deblur_problem(sigma=0.01, n=32, seed=0):
    x = _smooth_image(n, seed)
    op = Blur((n, n), gaussian_kernel(1.6, 9), "reflect")
    gen = torch.Generator().manual_seed(seed + 1)
    f = op(x) + sigma * torch.randn(x.shape, generator=gen)
    return x, op, f


def _monotone(result):
    energies = [r.energy for r in result.trace]
    return all(b <= a for a, b in zip(energies, energies[1:]))


@pytest.mark.parametrize("method", ["gd", "tv"])
def test_discrepancy_stop_is_reached_and_energy_monotone(method):
    x, op, f = _deblur_problem()
    delta = 1.05 * 0.01 * math.sqrt(f[0].numel())
    problem = Problem(op, f, torch.zeros_like(f), DeltaChoice(delta, "given"), reference=x)
    result = solve(problem, method, MethodOptions(max_iter=500))
    assert result.delta_reached is True
    assert result.final_discrepancy <= delta
    assert result.energy_monotone and _monotone(result)
    assert result.max_energy_increase <= 0


def test_gd_stops_at_the_first_iterate_meeting_delta():
    x, op, f = _deblur_problem()
    delta = 1.05 * 0.01 * math.sqrt(f[0].numel())
    result = solve(Problem(op, f, torch.zeros_like(f), DeltaChoice(delta, "given")), "gd", MethodOptions(max_iter=500))
    discs = [r.discrepancy for r in result.trace]
    assert discs[-1] <= delta
    assert all(d > delta for d in discs[:-1])


def test_unreachable_delta_reports_not_reached():
    x, op, f = _deblur_problem()
    result = solve(Problem(op, f, torch.zeros_like(f), DeltaChoice(1e-6, "given")), "gd", MethodOptions(max_iter=5))
    assert result.delta_reached is False
    assert result.iterations == 5
    assert result.samples[0].stop_reason == "max_iter"


def test_min_iter_is_honoured_before_the_delta_test():
    # Bicubic init already meets δ for average pooling: learned methods must still take min_iter steps.
    x = _smooth_image(32)
    op = AveragePool((32, 32), 4)
    f = op(x)
    u0 = upsample(f, 4, "nearest")
    energy = DataFidelity(op, f)
    res = descend(energy, u0, lambda u, g, k: -g + 0.01 * torch.randn_like(g), stop=StopRule(delta=1.0, min_iter=7, max_iter=20))
    assert res.trace[0].discrepancy <= 1.0
    assert res.iterations == 7


@pytest.mark.parametrize("layer", [HalfSpaceProjection(0.01), ConeBallMap(0.5, 50.0)])
def test_any_projected_direction_gives_monotone_energy(layer):
    # Random "network" outputs through a descent-set layer: Algorithm 1's promise must hold.
    x, op, f = _deblur_problem()
    energy = DataFidelity(op, f) + 0.01 * HuberTV(0.05)
    gen = torch.Generator().manual_seed(5)

    def direction(u, g, k):
        z = 10 * torch.randn(u.shape, generator=gen)
        return layer(z, -g)

    res = descend(energy, torch.zeros_like(f), direction, stop=StopRule(max_iter=30))
    assert res.energy_monotone and _monotone(res)
    assert res.trace[-1].energy < res.trace[0].energy
    assert res.samples[0].fallback_steps == 0


def test_non_descent_directions_fall_back_to_the_gradient():
    x, op, f = _deblur_problem()
    energy = DataFidelity(op, f)
    res = descend(energy, torch.zeros_like(f), lambda u, g, k: g, stop=StopRule(max_iter=5))  # ascent direction
    assert res.samples[0].fallback_steps == 5
    assert _monotone(res) and res.trace[-1].energy < res.trace[0].energy


def test_batch_samples_stop_independently():
    x, op, f = _deblur_problem()
    f2 = torch.cat([f, f])
    delta = 1.05 * 0.01 * math.sqrt(f[0].numel())
    u0 = torch.stack([torch.zeros_like(f[0]), x[0]])  # the second starts at the truth: done at 0
    res = solve(Problem(op, f2, u0, DeltaChoice(delta, "given")), "gd", MethodOptions(max_iter=500))
    assert res.samples[1].iterations == 0
    assert res.samples[0].iterations > 0
    assert torch.equal(res.u[1], x[0])


def test_tv_alpha_by_discrepancy_principle_is_the_largest_meeting_delta():
    x, op, f = _deblur_problem()
    delta = 1.05 * 0.01 * math.sqrt(f[0].numel())
    problem = Problem(op, f, f.clone(), DeltaChoice(delta, "given"))
    res = solve(problem, "tv", MethodOptions(max_iter=400))
    alpha = res.extra["alpha"][0]
    assert res.extra["alpha_rule"] == "discrepancy" and res.delta_reached
    bigger = solve(problem, "tv", MethodOptions(max_iter=400, alpha=alpha * 2))
    assert bigger.final_discrepancy > delta


def test_line_search_settings_validated():
    with pytest.raises(ValueError):
        LineSearch(c=0.7)
    with pytest.raises(ValueError):
        LineSearch(rho=1.0)
    with pytest.raises(ValueError):
        StopRule(delta=0.0)


def test_noise_estimate_and_delta_rules():
    gen = torch.Generator().manual_seed(0)
    noise = 0.05 * torch.randn(128, 128, generator=gen)
    assert estimate_noise_sigma((_smooth_image(128)[0] + noise).numpy()) == pytest.approx(0.05, rel=0.15)
    d = choose_delta(None, 0.02, 1.1, 100)
    assert d.delta == pytest.approx(1.1 * 0.02 * 10)
    assert choose_delta("0.5", None, 1.0, 100).rule == "given"
    assert choose_delta(None, None, 1.0, 100) is None
    from edncli.errors import UsageError

    for bad in ("-1", "0", "nan", "abc"):
        with pytest.raises(UsageError):
            choose_delta(bad, None, 1.0, 100)


def _exact_energy(op, f, u):
    """``1/2||A u - f||^2`` from a fresh ``A u``, accumulated in float64."""
    return 0.5 * float(((op(u) - f).double() ** 2).sum())


@pytest.mark.parametrize("method", ["gd", "edn-like"])
def test_trace_energy_is_the_exact_energy_of_each_iterate(method):
    # The solver takes E(u_new) from the line's closed form between exact refreshes; check that
    # against a fresh evaluation of every iterate (iterate k = the result of a run capped at k).
    x, op, f = _deblur_problem()
    energy_of = lambda: DataFidelity(op, f)  # noqa: E731
    gen = torch.Generator().manual_seed(3)
    noise = [torch.randn(f.shape, generator=gen) for _ in range(60)]
    layer = ConeBallMap(0.5, 50.0)

    def direction(u, g, k):
        return layer(-g + 0.3 * noise[k], -g)

    kw = {} if method == "gd" else {"direction": direction}
    line = LineSearch(initial="lipschitz") if method == "gd" else LineSearch()
    full = descend(energy_of(), torch.zeros_like(f), stop=StopRule(max_iter=55), line=line, **kw)
    exact = []
    for k in (0, 1, 2, 24, 25, 26, 49, 50, 51, 55):
        uk = descend(energy_of(), torch.zeros_like(f), stop=StopRule(max_iter=k), line=line, **kw).u
        exact.append(_exact_energy(op, f, uk))
        assert full.trace[k].energy == pytest.approx(exact[-1], rel=1e-5)
    assert all(b <= a * (1 + 1e-6) for a, b in zip(exact, exact[1:]))


@pytest.mark.parametrize("batch", [1, 2])
def test_tv_reports_the_iterations_of_its_alpha_search(batch, monkeypatch):
    # `iterations` is the reported solve's; `search_iterations` is every other solve's, per sample,
    # so together they are all the work tv did (counted here by wrapping its solves).
    import edncli.solvers.methods as methods

    counted = [0] * batch
    inner = methods._tv_solve

    def counting(*args, **kwargs):
        res = inner(*args, **kwargs)
        for i, s in enumerate(res.samples):
            counted[i] += s.iterations
        return res

    monkeypatch.setattr(methods, "_tv_solve", counting)
    x, op, f = _deblur_problem()
    f = torch.cat([f, _deblur_problem(seed=3)[2]])[:batch]
    delta = 1.05 * 0.01 * math.sqrt(f[0].numel())
    res = solve(Problem(op, f, f.clone(), DeltaChoice(delta, "given")), "tv", MethodOptions(max_iter=400))
    search = res.extra["search_iterations"]
    assert len(search) == batch and all(n > 0 for n in search)
    assert [s.iterations + n for s, n in zip(res.samples, search)] == counted
    if batch == 2:
        assert [p.extra["search_iterations"] for p in res.split([1, 1])] == [[n] for n in search]


@pytest.mark.parametrize("sigma", [0.005, 0.01, 0.03])
def test_tv_alpha_search_ends_near_delta_in_few_solves(sigma):
    # The Illinois search on log disc(log α) stops when the largest α meeting δ is within
    # TV_DISC_RTOL of δ in discrepancy: far fewer solves than bisection's 8 after bracketing.
    from edncli.solvers.methods import TV_DISC_RTOL

    x, op, f = _deblur_problem(sigma=sigma)
    delta = 1.05 * sigma * math.sqrt(f[0].numel())
    res = solve(Problem(op, f, f.clone(), DeltaChoice(delta, "given")), "tv", MethodOptions(max_iter=400))
    search = res.extra["alpha_search"]
    meeting = [(e["alpha"][0], e["discrepancy"][0]) for e in search if e["discrepancy"][0] <= delta]
    best_alpha, best_disc = max(meeting)
    assert best_disc >= (1 - TV_DISC_RTOL) * delta
    # at most 7 values of α; a capped solve still moving towards δ is continued (once here)
    assert sum(not e["continued"][0] for e in search) <= 7 and len(search) <= 9
    assert res.delta_reached and res.energy_monotone
