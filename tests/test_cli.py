"""The CLI as a user runs it: end-to-end runs, exit codes, bad input, no partial outputs."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import tifffile
from PIL import Image

from edncli.cli.main import run


def edn(monkeypatch, capsys, *args):
    """Run ``edn ARGS`` in-process; returns (exit code, stdout, stderr)."""
    monkeypatch.setattr(sys, "argv", ["edn", *map(str, args)])
    with pytest.raises(SystemExit) as exc:
        run()
    out, err = capsys.readouterr()
    return exc.value.code, out, err


def _clean(path: Path, n=64, seed=0):
    gen = np.random.default_rng(seed)
    small = gen.random((n // 8, n // 8))
    img = np.kron(small, np.ones((8, 8)))
    from scipy.ndimage import gaussian_filter

    img = gaussian_filter(img, 2.0)
    Image.fromarray(np.round(img * 255).astype(np.uint8)).save(path)
    return path


@pytest.fixture
def workdir(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    _clean(tmp_path / "clean.png")
    return tmp_path


def test_help_is_fast_and_lazy():
    code = "import sys; from edncli.cli.main import app; print('torch' in sys.modules, 'astra' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    assert out == ["False", "False"]


def test_sr_end_to_end_with_report_and_plot(workdir, monkeypatch, capsys):
    code, _, err = edn(monkeypatch, capsys, "simulate", "sr", "--scale", "4", "--noise-sigma", "0.01", "--seed", "0", "clean.png", "-o", "lr.tif")
    assert code == 0, err
    assert tifffile.imread("lr.tif").shape == (16, 16)
    code, out, err = edn(
        monkeypatch, capsys, "sr", "--scale", "4", "lr.tif", "-o", "hr.png", "--method", "tv", "--noise-sigma", "0.01",
        "--report", "hr.json", "--plot", "hr.png.plot.png", "--reference", "clean.png", "--json",
    )
    assert code == 0, err
    report = json.loads(Path("hr.json").read_text())
    for key in ("delta", "final_discrepancy", "delta_reached", "iterations", "energy_monotone", "max_energy_increase",
                "method", "device", "checkpoint", "versions", "elapsed_s", "trace"):
        assert key in report
    assert report["delta_reached"] is True and report["final_discrepancy"] <= report["delta"] * (1 + 1e-9)
    assert report["energy_monotone"] is True
    row = report["trace"][0]
    for key in ("iter", "energy", "discrepancy", "grad_norm", "step", "backtracks", "time_s", "psnr", "ssim"):
        assert key in row
    assert Image.open("hr.png").size == (64, 64) and Image.open("hr.png").mode.startswith("I")
    assert Path("hr.png.plot.png").stat().st_size > 1000
    assert json.loads(out)["delta_reached"] is True
    # tv chose α by the discrepancy principle: the search's solves are counted apart, and said
    searched = report["search_iterations"]
    assert len(searched) == 1 and searched[0] >= sum(e["iterations"][0] for e in report["alpha_search"]) > 0
    assert f"+{searched[0]} in the α search" in err


def test_reconstruct_alias_and_deblur(workdir, monkeypatch, capsys):
    assert edn(monkeypatch, capsys, "simulate", "deblur", "clean.png", "-o", "blurred.tif", "--kernel-sigma", "1.6", "--kernel-size", "25")[0] == 0
    code, _, err = edn(monkeypatch, capsys, "reconstruct", "deblur", "--kernel-sigma", "1.6", "--kernel-size", "25", "blurred.tif",
                       "-o", "sharp.tif", "--method", "gd", "--noise-sigma", "0.01", "--tau", "1.05")
    assert code == 0, err
    assert tifffile.imread("sharp.tif").dtype == np.float32


def test_cap_without_delta_exits_3_and_still_writes(workdir, monkeypatch, capsys):
    edn(monkeypatch, capsys, "simulate", "deblur", "clean.png", "-o", "b.tif")
    code, _, err = edn(monkeypatch, capsys, "deblur", "--kernel-sigma", "1.6", "b.tif", "-o", "s.tif", "--delta", "1e-6",
                       "--max-iter", "3", "--report", "s.json")
    assert code == 3
    assert Path("s.tif").exists()
    assert json.loads(Path("s.json").read_text())["delta_reached"] is False
    assert "NOT reached" in err


def test_folder_of_inputs(workdir, monkeypatch, capsys):
    os.mkdir("in")
    for i in range(2):
        edn(monkeypatch, capsys, "simulate", "sr", "--scale", "2", "clean.png", "-o", f"in/img{i}.tif", "--seed", i)
    code, _, err = edn(monkeypatch, capsys, "sr", "--scale", "2", "in", "--output-dir", "out", "--report", "reports", "--noise-sigma", "0.01", "--method", "gd")
    assert code == 0, err
    assert sorted(os.listdir("out")) == ["img0.tif", "img1.tif"]
    assert sorted(os.listdir("reports")) == ["img0.json", "img1.json"]


@pytest.mark.parametrize(
    "args, code, needle",
    [
        (["sr", "--scale", "1", "clean.png", "-o", "x.png"], 2, "--scale"),
        (["sr", "--scale", "4", "missing.png", "-o", "x.png"], 4, "no such file"),
        (["sr", "--scale", "4", "clean.png", "-o", "x.png", "--delta", "-1"], 2, "--delta"),
        (["sr", "--scale", "4", "clean.png", "-o", "x.png", "--delta", "0"], 2, "--delta"),
        (["sr", "--scale", "4", "clean.png", "-o", "x.png", "--device", "cuda:7"], 2, "--device"),
        (["sr", "--scale", "4", "clean.png", "-o", "x.png", "--method", "magic"], 2, "--method"),
        (["sr", "--scale", "4", "clean.png", "-o", "x.bmp"], 2, "output"),
        (["sr", "--scale", "4", "nan.npy", "-o", "x.png"], 4, "NaN"),
        (["sr", "--scale", "4", "garbage.png", "-o", "x.png"], 4, "not a readable image"),
        (["deblur", "clean.png", "-o", "x.png"], 2, "--kernel-sigma"),
        (["deblur", "clean.png", "-o", "x.png", "--kernel", "k3d.npy"], 2, "2D"),
        (["deblur", "clean.png", "-o", "x.png", "--kernel", "kzero.npy"], 2, "positive"),
        (["sr", "--scale", "4", "clean.png"], 2, "-o"),
    ],
)
def test_bad_input_is_one_line_and_nonzero(workdir, monkeypatch, capsys, args, code, needle):
    np.save("nan.npy", np.full((8, 8), np.nan, dtype=np.float32))
    Path("garbage.png").write_bytes(b"not an image at all")
    np.save("k3d.npy", np.ones((3, 3, 3)))
    np.save("kzero.npy", np.zeros((3, 3)))
    got, out, err = edn(monkeypatch, capsys, *args)
    assert got == code, err
    assert needle in err
    assert "Traceback" not in err
    assert not Path("x.png").exists()
    if code != 2 or "Usage" not in err:
        assert len(err.strip().splitlines()) == 1


def test_no_overwrite_without_force(workdir, monkeypatch, capsys):
    Path("hr.png").write_bytes(b"precious")
    code, _, err = edn(monkeypatch, capsys, "sr", "--scale", "4", "clean.png", "-o", "hr.png")
    assert code == 2 and "--force" in err
    assert Path("hr.png").read_bytes() == b"precious"
    code, _, err = edn(monkeypatch, capsys, "sr", "--scale", "4", "clean.png", "-o", "hr.png", "--force", "--noise-sigma", "0.01")
    assert code == 0, err
    assert Path("hr.png").read_bytes() != b"precious"
    assert not [p for p in os.listdir(".") if p.endswith(".tmp")]


def test_stdin_to_stdout_pipeline(workdir):
    exe = [sys.executable, "-m", "edncli"]
    lr = subprocess.run(exe + ["simulate", "sr", "--scale", "4", "-", "-o", "-"], input=Path("clean.png").read_bytes(),
                        capture_output=True, check=True).stdout
    assert lr.startswith(b"\x89PNG")
    hr = subprocess.run(exe + ["sr", "--scale", "4", "-", "-o", "-", "--quiet"], input=lr, capture_output=True)
    assert hr.returncode == 0, hr.stderr.decode()
    assert hr.stdout.startswith(b"\x89PNG")
    Path("hr.png").write_bytes(hr.stdout)
    assert Image.open("hr.png").size == (64, 64)


def test_every_command_has_help():
    from edncli.cli.main import app
    from typer.main import get_command

    root = get_command(app)

    def walk(cmd, path):
        yield path, cmd
        for name, sub in getattr(cmd, "commands", {}).items():
            yield from walk(sub, path + [name])

    for path, cmd in walk(root, []):
        assert (cmd.help or "").strip(), f"edn {' '.join(path)} has no help text"


def test_readme_documents_every_top_level_command_and_exit_code():
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    from edncli.cli.main import app
    from typer.main import get_command

    for name in get_command(app).commands:
        assert f"edn {name}" in readme, f"README does not mention `edn {name}`"
    for code in ("0", "2", "3", "4", "130"):
        assert f"| {code} " in readme


def _phantom(path: Path, n=48):
    yy, xx = np.mgrid[-1 : 1 : n * 1j, -1 : 1 : n * 1j]
    img = 0.8 * ((xx / 0.8) ** 2 + (yy / 0.6) ** 2 <= 1) + 0.2 * (((xx - 0.2) / 0.2) ** 2 + (yy / 0.3) ** 2 <= 1)
    Image.fromarray(np.round(np.clip(img, 0, 1) * 255).astype(np.uint8)).save(path)


def test_ct_simulate_and_reconstruct(workdir, monkeypatch, capsys, tmp_path):
    monkeypatch.setenv("EDN_CACHE_DIR", str(tmp_path / "cache"))
    _phantom(workdir / "phantom.png")
    code, _, err = edn(monkeypatch, capsys, "simulate", "ct", "--angles", "60", "--noise-sigma", "0.05", "phantom.png", "-o", "sino.h5")
    assert code == 0, err
    code, _, err = edn(monkeypatch, capsys, "reconstruct", "ct", "--sinogram", "sino.h5", "--size", "48", "-o", "slice.tif",
                       "--method", "gd", "--noise-sigma", "0.05", "--tau", "1.02", "--report", "ct.json", "--reference", "phantom.png")
    assert code == 0, err
    report = json.loads(Path("ct.json").read_text())
    assert report["delta_reached"] and report["energy_monotone"]
    assert report["center_rule"] == "auto" and abs(report["center"] - (68 - 1) / 2) < 1.0
    assert report["geometry"]["beam"] == "parallel"
    assert report["trace"][-1]["psnr"] > 20
    assert tifffile.imread("slice.tif").shape == (48, 48)


def test_ct_without_angles_fails_rather_than_guesses(workdir, monkeypatch, capsys):
    np.save("sino.npy", np.ones((30, 68), dtype=np.float32))
    code, _, err = edn(monkeypatch, capsys, "ct", "--sinogram", "sino.npy", "-o", "x.tif")
    assert code == 2 and "angles" in err
    code, _, err = edn(monkeypatch, capsys, "ct", "--sinogram", "sino.npy", "-o", "x.tif", "--angles", "30", "--size", "48",
                       "--beam", "fan")
    assert code == 2 and "source" in err
    assert not Path("x.tif").exists()


def test_default_method_is_edn_with_the_shipped_checkpoint(workdir, monkeypatch, capsys):
    edn(monkeypatch, capsys, "simulate", "sr", "--scale", "4", "clean.png", "-o", "lr.tif")
    code, _, err = edn(monkeypatch, capsys, "sr", "--scale", "4", "lr.tif", "-o", "hr.tif", "--noise-sigma", "0.01", "--report", "r.json")
    assert code == 0, err
    report = json.loads(Path("r.json").read_text())
    assert report["method"] == "edn" and report["checkpoint"]["name"] == "edn-sr-x4"
    assert report["energy_monotone"] and report["delta_reached"]
    code, _, err = edn(monkeypatch, capsys, "sr", "--scale", "2", "lr.tif", "-o", "hr2.tif")
    assert code == 4 and "x4" in err and not Path("hr2.tif").exists()
