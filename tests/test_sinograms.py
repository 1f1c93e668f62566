"""Sinogram I/O (DXchange HDF5, npy/tif/png, angle files), axis estimation, walnut loader."""

from __future__ import annotations

import math

import h5py
import numpy as np
import pytest

from edncli.errors import InputError, UsageError
from edncli.io.sinograms import (
    WALNUT_DIR,
    Sinogram,
    estimate_center,
    load_walnut,
    read_angles,
    read_sinogram,
    write_sinogram,
)


def _theta(n: int = 12) -> np.ndarray:
    return np.linspace(0, np.pi, n, endpoint=False)


def test_hdf5_round_trip_2d(tmp_path):
    data = np.random.default_rng(0).random((12, 9)).astype(np.float32)
    p = write_sinogram(tmp_path / "s.h5", data, _theta())
    with h5py.File(p, "r") as f:
        np.testing.assert_allclose(f["/exchange/theta"][...], np.rad2deg(_theta()))
        assert f["/exchange/data"].dtype == np.float32 and f["/exchange/data"].shape == (12, 9)
    s = read_sinogram(p)
    assert isinstance(s, Sinogram) and s.data.shape == (1, 12, 9) and s.data.dtype == np.float32
    np.testing.assert_array_equal(s.data[0], data)
    np.testing.assert_allclose(s.theta, _theta(), rtol=1e-12, atol=1e-15)
    assert not s.normalised and s.source.endswith(":/exchange/data")
    assert not list(tmp_path.glob("*.tmp"))


def test_hdf5_round_trip_3d_and_slices(tmp_path):
    data = np.random.default_rng(1).random((4, 12, 9)).astype(np.float32)  # (slices, angles, det)
    p = write_sinogram(tmp_path / "s.h5", data, _theta())
    with h5py.File(p, "r") as f:
        assert f["/exchange/data"].shape == (12, 4, 9)  # DXchange: (angles, rows, detectors)
    np.testing.assert_array_equal(read_sinogram(p).data, data)
    np.testing.assert_array_equal(read_sinogram(p, slices=[3, 1]).data, data[[3, 1]])
    np.testing.assert_array_equal(read_sinogram(p, slices=range(1, 3)).data, data[1:3])
    np.testing.assert_array_equal(read_sinogram(p, slices=2).data, data[[2]])
    with pytest.raises(UsageError, match="slices"):
        read_sinogram(p, slices=[7])


def test_flat_dark_normalisation(tmp_path):
    rng = np.random.default_rng(2)
    n_ang, rows, det = 10, 3, 8
    line_integrals = rng.random((n_ang, rows, det)) * 2
    dark = 100 + rng.random((5, rows, det))
    white = 1000 + 50 * rng.random((4, rows, det))
    d, w = dark.mean(0), white.mean(0)
    counts = d + (w - d) * np.exp(-line_integrals)
    p = tmp_path / "scan.h5"
    with h5py.File(p, "w") as f:
        f["/exchange/data"] = counts.astype(np.float32)
        f["/exchange/data_white"] = white.astype(np.float32)
        f["/exchange/data_dark"] = dark.astype(np.float32)
        f["/exchange/theta"] = np.linspace(0, 180, n_ang, endpoint=False)
    s = read_sinogram(p)
    assert s.normalised and s.data.shape == (rows, n_ang, det)
    np.testing.assert_allclose(s.data, np.transpose(line_integrals, (1, 0, 2)), atol=2e-4)
    s1 = read_sinogram(p, slices=[2])
    np.testing.assert_allclose(s1.data[0], line_integrals[:, 2, :], atol=2e-4)
    raw = read_sinogram(p, normalise=False)
    assert not raw.normalised and raw.data.max() > 100


