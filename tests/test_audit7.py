"""Seventh audit: CT geometry and real-scan findings of an independent check against astra and
numpy. Each test failed on the code before its fix."""

from __future__ import annotations

import json
from pathlib import Path

import h5py
import numpy as np
import pytest

from edncli.errors import UsageError
from edncli.io.sinograms import estimate_center, read_sinogram, write_sinogram

from .test_audit3_ct import _one_line, _shifted_sinogram
from .test_cli import edn
from .test_ct_cli_errors import ctdir  # noqa: F401 - fixture

pytest.importorskip("astra")

WALNUT = Path(__file__).resolve().parents[2] / "shared" / "data" / "walnut"


def _file_with_theta(path: str, n_angles: int = 45) -> tuple[np.ndarray, np.ndarray]:
    """A DXchange file whose 45 angles are not equally spaced (so --angles N would be another scan)."""
    import torch
    from PIL import Image

    from edncli.operators.tomography import CTGeometry, simulate_ct

    gen = np.random.default_rng(0)
    theta = np.sort(np.linspace(0, np.pi, n_angles, endpoint=False) + gen.uniform(0, 0.03, n_angles))
    _, geom = _shifted_sinogram(0.0, n_angles=n_angles)  # writes phantom.png
    img = np.asarray(Image.open("phantom.png"), dtype=np.float32) / 255
    g = CTGeometry(geom.size, theta, geom.detectors, center=geom.center)
    sino = simulate_ct(torch.from_numpy(img)[None], g)[0].numpy()
    write_sinogram(path, sino, theta)
    return sino, theta


def test_angles_option_does_not_silently_replace_the_files_angles(ctdir, monkeypatch, capsys):
    # was: --angles 45 quietly replaced 45 irregular angles of /exchange/theta by equispaced
    # ones: a wrong geometry, δ out of reach (exit 3) and no warning
    _file_with_theta("scan.h5")
    code, _, err = edn(monkeypatch, capsys, "ct", "--sinogram", "scan.h5", "--angles", "45", "--size", "48", "-o", "x.tif",
                       "--delta", "1")
    assert code == 2 and _one_line(err), err
    assert "has its own 45 angles in /exchange/theta" in err and "--angle-file" in err, err
    assert not Path("x.tif").exists()


def test_an_angle_file_replacing_the_files_angles_is_a_warning(ctdir, monkeypatch, capsys):
    _, theta = _file_with_theta("scan.h5")
    np.savetxt("angles.txt", np.rad2deg(theta))
    code, _, err = edn(monkeypatch, capsys, "ct", "--sinogram", "scan.h5", "--angle-file", "angles.txt", "--size", "48",
                       "-o", "x.tif", "--delta", "1", "--max-iter", "2", "--report", "r.json")
    assert code in (0, 3), err
    assert "edn: warning: the angle file replaces the file's own 45 angles" in err, err
    assert any("replaces the file's own 45 angles" in w for w in json.loads(Path("r.json").read_text())["inputs"]["warnings"])
    s = read_sinogram("scan.h5")  # the file's own angles: no warning, and they are kept as provenance
    assert not s.warnings and np.allclose(s.file_theta, theta)


def test_a_half_turn_missing_its_last_frame_still_gets_its_centre(ctdir, monkeypatch, capsys):
    # was: 0..178° in 1° steps counts as >= 180° for the CLI (so --center defaults to auto), but
    # the estimator paired only angles within 1.01 steps of opposite: exit 2, "no projection pairs"
    sino, geom = _shifted_sinogram(2.5, n_angles=180)
    theta, sino = geom.angles[:-1], sino[:-1]
    assert abs(estimate_center(sino, theta) - geom.center) < 0.1
    write_sinogram("short.h5", sino, theta)
    code, _, err = edn(monkeypatch, capsys, "ct", "--sinogram", "short.h5", "--size", "48", "-o", "x.tif", "--delta", "1",
                       "--max-iter", "2", "--report", "r.json")
    assert code in (0, 3), err
    report = json.loads(Path("r.json").read_text())
    assert report["center_rule"] == "auto" and abs(report["center"] - geom.center) < 0.1


def test_no_opposite_pairs_names_the_center_option():
    with pytest.raises(UsageError, match=r"--center N .* or --center middle"):
        estimate_center(np.ones((10, 8)), np.linspace(0, np.pi / 2, 10))


