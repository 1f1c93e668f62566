"""Adjoint tests for every operator, norm estimates, and operator algebra."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from edncli.errors import UsageError
from edncli.operators.base import Identity, adjoint_by_autograd, adjoint_mismatch, power_iteration
from edncli.operators.blur import BOUNDARIES, Blur, check_kernel, fast_fft_len, gaussian_kernel, reflect_pad_adjoint
from edncli.operators.downsample import AveragePool, BicubicDownsample, make_sr_operator

from .conftest import dtype_tol


def _operators():
    ops = []
    for s in (2, 3, 4):
        ops.append(pytest.param(lambda s=s: AveragePool((48, 36), s), id=f"avgpool-x{s}"))
        ops.append(pytest.param(lambda s=s: BicubicDownsample((48, 36), s), id=f"bicubic-x{s}"))
    for b in BOUNDARIES:
        ops.append(pytest.param(lambda b=b: Blur((40, 33), gaussian_kernel(1.6, 25), b), id=f"gauss25-{b}"))
        ops.append(
            pytest.param(lambda b=b: Blur((40, 33), check_kernel(torch.rand(4, 7, generator=torch.Generator().manual_seed(3)).numpy()), b), id=f"file4x7-{b}")
        )
    ops.append(pytest.param(lambda: Identity((8, 9)), id="identity"))
    ops.append(pytest.param(lambda: AveragePool((24, 24), 2) @ Blur((24, 24), gaussian_kernel(1.0), "circular"), id="compose"))
    ops.append(pytest.param(lambda: 3.0 * BicubicDownsample((24, 24), 2), id="scaled"))
    return ops


@pytest.mark.parametrize("make", _operators())
def test_adjoint(make, device):
    op = make().to(device)
    assert adjoint_mismatch(op, batch=3, device=device) < dtype_tol(torch.float32)


@pytest.mark.parametrize("make", _operators())
def test_adjoint_of_transpose(make):
    op = make()
    assert adjoint_mismatch(op.T, batch=2) < dtype_tol(torch.float32)


@pytest.mark.parametrize("make", _operators())
def test_batch_is_independent(make):
    op = make()
    x = torch.randn(3, *op.in_shape, generator=torch.Generator().manual_seed(0))
    together = op(x)
    apart = torch.cat([op(x[i : i + 1]) for i in range(3)])
    assert torch.allclose(together, apart, atol=1e-6)


def test_average_pool_norm_is_exact():
    for s in (2, 3, 4):
        op = AveragePool((24, 24), s)
        assert op.opnorm() == pytest.approx(1 / s)
        assert power_iteration(op, iterations=200) == pytest.approx(1 / s, rel=1e-3)


def test_power_iteration_matches_svd():
    op = Blur((12, 12), gaussian_kernel(1.2, 7), "zero")
    eye = torch.eye(144).view(144, 12, 12)
    mat = op(eye).reshape(144, 144).T
    assert op.opnorm(iterations=500) == pytest.approx(float(torch.linalg.matrix_norm(mat, 2)), rel=1e-3)
    assert op.sqnorm() == pytest.approx(op.opnorm() ** 2)


def test_bicubic_preserves_constants_and_matches_average_on_smooth_ramps():
    op = BicubicDownsample((32, 32), 4)
    assert torch.allclose(op(torch.full((1, 32, 32), 0.7)), torch.full((1, 8, 8), 0.7), atol=1e-6)
    ramp = torch.linspace(0, 1, 32).view(1, 1, 32).expand(1, 32, 32).contiguous()
    inner = slice(2, -2)
    assert torch.allclose(op(ramp)[..., inner, inner], AveragePool((32, 32), 4)(ramp)[..., inner, inner], atol=1e-5)


def test_blur_boundaries_agree_inside():
    k = check_kernel(torch.rand(4, 6, generator=torch.Generator().manual_seed(1)).numpy())
    x = torch.rand(1, 40, 52, generator=torch.Generator().manual_seed(2))
    outs = [Blur((40, 52), k, b)(x)[..., 8:-8, 8:-8] for b in BOUNDARIES]
    for o in outs[1:]:
        assert torch.allclose(outs[0], o, atol=1e-5)


@pytest.mark.parametrize("scale", [0, 1, 2.5, -3, True])
def test_bad_scale(scale):
    with pytest.raises(UsageError, match="--scale"):
        make_sr_operator((32, 32), scale)


def test_indivisible_size_is_a_clear_error():
    with pytest.raises(UsageError, match="not divisible"):
        AveragePool((30, 32), 4)


@pytest.mark.parametrize("kernel", [[1.0, 2.0], [[0.0, 0.0], [0.0, 0.0]], [[1.0, float("nan")]], [[1.0, -2.0]]])
def test_bad_kernels(kernel):
    with pytest.raises(UsageError):
        check_kernel(kernel)


@settings(max_examples=40, deadline=None)
@given(h=st.integers(2, 12), w=st.integers(2, 12), data=st.data())
def test_reflect_pad_adjoint_matches_autograd(h, w, data):
    # reflect padding needs each pad < the size along its axis
    cols, rows = st.integers(0, w - 1), st.integers(0, h - 1)
    pads = (data.draw(cols), data.draw(cols), data.draw(rows), data.draw(rows))
    left, right, top, bottom = pads
    x = torch.randn(2, h, w, dtype=torch.float64)
    p = torch.randn(2, h + top + bottom, w + left + right, dtype=torch.float64)
    pad = lambda v: F.pad(v.unsqueeze(1), pads, mode="reflect").squeeze(1)  # noqa: E731
    expected = adjoint_by_autograd(pad, x, p)
    assert torch.allclose(reflect_pad_adjoint(p, pads), expected, atol=1e-12)


@given(n=st.integers(1, 5000))
def test_fast_fft_len_is_the_next_5_smooth_size(n):
    def smooth(m):
        for p in (2, 3, 5):
            while m % p == 0:
                m //= p
        return m == 1

    m = fast_fft_len(n)
    assert m >= n and smooth(m)
    assert not any(smooth(j) for j in range(n, m))
