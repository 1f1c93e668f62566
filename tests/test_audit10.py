"""Image and sinogram I/O audit 10: inputs read silently wrong, warnings that --quiet hid, and
messages that did not say what to do. Each test names the defect it guards against."""

from __future__ import annotations

import warnings
from pathlib import Path

import h5py
import numpy as np
import pytest
import tifffile
from PIL import Image

from edncli.errors import InputError, UsageError
from edncli.io.images import read_image
from edncli.io.sinograms import read_sinogram, write_sinogram

from .test_audit3_ct import _one_line, _shifted_sinogram
from .test_cli import edn
from .test_ct_cli_errors import ctdir  # noqa: F401 - fixture


@pytest.fixture
def here(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    return tmp_path


def _no_warnings(path, **kw):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        return read_image(path, **kw)[0]


# ------------------------------------------------------------------ layout of Pillow images


@pytest.mark.parametrize("height, mode", [(3, "RGB"), (4, "RGB"), (3, "RGBA"), (4, "RGBA")])
def test_a_colour_png_three_or_four_pixels_tall_is_read_as_hwc(here, height, mode):
    # was: a 4x16 RGB PNG read as channels-first, [3, 16, 3], exit 0
    rgb = np.random.default_rng(0).integers(0, 256, (height, 16, len(mode)), dtype=np.uint8)
    if mode == "RGBA":
        rgb[..., 3] = 255
    Image.fromarray(rgb, mode).save("small.png")
    arr = _no_warnings("small.png")
    assert arr.shape == (3, height, 16)
    np.testing.assert_allclose(arr, np.moveaxis(rgb[..., :3], -1, 0) / 255, atol=1e-7)


# ------------------------------------------------------------------ multi-page TIFF


def _pages(path: str, pages: list[np.ndarray]) -> None:
    for page in pages:
        tifffile.imwrite(path, page, append=True)  # one series per page, as scanners and ImageJ macros write


def test_a_multi_page_tiff_image_is_read_whole(here):
    # was: tifffile.imread's first series only, the other pages dropped without a word
    pages = [np.random.default_rng(i).random((8, 10)).astype(np.float32) for i in range(5)]
    _pages("pages.tif", pages)
    tifffile.imwrite("volume.tif", np.stack(pages))
    arr = _no_warnings("pages.tif")
    assert arr.shape == (5, 8, 10)
    np.testing.assert_array_equal(arr, np.stack(pages))
    np.testing.assert_array_equal(arr, _no_warnings("volume.tif"))  # as the one-series 3D TIFF reads


def test_tiff_pages_of_different_shapes_are_refused(here):
    _pages("mixed.tif", [np.zeros((8, 10), np.float32), np.zeros((6, 10), np.float32)])
    with pytest.raises(InputError, match="multi-page TIFF of 2 images of different shapes"):
        read_image("mixed.tif")


def test_a_multi_page_tiff_sinogram_is_refused(here):
    # was: its first page taken as the sinogram, exit 0
    _pages("sino.tif", [np.ones((12, 9), np.float32)] * 3)
    with pytest.raises(InputError, match=r"shape \(3, 12, 9\).*HDF5"):
        read_sinogram("sino.tif", theta=np.linspace(0, np.pi, 12, endpoint=False))


# ------------------------------------------------------------------ palette PNG sinogram


def test_a_gray_palette_png_sinogram_is_read_by_its_levels(here):
    # was: the palette indices read as the data
    rng = np.random.default_rng(1)
    indices = rng.integers(0, 256, (12, 9), dtype=np.uint8)
    grays = rng.permutation(256).astype(np.uint8)  # palette entry i is the gray level grays[i]
    im = Image.fromarray(indices, "L").convert("P")
    im.putpalette(np.repeat(grays, 3).tolist())
    im.save("pal.png")
    with Image.open("pal.png") as back:
        assert back.mode == "P"
    expected = grays[indices]
    assert not np.array_equal(indices, expected)  # the defect would show
    sino = read_sinogram("pal.png", theta=np.linspace(0, np.pi, 12, endpoint=False))
    np.testing.assert_array_equal(sino.data[0], expected.astype(np.float32))


def test_a_colour_palette_png_sinogram_is_refused(here):
    rgb = np.random.default_rng(2).integers(0, 256, (12, 9, 3), dtype=np.uint8)
    Image.fromarray(rgb, "RGB").quantize(colors=16).save("colour.png")
    with pytest.raises(InputError, match="colour palette"):
        read_sinogram("colour.png", theta=np.linspace(0, np.pi, 12, endpoint=False))


def test_a_sinogram_file_is_read_by_its_content_not_its_name(here):
    # was: a PNG named .tif went to tifffile and failed ("not a TIFF file")
    levels = np.arange(12 * 9, dtype=np.uint8).reshape(12, 9)
    Image.fromarray(levels).save("named.tif", format="PNG")
    sino = read_sinogram("named.tif", theta=np.linspace(0, np.pi, 12, endpoint=False))
    np.testing.assert_array_equal(sino.data[0], levels.astype(np.float32))


# ------------------------------------------------------------------ alpha and the fourth channel


def test_a_transparent_alpha_channel_is_dropped_with_a_warning(here):
    # was: dropped without a word
    rgba = np.random.default_rng(3).integers(0, 256, (8, 8, 4), dtype=np.uint8)
    Image.fromarray(rgba, "RGBA").save("t.png")
    with pytest.warns(UserWarning, match="alpha, not fully opaque"):
        arr, _ = read_image("t.png")
    assert arr.shape == (3, 8, 8)
    np.save("four.npy", np.random.default_rng(4).random((4, 8, 8)).astype(np.float32))
    with pytest.warns(UserWarning, match="4 channels read as RGBA"):
        read_image("four.npy")
    opaque = np.concatenate([np.zeros((3, 8, 8)), np.ones((1, 8, 8))]).astype(np.float32)
    np.save("opaque.npy", opaque)
    assert _no_warnings("opaque.npy").shape == (3, 8, 8)


# ------------------------------------------------------------------ --quiet keeps warnings


def test_quiet_keeps_warnings(ctdir, monkeypatch, capsys):
    # was: --quiet dropped "edn: warning: ..." lines with the summary (cli/common.py:say)
    sino, geom = _shifted_sinogram(0.0)
    with h5py.File("rad.h5", "w") as f:
        f["/exchange/data"] = sino
        f["/exchange/theta"] = geom.angles  # radians by mistake
    code, _, err = edn(monkeypatch, capsys, "ct", "--sinogram", "rad.h5", "--size", "48", "-o", "x.tif", "--delta", "1",
                       "--max-iter", "2", "-q")
    assert "edn: warning:" in err and "looks like radians" in err, err
    assert "iteration" not in err  # the summary line is what --quiet drops


# ------------------------------------------------------------------ simulate


def test_simulate_warns_when_a_png_clips_the_noise(here, monkeypatch, capsys):
    # was: the noise clipped to [0, 1] silently, so the measurement's σ was not the one asked for
    Image.fromarray(np.full((16, 16), 255, np.uint8)).save("white.png")
    code, _, err = edn(monkeypatch, capsys, "simulate", "sr", "white.png", "-o", "lr.png", "--noise-sigma", "0.05")
    assert code == 0 and "edn: warning: lr.png: the PNG clips" in err and ".tif" in err, err
    code, _, err = edn(monkeypatch, capsys, "simulate", "deblur", "white.png", "-o", "b.tif", "--kernel-size", "5")
    assert code == 0 and "warning" not in err, err


def test_a_sinogram_write_failure_is_one_line_naming_the_target(here, monkeypatch, capsys):
    # was: h5py's two-line message naming the temporary file (e.g. on a full disk)
    def full_disk(*args, **kwargs):
        raise OSError("Unable to synchronously create dataset (file write failed: time = Mon, filename = "
                      "'/x/.sino.h5.abc.tmp', file descriptor = 5, errno = 28, error message = 'No space left on "
                      "device', buf = 0x1, total write size = 8)\nsecond line")

    monkeypatch.setattr(h5py, "File", full_disk)
    with pytest.raises(InputError) as exc:
        write_sinogram("sino.h5", np.ones((4, 5)), np.linspace(0, 1, 4))
    assert str(exc.value) == "sino.h5: cannot write the sinogram (No space left on device); nothing was written"
    assert not list(Path(".").iterdir())
    Image.fromarray(np.zeros((16, 16), np.uint8)).save("p.png")
    code, _, err = edn(monkeypatch, capsys, "simulate", "ct", "p.png", "-o", "sino.h5", "--angles", "8")
    assert code == 4 and _one_line(err) and ".tmp" not in err, err


# ------------------------------------------------------------------ messages


def test_a_kernel_too_large_says_what_to_change(here, monkeypatch, capsys):
    Image.fromarray(np.zeros((8, 8), np.uint8)).save("tiny.png")
    for boundary in ("reflect", "circular"):
        code, _, err = edn(monkeypatch, capsys, "simulate", "deblur", "tiny.png", "-o", f"{boundary}.tif",
                           "--boundary", boundary)
        assert code == 2 and _one_line(err) and "--kernel-size" in err and "--boundary zero" in err, err


def test_an_angle_count_mismatch_names_where_the_angles_came_from(here):
    with h5py.File("s.h5", "w") as f:
        f["/exchange/data"] = np.ones((12, 9), np.float32)
        f["/exchange/theta"] = np.linspace(0, 180, 10, endpoint=False)
    with pytest.raises(UsageError, match=r"/exchange/theta holds 10.*--angle-file"):
        read_sinogram("s.h5")
    np.savetxt("a.txt", np.linspace(0, 180, 7, endpoint=False))
    with pytest.raises(UsageError, match="angle file a.txt must list exactly 12"):
        read_sinogram("s.h5", angle_file="a.txt")


def test_a_missing_sinogram_dataset_lists_the_file_s_datasets(here):
    with h5py.File("s.h5", "w") as f:
        f["/exchange/proj"] = np.ones((12, 9), np.float32)
        f["/exchange/theta"] = np.linspace(0, 180, 12, endpoint=False)
    with pytest.raises(InputError, match=r"no dataset '/exchange/data' \(it holds /exchange/proj, /exchange/theta\)"):
        read_sinogram("s.h5")


def test_a_one_pixel_image_is_a_usage_error(here, monkeypatch, capsys):
    # was: exit 4 (input failure), while the README gives exit 2 for a shape that does not fit
    Image.fromarray(np.zeros((1, 1), np.uint8)).save("one.png")
    with pytest.raises(UsageError, match="at least 2x2"):
        read_image("one.png")
    code, _, err = edn(monkeypatch, capsys, "simulate", "sr", "one.png", "-o", "x.tif")
    assert code == 2 and _one_line(err), err


# ------------------------------------------------------------------ plots without a writable home


def test_a_plot_with_no_writable_home_is_silent(tmp_path):
    # was: matplotlib's two lines about MPLCONFIGDIR on stderr of every --plot run (exit 0)
    import os
    import subprocess
    import sys

    (tmp_path / "home").write_text("a file, so no folder can be made under it, even by root")
    env = {k: v for k, v in os.environ.items() if k not in ("MPLCONFIGDIR", "XDG_CONFIG_HOME", "XDG_CACHE_HOME")}
    env.update(HOME=str(tmp_path / "home"), TMPDIR=str(tmp_path))
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (16, 16), dtype=np.uint8)).save(tmp_path / "lr.png")
    cmd = [sys.executable, "-m", "edncli", "sr", "--method", "gd", "--scale", "4", "lr.png", "-o", "hr.tif",
           "--plot", "p.png", "--delta", "0.5", "-q"]
    done = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0 and done.stderr == "", done.stderr
    assert Image.open(tmp_path / "p.png").format == "PNG"
    assert (tmp_path / f"edn-matplotlib-{os.getuid()}").is_dir()  # kept: the font cache is built once