def test_reverse_detector_reconstructs_a_reversed_scan_as_the_original(ctdir, monkeypatch, capsys):
    # was: no way from the CLI to read a sinogram whose detector runs the other way (the walnut's)
    sino, geom = _shifted_sinogram(2.0)
    np.save("plain.npy", sino)
    np.save("reversed.npy", sino[:, ::-1].copy())
    common = ["--angles", "60", "--size", "48", "--method", "gd", "--max-iter", "3", "--delta", "0.001"]
    code, _, err = edn(monkeypatch, capsys, "ct", "--sinogram", "plain.npy", *common, "--center", str(geom.center), "-o", "a.npy")
    assert code == 3, err
    code, _, err = edn(monkeypatch, capsys, "ct", "--sinogram", "reversed.npy", *common, "--reverse-detector",
                       "--center", str(geom.center), "-o", "b.npy", "--report", "b.json")
    assert code == 3, err
    np.testing.assert_allclose(np.load("b.npy"), np.load("a.npy"), atol=1e-6)
    assert "detector reversed (--reverse-detector)" in json.loads(Path("b.json").read_text())["inputs"]["notes"]


@pytest.mark.skipif(not (WALNUT / "walnut_sinogram.png").is_file(), reason="walnut data not present")
def test_the_readme_walnut_command_gives_the_reference_orientation(ctdir, monkeypatch, capsys):
    # was: following the README/MANIFEST from the CLI gave a mirrored or scrambled walnut
    from PIL import Image

    np.savetxt("walnut_angles.txt", np.arange(180, -178, -3))  # `seq 180 -3 -177`
    code, _, err = edn(monkeypatch, capsys, "ct", "--sinogram", WALNUT / "walnut_sinogram.png", "--transpose",
                       "--reverse-detector", "--angle-file", "walnut_angles.txt", "--beam", "fan", "--source-origin",
                       "857.14", "--origin-detector", "1480.52", "--detector-spacing", "2.7273", "--center", "164.27",
                       "-o", "walnut.npy", "--max-iter", "4")
    assert code in (0, 3), err
    x = np.load("walnut.npy").astype(np.float64)
    ref = np.asarray(Image.open(WALNUT / "walnut.png"), dtype=np.float64)

    def fit_psnr(a):  # PSNR after the best scale and offset (the sinogram's scale is undocumented)
        design = np.stack([a.ravel(), np.ones(a.size)], 1)
        coef = np.linalg.lstsq(design, ref.ravel(), rcond=None)[0]
        return 10 * np.log10(np.ptp(ref) ** 2 / np.mean((design @ coef - ref.ravel()) ** 2))

    as_is = fit_psnr(x)
    others = [fit_psnr(v) for v in (x[::-1], x[:, ::-1], x[::-1, ::-1], x.T, np.rot90(x), np.rot90(x, 3))]
    assert as_is > 20 and as_is > max(others) + 5, (as_is, others)


def test_h5_without_theta_keeps_file_theta_none(ctdir):
    sino, _ = _shifted_sinogram(0.0)
    with h5py.File("bare.h5", "w") as f:
        f["/exchange/data"] = sino
    s = read_sinogram("bare.h5", theta=np.linspace(0, np.pi, 60, endpoint=False))
    assert s.file_theta is None and not s.warnings


# ------------------------------------------------------------------ maths audit


def test_tv_alpha_search_on_ct_lands_in_the_band(ctdir):
    # was: from FBP the first search solve (100 iterations, α = 2e-3) ended above δ while its
    # discrepancy was still falling; taken as disc(α) > δ, it capped α at two decades below the
    # discrepancy principle's: the result at 0.80 δ (0.56 δ on a 128² phantom, 12 dB lower PSNR)
    import math

    import torch
    from PIL import Image

    from edncli.operators.tomography import CTGeometry, make_ct_operator
    from edncli.solvers.methods import TV_DISC_RTOL, MethodOptions, Problem, solve
    from edncli.solvers.stopping import DeltaChoice

    root = Path(__file__).resolve().parents[1]
    img = np.asarray(Image.open(root / "examples" / "phantom.png").convert("L").resize((48, 48)), dtype=np.float32) / 255
    geom = CTGeometry(48, np.linspace(0, np.pi, 90, endpoint=False), 68)
    op = make_ct_operator(geom, backend="matrix")
    clean = op(torch.from_numpy(img)[None])
    f = clean + 0.01 * torch.randn(clean.shape, generator=torch.Generator().manual_seed(0))
    delta = 0.01 * math.sqrt(f[0].numel())
    res = solve(Problem(op, f, op.fbp(f), DeltaChoice(delta, "given")), "tv", MethodOptions())
    disc = res.samples[0].final_discrepancy
    assert (1 - TV_DISC_RTOL) * delta <= disc <= delta, (disc / delta, res.extra["alpha"])
    assert any(any(e["continued"]) for e in res.extra["alpha_search"])


