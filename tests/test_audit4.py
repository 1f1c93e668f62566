"""Audit findings of 2026-12-07: data float32 cannot hold, memory exhaustion, stdout in a folder
run, bad inputs inside a folder, gray+alpha PNGs and ambiguous array layouts.

Each test names the defect it guards against.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from edncli.io.values import MAX_SQUARED_NORM, float32_problem

from .test_cli import _clean, edn


@pytest.fixture
def workdir(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    _clean(tmp_path / "clean.png", n=32)
    return tmp_path


def _one_line(err: str) -> bool:
    lines = [line for line in err.splitlines() if line.strip()]
    return len(lines) == 1 and lines[0].startswith("edn: error:") and "Traceback" not in err


# ------------------------------------------------------------ data float32 cannot compute with
@settings(max_examples=80, deadline=None)
@given(st.floats(min_value=-300, max_value=300), st.integers(1, 40))
def test_accepted_data_have_a_finite_float32_energy(exponent, n):
    arr = np.full(n, 10.0**exponent)
    log_squared = np.log10(n) + 2 * exponent  # log10 ||arr||^2, computed without overflow
    if float32_problem(arr) is None:  # what is accepted computes without overflow, with margin
        with np.errstate(over="raise"):
            energy = 0.5 * float(np.sum(np.square(arr.astype(np.float32))))
        assert np.isfinite(energy) and log_squared + np.log10(4.0) <= np.log10(np.finfo(np.float32).max)
    else:  # and only data near float32's limit are refused
        assert log_squared > np.log10(MAX_SQUARED_NORM) - 1e-6


def test_float32_problem_names_nan_inf_and_size():
    assert "2 NaN/Inf" in float32_problem(np.array([1.0, np.nan, np.inf]))
    assert "rescale" in float32_problem(np.array([1e100]))
    assert float32_problem(np.zeros((3, 3))) is None and float32_problem(np.array([0.5, 1e12])) is None


@pytest.mark.parametrize("value", [1e100, 1e25])
@pytest.mark.parametrize(
    "cmd",
    [
        ["sr", "--scale", "4", "big.npy", "-o", "out.tif", "--method", "gd"],
        ["sr", "--scale", "4", "big.npy", "-o", "out.tif", "--method", "gd", "--delta", "1"],
        ["simulate", "sr", "--scale", "4", "big.npy", "-o", "out.tif"],
    ],
)
def test_data_beyond_float32_are_refused_as_input_errors(workdir, monkeypatch, capsys, value, cmd):
    # was: 1e100 (float64) became Inf after the NaN/Inf check: RuntimeWarnings, a misleading
    # "noise level is 0", or an Inf-filled output written with exit 0 / a NaN run with exit 3
    np.save("big.npy", np.random.default_rng(0).random((16, 16)) * value)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        code, out, err = edn(monkeypatch, capsys, *cmd)
    assert code == 4 and _one_line(err) and "big.npy" in err and "rescale" in err, err
    assert not Path("out.tif").exists()


def test_a_sinogram_beyond_float32_is_one_line_without_warnings(workdir, monkeypatch, capsys):
    s = np.random.default_rng(0).random((60, 91))
    s[3, 4] = 1e300
    np.save("s.npy", s)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        code, _, err = edn(monkeypatch, capsys, "ct", "--sinogram", "s.npy", "--angles", "60", "-o", "x.tif")
    assert code == 4 and _one_line(err) and "s.npy" in err and "rescale" in err, err
    assert not Path("x.tif").exists()


# ------------------------------------------------------------------------- host memory exhausted
def test_running_out_of_host_memory_is_one_line_exit_4(workdir, monkeypatch, capsys):
    # was: torch's "DefaultCPUAllocator: can't allocate memory" as a 50-line traceback, exit 1
    # (a 32² image x1e6 asks for a 4 PB output: refused by the allocator on any machine)
    code, _, err = edn(monkeypatch, capsys, "sr", "--scale", "1000000", "clean.png", "-o", "big.png", "--method", "gd",
                       "--delta", "1")
    assert code == 4 and _one_line(err) and "out of memory" in err and "GB was asked for" in err and "--scale" in err, err
    assert not Path("big.png").exists()


def test_cpu_oom_is_told_from_other_runtime_errors():
    from edncli.cli.main import cpu_oom_bytes

    text = "[enforce fail at alloc_cpu.cpp:127] DefaultCPUAllocator: can't allocate memory: you tried to allocate 80 bytes."
    assert cpu_oom_bytes(RuntimeError(text)) == 80
    assert cpu_oom_bytes(RuntimeError("DefaultCPUAllocator: can't allocate memory")) == 0
    assert cpu_oom_bytes(RuntimeError("shape mismatch")) is None


# ------------------------------------------------------------- '-' where one file cannot serve
@pytest.fixture
def folder(workdir):
    Path("in").mkdir()
    for name in ("a.png", "b.png"):
        Path("in", name).write_bytes(Path("clean.png").read_bytes())
    return workdir


@pytest.mark.parametrize(
    "extra, option",
    [
        (["--output-dir", "out", "--report", "-"], "--report -"),
        (["--output-dir", "out", "--plot", "-"], "--plot -"),
        (["--output-dir", "-"], "--output-dir -"),
    ],
)
def test_stdout_for_a_folder_of_inputs_is_a_usage_error(folder, monkeypatch, capsys, extra, option):
    # was: exit 0 and a folder literally named '-' holding a.json, b.json (or the images)
    code, _, err = edn(monkeypatch, capsys, "sr", "--scale", "2", "in/", "--method", "gd", *extra)
    assert code == 2 and _one_line(err) and option in err, err
    assert not Path("-").exists() and not Path("out").exists()


@pytest.mark.parametrize("out", ["-", "somewhere/"])
def test_train_out_must_name_a_checkpoint(workdir, monkeypatch, capsys, out):
    # was: --out - wrote -.safetensors, -.md and -.train.jsonl
    code, _, err = edn(monkeypatch, capsys, "train", "--task", "sudoku", "--out", out)
    assert code == 2 and _one_line(err) and "--out" in err, err
    assert not list(Path(".").glob("-*")) and not list(Path(".").glob("*.safetensors"))


# ------------------------------------------------------------------- a bad file inside a folder
@pytest.mark.parametrize("bad", ["empty", "nan"])
def test_a_bad_image_in_a_folder_stops_the_run_before_any_output(folder, monkeypatch, capsys, bad):
    # was: exit 4 at z's turn, with out/a.png, out/b.png and their reports already written and
    # nothing on stdout to say so
    if bad == "empty":
        Path("in", "z.png").write_bytes(b"")
    else:
        import tifffile

        tifffile.imwrite("in/z.tif", np.full((16, 16), np.nan, np.float32))
    code, out, err = edn(monkeypatch, capsys, "sr", "--scale", "2", "in/", "--output-dir", "out", "--report", "reps",
                         "--method", "gd", "--json")
    assert code == 4 and _one_line(err) and "in/z." in err, err
    assert not Path("out").exists() and not Path("reps").exists() and out == ""


def test_a_good_folder_gives_the_same_results_as_single_runs(folder, monkeypatch, capsys):
    from edncli.io.images import read_image

    code, out, err = edn(monkeypatch, capsys, "sr", "--scale", "2", "in/", "--output-dir", "out", "--method", "gd", "--json")
    assert code == 0, err
    code, _, err = edn(monkeypatch, capsys, "sr", "--scale", "2", "in/b.png", "-o", "b.png", "--method", "gd")
    assert code == 0, err
    assert np.array_equal(read_image("out/b.png")[0], read_image("b.png")[0])


# ------------------------------------------------------------- channels: gray+alpha, (H, W, 2)
def _la16_png(path: str, gray: np.ndarray) -> None:
    """A 16-bit gray+alpha PNG (colour type 4) written by hand."""
    import struct
    import zlib

    h, w = gray.shape
    la = np.stack([gray, np.full_like(gray, 65535)], -1).astype(">u2")
    raw = b"".join(b"\0" + la[i].tobytes() for i in range(h))

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    ihdr = struct.pack(">IIBBBBB", w, h, 16, 4, 0, 0, 0)
    Path(path).write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b""))


def test_a_16_bit_gray_alpha_png_is_read_as_gray():
    # was: Pillow opens it as RGBA, so edn read three equal channels (and wrote a colour result)
    from edncli.io.images import read_image

    gray = (np.random.default_rng(0).random((12, 10)) * 65535).astype(np.uint16)
    import tempfile

    with tempfile.TemporaryDirectory() as d:
        _la16_png(f"{d}/la.png", gray)
        arr, _ = read_image(f"{d}/la.png")
    assert arr.shape == (12, 10)
    assert np.abs(arr - gray / 65535).max() <= 1 / 255  # read at 8 bits, as the README says


def test_an_hw2_array_is_two_channels_not_h_images(workdir, monkeypatch, capsys):
    # was: (32, 32, 2) was taken as 32 channels of 32x2 images, exit 0
    import tifffile

    np.save("hw2.npy", np.random.default_rng(0).random((32, 32, 2)).astype(np.float32))
    code, _, err = edn(monkeypatch, capsys, "sr", "--scale", "2", "hw2.npy", "-o", "hw2.tif", "--method", "gd", "--delta", "1")
    assert code == 0, err
    assert tifffile.imread("hw2.tif").shape == (2, 64, 64)


def test_a_two_channel_result_is_not_written_as_gray_alpha_png(workdir, monkeypatch, capsys):
    # was: the second data channel became the PNG's alpha, lost when the file is read back
    import edncli.solvers.methods as methods

    np.save("c2.npy", np.random.default_rng(0).random((2, 16, 16)).astype(np.float32))
    solved = []
    monkeypatch.setattr(methods, "solve", lambda *a, **k: solved.append(1))  # refused before any solve
    code, _, err = edn(monkeypatch, capsys, "sr", "--scale", "2", "c2.npy", "-o", "c2.png", "--method", "gd")
    assert code == 2 and _one_line(err) and "1, 3 or 4 channels" in err, err
    assert not Path("c2.png").exists() and not solved


# --------------------------------------------------------- options that would be silently ignored
@pytest.mark.parametrize(
    "args, words",
    [
        (["sr", "--scale", "2", "clean.png", "-o", "o.tif", "--tile-overlap", "10"], "--tile-overlap 10 needs --tile"),
        (["sr", "--scale", "2", "clean.png", "-o", "o.tif", "--bit-depth", "8"], "--bit-depth is for PNG outputs"),
        (["simulate", "sr", "--scale", "2", "clean.png", "-o", "o.tif", "--bit-depth", "8"], "--bit-depth is for PNG"),
    ],
)
def test_an_option_with_nothing_to_act_on_is_a_usage_error(workdir, monkeypatch, capsys, args, words):
    # was: accepted and ignored (the README: an option the run does not read is exit 2)
    code, _, err = edn(monkeypatch, capsys, *args)
    assert code == 2 and _one_line(err) and words in err, err
    assert not Path("o.tif").exists()


def test_bit_depth_still_sets_a_png_output(workdir, monkeypatch, capsys):
    from PIL import Image

    for depth, mode in (("8", "L"), (None, "I;16")):
        extra = ["--bit-depth", depth] if depth else []
        code, _, err = edn(monkeypatch, capsys, "sr", "--scale", "2", "clean.png", "-o", "o.png", "--method", "gd",
                           "--force", *extra)
        assert code == 0, err
        with Image.open("o.png") as im:
            assert im.mode == mode


def test_a_slice_listed_twice_is_a_usage_error():
    # was: --slices 1,1 reconstructed the same row twice into a 2-slice stack
    from edncli.cli.ct import parse_slices
    from edncli.errors import UsageError

    assert parse_slices("3,1,2") == [3, 1, 2] and parse_slices("0:3") == [0, 1, 2]
    with pytest.raises(UsageError, match="row 1 is listed more than once"):
        parse_slices("1,2,1")


def test_float32_problem_reads_in_chunks_with_the_same_verdict():
    gen = np.random.default_rng(1)
    for arr in (gen.random((7, 9)), np.r_[gen.random(30), np.nan, np.inf], np.full(50, 4e17)):
        assert float32_problem(arr, chunk=4) == float32_problem(arr)


# ------------------------------------------------------------ a NaN energy is never "monotone"
@pytest.mark.parametrize("batch", [1, 2])
def test_a_nan_energy_is_not_reported_as_monotone(batch):
    # was: every comparison with NaN is false, so a run on NaN data said energy_monotone: True
    import torch

    from edncli.energies import DataFidelity
    from edncli.operators.blur import Blur, gaussian_kernel
    from edncli.solvers.descent import LineSearch, StopRule, descend, negative_gradient

    op = Blur((16, 16), gaussian_kernel(1.0, 5), "reflect")
    f = torch.rand(batch, 16, 16)
    f[0, 3, 3] = float("nan")
    res = descend(DataFidelity(op, f), torch.zeros(batch, 16, 16), negative_gradient, line=LineSearch(),
                  stop=StopRule(max_iter=5))
    assert res.energy_monotone is False
    assert [s.energy_monotone for s in res.samples] == [False] + [True] * (batch - 1)


# -------------------------------------------------------------- edn eval: tv with --iterations
@pytest.fixture
def evalfolder(workdir):
    Path("ev").mkdir()
    for i in range(2):
        _clean(Path("ev", f"{i}.png"), n=32, seed=i)
    return workdir


def test_eval_tv_with_fixed_iterations_takes_alpha_from_the_noise_level(evalfolder, monkeypatch, capsys):
    # was: exit 2 "method tv needs --alpha, or a δ", after gd had already run, with no way to
    # follow the advice (edn eval had no --alpha; --noise-sigma was given)
    code, out, err = edn(monkeypatch, capsys, "eval", "sr", "--scale", "2", "--images", "ev", "--methods", "gd,tv",
                         "--iterations", "3", "--json", "t.json", "--quiet")
    assert code == 0, err
    rows = [r for r in json.loads(Path("t.json").read_text())["rows"] if r["method"] == "tv"]
    assert len(rows) == 2 and all(r["iterations"] <= 3 and r["search_iterations"] > 0 for r in rows)


def test_eval_tv_noise_free_needs_alpha_up_front(evalfolder, monkeypatch, capsys):
    args = ["eval", "sr", "--scale", "2", "--images", "ev", "--noise-sigma", "0", "--iterations", "3", "--methods", "gd,tv"]
    code, out, err = edn(monkeypatch, capsys, *args)
    assert code == 2 and _one_line(err) and "--alpha" in err and out == "", err  # before any method ran
    code, out, err = edn(monkeypatch, capsys, *args, "--alpha", "0.002", "--json", "t.json", "--quiet")
    assert code == 0, err
    rows = [r for r in json.loads(Path("t.json").read_text())["rows"] if r["method"] == "tv"]
    assert rows and all(r["iterations"] == 3 for r in rows)
    code, _, err = edn(monkeypatch, capsys, *args[:-1], "gd", "--alpha", "0.002")
    assert code == 2 and "--alpha applies to tv" in err


# ------------------------------------------------------------------- Python warnings as one line
def test_a_library_warning_is_one_edn_warning_line(workdir, monkeypatch, capsys):
    # was: "…/tomography.py:760: UserWarning: could not write the CT matrix cache …" plus the
    # source line it came from
    import warnings

    from edncli.cli import main

    with warnings.catch_warnings():
        warnings.simplefilter("always")
        monkeypatch.setattr(main.rec, "run_problems", lambda **kw: warnings.warn("could not write the cache\n  somewhere"))
        code, _, err = edn(monkeypatch, capsys, "sr", "--scale", "2", "clean.png", "-o", "o.png", "--method", "gd")
    assert code == 0
    assert err.strip() == "edn: warning: could not write the cache somewhere", err


# -------------------------------------------------- a CT volume of 4 slices as its own reference
def test_a_four_slice_volume_serves_as_reference_not_as_rgba(tmp_path, monkeypatch, capsys):
    # was: the 4-page TIFF was read as RGBA, its 4th slice dropped as alpha: "shape (3, 48, 48)
    # does not match the result (4, 48, 48)" (and with --slices 0:3 silently taken as 3 slices)
    import tifffile
    import torch

    from edncli.io.sinograms import write_sinogram
    from edncli.operators.tomography import CTGeometry, simulate_ct

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("EDN_CACHE_DIR", str(tmp_path / "cache"))
    yy, xx = np.mgrid[-1 : 1 : 32j, -1 : 1 : 32j]
    vol = np.stack([np.exp(-4 * ((xx - 0.1 * k) ** 2 + yy**2)) for k in range(4)]).astype(np.float32)
    geom = CTGeometry(32, np.linspace(0, np.pi, 30, endpoint=False), 46)
    write_sinogram("scan.h5", simulate_ct(torch.from_numpy(vol), geom, noise_sigma=0.0).numpy(), geom.angles)
    tifffile.imwrite("ref.tif", vol, photometric="minisblack")  # pages, as edn writes a volume
    code, _, err = edn(monkeypatch, capsys, "ct", "--sinogram", "scan.h5", "--size", "32", "-o", "v.tif", "--method", "gd",
                       "--delta", "0.5", "--max-iter", "3", "--reference", "ref.tif", "--report", "r.json")
    assert code in (0, 3), err
    assert "psnr" in json.loads(Path("r.json").read_text())["trace"][-1]
    code, _, err = edn(monkeypatch, capsys, "ct", "--sinogram", "scan.h5", "--size", "32", "-o", "w.tif", "--method", "gd",
                       "--slices", "0:3", "--max-iter", "3", "--reference", "ref.tif")
    assert code == 2 and _one_line(err) and "does not match" in err, err


# ------------------------------------------------------------------- FBP in bounded memory blocks
@pytest.mark.parametrize("beam", ["parallel", "fan"])
def test_fbp_in_small_blocks_equals_the_default_and_is_batch_independent(monkeypatch, beam):
    # was: one chunk held 16 angles x all pixels x the batch in float64 (5000² needed 24 GB and
    # the process was killed); now blocks of pixels and angles, each sample on its own
    import torch

    import edncli.operators.tomography as tomo

    if beam == "parallel":
        geom = tomo.CTGeometry.parallel(40, 30)
    else:
        geom = tomo.CTGeometry(40, np.linspace(0, 2 * np.pi, 30, endpoint=False), 60, beam="fan",
                               source_origin=200.0, origin_detector=100.0)
    sino = torch.rand(3, *geom.sino_shape, generator=torch.Generator().manual_seed(0))
    whole = tomo.fbp(sino, geom)
    assert torch.equal(torch.cat([tomo.fbp(sino[i : i + 1], geom) for i in range(3)]), whole)
    monkeypatch.setattr(tomo, "FBP_BLOCK", 333)  # pixel blocks of 333, one angle at a time
    small = tomo.fbp(sino, geom)
    assert torch.allclose(small, whole, rtol=1e-5, atol=1e-6 * float(whole.abs().max()))


# ---------------------------------------------- a batch's trace energy never rises once slices stop
def test_the_batch_trace_energy_never_rises_after_some_slices_stopped(tmp_path, monkeypatch, capsys):
    # was: a stopped slice's energy was re-evaluated every step from a residual refreshed every
    # 25 steps, so the batch's recorded energy rose by round-off (296.82719919 -> 296.82720080)
    # while energy_monotone said true and max_energy_increase 0.0
    import torch

    from edncli.io.sinograms import write_sinogram
    from edncli.operators.tomography import CTGeometry, simulate_ct

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("EDN_CACHE_DIR", str(tmp_path / "cache"))
    from PIL import Image

    examples = Path(__file__).resolve().parents[1] / "examples"
    im = np.asarray(Image.open(examples / "phantom.png").convert("L").resize((48, 48)), np.float32) / 255
    vol = np.stack([np.roll(im, k, 0) for k in range(4)])
    torch.manual_seed(0)
    geom = CTGeometry(48, np.linspace(0, np.pi, 60, endpoint=False), 64)
    write_sinogram("scan4.h5", simulate_ct(torch.from_numpy(vol), geom, noise_sigma=0.01).numpy(), geom.angles)
    code, _, err = edn(monkeypatch, capsys, "ct", "--sinogram", "scan4.h5", "-o", "m.tif", "--size", "48", "--max-iter",
                       "40", "--method", "tv", "--report", "m.json", "-q")
    assert code in (0, 3), err
    doc = json.loads(Path("m.json").read_text())
    stops = [s["iterations"] for s in doc["samples"]]
    assert min(stops) < max(stops)  # some slices stopped while others went on
    energy = [t["energy"] for t in doc["trace"]]
    assert doc["energy_monotone"] and all(b <= a for a, b in zip(energy, energy[1:])), energy


@pytest.mark.parametrize(
    "task, methods, words",
    [
        (["sr", "--scale", "2"], "gd,edn", "x4 average downsampling, not x2"),
        (["deblur"], "gd,edn:edn-sr-x4", "is for task 'sr', not 'deblur'"),
        (["deblur"], "gd,baseline:edn-deblur", "needs a baseline checkpoint"),
    ],
)
def test_eval_checks_every_checkpoint_before_any_work(evalfolder, monkeypatch, capsys, task, methods, words):
    # was: gd ran (and printed its progress) on the first image before the checkpoint was refused
    code, out, err = edn(monkeypatch, capsys, "eval", *task, "--images", "ev", "--methods", methods)
    assert code == 4 and _one_line(err) and words in err and out == "", err
