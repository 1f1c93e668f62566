"""2D computed tomography: geometry, the astra-backed Radon transform, FBP and simulation.

Conventions
-----------
* The image is ``size x size`` pixels of side 1 (all lengths are in image pixels), centred on
  the rotation axis. Array row 0 is the top of the image (largest ``y``), as in astra.
* A sinogram has shape ``(n_angles, detectors)``; angles are in radians (astra's convention:
  at angle ``theta`` parallel rays travel along ``(sin theta, -cos theta)``).
* ``center`` is the detector position (in detector pixels, counted from the centre of pixel 0)
  onto which the rotation axis projects. ``None`` means the detector middle ``(detectors-1)/2``.
  It is implemented by shifting the detector in astra's vector geometries
  (``parallel_vec``/``fanflat_vec``), so it is honoured by every backend.

Backends (see :func:`make_ct_operator`): ``matrix`` (astra's sparse system matrix as a torch CSR
product, cached on disk), ``astra-cpu`` (astra's CPU projector, same kernel as ``matrix``) and
``cuda`` (astra's CUDA projectors; CUDA tensors in parallel beam stay on the GPU, see
:class:`_CudaOperator`). astra is imported lazily, never at ``import edncli``.

astra 2.5 CPU projector support for vector geometries (checked): ``parallel_vec`` works with
``line``, ``strip`` and ``linear``; ``fanflat_vec`` only with ``line_fanflat`` (``strip_fanflat``
rejects it). We therefore use ``linear`` (Joseph's interpolating kernel) for parallel beam and
``line_fanflat`` for fan beam, in both CPU backends.
"""

from __future__ import annotations

import functools
import hashlib
import json
import math
import os
import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Optional

import numpy as np
import torch

from ..errors import UsageError
from .base import LinearOperator

BACKENDS = ("auto", "matrix", "astra-cpu", "cuda")
#: Projector kind used by the CPU backends, per beam (both support astra's vec geometries).
CPU_PROJECTOR = {"parallel": "linear", "fan": "line_fanflat"}
#: ``auto`` falls back from ``matrix`` to ``astra-cpu`` above this many bytes (A and A^T in CSR).
DEFAULT_MAX_MATRIX_BYTES = 1.5e9


def _astra():
    """Import astra lazily with a clear error when it is missing."""
    try:
        import astra  # noqa: PLC0415
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise UsageError(
            "CT needs astra-toolbox, which is not installed; install it with `pip install astra-toolbox` "
            "(or `pip install edncli[ct]`)"
        ) from exc
    return astra


@functools.lru_cache(maxsize=1)
def cuda_available() -> bool:
    """True when astra was built with CUDA and sees a GPU (safe to call without a GPU; the
    answer is cached for the process)."""
    try:
        return bool(_astra().use_cuda())
    except Exception:  # pragma: no cover - astra missing or broken
        return False


