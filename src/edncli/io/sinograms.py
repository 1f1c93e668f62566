"""Sinogram files: DXchange HDF5, ``.npy``, TIFF and 16-bit PNG; angle files; rotation-axis estimate.

In memory a sinogram stack is float32 ``(n_slices, n_angles, detectors)`` with angles in
radians. On disk (DXchange) ``/exchange/data`` is ``(angles, rows, detectors)`` or
``(angles, detectors)`` and ``/exchange/theta`` is in degrees.
"""

from __future__ import annotations

import math
import os
import re
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Optional, Sequence

import numpy as np

from ..errors import InputError, UsageError
from .values import float32_problem

if TYPE_CHECKING:  # pragma: no cover
    from ..operators.tomography import CTGeometry

#: The FIPS walnut in the project's public data (``$EDN_SHARED_DATA/walnut``; by default
#: ``../shared/data/walnut`` beside a source checkout, as the tests and benchmarks read it).
WALNUT_DIR = Path(os.environ.get("EDN_SHARED_DATA") or Path(__file__).resolve().parents[3].parent / "shared" / "data") / "walnut"
_NO_ANGLES = "no projection angles: the file has no /exchange/theta; pass --angles N or --angle-file FILE"


@dataclass
class Sinogram:
    """A stack of sinograms with its angles and provenance.

    Attributes
    ----------
    data:
        float32 ``(n_slices, n_angles, detectors)``; line integrals (``-log`` transmission when
        ``normalised``).
    theta:
        float64 ``(n_angles,)`` projection angles in radians.
    source:
        The file it came from (and dataset, for HDF5).
    normalised:
        True when flat/dark-field normalisation and ``-log`` were applied on reading.
    notes:
        Human-readable remarks on what was done (clipping, angle source, slices...).
    warnings:
        Remarks on data that are probably wrong (e.g. ``/exchange/theta`` that looks like
        radians); the CLI prints them on stderr.
    file_theta:
        The file's own angles (``/exchange/theta``, radians), whether used or replaced by
        ``theta``/``angle_file``; None when the file has none.
    """

    data: np.ndarray
    theta: np.ndarray
    source: str = ""
    normalised: bool = False
    notes: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    file_theta: Optional[np.ndarray] = None

    @property
    def n_slices(self) -> int:
        return int(self.data.shape[0])

    @property
    def n_angles(self) -> int:
        return int(self.data.shape[1])

    @property
    def detectors(self) -> int:
        return int(self.data.shape[2])

    def describe(self) -> dict:
        """Plain-JSON provenance summary (no data)."""
        return {
            "source": self.source,
            "shape": list(self.data.shape),
            "n_angles": self.n_angles,
            "theta_first": float(self.theta[0]),
            "theta_last": float(self.theta[-1]),
            "normalised": self.normalised,
            "notes": list(self.notes),
            "warnings": list(self.warnings),
        }


# ----------------------------------------------------------------------------------------------
# Angles
# ----------------------------------------------------------------------------------------------
def _to_radians(values: np.ndarray, unit: str, arg: str = "unit") -> np.ndarray:
    if unit in ("deg", "degree", "degrees"):
        return np.deg2rad(values)
    if unit in ("rad", "radian", "radians"):
        return values
    raise UsageError(f"{arg}={unit!r} is not known; use 'deg' or 'rad'")


def _radians_suspected(theta_deg: np.ndarray) -> bool:
    """Whether angles read as degrees are probably radians: ten or more distinct values, all
    within ±2π (a scan spanning under 6.3° cannot be reconstructed anyway)."""
    t = np.unique(np.asarray(theta_deg, dtype=np.float64).reshape(-1))
    return t.size >= 10 and float(np.max(np.abs(t))) <= 2 * np.pi * (1 + 1e-6)


def read_angles(path: str | os.PathLike, unit: str = "deg") -> np.ndarray:
    """Read projection angles from a text file, one per line (blank lines and ``#`` comments
    ignored; commas/whitespace also separate values).

    Returns
    -------
    numpy.ndarray
        float64 ``(n_angles,)`` in radians.
    """
    _to_radians(np.zeros(0), unit)  # validate the unit first
    p = Path(path)
    if not p.is_file():
        raise InputError(f"angle file {str(p)!r} does not exist; give a text file with one angle per line")
    values: list[float] = []
    try:
        text = p.read_text()
    except (OSError, UnicodeDecodeError) as exc:
        raise InputError(f"angle file {str(p)!r} cannot be read as text ({exc}); give one angle per line") from None
    for lineno, line in enumerate(text.splitlines(), 1):
        line = line.split("#", 1)[0].replace(",", " ").strip()
        for tok in line.split():
            try:
                values.append(float(tok))
            except ValueError:
                raise InputError(
                    f"angle file {str(p)!r} line {lineno}: {tok!r} is not a number; give one angle per line"
                ) from None
    arr = np.asarray(values, dtype=np.float64)
    if arr.size == 0:
        raise InputError(f"angle file {str(p)!r} holds no angles; give one angle per line")
    if not np.all(np.isfinite(arr)):
        raise InputError(f"angle file {str(p)!r} holds NaN/Inf; give finite angles")
    return _to_radians(arr, unit)