# ------------------------------------------------------------------ the verdict's numbers agree


def test_a_run_at_its_cap_reports_the_recomputed_discrepancy(here, monkeypatch, capsys):
    # was: at --max-iter the top-level final_discrepancy was the trace's in-place residual, not the
    # recomputed ||Au - f|| of samples[0]; with δ between the two, "δ reached" with final_discrepancy > δ
    import json

    import torch

    from edncli.solvers.trace import IterationRecord, SampleVerdict, SolveResult

    img = np.asarray(Image.open(Path(__file__).parents[1] / "examples" / "camera.png"), np.float32)[100:164, 100:164]
    tifffile.imwrite("gt.tif", img / 255)
    assert edn(monkeypatch, capsys, "simulate", "deblur", "--kernel-sigma", "1.6", "--seed", "1", "gt.tif", "-o",
               "b.tif")[0] == 0
    code, out, err = edn(monkeypatch, capsys, "deblur", "--kernel-sigma", "1.6", "b.tif", "-o", "c.tif", "--method",
                         "gd", "--noise-sigma", "0.01", "--max-iter", "5", "--report", "c.json", "--json")
    doc = json.loads(Path("c.json").read_text())
    assert doc["samples"][0]["stop_reason"] == "max_iter", doc["samples"]
    assert doc["final_discrepancy"] == doc["samples"][0]["final_discrepancy"]
    assert json.loads(out)["final_discrepancy"] == doc["final_discrepancy"]
    row = IterationRecord(iter=5, energy=1.0, discrepancy=0.8218370303983803, grad_norm=1.0, step=1.0, backtracks=0,
                          time_s=0.0, active=1)
    verdict = SampleVerdict(iterations=5, final_energy=1.0, final_discrepancy=0.8218369674493411, delta=0.821837,
                            delta_reached=True, max_energy_increase=0.0, energy_monotone=True, stop_reason="max_iter")
    result = SolveResult(u=torch.zeros(1, 2, 2), trace=[row], samples=[verdict], method="gd", elapsed_s=0.0)
    assert result.delta_reached and result.final_discrepancy <= 0.821837