# ----------------------------------------------------------------------------------------------
# Geometry
# ----------------------------------------------------------------------------------------------
@dataclass
class CTGeometry:
    """A 2D CT acquisition geometry, all lengths in image pixels.

    Parameters
    ----------
    size:
        The image is ``size x size`` pixels of side 1, centred on the rotation axis.
    angles:
        Projection angles in radians, shape ``(n_angles,)`` (converted to float64).
    detectors:
        Number of detector pixels.
    detector_spacing:
        Detector pixel pitch in image pixels (for fan beam: on the physical detector).
    beam:
        ``"parallel"`` or ``"fan"`` (flat detector).
    source_origin, origin_detector:
        Fan beam only: source-to-rotation-axis and rotation-axis-to-detector distances.
    center:
        Position, in detector pixels, onto which the rotation axis projects; ``None`` is the
        detector middle ``(detectors - 1) / 2``.
    """

    size: int
    angles: np.ndarray
    detectors: int
    detector_spacing: float = 1.0
    beam: str = "parallel"
    source_origin: Optional[float] = None
    origin_detector: Optional[float] = None
    center: Optional[float] = None

    def __post_init__(self) -> None:
        try:
            size = int(self.size)
        except (TypeError, ValueError):
            raise UsageError(f"size={self.size!r} is not an integer; give the image size in pixels, e.g. 256") from None
        if size != self.size or size < 1:
            raise UsageError(f"size={self.size!r} is not a positive integer; give the image size in pixels, e.g. 256")
        self.size = size
        angles = np.asarray(self.angles, dtype=np.float64).reshape(-1)
        if angles.size == 0:
            raise UsageError("angles=[] is empty; give at least one projection angle (e.g. --angles 180)")
        if not np.all(np.isfinite(angles)):
            raise UsageError("angles contain NaN/Inf; give finite projection angles in radians")
        self.angles = angles
        if int(self.detectors) != self.detectors or int(self.detectors) < 1:
            raise UsageError(
                f"detectors={self.detectors!r} is not a positive integer; give the detector count, "
                f"e.g. ceil(size*sqrt(2))={math.ceil(size * math.sqrt(2))}"
            )
        self.detectors = int(self.detectors)
        self.detector_spacing = float(self.detector_spacing)
        if not (self.detector_spacing > 0 and math.isfinite(self.detector_spacing)):
            raise UsageError(f"detector_spacing={self.detector_spacing!r} must be a positive number (in image pixels)")
        if self.beam not in ("parallel", "fan"):
            raise UsageError(f"beam={self.beam!r} is not known; use 'parallel' or 'fan'")
        if self.beam == "fan":
            if self.source_origin is None or self.origin_detector is None:
                raise UsageError(
                    f"fan beam (--beam fan) needs source_origin and origin_detector (--source-origin, --origin-detector; "
                    f"got {self.source_origin!r}, {self.origin_detector!r}); give both distances in image pixels"
                )
            self.source_origin = float(self.source_origin)
            self.origin_detector = float(self.origin_detector)
            if not self.source_origin > 0 or not math.isfinite(self.source_origin):
                raise UsageError(f"source_origin={self.source_origin!r} must be a positive distance in image pixels")
            if not self.origin_detector >= 0 or not math.isfinite(self.origin_detector):
                raise UsageError(f"origin_detector={self.origin_detector!r} must be a distance >= 0 in image pixels")
            if self.source_origin <= self.size / math.sqrt(2):
                raise UsageError(
                    f"source_origin={self.source_origin:g} puts the source inside the {self.size}x{self.size} image; "
                    f"give a distance > {self.size / math.sqrt(2):.1f} pixels"
                )
        else:
            self.source_origin = None if self.source_origin is None else float(self.source_origin)
            self.origin_detector = None if self.origin_detector is None else float(self.origin_detector)
        if self.center is not None:
            self.center = float(self.center)
            if not math.isfinite(self.center):
                raise UsageError(f"center={self.center!r} must be finite (detector pixels) or None for the middle")
            reach = self._footprint_half_width()
            if self.center - reach > self.detectors - 0.5 or self.center + reach < -0.5:
                raise UsageError(
                    f"center={self.center:g} puts the {self.size}x{self.size} image outside the detector "
                    f"(pixels 0..{self.detectors - 1}); give the rotation axis in detector pixels"
                )

    def _footprint_half_width(self) -> float:
        """Half-width, in detector pixels, of the shadow of the image's circumscribed disc."""
        r = self.size / math.sqrt(2)
        if self.beam == "fan":
            so, od = float(self.source_origin), float(self.origin_detector)  # type: ignore[arg-type]
            r = (so + od) * r / math.sqrt(so * so - r * r)
        return r / self.detector_spacing

    # -- derived -----------------------------------------------------------------------------
    @property
    def n_angles(self) -> int:
        return int(self.angles.size)

    @property
    def sino_shape(self) -> tuple[int, int]:
        """``(n_angles, detectors)``."""
        return (self.n_angles, self.detectors)

    @property
    def axis_position(self) -> float:
        """Rotation-axis position in detector pixels (``center`` or the detector middle)."""
        return (self.detectors - 1) / 2.0 if self.center is None else float(self.center)

    def angles_hash(self) -> str:
        """sha256 hex of the float64 little-endian angle array."""
        return hashlib.sha256(self.angles.astype("<f8").tobytes()).hexdigest()

    def _canonical(self) -> dict:
        return {
            "size": self.size,
            "angles_sha256": self.angles_hash(),
            "n_angles": self.n_angles,
            "detectors": self.detectors,
            "detector_spacing": repr(self.detector_spacing),
            "beam": self.beam,
            "source_origin": None if self.beam == "parallel" else repr(self.source_origin),
            "origin_detector": None if self.beam == "parallel" else repr(self.origin_detector),
            "center": repr(self.axis_position),
        }

    def key(self) -> str:
        """sha256 hex of a canonical encoding (used to name disk-cache entries)."""
        blob = json.dumps(self._canonical(), sort_keys=True, separators=(",", ":")).encode()
        return hashlib.sha256(blob).hexdigest()

    def describe(self) -> dict:
        """Plain-JSON description; angles summarised (listed when there are at most 16)."""
        out: dict[str, Any] = {
            "size": self.size,
            "beam": self.beam,
            "detectors": self.detectors,
            "detector_spacing": self.detector_spacing,
            "center": self.center,
            "angles": {
                "count": self.n_angles,
                "first": float(self.angles[0]),
                "last": float(self.angles[-1]),
                "sha256": self.angles_hash(),
            },
            "key": self.key(),
        }
        if self.n_angles <= 16:
            out["angles"]["values"] = [float(a) for a in self.angles]
        if self.beam == "fan":
            out["source_origin"] = self.source_origin
            out["origin_detector"] = self.origin_detector
        return out

    @classmethod
    def parallel(
        cls, size: int, n_angles: int, detectors: Optional[int] = None, arc: float = math.pi, **kwargs: Any
    ) -> "CTGeometry":
        """Parallel beam with ``n_angles`` equispaced angles over ``[0, arc)`` and, by default,
        ``ceil(size * sqrt(2))`` detectors."""
        if int(n_angles) < 1:
            raise UsageError(f"n_angles={n_angles!r} must be >= 1; give the number of projection angles")
        det = math.ceil(size * math.sqrt(2)) if detectors is None else detectors
        return cls(size, np.linspace(0.0, arc, int(n_angles), endpoint=False), det, beam="parallel", **kwargs)

    # -- astra -------------------------------------------------------------------------------
    def vectors(self) -> np.ndarray:
        """astra vector-geometry rows, shape ``(n_angles, 6)``.

        Parallel: ``(rayX, rayY, dX, dY, uX, uY)``; fan: ``(srcX, srcY, dX, dY, uX, uY)``, with
        ``d`` the detector centre shifted so that the rotation axis projects onto ``center``.
        """
        th = self.angles
        s, c = np.sin(th), np.cos(th)
        u = np.stack([c, s], axis=1) * self.detector_spacing
        shift = (self.detectors - 1) / 2.0 - self.axis_position  # in detector pixels, along u
        if self.beam == "parallel":
            first = np.stack([s, -c], axis=1)
            d = np.zeros_like(u)
        else:
            first = np.stack([s, -c], axis=1) * self.source_origin
            d = np.stack([-s, c], axis=1) * self.origin_detector
        d = d + shift * u
        return np.concatenate([first, d, u], axis=1)

    def astra_geometries(self) -> tuple[dict, dict]:
        """``(vol_geom, proj_geom)`` for astra (``parallel_vec`` or ``fanflat_vec``)."""
        astra = _astra()
        vol = astra.create_vol_geom(self.size, self.size)
        kind = "parallel_vec" if self.beam == "parallel" else "fanflat_vec"
        proj = astra.create_proj_geom(kind, self.detectors, self.vectors())
        return vol, proj


