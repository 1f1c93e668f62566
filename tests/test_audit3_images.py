"""Audit findings: `edn sr` and `edn deblur` (image reconstruction) on odd options and files.

Each test names the defect it guards against: a traceback, an option silently ignored, a
destroyed input, a partial output or a report value that was not what it claims.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import tifffile

from .test_cli import _clean, edn
from .test_cli_audit import _one_line
from .test_output_errors import workdir  # noqa: F401 - fixture: a temporary folder holding lr.png (16x16)

CG = ("--method", "cg", "--noise-sigma", "0.01", "--quiet")


# ---------------------------------------------------------------------------- options
def test_an_explicit_max_iter_equal_to_the_default_overrides_the_presets():
    """`--max-iter 300` was taken for "not given" and replaced by the preset's cap (75 for pnp)."""
    import torch

    from edncli.cli.reconstruct import _options
    from edncli.operators.downsample import AveragePool
    from edncli.solvers.methods import Problem
    from edncli.solvers.potential import resolve_settings

    problem = Problem(AveragePool((8, 8), 2), torch.zeros(1, 4, 4), torch.zeros(1, 8, 8), 1.0, task="sr")
    for method in ("potential", "red", "pnp"):
        given = resolve_settings(method, problem, _options(300, None, None, None, None))[0]
        assert given.max_iter == 300, method
        unset = resolve_settings(method, problem, _options(None, None, None, None, None))[0]
        assert unset.max_iter < 300, method  # the preset's own cap when --max-iter is not given


def test_library_max_iter_equal_to_the_default_overrides_the_presets_too():
    """`MethodOptions(max_iter=300)` was compared with the default by value: silently the preset's cap."""
    import torch

    from edncli.cli.reconstruct import _iteration_cap
    from edncli.solvers.methods import MethodOptions, Problem
    from edncli.solvers.options import DEFAULT_MAX_ITER
    from edncli.solvers.potential import POTENTIAL_METHODS, PRESETS, resolve_settings
    from edncli.operators.downsample import AveragePool

    problem = Problem(AveragePool((8, 8), 2), torch.zeros(1, 4, 4), torch.zeros(1, 8, 8), 1.0, task="sr")
    for method in POTENTIAL_METHODS:
        preset = PRESETS["sr"][method].max_iter
        assert preset != DEFAULT_MAX_ITER
        assert resolve_settings(method, problem, MethodOptions(max_iter=DEFAULT_MAX_ITER))[0].max_iter == DEFAULT_MAX_ITER
        assert resolve_settings(method, problem, MethodOptions())[0].max_iter == preset
        # the progress bar's length is the cap the method runs under
        assert _iteration_cap(method, problem, MethodOptions()) == preset
    assert MethodOptions().iteration_cap == DEFAULT_MAX_ITER and MethodOptions(max_iter=7).iteration_cap == 7
    assert _iteration_cap("gd", problem, MethodOptions()) == DEFAULT_MAX_ITER
    with pytest.raises(Exception, match="--max-iter must be >= 0"):
        MethodOptions(max_iter=-1)


@pytest.mark.parametrize("method", ["tv", "edn"])
@pytest.mark.parametrize("alpha", ["inf", "nan", "-1"])
def test_alpha_must_be_positive_and_finite_for_every_method(workdir, monkeypatch, capsys, method, alpha):
    """`--alpha inf/nan` wrote Infinity/NaN energies into the report with exit 0; `--method edn
    --alpha -1` minimised an energy unbounded below for 300 iterations."""
    code, _, err = edn(monkeypatch, capsys, "sr", "--scale", "4", "lr.png", "-o", "hr.tif", "--method", method,
                       "--delta", "1", "--alpha", alpha, "--report", "hr.json")
    assert code == 2 and _one_line(err) and "--alpha" in err
    assert not Path("hr.tif").exists() and not Path("hr.json").exists()