# ----------------------------------------------------------------------------------------------
# Reading
# ----------------------------------------------------------------------------------------------
def _real(arr, what: str) -> np.ndarray:
    """``arr`` as float64, refusing what is not real numbers (strings, complex, compound types)."""
    arr = np.asarray(arr)
    if arr.dtype.kind not in "biuf":
        raise InputError(f"{what} holds {arr.dtype} values, not real numbers; give a numeric (integer or float) array")
    return arr.astype(np.float64)


def _check_finite(arr: np.ndarray, what: str) -> None:
    """Finite values float32 can compute with (:func:`~edncli.io.values.float32_problem`)."""
    problem = float32_problem(arr)
    if problem is not None:
        fix = "" if "rescale" in problem else "; fix or crop the data before reconstructing"
        raise InputError(f"{what} {problem}{fix}")


def _slice_list(slices: Optional[Sequence[int] | range | slice], n_rows: int, what: str) -> list[int]:
    if slices is None:
        return list(range(n_rows))
    if isinstance(slices, slice):
        return list(range(n_rows))[slices]
    if isinstance(slices, (int, np.integer)):
        slices = [int(slices)]
    out = [int(s) for s in slices]
    if not out:
        raise UsageError(f"slices (--slices) select nothing in {what}; give detector rows in 0..{n_rows - 1}")
    bad = [s for s in out if not 0 <= s < n_rows]
    if bad:
        raise UsageError(f"slices (--slices) {', '.join(map(str, bad[:5]))} out of range for {what} with {n_rows} "
                         f"detector rows; use 0..{n_rows - 1}")
    return out


def _read_rows(dset, rows: list[int]) -> np.ndarray:
    """Read ``dset[:, rows, :]`` (h5py needs increasing unique fancy indices)."""
    uniq = sorted(set(rows))
    if uniq == list(range(uniq[0], uniq[-1] + 1)):
        block = np.asarray(dset[:, uniq[0] : uniq[-1] + 1, :])
    else:
        block = np.asarray(dset[:, uniq, :])
    pos = {r: i for i, r in enumerate(uniq)}
    return block[:, [pos[r] for r in rows], :]


def _field(f, name: str, rows: Optional[list[int]], path: str, data_shape: tuple) -> np.ndarray:
    """Average a flat/dark dataset over its first axis; returns ``(rows, det)`` or ``(det,)``.

    ``data_shape`` is the projections' ``(angles, rows, detectors)`` or ``(angles, detectors)``:
    the field must have as many detectors (and, when 3D, as many rows) as the projections.
    """
    import h5py  # noqa: PLC0415

    d = f[name]
    if not isinstance(d, h5py.Dataset) or d.ndim not in (2, 3):
        shape = getattr(d, "shape", "a group")
        raise InputError(f"{path}:{name} has shape {shape}; expected (n, rows, detectors) or (n, detectors)")
    want = tuple(data_shape[1:]) if d.ndim == 3 else tuple(data_shape[-1:])
    if tuple(d.shape[1:]) != want or d.shape[0] < 1:
        raise InputError(
            f"{path}:{name} has shape {d.shape}, which does not fit the projections {tuple(data_shape)}; "
            f"expected (n, {', '.join(map(str, want))}) with n >= 1"
        )
    if d.ndim == 3:
        arr = _read_rows(d, rows) if rows is not None else np.asarray(d[...])
        arr = _real(arr, f"{path}:{name}").mean(axis=0)
    else:
        arr = _real(d[...], f"{path}:{name}").mean(axis=0)
    _check_finite(arr, f"{path}:{name}")
    return arr


def _check_flat_field(gain: np.ndarray, path: str) -> None:
    """Refuse a flat field that is not above the dark field for most detector pixels.

    ``gain`` is ``white - dark``; a few dead pixels (``<= 0``) are tolerated (their values are
    interpolated from their neighbours, :func:`_fill_dead_pixels`), but not half of them.
    """
    bad = int(np.count_nonzero(~(gain > 0)))
    if 2 * bad >= gain.size:
        raise InputError(
            f"{path}: unusable flat field: /exchange/data_white is not above /exchange/data_dark (0 if absent) at "
            f"{bad} of {gain.size} detector pixels; check the flat and dark fields"
        )


