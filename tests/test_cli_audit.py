"""Audit findings: `edn simulate`, `edn eval`, `edn weights` and the library API on odd input.

Each test names the defect it guards against: a traceback, a silent wrong result or a number
that did not match what it claims.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import tifffile
import torch
from PIL import Image

from edncli.errors import UsageError

from .test_cli import _clean, edn


@pytest.fixture
def workdir(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    _clean(tmp_path / "clean.png", n=32)
    return tmp_path


def _one_line(err: str) -> bool:
    lines = [line for line in err.splitlines() if line.strip()]
    return len(lines) == 1 and lines[0].startswith("edn: error:") and "Traceback" not in err


# ---------------------------------------------------------------------------- edn simulate
@pytest.mark.parametrize("cmd", [["sr", "--scale", "2"], ["deblur", "--kernel-size", "5"]])
@pytest.mark.parametrize("sigma", ["nan", "inf"])
def test_simulate_refuses_a_noise_sigma_that_is_not_finite(workdir, monkeypatch, capsys, cmd, sigma):
    code, _, err = edn(monkeypatch, capsys, "simulate", *cmd, "clean.png", "-o", "f.tif", "--noise-sigma", sigma)
    assert code == 2 and _one_line(err) and "--noise-sigma" in err
    assert not Path("f.tif").exists()  # no NaN/Inf image written with exit 0


@pytest.mark.parametrize("seed", ["-1", str(2**70)])
def test_simulate_seed_out_of_range_is_a_usage_error(workdir, monkeypatch, capsys, seed):
    code, _, err = edn(monkeypatch, capsys, "simulate", "sr", "--scale", "2", "clean.png", "-o", "f.tif", "--seed", seed)
    assert code == 2 and _one_line(err) and "--seed" in err
    assert not Path("f.tif").exists()


def test_simulate_sr_crop_of_a_too_small_image_names_its_size(workdir, monkeypatch, capsys):
    Image.fromarray(np.zeros((3, 3), np.uint8)).save("tiny.png")
    code, _, err = edn(monkeypatch, capsys, "simulate", "sr", "--scale", "4", "--crop", "tiny.png", "-o", "f.tif")
    assert code == 2 and _one_line(err) and "3x3" in err and "0x0" not in err


def test_simulate_sr_of_an_indivisible_image_points_to_crop(workdir, monkeypatch, capsys):
    Image.fromarray(np.zeros((30, 34), np.uint8)).save("odd.png")
    code, _, err = edn(monkeypatch, capsys, "simulate", "sr", "--scale", "4", "odd.png", "-o", "f.tif")
    assert code == 2 and _one_line(err) and "pass --crop to crop it to 28x32" in err and not Path("f.tif").exists()
    code, _, err = edn(monkeypatch, capsys, "simulate", "sr", "--scale", "4", "--crop", "odd.png", "-o", "f.tif")
    assert code == 0, err
    assert tifffile.imread("f.tif").shape == (7, 8)


def test_simulate_ct_detectors_zero_is_a_usage_error(workdir, monkeypatch, capsys):
    pytest.importorskip("astra")
    code, _, err = edn(monkeypatch, capsys, "simulate", "ct", "clean.png", "-o", "s.h5", "--angles", "8", "--detectors", "0")
    assert code == 2 and _one_line(err) and "--detectors must be >= 1" in err
    assert not Path("s.h5").exists()  # was: silently the default detector count


# ---------------------------------------------------------------------------- edn eval
def _eval_images(folder: Path) -> None:
    folder.mkdir()
    for i in range(2):
        _clean(folder / f"im{i}.png", n=32, seed=i)


def test_eval_refuses_a_method_listed_twice(workdir, monkeypatch, capsys):
    _eval_images(Path("imgs"))
    code, out, err = edn(monkeypatch, capsys, "eval", "sr", "--images", "imgs", "--methods", "gd,gd", "-q", "--json", "t.json")
    assert code == 2 and _one_line(err) and "more than once" in err
    assert out == "" and not Path("t.json").exists()  # was: "images": 4 for a folder of 2


@pytest.mark.parametrize("opt", [("--noise-sigma", "nan"), ("--noise-sigma", "inf"), ("--tau", "inf")])
def test_eval_refuses_values_that_are_not_finite(workdir, monkeypatch, capsys, opt):
    _eval_images(Path("imgs"))
    code, out, err = edn(monkeypatch, capsys, "eval", "sr", "--images", "imgs", "--methods", "gd", "-q", *opt)
    assert code == 2 and _one_line(err) and opt[0] in err and out == ""


def test_eval_json_to_stdout_is_a_usage_error(workdir, monkeypatch, capsys):
    _eval_images(Path("imgs"))
    code, out, err = edn(monkeypatch, capsys, "eval", "sr", "--images", "imgs", "--methods", "gd", "-q", "--json", "-")
    assert code == 2 and _one_line(err) and "--json" in err and out == ""


def test_eval_counts_each_image_once_per_method(workdir, monkeypatch, capsys):
    _eval_images(Path("imgs"))
    code, _, err = edn(monkeypatch, capsys, "eval", "sr", "--images", "imgs", "--methods", "gd,cg", "-q", "--json", "t.json")
    assert code == 0, err
    doc = json.loads(Path("t.json").read_text())
    assert [m["images"] for m in doc["methods"].values()] == [2, 2] and len(doc["rows"]) == 4


# ---------------------------------------------------------------------------- edn weights
def test_weights_list_skips_a_folder_named_like_a_checkpoint(workdir, monkeypatch, capsys):
    (workdir / "w").mkdir()
    (workdir / "w" / "odd.safetensors").mkdir()
    (workdir / "w" / "junk.safetensors").write_bytes(b"not a checkpoint")
    monkeypatch.setenv("EDN_WEIGHTS_DIR", str(workdir / "w"))
    code, out, err = edn(monkeypatch, capsys, "weights", "list", "--json")
    assert code == 0, err
    names = [r["name"] for r in json.loads(out)]
    assert "odd" not in names and "junk" in names and "edn-sr-x4" in names
    code, _, err = edn(monkeypatch, capsys, "weights", "show", "odd")
    assert code == 4 and _one_line(err) and "odd" in err
    # the name is a positional argument of `edn weights show`: the error names the command, not --weights
    assert "edn weights show odd: no such checkpoint" in err and "--weights" not in err


# ---------------------------------------------------------------------------- library API
def test_library_problem_accepts_a_number_as_delta():
    from edncli.operators.downsample import AveragePool, upsample
    from edncli.solvers.methods import MethodOptions, Problem, solve

    f = torch.rand(1, 8, 8)
    res = solve(Problem(AveragePool((16, 16), 2), f, upsample(f, 2), 0.5), "gd", MethodOptions())
    assert res.delta_reached and res.final_discrepancy <= 0.5


@pytest.mark.parametrize(
    "f_shape, u0_shape, fragment",
    [((1, 7, 8), (1, 16, 16), "f has shape (1, 7, 8)"), ((8, 8), (16, 16), "f has shape (8, 8)"),
     ((1, 8, 8), (1, 15, 16), "u0 has shape (1, 15, 16)"), ((2, 8, 8), (1, 16, 16), "u0 has 1 samples and f has 2")],
)
def test_library_problem_with_shapes_that_do_not_fit_is_a_usage_error(f_shape, u0_shape, fragment):
    from edncli.operators.downsample import AveragePool
    from edncli.solvers.methods import Problem

    with pytest.raises(UsageError) as exc:
        Problem(AveragePool((16, 16), 2), torch.rand(f_shape), torch.rand(u0_shape), 1.0)
    assert fragment in str(exc.value)


def test_library_unknown_method_and_infinite_sigma_are_usage_errors():
    from edncli.operators.downsample import AveragePool, upsample
    from edncli.solvers.methods import Problem, solve
    from edncli.solvers.stopping import choose_delta

    f = torch.rand(1, 8, 8)
    with pytest.raises(UsageError, match="unknown method"):
        solve(Problem(AveragePool((16, 16), 2), f, upsample(f, 2)), "nope")
    with pytest.raises(UsageError, match="--noise-sigma"):
        choose_delta(None, float("inf"), 1.0, 64)
    with pytest.raises(UsageError, match="--tau"):
        choose_delta(None, 0.01, float("inf"), 64)


def test_readme_library_snippet_runs():
    from edncli.operators.downsample import AveragePool, upsample
    from edncli.solvers.methods import MethodOptions, Problem, solve
    from edncli.solvers.stopping import choose_delta

    path = Path(__file__).resolve().parents[1] / "examples" / "camera_lr_x4.tif"
    f = torch.from_numpy(tifffile.imread(path))[None][:, :16, :16].contiguous()
    B, h, w = f.shape
    op = AveragePool((4 * h, 4 * w), 4)
    problem = Problem(op, f, upsample(f, 4), choose_delta("auto", None, 1.0, h * w, f.numpy()))
    result = solve(problem, "tv", MethodOptions(max_iter=300))
    assert result.u.shape == (1, 4 * h, 4 * w) and result.energy_monotone and len(result.trace) >= 1