# ----------------------------------------------------------------------------------------------
# Operators
# ----------------------------------------------------------------------------------------------
class _Apply(torch.autograd.Function):
    """A linear map with a known adjoint, so gradients use the adjoint (not autograd of astra)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, fwd: Callable, adj: Callable) -> torch.Tensor:  # type: ignore[override]
        ctx.adj = adj
        return fwd(x)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):  # type: ignore[override]
        return ctx.adj(grad.contiguous()), None, None


class CTOperator(LinearOperator):
    """The discrete Radon transform ``A: (B, size, size) -> (B, n_angles, detectors)``.

    Float32 in and out, on the input's device; slices of the batch are independent. Use
    :func:`make_ct_operator` to build one. Subclasses implement ``_fwd``/``_adj`` on contiguous
    float32 tensors of shape ``(B, ...)``.
    """

    name = "ct"
    returns_new = True
    backend = "?"
    projector = "?"

    def __init__(self, geometry: CTGeometry):
        super().__init__((geometry.size, geometry.size), geometry.sino_shape)
        self.geometry = geometry

    def _check(self, x: torch.Tensor, shape: tuple, what: str, hint: str = "") -> torch.Tensor:
        if not isinstance(x, torch.Tensor):
            x = torch.as_tensor(np.asarray(x))
        return super()._check(x, shape, what, hint or "; match the image size/angles/detectors to the geometry")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self._check(x, self.in_shape, "image")
        dtype = x.dtype
        y = _Apply.apply(x.float().contiguous(), self._fwd, self._adj)
        return y if dtype == torch.float32 or not dtype.is_floating_point else y.to(dtype)

    def adjoint(self, y: torch.Tensor) -> torch.Tensor:
        y = self._check(y, self.out_shape, "sinogram")
        dtype = y.dtype
        x = _Apply.apply(y.float().contiguous(), self._adj, self._fwd)
        return x if dtype == torch.float32 or not dtype.is_floating_point else x.to(dtype)

    def _fwd(self, x: torch.Tensor) -> torch.Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def _adj(self, y: torch.Tensor) -> torch.Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def fbp(self, sinogram: torch.Tensor, filter: str = "ramp") -> torch.Tensor:
        """Filtered back-projection of ``(B, n_angles, detectors)`` to ``(B, size, size)``.

        See :func:`fbp`; the result is an approximate inverse of this operator.
        """
        sinogram = self._check(sinogram, self.out_shape, "sinogram")
        return fbp(sinogram, self.geometry, filter=filter)

    def describe(self) -> dict:
        return {
            **super().describe(),
            "backend": self.backend,
            "projector": self.projector,
            "geometry": self.geometry.describe(),
        }


def _host(x: torch.Tensor) -> np.ndarray:
    return x.detach().to("cpu", torch.float32).contiguous().numpy()


class _AstraCPUOperator(CTOperator):
    """astra's CPU projector (``linear`` for parallel, ``line_fanflat`` for fan beam)."""

    backend = "astra-cpu"

    def __init__(self, geometry: CTGeometry, projector: Optional[str] = None):
        super().__init__(geometry)
        self.projector = projector or CPU_PROJECTOR[geometry.beam]
        self._pid: Optional[int] = None

    def _projector_id(self) -> int:
        if self._pid is None:
            astra = _astra()
            vol, proj = self.geometry.astra_geometries()
            self._pid = astra.create_projector(self.projector, proj, vol)
        return self._pid

    def __del__(self) -> None:
        pid = getattr(self, "_pid", None)
        if pid is not None:
            try:
                _astra().projector.delete(pid)
            except Exception:
                pass

    def __getstate__(self) -> dict:
        state = dict(self.__dict__)
        state["_pid"] = None
        return state

    def _fwd(self, x: torch.Tensor) -> torch.Tensor:
        astra, pid = _astra(), self._projector_id()
        out = np.empty((x.shape[0], *self.out_shape), dtype=np.float32)
        for i, img in enumerate(_host(x)):
            sid, sino = astra.create_sino(img, pid)
            astra.data2d.delete(sid)
            out[i] = sino
        return torch.from_numpy(out).to(x.device)

    def _adj(self, y: torch.Tensor) -> torch.Tensor:
        astra, pid = _astra(), self._projector_id()
        out = np.empty((y.shape[0], *self.in_shape), dtype=np.float32)
        for i, sino in enumerate(_host(y)):
            bid, img = astra.create_backprojection(sino, pid)
            astra.data2d.delete(bid)
            out[i] = img
        return torch.from_numpy(out).to(y.device)


def _device_path_available(t: torch.Tensor) -> bool:
    """True when ``t`` is a CUDA tensor and both torch and astra see a GPU.

    torch is asked first: on a machine without a GPU some astra CUDA calls end the process
    instead of raising, so astra is only asked once torch has found a device.
    """
    return bool(t.is_cuda and torch.cuda.is_available() and cuda_available())


