"""Eighth audit: what the reports record and how --reference meets a folder of inputs. Each test
failed on the code before its fix."""

from __future__ import annotations

import io
import json
import os
from pathlib import Path

import numpy as np
import pytest
import tifffile
from PIL import Image

from .test_audit3_images import _one_line
from .test_cli import edn

CG = ("--method", "cg", "--delta", "0.05", "--max-iter", "5")


def _psnr(u: np.ndarray, ref: np.ndarray) -> float:
    return float(10 * np.log10(1.0 / np.mean((u.astype(np.float64) - ref) ** 2)))


@pytest.fixture
def pair(tmp_path, monkeypatch, capsys):
    """in/a.tif, in/b.tif (x4 low-resolution) and ref/a.png, ref/b.png (their 64² ground truths)."""
    monkeypatch.chdir(tmp_path)
    gen = np.random.default_rng(0)
    os.mkdir("in"), os.mkdir("ref")
    for name, freq in (("a", 2.0), ("b", 5.0)):
        y, x = np.mgrid[0:64, 0:64] / 64
        img = 0.5 + 0.4 * np.sin(2 * np.pi * freq * x) * np.cos(2 * np.pi * y) + 0.02 * gen.standard_normal((64, 64))
        Image.fromarray((np.clip(img, 0, 1) * 255).round().astype(np.uint8)).save(f"ref/{name}.png")
        code, _, err = edn(monkeypatch, capsys, "simulate", "sr", "--scale", "4", f"ref/{name}.png", "-o", f"in/{name}.tif")
        assert code == 0, err
    return tmp_path


def test_a_folder_of_references_is_matched_to_a_folder_of_inputs_by_name(pair, monkeypatch, capsys):
    # was: "--reference ref: is a folder; pass --output-dir to process a folder of images", exit 4,
    # although --output-dir was given
    code, _, err = edn(monkeypatch, capsys, "sr", "--scale", "4", "in", "--output-dir", "out", "--reference", "ref",
                       "--report", "reports", *CG)
    assert code in (0, 3), err
    for name in ("a", "b"):
        ref = np.asarray(Image.open(f"ref/{name}.png"), dtype=np.float64) / 255
        u = tifffile.imread(f"out/{name}.tif")
        last = json.loads(Path(f"reports/{name}.json").read_text())["trace"][-1]
        assert last["psnr"] == pytest.approx(_psnr(u, ref), abs=0.01)  # each against its own ground truth


def test_a_reference_folder_missing_an_input_fails_before_any_output(pair, monkeypatch, capsys):
    os.remove("ref/b.png")
    code, _, err = edn(monkeypatch, capsys, "sr", "--scale", "4", "in", "--output-dir", "out", "--reference", "ref", *CG)
    assert code == 4 and _one_line(err), err
    assert "--reference ref" in err and "b" in err and "matched" in err and "pass --output-dir" not in err, err
    assert not Path("out").exists() or not os.listdir("out")


def test_a_reference_folder_is_never_written_into(pair, monkeypatch, capsys):
    code, _, err = edn(monkeypatch, capsys, "sr", "--scale", "4", "in", "--output-dir", "ref", "--format", "png",
                       "--reference", "ref", "--force", *CG)
    assert code == 2 and _one_line(err) and "--reference" in err, err


def test_one_reference_on_stdin_serves_every_input(pair, monkeypatch, capsys):
    # was: read once per input; the second read found stdin empty and failed after writing the first output
    data = Path("ref/a.png").read_bytes()

    class Stdin:
        buffer = io.BytesIO(data)

    monkeypatch.setattr("sys.stdin", Stdin)
    code, _, err = edn(monkeypatch, capsys, "sr", "--scale", "4", "in", "--output-dir", "out", "--reference", "-",
                       "--report", "reports", *CG)
    assert code in (0, 3), err
    assert all("psnr" in json.loads(Path(f"reports/{n}.json").read_text())["trace"][-1] for n in ("a", "b"))


@pytest.mark.parametrize("method", ["edn", "baseline"])
@pytest.mark.parametrize("flag", [[], ["--no-channels-last"]])
def test_learned_reports_always_record_the_inference_settings(pair, monkeypatch, capsys, method, flag):
    # was: no `inference` block when every setting was the default (e.g. --no-channels-last),
    # although the README says the report records them
    code, _, err = edn(monkeypatch, capsys, "sr", "--scale", "4", "in/a.tif", "-o", "x.tif", "--method", method,
                       "--noise-sigma", "0.01", "--report", "r.json", *flag)
    assert code in (0, 3), err
    inference = json.loads(Path("r.json").read_text())["inference"]
    assert inference["channels_last"] is (not flag) and inference["precision"] == "fp32" and inference["tile"] is None


@pytest.mark.parametrize("flag", [[], ["--precision", "bf16"]])
def test_red_reports_record_the_memory_format_in_use(pair, monkeypatch, capsys, flag):
    # was: channels_last null (and no block at all without network options)
    img = np.asarray(Image.open("ref/a.png"), dtype=np.float32) / 255
    tifffile.imwrite("clean.tif", img)
    code, _, err = edn(monkeypatch, capsys, "simulate", "deblur", "--kernel-sigma", "1.6", "--noise-sigma", "0.01",
                       "clean.tif", "-o", "b.tif")
    assert code == 0, err
    code, _, err = edn(monkeypatch, capsys, "deblur", "--kernel-sigma", "1.6", "b.tif", "--method", "red", "-o", "x.tif",
                       "--max-iter", "3", "--report", "r.json", *flag)
    assert code in (0, 3), err
    inference = json.loads(Path("r.json").read_text())["inference"]
    assert inference["channels_last"] is False and inference["precision"] == (flag[1] if flag else "fp32")


def test_a_reference_folder_for_ct_is_a_usage_error_that_says_so(pair, monkeypatch, capsys):
    # was: "--reference ref: is a folder; pass --output-dir to process a folder of images" (exit 4)
    pytest.importorskip("astra")
    code, _, err = edn(monkeypatch, capsys, "simulate", "ct", "ref/a.png", "-o", "s.h5", "--angles", "20")
    assert code == 0, err
    code, _, err = edn(monkeypatch, capsys, "ct", "--sinogram", "s.h5", "-o", "x.tif", "--reference", "ref",
                       "--method", "gd", "--max-iter", "2")
    assert code == 2 and _one_line(err) and "--reference ref is a folder" in err and "--output-dir" not in err, err
    assert not Path("x.tif").exists()
