"""Data no unknown reaches: the residual floor, the warning after a run that could not meet δ, and
the summary line's reason when a run stops short of δ."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from edncli.cli.reconstruct import _miss_reason
from edncli.operators.blur import Blur, gaussian_kernel
from edncli.operators.downsample import AveragePool, BicubicDownsample
from edncli.solvers.stopping import residual_floor
from edncli.solvers.trace import SampleVerdict, SolveResult

from .test_cli import edn
from .test_ct_cli_errors import _sinogram, ctdir  # noqa: F401  (fixture)


def _ct(size, angles=30, detectors=None):
    from edncli.operators.tomography import CTGeometry, make_ct_operator

    geom = CTGeometry.parallel(size, angles, detectors=detectors)
    return make_ct_operator(geom, backend="matrix")


@pytest.mark.parametrize("op", [AveragePool((16, 16), 4), BicubicDownsample((16, 16), 4),
                                Blur((16, 16), gaussian_kernel(1.6, 5), "reflect"),
                                Blur((16, 16), gaussian_kernel(1.6, 5), "zero")])
def test_operators_that_see_every_measurement_have_no_floor(op):
    f = torch.randn(2, *op.out_shape)
    assert residual_floor(op, f) == ([0.0, 0.0], [0, 0])


def test_a_zero_sum_kernel_is_not_taken_for_dead_measurements():
    kernel = torch.tensor([[0.0, 0.0, 0.0], [1.0, 0.0, -1.0], [0.0, 0.0, 0.0]])  # A 1 = 0, A x != 0
    op = Blur((12, 12), kernel, "circular")
    assert bool((op.forward(torch.ones(1, 12, 12)).abs() < 1e-6).all())
    assert residual_floor(op, torch.randn(1, 12, 12))[1] == [0]


def test_ct_bins_outside_the_grid_are_the_floor_and_bound_every_residual():
    op = _ct(8, detectors=40)  # 8x8 grid: most of the 40 detector bins see no pixel
    dead = (op.forward(torch.ones(1, 8, 8)) == 0)
    assert 0 < int(dead.sum()) < dead.numel()
    f = torch.rand(3, *op.out_shape)
    floors, counts = residual_floor(op, f)
    expect = [float(torch.linalg.vector_norm(fi[dead[0]].double())) for fi in f]
    assert counts == [int(dead.sum())] * 3
    assert floors == pytest.approx(expect, rel=1e-12)


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 2**31 - 1), scale=st.floats(0.0, 10.0))
def test_no_image_gets_below_the_floor(seed, scale):
    op = _ct(8, detectors=40)
    gen = torch.Generator().manual_seed(seed)
    f = torch.rand((1, *op.out_shape), generator=gen)
    u = scale * torch.randn((1, 8, 8), generator=gen)
    floor = residual_floor(op, f)[0][0]
    assert float(torch.linalg.vector_norm((op.forward(u) - f).double())) >= floor * (1 - 1e-6)


def _result(reasons, reached):
    samples = [SampleVerdict(iterations=1, final_energy=1.0, final_discrepancy=1.0, delta=0.5, delta_reached=r,
                             max_energy_increase=0.0, energy_monotone=True, stop_reason=why)
               for why, r in zip(reasons, reached)]
    return SolveResult(u=torch.zeros(len(samples), 2, 2), trace=[], samples=samples, method="gd", elapsed_s=0.0)


def test_the_summary_names_why_a_run_stopped_short():
    assert _miss_reason(_result(["max_iter"], [False])) == "iteration cap"
    assert _miss_reason(_result(["precision_limit"], [False])) == "float32 precision limit"
    assert _miss_reason(_result(["delta", "grad_tol", "grad_tol", "max_iter"], [True, False, False, False])) == \
        "gradient tolerance, iteration cap"


def test_ct_with_too_small_a_grid_says_why_delta_was_missed(ctdir, monkeypatch, capsys):  # noqa: F811
    _sinogram(monkeypatch, capsys)  # 48x48 phantom, 68 detectors
    code, _, err = edn(monkeypatch, capsys, "ct", "--sinogram", "sino.h5", "--size", "8", "--delta", "1", "--method", "gd",
                       "--max-iter", "5", "-o", "x.tif", "--report", "x.json")
    assert code == 3, err
    warning = [line for line in err.splitlines() if "cannot be reached" in line]
    assert len(warning) == 1 and warning[0].startswith("edn: warning: sino.h5: δ = 1 cannot be reached")
    report = json.loads(Path("x.json").read_text())
    assert report["residual_floor"]["norm"][0] > 1 and report["residual_floor"]["measurements"] > 0
    assert report["final_discrepancy"] >= report["residual_floor"]["norm"][0] * (1 - 1e-6)
    assert "δ NOT reached (iteration cap)" in err and "Traceback" not in err
    # at the default size the grid sees the whole object: no warning, δ met
    code, _, err = edn(monkeypatch, capsys, "ct", "--sinogram", "sino.h5", "--delta", "auto", "-o", "y.tif", "--method", "cg")
    assert code == 0, err
    assert "cannot be reached" not in err