def test_min_iter_above_max_iter_is_a_usage_error(workdir, monkeypatch, capsys):
    """`--min-iter 5 --max-iter 2` ran 5 iterations past the cap the user set."""
    code, _, err = edn(monkeypatch, capsys, "sr", "--scale", "4", "lr.png", "-o", "hr.tif", *CG,
                       "--min-iter", "5", "--max-iter", "2")
    assert code == 2 and _one_line(err) and "--min-iter" in err and not Path("hr.tif").exists()


def test_output_and_output_dir_together_is_a_usage_error(workdir, monkeypatch, capsys):
    """With one input, `-o x.tif --output-dir od` silently ignored -o and wrote od/lr.png."""
    code, _, err = edn(monkeypatch, capsys, "sr", "--scale", "4", "lr.png", "-o", "x.tif", "--output-dir", "od", *CG)
    assert code == 2 and _one_line(err) and "not both" in err
    assert not Path("x.tif").exists() and not Path("od").exists()


def test_reference_and_input_both_from_stdin_is_a_usage_error(workdir, monkeypatch, capsys):
    """stdin was read twice; the second read failed with "nothing was piped in" (exit 4)."""
    code, _, err = edn(monkeypatch, capsys, "sr", "--scale", "4", "-", "-o", "hr.tif", "--reference", "-", *CG)
    assert code == 2 and _one_line(err) and "--reference" in err


def test_a_missing_reference_names_the_option(workdir, monkeypatch, capsys):
    """`--reference nope.png` said only "nope.png: no such file", as if the input were missing."""
    code, _, err = edn(monkeypatch, capsys, "sr", "--scale", "4", "lr.png", "-o", "hr.tif", "--reference", "nope.png", *CG)
    assert code == 4 and _one_line(err) and "--reference nope.png: no such file" in err and not Path("hr.tif").exists()


# ---------------------------------------------------------------------------- outputs
def test_a_report_on_an_input_is_refused_even_with_force(workdir, monkeypatch, capsys):
    """`--report lr.png --force` (say for --reference) replaced the input image by the JSON report."""
    before = Path("lr.png").read_bytes()
    for option in ("--report", "--plot"):
        code, _, err = edn(monkeypatch, capsys, "sr", "--scale", "4", "lr.png", "-o", "hr.tif", *CG, option, "lr.png", "--force")
        assert code == 2 and _one_line(err) and option in err
        assert Path("lr.png").read_bytes() == before and not Path("hr.tif").exists()


def test_a_folder_of_one_image_writes_its_report_into_the_report_folder(workdir, monkeypatch, capsys):
    """README's `edn sr lr_folder/ --output-dir hr_folder/ --report reports/` with one image in the
    folder took `reports/` for a file name: exit 4 after hr_folder/lr.png had been written."""
    os.mkdir("in")
    os.rename("lr.png", "in/lr.png")
    code, _, err = edn(monkeypatch, capsys, "sr", "--scale", "4", "in/", "--output-dir", "out/", *CG,
                       "--report", "reports/", "--plot", "plots")
    assert code == 0, err
    assert os.listdir("out") == ["lr.png"] and os.listdir("reports") == ["lr.json"] and os.listdir("plots") == ["lr.png"]
    assert json.loads(Path("reports/lr.json").read_text())["inputs"]["path"] == "in/lr.png"


@pytest.mark.parametrize("name", ["reps/", "reps/."])
def test_a_report_path_naming_a_folder_is_refused_before_any_work(workdir, monkeypatch, capsys, name):
    """A single input with `--report reps/` failed only at the rename, after the image was in place."""
    code, _, err = edn(monkeypatch, capsys, "sr", "--scale", "4", "lr.png", "-o", "hr.tif", *CG, "--report", name)
    assert code == 2 and _one_line(err) and name in err
    assert not Path("hr.tif").exists() and not Path("reps").exists()


