"""Code that runs only on a GPU, checked on a CPU: device choice, astra's GPU link, torchrun + NCCL.

The CPU tests stand in for the GPU with monkeypatched ``torch.cuda`` / astra calls (CPU tensors
play the CUDA ones: ``data_ptr`` is host memory there). The tests marked ``cuda`` need a GPU.
"""

from __future__ import annotations

import contextlib
import ctypes
import math

import numpy as np
import pytest
import torch

from edncli.errors import UsageError

astra = pytest.importorskip("astra")

from edncli.operators import tomography as tomo  # noqa: E402
from edncli.operators.tomography import CTGeometry, make_ct_operator  # noqa: E402

N = 16


def _parallel() -> CTGeometry:
    return CTGeometry.parallel(N, 12)


def _fan() -> CTGeometry:
    return CTGeometry(N, np.linspace(0, 2 * np.pi, 12, endpoint=False), 2 * N, beam="fan",
                      source_origin=3.0 * N, origin_detector=2.0 * N)


@pytest.fixture()
def astra_cuda(monkeypatch):
    """Pretend astra has CUDA (the operator is only built, never run on astra here)."""
    monkeypatch.setattr(tomo, "cuda_available", lambda: True)


# ---------------------------------------------------------------------------- GPU index
@pytest.mark.usefixtures("astra_cuda")
@pytest.mark.parametrize("device, want", [("cuda:1", 1), ("cuda:0", 0), ("cpu", 0)])
def test_cuda_backend_takes_the_gpu_of_the_device(device, want):
    # Under torchrun rank 1 builds its operator for cuda:1; the host path (fan beam) used GPU 0.
    op = make_ct_operator(_fan(), backend="cuda", device=device)
    assert op.gpu_index == want


@pytest.mark.usefixtures("astra_cuda")
def test_host_path_projector_is_pinned_to_its_gpu(monkeypatch):
    calls = []

    class FakeAstra:
        def set_gpu_index(self, idx, memory=0):
            calls.append(("set_gpu_index", idx))

        def create_projector(self, kind, proj, vol, options=None):
            calls.append(("create_projector", kind, options))
            return 5

    op = make_ct_operator(_fan(), backend="cuda", device="cuda:1")
    monkeypatch.setattr(tomo, "_astra", lambda: FakeAstra())
    monkeypatch.setattr(op.geometry, "astra_geometries", lambda: ("vol", "proj"))
    assert op._projector_id() == 5
    op._pid = None  # nothing to delete on the fake astra
    # astra's 2D CUDA algorithms run on the projector's GPUIndex, not on the global index that a
    # later call (another operator, the 3D path) may have changed
    assert ("create_projector", "cuda", {"GPUIndex": 1}) in calls


# ---------------------------------------------------------------------------- the GPU link call
def _fake_device(monkeypatch):
    """Run ``_CudaOperator._device_call`` on CPU tensors: no-op syncs, device 0."""
    monkeypatch.setattr(torch.cuda, "synchronize", lambda *a, **k: None)
    monkeypatch.setattr(torch.cuda, "device", lambda *a, **k: contextlib.nullcontext())
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    monkeypatch.setattr(astra, "set_gpu_index", lambda *a, **k: None)