def _fill_dead_pixels(sino: np.ndarray, dead: np.ndarray, path: str) -> None:
    """In place: replace the dead detector pixels of each slice of ``sino`` ``(n_slices,
    n_angles, det)`` (``dead`` ``(n_slices, det)``, flat field not above dark) by linear
    interpolation between the nearest good pixels on either side (the nearest one at an edge).

    Their normalised values carry no measurement (the transmission floor's ``-log``, a
    spurious column of maximal attenuation); interpolation is the usual dead-pixel correction.
    """
    for k, bad in enumerate(dead):
        if not bad.any():
            continue
        good = np.flatnonzero(~bad)
        if good.size == 0:
            raise InputError(
                f"{path}: unusable flat field: /exchange/data_white is not above /exchange/data_dark at any detector "
                f"pixel of slice {k}; check the flat and dark fields"
            )
        cols = np.flatnonzero(bad)
        at = np.searchsorted(good, cols)
        left = good[np.clip(at - 1, 0, good.size - 1)]
        right = good[np.clip(at, 0, good.size - 1)]
        wgt = np.where(right != left, (cols - left) / np.maximum(right - left, 1), 0.0)
        sino[k][:, cols] = (1 - wgt) * sino[k][:, left] + wgt * sino[k][:, right]


def _resolve_theta(
    theta: Optional[Sequence[float] | np.ndarray],
    angle_file: Optional[str | os.PathLike],
    angle_unit: str,
    file_theta: Optional[np.ndarray],
    n_angles: int,
    path: str,
    notes: list[str],
    warnings: list[str],
) -> np.ndarray:
    """The projection angles (radians) from ``theta``, ``angle_file`` or the file's own, checked
    against the projection count; angles read as degrees that look like radians add a warning."""
    if theta is not None and angle_file is not None:
        raise UsageError("theta and angle_file are both given; pass only one source of projection angles")
    if file_theta is not None and (theta is not None or angle_file is not None):
        deg = np.rad2deg(file_theta)
        warnings.append(
            f"{'the angle file replaces' if theta is None else 'the given angles replace'} the file's own {deg.size} angles in "
            f"/exchange/theta ({deg.min():.4g} to {deg.max():.4g} degrees)"
        )
    if theta is not None:
        out = np.asarray(theta, dtype=np.float64).reshape(-1)
        notes.append("angles from the theta argument (radians)")
        fix = f"give exactly {n_angles} angles"
    elif angle_file is not None:
        out = read_angles(angle_file, unit=angle_unit)
        notes.append(f"angles from {angle_file} ({angle_unit})")
        fix = f"the angle file {angle_file} must list exactly {n_angles}"
    elif file_theta is not None:
        out = file_theta
        notes.append("angles from /exchange/theta (degrees)")
        fix = f"the file's /exchange/theta holds {out.size}: replace them with --angle-file FILE of {n_angles} angles"
    else:
        raise UsageError(_NO_ANGLES)
    if out.size != n_angles:
        raise UsageError(f"{out.size} projection angles for {path} with {n_angles} projections; {fix}")
    if not np.all(np.isfinite(out)):
        raise UsageError("projection angles contain NaN/Inf; give finite angles")
    degrees = np.rad2deg(out)
    read_as_degrees = theta is None and (angle_file is None or angle_unit in ("deg", "degree", "degrees"))
    if read_as_degrees and _radians_suspected(degrees):
        if angle_file is None:
            where, fix = f"{path}:/exchange/theta", "convert it, or pass the angles with --angle-file FILE --angle-unit rad"
        else:
            where, fix = f"angle file {str(angle_file)!r}", "if so, add --angle-unit rad"
        warnings.append(
            f"{where} spans only {np.ptp(degrees):.3g} degrees ({degrees.min():.3g} to {degrees.max():.3g}): it looks "
            f"like radians, but is read as degrees; {fix}"
        )
    return out


