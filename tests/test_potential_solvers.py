"""Potential descent (paper 000 Alg. 1 and its box variant), projected RED/PnP: reports and guarantees."""

from __future__ import annotations

import json

import pytest
import torch

import edncli.solvers.potential as pot
from edncli.errors import CheckpointError, UsageError
from edncli.io.checkpoints import save_checkpoint
from edncli.networks.potentials import build_denoiser, default_arch
from edncli.operators.blur import Blur, gaussian_kernel
from edncli.operators.downsample import AveragePool, upsample
from edncli.solvers.methods import MethodOptions, Problem, solve
from edncli.solvers.stopping import DeltaChoice

NOISE = 0.01


def _image(n: int = 32, batch: int = 2) -> torch.Tensor:
    """Smooth test images in [0, 1] (a blob and a ramp), ``(batch, n, n)``."""
    r = torch.linspace(-1, 1, n)
    yy, xx = torch.meshgrid(r, r, indexing="ij")
    imgs = [0.2 + 0.6 * torch.exp(-4 * (xx**2 + yy**2)), 0.5 + 0.4 * xx * yy]
    return torch.stack(imgs[:batch] * (batch // 2 + 1))[:batch]


def _problem(task: str, n: int = 24, batch: int = 2, seed: int = 0) -> Problem:
    x = _image(n, batch)
    gen = torch.Generator().manual_seed(seed)
    if task == "deblur":
        op = Blur((n, n), gaussian_kernel(1.6, 9), "reflect")
    else:
        op = AveragePool((n, n), 4)
    clean = op(x)
    f = clean + NOISE * torch.randn(clean.shape, generator=gen)
    u0 = f.clone() if task == "deblur" else upsample(f, 4, "bilinear")
    m = f[0].numel()
    return Problem(op=op, f=f, u0=u0, delta=DeltaChoice(NOISE * m**0.5, "noise_sigma"), reference=x, task=task)


@pytest.fixture
def tiny_weights(tmp_path):
    """Randomly initialised tiny checkpoints: ``{arch name: path}``."""
    torch.manual_seed(0)
    out = {}
    for name in ("gradncnn", "dnicnn", "dndicnn", "dncnn"):
        arch = default_arch(name, depth=3, width=4)
        path = tmp_path / f"tiny-{name}.safetensors"
        save_checkpoint(path, build_denoiser(arch).state_dict(), {"task": "denoiser", "arch": arch})
        out[name] = str(path)
    return out


def _check_report(result, batch: int) -> None:
    assert len(result.samples) == batch and result.trace
    json.dumps([r.as_dict() for r in result.trace])
    json.dumps([s.as_dict() for s in result.samples])
    json.dumps(result.extra)
    assert result.extra["checkpoint"]["sha256"] and result.extra["checkpoint"]["name"]
    assert "preset" in result.extra and "lam" in result.extra


@pytest.mark.parametrize("task", ["deblur", "sr"])
@pytest.mark.parametrize("arch", ["gradncnn", "dnicnn", "dndicnn"])
def test_potential_energy_never_rises_and_delta_stop(task, arch, tiny_weights):
    pb = _problem(task)
    opts = MethodOptions(weights=tiny_weights[arch], min_iter=3, extra={"max_iter": 60})
    r = solve(pb, "potential", opts)
    _check_report(r, 2)
    assert r.energy_monotone and r.max_energy_increase <= 0
    energies = [t.energy for t in r.trace]
    assert all(b <= a for a, b in zip(energies, energies[1:]))
    for s in r.samples:
        assert s.iterations >= 3
        if task == "deblur":  # SR: L0 = 0.25 + λ although ||A||^2 = 1/16: slower, may need more steps
            assert s.stop_reason == "delta" and s.delta_reached
        else:
            assert s.stop_reason in ("delta", "max_iter") and s.delta_reached == (s.stop_reason == "delta")
    assert r.extra["L0"] == pytest.approx(pot.PRESETS[task]["potential"].L0_offset + r.extra["lam"])
    assert r.extra["lam"] == pot.PRESETS[task]["potential"].lam


@pytest.mark.parametrize("task", ["deblur", "sr"])
def test_box_variant_stays_in_unit_range(task, tiny_weights):
    pb = _problem(task)
    pb.u0 = pb.u0 + 0.3  # start partly outside [0, 1]
    r = solve(pb, "potential", MethodOptions(weights=tiny_weights["gradncnn"], min_iter=15, extra={"box": True, "max_iter": 15}))
    assert float(r.u.min()) >= 0 and float(r.u.max()) <= 1
    assert r.energy_monotone and r.max_energy_increase <= 0 and r.extra["box"] is True


@pytest.mark.parametrize("task", ["deblur", "sr"])
def test_potential_with_shipped_gradncnn_is_monotone(task):
    try:
        pot.get_denoiser("gradncnn")
    except CheckpointError:
        pytest.skip("gradncnn weights not shipped")
    r = solve(_problem(task, n=24, batch=1), "potential", MethodOptions(min_iter=10, extra={"max_iter": 30}))
    assert r.extra["checkpoint"]["name"] == "gradncnn"
    assert r.energy_monotone and r.max_energy_increase <= 0
    assert r.trace[-1].psnr > r.trace[0].psnr - 1.0


@pytest.mark.parametrize("method", ["red", "pnp"])
@pytest.mark.parametrize("task", ["deblur", "sr"])
def test_red_pnp_run_and_report_the_data_term(method, task, tiny_weights):
    pb = _problem(task)
    r = solve(pb, method, MethodOptions(weights=tiny_weights["dncnn"], extra={"max_iter": 20}))
    _check_report(r, 2)
    assert 0 < r.iterations <= 20
    assert float(r.u.min()) >= 0 and float(r.u.max()) <= 1  # projected (eqs. 28-29)
    assert "data term" in r.extra["energy"]
    data = 0.5 * (pb.op(r.u) - pb.f).pow(2).flatten(1).sum(1)
    assert r.trace[-1].energy == pytest.approx(float(data.sum()), rel=1e-4)
    assert r.extra["mu"] == pot.PRESETS[task][method].mu


def test_red_pnp_default_to_dncnn_and_potential_to_gradncnn():
    assert pot.DEFAULT_WEIGHTS == {"potential": "gradncnn", "red": "dncnn", "pnp": "dncnn"}


@pytest.mark.parametrize("lam", [0.0, -0.1])
@pytest.mark.parametrize("method", ["potential", "red"])
def test_nonpositive_lambda_is_a_usage_error(method, lam, tiny_weights):
    w = tiny_weights["gradncnn" if method == "potential" else "dncnn"]
    with pytest.raises(UsageError, match="λ"):
        solve(_problem("deblur"), method, MethodOptions(weights=w, extra={"lam": lam}))


def test_nonpositive_step_is_a_usage_error(tiny_weights):
    with pytest.raises(UsageError, match="µ"):
        solve(_problem("deblur"), "pnp", MethodOptions(weights=tiny_weights["dncnn"], extra={"mu": 0}))


def test_plain_denoiser_has_no_potential(tiny_weights):
    with pytest.raises(UsageError, match="no potential"):
        solve(_problem("deblur"), "potential", MethodOptions(weights=tiny_weights["dncnn"]))


def test_direction_checkpoint_refused_as_denoiser(tmp_path):
    path = tmp_path / "edn.safetensors"
    save_checkpoint(path, {"w": torch.zeros(1)}, {"task": "edn-sr", "arch": {"kind": "direction"}})
    with pytest.raises(CheckpointError, match="denoiser"):
        solve(_problem("deblur"), "potential", MethodOptions(weights=str(path)))


def test_paper_presets_follow_table_2():
    d, s = pot.PRESETS["paper-deblur"], pot.PRESETS["paper-sr"]
    assert d is pot.PAPER_PRESETS["deblur"] and s is pot.PAPER_PRESETS["sr"]
    assert (d["potential"].lam, d["red"].lam, d["red"].mu, d["pnp"].mu) == (0.02, 0.05, 1.99, 1.99)
    assert (s["potential"].lam, s["red"].lam, s["red"].mu, s["pnp"].mu) == (0.04, 0.05, 2.99, 1.99)
    assert (d["potential"].max_iter, d["red"].max_iter, d["pnp"].max_iter) == (400, 200, 125)
    assert (s["potential"].max_iter, s["red"].max_iter, s["pnp"].max_iter) == (400, 125, 75)
    assert d["potential"].beta == pytest.approx(2**0.5)
    assert d["potential"].L0_offset == s["potential"].L0_offset == 1.0


def test_tuned_presets_stay_within_the_paper_iteration_counts():
    for task in ("deblur", "sr"):
        for method, p in pot.PRESETS[task].items():
            paper = pot.PAPER_PRESETS[task][method]
            assert p.min_iter <= p.max_iter <= paper.max_iter
            assert p.beta == paper.beta


@pytest.mark.parametrize("preset", ["paper-deblur", "paper-sr"])
def test_paper_preset_is_selectable(preset, tiny_weights):
    pb = _problem("deblur", batch=1)
    r = solve(pb, "potential", MethodOptions(weights=tiny_weights["gradncnn"], extra={"preset": preset, "max_iter": 3}))
    assert r.extra["preset"] == preset
    assert r.extra["lam"] == pot.PRESETS[preset]["potential"].lam
    assert r.extra["L0"] == pytest.approx(1 + r.extra["lam"])


def test_no_delta_runs_to_max_iter(tiny_weights):
    pb = _problem("deblur", batch=1)
    pb.delta = None
    r = solve(pb, "potential", MethodOptions(weights=tiny_weights["dnicnn"], extra={"max_iter": 7}))
    assert r.iterations == 7 and r.samples[0].stop_reason == "max_iter" and r.samples[0].delta_reached is None