def parallel3d_vectors(geometry: CTGeometry) -> np.ndarray:
    """astra ``parallel3d_vec`` rows ``(n_angles, 12)`` for a stack of 2D parallel-beam slices.

    A batch of ``B`` slices is one astra volume of ``B`` slices (z, one voxel thick) seen by a
    detector of ``B`` rows, row ``k`` in the plane of slice ``k``: ray direction
    ``(rX, -rY, 0)``, detector centre ``(dX, -dY, 0)``, column step ``(uX, -uY, 0)`` and row
    step ``v = (0, 0, 1)``, with ``(r, d, u)`` the 2D rows of :meth:`CTGeometry.vectors` (so the
    centre-of-rotation shift carried by ``d`` is kept). ``y`` is mirrored because astra's 3D
    volumes put row 0 at the smallest ``y`` while 2D images (and this module) put it at the
    largest; a mirror keeps every length, hence every weight. The same rows serve any ``B``:
    astra centres both the volume and the detector rows on ``z = 0``, so row ``k`` meets slice
    ``k`` at its centre, and rays never leave their slice (``rayZ = 0``).
    """
    if geometry.beam != "parallel":
        raise ValueError(f"parallel3d_vectors needs a parallel-beam geometry, got beam={geometry.beam!r}")
    v2 = geometry.vectors()
    n = v2.shape[0]
    out = np.zeros((n, 12), dtype=np.float64)
    out[:, 0], out[:, 1] = v2[:, 0], -v2[:, 1]  # ray
    out[:, 3], out[:, 4] = v2[:, 2], -v2[:, 3]  # detector centre
    out[:, 6], out[:, 7] = v2[:, 4], -v2[:, 5]  # u: one detector column
    out[:, 11] = 1.0  # v: one detector row = one slice
    return out


def _gpu_link(t: torch.Tensor):
    """astra's :class:`GPULink` to a contiguous float32 CUDA tensor ``(z, y, x)``: no copy."""
    from astra.pythonutils import GPULink  # noqa: PLC0415

    z, y, x = t.shape
    return GPULink(t.data_ptr(), int(x), int(y), int(z), int(x) * t.element_size())


class _CudaOperator(_AstraCPUOperator):
    """astra's CUDA projectors.

    * CUDA tensors, parallel beam: the batch stays on the GPU. ``B`` slices are one astra 3D
      problem (``parallel3d_vec``, see :func:`parallel3d_vectors`) projected by the ``cuda3d``
      projector with ``astra.experimental.direct_FP3D``/``direct_BP3D`` on
      :class:`astra.pythonutils.GPULink` views of the torch tensors: ``(B, size, size)`` is an
      astra volume ``(z, y, x)`` and ``(B, n_angles, detectors)`` an astra projection
      ``(rows, angles, cols)``, both C-contiguous with pitch ``last dim * 4`` bytes, so neither
      is copied or reordered. astra's 3D scale (line integrals in voxel lengths; back
      projection weighted ``1 / |u x v|`` = 1 / detector spacing) equals the 2D operators'
      for voxels of side 1.
    * CPU tensors, and fan beam on any device: astra's 2D ``cuda`` projector through host
      memory, one slice per call (a fan of slices is not a 3D cone: its rays would diverge
      across slices; one ``cone_vec`` geometry per slice is possible but not done here).

    astra's CUDA forward (ray-driven, interpolating in the image) and back projection
    (voxel-driven, interpolating on the detector) are a matched pair only approximately, and
    use the GPU's 9-bit texture interpolation: the adjoint holds to about 1e-3, not 1e-7.
    """

    backend = "cuda"
    #: 3D projectors kept per operator, keyed by ``(batch, gpu)`` (oldest dropped first).
    max_device_projectors = 4

    def __init__(self, geometry: CTGeometry, gpu_index: int = 0):
        if not cuda_available():
            raise UsageError(
                "backend 'cuda' (--backend cuda) needs astra with CUDA and a GPU, and astra.use_cuda() is False here; "
                "use --backend auto or matrix"
            )
        super().__init__(geometry, projector="cuda")
        self.gpu_index = int(gpu_index)
        self._pids3d: dict[tuple[int, int], int] = {}

    def _projector_id(self) -> int:
        if self._pid is None:
            astra = _astra()
            astra.set_gpu_index(self.gpu_index)
            vol, proj = self.geometry.astra_geometries()
            # The 2D CUDA algorithms run on the projector's GPUIndex; without it, on whichever GPU
            # astra's global index names at the time (another operator's, e.g. rank 0's GPU).
            self._pid = astra.create_projector("cuda", proj, vol, {"GPUIndex": self.gpu_index})
        return self._pid

    def _projector3d_id(self, batch: int, gpu: int) -> int:
        key = (batch, gpu)
        pid = self._pids3d.get(key)
        if pid is None:
            astra = _astra()
            while len(self._pids3d) >= self.max_device_projectors:
                astra.projector3d.delete(self._pids3d.pop(next(iter(self._pids3d))))
            n = self.geometry.size
            vol = astra.create_vol_geom(n, n, batch)  # rows (y), cols (x), slices (z)
            proj = astra.create_proj_geom(
                "parallel3d_vec", batch, self.geometry.detectors, parallel3d_vectors(self.geometry)
            )
            pid = self._pids3d[key] = astra.create_projector("cuda3d", proj, vol)
        return pid

    def _on_device(self, t: torch.Tensor) -> bool:
        return self.geometry.beam == "parallel" and _device_path_available(t)

    def _device_call(self, kind: str, x: torch.Tensor, out_shape: tuple) -> torch.Tensor:
        """``direct_FP3D`` (``kind='FP'``) or ``direct_BP3D`` on the device of ``x``."""
        astra = _astra()
        from astra import experimental  # noqa: PLC0415 - `import astra` does not load it

        x = x.contiguous()
        b, dev = x.shape[0], x.device
        gpu = dev.index if dev.index is not None else torch.cuda.current_device()
        # NaN-filled: astra 2.5's direct_FP3D/direct_BP3D build an error for a failed doFP/doBP
        # but never raise it, so a failure (no memory, a bad pointer) would otherwise return
        # whatever the allocator's block held. A success writes every element (MODE_SET).
        out = torch.full((b, *out_shape), math.nan, dtype=torch.float32, device=dev)
        with torch.cuda.device(gpu):
            astra.set_gpu_index(gpu)
            pid = self._projector3d_id(b, gpu)
            # astra runs on its own streams: wait for torch's writes to x, and for astra's
            # writes to `out` before torch reads it (a whole-device sync covers every stream).
            torch.cuda.synchronize(gpu)
            if kind == "FP":
                experimental.direct_FP3D(pid, _gpu_link(x), _gpu_link(out))
            else:
                experimental.direct_BP3D(pid, _gpu_link(out), _gpu_link(x))
            torch.cuda.synchronize(gpu)
        if bool(out.isnan().any()) and not bool(x.isnan().any()):
            raise RuntimeError(
                f"astra's CUDA {'forward' if kind == 'FP' else 'back'} projection of a {tuple(x.shape)} batch on "
                f"cuda:{gpu} failed (astra reports why on stderr); try fewer slices at a time or --backend matrix"
            )
        return out

    def _fwd(self, x: torch.Tensor) -> torch.Tensor:
        if self._on_device(x):
            return self._device_call("FP", x, self.out_shape)
        return super()._fwd(x)

    def _adj(self, y: torch.Tensor) -> torch.Tensor:
        if self._on_device(y):
            return self._device_call("BP", y, self.in_shape)
        return super()._adj(y)

    def __del__(self) -> None:
        for pid in getattr(self, "_pids3d", {}).values():
            try:
                _astra().projector3d.delete(pid)
            except Exception:
                pass
        super().__del__()

    def __getstate__(self) -> dict:
        state = super().__getstate__()
        state["_pids3d"] = {}
        return state

    def describe(self) -> dict:
        return {
            **super().describe(),
            "device_path": "cuda3d parallel3d_vec via GPULink" if self.geometry.beam == "parallel" else "host (2D cuda)",
        }