def read_sinogram(
    path: str | os.PathLike,
    dataset: Optional[str] = None,
    theta: Optional[Sequence[float] | np.ndarray] = None,
    slices: Optional[Sequence[int] | range | slice | int] = None,
    angle_file: Optional[str | os.PathLike] = None,
    angle_unit: str = "deg",
    normalise: bool | str = "auto",
    floor: float = 1e-6,
    transpose: bool = False,
) -> Sinogram:
    """Read a sinogram (stack) from DXchange HDF5, ``.npy``, ``.tif``/``.tiff`` or 16-bit ``.png``.

    Parameters
    ----------
    path:
        The file. HDF5 files (``.h5``, ``.hdf5``, ``.hdf``, ``.nxs``, or any file h5py recognises)
        use the DXchange layout: ``/exchange/data`` ``(angles, rows, detectors)`` or
        ``(angles, detectors)``, ``/exchange/theta`` in degrees, optional
        ``/exchange/data_white`` and ``/exchange/data_dark``. Other files hold one
        ``(angles, detectors)`` array (``transpose=True`` for ``(detectors, angles)``, also for a
        2D HDF5 dataset; a 3D one with ``transpose`` is refused).
    dataset:
        HDF5 path of the projections instead of ``/exchange/data``.
    theta:
        Projection angles in radians (overrides ``/exchange/theta``).
    slices:
        Detector rows of a 3D scan to read (list, range, slice or int); default all rows.
    angle_file, angle_unit:
        A text file of angles (see :func:`read_angles`) instead of ``theta``.
    normalise:
        Flat-field correction: return ``-log(clip((data - dark) / (white - dark), floor))`` with
        ``/exchange/data_white`` and ``/exchange/data_dark`` (0 when absent). ``"auto"``: when
        the flats are present and the projections are ``/exchange/data``, the dataset they belong
        to in DXchange (another ``dataset`` is read as stored, with a note: it may hold line
        integrals already); ``True``: on any dataset, the flats required; ``False``: never.
        Data read as stored are taken for line integrals.
    floor:
        Smallest transmission kept before the logarithm.

    Returns
    -------
    Sinogram
        ``data`` float32 ``(n_slices, n_angles, detectors)``, ``theta`` radians.

    Raises
    ------
    InputError
        Missing/unreadable file, missing dataset, wrong rank or an empty axis, values that are
        not real numbers, NaN/Inf in the data, flat/dark fields that do not fit the projections.
    UsageError
        No projection angles anywhere, or an angle count that does not match the data.
    """
    p = Path(path)
    if not p.is_file():
        what = "is a folder" if p.is_dir() else "is not a regular file" if p.exists() else "does not exist"
        raise InputError(f"sinogram file {str(p)!r} {what}; give the path of one sinogram file")
    suffix = _kind(p)
    if suffix in (".npy", ".tif", ".tiff", ".png"):
        if dataset is not None:
            raise UsageError(f"dataset={dataset!r} applies to HDF5 files only, and {str(p)!r} is {suffix}; drop it")
        if normalise is True:
            raise UsageError(f"flat-field correction needs a DXchange HDF5 file with flats, and {str(p)!r} is {suffix}")
        return _read_plain(p, theta, slices, angle_file, angle_unit, transpose)
    import h5py  # noqa: PLC0415

    try:
        is_h5 = h5py.is_hdf5(str(p))
    except OSError:
        is_h5 = False
    if not is_h5:
        raise InputError(
            f"sinogram file {str(p)!r} is not HDF5 (nor .npy/.tif/.png); give a DXchange HDF5 file or a 2D array file"
        )
    try:  # registers the compression filters of hdf5plugin (blosc, lz4, bitshuffle...) when installed
        import hdf5plugin  # noqa: F401, PLC0415
    except ImportError:
        pass
    name = dataset or "/exchange/data"
    skipped_flats = None
    if normalise not in (True, False, "auto"):
        raise UsageError(f"--flat-field must be auto, on or off, got {normalise!r}")
    notes: list[str] = []
    try:
        f = h5py.File(str(p), "r")
    except OSError as exc:
        raise InputError(f"sinogram file {str(p)!r} cannot be opened as HDF5 ({exc})") from None
    try:
        with f:
            if name not in f or not isinstance(f[name], h5py.Dataset):
                held: list[str] = []
                f.visititems(lambda key, obj: held.append("/" + key) if isinstance(obj, h5py.Dataset) else None)
                listed = (f" (it holds {', '.join(held[:6])}{', ...' if len(held) > 6 else ''})" if held
                          else " (it holds no datasets)")
                raise InputError(
                    f"sinogram file {str(p)!r} has no dataset {name!r}{listed}; give the projections' path with --dataset"
                )
            d = f[name]
            if d.ndim not in (2, 3) or 0 in d.shape:
                raise InputError(
                    f"{p}:{name} has shape {d.shape}; expected (angles, rows, detectors) or (angles, detectors), none of them 0"
                )
            if transpose and d.ndim == 3:
                raise UsageError(
                    f"transpose applies to 2D (detectors, angles) arrays, and {p}:{name} is 3D: DXchange projections "
                    "are (angles, rows, detectors); drop transpose"
                )
            if d.ndim == 3:
                rows = _slice_list(slices, d.shape[1], f"{p}:{name}")
                raw = _real(_read_rows(d, rows), f"{p}:{name}")  # (angles, n_slices, det)
                raw = np.transpose(raw, (1, 0, 2))
                if len(rows) != d.shape[1]:
                    notes.append(f"detector rows {rows[:8]}{'...' if len(rows) > 8 else ''} of {d.shape[1]}")
            else:
                if slices is not None and _slice_list(slices, 1, f"{p}:{name}") != [0]:
                    raise UsageError(f"slices={slices!r} given, but {p}:{name} is a single 2D sinogram; drop slices")
                rows = None
                raw = _real(d[...], f"{p}:{name}")
                if transpose:
                    raw = raw.T
                    notes.append(f"read {name} as (detectors, angles), transposed")
                raw = raw[None]
            _check_finite(raw, f"{p}:{name}")
            file_theta = None
            if "/exchange/theta" in f:
                if not isinstance(f["/exchange/theta"], h5py.Dataset):
                    raise InputError(f"{p}:/exchange/theta is not a dataset; it should hold the angles in degrees")
                t = _real(f["/exchange/theta"][...], f"{p}:/exchange/theta").reshape(-1)
                _check_finite(t, f"{p}:/exchange/theta")
                file_theta = np.deg2rad(t)
            has_white = "/exchange/data_white" in f
            has_dark = "/exchange/data_dark" in f
            if normalise is True and not has_white:
                raise InputError(f"{p}: flat-field correction asked for, but the file has no /exchange/data_white")
            if normalise == "auto":
                normalise = name.strip("/") == "exchange/data"
                if has_white and not normalise:
                    skipped_flats = (f"{p}: the flats (/exchange/data_white) were not applied to {name}, read as "
                                     "stored (line integrals); --flat-field on applies them")
            shape = (d.shape[1], d.shape[0]) if transpose else d.shape  # (angles, [rows,] detectors)
            white = _field(f, "/exchange/data_white", rows, str(p), shape) if (normalise and has_white) else None
            dark = _field(f, "/exchange/data_dark", rows, str(p), shape) if (normalise and has_dark) else None
    except OSError as exc:  # e.g. data compressed with a filter this h5py lacks (blosc, lz4, bitshuffle)
        raise InputError(
            f"sinogram file {str(p)!r} cannot be read ({exc}); if its datasets are compressed with a filter h5py "
            "does not have, install hdf5plugin (pip install hdf5plugin), which edn loads when present"
        ) from None
    n_angles = raw.shape[1]
    warnings: list[str] = [skipped_flats] if skipped_flats else []
    th = _resolve_theta(theta, angle_file, angle_unit, file_theta, n_angles, str(p), notes, warnings)
    normalised = False
    if white is not None:
        dk = 0.0 if dark is None else dark
        if dark is None:
            notes.append("no data_dark: dark field taken as 0")
        # white/dark are (n_slices, det) or (det,); broadcast over angles
        w = white[:, None, :] if np.ndim(white) == 2 else white
        dk_b = dk[:, None, :] if np.ndim(dk) == 2 else dk
        denom = w - dk_b
        _check_flat_field(white - dk, str(p))
        dead = np.broadcast_to(~(white - dk > 0), (raw.shape[0], raw.shape[2]))  # (n_slices, det)
        trans = (raw - dk_b) / np.where(denom > 0, denom, np.inf)
        clipped = int(np.count_nonzero((trans < floor) & ~dead[:, None, :]))
        trans = np.maximum(trans, floor)
        raw = -np.log(trans)
        normalised = True
        notes.append(f"flat/dark normalised, -log; {clipped} values clipped at transmission {floor:g}")
        if dead.any():
            _fill_dead_pixels(raw, dead, str(p))
            cols = sorted(set(np.flatnonzero(dead.any(axis=0)).tolist()))
            notes.append(
                f"{len(cols)} dead detector pixel(s) (flat not above dark) {cols[:8]}{'...' if len(cols) > 8 else ''} "
                "filled by linear interpolation between their good neighbours"
            )
    elif has_dark and normalise:
        notes.append("data_dark present without data_white: not normalised")
    return Sinogram(
        data=np.ascontiguousarray(raw, dtype=np.float32), theta=th, source=f"{p}:{name}", normalised=normalised, notes=notes,
        warnings=warnings, file_theta=file_theta,
    )


