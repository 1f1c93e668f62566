"""``--delta auto`` on a stack: one σ estimate, and one δ, per sample (CT slice, colour channel).

was: the median of the per-slice estimates was used for every slice, so in a scan whose noise
differs from slice to slice the quiet slices stopped early at a δ far above their noise (a
noisier image than the data allow) and the noisy ones aimed for a δ below theirs.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from edncli.io.sinograms import write_sinogram
from edncli.operators.tomography import CTGeometry, simulate_ct
from edncli.solvers.stopping import DeltaChoice, choose_delta

from .test_cli import edn
from .test_ct_cli_errors import ctdir  # noqa: F401 - fixture

SIGMAS = (0.01, 0.04, 0.02)


def _noisy_stack(shape=(3, 60, 68), sigmas=SIGMAS, seed=0) -> np.ndarray:
    gen = np.random.default_rng(seed)
    smooth = np.sin(np.linspace(0, 3, shape[-1]))[None, :] * np.ones(shape[-2:])
    return np.stack([smooth + s * gen.standard_normal(shape[-2:]) for s in sigmas]).astype(np.float32)


def test_auto_gives_each_sample_its_own_sigma_and_delta():
    stack = _noisy_stack()
    m = stack[0].size
    choice = choose_delta("auto", None, 1.5, m, stack)
    assert choice.rule == "auto" and len(choice.delta) == len(SIGMAS) == len(choice.sigma)
    for sigma, est, delta in zip(SIGMAS, choice.sigma, choice.delta):
        assert est == pytest.approx(sigma, rel=0.05)
        assert delta == pytest.approx(1.5 * est * math.sqrt(m), rel=1e-12)
    assert "sigma_fallback" not in choice.as_dict()
    # one sample keeps one number (the report's "delta" of a single image is unchanged)
    single = choose_delta("auto", None, 1.0, m, stack[:1])
    assert isinstance(single.delta, float) and single.sigma == pytest.approx(SIGMAS[0], rel=0.05)


def test_a_noise_free_sample_takes_the_median_of_the_others_and_is_named():
    stack = _noisy_stack(sigmas=(0.01, 0.0, 0.03, 0.02))
    stack[1] = 0.0  # a zero-padded slice: its estimate is exactly 0, a δ of 0 could never be met
    choice = choose_delta("auto", None, 1.0, stack[0].size, stack)
    assert choice.as_dict()["sigma_fallback"] == [1]
    assert choice.sigma[1] == pytest.approx(np.median([choice.sigma[i] for i in (0, 2, 3)]))
    assert all(d > 0 for d in choice.delta)
    with pytest.raises(Exception, match="noise level is 0"):
        choose_delta("auto", None, 1.0, stack[0].size, np.zeros_like(stack))


def test_chunk_keeps_the_slices_values():
    choice = DeltaChoice([1.0, 2.0, 3.0, 4.0], "auto", [0.1, 0.2, 0.3, 0.4], 1.0, 100, sigma_fallback=[0, 3])
    part = choice.chunk(1, 4)
    assert part.delta == [2.0, 3.0, 4.0] and part.sigma == [0.2, 0.3, 0.4] and part.sigma_fallback == [2]
    assert choice.chunk(1, 3).sigma_fallback is None
    scalar = DeltaChoice(2.0, "given")
    assert scalar.chunk(0, 1) is scalar


def test_ct_stack_with_unequal_noise_stops_each_slice_at_its_own_delta(ctdir, monkeypatch, capsys):  # noqa: F811
    # a smooth object: the wavelet estimator reads a sharp 48² phantom's edges as noise
    yy, xx = np.mgrid[-1 : 1 : 48j, -1 : 1 : 48j]
    x = np.exp(-2 * ((xx / 0.5) ** 2 + (yy / 0.4) ** 2)).astype(np.float32)
    geom = CTGeometry(48, np.linspace(0, np.pi, 60, endpoint=False), 68)
    clean = simulate_ct(torch.from_numpy(x)[None], geom, noise_sigma=0.0)[0].numpy()
    gen = np.random.default_rng(0)
    stack = np.stack([clean + s * gen.standard_normal(clean.shape).astype(np.float32) for s in SIGMAS])
    write_sinogram("stack.h5", stack, geom.angles)
    code, out, err = edn(monkeypatch, capsys, "ct", "--sinogram", "stack.h5", "--size", "48", "-o", "vol.tif",
                         "--method", "gd", "--delta", "auto", "--tau", "1.02", "--report", "r.json", "--json")
    assert code == 0, err
    report = json.loads(Path("r.json").read_text())
    m = clean.size
    assert report["delta_rule"]["sigma"] == pytest.approx(list(SIGMAS), rel=0.2)
    assert report["delta"] == pytest.approx([1.02 * s * math.sqrt(m) for s in report["delta_rule"]["sigma"]], rel=1e-9)
    for sample, delta in zip(report["samples"], report["delta"]):
        assert sample["delta"] == pytest.approx(delta, rel=1e-12)
        assert sample["delta_reached"] and sample["final_discrepancy"] <= delta
    # the quiet slice ran on to its own, smaller δ: more iterations than the noisy one
    assert report["samples"][0]["iterations"] > report["samples"][1]["iterations"]
    assert json.loads(out)["delta"] == pytest.approx(report["delta"])
    # the summary line gives the range of the slices' δ and says so
    lo, hi = min(report["delta"]), max(report["delta"])
    assert f"(δ = {lo:.4g}–{hi:.4g} per sample)" in err


def test_a_single_image_summary_states_one_delta_not_per_sample(tmp_path, monkeypatch, capsys):
    from PIL import Image

    monkeypatch.chdir(tmp_path)
    Image.fromarray((_noisy_stack((1, 32, 32))[0].clip(0, 1) * 255).astype(np.uint8)).save("lr.png")
    code, _, err = edn(monkeypatch, capsys, "sr", "--scale", "2", "lr.png", "-o", "hr.tif", "--method", "gd",
                       "--report", "r.json")
    assert code == 0, err
    delta = json.loads(Path("r.json").read_text())["delta"]
    assert isinstance(delta, float)
    assert f"(δ = {delta:.4g})," in err and "per sample" not in err
