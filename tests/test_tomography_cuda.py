"""The CUDA CT backend on CUDA tensors: astra's cuda3d projector on torch memory (no host copies).

The device tests are marked ``cuda`` and skip unless torch sees a GPU *and* astra has CUDA
(torch is asked first: without a GPU some astra CUDA calls end the process). The geometry test
at the end runs everywhere: it emulates astra's ``par3d`` forward kernel in numpy (ray-driven,
samples on the volume's voxel grid, texture index ``k`` at coordinate ``k + 0.5 - n/2``) and
checks that :func:`parallel3d_vectors` reproduces the 2D operator.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

astra = pytest.importorskip("astra")

from edncli.operators import tomography as tomo  # noqa: E402
from edncli.operators.base import adjoint_mismatch  # noqa: E402
from edncli.operators.tomography import CTGeometry, make_ct_operator, parallel3d_vectors  # noqa: E402

N = 32


def _gpu_ready() -> bool:
    return torch.cuda.is_available() and tomo.cuda_available()  # torch first, then astra


needs_gpu = pytest.mark.skipif(not _gpu_ready(), reason="needs a CUDA GPU seen by torch and astra with CUDA")


def _geometry(shifted: bool, size: int = N, n_angles: int = 30) -> CTGeometry:
    det = math.ceil(size * math.sqrt(2))
    return CTGeometry.parallel(size, n_angles, det, center=(det - 1) / 2 + 2.5 if shifted else None)


def _smooth_batch(size: int = N) -> torch.Tensor:
    """Two smooth, asymmetric images (a flip or shift of the geometry would show)."""
    c = (torch.arange(size) - (size - 1) / 2) / (size / 2)
    y, x = torch.meshgrid(-c, c, indexing="ij")
    a = torch.exp(-((x - 0.2) ** 2 + (y - 0.3) ** 2) / 0.1)
    b = 0.5 * torch.exp(-((x + 0.3) ** 2 + (y + 0.1) ** 2) / 0.05)
    return torch.stack([a, a + b])


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.double().cpu() - b.double().cpu()).norm() / b.double().cpu().norm())


@pytest.fixture()
def no_host_copies(monkeypatch):
    """Fail if the operator falls back to the host path (``_host`` copies tensors to numpy)."""

    def refuse(x):
        raise AssertionError(f"host round trip of a {tuple(x.shape)} {x.device} tensor")

    monkeypatch.setattr(tomo, "_host", refuse)


@pytest.mark.cuda
@needs_gpu
@pytest.mark.parametrize("shifted", [False, True])
@pytest.mark.usefixtures("no_host_copies")
def test_adjoint_on_device(shifted):
    # astra's CUDA pair is matched only approximately (ray-driven FP, voxel-driven BP, 9-bit
    # texture interpolation): a numpy emulation of both kernels gives 1e-4 (centred) and
    # 3e-3 (shifted axis) in this metric; a wrong scale or orientation gives ~1e-1.
    op = make_ct_operator(_geometry(shifted), backend="cuda")
    assert adjoint_mismatch(op, batch=3, device="cuda") < 1e-2



@pytest.mark.cuda
@needs_gpu
@pytest.mark.parametrize("shifted", [False, True])
@pytest.mark.usefixtures("no_host_copies")
def test_agrees_with_cpu_operators(shifted, tmp_path):
    g = _geometry(shifted)
    op = make_ct_operator(g, backend="cuda")
    x = _smooth_batch()
    for ref in (make_ct_operator(g, backend="astra-cpu"), make_ct_operator(g, backend="matrix", cache_dir=tmp_path)):
        y_ref = ref(x)
        assert _rel(op(x.cuda()), y_ref) < 1e-2  # same kernel family (Joseph); emulated: 1.3e-3
        # voxel-driven BP vs the exact transpose of the forward: emulated 1.7e-2 on smooth data
        assert _rel(op.adjoint(y_ref.cuda()), ref.adjoint(y_ref)) < 5e-2



@pytest.mark.cuda
@needs_gpu
@pytest.mark.usefixtures("no_host_copies")
def test_outputs_and_gradients_stay_on_device():
    op = make_ct_operator(_geometry(True), backend="cuda")
    x = _smooth_batch().cuda().requires_grad_(True)
    y = op(x)
    assert y.is_cuda and y.device == x.device and y.dtype == torch.float32
    assert op.adjoint(y.detach()).is_cuda
    (y**2).sum().backward()  # the autograd wrapper uses the adjoint, on the device
    assert x.grad is not None and x.grad.is_cuda
    assert _rel(x.grad, 2 * op.adjoint(y.detach())) < 1e-6



@pytest.mark.cuda
@needs_gpu
@pytest.mark.usefixtures("no_host_copies")
def test_batch_equals_slice_by_slice():
    op = make_ct_operator(_geometry(True), backend="cuda")
    gen = torch.Generator().manual_seed(0)
    x = torch.rand(5, N, N, generator=gen).cuda()
    y = torch.rand(5, *op.out_shape, generator=gen).cuda()
    ax, aty = op(x), op.adjoint(y)
    for i in range(5):
        assert _rel(ax[i : i + 1], op(x[i : i + 1])) < 1e-5
        assert _rel(aty[i : i + 1], op.adjoint(y[i : i + 1])) < 1e-5



@pytest.mark.cuda
@needs_gpu
def test_fan_beam_cuda_tensors_use_the_host_path():
    size, det = N, 2 * N
    g = CTGeometry(size, np.linspace(0, 2 * np.pi, 36, endpoint=False), det, beam="fan",
                   source_origin=3.0 * size, origin_detector=2.0 * size)
    op = make_ct_operator(g, backend="cuda")
    x = _smooth_batch().cuda()
    y = op(x)
    assert y.is_cuda
    assert _rel(y, op(x.cpu())) < 1e-6



# ----------------------------------------------------------------------------------------------
# Runs without a GPU: the 3D vectors against a numpy emulation of astra's par3d forward kernel
# ----------------------------------------------------------------------------------------------
def _emulate_par3d_fp(vol: np.ndarray, vec: np.ndarray, n_cols: int) -> np.ndarray:
    """astra's ``par3D_FP`` for a volume ``(z, y, x)`` and ``parallel3d_vec`` rows: for each
    detector pixel, step along the ray's dominant axis one voxel at a time, interpolate
    (multi-)linearly in the other two, and multiply by the ray length per step."""
    from scipy.ndimage import map_coordinates

    nz, ny, nx = vol.shape
    dims = (nx, ny, nz)
    r, d, u, v = vec[:, 0:3], vec[:, 3:6], vec[:, 6:9], vec[:, 9:12]
    corner = d - 0.5 * n_cols * u - 0.5 * nz * v
    out = np.zeros((nz, len(vec), n_cols))
    for a in range(len(vec)):
        ax = int(np.argmax(np.abs(r[a])))
        o1, o2 = (i for i in range(3) if i != ax)
        s1, s2 = r[a, o1] / r[a, ax], r[a, o2] / r[a, ax]
        steps = np.arange(dims[ax]) - 0.5 * dims[ax] + 0.5  # voxel centres on the dominant axis
        for row in range(nz):
            p = corner[a] + (np.arange(n_cols)[:, None] + 0.5) * u[a] + (row + 0.5) * v[a]
            c = {ax: np.broadcast_to(np.arange(dims[ax]), (n_cols, dims[ax]))}
            for oi, si in ((o1, s1), (o2, s2)):
                c[oi] = p[:, oi, None] + si * (steps[None, :] - p[:, ax, None]) + 0.5 * dims[oi] - 0.5
            idx = np.stack([c[2], c[1], c[0]]).reshape(3, -1)
            vals = map_coordinates(vol, idx, order=1, mode="constant").reshape(n_cols, -1)
            out[row, a] = vals.sum(1) * math.sqrt(1 + s1 * s1 + s2 * s2)
    return out


@pytest.mark.parametrize("shifted", [False, True])
def test_parallel3d_vectors_reproduce_the_2d_operator(shifted):
    pytest.importorskip("scipy")
    g = _geometry(shifted, size=24, n_angles=12)
    vec = parallel3d_vectors(g)
    assert vec.shape == (g.n_angles, 12)
    np.testing.assert_array_equal(vec[:, [2, 5, 8]], 0.0)  # rays and detector rows in-plane
    np.testing.assert_array_equal(vec[:, 9:12], np.tile([0.0, 0.0, 1.0], (g.n_angles, 1)))
    x = _smooth_batch(24)
    y3 = _emulate_par3d_fp(x.double().numpy(), vec, g.detectors)
    y2 = make_ct_operator(g, backend="astra-cpu")(x).numpy()
    assert np.linalg.norm(y3 - y2) / np.linalg.norm(y2) < 5e-3  # measured 1.3e-3
    mirrored = vec.copy()
    mirrored[:, [1, 4, 7]] *= -1  # without the y mirror the images come out upside down
    y_bad = _emulate_par3d_fp(x.double().numpy(), mirrored, g.detectors)
    assert np.linalg.norm(y_bad - y2) / np.linalg.norm(y2) > 0.1


def test_parallel3d_vectors_refuse_fan_beam():
    g = CTGeometry(16, np.linspace(0, 2 * np.pi, 8, endpoint=False), 32, beam="fan", source_origin=48.0,
                   origin_detector=32.0)
    with pytest.raises(ValueError, match="parallel"):
        parallel3d_vectors(g)