@pytest.mark.usefixtures("astra_cuda")
@pytest.mark.parametrize("kind", ["FP", "BP"])
def test_device_call_links_torch_memory_and_refuses_an_unwritten_output(monkeypatch, kind):
    from astra import experimental

    _fake_device(monkeypatch)
    op = make_ct_operator(_parallel(), backend="cuda")
    monkeypatch.setattr(op, "_projector3d_id", lambda b, gpu: 7)
    inp_shape, out_shape = (op.in_shape, op.out_shape) if kind == "FP" else (op.out_shape, op.in_shape)
    x = torch.rand(3, *inp_shape)
    seen = {}

    def fake(write):
        def call(pid, vol, proj):
            src, dst = (vol, proj) if kind == "FP" else (proj, vol)
            seen.update(pid=pid, src=(src.z, src.y, src.x, src.pitch, src.ptr), dst=(dst.z, dst.y, dst.x, dst.pitch))
            if write:  # what astra does on success: every element of the output (MODE_SET)
                n = dst.x * dst.y * dst.z
                np.ctypeslib.as_array((ctypes.c_float * n).from_address(dst.ptr))[:] = 1.0
        return call

    name = "direct_FP3D" if kind == "FP" else "direct_BP3D"
    monkeypatch.setattr(experimental, name, fake(write=True))
    out = op._device_call(kind, x, out_shape)
    assert out.shape == (3, *out_shape) and bool((out == 1).all())
    # (z, y, x) = (slices, rows, cols) of the volume, (rows, angles, cols) of the projections; pitch in bytes
    assert seen["src"] == (3, *inp_shape[::1], inp_shape[-1] * 4, x.data_ptr())
    assert seen["dst"] == (3, *out_shape, out_shape[-1] * 4) and seen["pid"] == 7

    # astra 2.5 logs a failed doFP/doBP but does not raise: the output must not be returned
    monkeypatch.setattr(experimental, name, fake(write=False))
    with pytest.raises(RuntimeError, match="projection .* failed"):
        op._device_call(kind, x, out_shape)


@pytest.mark.usefixtures("astra_cuda")
def test_device_call_lets_nan_input_through(monkeypatch):
    from astra import experimental

    _fake_device(monkeypatch)
    op = make_ct_operator(_parallel(), backend="cuda")
    monkeypatch.setattr(op, "_projector3d_id", lambda b, gpu: 7)
    monkeypatch.setattr(experimental, "direct_FP3D", lambda pid, vol, proj: None)
    x = torch.full((1, *op.in_shape), math.nan)
    assert bool(op._device_call("FP", x, op.out_shape).isnan().all())  # NaN in, NaN out: not astra's failure


# ---------------------------------------------------------------------------- training under torchrun
def test_training_under_torchrun_puts_each_rank_on_its_own_gpu(monkeypatch):
    import torch.distributed as dist

    from edncli.training import lagged

    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("LOCAL_RANK", "1")
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    chosen, groups = [], []
    monkeypatch.setattr(torch.cuda, "set_device", lambda d: chosen.append(torch.device(d)))
    monkeypatch.setattr(dist, "is_initialized", lambda: False)
    monkeypatch.setattr(dist, "init_process_group", lambda backend, **k: groups.append(backend))
    # `--device cuda` (no index) on every rank: NCCL refuses two ranks on one GPU, DDP needs the index
    world, rank, device = lagged._init_distributed(torch.device("cuda"))
    assert (world, rank, device) == (2, 1, torch.device("cuda", 1))
    assert chosen == [torch.device("cuda", 1)] and groups == ["nccl"]
    with pytest.raises(UsageError, match="LOCAL_RANK"):
        lagged._init_distributed(torch.device("cuda", 0))
    # gloo on CPU, device unchanged
    assert lagged._init_distributed(torch.device("cpu"))[2] == torch.device("cpu") and groups[-1] == "gloo"


def test_training_without_torchrun_keeps_the_device(monkeypatch):
    from edncli.training import lagged

    monkeypatch.delenv("WORLD_SIZE", raising=False)
    assert lagged._init_distributed(torch.device("cuda")) == (1, 0, torch.device("cuda"))


# ---------------------------------------------------------------------------- on a GPU
def _gpu_ready() -> bool:
    return torch.cuda.is_available() and tomo.cuda_available()


@pytest.mark.cuda
@pytest.mark.skipif(not _gpu_ready(), reason="needs a CUDA GPU seen by torch and astra with CUDA")
def test_gpu_link_outputs_are_fully_written():
    # The NaN sentinel of _device_call assumes astra writes every output element on success
    # (zero rays and voxels included): a shifted axis leaves detector bins that miss the image.
    det = 2 * N
    g = CTGeometry.parallel(N, 12, det, center=(det - 1) / 2 + 6.0)
    op = make_ct_operator(g, backend="cuda", device="cuda")
    assert op.gpu_index == torch.cuda.current_device()
    x = torch.zeros(2, N, N, device="cuda")
    x[:, 4:8, 4:8] = 1.0
    y = op(x)
    assert bool(torch.isfinite(y).all()) and bool(torch.isfinite(op.adjoint(y)).all())
    assert bool((op(torch.zeros_like(x)) == 0).all())
