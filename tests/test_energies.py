"""Energies: gradients against autograd, the closed-form line restriction, Huber-TV adjointness."""

from __future__ import annotations

import pytest
import torch

from edncli.energies import DataFidelity, HuberTV, image_gradient, image_gradient_adjoint
from edncli.operators.blur import Blur, gaussian_kernel
from edncli.operators.downsample import BicubicDownsample


def _problem():
    gen = torch.Generator().manual_seed(0)
    op = BicubicDownsample((24, 24), 2)
    f = torch.randn(2, 12, 12, generator=gen)
    u = torch.randn(2, 24, 24, generator=gen)
    d = torch.randn(2, 24, 24, generator=gen)
    return op, f, u, d


@pytest.mark.parametrize("make", [lambda op, f: DataFidelity(op, f), lambda op, f: HuberTV(0.05), lambda op, f: DataFidelity(op, f) + 0.3 * HuberTV(0.05)])
def test_gradient_matches_autograd(make):
    op, f, u, _ = _problem()
    energy = make(op, f)
    x = u.clone().requires_grad_(True)
    energy.value(x).sum().backward()
    assert torch.allclose(energy.grad(u), x.grad, atol=1e-4, rtol=1e-4)


def test_closed_form_line_matches_direct_evaluation():
    op, f, u, d = _problem()
    energy = DataFidelity(op, f) + 0.1 * HuberTV(0.05)
    line = energy.along(u, d)
    for t in (0.0, 0.3, 1.7):
        tau = torch.tensor([t, 2 * t])
        direct = energy.value(u + tau.view(-1, 1, 1) * d)
        assert torch.allclose(line(tau), direct, rtol=1e-5)


def test_data_term_line_needs_one_operator_call():
    op, f, u, d = _problem()
    calls = {"n": 0}
    forward = op.forward

    def counting(x):
        calls["n"] += 1
        return forward(x)

    op.forward = counting
    energy = DataFidelity(op, f)
    energy.value(u)
    before = calls["n"]
    line = energy.along(u, d)
    for t in (1.0, 0.5, 0.25, 0.125):
        line(torch.full((2,), t))
    assert calls["n"] - before == 1


def test_moved_residual_update_is_exact():
    op, f, u, d = _problem()
    energy = DataFidelity(op, f)
    energy.along(u, d)
    tau = torch.tensor([0.5, 0.25])
    u_new = u + tau.view(-1, 1, 1) * d
    energy.moved(u_new, u, d, tau)
    assert torch.allclose(energy.residual(u_new), op(u_new) - f, atol=1e-5)


def test_image_gradient_adjoint():
    gen = torch.Generator().manual_seed(1)
    u = torch.randn(3, 9, 11, generator=gen)
    p = torch.randn(3, 2, 9, 11, generator=gen)
    lhs = (image_gradient(u) * p).sum()
    rhs = (u * image_gradient_adjoint(p)).sum()
    assert float(lhs) == pytest.approx(float(rhs), rel=1e-5)


def test_huber_tv_of_constant_is_zero():
    assert float(HuberTV(0.01).value(torch.full((1, 8, 8), 0.3)).abs().max()) == 0.0


def test_lipschitz_bound_of_sum():
    op = Blur((16, 16), gaussian_kernel(1.0), "circular")
    energy = DataFidelity(op, torch.zeros(1, 16, 16)) + 0.5 * HuberTV(0.1)
    assert energy.lipschitz == pytest.approx(op.sqnorm() + 0.5 * 80.0)


@pytest.mark.parametrize("contiguous", [True, False])
def test_host_values_are_the_tensor_values_bit_for_bit(contiguous):
    # value_host / line_host are value / along for a batch of one, as floats: the same arithmetic
    op = BicubicDownsample((16, 16), 4)
    gen = torch.Generator().manual_seed(3)
    f = torch.randn(1, 4, 4, generator=gen)
    u, d = torch.randn(2, 1, 16, 16, generator=gen)
    if not contiguous:
        u, d = u.transpose(1, 2).contiguous().transpose(1, 2), d.transpose(1, 2).contiguous().transpose(1, 2)
        assert not d.is_contiguous()
    a, b = DataFidelity(op, f), DataFidelity(op, f)
    assert a.value_host(u) == b.value(u).item()
    rad, adad = b.along(u, d).quadratic
    assert a.line_host(u, d) == (rad.item(), adad.item())
    assert a.line_host(u, d, rad=1.5)[0] == 1.5
    # both leave the state `moved` reads: the residual becomes r + t A d without a new A u
    v = u + 0.1 * d
    assert a.moved(v, u, d, 0.1) and torch.allclose(a.residual(v), op(v) - f, atol=1e-5)


def test_host_values_defer_to_a_subclass_energy():
    class Scaled(DataFidelity):
        def value(self, u):
            return 2 * super().value(u)

        def along(self, u, d, e0=None, rad=None):
            line = super().along(u, d, e0, rad)
            line.quadratic = tuple(2 * q for q in line.quadratic)
            return line

    op = BicubicDownsample((8, 8), 2)
    f, u, d = torch.randn(1, 4, 4), torch.randn(1, 8, 8), torch.randn(1, 8, 8)
    e = Scaled(op, f)
    assert e.value_host(u) == e.value(u).item()
    assert e.line_host(u, d) == tuple(float(q) for q in e.along(u, d).quadratic)