def test_flats_apply_to_the_projections_not_to_another_dataset(tmp_path, monkeypatch, capsys):
    # was: --dataset pointing at a processed sinogram stored beside the raw projections still
    # had the file's flats applied to it: -log of line integrals over ~1000 counts
    rng = np.random.default_rng(3)
    n_ang, rows, det = 12, 2, 9
    line_integrals = (rng.random((n_ang, rows, det)) * 2).astype(np.float32)
    white = np.full((3, rows, det), 1000.0, np.float32)
    p = tmp_path / "scan.h5"
    with h5py.File(p, "w") as f:
        f["/exchange/data"] = (white[0] * np.exp(-line_integrals)).astype(np.float32)
        f["/exchange/data_white"] = white
        f["/exchange/theta"] = np.linspace(0, 180, n_ang, endpoint=False)
        f["/processed/sino"] = line_integrals
    expected = np.transpose(line_integrals, (1, 0, 2))
    np.testing.assert_allclose(read_sinogram(p).data, expected, atol=2e-5)
    np.testing.assert_allclose(read_sinogram(p, dataset="exchange/data").data, expected, atol=2e-5)
    other = read_sinogram(p, dataset="/processed/sino")
    assert not other.normalised and any("not applied" in w for w in other.warnings)
    np.testing.assert_array_equal(other.data, expected)
    forced = read_sinogram(p, dataset="/processed/sino", normalise=True)  # asked for: applied
    assert forced.normalised and forced.data.min() > 5
    assert not read_sinogram(p, normalise=False).normalised
    with h5py.File(tmp_path / "plain.h5", "w") as f:
        f["/exchange/data"] = line_integrals
        f["/exchange/theta"] = np.linspace(0, 180, n_ang, endpoint=False)
    with pytest.raises(InputError, match="no /exchange/data_white"):
        read_sinogram(tmp_path / "plain.h5", normalise=True)
    np.save(tmp_path / "s.npy", expected[0])
    with pytest.raises(UsageError, match="flat-field"):
        read_sinogram(tmp_path / "s.npy", theta=_theta(n_ang), normalise=True)
    # the command line: the warning on stderr, and --flat-field off|on|bad
    from .test_cli import edn

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("EDN_CACHE_DIR", str(tmp_path / "cache"))
    common = ["ct", "--sinogram", "scan.h5", "--size", "6", "--method", "gd", "--max-iter", "2", "--delta", "1e5", "--force"]
    code, _, err = edn(monkeypatch, capsys, *common, "--dataset", "/processed/sino", "-o", "a.tif")
    assert code == 0 and "were not applied to /processed/sino" in err, err
    code, _, err = edn(monkeypatch, capsys, *common, "--flat-field", "off", "-o", "b.tif", "--report", "b.json")
    assert code == 0, err
    import json

    assert json.loads((tmp_path / "b.json").read_text())["inputs"]["normalised"] is False
    code, _, err = edn(monkeypatch, capsys, *common, "--flat-field", "maybe", "-o", "c.tif")
    assert code == 2 and "--flat-field must be auto, on or off" in err and "Traceback" not in err


def test_transmission_floor(tmp_path):
    p = tmp_path / "scan.h5"
    with h5py.File(p, "w") as f:
        f["/exchange/data"] = np.zeros((2, 3), np.float32)  # below dark: negative transmission
        f["/exchange/data_white"] = np.full((1, 3), 10, np.float32)
        f["/exchange/data_dark"] = np.full((1, 3), 1, np.float32)
        f["/exchange/theta"] = [0.0, 90.0]
    s = read_sinogram(p, floor=1e-3)
    np.testing.assert_allclose(s.data, -math.log(1e-3), rtol=1e-6)
    assert any("clipped" in n for n in s.notes)


def test_missing_theta_is_an_error(tmp_path):
    p = tmp_path / "s.h5"
    with h5py.File(p, "w") as f:
        f["/exchange/data"] = np.ones((5, 7), np.float32)
    with pytest.raises(UsageError, match="no projection angles.*--angles N or --angle-file FILE"):
        read_sinogram(p)
    s = read_sinogram(p, theta=np.linspace(0, np.pi, 5))
    assert s.theta.shape == (5,)
    with pytest.raises(UsageError, match="give exactly 5"):
        read_sinogram(p, theta=np.linspace(0, np.pi, 4))


def test_nan_is_an_input_error(tmp_path):
    data = np.ones((4, 5), np.float32)
    data[1, 2] = np.nan
    p = tmp_path / "s.h5"
    with h5py.File(p, "w") as f:
        f["/exchange/data"] = data
        f["/exchange/theta"] = [0.0, 45.0, 90.0, 135.0]
    with pytest.raises(InputError, match="NaN"):
        read_sinogram(p)
    q = tmp_path / "s.npy"
    np.save(q, np.where(np.isnan(data), np.inf, data))
    with pytest.raises(InputError, match="NaN/Inf"):
        read_sinogram(q, theta=_theta(4))
    with pytest.raises(UsageError):
        write_sinogram(tmp_path / "w.h5", data, _theta(4))


def test_missing_file_dataset_and_not_hdf5(tmp_path):
    with pytest.raises(InputError, match="does not exist"):
        read_sinogram(tmp_path / "nope.h5")
    p = write_sinogram(tmp_path / "s.h5", np.ones((3, 4)), _theta(3))
    with pytest.raises(InputError, match="/exchange/other"):
        read_sinogram(p, dataset="/exchange/other")
    np.testing.assert_array_equal(read_sinogram(p, dataset="/exchange/data").data, np.ones((1, 3, 4)))
    junk = tmp_path / "junk.h5"
    junk.write_text("hello")
    with pytest.raises(InputError, match="not HDF5"):
        read_sinogram(junk)