@pytest.mark.parametrize("fmt, suffix", [("tiff", ".tif"), ("hdf5", ".h5"), ("jpg", None)])
def test_format_aliases_and_bad_formats_with_a_folder_of_inputs(workdir, monkeypatch, capsys, fmt, suffix):
    """With --output-dir, `--format tiff|hdf5` (accepted for one file) and `--format jpg` were a
    KeyError traceback that left the empty output folder behind."""
    os.mkdir("in")
    os.rename("lr.png", "in/lr.png")
    code, _, err = edn(monkeypatch, capsys, "sr", "--scale", "4", "in", "--output-dir", "out", *CG, "--format", fmt)
    if suffix is None:
        assert code == 2 and _one_line(err) and "--format" in err and not Path("out").exists()
    else:
        assert code == 0, err
        assert os.listdir("out") == [f"lr{suffix}"]


def test_a_folder_of_tiff_files_keeps_tiff_outputs(workdir, monkeypatch, capsys):
    """Inputs named .tiff or .TIF got .png outputs (clipped to [0, 1], quantised) where .tif kept TIFF."""
    os.mkdir("in")
    for name in ("a.tif", "b.tiff", "c.TIF"):
        tifffile.imwrite(f"in/{name}", np.random.default_rng(0).random((8, 8), dtype=np.float32) * 3)
    code, _, err = edn(monkeypatch, capsys, "sr", "--scale", "2", "in", "--output-dir", "out", *CG)
    assert code == 0, err
    assert sorted(os.listdir("out")) == ["a.tif", "b.tiff", "c.TIF"]
    assert tifffile.imread("out/b.tiff").max() > 1  # float TIFF, not clipped


# ---------------------------------------------------------------------------- files
def test_a_file_whose_name_looks_like_a_glob_is_read(workdir, monkeypatch, capsys):
    """`scan[1].png` was taken for a pattern, matched nothing and exited 4."""
    os.rename("lr.png", "scan[1].png")
    code, _, err = edn(monkeypatch, capsys, "sr", "--scale", "4", "scan[1].png", "-o", "hr.tif", *CG, "--report", "r.json")
    assert code == 0, err
    assert Path("hr.tif").exists() and Path("r.json").is_file()


def test_a_gray_image_with_a_trailing_channel_axis_is_read_as_gray(workdir, monkeypatch, capsys):
    """An (H, W, 1) array (the layout of many imaging libraries) was refused as "too small"."""
    np.save("lr.npy", np.random.default_rng(0).random((16, 16, 1), dtype=np.float32))
    code, _, err = edn(monkeypatch, capsys, "sr", "--scale", "2", "lr.npy", "-o", "hr.tif", *CG)
    assert code == 0, err
    assert tifffile.imread("hr.tif").shape == (32, 32)


# ---------------------------------------------------------------------------- kernels
def test_circular_boundary_with_a_kernel_larger_than_the_image_is_one_line(workdir, monkeypatch, capsys):
    """A 17x17 kernel on a 16x16 image with `--boundary circular` was a RuntimeError traceback."""
    np.save("k.npy", np.ones((17, 17)))
    code, _, err = edn(monkeypatch, capsys, "deblur", "--kernel", "k.npy", "--boundary", "circular", "lr.png",
                       "-o", "s.tif", *CG)
    assert code == 2 and _one_line(err) and "17x17" in err and not Path("s.tif").exists()


@pytest.mark.parametrize("name, make, words", [
    ("k.npy", lambda p: np.save(p, np.array([["a", "b"]])), "numbers"),
    ("k.txt", lambda p: Path(p).write_text(""), "empty"),
])
def test_a_kernel_file_without_numbers_is_one_line(workdir, monkeypatch, capsys, name, make, words):
    """A string array was a ValueError traceback; an empty text file added a numpy warning."""
    make(name)
    code, _, err = edn(monkeypatch, capsys, "deblur", "--kernel", name, "lr.png", "-o", "s.tif", *CG)
    assert code == 2 and _one_line(err) and words in err and not Path("s.tif").exists()


