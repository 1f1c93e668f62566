"""Shared fixtures: devices (cpu, plus cuda when present), seeded randomness, shared data paths."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

SHARED_DATA = Path(os.environ.get("EDN_SHARED_DATA") or Path(__file__).resolve().parents[2] / "shared" / "data")

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


@pytest.fixture(params=DEVICES)
def device(request):
    return torch.device(request.param)


@pytest.fixture
def rng():
    return torch.Generator().manual_seed(1234)


@pytest.fixture
def shared_data():
    if not SHARED_DATA.is_dir():
        pytest.skip(f"shared data not found at {SHARED_DATA}")
    return SHARED_DATA


def dtype_tol(dtype: torch.dtype) -> float:
    """Relative tolerance for adjoint tests by dtype (ODL's testutils.dtype_tol idea)."""
    return {torch.float32: 1e-5, torch.float64: 1e-10}[dtype]


# One intra-op thread per test process: pytest-xdist runs one worker per core, and oversubscribed
# OpenMP threads make tiny tensor ops orders of magnitude slower on a loaded 2-core machine.
torch.set_num_threads(1)
os.environ.setdefault("OMP_NUM_THREADS", "1")
