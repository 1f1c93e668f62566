"""Writing results: unwritable or colliding outputs fail before any work, one result's files are
written all or none, non-regular files are never replaced, 16-bit colour PNGs keep full precision."""

from __future__ import annotations

import json
import os
import struct
import sys
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from edncli.errors import InputError, UsageError
from edncli.io.images import encode_image, read_image, write_together

from .test_cli import _clean, edn

GD = ("--method", "gd", "--noise-sigma", "0.01")


@pytest.fixture
def workdir(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    _clean(tmp_path / "lr.png", n=16)
    return tmp_path


def _one_line(err: str) -> bool:
    return "Traceback" not in err and len(err.strip().splitlines()) == 1


def _no_temp_files(folder: Path = Path(".")) -> bool:
    return not [p for p in folder.rglob("*") if p.name.endswith(".tmp")]


# ---------------------------------------------------------------------------- unwritable folders
@pytest.mark.skipif(not Path("/proc/self").exists(), reason="needs Linux /proc")
@pytest.mark.parametrize("cmd", [["sr", "--scale", "4", "lr.png", *GD], ["simulate", "sr", "--scale", "2", "lr.png"]])
def test_unwritable_output_folder_is_one_line_exit_4(workdir, monkeypatch, capsys, cmd):
    code, _, err = edn(monkeypatch, capsys, *cmd, "-o", "/proc/x.png")
    assert code == 4, err
    assert _one_line(err) and "/proc/x.png" in err


@pytest.mark.skipif(not Path("/proc/self").exists(), reason="needs Linux /proc")
def test_unwritable_report_fails_before_the_image_is_written(workdir, monkeypatch, capsys):
    code, _, err = edn(monkeypatch, capsys, "sr", "--scale", "4", "lr.png", "-o", "q2.png", *GD, "--report", "/proc/r.json")
    assert code == 4, err
    assert _one_line(err) and "/proc/r.json" in err
    assert not Path("q2.png").exists()


@pytest.mark.skipif(not Path("/proc/self").exists(), reason="needs Linux /proc")
def test_a_report_write_that_fails_late_takes_the_image_with_it(workdir, monkeypatch, capsys):
    # The up-front check is bypassed, as when the disk fills up during the run.
    monkeypatch.setattr("edncli.io.images.check_writable", lambda path, force: None)
    Path("q2.png").write_bytes(b"previous result")
    code, _, err = edn(monkeypatch, capsys, "sr", "--scale", "4", "lr.png", "-o", "q2.png", "--force", *GD,
                       "--report", "/proc/r.json")
    assert code == 4, err
    assert _one_line(err) and "nothing of this result was written" in err
    assert Path("q2.png").read_bytes() == b"previous result"
    assert _no_temp_files()


def test_write_together_is_all_or_nothing(tmp_path, monkeypatch):
    monkeypatch.setattr("edncli.io.images.check_writable", lambda path, force: None)
    with pytest.raises(InputError, match="cannot write"):
        write_together([(str(tmp_path / "a.png"), b"a"), (str(tmp_path / "no" / "such" / "r.json"), b"r")])
    assert list(tmp_path.iterdir()) == []
    write_together([(str(tmp_path / "a.png"), b"a"), (str(tmp_path / "r.json"), b"r")])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.png", "r.json"]


def test_output_under_a_file_is_a_usage_error(workdir, monkeypatch, capsys):
    Path("afile").write_text("x")
    code, _, err = edn(monkeypatch, capsys, "sr", "--scale", "4", "lr.png", "-o", "afile/x.png", *GD)
    assert code == 2 and _one_line(err) and "not a folder" in err
    os.mkdir("dup")
    _clean(Path("dup/a.png"), n=16)
    code, _, err = edn(monkeypatch, capsys, "sr", "--scale", "4", "dup", "--output-dir", "afile", *GD)
    assert code == 2 and _one_line(err) and "not a folder" in err


# ---------------------------------------------------------------------------- collisions
def _dup_inputs():
    os.mkdir("dup")
    _clean(Path("dup/a.png"), n=16)
    arr, _ = read_image("dup/a.png")
    import tifffile

    tifffile.imwrite("dup/a.tif", arr)


@pytest.mark.parametrize("force", [False, True])
def test_two_inputs_with_one_output_name_fail_before_any_work(workdir, monkeypatch, capsys, force):
    _dup_inputs()
    extra = ["--force"] if force else []
    code, _, err = edn(monkeypatch, capsys, "sr", "--scale", "4", "dup", "--output-dir", "out", "--format", "png",
                       "--report", "reps", *GD, *extra)
    assert code == 2, err
    assert _one_line(err) and "written twice" in err and "dup/a.png" in err and "dup/a.tif" in err
    assert not Path("out").exists() and not Path("reps").exists()  # the folders it made are gone too


def test_two_inputs_with_one_report_name_fail_before_any_work(workdir, monkeypatch, capsys):
    _dup_inputs()
    code, _, err = edn(monkeypatch, capsys, "sr", "--scale", "4", "dup", "--output-dir", "out", "--report", "r3.json", *GD)
    assert code == 2, err
    assert _one_line(err) and "r3.json/a.json" in err and "written twice" in err
    assert not Path("out").exists() and not Path("r3.json").exists()
    Path("keep").mkdir()  # a folder that was there before is kept
    code, _, err = edn(monkeypatch, capsys, "sr", "--scale", "4", "dup", "--output-dir", "keep", "--report", "r3.json", *GD)
    assert code == 2 and Path("keep").is_dir()


def test_output_and_report_on_one_file_is_a_usage_error(workdir, monkeypatch, capsys):
    code, _, err = edn(monkeypatch, capsys, "sr", "--scale", "4", "lr.png", "-o", "x.png", "--report", "./x.png", *GD)
    assert code == 2 and _one_line(err) and "written twice" in err
    assert not Path("x.png").exists()


@pytest.mark.parametrize("extra", [["--json"], ["--report", "-"], ["--plot", "-"]])
def test_two_things_on_stdout_is_a_usage_error(workdir, monkeypatch, capsys, extra):
    code, out, err = edn(monkeypatch, capsys, "sr", "--scale", "4", "lr.png", "-o", "-", *GD, *extra)
    assert code == 2, err
    assert _one_line(err) and "stdout" in err and out == ""


def test_json_with_a_file_output_still_works(workdir, monkeypatch, capsys):
    code, out, err = edn(monkeypatch, capsys, "sr", "--scale", "4", "lr.png", "-o", "x.png", "--report", "x.json", "--json", *GD)
    assert code == 0, err
    assert json.loads(out)["output"] == "x.png" and Path("x.json").exists()


# ---------------------------------------------------------------------------- non-regular targets
@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs mkfifo")
def test_force_never_replaces_a_non_regular_file(workdir, monkeypatch, capsys):
    os.mkfifo("pipe")
    for cmd in (["sr", "--scale", "4", "lr.png", *GD], ["simulate", "sr", "--scale", "2", "lr.png"]):
        code, _, err = edn(monkeypatch, capsys, *cmd, "-o", "pipe", "--format", "png", "--force")
        assert code == 2, err
        assert _one_line(err) and "not a regular file" in err
        assert Path("pipe").is_fifo()
    code, _, err = edn(monkeypatch, capsys, "sr", "--scale", "4", "lr.png", "-o", "x.png", *GD, "--report", "pipe", "--force")
    assert code == 2 and "not a regular file" in err
    assert Path("pipe").is_fifo() and not Path("x.png").exists()


# ---------------------------------------------------------------------------- --dataset
def test_dataset_with_an_input_that_is_not_hdf5_is_a_usage_error(workdir, monkeypatch, capsys):
    code, _, err = edn(monkeypatch, capsys, "sr", "--scale", "4", "lr.png", "-o", "x.png", "--dataset", "nope", *GD)
    assert code == 2 and _one_line(err) and "--dataset" in err and "HDF5" in err
    with pytest.raises(UsageError, match="HDF5"):
        read_image("lr.png", dataset="nope")


def test_dataset_with_an_hdf5_input_is_used(workdir, monkeypatch, capsys):
    import h5py

    arr, _ = read_image("lr.png")
    with h5py.File("in.h5", "w") as fh:
        fh["a"] = np.zeros_like(arr)
        fh["b"] = arr
    np.testing.assert_array_equal(read_image("in.h5", dataset="b")[0], arr)
    code, _, err = edn(monkeypatch, capsys, "sr", "--scale", "4", "in.h5", "-o", "x.tif", "--dataset", "b", *GD)
    assert code == 0, err


# ---------------------------------------------------------------------------- 16-bit colour PNG
def _paeth(a, b, c):
    p = a + b - c
    pa, pb, pc = np.abs(p - a), np.abs(p - b), np.abs(p - c)
    return np.where((pa <= pb) & (pa <= pc), a, np.where(pb <= pc, b, c))


def _png16_all_filters(hwc: np.ndarray) -> bytes:
    """A 16-bit PNG whose rows use all five PNG filters in turn, its data in several IDAT chunks."""
    h, w, ch = hwc.shape
    bpp = 2 * ch
    rows = hwc.astype(">u2").reshape(h, w * ch).view(np.uint8).astype(np.int64)
    out = []
    for y in range(h):
        raw = rows[y]
        prior = rows[y - 1] if y else np.zeros_like(raw)
        left = np.concatenate([np.zeros(bpp, np.int64), raw[:-bpp]])
        upleft = np.concatenate([np.zeros(bpp, np.int64), prior[:-bpp]])
        kind = y % 5
        pred = [0 * raw, left, prior, (left + prior) // 2, _paeth(left, prior, upleft)][kind]
        out.append(bytes([kind]) + ((raw - pred) % 256).astype(np.uint8).tobytes())
    z = zlib.compress(b"".join(out))

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    idats = b"".join(chunk(b"IDAT", z[i : i + 97]) for i in range(0, len(z), 97))
    header = struct.pack(">IIBBBBB", w, h, 16, {3: 2, 4: 6}[ch], 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + idats + chunk(b"IEND", b"")


def _alpha_warning(channels: int):
    """A 4th channel that is not fully opaque is dropped with a warning (random alpha is not opaque)."""
    import contextlib

    return pytest.warns(UserWarning, match="alpha") if channels == 4 else contextlib.nullcontext()


@pytest.mark.parametrize("channels", [3, 4])
def test_16bit_colour_png_is_read_at_full_precision(tmp_path, channels):
    gen = np.random.default_rng(0)
    pixels = gen.integers(0, 65536, size=(11, 13, channels), dtype=np.uint16)
    pixels[0, 0, :3] = 1000
    path = tmp_path / "rgb16.png"
    path.write_bytes(_png16_all_filters(pixels))
    with _alpha_warning(channels):
        arr, info = read_image(path)
    assert info.dtype == "uint16" and info.bit_depth == 16
    assert arr.shape == (3, 11, 13)  # alpha dropped
    np.testing.assert_array_equal(np.round(arr * 65535).astype(np.uint16), np.moveaxis(pixels[..., :3], -1, 0))
    assert arr[0, 0, 0] == np.float32(1000 / 65535)


@pytest.mark.parametrize("mode", ["LA", "1"])
def test_gray_alpha_and_bilevel_png_are_read_as_gray(tmp_path, mode):
    gray = np.random.default_rng(4).integers(0, 256, size=(9, 10), dtype=np.uint8)
    if mode == "LA":
        im = Image.fromarray(np.stack([gray, np.full_like(gray, 77)], -1), "LA")
        expected = gray / 255
    else:
        im = Image.fromarray(gray > 127)
        expected = (gray > 127).astype(np.float64)
    im.save(tmp_path / "g.png")
    arr, _ = read_image(tmp_path / "g.png")
    assert arr.shape == (9, 10)  # was (3, 9, 10): a gray image turned into a colour one
    np.testing.assert_allclose(arr, expected, atol=1e-6)


def test_16bit_colour_png_from_stdin(tmp_path, monkeypatch):
    import io

    pixels = np.random.default_rng(1).integers(0, 65536, size=(6, 7, 3), dtype=np.uint16)
    data = _png16_all_filters(pixels)
    monkeypatch.setattr(sys, "stdin", type("S", (), {"buffer": io.BytesIO(data)})())
    arr, _ = read_image("-")
    np.testing.assert_array_equal(np.round(arr * 65535).astype(np.uint16), np.moveaxis(pixels, -1, 0))


@pytest.mark.parametrize("channels", [3, 4])
def test_colour_png_output_is_16_bit_and_round_trips(tmp_path, channels):
    arr = np.random.default_rng(2).random((channels, 9, 10)).astype(np.float32)
    path = tmp_path / "o.png"
    path.write_bytes(encode_image(arr, "png", 16))
    ihdr = path.read_bytes()[16:29]
    assert ihdr[8] == 16 and ihdr[9] == {3: 2, 4: 6}[channels]
    with _alpha_warning(channels):
        back, info = read_image(path)
    assert info.dtype == "uint16"
    np.testing.assert_allclose(back, arr[:3], atol=0.5 / 65535 + 1e-7)
    with Image.open(path) as im:  # a standard PNG: Pillow decodes it (at 8 bits)
        np.testing.assert_allclose(np.moveaxis(np.asarray(im.convert("RGBA")), -1, 0)[:channels] / 255,
                                   arr[:channels], atol=1 / 255 + 1e-6)


def test_a_two_channel_png_is_refused():
    # PNG's only two-channel type is gray + alpha: the second channel would become transparency
    with pytest.raises(UsageError, match="1, 3 or 4 channels, the result has 2"):
        encode_image(np.zeros((2, 9, 10), np.float32), "png", 16)


def test_cli_writes_16bit_colour_png_unless_bit_depth_8(workdir, monkeypatch, capsys):
    # values well inside [0, 1], so that the PNG's clipping cannot move the result past δ
    np.save("rgb.npy", (0.4 + 0.2 * np.random.default_rng(3).random((3, 16, 16))).astype(np.float32))
    assert edn(monkeypatch, capsys, "sr", "--scale", "4", "rgb.npy", "-o", "o16.png", *GD)[0] == 0
    assert edn(monkeypatch, capsys, "sr", "--scale", "4", "rgb.npy", "-o", "o8.png", *GD, "--bit-depth", "8")[0] == 0
    assert Path("o16.png").read_bytes()[24:26] == bytes([16, 2])
    assert Path("o8.png").read_bytes()[24:26] == bytes([8, 2])
    assert read_image("o16.png")[1].dtype == "uint16"


def test_png_with_more_than_four_channels_is_a_usage_error():
    with pytest.raises(UsageError, match="1, 3 or 4 channels"):
        encode_image(np.zeros((5, 4, 4), np.float32), "png")


# ---------------------------------------------------------------------------- help text
def test_simulate_ct_help_says_hdf5_only():
    from typer.testing import CliRunner

    from edncli.cli.main import app

    out = CliRunner().invoke(app, ["simulate", "ct", "--help"], terminal_width=200).output
    assert ".h5" in out and ".png" not in out
