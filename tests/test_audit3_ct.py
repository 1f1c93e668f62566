"""CT audit 3: sinogram files that used to end in a traceback or a silently wrong result.

Each test names the defect it guards against.
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch

from edncli.errors import InputError, UsageError
from edncli.io.sinograms import estimate_center, read_sinogram, write_sinogram
from edncli.operators.tomography import CTGeometry, simulate_ct

from .test_cli import _phantom, edn
from .test_ct_cli_errors import ctdir  # noqa: F401 - fixture


def _one_line(err: str) -> bool:
    return err.startswith("edn: error:") and err.count("\n") == 1 and "Traceback" not in err


def _shifted_sinogram(shift: float, n_angles: int = 60, size: int = 48, det: int = 68) -> tuple[np.ndarray, CTGeometry]:
    """A noise-free parallel-beam sinogram over [0, 180°) of a 48x48 phantom, rotation axis off by ``shift``."""
    from PIL import Image

    _phantom(Path("phantom.png"), n=size)
    img = np.asarray(Image.open("phantom.png"), dtype=np.float32) / 255
    geom = CTGeometry(size, np.linspace(0, np.pi, n_angles, endpoint=False), det, center=(det - 1) / 2 + shift)
    return simulate_ct(torch.from_numpy(img)[None], geom)[0].numpy(), geom


def _scan(path: str, white: np.ndarray, dark: np.ndarray, n_angles: int = 8, rows: int = 3, det: int = 9) -> None:
    with h5py.File(path, "w") as f:
        f["/exchange/data"] = np.full((n_angles, rows, det), 500, np.float32)
        f["/exchange/data_white"] = white
        f["/exchange/data_dark"] = dark
        f["/exchange/theta"] = np.linspace(0, 180, n_angles, endpoint=False)


# ------------------------------------------------------------------ flat/dark fields of the wrong shape


@pytest.mark.parametrize(
    "white_shape, dark_shape",
    [((2, 3, 8), (2, 3, 9)), ((2, 3, 9), (2, 3, 10)), ((2, 2, 9), (2, 3, 9)), ((2, 3), (2, 9))],
    ids=["white-detectors", "dark-detectors", "white-rows", "2d-white-detectors"],
)
def test_flat_field_that_does_not_fit_the_projections_is_an_input_error(ctdir, monkeypatch, capsys, white_shape, dark_shape):
    # was: a numpy broadcasting traceback (exit 1), or an IndexError reading a missing row
    _scan("scan.h5", np.full(white_shape, 1000, np.float32), np.full(dark_shape, 10, np.float32))
    with pytest.raises(InputError, match="does not fit the projections"):
        read_sinogram("scan.h5")
    code, _, err = edn(monkeypatch, capsys, "ct", "--sinogram", "scan.h5", "--slices", "2", "-o", "x.tif", "--delta", "1")
    assert code == 4 and _one_line(err) and "does not fit the projections (8, 3, 9)" in err, err
    assert not Path("x.tif").exists()


# ------------------------------------------------------------------ values that are not numbers, empty axes


def test_sinogram_files_without_real_numbers_or_with_an_empty_axis_are_input_errors(ctdir, monkeypatch, capsys):
    # was: tracebacks (ValueError converting strings, TypeError on a theta group, zero-size
    # reductions, log2(0)), complex data silently cut to its real part, "give exactly 0 angles"
    data = np.ones((6, 2, 9), np.float32)
    theta = np.linspace(0, 180, 6, endpoint=False)
    cases = {
        "theta-strings.h5": dict(data=data, theta=np.array([b"a"] * 6)),
        "no-angles.h5": dict(data=np.ones((0, 2, 9), np.float32), theta=np.zeros(0)),
        "no-detectors.h5": dict(data=np.ones((6, 2, 0), np.float32), theta=theta),
        "complex.h5": dict(data=data.astype(np.complex64), theta=theta),
    }
    for name, fields in cases.items():
        with h5py.File(name, "w") as f:
            f["/exchange/data"] = fields["data"]
            f["/exchange/theta"] = fields["theta"]
    with h5py.File("theta-group.h5", "w") as f:
        f["/exchange/data"] = data
        f.create_group("/exchange/theta")
    np.save("complex.npy", np.ones((6, 9), np.complex64))
    np.save("strings.npy", np.array([["a"] * 9] * 6))
    np.save("no-detectors.npy", np.ones((6, 0), np.float32))
    for name in [*cases, "theta-group.h5", "complex.npy", "strings.npy", "no-detectors.npy"]:
        with pytest.raises(InputError):
            read_sinogram(name, theta=None if name.endswith(".h5") else theta)
        extra = [] if name.endswith(".h5") else ["--angles", "6"]
        code, _, err = edn(monkeypatch, capsys, "ct", "--sinogram", name, *extra, "--size", "8", "-o", "x.tif", "--delta", "1")
        assert code == 4 and _one_line(err), (name, err)
        assert not Path("x.tif").exists()


def test_data_compressed_with_a_missing_hdf5_filter_is_an_input_error(ctdir, monkeypatch, capsys):
    # was: h5py's OSError as a traceback (exit 1): DXchange files are often blosc/lz4-compressed
    with h5py.File("filtered.h5", "w") as f:
        d = f.create_dataset("/exchange/data", shape=(6, 2, 9), dtype="f4", chunks=(6, 2, 9), compression=32008,
                             allow_unknown_filter=True)  # bitshuffle, which plain h5py cannot decode
        d.id.write_direct_chunk((0, 0, 0), np.ones((6, 2, 9), "f4").tobytes())
        f["/exchange/theta"] = np.linspace(0, 180, 6, endpoint=False)
    if importlib.util.find_spec("hdf5plugin") is not None:
        pytest.skip("hdf5plugin is installed: the filter is there")
    code, _, err = edn(monkeypatch, capsys, "ct", "--sinogram", "filtered.h5", "-o", "x.tif", "--delta", "1")
    assert code == 4 and _one_line(err) and "cannot be read" in err and "hdf5plugin" in err, err
    assert not Path("x.tif").exists()


# ------------------------------------------------------------------ a stack written as PNG


@pytest.mark.parametrize("out", [["-o", "-"], ["-o", "x.tif", "--format", "png"]], ids=["stdout", "format-png"])
def test_a_stack_of_slices_is_not_written_as_png_channels(ctdir, monkeypatch, capsys, out):
    # was: 2, 3 or 4 slices silently written as one gray+alpha, RGB or RGBA PNG image
    sino, geom = _shifted_sinogram(0.0)
    write_sinogram("stack.h5", np.stack([sino, sino, sino]), geom.angles)
    code, stdout, err = edn(monkeypatch, capsys, "ct", "--sinogram", "stack.h5", "--size", "48", *out, "--delta", "1")
    assert code == 2 and _one_line(err) and "3 slices make a stack" in err, err
    assert stdout == "" and not Path("x.tif").exists()


def test_a_stack_of_three_slices_is_written_as_gray_tiff_pages(ctdir, monkeypatch, capsys):
    # was: a 3- or 4-slice volume was stored as one RGB TIFF image (ImageJ and other readers show
    # one colour picture, not three slices); a colour image stays RGB
    import tifffile

    sino, geom = _shifted_sinogram(0.0)
    write_sinogram("stack.h5", np.stack([sino, sino, sino]), geom.angles)
    code, _, err = edn(monkeypatch, capsys, "ct", "--sinogram", "stack.h5", "--size", "48", "-o", "v.tif",
                       "--delta", "1", "--quiet")
    assert code == 0, err
    with tifffile.TiffFile("v.tif") as tif:
        assert tif.pages[0].photometric == tifffile.PHOTOMETRIC.MINISBLACK
        assert tif.asarray().shape == (3, 48, 48)
    from edncli.io.images import encode_image

    rgb = np.random.default_rng(0).random((3, 8, 8)).astype(np.float32)
    Path("rgb.tif").write_bytes(encode_image(rgb, "tif"))
    with tifffile.TiffFile("rgb.tif") as tif:
        assert tif.pages[0].photometric == tifffile.PHOTOMETRIC.RGB
        np.testing.assert_array_equal(tif.asarray(), rgb)


# ------------------------------------------------------------------ dead flat-field pixels


def test_dead_flat_field_pixels_are_filled_from_their_neighbours(ctdir):
    # was: a dead pixel (flat not above dark) became -log(1e-6) = 13.8 at every angle: a column of
    # maximal attenuation, a ring, δ out of reach and a wrong automatic rotation centre
    tmp_path = ctdir
    truth, geom = _shifted_sinogram(2.0)  # (60, 68), axis at 35.5
    truth = truth / 10  # line integrals up to 1.3: transmissions well above the floor
    white = np.full((1, 1, geom.detectors), 1000.0)
    dark = np.full((1, 1, geom.detectors), 10.0)
    white[..., 20] = 5.0  # dead: below the dark field
    counts = dark[0] + (white[0] - dark[0]) * np.exp(-truth[:, None, :])
    with h5py.File(tmp_path / "scan.h5", "w") as f:
        f["/exchange/data"] = counts.astype(np.float32)
        f["/exchange/data_white"] = white.astype(np.float32)
        f["/exchange/data_dark"] = dark.astype(np.float32)
        f["/exchange/theta"] = np.rad2deg(geom.angles)
    s = read_sinogram(tmp_path / "scan.h5")
    want = 0.5 * (truth[:, 19] + truth[:, 21])
    np.testing.assert_allclose(s.data[0][:, 20], want, atol=1e-5)
    np.testing.assert_allclose(np.delete(s.data[0], 20, axis=1), np.delete(truth, 20, axis=1), atol=1e-5)
    assert any("dead detector pixel" in n and "[20]" in n for n in s.notes)
    assert abs(estimate_center(s.data[0], s.theta) - geom.center) < 0.1


def test_a_slice_without_any_good_flat_field_pixel_is_an_input_error(tmp_path):
    white = np.full((2, 3, 9), 1000, np.float32)
    white[:, 1, :] = 0  # row 1 has no usable flat at all (a third of the pixels: under the global half)
    _scan(str(tmp_path / "scan.h5"), white, np.zeros((1, 3, 9), np.float32))
    with pytest.raises(InputError, match="any detector pixel of slice 1"):
        read_sinogram(tmp_path / "scan.h5")
    assert np.isfinite(read_sinogram(tmp_path / "scan.h5", slices=[0, 2]).data).all()


# ------------------------------------------------------------------ angles


def test_theta_in_radians_is_flagged(ctdir, monkeypatch, capsys):
    # was: /exchange/theta written in radians read as 0..3.1 degrees, 300 silent iterations, exit 3
    sino, geom = _shifted_sinogram(0.0)
    with h5py.File("rad.h5", "w") as f:
        f["/exchange/data"] = sino
        f["/exchange/theta"] = geom.angles  # radians by mistake
    code, _, err = edn(monkeypatch, capsys, "ct", "--sinogram", "rad.h5", "--size", "48", "-o", "x.tif", "--delta", "1",
                       "--max-iter", "2", "--report", "r.json")
    assert "edn: warning:" in err and "looks like radians" in err and "--angle-unit rad" in err, err
    assert json.loads(Path("r.json").read_text())["inputs"]["warnings"]
    np.save("s.npy", sino)
    np.savetxt("rad.txt", geom.angles)  # an angle file in radians, read as degrees
    code, _, err = edn(monkeypatch, capsys, "ct", "--sinogram", "s.npy", "--angle-file", "rad.txt", "--size", "48", "-o",
                       "z.tif", "--delta", "1", "--max-iter", "2")
    assert "edn: warning: angle file 'rad.txt'" in err and "add --angle-unit rad" in err, err
    write_sinogram("deg.h5", sino, geom.angles)  # degrees, as DXchange wants: no warning
    code, _, err = edn(monkeypatch, capsys, "ct", "--sinogram", "deg.h5", "--size", "48", "-o", "y.tif", "--delta", "1",
                       "--max-iter", "2")
    assert "warning" not in err


def test_angle_unit_without_an_angle_file_is_a_usage_error(ctdir, monkeypatch, capsys):
    # was: silently ignored, so `--angle-unit rad` for an /exchange/theta in radians did nothing
    sino, geom = _shifted_sinogram(0.0)
    write_sinogram("s.h5", sino, geom.angles)
    code, _, err = edn(monkeypatch, capsys, "ct", "--sinogram", "s.h5", "--angle-unit", "rad", "-o", "x.tif", "--delta", "1")
    assert code == 2 and _one_line(err) and "--angle-unit rad is the unit of --angle-file" in err, err
    assert not Path("x.tif").exists()
    np.savetxt("angles.txt", geom.angles)
    np.save("s.npy", sino)
    code, _, err = edn(monkeypatch, capsys, "ct", "--sinogram", "s.npy", "--angle-file", "angles.txt", "--angle-unit", "rad",
                       "--size", "48", "-o", "x.tif", "--delta", "1", "--max-iter", "2")
    assert code in (0, 3), err


def test_repeated_angles_keep_the_automatic_centre(ctdir, monkeypatch, capsys):
    # was: a scan with every angle twice had a median angular step of 0, so its 180° span looked
    # short: --center fell back to the detector middle (and estimate_center found no pairs)
    sino, geom = _shifted_sinogram(2.5)
    theta = np.concatenate([geom.angles, geom.angles])
    doubled = np.concatenate([sino, sino])
    assert abs(estimate_center(doubled, theta) - geom.center) < 0.1
    write_sinogram("dup.h5", doubled, theta)
    code, _, err = edn(monkeypatch, capsys, "ct", "--sinogram", "dup.h5", "--size", "48", "-o", "x.tif", "--delta", "1",
                       "--max-iter", "2", "--report", "r.json")
    report = json.loads(Path("r.json").read_text())
    assert report["center_rule"] == "auto" and abs(report["center"] - geom.center) < 0.1, report["center"]


@pytest.mark.parametrize("n_angles", [60, 90])
@pytest.mark.parametrize("shift", [0.0, 3.5])
def test_automatic_centre_of_an_off_axis_object_over_180_degrees(ctdir, monkeypatch, capsys, n_angles, shift):
    # was: a [0, 180°) scan has no exactly opposite projections; theta = 0 was registered against
    # pi - step, where an object ~40 px off the axis has moved ~r step pixels, so the axis came
    # out half a pixel or more off (44.0 for 44.5) and cg ran to the cap without reaching δ
    from PIL import Image

    _phantom(Path("full.png"), n=128)
    img = np.asarray(Image.open("full.png"), dtype=np.float32)[:63, :63] / 255  # a corner: off the axis
    det = 90
    geom = CTGeometry(63, np.linspace(0, np.pi, n_angles, endpoint=False), det, center=(det - 1) / 2 + shift)
    sino = simulate_ct(torch.from_numpy(img)[None], geom)[0].numpy()
    sino = sino + np.random.default_rng(0).normal(0, 0.01, sino.shape).astype(np.float32)
    assert abs(estimate_center(sino, geom.angles) - geom.center) < 0.1


def test_transpose_applies_to_a_2d_hdf5_dataset(tmp_path):
    # was: --transpose silently ignored for HDF5, so a (detectors, angles) dataset failed with an
    # angle-count error that --transpose was meant to avoid
    data = np.arange(5 * 7, dtype=np.float32).reshape(5, 7)  # (angles, detectors)
    with h5py.File(tmp_path / "s.h5", "w") as f:
        f["/sino"] = data.T
        f["/vol"] = np.ones((5, 2, 7), np.float32)
        f["/exchange/theta"] = np.linspace(0, 180, 5, endpoint=False)
    s = read_sinogram(tmp_path / "s.h5", dataset="/sino", transpose=True)
    np.testing.assert_array_equal(s.data[0], data)
    with pytest.raises(UsageError, match="transpose applies to 2D"):
        read_sinogram(tmp_path / "s.h5", dataset="/vol", transpose=True)


def test_a_folder_given_as_the_sinogram_is_named_as_such(ctdir, monkeypatch, capsys):
    # was: "sinogram file 'scans' does not exist" for a folder that does exist
    Path("scans").mkdir()
    code, _, err = edn(monkeypatch, capsys, "ct", "--sinogram", "scans", "--angles", "6", "-o", "x.tif", "--delta", "1")
    assert code == 4 and _one_line(err) and "'scans' is a folder" in err, err


# ------------------------------------------------------------------ the matrix cache


def test_a_cache_entry_with_indices_out_of_range_is_rebuilt(tmp_path):
    # was: loaded as is (its zip checksums were fine) and handed to torch's CSR product, which
    # trusts its indices: a segmentation fault, or garbage norms and a traceback from the solver
    from edncli.operators.base import adjoint_mismatch
    from edncli.operators.tomography import make_ct_operator

    g = CTGeometry(16, np.linspace(0, np.pi, 12, endpoint=False), 23)
    make_ct_operator(g, backend="matrix", cache_dir=tmp_path)
    (path,) = tmp_path.glob("*.npz")
    with np.load(path) as z:
        entry = {k: z[k] for k in z.files}
    entry["indices"] = entry["indices"] + g.size**2
    with open(path, "wb") as fh:
        np.savez(fh, **entry)
    with pytest.warns(UserWarning, match="unreadable"):
        op = make_ct_operator(g, backend="matrix", cache_dir=tmp_path)
    assert not op.cache_hit and adjoint_mismatch(op) < 1e-5


# ------------------------------------------------------------------ fan-beam default size


def test_fan_beam_default_size_is_the_detector_width_at_the_axis(ctdir, monkeypatch, capsys):
    # was: --size defaulted to the detector count whatever the spacing and magnification, so a
    # close source failed with "source_origin=25 puts the source inside the 40x40 image" for an
    # image the user never asked for (and a far one got an image twice the field of view)
    np.save("fan.npy", np.ones((30, 40), np.float32))
    args = ["ct", "--sinogram", "fan.npy", "--angles", "30", "--beam", "fan", "--delta", "1", "--max-iter", "1", "--force"]
    code, _, err = edn(monkeypatch, capsys, *args, "--source-origin", "25", "--origin-detector", "25", "-o", "x.tif",
                       "--report", "r.json")
    assert code in (0, 3), err
    assert json.loads(Path("r.json").read_text())["geometry"]["size"] == 20  # 40 detectors of 1 px, magnification 2
    # the walnut's framing: a detector pitch equal to the magnification gives the detector count
    code, _, err = edn(monkeypatch, capsys, *args, "--source-origin", "100", "--origin-detector", "50",
                       "--detector-spacing", "1.5", "-o", "y.tif", "--report", "r.json")
    assert code in (0, 3), err
    assert json.loads(Path("r.json").read_text())["geometry"]["size"] == 40


# ------------------------------------------------------------------ rotation centre of a stack


def test_automatic_centre_of_a_stack_is_not_decided_by_empty_slices(ctdir, monkeypatch, capsys):
    # was: the median of per-slice estimates, so rows of air above the sample (noise only, random
    # estimates) outvoted the three rows holding it: a wrong axis, and those rows far from δ
    sino, geom = _shifted_sinogram(5.0)
    noise = np.random.default_rng(0).normal(0, 0.05, (12, *sino.shape)).astype(np.float32)
    stack = np.stack([sino if k < 3 else np.zeros_like(sino) for k in range(12)]) + noise
    assert abs(estimate_center(stack, geom.angles) - geom.center) < 0.2
    write_sinogram("stack.h5", stack, geom.angles)
    code, _, err = edn(monkeypatch, capsys, "ct", "--sinogram", "stack.h5", "--size", "48", "-o", "x.tif",
                       "--noise-sigma", "0.05", "--report", "r.json")
    report = json.loads(Path("r.json").read_text())
    assert report["center_rule"] == "auto" and abs(report["center"] - geom.center) < 0.2, report["center"]
    assert code == 0 and report["delta_reached"], err


# ------------------------------------------------------------------ sharded = single process


def test_matrix_products_of_a_slice_do_not_depend_on_its_batch(tmp_path):
    # was: torch's CPU SpMM sums another way when the batch is not a multiple of 4, so a torchrun
    # chunk of 6 slices projected differently from the same slices in a batch of 12: the sharded
    # volume differed from the single-process one (a slice took one CG iteration more)
    from edncli.operators.tomography import make_ct_operator

    g = CTGeometry(32, np.linspace(0, np.pi, 30, endpoint=False), 46)
    op = make_ct_operator(g, backend="matrix", cache_dir=tmp_path)
    x = torch.rand((12, 32, 32), generator=torch.Generator().manual_seed(0))
    y = op(x)
    back = op.adjoint(y)
    for lo, hi in [(0, 6), (6, 12), (0, 8), (3, 5), (1, 4), (2, 9)]:
        assert torch.equal(op(x[lo:hi]), y[lo:hi]), (lo, hi)
        assert torch.equal(op.adjoint(y[lo:hi]), back[lo:hi]), (lo, hi)