def test_kernel_size_with_a_kernel_file_is_a_usage_error(workdir, monkeypatch, capsys):
    """`--kernel FILE --kernel-size 25` silently ignored --kernel-size."""
    np.save("k.npy", np.ones((3, 3)))
    code, _, err = edn(monkeypatch, capsys, "deblur", "--kernel", "k.npy", "--kernel-size", "25", "lr.png", "-o", "s.tif", *CG)
    assert code == 2 and _one_line(err) and "--kernel-size" in err and not Path("s.tif").exists()


# ---------------------------------------------------------------------------- plots
@pytest.mark.filterwarnings("error")  # a warning would be printed on the user's stderr
def test_plot_of_a_run_that_fits_the_data_exactly_prints_nothing(workdir, monkeypatch, capsys):
    """A discrepancy of 0 (a 1x1 kernel: A = I) made matplotlib warn on stderr about log scales."""
    np.save("k.npy", np.ones((1, 1)))
    code, _, err = edn(monkeypatch, capsys, "deblur", "--kernel", "k.npy", "lr.png", "-o", "s.tif", "--method", "gd",
                       "--delta", "1", "--plot", "s.png", "--quiet")
    assert code == 0 and err == "" and Path("s.png").stat().st_size > 1000


# ---------------------------------------------------------------------------- options a method does not read
@pytest.mark.parametrize(
    "method, option",
    [("gd", ("--lam", "0.1")), ("cg", ("--mu", "0.5")), ("tv", ("--box",)), ("edn", ("--preset", "sr")),
     ("gd", ("--alpha", "0.01")), ("baseline", ("--min-iter", "2")), ("tv", ("--min-iter", "2")),
     ("gd", ("--learned-steps", "2")), ("potential", ("--handover", "gd")), ("tv", ("--tile", "300")),
     ("cg", ("--precision", "bf16")), ("gd", ("--ensemble", "8")), ("pnp", ("--lam", "0.1"))],
)
def test_an_option_the_method_does_not_read_is_a_usage_error(workdir, monkeypatch, capsys, method, option):
    # was: accepted and silently ignored (e.g. `--method gd --lam 0.1` ran plain gd, exit 0)
    code, _, err = edn(monkeypatch, capsys, "sr", "--scale", "4", "lr.png", "-o", "o.tif", "--method", method,
                       "--noise-sigma", "0.01", "--quiet", *option)
    assert code == 2 and _one_line(err) and option[0] in err and method in err, err
    assert not Path("o.tif").exists()


@pytest.mark.parametrize("method, option", [("red", ("--lam", "0.1")), ("edn", ("--alpha", "0.001")),
                                            ("cg", ("--min-iter", "1")), ("edn", ("--handover", "gd"))])
def test_an_option_the_method_reads_is_accepted(workdir, monkeypatch, capsys, method, option):
    code, _, err = edn(monkeypatch, capsys, "sr", "--scale", "4", "lr.png", "-o", "o.tif", "--method", method,
                       "--noise-sigma", "0.01", "--quiet", "--max-iter", "40", *option)
    assert code in (0, 3) and Path("o.tif").exists(), err


def test_tau_with_a_numeric_delta_is_a_usage_error(workdir, monkeypatch, capsys):
    # was: --tau silently ignored when δ is given as a number
    code, _, err = edn(monkeypatch, capsys, "sr", "--scale", "4", "lr.png", "-o", "o.tif", "--method", "cg",
                       "--delta", "0.05", "--tau", "2", "--quiet")
    assert code == 2 and _one_line(err) and "--tau" in err, err
    code, _, err = edn(monkeypatch, capsys, "sr", "--scale", "4", "lr.png", "-o", "o.tif", "--method", "cg",
                       "--noise-sigma", "0.01", "--tau", "2", "--report", "r.json", "--quiet")
    assert code == 0, err
    assert json.loads(Path("r.json").read_text())["delta"] == pytest.approx(2 * 0.01 * 16)  # τ σ √m, m = 16²