def test_plain_files(tmp_path):
    from PIL import Image
    import tifffile

    data = (np.random.default_rng(3).random((6, 9)) * 60000).astype(np.uint16)
    np.save(tmp_path / "s.npy", data.astype(np.float32))
    tifffile.imwrite(tmp_path / "s.tif", data.astype(np.float32))
    Image.fromarray(data).save(tmp_path / "s.png")
    for name in ("s.npy", "s.tif", "s.png"):
        s = read_sinogram(tmp_path / name, theta=_theta(6))
        assert s.data.shape == (1, 6, 9)
        np.testing.assert_array_equal(s.data[0], data.astype(np.float32))
    s = read_sinogram(tmp_path / "s.npy", theta=_theta(9), transpose=True)
    np.testing.assert_array_equal(s.data[0], data.T.astype(np.float32))
    with pytest.raises(UsageError, match="no projection angles"):
        read_sinogram(tmp_path / "s.npy")


def test_angle_file(tmp_path):
    p = tmp_path / "angles.txt"
    p.write_text("# degrees\n0\n45.5\n\n90, 135\n")
    np.testing.assert_allclose(read_angles(p), np.deg2rad([0, 45.5, 90, 135]))
    np.testing.assert_allclose(read_angles(p, unit="rad"), [0, 45.5, 90, 135])
    np.save(tmp_path / "s.npy", np.ones((4, 3), np.float32))
    s = read_sinogram(tmp_path / "s.npy", angle_file=p)
    np.testing.assert_allclose(s.theta, np.deg2rad([0, 45.5, 90, 135]))
    with pytest.raises(UsageError, match="unit"):
        read_angles(p, unit="grad")
    with pytest.raises(InputError, match="does not exist"):
        read_angles(tmp_path / "missing.txt")
    bad = tmp_path / "bad.txt"
    bad.write_text("0\nfoo\n")
    with pytest.raises(InputError, match="line 2"):
        read_angles(bad)


@pytest.mark.parametrize("offset", [3.5, -2.25, 0.0])
def test_estimate_center(offset, tmp_path):
    torch = pytest.importorskip("torch")
    pytest.importorskip("astra")
    from edncli.operators.tomography import CTGeometry, simulate_ct

    size = 48
    det = 72
    center = (det - 1) / 2 + offset
    g = CTGeometry(size, np.linspace(0, 2 * np.pi, 90, endpoint=False), det, center=center)
    c = (torch.arange(size) - (size - 1) / 2) / (size / 2)
    y, x = torch.meshgrid(-c, c, indexing="ij")
    img = (((x - 0.3) ** 2 + (y - 0.1) ** 2) < 0.3**2).float() + (((x + 0.2) ** 2 + y**2) < 0.15**2).float()
    sino = simulate_ct(img[None], g, backend="astra-cpu")[0].numpy()
    assert estimate_center(sino, g.angles) == pytest.approx(center, abs=0.5)
    # 180 degrees plus one step is enough
    half = np.linspace(0, np.pi, 46)
    g2 = CTGeometry(size, half, det, center=center)
    sino2 = simulate_ct(img[None], g2, backend="astra-cpu")[0].numpy()
    assert estimate_center(sino2, half) == pytest.approx(center, abs=0.5)


def test_estimate_center_needs_opposite_angles():
    with pytest.raises(UsageError, match="180"):
        estimate_center(np.ones((10, 8)), np.linspace(0, np.pi / 2, 10))


@pytest.mark.skipif(not (WALNUT_DIR / "walnut_sinogram.png").is_file(), reason="walnut data not present")
def test_walnut_loader_and_fbp():
    torch = pytest.importorskip("torch")
    pytest.importorskip("astra")
    from PIL import Image

    from edncli.operators.tomography import fbp

    sino, geom = load_walnut(size=164)
    assert sino.data.shape == (1, 120, 328) and sino.data.dtype == np.float32
    assert 0 <= sino.data.min() and sino.data.max() <= 1
    assert geom.beam == "fan" and geom.sino_shape == (120, 328)
    assert geom.center == pytest.approx(163.5 + 0.27 / 0.35, abs=1e-6)
    rec = fbp(torch.from_numpy(sino.data), geom, filter="hann")[0].numpy()
    ref = np.array(Image.open(WALNUT_DIR / "walnut.png"), dtype=np.float64)
    ref = ref.reshape(164, 2, 164, 2).mean(axis=(1, 3))
    assert np.corrcoef(rec.ravel(), ref.ravel())[0, 1] > 0.9  # same orientation, scale and shift
