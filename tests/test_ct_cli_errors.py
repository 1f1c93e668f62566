"""CT and CLI-wide error handling: rotation centre, flat fields, batched verdicts, kernels,
``--version``, Click usage errors, help texts."""

from __future__ import annotations

import json
import math
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
from PIL import Image

from edncli.errors import InputError, UsageError
from edncli.io.sinograms import read_sinogram
from edncli.operators.blur import check_kernel
from edncli.operators.tomography import CTGeometry
from edncli.solvers.trace import SampleVerdict, SolveResult

from .test_cli import _clean, _phantom, edn


@pytest.fixture
def ctdir(tmp_path, monkeypatch):
    """A folder with a 48x48 phantom, its 60-angle sinogram (68 detectors) as .npy and as a
    3-slice DXchange file."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("EDN_CACHE_DIR", str(tmp_path / "cache"))
    _phantom(tmp_path / "phantom.png")
    return tmp_path


def _sinogram(monkeypatch, capsys, noise=0.05) -> np.ndarray:
    code, _, err = edn(monkeypatch, capsys, "simulate", "ct", "--angles", "60", "--noise-sigma", str(noise), "phantom.png",
                       "-o", "sino.h5")
    assert code == 0, err
    with h5py.File("sino.h5", "r") as f:
        data, theta = f["/exchange/data"][...], f["/exchange/theta"][...]
    np.save("sino.npy", data)
    return data, theta


# ----------------------------------------------------------------------------- --center (3)


@pytest.mark.parametrize("center", ["1000", "68", "-0.6", "-200"])
def test_center_outside_the_detector_is_a_usage_error(ctdir, monkeypatch, capsys, center):
    _sinogram(monkeypatch, capsys)
    code, _, err = edn(monkeypatch, capsys, "ct", "--sinogram", "sino.npy", "--angles", "60", "--size", "48",
                       f"--center={center}", "-o", "x.tif")
    assert code == 2, err
    assert err.startswith("edn: error: --center") and "outside the detector" in err and "-0.5 to 67.5" in err
    assert err.count("\n") == 1 and "Traceback" not in err
    assert not Path("x.tif").exists()


def test_center_not_finite_is_a_usage_error(ctdir, monkeypatch, capsys):
    _sinogram(monkeypatch, capsys)
    code, _, err = edn(monkeypatch, capsys, "ct", "--sinogram", "sino.npy", "--angles", "60", "--center=nan", "-o", "x.tif")
    assert code == 2 and "finite" in err and err.count("\n") == 1


def test_center_at_the_detector_edge_still_runs(ctdir, monkeypatch, capsys):
    _sinogram(monkeypatch, capsys)
    code, _, err = edn(monkeypatch, capsys, "ct", "--sinogram", "sino.npy", "--angles", "60", "--size", "48",
                       "--center=0", "-o", "x.tif", "--method", "gd", "--max-iter", "2", "--quiet")
    assert code in (0, 3), err
    assert Path("x.tif").exists()


def test_geometry_with_no_overlap_is_refused():
    angles = np.linspace(0, np.pi, 10, endpoint=False)
    with pytest.raises(UsageError, match="outside the detector"):
        CTGeometry(size=48, angles=angles, detectors=68, center=1000.0)
    with pytest.raises(UsageError, match="outside the detector"):
        CTGeometry(size=48, angles=angles, detectors=68, beam="fan", source_origin=200.0, origin_detector=100.0,
                   center=-500.0)
    CTGeometry(size=48, angles=angles, detectors=68, center=80.0)  # off the detector but the image is still seen


# ----------------------------------------------------------------------------- batched verdicts (15)


def _verdict(disc: float, delta: float) -> SampleVerdict:
    return SampleVerdict(iterations=3, final_energy=disc**2 / 2, final_discrepancy=disc, delta=delta,
                         delta_reached=disc <= delta, max_energy_increase=0.0, energy_monotone=True, stop_reason="delta")


def _result(samples) -> SolveResult:
    from edncli.solvers.trace import IterationRecord

    agg = math.sqrt(sum(s.final_discrepancy**2 for s in samples))
    rec = IterationRecord(iter=3, energy=agg**2 / 2, discrepancy=agg, grad_norm=0.0, step=0.0, backtracks=0, time_s=0.0,
                          active=0)
    return SolveResult(u=torch.zeros(len(samples), 2, 2), trace=[rec], samples=samples, method="gd", elapsed_s=0.0)


def test_batch_final_discrepancy_is_the_worst_sample():
    reached = _result([_verdict(2.2, 2.4), _verdict(2.3, 2.4)])
    assert reached.delta_reached is True
    assert reached.final_discrepancy == pytest.approx(2.3)  # not the batch norm sqrt(2.2² + 2.3²) = 3.18
    missed = _result([_verdict(1.0, 2.4), _verdict(2.5, 2.4)])
    assert missed.delta_reached is False and missed.final_discrepancy == pytest.approx(2.5)
    # per-sample δ: the sample farthest from its own δ is the one reported
    mixed = _result([_verdict(3.0, 4.0), _verdict(1.0, 0.5)])
    assert mixed.final_discrepancy == pytest.approx(1.0)
    single = _result([_verdict(2.2, 2.4)])
    assert single.final_discrepancy == pytest.approx(2.2)


def _stack(data: np.ndarray, theta: np.ndarray, path: str = "stack.h5") -> None:
    rng = np.random.default_rng(1)
    stack = np.stack([data, 0.9 * data, 1.1 * data], axis=1) + rng.normal(0, 0.05, (data.shape[0], 3, data.shape[1]))
    with h5py.File(path, "w") as f:
        f["/exchange/data"] = stack.astype(np.float32)
        f["/exchange/theta"] = theta


@pytest.mark.parametrize("cap, code_want", [(None, 0), ("2", 3)])
def test_multi_slice_verdict_is_consistent(ctdir, monkeypatch, capsys, cap, code_want):
    data, theta = _sinogram(monkeypatch, capsys, noise=0.0001)
    _stack(data, theta)
    args = ["ct", "--sinogram", "stack.h5", "--slices", "0:3", "--size", "48", "-o", "v.tif", "--method", "cg",
            "--noise-sigma", "0.05", "--report", "r.json", "--json"]
    code, out, err = edn(monkeypatch, capsys, *args, *(["--max-iter", cap] if cap else []))
    assert code == code_want, err
    report = json.loads(Path("r.json").read_text())
    summary = json.loads(out)
    per_slice = report["samples"]
    assert len(per_slice) == 3
    assert report["delta_reached"] is all(s["delta_reached"] for s in per_slice)
    for doc in (report, summary):
        assert doc["delta_reached"] is (doc["final_discrepancy"] <= doc["delta"])
        assert doc["final_discrepancy"] == pytest.approx(max(s["final_discrepancy"] for s in per_slice))
    assert ("δ reached" in err) is (code_want == 0)


# ----------------------------------------------------------------------------- flat fields (16)


@pytest.mark.parametrize("white, dark", [(0.0, 0.0), (5.0, 10.0)])
def test_unusable_flat_field_is_an_input_error(ctdir, monkeypatch, capsys, white, dark):
    with h5py.File("flat.h5", "w") as f:
        f["/exchange/data"] = np.full((6, 2, 9), 100, np.float32)
        f["/exchange/data_white"] = np.full((2, 2, 9), white, np.float32)
        f["/exchange/data_dark"] = np.full((2, 2, 9), dark, np.float32)
        f["/exchange/theta"] = np.linspace(0, 180, 6, endpoint=False)
    with pytest.raises(InputError, match="unusable flat field"):
        read_sinogram("flat.h5")
    code, _, err = edn(monkeypatch, capsys, "ct", "--sinogram", "flat.h5", "-o", "x.tif", "--delta", "1")
    assert code == 4 and "unusable flat field" in err and err.count("\n") == 1
    assert not Path("x.tif").exists()


def test_a_few_dead_flat_field_pixels_are_tolerated(tmp_path):
    white = np.full((1, 9), 1000, np.float32)
    white[0, :2] = 0  # two dead pixels of nine
    with h5py.File(tmp_path / "f.h5", "w") as f:
        f["/exchange/data"] = np.full((4, 9), 500, np.float32)
        f["/exchange/data_white"] = white
        f["/exchange/theta"] = np.linspace(0, 180, 4, endpoint=False)
    s = read_sinogram(tmp_path / "f.h5")
    assert s.normalised and np.isfinite(s.data).all()


# ----------------------------------------------------------------------------- baseline for ct (27)


def test_ct_baseline_without_weights_is_refused_up_front(ctdir, monkeypatch, capsys):
    monkeypatch.setenv("EDN_WEIGHTS_DIR", str(ctdir / "no-weights"))
    code, _, err = edn(monkeypatch, capsys, "ct", "--sinogram", "missing.h5", "-o", "x.tif", "--method", "baseline")
    assert code == 2 and "--weights" in err and "baseline-ct" in err
    from typer.testing import CliRunner

    from edncli.cli.main import app

    help_text = " ".join(CliRunner().invoke(app, ["ct", "--help"], env={"COLUMNS": "300"}).output.split())
    assert "baseline needs a --weights checkpoint" in help_text


# ----------------------------------------------------------------------------- kernels (18, 20)


@pytest.mark.parametrize("shape, want", [((1, 5), (1, 5)), ((5, 1), (5, 1)), ((1, 1, 3, 3), (3, 3)), ((3, 3, 1), (3, 3))])
def test_kernel_shapes(shape, want):
    k = check_kernel(np.ones(shape))
    assert tuple(k.shape) == want and float(k.sum()) == pytest.approx(1.0)


def test_kernel_1d_is_still_refused():
    with pytest.raises(UsageError, match="2D"):
        check_kernel(np.ones(5))


def test_row_kernel_file_deblurs_and_nan_kernel_is_an_input_error(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    _clean(tmp_path / "clean.png")
    np.save("k_row.npy", np.ones((1, 5)))
    code, _, err = edn(monkeypatch, capsys, "deblur", "--kernel", "k_row.npy", "clean.png", "-o", "x.tif", "--method", "gd",
                       "--max-iter", "3", "--delta", "0.5")
    assert code in (0, 3), err
    np.save("k_nan.npy", np.array([[1.0, np.nan], [1.0, 1.0]]))
    code, _, err = edn(monkeypatch, capsys, "deblur", "--kernel", "k_nan.npy", "clean.png", "-o", "y.tif", "--method", "gd")
    assert code == 4 and "NaN" in err and err.count("\n") == 1
    assert not Path("y.tif").exists()


# ----------------------------------------------------------------------------- SR scale (21)


def test_scale_larger_than_the_image(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    Image.fromarray(np.zeros((64, 64), np.uint8)).save("small.png")
    code, _, err = edn(monkeypatch, capsys, "simulate", "sr", "--scale", "128", "small.png", "-o", "x.tif")
    assert code == 2 and "smaller than --scale 128" in err and "0x0" not in err


# ----------------------------------------------------------------------------- --version, Click errors (17, 23)


def test_version_alone(monkeypatch, capsys):
    from edncli import __version__

    code, out, err = edn(monkeypatch, capsys, "--version")
    assert code == 0, err
    assert out.strip() == f"edn {__version__}"


@pytest.mark.parametrize(
    "args, needle",
    [
        (["sr", "--scale", "2.5", "x.png"], "'--scale'"),
        (["sr", "--bogus", "x.png"], "--bogus"),
        (["nosuchcmd"], "nosuchcmd"),
        (["sr"], "Missing argument"),
    ],
)
def test_click_usage_errors_are_one_line(monkeypatch, capsys, args, needle):
    code, out, err = edn(monkeypatch, capsys, *args)
    assert code == 2
    assert err.count("\n") == 1 and err.startswith("edn: error: ") and needle in err and "--help" in err
    assert out == ""


def test_bare_command_group_still_shows_help(monkeypatch, capsys):
    code, out, err = edn(monkeypatch, capsys, "sudoku")
    assert code == 2 and "solve" in out + err and "Usage" in out + err


# ----------------------------------------------------------------------------- weights list --json (25)


def test_weights_list_json_is_an_array_as_its_help_says(monkeypatch, capsys):
    code, out, _ = edn(monkeypatch, capsys, "weights", "list", "--json")
    assert code == 0 and isinstance(json.loads(out), list)
    from typer.testing import CliRunner

    from edncli.cli.main import app

    help_text = " ".join(CliRunner().invoke(app, ["weights", "list", "--help"], env={"COLUMNS": "300"}).output.split())
    assert "JSON array" in help_text and "One JSON object per checkpoint" not in help_text


def test_sinogram_from_stdin_is_a_usage_error(ctdir, monkeypatch, capsys):
    code, _, err = edn(monkeypatch, capsys, "ct", "--sinogram", "-", "-o", "x.tif", "--angles", "60", "--size", "48")
    assert code == 2 and "not stdin" in err and len(err.strip().splitlines()) == 1, err
    assert not Path("x.tif").exists()


# ----------------------------------------------------------------------------- fan-beam options on parallel beam


def test_fan_distances_with_parallel_beam_are_a_usage_error(ctdir, monkeypatch, capsys):
    # they used to be ignored silently: a user who forgot --beam fan got a parallel-beam result
    pytest.importorskip("astra")
    _sinogram(monkeypatch, capsys)
    for cmd in (["ct", "--sinogram", "sino.npy", "--angles", "60", "--size", "48", "-o", "x.tif"],
                ["simulate", "ct", "--angles", "60", "phantom.png", "-o", "s2.h5"]):
        for extra in (["--source-origin", "500"], ["--origin-detector", "100"]):
            code, _, err = edn(monkeypatch, capsys, *cmd, *extra)
            assert code == 2 and err.count("\n") == 1 and "are for --beam fan" in err, err
    assert not Path("x.tif").exists() and not Path("s2.h5").exists()


@pytest.mark.parametrize("geometry", [["--detector-spacing", "0.01"],
                                      ["--beam", "fan", "--source-origin", "1", "--origin-detector", "50"]])
def test_a_default_size_below_two_pixels_names_the_rule_not_a_size_option_never_given(ctdir, monkeypatch, capsys,
                                                                                         geometry):
    _sinogram(monkeypatch, capsys)
    code, _, err = edn(monkeypatch, capsys, "ct", "--sinogram", "sino.npy", "--angles", "60", *geometry, "-o", "x.tif")
    assert code == 2, err
    assert err.startswith("edn: error: the default reconstruction size, 68 detectors") and "give --size N" in err
    assert err.count("\n") == 1 and not Path("x.tif").exists()
    code, _, err = edn(monkeypatch, capsys, "ct", "--sinogram", "sino.npy", "--angles", "60", "--size", "1", "-o", "x.tif")
    assert code == 2 and "--size must be >= 2, got 1" in err
