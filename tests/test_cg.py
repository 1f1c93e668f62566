"""Method ``cg``: CGLS as Algorithm 1 (conjugate directions, exact line minimisation, stop at δ)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from edncli.energies import DataFidelity
from edncli.operators.blur import Blur, gaussian_kernel
from edncli.solvers.descent import ConjugateDirections, LineSearch, StopRule, descend
from edncli.solvers.methods import MethodOptions, Problem, solve
from edncli.solvers.stopping import choose_delta


def _deblur(n=32, sigma=0.01, seed=0):
    gen = torch.Generator().manual_seed(seed)
    x = torch.nn.functional.interpolate(torch.rand(1, 1, n // 4, n // 4, generator=gen), size=(n, n), mode="bicubic")[:, 0]
    op = Blur((n, n), gaussian_kernel(1.6, 9), "reflect")
    f = op(x) + sigma * torch.randn(x.shape, generator=gen)
    return x, op, f


def _cgls_reference(op, f, u0, iterations):
    """Textbook CGLS (Björck, Numerical Methods for Least Squares Problems, Alg. 7.4.1) in float64."""
    A = lambda v: op(v.float()).double()  # noqa: E731
    At = lambda v: op.adjoint(v.float()).double()  # noqa: E731
    u = u0.double().clone()
    r = f.double() - A(u)
    s = At(r)
    p = s.clone()
    gamma = float((s * s).sum())
    out = []
    for _ in range(iterations):
        q = A(p)
        alpha = gamma / float((q * q).sum())
        u = u + alpha * p
        r = r - alpha * q
        s = At(r)
        gamma_new = float((s * s).sum())
        p = s + (gamma_new / gamma) * p
        gamma = gamma_new
        out.append(u.clone())
    return out


@pytest.mark.parametrize("k", [1, 3, 8])
def test_cg_iterates_are_cgls(k):
    x, op, f = _deblur(sigma=0.0)
    u0 = torch.zeros_like(x)
    res = descend(DataFidelity(op, f), u0, ConjugateDirections(), line=LineSearch(initial="exact"), stop=StopRule(max_iter=k))
    ref = _cgls_reference(op, f, u0, k)[-1]
    assert res.iterations == k
    err = float((res.u.double() - ref).norm() / ref.norm())
    assert err < 1e-4, err


def test_cg_reaches_delta_in_fewer_iterations_than_gd_with_exact_steps():
    x, op, f = _deblur()
    delta = choose_delta(None, 0.01, 1.0, f[0].numel(), None)
    runs = {m: solve(Problem(op, f, f.clone(), delta, task="deblur"), m, MethodOptions(max_iter=500)) for m in ("gd", "cg")}
    for m, res in runs.items():
        assert res.delta_reached, m
        assert res.energy_monotone, m
        assert res.final_discrepancy <= delta.delta
    assert runs["cg"].iterations < runs["gd"].iterations / 2
    # the exact minimiser of the quadratic line passes Armijo (c <= 1/2): no step is ever reduced
    assert all(r.backtracks == 0 for r in runs["cg"].trace)


def test_cg_residual_never_above_landweber_after_as_many_steps():
    """CGLS minimises ||Au - f|| over the Krylov space that contains Landweber's iterate."""
    x, op, f = _deblur(sigma=0.0, seed=3)
    u0 = torch.zeros_like(x)
    gd = descend(DataFidelity(op, f), u0, line=LineSearch(initial="lipschitz"), stop=StopRule(max_iter=12))
    cg = descend(DataFidelity(op, f), u0, ConjugateDirections(), line=LineSearch(initial="exact"), stop=StopRule(max_iter=12))
    for a, b in zip(gd.trace[1:], cg.trace[1:]):
        assert b.discrepancy <= a.discrepancy * (1 + 1e-5)


def test_exact_initial_step_on_steepest_descent_is_the_cauchy_step():
    x, op, f = _deblur(seed=1)
    u0 = torch.zeros_like(x)
    res = descend(DataFidelity(op, f), u0, line=LineSearch(initial="exact"), stop=StopRule(max_iter=1))
    g = op.adjoint(op(u0) - f)
    cauchy = float((g * g).sum() / (op(g) ** 2).sum())
    assert res.trace[1].step == pytest.approx(cauchy, rel=1e-5)