def test_deblur_and_simulate_use_the_same_gaussian_for_the_same_sigma(workdir, monkeypatch, capsys):
    # was: `edn deblur --kernel-sigma 1.6` built an 11x11 kernel while `edn simulate deblur` (and
    # eval, train) used 25x25: simulate-then-deblur with σ alone solved with another operator
    from edncli.operators import blur

    _clean(Path("clean.png"), n=32)
    code, _, err = edn(monkeypatch, capsys, "simulate", "deblur", "clean.png", "-o", "b.tif", "--kernel-sigma", "1.6")
    assert code == 0, err
    sizes = []
    monkeypatch.setattr(blur.Blur, "__init__", _recording(blur.Blur.__init__, sizes))
    code, _, err = edn(monkeypatch, capsys, "deblur", "b.tif", "-o", "s.tif", "--kernel-sigma", "1.6", *CG)
    assert code in (0, 3), err
    assert sizes and set(sizes) == {(blur.DEFAULT_KERNEL_SIZE,) * 2} == {(25, 25)}


def test_deblur_kernel_size_zero_is_a_usage_error(workdir, monkeypatch, capsys):
    # was: `--kernel-size 0` was read as "not given" and silently became 25
    code, _, err = edn(monkeypatch, capsys, "deblur", "lr.png", "-o", "s.tif", "--kernel-sigma", "1.6",
                       "--kernel-size", "0", *CG)
    assert code == 2 and _one_line(err) and "--kernel-size" in err and not Path("s.tif").exists()


def _recording(init, sizes):
    def wrapped(self, shape, kernel, *args, **kwargs):
        sizes.append(tuple(kernel.shape))
        return init(self, shape, kernel, *args, **kwargs)

    return wrapped


def test_a_plot_not_named_png_is_a_usage_error(workdir, monkeypatch, capsys):
    # was: `--plot p.pdf` wrote PNG bytes into p.pdf
    code, _, err = edn(monkeypatch, capsys, "sr", "--scale", "4", "lr.png", "-o", "o.tif", *CG, "--plot", "p.pdf")
    assert code == 2 and _one_line(err) and ".png" in err, err
    assert not Path("o.tif").exists() and not Path("p.pdf").exists()


def test_reports_and_summaries_are_standard_json_even_when_values_overflow(workdir, monkeypatch, capsys):
    # was: an input near float32's limit gave energies of inf, written as `Infinity` (not JSON:
    # jq and other strict readers refuse the report)
    from edncli.io.reports import strict_json

    assert json.loads(strict_json({"e": float("inf"), "t": [1.0, float("nan")], "n": np.float32(2.5)})) == {
        "e": None, "t": [1.0, None], "n": 2.5}
    # such data are now refused when read (io/values.py): float32 cannot hold their energy
    tifffile.imwrite("big.tif", np.full((16, 16), 3e37, np.float32))
    code, out, err = edn(monkeypatch, capsys, "sr", "--scale", "4", "big.tif", "-o", "o.tif", "--method", "gd",
                         "--delta", "1", "--max-iter", "2", "--report", "r.json", "--json", "--quiet", "--force")
    assert code == 4 and "too large for float32" in err and out == "", err
    assert not Path("r.json").exists() and not Path("o.tif").exists()


def test_an_interrupted_run_leaves_no_empty_output_folders(workdir, monkeypatch, capsys):
    # was: Ctrl-C (exit 130) left the --output-dir and report folders the run had just created
    import edncli.solvers.methods as methods

    Path("in").mkdir()
    _clean(Path("in/a.png"), n=16)

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(methods, "solve", interrupted)
    code, _, err = edn(monkeypatch, capsys, "sr", "--scale", "4", "in", "--output-dir", "out/x", "--report", "reps",
                       *CG)
    assert code == 130 and "interrupted" in err, err
    assert not Path("out").exists() and not Path("reps").exists()