def estimate_matrix_nnz(geometry: CTGeometry) -> int:
    """Upper estimate of the system-matrix nonzeros: about 2 detector bins per pixel and angle
    (times the fan magnification over the detector pitch for fan beam)."""
    per = 2.0 / geometry.detector_spacing
    if geometry.beam == "fan":
        mag = (geometry.source_origin + geometry.origin_detector) / max(geometry.source_origin - geometry.size / 2, 1.0)
        per *= max(mag, 1.0)
    per = max(per, 1.0) + 0.5
    return int(geometry.n_angles * geometry.size**2 * min(per, geometry.detectors))


def estimate_matrix_bytes(geometry: CTGeometry) -> int:
    """Bytes held by ``A`` and ``A^T`` in CSR: ``2 * (nnz * (4 + 4) + (rows + 1) * 4)``."""
    nnz = estimate_matrix_nnz(geometry)
    rows = geometry.n_angles * geometry.detectors + geometry.size**2
    return int(2 * nnz * 8 + (rows + 2) * 4)


def default_cache_dir() -> Path:
    """``$EDN_CACHE_DIR/ct`` if set, else ``$XDG_CACHE_HOME/edn/ct``, else ``~/.cache/edn/ct``; an
    empty variable counts as unset, and where there is no home (``$HOME`` empty or ``/``) the cache
    goes to ``<tmp>/edn-cache-<uid>/ct``, never to ``/.cache``."""
    env = os.environ.get("EDN_CACHE_DIR")
    if env:
        return Path(env) / "ct"
    xdg = os.environ.get("XDG_CACHE_HOME")
    if xdg and os.path.isabs(xdg):  # the XDG spec: a relative value is ignored
        return Path(xdg) / "edn" / "ct"
    home = os.environ.get("HOME")
    if home is None:  # unset: the password database's home (expanduser's rule), or "~" when there is none
        home = os.path.expanduser("~")
    if home.strip() in ("", "/", "~"):
        import tempfile

        uid = os.getuid() if hasattr(os, "getuid") else "user"
        return Path(tempfile.gettempdir()) / f"edn-cache-{uid}" / "ct"
    return Path(home) / ".cache" / "edn" / "ct"


def _build_matrix(geometry: CTGeometry, projector: str):
    """astra's sparse system matrix as ``scipy.sparse.csr_matrix`` (float32, int32 indices),
    rows ``angle * detectors + detector``, columns ``row * size + col``."""
    astra = _astra()
    vol, proj = geometry.astra_geometries()
    pid = astra.create_projector(projector, proj, vol)
    mid = None
    try:
        mid = astra.projector.matrix(pid)
        mat = astra.matrix.get(mid)
    finally:
        if mid is not None:
            astra.matrix.delete(mid)
        astra.projector.delete(pid)
    import scipy.sparse as sp  # noqa: PLC0415

    mat = sp.csr_matrix(
        (mat.data.astype(np.float32), mat.indices.astype(np.int32), mat.indptr.astype(np.int32)), shape=mat.shape
    )
    mat.sort_indices()
    return mat


def matrix_limit_from_env() -> float:
    """``$EDN_CT_MATRIX_MAX_BYTES`` (bytes, e.g. ``2e9``), or :data:`DEFAULT_MAX_MATRIX_BYTES` when
    unset or empty; anything but a number is a one-line :class:`UsageError`."""
    raw = os.environ.get("EDN_CT_MATRIX_MAX_BYTES", "").strip()
    if not raw:
        return float(DEFAULT_MAX_MATRIX_BYTES)
    try:
        return float(raw)
    except ValueError:
        raise UsageError(f"$EDN_CT_MATRIX_MAX_BYTES must be a number of bytes (e.g. 2e9), got {raw!r}") from None


