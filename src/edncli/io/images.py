"""Reading and writing images: PNG (8/16-bit), TIFF (float32), NPY, HDF5, and ``-`` for stdin/stdout.

Inside edn, images are float32 arrays in [0, 1] (integer formats are divided by their type's
maximum, never by the largest pixel value). Shapes: ``(H, W)`` gray or ``(C, H, W)`` colour.
Outputs are written to a temporary file in the target folder and renamed into place, and an
existing file is only replaced with ``force=True``.
"""

from __future__ import annotations

import io
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np

from ..errors import InputError, UsageError

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
    if not np.all(np.isfinite(arr)):
        raise InputError(f"{source}: the image holds NaN or Inf values")
    return arr.astype(np.float32)


def _channels_first(arr: np.ndarray, source: str) -> np.ndarray:
    if arr.ndim == 2:
        return arr
    if arr.ndim == 3:
        if arr.shape[-1] in (3, 4) and arr.shape[0] not in (3, 4):
            arr = np.moveaxis(arr, -1, 0)
        if arr.shape[0] == 4:  # drop alpha
            arr = arr[:3]
        if arr.shape[0] == 1:
            arr = arr[0]
        return arr
    raise InputError(f"{source}: expected a 2D image (or 3D with colour channels), got shape {arr.shape}")


def read_image_array(path: str | Path, dataset: Optional[str] = None) -> np.ndarray:
    """The raw array stored in an image file (no scaling)."""
    arr, _ = _read_raw(str(path), dataset)
    return arr


def _read_raw(path: str, dataset: Optional[str]) -> tuple[np.ndarray, str]:
    if path == "-":
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
    try:
        if fmt == "npy":
            arr = np.load(source, allow_pickle=False)
        elif fmt == "tif":
            import tifffile

            arr = tifffile.imread(source)
        elif fmt == "h5":
            import h5py

            with h5py.File(source, "r") as fh:
                key = dataset or _default_dataset(fh, label)
                if key not in fh:
                    raise InputError(f"{label}: no dataset {key!r} in the HDF5 file (pass --dataset)")
                arr = np.asarray(fh[key])
        else:
            from PIL import Image, UnidentifiedImageError

            try:
                with Image.open(source) as im:
                    if im.mode in ("I;16", "I;16B", "I;16L"):
                        arr = np.asarray(im, dtype=np.uint16)
                    elif im.mode == "I":
                        arr = np.asarray(im).astype(np.int64)
                        arr = arr.clip(0, 65535).astype(np.uint16)
                    elif im.mode in ("L", "RGB"):
                        arr = np.asarray(im)
                    elif im.mode == "F":
                        arr = np.asarray(im, dtype=np.float32)
                    else:
                        arr = np.asarray(im.convert("RGBA" if "A" in im.mode else "RGB"))
            except UnidentifiedImageError:
                raise InputError(f"{label}: not a readable image (PNG, TIFF, NPY, HDF5 or another Pillow format)") from None
    except InputError:
        raise
    except (OSError, ValueError, KeyError) as exc:
        raise InputError(f"{label}: cannot read the image ({exc})") from None
    return arr, label


def _default_dataset(fh, label: str) -> str:
    for key in ("/exchange/data", "image", "data"):
        if key in fh:
            return key
    names: list[str] = []
    fh.visititems(lambda name, obj: names.append(name) if hasattr(obj, "shape") else None)
    if len(names) == 1:
        return names[0]
    raise InputError(f"{label}: several datasets in the HDF5 file ({', '.join(names[:5])}); pass --dataset")


def read_image(path: str | Path, dataset: Optional[str] = None) -> tuple[np.ndarray, ImageInfo]:
    """Read an image as float32 in [0, 1] (floats kept as stored), shape ``(H, W)`` or ``(C, H, W)``."""
    raw, label = _read_raw(str(path), dataset)
    bit_depth = int(raw.dtype.itemsize * 8) if np.issubdtype(raw.dtype, np.integer) else None
    arr = _channels_first(_to_unit(raw, label), label)
    if arr.shape[-1] < 2 or arr.shape[-2] < 2:
        raise InputError(f"{label}: image of shape {arr.shape} is too small")
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


def encode_image(arr: np.ndarray, fmt: str, bit_depth: int = 16, dataset: str = "image") -> bytes:
    """Encode a float image (``(H, W)`` or ``(C, H, W)``) to bytes in ``fmt``.

    PNG clips to [0, 1] and quantises to ``bit_depth`` (8 or 16); TIFF, NPY and HDF5 keep float32.
    """
    arr = np.asarray(arr, dtype=np.float32)
    buf = io.BytesIO()
    if fmt == "png":
        from PIL import Image

        if bit_depth not in (8, 16):
            raise UsageError(f"--bit-depth must be 8 or 16, got {bit_depth}")
        hwc = np.moveaxis(arr, 0, -1) if arr.ndim == 3 else arr
        clipped = np.clip(hwc, 0.0, 1.0)
        if bit_depth == 8 or (hwc.ndim == 3):
            # Pillow cannot write 16-bit colour PNGs; colour PNG output is 8-bit.
            img = Image.fromarray(np.round(clipped * 255).astype(np.uint8))
        else:
            img = Image.fromarray(np.round(clipped * 65535).astype(np.uint16))
        img.save(buf, format="PNG")
    elif fmt == "tif":
        import tifffile

        tifffile.imwrite(buf, arr)
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
    """Fail early (before any work) when ``path`` exists and ``force`` is not set."""
    if path == "-":
        return
    p = Path(path)
    if p.exists() and not force:
        raise UsageError(f"{path} exists; pass --force to overwrite it")
    if p.is_dir():
        raise UsageError(f"{path} is a folder; give a file name")
    parent = p.parent if str(p.parent) else Path(".")
    if not parent.exists():
        raise UsageError(f"{path}: folder {parent} does not exist")


def write_bytes(path: str, data: bytes, force: bool = False) -> None:
    """Write atomically (temp file in the target folder, then rename); ``-`` writes to stdout."""
    if path == "-":
        sys.stdout.buffer.write(data)
        sys.stdout.buffer.flush()
        return
    check_writable(path, force)
    from .checkpoints import atomic_write_bytes

    atomic_write_bytes(path, data)


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
