"""Batching many images per call: per-sample δ, splitting a batched result, ``--batch-size``."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import tifffile
import torch

from edncli.operators.blur import Blur, gaussian_kernel
from edncli.solvers.descent import StopRule
from edncli.solvers.methods import MethodOptions, Problem, solve
from edncli.solvers.sharding import merge_results
from edncli.solvers.stopping import DeltaChoice

from .test_cli import _clean, edn

N = 32
SIZES = (64, 64, 64, 48)
NOISE_LEVELS = (0.005, 0.04, 0.01, 0.02)
SIGMA = 0.01
OP = Blur((N, N), gaussian_kernel(1.6, 9), "reflect", sigma=1.6)
#: The learned methods with their shipped weights; min_iter 1 so that the δ test acts early.
OPTIONS = {
    "gd": MethodOptions(max_iter=500, min_iter=1),
    "edn": MethodOptions(max_iter=300, min_iter=1),
    "potential": MethodOptions(min_iter=1),
    "red": MethodOptions(min_iter=1),
    "pnp": MethodOptions(min_iter=1),
}


def _images(seeds) -> torch.Tensor:
    """Smooth images in [0, 1], ``(len(seeds), N, N)``."""
    out = []
    for s in seeds:
        gen = torch.Generator().manual_seed(s)
        x = torch.rand(1, 1, N // 4, N // 4, generator=gen)
        out.append(torch.nn.functional.interpolate(x, size=(N, N), mode="bicubic", align_corners=False).clamp(0, 1)[:, 0])
    return torch.cat(out)


def _problem(seeds, delta) -> Problem:
    """A deblurring problem with one sample per seed; ``delta`` one value or one per sample."""
    x = _images(seeds)
    gen = torch.Generator().manual_seed(100 + seeds[0])
    f = OP(x) + SIGMA * torch.randn(x.shape, generator=gen)
    return Problem(OP, f, f.clone(), DeltaChoice(delta, "given"), reference=x, task="deblur")


def _delta(factor: float) -> float:
    return factor * SIGMA * math.sqrt(N * N)


@pytest.mark.parametrize("method", sorted(OPTIONS))
def test_each_sample_stops_at_its_own_first_iterate_meeting_its_delta(method):
    deltas = [_delta(1.02), _delta(3.0)]
    result = solve(_problem([0, 0], deltas), method, OPTIONS[method])
    assert [s.delta for s in result.samples] == deltas
    assert all(s.delta_reached and s.stop_reason == "delta" for s in result.samples)
    iters = [s.iterations for s in result.samples]
    assert iters[0] > iters[1], "the tighter δ needs more steps"
    for i, (delta, last) in enumerate(zip(deltas, iters)):
        discs = [rec.rows.discrepancy[i] for rec in result.trace]
        assert discs[last] <= delta
        assert all(d > delta for d in discs[1:last]), f"sample {i} met its δ before iteration {last}"


@pytest.mark.parametrize("method", ["tv", "baseline"])
def test_verdicts_carry_each_samples_delta(method):
    deltas = [_delta(1.05), _delta(3.0)]
    result = solve(_problem([0, 1], deltas), method, MethodOptions(max_iter=200))
    assert [s.delta for s in result.samples] == deltas
    assert [s.delta_reached for s in result.samples] == [s.final_discrepancy <= d for s, d in zip(result.samples, deltas)]
    if method == "tv":
        parts = result.split([1, 1])
        assert [p.extra["alpha"] for p in parts] == [[a] for a in result.extra["alpha"]]
        assert all(len(entry["alpha"]) == 1 for entry in parts[1].extra["alpha_search"])


@pytest.mark.parametrize("method", ["gd", "edn", "potential"])
def test_split_equals_unbatched_runs(method):
    # Image A has two channels (one group of two samples), image B one; their δ differ.
    a, b = _problem([0, 1], _delta(1.02)), _problem([2], _delta(2.0))
    parts = solve(Problem.stack([a, b]), method, OPTIONS[method]).split([2, 1])
    for part, alone in zip(parts, (solve(a, method, OPTIONS[method]), solve(b, method, OPTIONS[method]))):
        assert [s.iterations for s in part.samples] == [s.iterations for s in alone.samples]
        assert [s.delta for s in part.samples] == [s.delta for s in alone.samples]
        assert len(part.trace) == len(alone.trace)
        assert part.final_discrepancy == pytest.approx(alone.final_discrepancy, rel=1e-4)
        torch.testing.assert_close(part.u, alone.u, atol=1e-4, rtol=0)
        for p, q in zip(part.trace, alone.trace):
            assert (p.iter, p.active, p.backtracks) == (q.iter, q.active, q.backtracks)
            assert p.energy == pytest.approx(q.energy, rel=1e-4)
            assert p.step == pytest.approx(q.step, rel=1e-4)
            assert p.psnr == pytest.approx(q.psnr, abs=1e-3)


def test_delta_and_split_are_checked():
    with pytest.raises(ValueError, match="delta must be > 0"):
        StopRule(delta=[1.0, 0.0])
    with pytest.raises(ValueError, match="3 δ values for a batch of 2"):
        solve(_problem([0, 1], [1.0, 1.0, 1.0]), "gd", MethodOptions())
    result = solve(_problem([0, 1], _delta(1.05)), "gd", MethodOptions())
    with pytest.raises(ValueError, match="do not partition"):
        result.split([1, 2])
    merged = merge_results([result], [(0, 2)])  # a merged trace keeps no per-sample rows
    with pytest.raises(ValueError, match="cannot be split"):
        merged.split([1, 1])
    assert result.split([2])[0].trace == result.trace


def _lr_folder(root: Path, downsampler: str = "average") -> Path:
    """Three 16² and one 12² low-resolution images (x4 ``downsampler``), noise σ from 0.005 to 0.04."""
    from edncli.io.images import read_image
    from edncli.operators.downsample import make_sr_operator

    folder = root / "lr"
    folder.mkdir()
    for i, n in enumerate(SIZES):
        arr, _ = read_image(str(_clean(root / f"clean{i}.png", n=n, seed=i)))
        x = torch.from_numpy(np.asarray(arr, dtype=np.float32))[None]
        noise = NOISE_LEVELS[i] * torch.randn(1, n // 4, n // 4, generator=torch.Generator().manual_seed(i))
        tifffile.imwrite(folder / f"im{i}.tif", (make_sr_operator((n, n), 4, downsampler)(x) + noise)[0].numpy())
    return folder


# τ per method so that the images of one batch stop at different iterations with the shipped weights
@pytest.mark.parametrize("method, downsampler, min_iter, tau", [("gd", "bicubic", "0", "0.5"), ("edn", "average", "1", "0.3")])
def test_cli_batched_runs_equal_unbatched_ones(method, downsampler, min_iter, tau, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    _lr_folder(tmp_path, downsampler)
    runs = {}
    for size in (4, 1):
        code, out, err = edn(
            monkeypatch, capsys, "sr", "--scale", "4", "lr", "--output-dir", f"out{size}", "--report", f"reports{size}",
            "--method", method, "--downsampler", downsampler, "--delta", "auto", "--tau", tau, "--min-iter", min_iter,
            "--batch-size", size, "--json", "--quiet",
        )
        assert code == 0, err
        runs[size] = json.loads(out)
    # δ is estimated per image (so it differs within a batch), and so do the iteration counts.
    assert len({r["delta"] for r in runs[4]}) == 4 and len({r["iterations"] for r in runs[4]}) > 1
    assert [r["iterations"] for r in runs[4]] == [r["iterations"] for r in runs[1]]
    assert [r["output"] for r in runs[4]] == [f"out4/im{i}.tif" for i in range(4)]
    for i in range(4):
        batched, alone = (json.loads(Path(f"reports{s}/im{i}.json").read_text()) for s in (4, 1))
        for key in ("iterations", "delta", "delta_reached", "energy_monotone"):
            assert batched[key] == alone[key], key
        keys = ("iterations", "delta", "stop_reason")
        assert [[s[k] for k in keys] for s in batched["samples"]] == [[s[k] for k in keys] for s in alone["samples"]]
        assert len(batched["trace"]) == len(alone["trace"])
        # edn fits average pooling to round-off (||Au - f|| ~ 1e-8): relative error means nothing there.
        assert batched["final_discrepancy"] == pytest.approx(alone["final_discrepancy"], rel=1e-4, abs=1e-6)
        assert batched["batch"]["size"] == (3 if i < 3 else 1) and batched["batch"]["index"] == (i if i < 3 else 0)
        assert "batch" not in alone
        np.testing.assert_allclose(tifffile.imread(f"out4/im{i}.tif"), tifffile.imread(f"out1/im{i}.tif"), atol=1e-4)


def test_cli_batch_size_must_be_positive(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    _lr_folder(tmp_path)
    code, out, err = edn(monkeypatch, capsys, "sr", "--scale", "4", "lr", "--output-dir", "out", "--batch-size", "0")
    assert code == 2 and out == ""
    assert err.strip() == "edn: error: --batch-size must be >= 1 (inputs solved together), got 0"
    assert not Path("out").exists() or not any(Path("out").iterdir())