def _cache_path(cache_dir: Path, geometry: CTGeometry, projector: str) -> Path:
    try:
        version = str(_astra().__version__).replace("/", "_")
    except Exception:  # pragma: no cover
        version = "unknown"
    return cache_dir / f"{geometry.key()}-{projector}-astra{version}.npz"


def _load_or_build_matrix(geometry: CTGeometry, projector: str, cache_dir: Optional[Path]):
    import scipy.sparse as sp  # noqa: PLC0415

    shape = (geometry.n_angles * geometry.detectors, geometry.size**2)
    path = None if cache_dir is None else _cache_path(cache_dir, geometry, projector)
    key = f"{geometry.key()}-{projector}"  # stored in the entry: a file copied under another name is not this geometry's
    if path is not None and path.is_file():
        try:
            with np.load(path) as z:
                mat = sp.csr_matrix((z["data"], z["indices"], z["indptr"]), shape=tuple(int(s) for s in z["shape"]))
                stored = str(z["key"]) if "key" in z.files else None
            mat.check_format(full_check=True)  # torch's CSR product trusts its indices: check them here
            if stored is not None and stored != key:
                raise ValueError("made for another geometry")
            if not np.isfinite(mat.data).all():
                raise ValueError("it holds NaN/Inf")
            if mat.shape == shape and stored is not None:
                return mat, path, True  # (an entry of an earlier edn, without its key, is rebuilt quietly)
        except Exception as exc:  # corrupt cache entry: rebuild and overwrite
            warnings.warn(f"ignoring unreadable or foreign CT matrix cache entry {path} ({exc}); rebuilding it",
                          stacklevel=3)
    mat = _build_matrix(geometry, projector)
    if path is not None:
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.stem + ".", suffix=".tmp.npz")
            try:
                with os.fdopen(fd, "wb") as fh:
                    np.savez(fh, data=mat.data, indices=mat.indices, indptr=mat.indptr, shape=np.array(mat.shape),
                             key=np.array(key))
                os.replace(tmp, path)
            except BaseException:
                if os.path.exists(tmp):
                    os.unlink(tmp)
                raise
        except OSError as exc:
            warnings.warn(f"could not write the CT matrix cache {path} ({exc}); continuing without it", stacklevel=3)
    return mat, path, False


def _to_torch_csr(mat) -> torch.Tensor:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return torch.sparse_csr_tensor(
            torch.from_numpy(np.ascontiguousarray(mat.indptr, dtype=np.int32)),
            torch.from_numpy(np.ascontiguousarray(mat.indices, dtype=np.int32)),
            torch.from_numpy(np.ascontiguousarray(mat.data, dtype=np.float32)),
            size=mat.shape,
            check_invariants=False,
        )


class _MatrixOperator(CTOperator):
    """astra's sparse system matrix applied as a torch CSR product (``A`` and ``A^T`` both CSR)."""

    backend = "matrix"

    def __init__(self, geometry: CTGeometry, cache_dir: Optional[Path] = None, projector: Optional[str] = None):
        super().__init__(geometry)
        self.projector = projector or CPU_PROJECTOR[geometry.beam]
        mat, path, hit = _load_or_build_matrix(geometry, self.projector, cache_dir)
        self.cache_path: Optional[str] = None if path is None else str(path)
        self.cache_hit = hit
        self.nnz = int(mat.nnz)
        self.A = _to_torch_csr(mat)
        self.At = _to_torch_csr(mat.T.tocsr())

    @staticmethod
    def _apply(mat: torch.Tensor, x: torch.Tensor, out_shape: tuple) -> torch.Tensor:
        b = x.shape[0]
        if mat.device != x.device:
            mat = mat.to(x.device)
        flat = x.reshape(b, -1)
        if b == 1:  # SpMV: on CPU ~2.5x faster than a CSR @ (n, 1) product in torch 2.x
            return torch.mv(mat, flat[0]).reshape(1, *out_shape)
        # SpMM on a contiguous (n, B) block streams the matrix once for the whole batch. torch's
        # CPU kernel sums another way (and ~2x slower) when B is not a multiple of 4: zero columns
        # up to one make a slice's product the same bits in any batch of >= 2, so that a sharded
        # run (torchrun, chunks of the batch) equals a single-process one.
        cols = flat.T
        if b % 4:
            cols = torch.cat([cols, cols.new_zeros(cols.shape[0], -b % 4)], dim=1)
        return (mat @ cols.contiguous())[:, :b].T.reshape(b, *out_shape).contiguous()

    def _fwd(self, x: torch.Tensor) -> torch.Tensor:
        return self._apply(self.A, x, self.out_shape)

    def _adj(self, y: torch.Tensor) -> torch.Tensor:
        return self._apply(self.At, y, self.in_shape)

    def describe(self) -> dict:
        return {**super().describe(), "nnz": self.nnz}


