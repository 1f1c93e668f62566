"""Gradient-driven denoisers: D = x - ∇g exactly, DnICNN convex, checkpoints by task."""

from __future__ import annotations

import pytest
from pathlib import Path
import torch

from edncli.errors import CheckpointError, UsageError
from edncli.io.checkpoints import save_checkpoint
from edncli.networks.potentials import (
    ARCHS,
    ICNN,
    DnDICNN,
    DnICNN,
    GraDnCNN,
    build_denoiser,
    default_arch,
    load_denoiser,
)


def _scramble(model: torch.nn.Module, seed: int, scale: float = 0.5) -> torch.nn.Module:
    """Random parameters of any sign and size: convexity must hold for all of them."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(scale * torch.randn(p.shape, generator=gen, dtype=p.dtype))
    return model


@pytest.mark.parametrize("seed", range(4))
def test_dnicnn_potential_is_convex_midpoint(seed):
    """g((a+b)/2) <= (g(a)+g(b))/2 on many seeded random pairs, for random (scrambled) weights."""
    model = _scramble(DnICNN(depth=4, width=6).double(), seed)
    gen = torch.Generator().manual_seed(100 + seed)
    a = torch.randn(64, 12, 12, generator=gen, dtype=torch.float64)
    b = torch.rand(64, 12, 12, generator=gen, dtype=torch.float64) * 3 - 1
    with torch.no_grad():
        mid = model.potential(0.5 * (a + b))
        avg = 0.5 * (model.potential(a) + model.potential(b))
    tol = 1e-10 * (avg.abs() + 1)
    assert bool((mid <= avg + tol).all()), float((mid - avg).max())


def test_dndicnn_parts_are_convex_and_difference_is_not_forced_convex():
    model = _scramble(DnDICNN(depth=3, width=4).double(), 7)
    gen = torch.Generator().manual_seed(3)
    a, b = (torch.randn(32, 10, 10, generator=gen, dtype=torch.float64) for _ in range(2))
    with torch.no_grad():
        for part in (model.convex, model.concave):
            assert isinstance(part, ICNN)
            assert bool((part(0.5 * (a + b)) <= 0.5 * (part(a) + part(b)) + 1e-9).all())
        assert torch.allclose(model.potential(a), model.convex(a) - model.concave(a))


@pytest.mark.parametrize("cls", [GraDnCNN, DnICNN, DnDICNN])
def test_denoiser_is_x_minus_gradient_of_potential(cls):
    """D(x) = x - ∇g(x): the directional derivative of g matches <x - D(x), v> (central differences)."""
    torch.manual_seed(0)
    model = cls(3, 4).double().eval()
    gen = torch.Generator().manual_seed(1)
    x = torch.rand(2, 9, 9, generator=gen, dtype=torch.float64)
    v = torch.randn(2, 9, 9, generator=gen, dtype=torch.float64)
    d = model.denoise(x)
    assert d.shape == x.shape and model.potential(x).shape == (2,)
    h = 1e-5
    with torch.no_grad():
        fd = (model.potential(x + h * v) - model.potential(x - h * v)) / (2 * h)
    analytic = ((x - d) * v).flatten(1).sum(1)
    assert torch.allclose(fd, analytic, rtol=1e-6, atol=1e-8)
    g, grad = model.potential_and_grad(x)
    assert torch.allclose(grad, x - d) and torch.allclose(g, model.potential(x))


def test_training_mode_keeps_graph_for_double_backprop():
    model = GraDnCNN(3, 4).train()
    y = torch.rand(2, 8, 8)
    loss = (model(y) - y).pow(2).mean()
    loss.backward()
    assert all(p.grad is not None for p in model.parameters())


@pytest.mark.parametrize("name", ARCHS)
def test_checkpoint_roundtrip(tmp_path, name):
    arch = default_arch(name, depth=3, width=4)
    model = build_denoiser(arch)
    path = tmp_path / f"{name}.safetensors"
    save_checkpoint(path, model.state_dict(), {"task": "denoiser", "arch": arch})
    loaded, meta = load_denoiser(str(path))
    x = torch.rand(1, 8, 8)
    assert torch.allclose(loaded.denoise(x), model.eval().denoise(x), atol=1e-6)
    assert meta["sha256"] and meta["name"] == name and not loaded.training


def test_direction_checkpoint_is_not_a_denoiser(tmp_path):
    path = tmp_path / "dir.safetensors"
    save_checkpoint(path, {"w": torch.zeros(1)}, {"task": "edn-sr", "arch": {"kind": "direction"}})
    with pytest.raises(CheckpointError, match="denoiser"):
        load_denoiser(str(path))


def test_denoiser_checkpoint_for_another_task_is_refused(tmp_path):
    from edncli.io.checkpoints import load_checkpoint

    arch = default_arch("gradncnn", 3, 4)
    path = tmp_path / "g.safetensors"
    save_checkpoint(path, build_denoiser(arch).state_dict(), {"task": "denoiser", "arch": arch})
    with pytest.raises(CheckpointError, match="denoiser"):
        load_checkpoint(path, expect_task="edn-sr")


def test_unknown_arch_is_a_usage_error():
    with pytest.raises(UsageError, match="--arch"):
        default_arch("unet")


@pytest.mark.parametrize("name", ["gradncnn", "dnicnn", "dndicnn", "dncnn"])
def test_shipped_weights_load_and_are_small(name):
    path = Path(__file__).resolve().parents[1] / "weights" / f"{name}.safetensors"
    assert path.is_file(), f"{path} is not shipped"
    assert path.stat().st_size < 10 * 2**20
    model, meta = load_denoiser(name)
    assert meta["task"] == "denoiser" and meta["arch"]["name"] == name
    assert model.denoise(torch.rand(1, 16, 16)).shape == (1, 16, 16)