def _kind(p: Path) -> str:
    """The file's type as a suffix, from its first bytes (as images are read), else from its name:
    a PNG named ``.tif`` is read as the PNG it is."""
    from .images import _format_from_magic  # noqa: PLC0415

    try:
        with open(p, "rb") as fh:
            magic = _format_from_magic(fh.read(8))
    except OSError:
        magic = "pillow"
    return {"npy": ".npy", "tif": ".tif", "png": ".png", "h5": ".h5"}.get(magic, p.suffix.lower())


def _gray_from_palette(im, source: str) -> np.ndarray:
    """The gray levels of a palette PNG (not its palette indices); a palette with colours is refused."""
    rgb = np.asarray(im.convert("RGB"))
    if not (np.array_equal(rgb[..., 0], rgb[..., 1]) and np.array_equal(rgb[..., 0], rgb[..., 2])):
        raise InputError(f"sinogram file {source!r} is a colour palette image; save the sinogram as a gray PNG "
                         "or as float TIFF/NPY")
    return rgb[..., 0].copy()


def _read_plain(p: Path, theta, slices, angle_file, angle_unit: str, transpose: bool) -> Sinogram:
    suffix = _kind(p)
    try:
        if suffix == ".npy":
            from .images import load_npy  # noqa: PLC0415

            arr = load_npy(p, f"sinogram file {str(p)!r}")
        elif suffix in (".tif", ".tiff"):
            from .images import read_tiff  # noqa: PLC0415

            arr = read_tiff(str(p), f"sinogram file {str(p)!r}")  # every page: several are refused below
        else:
            from PIL import Image  # noqa: PLC0415

            with Image.open(p) as im:
                arr = _gray_from_palette(im, str(p)) if im.mode in ("P", "PA") else np.array(im)
    except InputError:
        raise
    except Exception as exc:
        raise InputError(f"sinogram file {str(p)!r} cannot be read ({type(exc).__name__}: {exc})") from None
    arr = np.asarray(arr)
    if arr.ndim != 2 or 0 in arr.shape:
        raise InputError(
            f"sinogram file {str(p)!r} holds shape {arr.shape}; expected a 2D (angles, detectors) array, neither of them 0"
            + ("; several slices go in one DXchange HDF5 file (/exchange/data: angles x rows x detectors)"
               if arr.ndim == 3 and suffix != ".png" else "")
        )
    if slices is not None and _slice_list(slices, 1, str(p)) != [0]:
        raise UsageError(f"slices={slices!r} given, but {str(p)!r} is a single 2D sinogram; drop slices")
    notes = [f"read {suffix} as {'(detectors, angles), transposed' if transpose else '(angles, detectors)'}"]
    if arr.dtype.kind in "ui" and suffix == ".png":
        notes.append(f"integer PNG kept in raw counts ({arr.dtype})")
    data = _real(arr, f"sinogram file {str(p)!r}")
    if transpose:
        data = data.T
    _check_finite(data, f"sinogram file {str(p)!r}")
    warnings: list[str] = []
    th = _resolve_theta(theta, angle_file, angle_unit, None, data.shape[0], str(p), notes, warnings)
    return Sinogram(
        data=np.ascontiguousarray(data[None], dtype=np.float32), theta=th, source=str(p), notes=notes, warnings=warnings
    )