def make_ct_operator(
    geometry: CTGeometry,
    backend: str = "auto",
    device: torch.device | str = "cpu",
    cache_dir: Optional[str | os.PathLike] = None,
    max_matrix_bytes: Optional[float] = None,
) -> CTOperator:
    """Build the Radon transform ``A`` for ``geometry``.

    Parameters
    ----------
    geometry:
        The acquisition geometry.
    backend:
        ``"matrix"``: astra's sparse system matrix as a torch CSR product (``A^T`` precomputed as
        CSR), cached under ``cache_dir``; ``"astra-cpu"``: astra's CPU projector with the same
        kernel; ``"cuda"``: astra's CUDA projectors (needs ``astra.use_cuda()``); ``"auto"``:
        ``cuda`` when ``device`` is CUDA and astra has CUDA, else ``matrix`` unless its estimated
        size exceeds ``max_matrix_bytes`` (or building it fails), else ``astra-cpu``.
    device:
        Where the operator's tensors live (the output always follows the input's device).
    cache_dir:
        Matrix cache folder; default ``$EDN_CACHE_DIR/ct`` or ``~/.cache/edn/ct``.
    max_matrix_bytes:
        ``auto``'s size limit for the matrix path; default ``$EDN_CT_MATRIX_MAX_BYTES`` or 1.5e9.

    Returns
    -------
    CTOperator
        ``in_shape == (size, size)``, ``out_shape == (n_angles, detectors)``.
    """
    if backend not in BACKENDS:
        raise UsageError(f"backend={backend!r} is not known; use one of {', '.join(BACKENDS)}")
    if not isinstance(geometry, CTGeometry):
        raise UsageError(f"geometry={type(geometry).__name__} is not a CTGeometry; build one with CTGeometry(...)")
    dev = torch.device(device)
    cache = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    if backend == "auto":
        if dev.type == "cuda" and cuda_available():
            backend = "cuda"
        else:
            limit = max_matrix_bytes if max_matrix_bytes is not None else matrix_limit_from_env()
            backend = "matrix" if estimate_matrix_bytes(geometry) <= limit else "astra-cpu"
            if backend == "matrix":
                try:
                    return _MatrixOperator(geometry, cache_dir=cache).to(dev)  # type: ignore[return-value]
                except (MemoryError, RuntimeError, ValueError) as exc:
                    warnings.warn(f"CT system matrix failed ({exc}); using astra's CPU projector", stacklevel=2)
                    backend = "astra-cpu"
    if backend == "cuda":
        # The host path (fan beam, CPU tensors) runs on this GPU; the device path on the tensor's.
        gpu = dev.index if dev.type == "cuda" and dev.index is not None else None
        if gpu is None and dev.type == "cuda" and torch.cuda.is_available():
            gpu = torch.cuda.current_device()
        return _CudaOperator(geometry, gpu_index=gpu or 0)
    if backend == "matrix":
        return _MatrixOperator(geometry, cache_dir=cache).to(dev)  # type: ignore[return-value]
    return _AstraCPUOperator(geometry)


# ----------------------------------------------------------------------------------------------
# FBP
# ----------------------------------------------------------------------------------------------
def _ramp_response(n: int, spacing: float, filter: str, device: torch.device) -> torch.Tensor:
    """Frequency response (length ``n // 2 + 1``, rfft) of the band-limited Ram-Lak kernel
    ``h[0] = 1/(4 a^2)``, ``h[odd k] = -1/(pi k a)^2`` times ``a`` (Kak & Slaney eq. 3.61)."""
    k = torch.arange(n, dtype=torch.float64)
    k = torch.minimum(k, n - k)
    h = torch.zeros(n, dtype=torch.float64)
    h[0] = 0.25
    odd = (k % 2) == 1
    h[odd] = -1.0 / (math.pi * k[odd]) ** 2
    resp = torch.fft.rfft(h).real / spacing  # (a * h_a) with h_a = h / a^2
    if filter == "hann":
        f = torch.fft.rfftfreq(n, dtype=torch.float64)
        resp = resp * 0.5 * (1 + torch.cos(2 * math.pi * f))
    elif filter != "ramp":
        raise UsageError(f"filter={filter!r} is not known; use 'ramp' or 'hann'")
    return resp.to(device=device, dtype=torch.float32)


def _filter_rows(sino: torch.Tensor, spacing: float, filter: str) -> torch.Tensor:
    n_det = sino.shape[-1]
    n = 1 << max(6, int(math.ceil(math.log2(2 * n_det))))
    resp = _ramp_response(n, spacing, filter, sino.device)
    spec = torch.fft.rfft(sino, n=n, dim=-1) * resp
    return torch.fft.irfft(spec, n=n, dim=-1)[..., :n_det]