def test_the_json_line_of_a_png_that_misses_delta_agrees_with_itself(here, monkeypatch, capsys):
    # was: {"delta_reached": false, "final_discrepancy": 0.631 <= "delta": 0.633}: the verdict was the
    # written PNG's, the discrepancy the result's
    import json

    from .test_audit7 import _blurred

    _blurred(here, monkeypatch, capsys)
    code, out, err = edn(monkeypatch, capsys, "deblur", "--kernel-sigma", "1.6", "b.tif", "--method", "cg", "-o",
                         "x.png", "--report", "p.json", "--json")
    line, doc = json.loads(out), json.loads(Path("p.json").read_text())
    assert code == 3 and doc["output"]["delta_reached"] is False, err
    assert line["delta_reached"] is False and line["final_discrepancy"] > line["delta"]
    assert line["final_discrepancy"] == doc["output"]["discrepancy"][0]
    assert line["result_discrepancy"] == doc["final_discrepancy"] <= doc["delta"]


def test_a_bad_omp_num_threads_is_one_edn_warning(tmp_path):
    # was: libgomp's own "Invalid value for environment variable OMP_NUM_THREADS" line
    import os
    import subprocess
    import sys

    Image.fromarray(np.zeros((16, 16), np.uint8)).save(tmp_path / "c.png")
    for value, warned in (("abc", True), ("0", True), ("2", False), ("2,1", False)):
        env = {**os.environ, "OMP_NUM_THREADS": value}
        done = subprocess.run([sys.executable, "-m", "edncli", "simulate", "sr", "c.png", "-o", "lr.tif", "--force"],
                              cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
        expected = (f"edn: warning: OMP_NUM_THREADS={value!r} is not a positive number of threads; ignored\n"
                    if warned else "")
        assert done.returncode == 0 and done.stderr == expected, (value, done.stderr)


# ------------------------------------------------------------------ folders of inputs


def test_a_folder_run_reads_every_format_a_single_file_run_reads(here, monkeypatch, capsys):
    # was: lr/zjpg.jpg skipped without a word in `edn sr lr --output-dir out` (exit 0, 1 of 2 done)
    Path("lr").mkdir()
    img = np.random.default_rng(5).integers(0, 256, (8, 8), dtype=np.uint8)
    Image.fromarray(img).save("lr/a.png")
    Image.fromarray(img).save("lr/z.jpg")
    Image.fromarray(img).save("lr/b.bmp")
    code, _, err = edn(monkeypatch, capsys, "sr", "--scale", "4", "lr", "--output-dir", "out", "--method", "gd",
                       "--delta", "1", "-q")
    assert code == 0, err
    assert sorted(q.name for q in Path("out").iterdir()) == ["a.png", "b.png", "z.png"]  # read-only formats: PNG


def test_a_broken_link_in_an_input_folder_is_an_error(here, monkeypatch, capsys):
    # was: skipped silently (q.is_file() is False for a dangling link)
    Path("lr").mkdir()
    Image.fromarray(np.zeros((8, 8), np.uint8)).save("lr/a.png")
    Path("lr/b.png").symlink_to(here / "gone.png")
    code, _, err = edn(monkeypatch, capsys, "sr", "--scale", "4", "lr", "--output-dir", "out", "--method", "gd",
                       "--delta", "1")
    assert code == 4 and _one_line(err) and "broken link" in err and "b.png" in err, err
    assert not Path("out").exists()


def test_ctrl_c_wrapped_by_an_import_is_an_interrupt(here, monkeypatch, capsys):
    # was: Ctrl-C during matplotlib's import reached edn as RuntimeError('Error calling __set_name__'),
    # which ended in a traceback and exit 1
    import edncli.io.reports as reports

    def interrupted(report):
        try:
            raise KeyboardInterrupt
        except KeyboardInterrupt as exc:
            raise RuntimeError("Error calling __set_name__ on '_Deprecated' instance") from exc

    monkeypatch.setattr(reports, "plot_bytes", interrupted)
    monkeypatch.setattr("edncli.cli.reconstruct.plot_bytes", interrupted, raising=False)
    Image.fromarray(np.zeros((8, 8), np.uint8)).save("lr.png")
    code, _, err = edn(monkeypatch, capsys, "sr", "--scale", "4", "lr.png", "-o", "hr.tif", "--method", "gd",
                       "--delta", "1", "--plot", "p.png")
    assert code == 130 and err == "edn: interrupted\n", err
    assert not Path("hr.tif").exists() and not Path("p.png").exists()


def test_red_energy_monotone_reports_every_rise_of_its_trace(here, monkeypatch, capsys):
    # was: red/pnp judged rises with the guaranteed solvers' in-place residual slack (eta ||r||), though
    # they recompute Au - f every step: rises of 4e-5 relative in the trace read "energy_monotone: true"
    import json

    from edncli.solvers.trace import MONOTONE_RTOL

    data = Path(__file__).parents[2] / "shared" / "data" / "set12" / "01.png"
    if not data.exists():
        pytest.skip("../shared/data/set12 not present")
    img = np.asarray(Image.open(data).convert("L"), np.float32)[:256, :240] / 255
    tifffile.imwrite("clean.tif", img)
    assert edn(monkeypatch, capsys, "simulate", "sr", "--scale", "4", "--noise-sigma", "0.01", "--seed", "0",
               "clean.tif", "-o", "lr.tif")[0] == 0
    edn(monkeypatch, capsys, "sr", "--scale", "4", "lr.tif", "-o", "hr.tif", "--method", "red", "--precision", "bf16",
        "--report", "r.json")
    doc = json.loads(Path("r.json").read_text())
    e = [r["energy"] for r in doc["trace"]]
    rose = any(b - a > MONOTONE_RTOL * abs(a) + 1e-12 for a, b in zip(e, e[1:]))
    assert doc["energy_monotone"] is (not rose), (doc["energy_monotone"], doc["max_energy_increase"])