# ----------------------------------------------------------------------------------------------
# Writing
# ----------------------------------------------------------------------------------------------
def _write_failure(exc: OSError) -> str:
    """Why a write failed, in a few words: the OS's reason, or the one HDF5 quotes in its message."""
    if exc.strerror:
        return exc.strerror
    quoted = re.search(r"error message = '([^']+)'", str(exc))
    if quoted:
        return quoted.group(1)
    return " ".join(str(exc).split())[:200]


def write_sinogram(path: str | os.PathLike, data: np.ndarray, theta: np.ndarray) -> Path:
    """Write a DXchange HDF5 sinogram atomically (temp file in the target folder, then
    ``os.replace``).

    Parameters
    ----------
    data:
        ``(n_angles, detectors)`` or ``(n_slices, n_angles, detectors)``; stored as float32
        ``/exchange/data`` of shape ``(angles, detectors)`` or ``(angles, rows, detectors)``.
    theta:
        ``(n_angles,)`` radians; stored as ``/exchange/theta`` in degrees.
    """
    import h5py  # noqa: PLC0415

    arr = np.asarray(data, dtype=np.float32)
    th = np.asarray(theta, dtype=np.float64).reshape(-1)
    if arr.ndim not in (2, 3):
        raise UsageError(f"data has shape {arr.shape}; give (n_angles, detectors) or (n_slices, n_angles, detectors)")
    n_angles = arr.shape[-2]
    if th.size != n_angles:
        raise UsageError(f"theta has {th.size} angles but data has {n_angles} projections; give one angle per projection")
    if not np.all(np.isfinite(arr)):
        raise UsageError("data to write holds NaN/Inf; replace them (e.g. np.nan_to_num) before writing the sinogram")
    stored = arr if arr.ndim == 2 else np.ascontiguousarray(np.transpose(arr, (1, 0, 2)))
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=p.parent, prefix=f".{p.name}.", suffix=".tmp")
    os.close(fd)
    try:
        with h5py.File(tmp, "w") as f:
            f.create_dataset("/exchange/data", data=stored)
            f.create_dataset("/exchange/theta", data=np.rad2deg(th))
            f.attrs["creator"] = "edncli"
        from .checkpoints import _umask

        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp's 0600 is not what a user expects
        os.replace(tmp, p)
    except BaseException as exc:
        if os.path.exists(tmp):
            os.unlink(tmp)
        if isinstance(exc, OSError):  # a full disk, a quota: one line naming the target, not the temp file
            raise InputError(f"{p}: cannot write the sinogram ({_write_failure(exc)}); nothing was written") from None
        raise
    return p


# ----------------------------------------------------------------------------------------------
# Rotation axis
# ----------------------------------------------------------------------------------------------
def _mass_centre_track(s: np.ndarray, th: np.ndarray) -> Optional[tuple[float, float]]:
    """``(a, b)`` of the least-squares fit ``x(theta) = c + a cos(theta) + b sin(theta)`` to the centres
    of mass of the projections of ``s`` ``(n_angles, detectors)`` (the track of the object's mass
    centre on the detector), or ``None`` where a projection has no positive mass."""
    mass = s.sum(axis=1)
    if not np.all(mass > 0):
        return None
    x = (s * np.arange(s.shape[1])).sum(axis=1) / mass
    basis = np.stack([np.ones_like(th), np.cos(th), np.sin(th)], axis=1)
    _, a, b = np.linalg.lstsq(basis, x, rcond=None)[0]
    return float(a), float(b)