def test_delta_below_the_float32_floor_is_not_reported_as_reached(tmp_path):
    # was: the δ test read the residual moved in place (r + τ A d), which drifts from A u - f by
    # ~1e-7 ||f||: with δ = 1e-6 a run reported 3.9e-8 and δ reached (exit 0) where
    # ||A u - f|| of its output was 1.7e-6
    import torch

    from edncli.operators.downsample import AveragePool
    from edncli.solvers.methods import MethodOptions, Problem, solve
    from edncli.solvers.stopping import DeltaChoice

    gen = torch.Generator().manual_seed(0)
    op = AveragePool((128, 128), 4)
    f = op(torch.rand((1, 128, 128), generator=gen)) + 0.01 * torch.randn((1, 32, 32), generator=gen)
    for method in ("cg", "gd"):
        res = solve(Problem(op, f, torch.zeros((1, 128, 128)), DeltaChoice(1e-6, "given")), method, MethodOptions())
        true = (op(res.u) - f).double().norm().item()
        s = res.samples[0]
        assert s.final_discrepancy == pytest.approx(true, rel=1e-3), method
        assert s.delta_reached == (true <= 1e-6), (method, s.final_discrepancy, true)
        # a batch goes through the general loop: the same verdict on A u - f itself
        res2 = solve(Problem(op, f.repeat(2, 1, 1), torch.zeros((2, 128, 128)), DeltaChoice(1e-6, "given")), method,
                     MethodOptions())
        true2 = (op(res2.u) - f.repeat(2, 1, 1)).double().flatten(1).norm(dim=1)
        for v, t in zip(res2.samples, true2.tolist()):
            assert v.final_discrepancy == pytest.approx(t, rel=1e-3) and v.delta_reached == (t <= 1e-6), method


# ------------------------------------------------------------------ sudoku audit


def test_infeasible_message_claims_no_false_bound():
    # was: "energy >= 1 > 0 for every u": the number was E at the start, and 300 gd steps reach 0.098
    from .test_sudoku_solve import invoke

    bad = "557000325000900100040528090870004600609307050000100008100430067003006240020759030"
    res, code = invoke(["solve", bad])
    assert code == 2
    msg = str(res.exception)
    assert "infeasible" in msg and "energy >=" not in msg and "the energy is > 0 for every u" in msg, msg


@pytest.mark.parametrize("args, option", [
    (["--method", "gd", "--weights", "nowhere.safetensors"], "--weights"),
    (["--method", "baseline", "--iterations", "500"], "--iterations"),
])
def test_sudoku_solve_refuses_options_its_method_does_not_read(args, option):
    # was: run and exit 0 (gd ignored a checkpoint that does not exist; baseline forced 1 iteration)
    from .test_sudoku_solve import EASY, invoke

    res, code = invoke(["solve", EASY, *args])
    assert code == 2 and isinstance(res.exception, UsageError) and option in str(res.exception), res.output


@pytest.mark.parametrize("args, option", [
    (["--methods", "gd", "--edn-iterations", "5"], "--edn-iterations"),
    (["--methods", "gd", "--weights", "nope"], "--weights"),
    (["--methods", "gd,edn", "--baseline-weights", "nope"], "--baseline-weights"),
    (["--methods", "edn", "--gd-iterations", "10"], "--gd-iterations"),
])
def test_sudoku_eval_refuses_options_of_methods_it_does_not_run(tmp_path, args, option):
    from .test_sudoku_solve import EASY, invoke

    csv = tmp_path / "p.csv"
    csv.write_text("puzzle,solution\n" + EASY + "," + "5" * 81 + "\n")
    res, code = invoke(["eval", "--puzzles", str(csv), *args])
    assert code == 2 and option in str(res.exception), res.output


def test_simplex_projection_of_huge_entries_is_on_the_simplex():
    # was: float32 rows with an entry above ~2^24 projected to all zeros (sum - 1 lost the 1)
    import torch

    from edncli.sudoku.sets import project_simplex

    for dtype in (torch.float32, torch.float64):
        x = torch.tensor([[3e7, 1.0, 0.0], [1e20, -5.0, 2.0], [0.2, 0.3, 0.1]], dtype=dtype)
        y = project_simplex(x)
        assert torch.allclose(y.sum(-1), torch.ones(3, dtype=dtype)) and bool((y >= 0).all())
        assert y[0].tolist() == [1.0, 0.0, 0.0] and y[1].tolist() == [1.0, 0.0, 0.0]
        want = torch.tensor([0.3333333, 0.4333333, 0.2333333], dtype=dtype)
        assert torch.allclose(y[2], want, atol=1e-6)