def _pixel_centres(size: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """``(x, y)`` of pixel centres, each ``(size*size,)``; row 0 is the top (``y`` largest)."""
    c = torch.arange(size, dtype=torch.float64, device=device) - (size - 1) / 2.0
    y, x = torch.meshgrid(-c, c, indexing="ij")
    return x.reshape(-1), y.reshape(-1)


#: Values per block of FBP's back-projection (pixels x angles): bounds its memory (~10 float64
#: arrays of this many values, ~340 MB) for any image size.
FBP_BLOCK = 1 << 22


def fbp(sinogram: torch.Tensor, geometry: CTGeometry, filter: str = "ramp", chunk: int = 16) -> torch.Tensor:
    """Filtered back-projection ``(B, n_angles, detectors) -> (B, size, size)``.

    Parallel beam: Ram-Lak filtering along the detector (FFT, zero-padded) and pixel-driven
    linear-interpolation back-projection weighted ``pi / n_angles`` (exact for equispaced angles
    over 180 or 360 degrees). Fan beam (flat detector): FDK-style, i.e. cosine pre-weighting,
    ramp filtering on the detector scaled to the rotation axis, halved, and back-projection with
    the distance weight ``1/U^2``, weighted ``2 pi / n_angles`` (meant for full 360-degree scans;
    for short scans without Parker weights the result is only approximate). ``filter='hann'``
    applies a Hann window to the ramp. Runs in torch on the sinogram's device.
    """
    if sinogram.dim() != 3 or tuple(sinogram.shape[1:]) != geometry.sino_shape:
        raise UsageError(
            f"sinogram has shape {tuple(sinogram.shape)}, but the geometry needs (B, {geometry.n_angles}, "
            f"{geometry.detectors})"
        )
    dev = sinogram.device
    vec = torch.as_tensor(geometry.vectors(), dtype=torch.float64, device=dev)
    sino = sinogram.to(torch.float64)
    n_det, K = geometry.detectors, geometry.n_angles
    px, py = _pixel_centres(geometry.size, dev)
    mid = (n_det - 1) / 2.0
    u = vec[:, 4:6]
    D = vec[:, 2:4]
    if geometry.beam == "parallel":
        r = vec[:, 0:2]
        cross_ur = u[:, 0] * r[:, 1] - u[:, 1] * r[:, 0]
        spacing = float(cross_ur.abs().mean() / r.norm(dim=1).mean())
        q = _filter_rows(sino, spacing, filter)
        weight = math.pi / K
    else:
        S = vec[:, 0:2]
        SmD = S - D
        unorm = u.norm(dim=1)
        sdp = (u[:, 0] * SmD[:, 1] - u[:, 1] * SmD[:, 0]).abs() / unorm  # source-detector distance
        so = S.norm(dim=1)
        i_foot = (SmD * u).sum(1) / unorm**2 + mid
        idx = torch.arange(n_det, dtype=torch.float64, device=dev)
        w = (idx[None, :] - i_foot[:, None]) * unorm[:, None]
        pre = sdp[:, None] / torch.sqrt(sdp[:, None] ** 2 + w**2)
        spacing = float((unorm * so / sdp).mean())
        q = 0.5 * _filter_rows(sino * pre, spacing, filter)
        weight = 2 * math.pi / K
    B, npix = sino.shape[0], px.numel()
    out = torch.zeros(B, npix, dtype=torch.float64, device=dev)
    # Blocks of pixels and angles whose temporaries (about ten (angles, pixels) float64 arrays)
    # stay near FBP_BLOCK values each, whatever the size: 5000² once needed 24 GB here. Each
    # sample is summed on its own, so a slice's FBP does not depend on the batch it came in
    # (a sharded run equals a single-process one).
    pblock = min(npix, FBP_BLOCK)
    chunk = max(1, min(chunk, FBP_BLOCK // pblock))
    for p0 in range(0, npix, pblock):
        bx, by = px[p0 : p0 + pblock], py[p0 : p0 + pblock]
        for a0 in range(0, K, chunk):
            a1 = min(K, a0 + chunk)
            ux, uy = u[a0:a1, 0:1], u[a0:a1, 1:2]
            if geometry.beam == "parallel":
                rx, ry = vec[a0:a1, 0:1], vec[a0:a1, 1:2]
                Px, Py = bx[None, :] - D[a0:a1, 0:1], by[None, :] - D[a0:a1, 1:2]
                t = (Px * ry - Py * rx) / (ux * ry - uy * rx)
                wgt = None
            else:
                Sx, Sy = vec[a0:a1, 0:1], vec[a0:a1, 1:2]
                vx, vy = bx[None, :] - Sx, by[None, :] - Sy
                smdx, smdy = Sx - D[a0:a1, 0:1], Sy - D[a0:a1, 1:2]
                t = (smdx * vy - smdy * vx) / (ux * vy - uy * vx)
                so_c = so[a0:a1, None]
                U = (-(vx * Sx + vy * Sy) / so_c) / so_c
                wgt = 1.0 / U**2
            pos = t + mid
            i0 = torch.floor(pos)
            frac = pos - i0
            i0 = i0.long()
            taps = []
            for off, wt in ((0, 1 - frac), (1, frac)):
                ii = i0 + off
                ok = (ii >= 0) & (ii < n_det)
                w_ok = wt * ok if wgt is None else wt * ok * wgt
                taps.append((ii.clamp(0, n_det - 1), w_ok))
            del t, pos, i0, frac
            for b in range(B):
                qa = q[b, a0:a1, :]
                vals = torch.gather(qa, 1, taps[0][0]) * taps[0][1]
                vals += torch.gather(qa, 1, taps[1][0]) * taps[1][1]
                out[b, p0 : p0 + pblock] += vals.sum(0)
    return (weight * out).reshape(B, geometry.size, geometry.size).to(torch.float32)


# ----------------------------------------------------------------------------------------------
# Simulation
# ----------------------------------------------------------------------------------------------
def simulate_ct(
    image: torch.Tensor,
    geometry: CTGeometry,
    noise_sigma: float = 0.0,
    seed: int = 0,
    operator: Optional[CTOperator] = None,
    backend: str = "auto",
) -> torch.Tensor:
    """Simulate a sinogram ``A x + noise_sigma * n``, ``n ~ N(0, I)`` seeded by ``seed``.

    Parameters
    ----------
    image:
        ``(B, size, size)`` attenuation image (per pixel, pixel side 1).
    noise_sigma:
        Standard deviation of the additive Gaussian noise, absolute, in sinogram units
        (line integrals in image-pixel lengths times attenuation). Not relative to the signal.
    seed:
        Seed of a CPU ``torch.Generator``; the same seed gives the same noise on any device.

    Returns
    -------
    torch.Tensor
        ``(B, n_angles, detectors)`` float32 on the image's device.
    """
    if noise_sigma < 0 or not math.isfinite(noise_sigma):
        raise UsageError(f"noise_sigma={noise_sigma!r} must be a finite number >= 0 (absolute, in sinogram units)")
    if image.dim() == 2:
        raise UsageError(f"image has shape {tuple(image.shape)}; give a batch (B, N, N), e.g. image[None]")
    op = operator if operator is not None else make_ct_operator(geometry, backend=backend, device=image.device)
    with torch.no_grad():
        y = op.forward(image.float())
    if noise_sigma > 0:
        gen = torch.Generator(device="cpu").manual_seed(int(seed))
        y = y + noise_sigma * torch.randn(y.shape, generator=gen, dtype=torch.float32).to(y.device)
    return y