def scan_span(theta: np.ndarray) -> float:
    """Angular range a scan covers (radians): the distinct angles' range plus one median step,
    so ``N`` angles over ``[0, pi)`` span ``pi``; a repeated angle is no step of the scan."""
    distinct = np.unique(np.asarray(theta, dtype=np.float64).reshape(-1))
    return float(np.ptp(distinct)) + (float(np.median(np.diff(distinct))) if distinct.size > 1 else 0.0)


#: A parallel-beam scan covering at least this share of 180 degrees counts as a half turn: its
#: centre is estimated by default, pairing projections up to ``pi - range`` from opposite.
HALF_TURN_SHARE = 0.99


def estimate_center(sinogram: np.ndarray, theta: np.ndarray) -> float:
    """Estimate the rotation-axis position of a parallel-beam sinogram over >= 180 degrees.

    Each projection at ``theta_i`` is paired with the one nearest to ``theta_i + pi`` (within
    one angular step, or within ``pi - range`` for a scan covering at least 99% of 180 degrees,
    e.g. one that lost its last frames). Where that is not exactly opposite (a scan over
    ``[0, pi)`` pairs ``theta = 0`` with ``pi - step``), an object off the axis has moved by up to ``r step``
    pixels between the two angles: the partner is shifted back by the motion of the mass centre
    between them, read from a sinusoid fitted to the centres of mass of all projections. The
    partner is flipped and the shift ``delta`` maximising the summed cross-correlation is found,
    to sub-pixel precision by a parabola through the peak. Since
    the mirrored projection satisfies ``p_j[k] = p_i[2 c - k]``, the axis is
    ``c = (detectors - 1) / 2 + delta / 2``. For a stack of slices the correlations of all
    slices are summed, so slices with little in them (air above or below the sample) weigh little.

    Parameters
    ----------
    sinogram:
        ``(n_angles, detectors)`` line integrals, or a stack ``(n_slices, n_angles, detectors)``
        of one scan.
    theta:
        ``(n_angles,)`` radians.

    Returns
    -------
    float
        Axis position in detector pixels (0 = centre of the first detector pixel), the same
        meaning as :attr:`CTGeometry.center`.
    """
    s = np.asarray(sinogram, dtype=np.float64)
    th = np.asarray(theta, dtype=np.float64).reshape(-1)
    if s.ndim == 2:
        s = s[None]
    if s.ndim != 3 or s.shape[1] != th.size:
        raise UsageError(
            f"sinogram has shape {s.shape} for {th.size} angles; give (n_angles, detectors) or (n_slices, n_angles, detectors)"
        )
    _check_finite(s, "sinogram")
    n_ang, n_det = s.shape[1:]
    if n_ang < 2:
        raise UsageError("estimate_center needs at least 2 projections 180 degrees apart; give a scan over >= 180 deg")
    tw = np.mod(th, 2 * np.pi)
    distinct = np.unique(tw)  # repeated angles are no step of the scan
    step = float(np.median(np.diff(distinct))) if distinct.size > 1 else 0.0
    reach = step
    if scan_span(th) >= HALF_TURN_SHARE * np.pi:  # the first and last angles may be up to ~2 steps short of opposite
        reach = max(step, np.pi - float(np.ptp(np.unique(th))))
    tol = max(reach, 1e-9) * 1.01 + 1e-9  # [0, pi) scans pair theta=0 with pi - step
    sdiff = np.angle(np.exp(1j * (tw[None, :] - tw[:, None] - np.pi)))  # (i, j): theta_j - (theta_i + pi)
    diff = np.abs(sdiff)
    j = np.argmin(diff, axis=1)
    ok = diff[np.arange(n_ang), j] <= tol
    if not np.any(ok):
        raise UsageError(
            f"no projection pairs 180 degrees apart to estimate the rotation axis from (the scan covers "
            f"{np.rad2deg(scan_span(th)):.4g} degrees); give it with --center N (detector pixels) or --center middle"
        )
    rows, partners = np.flatnonzero(ok), j[ok]
    n = 1 << int(math.ceil(math.log2(2 * n_det)))
    # Motion of the mass centre from theta_i + pi to the partner's angle (0 for exact pairs)
    gap = sdiff[rows, partners]
    track = _mass_centre_track(s.sum(axis=0), th) if np.any(np.abs(gap) > 1e-9) else None
    if track is None:
        motion = np.zeros(rows.size)
    else:
        a_, b_ = track
        t, tj = th[rows] + np.pi, th[partners]
        motion = a_ * (np.cos(tj) - np.cos(t)) + b_ * (np.sin(tj) - np.sin(t))
    phase = np.exp(2j * np.pi * np.fft.rfftfreq(n)[None, :] * motion[:, None])  # p(k) -> p(k + motion)
    corr = np.zeros(n)
    for sl in s:  # one slice at a time: the FFTs of a whole stack could be large
        a = sl[rows]  # raw profiles (compact support); zero-padded correlation
        b = np.fft.irfft(np.fft.rfft(sl[partners], n) * phase, n)[:, :n_det][:, ::-1]  # partner at theta_i + pi, flipped
        corr += np.fft.irfft(np.fft.rfft(a, n) * np.conj(np.fft.rfft(b, n)), n).sum(axis=0)
    # corr[delta] = sum_k a[k + delta] b[k]; delta in (-n_det, n_det)
    lags = np.concatenate([np.arange(0, n_det), np.arange(-n_det + 1, 0)])
    vals = np.concatenate([corr[:n_det], corr[n - n_det + 1 :]])
    k = int(np.argmax(vals))
    delta = float(lags[k])
    if 0 < k < len(vals) - 1 and lags[k - 1] == lags[k] - 1 and lags[k + 1] == lags[k] + 1:
        y0, y1, y2 = vals[k - 1], vals[k], vals[k + 1]
        den = y0 - 2 * y1 + y2
        if den < 0:
            delta += 0.5 * (y0 - y2) / den
    return (n_det - 1) / 2.0 + delta / 2.0


