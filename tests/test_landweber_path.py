"""The specialised loop for gd and cg on the data term (one CPU sample) is the general Algorithm 1, bit for bit.

``descend`` routes ``d = -grad E`` (gd) and fresh conjugate directions with exact steps (cg) of
``1/2||Au - f||^2`` alone, batch of one, CPU, to a shorter loop (``_data_term_single``). Each case
runs both loops and compares the iterates exactly, every trace field but the time, and the
verdict, so the specialisation can never drift from Algorithm 1.
"""

from __future__ import annotations

import dataclasses

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from edncli.energies import DataFidelity
from edncli.operators.base import Identity
from edncli.operators.blur import Blur, gaussian_kernel
from edncli.operators.downsample import AveragePool, BicubicDownsample
from edncli.solvers import descent
from edncli.solvers.descent import ConjugateDirections, LineSearch, StopRule, descend, negative_gradient
from edncli.solvers.trace import IterationRecord


def _image(n: int, seed: int) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    x = torch.rand(1, 1, n // 4, n // 4, generator=gen)
    return torch.nn.functional.interpolate(x, size=(n, n), mode="bicubic", align_corners=False)[:, 0]


def _problem(kind: str, sigma: float = 0.01, seed: int = 0):
    n = 32
    op = {
        "bicubic": lambda: BicubicDownsample((n, n), 4),
        "average": lambda: AveragePool((n, n), 2),
        "blur": lambda: Blur((n, n), gaussian_kernel(1.6, 9), "reflect"),
        "circular": lambda: Blur((n, n), gaussian_kernel(2.0, 25), "circular"),
        "identity": lambda: Identity((n, n)),
        "scaled": lambda: Blur((n, n), gaussian_kernel(1.6, 9), "reflect") * 3.0,
    }[kind]()
    x = _image(n, seed)
    gen = torch.Generator().manual_seed(seed + 1)
    f = op(x) + sigma * torch.randn((1, *op.out_shape), generator=gen)
    return x, op, f


def _both(op, f, u0, direction=lambda: negative_gradient, **kwargs):
    runs = []
    for general in (True, False):
        descent._GENERAL_ONLY = general
        try:
            runs.append(descend(DataFidelity(op, f), u0, direction(), **kwargs))
        finally:
            descent._GENERAL_ONLY = False
    return runs


def _assert_same(general, special):
    assert torch.equal(general.u, special.u)
    assert len(general.trace) == len(special.trace)
    for a, b in zip(general.trace, special.trace):
        assert dataclasses.replace(a, time_s=0.0) == dataclasses.replace(b, time_s=0.0)
    assert general.samples == special.samples


CASES = [
    ("bicubic", dict(line=LineSearch(initial="lipschitz"), stop=StopRule(delta=0.05, max_iter=200))),
    ("bicubic", dict(line=LineSearch(initial="unit"), stop=StopRule(max_iter=30))),
    ("average", dict(line=LineSearch(initial="lipschitz"), stop=StopRule(max_iter=10, grad_tol=1e-6))),
    ("blur", dict(line=LineSearch(initial="lipschitz"), stop=StopRule(delta=0.5, min_iter=7, max_iter=100))),
    ("blur", dict(line=LineSearch(initial="lipschitz", c=0.3, rho=0.3), stop=StopRule(delta=[1e-9], max_iter=60))),
    ("circular", dict(line=LineSearch(initial="unit", max_backtracks=2), stop=StopRule(max_iter=40))),
    ("identity", dict(line=LineSearch(initial="lipschitz"), stop=StopRule(max_iter=5))),
    # ||A|| = 3: the unit step fails Armijo and no reduction is allowed, so the line stalls
    ("scaled", dict(line=LineSearch(initial="unit", max_backtracks=0), stop=StopRule(max_iter=5))),
    # noise-free and run long: ends at float32's limit (the round-off guard or a stalled line)
    ("bicubic", dict(line=LineSearch(initial="lipschitz"), stop=StopRule(max_iter=3000))),
]


@pytest.mark.parametrize("kind, kwargs", CASES)
def test_specialised_loop_matches_the_general_one(kind, kwargs):
    sigma = 0.0 if kwargs["stop"].max_iter >= 3000 else 0.01
    x, op, f = _problem(kind, sigma)
    u0 = torch.zeros_like(x)
    general, special = _both(op, f, u0, **kwargs)
    _assert_same(general, special)
    assert special.samples[0].energy_monotone


def test_specialised_loop_with_reference_and_callback():
    x, op, f = _problem("blur")
    seen = {True: [], False: []}
    runs = []
    for general in (True, False):
        descent._GENERAL_ONLY = general
        try:
            runs.append(
                descend(
                    DataFidelity(op, f), torch.zeros_like(x), line=LineSearch(initial="lipschitz"),
                    stop=StopRule(delta=0.3, max_iter=50), reference=x, record_ssim=True,
                    callback=lambda rec, g=general: seen[g].append(rec.iter),
                )
            )
        finally:
            descent._GENERAL_ONLY = False
    _assert_same(*runs)
    assert runs[1].trace[-1].psnr is not None and runs[1].trace[-1].ssim is not None
    assert seen[True] == seen[False] == list(range(len(runs[1].trace)))


@pytest.mark.parametrize("conjugate", [False, True])
def test_records_built_after_the_loop_are_the_records_a_callback_sees(conjugate):
    # Without a callback (or a reference) the specialised loop builds its records after the loop.
    x, op, f = _problem("blur")
    seen = []
    runs = [
        descend(DataFidelity(op, f), torch.zeros_like(x), ConjugateDirections() if conjugate else negative_gradient,
                line=LineSearch(initial="exact" if conjugate else "lipschitz"), stop=StopRule(delta=0.3, max_iter=50),
                callback=callback)
        for callback in (seen.append, None)
    ]
    _assert_same(*runs)
    assert seen == runs[0].trace and len(seen) == runs[1].iterations + 1
    times = [r.time_s for r in runs[1].trace]
    assert times == sorted(times) and times[0] > 0  # each taken when its iterate was


def test_the_cases_cover_every_way_a_run_ends():
    """The comparison above is only a real check if its cases end in every possible way."""
    reasons = set()
    for kind, kwargs in CASES:
        x, op, f = _problem(kind, 0.0 if kwargs["stop"].max_iter >= 3000 else 0.01)
        reasons.add(descend(DataFidelity(op, f), torch.zeros_like(x), **kwargs).samples[0].stop_reason)
    assert reasons == {"delta", "max_iter", "grad_tol", "precision_limit", "line_search_stalled"}


def test_the_specialised_loop_is_taken_only_where_it_applies(monkeypatch):
    calls = []
    real = descent._data_term_single
    monkeypatch.setattr(descent, "_data_term_single", lambda *a, **k: calls.append(1) or real(*a, **k))
    x, op, f = _problem("blur")
    descend(DataFidelity(op, f), torch.zeros_like(x), stop=StopRule(max_iter=3))
    assert calls == [1]
    descend(DataFidelity(op, f.repeat(2, 1, 1)), torch.zeros(2, 32, 32), stop=StopRule(max_iter=3))  # a batch
    descend(DataFidelity(op, f), torch.zeros_like(x), line=LineSearch(initial="bb"), stop=StopRule(max_iter=3))
    assert calls == [1]
    exact = LineSearch(initial="exact")
    descend(DataFidelity(op, f), torch.zeros_like(x), ConjugateDirections(), line=exact, stop=StopRule(max_iter=3))
    assert calls == [1, 1]
    used = ConjugateDirections()  # a provider with state (e.g. edn's hand-over) keeps the general loop
    used(torch.zeros_like(x), torch.ones_like(x), 0)
    descend(DataFidelity(op, f), torch.zeros_like(x), used, line=exact, stop=StopRule(max_iter=3))
    descend(DataFidelity(op, f.repeat(2, 1, 1)), torch.zeros(2, 32, 32), ConjugateDirections(), line=exact,
            stop=StopRule(max_iter=3))
    assert calls == [1, 1]


def test_general_loop_round_off_guard_restores_the_iterate_in_a_batch():
    """A batch (general loop, whose update reuses the gradient's memory) run to float32's limit:
    each sample ends at the guard or a stalled line, and its final iterate is the one whose
    energy the verdict reports (the undo restored the old iterate, not the rejected one)."""
    x1, op, f1 = _problem("bicubic", sigma=0.0, seed=0)
    x2, _, f2 = _problem("bicubic", sigma=0.0, seed=5)
    f = torch.cat([f1, f2])
    energy = DataFidelity(op, f)
    res = descend(energy, torch.zeros(2, 32, 32), line=LineSearch(initial="lipschitz"), stop=StopRule(max_iter=3000))
    assert {s.stop_reason for s in res.samples} <= {"precision_limit", "line_search_stalled"}
    assert "precision_limit" in {s.stop_reason for s in res.samples}
    exact = DataFidelity(op, f).value(res.u).tolist()
    for s, e in zip(res.samples, exact):
        assert s.energy_monotone
        assert e == pytest.approx(s.final_energy, rel=1e-5, abs=1e-12)


CG_CASES = [
    ("bicubic", dict(stop=StopRule(delta=0.05, max_iter=200))),
    ("blur", dict(stop=StopRule(delta=0.5, min_iter=7, max_iter=100))),
    ("circular", dict(line=LineSearch(initial="exact", c=0.3, rho=0.3), stop=StopRule(delta=[1e-9], max_iter=60))),
    ("average", dict(stop=StopRule(max_iter=10, grad_tol=1e-6))),
    ("identity", dict(stop=StopRule(max_iter=5))),
    ("scaled", dict(line=LineSearch(initial="exact", max_backtracks=0), stop=StopRule(max_iter=40))),
    # noise-free and run long: CG restarts (a direction that is no longer a descent direction)
    # and ends at float32's limit
    ("bicubic", dict(stop=StopRule(max_iter=3000))),
    ("blur", dict(stop=StopRule(max_iter=3000))),
]


def _cg_run(kind, kwargs, general):
    x, op, f = _problem(kind, 0.0 if kwargs["stop"].max_iter >= 3000 else 0.01)
    kwargs = {"line": LineSearch(initial="exact"), **kwargs}
    descent._GENERAL_ONLY = general
    try:
        return descend(DataFidelity(op, f), torch.zeros_like(x), ConjugateDirections(), **kwargs)
    finally:
        descent._GENERAL_ONLY = False


@pytest.mark.parametrize("kind, kwargs", CG_CASES)
def test_specialised_cg_loop_matches_the_general_one(kind, kwargs):
    general, special = _cg_run(kind, kwargs, True), _cg_run(kind, kwargs, False)
    _assert_same(general, special)
    assert special.samples[0].energy_monotone


def test_the_cg_cases_cover_every_way_a_run_ends():
    # (exact steps pass the Armijo test for any c < 1/2, so a CG line never stalls)
    reasons = {_cg_run(kind, kwargs, False).samples[0].stop_reason for kind, kwargs in CG_CASES}
    assert reasons == {"delta", "max_iter", "grad_tol", "precision_limit"}


@pytest.mark.parametrize("kind, at", [("blur", 1), ("blur", 4), ("bicubic", 3)])
def test_a_cg_restart_is_the_same_in_both_loops(monkeypatch, kind, at):
    """A direction that is no longer a descent direction (here: its slope is reported with the
    wrong sign at the ``at``-th step) is replaced by ``-grad E`` and counted, in the specialised
    loop exactly as in the general one. The slope is ``<d, grad E>`` over the image for the blur
    (data as large as the image) and ``<r, A d>`` over the 16x smaller data for SR x4."""
    import edncli.energies as energies

    module = energies if kind == "bicubic" else descent
    calls = {"n": 0}

    def flipping(real):
        def flipped(a, b):
            out = real(a, b)
            if a is not b:  # the slope's inner product: one per step, in both loops
                calls["n"] += 1
                if calls["n"] == at:
                    return -out  # the slope, with the wrong sign
            return out

        return flipped

    # the general loop takes its products as tensors (fast_dot), the specialised one as floats
    for name in ("fast_dot", "fast_dot_host"):
        monkeypatch.setattr(module, name, flipping(getattr(module, name)))
    runs = []
    for general in (True, False):
        calls["n"] = 0
        runs.append(_cg_run(kind, dict(stop=StopRule(delta=0.5 if kind == "blur" else 0.05, max_iter=100)), general))
    _assert_same(*runs)
    assert runs[1].samples[0].fallback_steps == 1
    assert runs[1].samples[0].stop_reason == "delta" and runs[1].samples[0].energy_monotone


finite = st.floats(allow_nan=False, allow_infinity=False, width=64)
nonneg = st.floats(min_value=0.0, allow_nan=False, allow_infinity=False, width=64)


@given(
    k=st.integers(0, 10_000), t=nonneg, e=finite, d=st.none() | nonneg, g=nonneg,
    step=st.none() | nonneg, b=st.integers(0, 60), active=st.booleans(),
    q=st.none() | st.tuples(finite, finite),
)
def test_record_of_one_is_of_samples_for_a_batch_of_one(k, t, e, d, g, step, b, active, q):
    psnr, ssim = (None, None) if q is None else ([q[0]], [q[1]])
    one = IterationRecord.of_one(k, t, e, d, g, step, b, active, psnr, ssim)
    many = IterationRecord.of_samples(k, t, [e], None if d is None else [d], [g], [step], [b], [active], psnr, ssim)
    assert one == many