def test_baseline_is_not_reported_energy_monotone():
    # was: "energy monotone: yes" for one network pass, where nothing was checked
    from .test_sudoku_solve import EASY, invoke

    pytest.importorskip("safetensors")
    res, code = invoke(["solve", EASY, "--method", "baseline"])
    assert code in (0, 3), res.output
    assert "energy monotone" not in res.output, res.output
    res, code = invoke(["solve", EASY, "--method", "gd", "--iterations", "3"])
    assert "energy monotone: yes" in res.output, res.output


# ------------------------------------------------------------------ denoiser-methods audit


def _blurred(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    # a bright square on black: the deblurred result overshoots [0, 1] at its edges
    img = np.zeros((48, 48), np.float32)
    img[12:36, 12:36] = 1.0
    from PIL import Image

    Image.fromarray((img * 255).astype(np.uint8)).save("sq.png")
    code, _, err = edn(monkeypatch, capsys, "simulate", "deblur", "--kernel-sigma", "1.6", "--noise-sigma", "0.01",
                       "--seed", "1", "sq.png", "-o", "b.tif")
    assert code == 0, err


def test_a_png_that_clips_the_result_past_delta_is_not_reported_as_reaching_it(tmp_path, monkeypatch, capsys):
    # was: exit 0 and "δ reached" while the written PNG (clipped to [0, 1]) had ||Au-f|| 1.8 δ
    _blurred(tmp_path, monkeypatch, capsys)
    code, _, err = edn(monkeypatch, capsys, "deblur", "--kernel-sigma", "1.6", "b.tif", "--method", "cg", "-o", "x.tif",
                       "--report", "x.json")
    assert code == 0, err
    u = __import__("tifffile").imread("x.tif")
    assert u.min() < 0 or u.max() > 1  # the test needs a result outside [0, 1]
    code, _, err = edn(monkeypatch, capsys, "deblur", "--kernel-sigma", "1.6", "b.tif", "--method", "cg", "-o", "x.png",
                       "--report", "p.json")
    doc = json.loads(Path("p.json").read_text())
    out = doc["output"]
    assert out["format"] == "png" and out["clipped"] > 0
    # the written image's discrepancy, recomputed from the file
    import torch
    from PIL import Image

    from edncli.operators.blur import Blur, gaussian_kernel

    png = np.asarray(Image.open("x.png"), dtype=np.float64) / 65535
    f = __import__("tifffile").imread("b.tif").astype(np.float64)
    op = Blur((48, 48), gaussian_kernel(1.6, 25), "reflect")
    true = float((op(torch.from_numpy(png).float()[None]) - torch.from_numpy(f).float()[None]).double().norm())
    assert out["discrepancy"][0] == pytest.approx(true, rel=1e-4)
    assert doc["delta_reached"] and true > doc["delta"]  # the solver's result met δ, the file does not
    assert code == 3 and "edn: warning:" in err and "written image" in err and out["delta_reached"] is False, err


def test_min_iter_above_the_presets_cap_raises_the_cap(tmp_path, monkeypatch, capsys):
    # was: --min-iter 100 for pnp ran the preset's 75 iterations, exit 0, with settings min 100 > max 75
    _blurred(tmp_path, monkeypatch, capsys)
    code, _, err = edn(monkeypatch, capsys, "deblur", "--kernel-sigma", "1.6", "b.tif", "--method", "pnp", "--min-iter", "90",
                       "-o", "x.tif", "--report", "r.json")
    assert code in (0, 3), err
    doc = json.loads(Path("r.json").read_text())
    assert doc["iterations"] >= 90 and doc["settings"]["max_iter"] >= doc["settings"]["min_iter"] == 90


@pytest.mark.parametrize("method", ["red", "pnp"])
def test_box_is_refused_where_it_changes_nothing(tmp_path, monkeypatch, capsys, method):
    # was: accepted and ignored (red and pnp project at every step)
    _blurred(tmp_path, monkeypatch, capsys)
    code, _, err = edn(monkeypatch, capsys, "deblur", "--kernel-sigma", "1.6", "b.tif", "--method", method, "--box",
                       "-o", "x.tif")
    assert code == 2 and _one_line(err) and "--box is for --method potential" in err and "already" in err, err
    assert not Path("x.tif").exists()