# ----------------------------------------------------------------------------------------------
# The FIPS walnut (measured fan-beam data)
# ----------------------------------------------------------------------------------------------
#: Geometry of the FIPS walnut sinogram (mm), as in the data's MANIFEST.md.
WALNUT_MM = {
    "source_origin": 110.0,
    "source_detector": 300.0,
    "detector_width": 114.8,
    "detectors": 328,
    "detector_shift": 0.27,
    "n_angles": 120,
}


def walnut_pixel_size_mm(size: int) -> float:
    """Image pixel side in mm: the detector width scaled to the rotation axis, over ``size``."""
    w = WALNUT_MM
    return w["detector_width"] * w["source_origin"] / w["source_detector"] / size


def walnut_geometry(size: int = 328) -> "CTGeometry":
    """Fan-beam :class:`CTGeometry` of the FIPS walnut for a ``size x size`` image.

    The image covers the detector's field at the rotation axis (42.1 mm square, the framing of
    the reference ``walnut.png``); distances are converted to image pixels. Angles are
    ``pi - linspace(0, 2 pi, 121)[:-1]`` (the MANIFEST's angles rotated by pi so the image has the
    reference's orientation); the 0.27 mm detector shift becomes ``center = 163.5 + 0.771``
    detector pixels, for the detector reversed as :func:`load_walnut` does.
    """
    from ..operators.tomography import CTGeometry  # noqa: PLC0415

    w = WALNUT_MM
    px = walnut_pixel_size_mm(size)
    pitch = w["detector_width"] / w["detectors"]
    n = int(w["detectors"])
    return CTGeometry(
        size=int(size),
        angles=-np.linspace(0.0, 2 * np.pi, int(w["n_angles"]) + 1)[:-1] + WALNUT_ANGLE_OFFSET,
        detectors=n,
        detector_spacing=pitch / px,
        beam="fan",
        source_origin=w["source_origin"] / px,
        origin_detector=(w["source_detector"] - w["source_origin"]) / px,
        center=(n - 1) / 2.0 + _WALNUT_SHIFT_SIGN * w["detector_shift"] / pitch,
    )


#: +0.27 mm moves the axis towards higher (reversed) detector indices; checked against
#: ``walnut.png``: the correlation of the FBP with it peaks at center 164.0-164.5 (this gives 164.27).
_WALNUT_SHIFT_SIGN = 1.0
#: The MANIFEST angles plus pi: a 180-degree rotation of the image frame (astra's axes vs gratopy's)
#: so that reconstructions come out in the orientation of the reference ``walnut.png``.
WALNUT_ANGLE_OFFSET = np.pi


def load_walnut(size: int = 328, root: str | os.PathLike = WALNUT_DIR) -> tuple[Sinogram, "CTGeometry"]:
    """Load the FIPS walnut sinogram and its geometry.

    Returns
    -------
    (Sinogram, CTGeometry)
        ``data`` float32 ``(1, 120, 328)`` = PNG value / 65535 (scale undocumented), the
        detector reversed; the fan-beam geometry from :func:`walnut_geometry`.
    """
    p = Path(root) / "walnut_sinogram.png"
    if not p.is_file():
        raise InputError(f"walnut data {str(p)!r} is missing; point root= at the folder holding walnut_sinogram.png")
    geom = walnut_geometry(size)
    sino = read_sinogram(p, theta=geom.angles, transpose=True)
    sino.data = np.ascontiguousarray(sino.data[:, :, ::-1] / np.float32(65535.0), dtype=np.float32)
    sino.notes.append("value/65535; detector reversed; FIPS walnut (CC BY 4.0, doi:10.5281/zenodo.1254206)")
    return sino, geom