def test_conjugate_directions_are_fletcher_reeves_and_restart_from_what_the_solver_used():
    cg = ConjugateDirections()
    g0 = torch.randn(2, 4, 4)
    d0 = cg(torch.zeros_like(g0), g0, 0)
    assert torch.equal(d0, -g0)
    g1 = 0.5 * g0  # beta = 1/4 for both samples
    d1 = cg(torch.zeros_like(g0), g1, 1)
    assert torch.allclose(d1, -0.25 * g0 - g1)
    taken = -g1.clone()
    cg.used(taken)  # the solver restarted both samples at -g1
    d2 = cg(torch.zeros_like(g0), g1, 2, torch.full((2,), float((g1[0] ** 2).sum())))
    assert torch.allclose(d2[0], -2 * g1[0])  # beta = ||g1||^2 / ||g1||^2 = 1 from the given norms


def test_solver_restarts_cg_where_its_direction_is_not_a_descent_direction():
    """A non-descent direction is replaced by -grad (counted), and CG continues from it."""

    class AscentAtStepOne(ConjugateDirections):
        def __init__(self):
            super().__init__()
            self.grad1 = None
            self.taken = []

        def __call__(self, u, grad, k, grad_norm_sq=None):
            d = super().__call__(u, grad, k, grad_norm_sq)
            if k == 1:
                self.grad1 = grad.clone()
                return -d  # an ascent direction
            return d

        def used(self, d):
            self.taken.append(d.clone())
            super().used(d)

    x, op, f = _deblur(seed=2)
    provider = AscentAtStepOne()
    res = descend(DataFidelity(op, f), torch.zeros_like(x), provider, line=LineSearch(initial="exact"), stop=StopRule(max_iter=6))
    assert res.samples[0].fallback_steps == 1 and len(provider.taken) == 1
    assert torch.equal(provider.taken[0], -provider.grad1)
    assert res.energy_monotone and res.iterations == 6


def test_exact_is_a_valid_initial_step_and_others_are_refused():
    LineSearch(initial="exact")
    with pytest.raises(ValueError, match="exact"):
        LineSearch(initial="cauchy")


def _ct_problem(n=64, angles=90, sigma=0.1, seed=0):
    pytest.importorskip("astra")
    from edncli.operators.tomography import CTGeometry, make_ct_operator

    gen = torch.Generator().manual_seed(seed)
    x = torch.nn.functional.interpolate(torch.rand(1, 1, n // 8, n // 8, generator=gen), size=(n, n), mode="bicubic")[:, 0].clamp(0, 1)
    op = make_ct_operator(CTGeometry.parallel(n, angles), backend="matrix")
    f = op(x) + sigma * torch.randn((1, *op.out_shape), generator=gen)
    delta = choose_delta(None, sigma, 1.0, f[0].numel(), None)
    return Problem(op, f, op.fbp(f), delta, task="ct")


def test_edn_with_no_network_steps_is_exactly_its_handover_method():
    problem = _ct_problem()
    for then in ("cg", "gd"):
        edn = solve(problem, "edn", MethodOptions(min_iter=0, learned_steps=0, handover=then, max_iter=300))
        ref = solve(problem, then, MethodOptions(max_iter=300))
        assert edn.iterations == ref.iterations > 0, then
        assert torch.allclose(edn.u, ref.u, rtol=0, atol=1e-5), then


def test_edn_hands_over_to_cg_by_default_and_reaches_delta_sooner():
    problem = _ct_problem(seed=1)
    runs = {then: solve(problem, "edn", MethodOptions(handover=then, max_iter=300)) for then in ("cg", "gd")}
    assert "conjugate gradients" in runs["cg"].extra["after_learned_steps"]
    assert MethodOptions().handover == "cg"
    for then, res in runs.items():
        assert res.delta_reached and res.energy_monotone, then
    assert runs["cg"].iterations < runs["gd"].iterations


def test_cli_ct_default_method_is_cg_and_bad_handover_is_a_usage_error(tmp_path, monkeypatch, capsys):
    pytest.importorskip("astra")
    from .test_cli import edn

    sino = Path(__file__).resolve().parents[1] / "examples" / "phantom_sino.h5"
    code, out, err = edn(monkeypatch, capsys, "ct", "--sinogram", sino, "-o", tmp_path / "s.tif",
                         "--report", tmp_path / "s.json", "--quiet")
    assert code == 0, err
    report = json.loads((tmp_path / "s.json").read_text())
    assert report["method"] == "cg" and report["delta_reached"] and report["energy_monotone"]
    code, out, err = edn(monkeypatch, capsys, "ct", "--sinogram", sino, "-o", tmp_path / "t.tif", "--method", "edn",
                         "--handover", "newton", "--quiet")
    assert code == 2 and "--handover must be gd or cg" in err and "Traceback" not in err
    assert not (tmp_path / "t.tif").exists()
