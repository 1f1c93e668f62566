"""Sharding CT slices over torchrun ranks: chunking, trace merging, and ``torchrun -m edncli reconstruct ct``."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import tifffile
import torch

from edncli.errors import UsageError
from edncli.solvers.sharding import Launch, merge_results, merge_traces, shard_bounds
from edncli.solvers.trace import IterationRecord, SampleVerdict, SolveResult


# ---------------------------------------------------------------------------- chunks
@pytest.mark.parametrize("n, parts", [(1, 1), (4, 2), (5, 2), (16, 3), (7, 7), (10, 4)])
def test_shard_bounds_are_contiguous_and_near_equal(n, parts):
    bounds = shard_bounds(n, parts)
    assert len(bounds) == parts and bounds[0][0] == 0 and bounds[-1][1] == n
    assert all(a[1] == b[0] for a, b in zip(bounds, bounds[1:]))
    sizes = [hi - lo for lo, hi in bounds]
    assert max(sizes) - min(sizes) <= 1 and min(sizes) >= 1
    assert sizes == sorted(sizes, reverse=True)  # the larger chunks come first


def test_more_ranks_than_slices_is_a_usage_error():
    with pytest.raises(UsageError, match="--nproc-per-node 1 or fewer"):
        shard_bounds(1, 2)


def test_launch_from_env():
    assert not Launch.from_env({}).distributed
    launch = Launch.from_env({"WORLD_SIZE": "4", "RANK": "3", "LOCAL_RANK": "1"})
    assert launch.distributed and launch.rank == 3 and launch.local_rank == 1 and not launch.is_main
    with pytest.raises(UsageError, match="inconsistent"):
        Launch.from_env({"WORLD_SIZE": "2", "RANK": "2"})


# ---------------------------------------------------------------------------- merging
def _rec(k, energy, disc, gnorm, active, step=0.5, backtracks=0, t=None, psnr=None):
    return IterationRecord(iter=k, energy=energy, discrepancy=disc, grad_norm=gnorm, step=step, backtracks=backtracks,
                           time_s=0.1 * k if t is None else t, active=active, psnr=psnr)


def test_merge_traces_holds_a_finished_chunk_at_its_last_values():
    a = [_rec(0, 4.0, 3.0, 2.0, 2, step=0.0), _rec(1, 1.0, 1.0, 1.0, 2, step=0.5, backtracks=1)]
    b = [_rec(0, 9.0, 4.0, 2.0, 1, step=0.0), _rec(1, 4.0, 2.0, 1.0, 1, step=0.2, backtracks=3),
         _rec(2, 1.0, 1.0, 0.5, 1, step=0.1, backtracks=2, t=0.5)]
    m = merge_traces([a, b], [2, 1])
    assert [r.iter for r in m] == [0, 1, 2]
    assert m[0].energy == 13.0 and m[0].discrepancy == pytest.approx(5.0) and m[0].active == 3
    assert m[1].energy == 5.0 and m[1].discrepancy == pytest.approx(math.sqrt(5.0))
    assert m[1].grad_norm == pytest.approx(math.sqrt(2.0)) and m[1].backtracks == 3
    assert m[1].step == pytest.approx((0.5 * 2 + 0.2 * 1) / 3)
    # chunk a stopped after iteration 1: its energy and discrepancy stay, its activity does not
    assert m[2].energy == 2.0 and m[2].discrepancy == pytest.approx(math.sqrt(2.0))
    assert m[2].active == 1 and m[2].step == pytest.approx(0.1) and m[2].backtracks == 2 and m[2].time_s == 0.5


def test_merge_traces_weights_psnr_by_chunk_size():
    a = [_rec(0, 1.0, 1.0, 1.0, 3, psnr=20.0)]
    b = [_rec(0, 1.0, 1.0, 1.0, 1, psnr=30.0)]
    assert merge_traces([a, b], [3, 1])[0].psnr == pytest.approx(22.5)


def _result(lo, hi, iters, extra=None):
    n = hi - lo
    u = torch.arange(lo, hi, dtype=torch.float32).view(n, 1, 1).expand(n, 2, 2).clone()
    samples = [SampleVerdict(iterations=iters, final_energy=1.0, final_discrepancy=1.0, delta=1.5, delta_reached=True,
                             max_energy_increase=0.0, energy_monotone=True, stop_reason="delta") for _ in range(n)]
    trace = [_rec(k, float(n), 1.0, 1.0, n) for k in range(iters + 1)]
    return SolveResult(u=u, trace=trace, samples=samples, method="gd", elapsed_s=0.1 * iters, extra=dict(extra or {}))


def test_merge_results_concatenates_in_batch_order():
    bounds = shard_bounds(5, 2)
    parts = [_result(0, 3, 4, {"alpha": [1.0, 2.0, 3.0], "rule": "x", "log": [1]}),
             _result(3, 5, 6, {"alpha": [4.0, 5.0], "rule": "x", "log": [2]})]
    merged = merge_results(parts, bounds, devices=["cpu", "cpu"])
    assert merged.u[:, 0, 0].tolist() == [0.0, 1.0, 2.0, 3.0, 4.0]
    assert len(merged.samples) == 5 and merged.iterations == 6 and len(merged.trace) == 7
    assert merged.elapsed_s == pytest.approx(0.6)
    assert merged.extra["alpha"] == [1.0, 2.0, 3.0, 4.0, 5.0] and merged.extra["rule"] == "x"
    assert merged.extra["world_size"] == 2
    ranks = merged.extra["ranks"]
    assert [r["slices"] for r in ranks] == [[0, 3], [3, 5]] and [r["extra"]["log"] for r in ranks] == [[1], [2]]
    with pytest.raises(ValueError, match="holds 3 samples"):
        merge_results(parts, [(0, 2), (2, 5)])


# ---------------------------------------------------------------------------- torchrun
def _scan(path: Path, cache: Path, n_slices: int, size: int = 32, angles: int = 40) -> None:
    """A DXchange HDF5 scan of ``n_slices`` different ellipse phantoms (matrix backend, noise 0.02)."""
    from edncli.io.sinograms import write_sinogram
    from edncli.operators.tomography import CTGeometry, make_ct_operator

    yy, xx = np.mgrid[-1 : 1 : size * 1j, -1 : 1 : size * 1j]
    imgs = []
    for s in range(n_slices):
        a, b = 0.5 + 0.08 * s, 0.7 - 0.05 * s
        img = 0.6 * ((xx / a) ** 2 + (yy / b) ** 2 <= 1) + 0.3 * (((xx - 0.1 * s) / 0.2) ** 2 + (yy / 0.3) ** 2 <= 1)
        imgs.append(img)
    geom = CTGeometry(size=size, angles=np.linspace(0, math.pi, angles, endpoint=False),
                      detectors=int(math.ceil(size * math.sqrt(2))))
    op = make_ct_operator(geom, backend="matrix", cache_dir=cache)
    clean = op(torch.tensor(np.stack(imgs), dtype=torch.float32))
    noisy = clean + 0.02 * torch.randn(clean.shape, generator=torch.Generator().manual_seed(0))
    write_sinogram(path, noisy.numpy(), geom.angles)


def _env(tmp_path: Path) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("WORLD_SIZE", "RANK", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")}
    return {**env, "OMP_NUM_THREADS": "1", "EDN_CACHE_DIR": str(tmp_path / "cache")}


def _torchrun(tmp_path: Path, *args: str, nproc: int = 2) -> subprocess.CompletedProcess:
    # --standalone: a rendezvous on a free local port, so parallel test workers never collide
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(nproc),
           "-m", "edncli", "reconstruct", "ct", *args]
    return subprocess.run(cmd, capture_output=True, text=True, env=_env(tmp_path), cwd=tmp_path, timeout=240)


def _single(tmp_path: Path, *args: str) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "edncli", "reconstruct", "ct", *args]
    return subprocess.run(cmd, capture_output=True, text=True, env=_env(tmp_path), cwd=tmp_path, timeout=240)


def test_torchrun_shards_slices_into_one_volume_and_one_report(tmp_path):
    _scan(tmp_path / "scan.h5", tmp_path / "cache", n_slices=5)
    common = ["--sinogram", "scan.h5", "--slices", "0:5", "--size", "32", "--method", "gd", "--device", "cpu",
              "--backend", "matrix", "--tau", "1.05", "--quiet"]
    one = _single(tmp_path, *common, "-o", "one.tif", "--report", "one.json")
    two = _torchrun(tmp_path, *common, "-o", "two.tif", "--report", "two.json")
    assert one.returncode == 0, one.stderr[-2000:]
    assert two.returncode == one.returncode, two.stderr[-3000:]
    vol1, vol2 = tifffile.imread(tmp_path / "one.tif"), tifffile.imread(tmp_path / "two.tif")
    assert vol2.shape == vol1.shape == (5, 32, 32)
    np.testing.assert_allclose(vol2, vol1, rtol=0, atol=1e-5)
    r1 = json.loads((tmp_path / "one.json").read_text())
    r2 = json.loads((tmp_path / "two.json").read_text())
    assert r2["world_size"] == 2 and [r["slices"] for r in r2["ranks"]] == [[0, 3], [3, 5]]
    assert [s["iterations"] for s in r2["samples"]] == [s["iterations"] for s in r1["samples"]]
    assert [s["final_discrepancy"] for s in r2["samples"]] == pytest.approx([s["final_discrepancy"] for s in r1["samples"]], rel=1e-5)
    # decisions over all slices were made on the whole scan, not per chunk
    assert r2["delta"] == pytest.approx(r1["delta"], rel=1e-12) and r2["center"] == pytest.approx(r1["center"], rel=1e-12)
    assert r2["delta_reached"] is True and r2["iterations"] == r1["iterations"]
    assert [t["iter"] for t in r2["trace"]] == [t["iter"] for t in r1["trace"]]
    assert [t["active"] for t in r2["trace"]] == [t["active"] for t in r1["trace"]]
    assert [t["energy"] for t in r2["trace"]] == pytest.approx([t["energy"] for t in r1["trace"]], rel=1e-5)
    assert [t["discrepancy"] for t in r2["trace"]] == pytest.approx([t["discrepancy"] for t in r1["trace"]], rel=1e-5)
    assert not list(tmp_path.glob("*.tmp"))  # ranks other than 0 wrote nothing


def test_torchrun_with_more_ranks_than_slices_fails_once_without_output(tmp_path):
    _scan(tmp_path / "scan.h5", tmp_path / "cache", n_slices=1)
    proc = _torchrun(tmp_path, "--sinogram", "scan.h5", "--size", "32", "--method", "gd", "--device", "cpu",
                     "--backend", "matrix", "-o", "vol.tif", "--report", "r.json", "--quiet")
    assert proc.returncode != 0
    errors = [line for line in proc.stderr.splitlines() if line.startswith("edn: error:")]
    assert errors == ["edn: error: 2 ranks for 1 slice(s): every rank needs at least one slice; start torchrun with "
                      "--nproc-per-node 1 or fewer, or select more slices with --slices"], proc.stderr[-3000:]
    assert "exitcode  : 2" in proc.stderr  # torchrun's summary: rank 0 failed first, with the usage-error code
    assert not (tmp_path / "vol.tif").exists() and not (tmp_path / "r.json").exists()


@pytest.mark.parametrize("option", [("--plot", "p.jpg"), ("--report", "scan.h5", "--force")])
def test_torchrun_checks_outputs_as_a_single_process_does(tmp_path, option):
    # Under torchrun rank 0 checked only that the outputs could be written: a plot not named
    # .png was written, and --report scan.h5 --force replaced the sinogram after the solve.
    _scan(tmp_path / "scan.h5", tmp_path / "cache", n_slices=2)
    before = (tmp_path / "scan.h5").read_bytes()
    proc = _torchrun(tmp_path, "--sinogram", "scan.h5", "--slices", "0:2", "--size", "32", "--method", "gd",
                     "--device", "cpu", "--backend", "matrix", "-o", "vol.tif", *option, "--quiet")
    errors = [line for line in proc.stderr.splitlines() if line.startswith("edn: error:")]
    assert len(errors) == 1 and option[0] in errors[0], proc.stderr[-3000:]
    assert "exitcode  : 2" in proc.stderr
    assert (tmp_path / "scan.h5").read_bytes() == before
    assert not (tmp_path / "vol.tif").exists() and not (tmp_path / "p.jpg").exists()
