"""Reading and writing images: PNG (8/16-bit), TIFF (float32), NPY, HDF5, and ``-`` for stdin/stdout.

Inside edn, images are float32 arrays in [0, 1] (integer formats are divided by their type's
maximum, never by the largest pixel value). Shapes: ``(H, W)`` gray or ``(C, H, W)`` colour.
Outputs are written to a temporary file in the target folder and renamed into place
(:func:`write_together` does so for the several files of one result, all or none), and an
existing file is only replaced with ``force=True``, and only when it is a regular file.
"""

from __future__ import annotations

import io
import os
import stat
import struct
import sys
import tempfile
import warnings
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence

import numpy as np

from ..errors import InputError, UsageError
from .stdout import write_stdout
from .values import float32_problem

IMAGE_SUFFIXES = (".png", ".tif", ".tiff", ".npy", ".h5", ".hdf5", ".jpg", ".jpeg", ".bmp", ".pgm")
WRITE_FORMATS = ("png", "tif", "npy", "h5")


@dataclass
class ImageInfo:
    """Where an image came from and how it was stored."""

    source: str
    format: str
    dtype: str
    bit_depth: Optional[int]


def _format_from_magic(head: bytes) -> str:
    if head.startswith(b"\x89PNG"):
        return "png"
    if head[:4] in (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+"):
        return "tif"
    if head.startswith(b"\x93NUMPY"):
        return "npy"
    if head.startswith(b"\x89HDF"):
        return "h5"
    return "pillow"


def _format_from_suffix(path: Path) -> str:
    suffix = path.suffix.lower()
    return {".png": "png", ".tif": "tif", ".tiff": "tif", ".npy": "npy", ".h5": "h5", ".hdf5": "h5"}.get(
        suffix, "pillow"
    )


def _to_unit(arr: np.ndarray, source: str) -> np.ndarray:
    if arr.dtype == np.bool_:
        arr = arr.astype(np.float32)
    elif np.issubdtype(arr.dtype, np.integer):
        info = np.iinfo(arr.dtype)
        if info.min < 0:
            raise InputError(f"{source}: signed integer images ({arr.dtype}) are not supported; save as float TIFF/NPY")
        arr = arr.astype(np.float64) / info.max
    elif np.issubdtype(arr.dtype, np.floating):
        arr = arr.astype(np.float64)
    else:
        raise InputError(f"{source}: unsupported pixel type {arr.dtype}")
    problem = float32_problem(arr)
    if problem is not None:
        raise InputError(f"{source}: the image {problem}")
    return arr.astype(np.float32)


def _channels_first(arr: np.ndarray, source: str, channels_last: bool = False) -> np.ndarray:
    """``(H, W)`` or ``(C, H, W)``. ``channels_last``: the array is ``(H, W, C)`` for sure (what Pillow
    decodes: a PNG, JPEG or BMP); else the channel axis is guessed from the shape, as for NPY/TIFF/HDF5.

    A fourth channel is taken as alpha and dropped, with a warning unless it is fully opaque (1.0)."""
    if arr.ndim == 2:
        return arr
    if arr.ndim == 3:
        if channels_last:
            arr = np.moveaxis(arr, -1, 0)
        elif arr.shape[-1] == 1 and arr.shape[0] > 1:  # (H, W, 1): gray with its channel axis last
            return arr[..., 0]
        elif arr.shape[-1] in (3, 4) and arr.shape[0] not in (3, 4):
            arr = np.moveaxis(arr, -1, 0)
        elif arr.shape[-1] == 2 and arr.shape[0] > 4:  # (H, W, 2): two channels last, not H images
            arr = np.moveaxis(arr, -1, 0)
        if arr.shape[0] == 4:  # RGBA: the colour channels are the image
            if not np.all(arr[3] == 1.0):
                warnings.warn(f"{source}: 4 channels read as RGBA; the 4th (alpha, not fully opaque) is dropped and "
                              "the 3 colour channels are reconstructed", stacklevel=3)
            arr = arr[:3]
        if arr.shape[0] == 1:
            arr = arr[0]
        return arr
    raise InputError(f"{source}: expected a 2D image (or 3D with colour channels), got shape {arr.shape}")


def read_tiff(source, label: str) -> np.ndarray:
    """Every image of a TIFF: one series as stored, or several series (pages written one by one)
    of one shape and type stacked as ``(pages, ...)``, as a 3D one-series TIFF reads. Pages of
    different shapes are an :class:`InputError` (``tifffile.imread`` would return the first)."""
    import tifffile

    with tifffile.TiffFile(source) as tif:
        series = tif.series
        if not series:
            raise InputError(f"{label}: the TIFF holds no image")
        if len(series) == 1:
            return series[0].asarray()
        kinds = [(tuple(s.shape), np.dtype(s.dtype)) for s in series]
        if len(set(kinds)) > 1:
            listed = ", ".join(f"{'x'.join(map(str, shape))} {dtype}" for shape, dtype in kinds[:4])
            raise InputError(f"{label}: a multi-page TIFF of {len(series)} images of different shapes or types "
                             f"({listed}{', ...' if len(kinds) > 4 else ''}); save each as its own file")
        return np.stack([s.asarray() for s in series])


#: Pillow's raw modes for 16-bit colour PNGs, which it reads as 8-bit (each sample's high byte),
#: and the little-endian raw modes that, applied to the same big-endian data, keep the low bytes.
_PNG16_LOW = {"RGB;16B": "RGB;16L", "RGBA;16B": "RGBA;16L"}


def _rawmode(im) -> Optional[str]:
    """The raw mode Pillow decodes a single-tile image's data with (``LA;16B``...), or None."""
    if len(getattr(im, "tile", ())) != 1:
        return None
    args = im.tile[0][3]
    return args[0] if isinstance(args, tuple) else args


def _png16_colour(im, source) -> Optional[np.ndarray]:
    """The full 16-bit samples ``(H, W, C)`` of a 16-bit RGB/RGBA PNG, or None for other images.

    The PNG is decoded twice: as Pillow does (high bytes), then with the little-endian raw mode
    (low bytes). Both undo the PNG filters on whole 6- or 8-byte pixels, so the two halves are exact.
    """
    from PIL import Image

    if im.format != "PNG" or len(im.tile) != 1:
        return None
    rawmode = _rawmode(im)
    if rawmode not in _PNG16_LOW:
        return None
    high = np.asarray(im)
    if isinstance(source, io.BytesIO):
        source.seek(0)
    with Image.open(source) as again:
        name, extents, offset, args = again.tile[0]
        args = (_PNG16_LOW[rawmode], *args[1:]) if isinstance(args, tuple) else _PNG16_LOW[rawmode]
        again.tile = [(name, extents, offset, args)]
        low = np.asarray(again)
    if low.shape != high.shape:
        return None
    return (high.astype(np.uint16) << 8) | low.astype(np.uint16)


def read_image_array(path: str | Path, dataset: Optional[str] = None, *, option: str = "--dataset") -> np.ndarray:
    """The raw array stored in an image file (no scaling); ``option`` names the dataset option in messages."""
    arr, _, _ = _read_raw(str(path), dataset, option=option)
    return arr


def load_npy(source, label: str) -> np.ndarray:
    """``np.load`` without pickle; a file that is not a plain ``.npy`` array is one clear :class:`InputError`
    (numpy's own message suggests ``allow_pickle``, which edn never sets)."""
    try:
        return np.load(source, allow_pickle=False)
    except ValueError as exc:
        if "pickle" in str(exc).lower():
            raise InputError(f"{label}: not a NumPy array file (corrupt, or it holds Python objects, which edn does "
                             "not load)") from None
        raise


def _read_raw(path: str, dataset: Optional[str], option: str = "--dataset") -> tuple[np.ndarray, str, bool]:
    """The stored array, the source's label, and whether a 3D array is ``(H, W, C)`` for sure (Pillow's)."""
    if path == "-":
        if sys.stdin is None:
            raise InputError("stdin is closed: there is nothing to read; give the input as a file")
        data = sys.stdin.buffer.read()
        if not data:
            raise InputError("stdin: no image data (nothing was piped in)")
        fmt = _format_from_magic(data[:8])
        source = io.BytesIO(data)
        label = "stdin"
    else:
        p = Path(path)
        if not p.exists():
            raise InputError(f"{path}: no such file")
        if p.is_dir():
            raise InputError(f"{path}: is a folder; pass --output-dir to process a folder of images")
        with open(p, "rb") as fh:
            head = fh.read(8)
        fmt = _format_from_magic(head)
        if fmt == "pillow":
            fmt = _format_from_suffix(p) if _format_from_suffix(p) != "pillow" else "pillow"
        source = p
        label = str(p)
    if dataset is not None and fmt != "h5":
        raise UsageError(f"{option} {dataset} applies to HDF5 inputs only, and {label} is not HDF5; drop it")
    try:
        if fmt == "npy":
            arr = load_npy(source, label)
        elif fmt == "tif":
            arr = read_tiff(source, label)
        elif fmt == "h5":
            import h5py

            with h5py.File(source, "r") as fh:
                key = dataset or _default_dataset(fh, label, option)
                if key not in fh:
                    hint = f"it holds {', '.join(_dataset_names(fh)[:5])}" if dataset is not None else f"pass {option}"
                    raise InputError(f"{label}: no dataset {key!r} in the HDF5 file ({hint})")
                arr = np.asarray(fh[key])
        else:
            from PIL import Image, UnidentifiedImageError

            try:
                with Image.open(source) as im:
                    full = _png16_colour(im, source) if im.mode in ("RGB", "RGBA") else None
                    if full is not None:
                        arr = full
                    elif _rawmode(im) == "LA;16B":  # 16-bit gray+alpha: Pillow gives 8-bit RGBA, R = G = B
                        arr = np.asarray(im)[..., 0]
                    elif im.mode in ("I;16", "I;16B", "I;16L"):
                        arr = np.asarray(im, dtype=np.uint16)
                    elif im.mode == "I":
                        arr = np.asarray(im).astype(np.int64)
                        arr = arr.clip(0, 65535).astype(np.uint16)
                    elif im.mode in ("L", "RGB"):
                        arr = np.asarray(im)
                    elif im.mode == "F":
                        arr = np.asarray(im, dtype=np.float32)
                    elif im.mode in ("1", "LA", "La"):  # bilevel and gray+alpha stay gray
                        arr = np.asarray(im.convert("L"))
                    else:
                        arr = np.asarray(im.convert("RGBA" if "A" in im.mode else "RGB"))
            except UnidentifiedImageError:
                raise InputError(f"{label}: not a readable image (PNG, TIFF, NPY, HDF5 or another Pillow format)") from None
    except InputError:
        raise
    except (OSError, ValueError, KeyError) as exc:
        raise InputError(f"{label}: cannot read the image ({exc})") from None
    return arr, label, fmt not in ("npy", "tif", "h5")


def _dataset_names(fh) -> list[str]:
    """The paths of every dataset in an open HDF5 file, in file order."""
    names: list[str] = []
    fh.visititems(lambda name, obj: names.append(name) if hasattr(obj, "shape") else None)
    return names


def _default_dataset(fh, label: str, option: str = "--dataset") -> str:
    for key in ("/exchange/data", "image", "data"):
        if key in fh:
            return key
    names = _dataset_names(fh)
    if len(names) == 1:
        return names[0]
    raise InputError(f"{label}: several datasets in the HDF5 file ({', '.join(names[:5])}); pass {option}")


def read_image(path: str | Path, dataset: Optional[str] = None, stack: bool = False) -> tuple[np.ndarray, ImageInfo]:
    """Read an image as float32 in [0, 1] (floats kept as stored), shape ``(H, W)`` or ``(C, H, W)``.

    ``stack``: a 3D array is ``(slices, H, W)`` as stored (a CT volume), never colour channels
    to reorder or an alpha channel to drop.
    """
    raw, label, channels_last = _read_raw(str(path), dataset)
    bit_depth = int(raw.dtype.itemsize * 8) if np.issubdtype(raw.dtype, np.integer) else None
    unit = _to_unit(raw, label)
    if stack and unit.ndim == 3:
        arr = unit
    else:
        arr = _channels_first(unit, label, channels_last)
    if arr.shape[-1] < 2 or arr.shape[-2] < 2:
        raise UsageError(f"{label}: image of shape {arr.shape} is too small (edn needs at least 2x2 pixels)")
    fmt = _format_from_suffix(Path(label)) if label != "stdin" else "stdin"
    return arr, ImageInfo(source=label, format=fmt, dtype=str(raw.dtype), bit_depth=bit_depth)


def output_format(path: str, fmt: Optional[str] = None) -> str:
    """The format to write: ``fmt`` if given, else from the suffix (``-`` defaults to PNG)."""
    if fmt is not None:
        fmt = {"tiff": "tif", "hdf5": "h5"}.get(fmt, fmt)
        if fmt not in WRITE_FORMATS:
            raise UsageError(f"--format must be one of {', '.join(WRITE_FORMATS)}, got {fmt!r}")
        return fmt
    if path == "-":
        return "png"
    f = _format_from_suffix(Path(path))
    if f == "pillow":
        raise UsageError(f"-o {path}: unknown output type; use .png, .tif, .npy or .h5 (or --format)")
    return f


def sniff_format(path: str) -> str:
    """The format of an input file by its first bytes, else by its suffix (``pillow`` for others)."""
    try:
        with open(path, "rb") as fh:
            fmt = _format_from_magic(fh.read(8))
    except OSError:
        fmt = "pillow"
    return fmt if fmt != "pillow" else _format_from_suffix(Path(path))


def _png16(hwc: np.ndarray) -> bytes:
    """A 16-bit PNG of ``(H, W, C)`` uint16 samples, C = 2, 3 or 4 (gray+alpha, RGB, RGBA).

    Pillow writes 16-bit PNGs for gray images only; this writes the colour types itself
    (PNG spec: IHDR, one zlib IDAT with the "Up" filter on every row, IEND).
    """
    h, w, ch = hwc.shape
    rows = np.ascontiguousarray(hwc, dtype=">u2").reshape(h, w * ch).view(np.uint8)
    up = np.diff(rows, axis=0, prepend=np.zeros((1, rows.shape[1]), np.uint8))  # uint8: wraps mod 256
    raw = np.concatenate([np.full((h, 1), 2, np.uint8), up], axis=1).tobytes()

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    colour_type = {2: 4, 3: 2, 4: 6}[ch]
    header = struct.pack(">IIBBBBB", w, h, 16, colour_type, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(raw, 6)) + chunk(b"IEND", b"")


#: Channel counts a PNG output stores as data: gray, RGB, RGBA (two would be gray + alpha,
#: which readers take as transparency, not as a second channel).
PNG_CHANNELS = (1, 3, 4)


def png_counts(arr: np.ndarray, bit_depth: int) -> np.ndarray:
    """What a PNG of ``bit_depth`` bits stores for float values: clipped to [0, 1], rounded to
    ``2**bit_depth - 1`` levels (float array of integer counts)."""
    return np.round(np.clip(arr, 0.0, 1.0) * float(2**bit_depth - 1))


def encode_image(arr: np.ndarray, fmt: str, bit_depth: int = 16, dataset: str = "image", stack: bool = False) -> bytes:
    """Encode a float image (``(H, W)`` or ``(C, H, W)``) to bytes in ``fmt``.

    PNG clips to [0, 1] and quantises to ``bit_depth`` (8 or 16, gray and colour alike);
    TIFF, NPY and HDF5 keep float32. ``stack``: the first axis holds slices, not colours (a CT
    volume): TIFF writes them as gray pages, never as RGB.
    """
    arr = np.asarray(arr, dtype=np.float32)
    buf = io.BytesIO()
    if fmt == "png":
        from PIL import Image

        if bit_depth not in (8, 16):
            raise UsageError(f"--bit-depth must be 8 or 16, got {bit_depth}")
        if arr.ndim == 3 and arr.shape[0] not in PNG_CHANNELS:  # 2 would be gray + transparency
            raise UsageError(f"a PNG holds 1, 3 or 4 channels, the result has {arr.shape[0]}; write .tif, .npy or .h5")
        hwc = np.moveaxis(arr, 0, -1) if arr.ndim == 3 else arr
        if hwc.ndim == 3 and hwc.shape[-1] == 1:
            hwc = hwc[..., 0]
        counts = png_counts(hwc, bit_depth)
        if bit_depth == 8:
            img = Image.fromarray(counts.astype(np.uint8))
        elif hwc.ndim == 3:
            return _png16(counts.astype(np.uint16))
        else:
            img = Image.fromarray(counts.astype(np.uint16))
        img.save(buf, format="PNG")
    elif fmt == "tif":
        import tifffile

        colour = not stack and arr.ndim == 3 and arr.shape[0] in (3, 4)
        tifffile.imwrite(buf, arr, photometric="rgb" if colour else "minisblack", planarconfig="separate" if colour else None)
    elif fmt == "npy":
        np.save(buf, arr, allow_pickle=False)
    elif fmt == "h5":
        import h5py

        with h5py.File(buf, "w") as fh:
            fh.create_dataset(dataset, data=arr)
    else:
        raise UsageError(f"unknown output format {fmt!r}")
    return buf.getvalue()


def check_writable(path: str, force: bool) -> None:
    """Fail early (before any work) unless ``path`` can be written.

    Refused: a folder or another non-regular file (device, pipe, socket; even with ``force``),
    an existing file without ``force`` (exit 2), a missing folder (exit 2), and a folder that
    cannot be written to (tried with a temporary file; exit 4). ``-`` (stdout) always passes.
    """
    if path == "-":
        return
    p = Path(path)
    if p.is_dir() or os.path.basename(path) in ("", ".", ".."):  # "reps/", "reps/.": a folder's name
        raise UsageError(f"{path} {'is' if p.is_dir() else 'names'} a folder; give a file name")
    try:
        mode = os.stat(p).st_mode
    except OSError:
        mode = None
    if mode is None and os.path.islink(p) and not force:  # a link to a missing file is still there
        raise UsageError(f"{path} exists (a symbolic link to a missing file); pass --force to replace the link")
    if mode is not None and not stat.S_ISREG(mode):
        raise UsageError(
            f"{path} exists and is not a regular file; edn replaces only regular files, even with --force "
            "('-' writes to stdout)"
        )
    if mode is not None and not force:
        raise UsageError(f"{path} exists; pass --force to overwrite it")
    parent = p.parent if str(p.parent) else Path(".")
    if not parent.exists():
        raise UsageError(f"{path}: folder {parent} does not exist")
    if not parent.is_dir():
        raise UsageError(f"{path}: {parent} is not a folder")
    try:
        fd, probe = tempfile.mkstemp(prefix=f".{p.name}.", suffix=".tmp", dir=parent)
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        raise InputError(f"{path}: cannot write to the folder {parent} ({exc.strerror or exc})") from None


def write_together(files: Sequence[tuple[str, bytes]], force: bool = False) -> None:
    """Write several outputs (``(path, data)``) as one: all of them or none.

    Each file goes to a temporary file beside its target; only when all are written are they
    renamed into place. If a write fails, the temporary files are removed and no target is
    touched (InputError, exit 4). ``-`` goes to stdout after the files are staged and before they
    are renamed, so a stdout that cannot take it (``> /dev/full``, a closed pipe) leaves none of them.
    """
    from .checkpoints import _umask

    for path, _ in files:  # the commands checked these before any work: a folder gone now is an I/O failure
        parent = Path(path).parent
        if path != "-" and not parent.is_dir():
            raise InputError(f"{path}: cannot write, the folder {parent} is gone (removed during the run?)")
        check_writable(path, force)
    staged: list[tuple[str, str]] = []
    renamed = 0
    try:
        for path, data in files:
            if path == "-":
                continue
            fd, tmp = tempfile.mkstemp(prefix=f".{Path(path).name}.", suffix=".tmp", dir=Path(path).parent)
            staged.append((tmp, path))
            with os.fdopen(fd, "wb") as fh:
                fh.write(data)
            os.chmod(tmp, 0o666 & ~_umask())
        for path, data in files:
            if path == "-":
                write_stdout(data)
        for tmp, path in staged:
            os.replace(tmp, path)
            renamed += 1
    except OSError as exc:
        note = "" if renamed else "; nothing of this result was written"
        raise InputError(f"{path}: cannot write ({exc.strerror or exc}){note}") from None
    finally:
        for tmp, _ in staged[renamed:]:
            try:
                os.unlink(tmp)
            except FileNotFoundError:
                pass


def write_bytes(path: str, data: bytes, force: bool = False) -> None:
    """Write atomically (temp file in the target folder, then rename); ``-`` writes to stdout."""
    write_together([(path, data)], force=force)


def write_image(path: str, arr: np.ndarray, fmt: Optional[str] = None, bit_depth: int = 16, force: bool = False) -> None:
    """Encode and write an image (see :func:`encode_image`)."""
    write_bytes(path, encode_image(arr, output_format(path, fmt), bit_depth), force=force)


#: How an RGB image becomes the gray image a method sees (``edn eval --luma``):
#: ``full``: ITU-R BT.601 luma ``Y = 0.299 R + 0.587 G + 0.114 B``, spanning [0, 1];
#: ``ycbcr``: the Y' of BT.601 Y'CbCr with studio swing, ``(16 + 219 Y) / 255`` in [16/255, 235/255]
#: (MATLAB's ``rgb2ycbcr``), the "Y channel" on which super-resolution benchmark tables (Set5,
#: Set14, ...) report PSNR. Its range is 219/255 of the full one, so the same relative error
#: reads 20 log10(255/219) = 1.32 dB higher.
LUMAS = ("full", "ycbcr")


def to_luminance(arr: np.ndarray, luma: str = "full") -> np.ndarray:
    """Luma in [0, 1] of a ``(3, H, W)`` RGB image by the convention ``luma`` (see :data:`LUMAS`).

    Gray images pass through unchanged in both conventions (as SR benchmark code leaves them).
    """
    if luma not in LUMAS:
        from ..errors import UsageError

        raise UsageError(f"--luma must be one of {', '.join(LUMAS)}, got {luma!r}")
    if arr.ndim == 2:
        return arr
    r, g, b = arr[0], arr[1], arr[2]
    y = 0.299 * r + 0.587 * g + 0.114 * b
    if luma == "ycbcr":
        y = (16.0 + 219.0 * y) / 255.0
    return y.astype(np.float32)
