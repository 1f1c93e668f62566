"""``edn ct`` (= ``edn reconstruct ct``) and ``edn simulate ct``: CT from sinograms with astra projectors."""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import List, Optional

import typer
from typing_extensions import Annotated

from ..errors import UsageError
from . import common as c
from .reconstruct import METHOD_NAMES, AlphaOpt, WeightsOpt, _check_method, _delta, _options, plan_jobs, run_problems

MethodOpt = Annotated[
    str,
    typer.Option(
        "--method", "-m",
        help=f"One of: {', '.join(METHOD_NAMES)}. baseline needs a --weights checkpoint: none is shipped for CT "
        "(train one with edn train --task ct --kind baseline).",
    ),
]
Sinogram = Annotated[str, typer.Option("--sinogram", help="Sinogram file: DXchange HDF5, .npy, .tif or 16-bit .png.")]
Size = Annotated[
    Optional[int],
    typer.Option(
        "--size",
        help="Reconstruction size N (N x N pixels of side 1); default: parallel beam, the largest square inside "
        "the field of view; fan beam, the detector's width scaled to the rotation axis.",
    ),
]
Angles = Annotated[
    Optional[int], typer.Option("--angles", help="Number of equally spaced angles (over 180° parallel, 360° fan), when the file has none.")
]
AngleFile = Annotated[Optional[Path], typer.Option("--angle-file", help="Text file of projection angles, one per line.")]
AngleUnit = Annotated[
    Optional[str],
    typer.Option("--angle-unit", help="Unit of --angle-file: deg (default) or rad. /exchange/theta is always degrees."),
]
Beam = Annotated[str, typer.Option("--beam", help="parallel or fan (flat detector).")]
Spacing = Annotated[float, typer.Option("--detector-spacing", help="Detector pitch in image pixels.")]
SourceOrigin = Annotated[Optional[float], typer.Option("--source-origin", help="Fan beam: source to rotation axis (pixels).")]
OriginDetector = Annotated[Optional[float], typer.Option("--origin-detector", help="Fan beam: rotation axis to detector (pixels).")]
Center = Annotated[
    Optional[str],
    typer.Option("--center", help="Rotation axis in detector pixels, 'middle', or 'auto' (estimated; default for parallel beam over >= 180°)."),
]
Slices = Annotated[Optional[str], typer.Option("--slices", help="Detector rows of a 3D scan: '5', '0:16' or '3,7,9'.")]
Backend = Annotated[str, typer.Option("--backend", help="auto, matrix, astra-cpu or cuda.")]
FlatField = Annotated[str, typer.Option(
    "--flat-field",
    help="-log((data - dark)/(white - dark)) with the file's /exchange/data_white and data_dark: auto (for "
    "/exchange/data, not for another --dataset), on, or off (data are line integrals).")]
Transpose = Annotated[bool, typer.Option("--transpose", help="2D sinograms (plain arrays, or a 2D HDF5 --dataset) stored as (detectors, angles).")]
ReverseDetector = Annotated[bool, typer.Option(
    "--reverse-detector",
    help="Reverse the detector axis as read (the last detector pixel first, as gratopy's reverse_detector); "
    "--center counts in the reversed order.")]


def parse_slices(spec: Optional[str]) -> Optional[List[int]]:
    if spec is None:
        return None
    try:
        if ":" in spec:
            lo, hi = spec.split(":", 1)
            return list(range(int(lo), int(hi)))
        rows = [int(s) for s in spec.split(",") if s.strip()]
    except ValueError:
        raise UsageError(f"--slices must be like '5', '0:16' or '3,7,9', got {spec!r}") from None
    twice = sorted({r for r in rows if rows.count(r) > 1})
    if twice:  # the stack would hold the same slice twice, its report two verdicts for one row
        raise UsageError(f"--slices {spec}: row {', '.join(map(str, twice))} is listed more than once; give each row once")
    return rows


def _check_baseline_weights() -> None:
    """``--method baseline`` without ``--weights``: refuse up front unless a ``baseline-ct`` is found."""
    from ..errors import CheckpointError
    from ..io.weights import resolve_weights

    try:
        resolve_weights("baseline-ct")
    except CheckpointError:
        raise UsageError(
            "--method baseline for ct needs --weights CHECKPOINT: no baseline-ct checkpoint is shipped "
            "(train one with edn train --task ct --kind baseline)"
        ) from None


def _check_fan_options(beam: str, source_origin, origin_detector) -> None:
    """The fan-beam distances mean nothing for parallel beam: giving them there is a usage error, not ignored."""
    if beam == "parallel" and (source_origin is not None or origin_detector is not None):
        raise UsageError("--source-origin and --origin-detector are for --beam fan; drop them or pass --beam fan")


def _geometry(sino, size, beam, spacing, source_origin, origin_detector, center, quiet):
    """The CTGeometry for a sinogram and the CLI options; the centre rule is stated in the report."""
    from ..io.sinograms import HALF_TURN_SHARE, estimate_center, scan_span
    from ..operators.tomography import CTGeometry

    det = sino.detectors
    given = size is not None
    if size is None:
        if beam == "fan" and source_origin is not None and origin_detector is not None and source_origin > 0:
            # the detector's width scaled to the rotation axis (the framing of the walnut's reference)
            size = int(round(det * spacing * source_origin / (source_origin + origin_detector)))
            rule = (f"{det} detectors x spacing {spacing:g} x source-origin {source_origin:g} / "
                    f"(source-origin + origin-detector {source_origin + origin_detector:g})")
        else:  # the largest square inside the field of view
            size = int(math.floor(det * spacing / math.sqrt(2)))
            rule = f"{det} detectors x spacing {spacing:g} / sqrt(2)"
    if size < 2:
        if given:
            raise UsageError(f"--size must be >= 2, got {size}")
        raise UsageError(f"the default reconstruction size, {rule}, is {size} pixel(s); give --size N "
                         "(or check the geometry's distances and --detector-spacing)")
    center_rule = "given"
    if center is None:
        center = "auto" if (beam == "parallel" and scan_span(sino.theta) >= math.pi * HALF_TURN_SHARE) else "middle"
    if center == "middle":
        value = (det - 1) / 2
        center_rule = "middle"
    elif center == "auto":
        if beam != "parallel":
            raise UsageError("--center auto is for parallel beam; give --center in detector pixels for fan beam")
        value = estimate_center(sino.data, sino.theta)  # correlations summed over the slices
        center_rule = "auto"
    else:
        try:
            value = float(center)
        except ValueError:
            raise UsageError(f"--center must be a number, 'middle' or 'auto', got {center!r}") from None
        if not math.isfinite(value):
            raise UsageError(f"--center must be a finite number of detector pixels, got {center!r}")
        if not -0.5 <= value <= det - 0.5:  # the rotation axis must project onto the detector
            raise UsageError(f"--center {center} is outside the detector: give a position from -0.5 to {det - 0.5:g} (detector pixels, 0 = the first pixel's centre)")
    geom = CTGeometry(
        size=size, angles=sino.theta, detectors=det, detector_spacing=spacing, beam=beam,
        source_origin=source_origin, origin_detector=origin_detector, center=value,
    )
    return geom, value, center_rule


def ct(
    sinogram: Sinogram,
    output: c.Output = None,  # type: ignore[assignment]
    size: Size = None,
    angles: Angles = None,
    angle_file: AngleFile = None,
    angle_unit: AngleUnit = None,
    beam: Beam = "parallel",
    detector_spacing: Spacing = 1.0,
    source_origin: SourceOrigin = None,
    origin_detector: OriginDetector = None,
    center: Center = None,
    slices: Slices = None,
    transpose: Transpose = False,
    reverse_detector: ReverseDetector = False,
    backend: Backend = "auto",
    method: MethodOpt = "cg",
    init: Annotated[Optional[str], typer.Option("--init", help="fbp (default) or zero.")] = None,
    delta: c.DeltaOpt = "auto",
    noise_sigma: c.NoiseSigma = None,
    tau: c.Tau = None,
    max_iter: c.MaxIter = None,
    min_iter: c.MinIter = None,
    learned_steps: c.LearnedSteps = None,
    handover: c.Handover = None,
    alpha: AlphaOpt = None,
    weights: WeightsOpt = None,
    reference: c.CTReferenceOpt = None,
    report: c.CTReport = None,
    plot: c.CTPlot = None,
    fmt: c.Format = None,
    bit_depth: c.BitDepth = None,
    dataset: c.Dataset = None,
    flat_field: FlatField = "auto",
    device: c.Device = "auto",
    seed: c.Seed = 0,
    quiet: c.Quiet = False,
    force: c.Force = False,
    as_json: c.Json = False,
    tile: c.Tile = None,
    tile_overlap: c.TileOverlap = None,
    precision: c.Precision = "fp32",
    channels_last: c.ChannelsLast = None,
    ensemble: c.Ensemble = 1,
) -> None:
    """CT: find u with ||A u - f|| <= δ, A the Radon transform (astra; parallel or fan beam).

    Slices of a 3D scan (--slices) are reconstructed together as a batch and written as a stack.
    DXchange HDF5 files give angles in degrees in /exchange/theta; without angles in the file,
    --angles or --angle-file is required (edn never guesses them).
    Under torchrun the slices are shared out among the ranks; rank 0 writes the one volume and report.
    """
    import numpy as np
    import torch

    from ..io.images import output_format
    from ..io.sinograms import read_sinogram
    from ..operators.tomography import make_ct_operator
    from ..solvers.methods import Problem
    from ..solvers.sharding import Launch, PeerFailed, ShardGroup, dist_timeout_s, rank_device

    launch = Launch.from_env()
    try:
        with launch.unanimous():  # every rank checks the same arguments: rank 0 alone reports
            if launch.distributed:
                dist_timeout_s()  # $EDN_DIST_TIMEOUT, read again by the group below
            _check_method(method, weights)
            if method in ("potential", "red", "pnp") and launch.is_main:
                c.warn(f"{method} has no CT preset; it runs with the deblurring one (λ, µ and the "
                      "iteration cap were not tuned for CT, so δ may not be reached; raise --max-iter if it is not)")
            _check_fan_options(beam, source_origin, origin_detector)
            if method == "baseline" and weights is None:
                _check_baseline_weights()
            if output is None:
                raise UsageError("missing -o/--output: where should the slice(s) go?")
            if output == "-" and launch.distributed:
                raise UsageError("-o - (stdout) is not available under torchrun: rank 0 gathers the slices into one file; give -o FILE")
            init = init or "fbp"
            if init not in ("fbp", "zero"):
                raise UsageError(f"--init for ct must be fbp or zero, got {init!r}")
            if angles is not None and angle_file is not None:
                raise UsageError("give --angles or --angle-file, not both")
            if angles is not None and angles < 1:
                raise UsageError(f"--angles must be >= 1, got {angles}")
            if angle_unit is not None and angle_file is None:  # it would be ignored, e.g. for /exchange/theta
                raise UsageError(
                    f"--angle-unit {angle_unit} is the unit of --angle-file, and none is given: /exchange/theta is read "
                    "in degrees (DXchange); for angles in radians put them in a file and pass --angle-file FILE --angle-unit rad"
                )
            angle_unit = angle_unit or "deg"
            if noise_sigma is not None and delta == "auto":
                delta = None
            options = _options(
                max_iter, min_iter, alpha, weights, reference,
                tile=tile, tile_overlap=tile_overlap, precision=precision, channels_last=channels_last,
                learned_steps=learned_steps, handover=handover, ensemble=ensemble, method=method,
            )
            dev = rank_device(c.resolve_device(device), launch)
        with ShardGroup(launch, dev) as group:
            # Decisions over all slices (centre, δ) are made on the whole scan by every rank, so
            # that a sharded run equals a single-process one; then each rank takes its chunk.
            with group.stage():
                if sinogram == "-":
                    raise UsageError("--sinogram -: sinograms are read from a file (HDF5, NPY, TIFF or PNG), not stdin")
                if not Path(sinogram).exists():
                    from ..errors import InputError

                    raise InputError(f"--sinogram {sinogram}: no such file")
                torch.manual_seed(seed)
                read_too = [("--reference", reference), ("--angle-file", angle_file)]
                theta = None
                if angles is not None:
                    arc = math.pi if beam == "parallel" else 2 * math.pi
                    theta = np.linspace(0, arc, angles, endpoint=False)
                if flat_field not in ("auto", "on", "off"):
                    raise UsageError(f"--flat-field must be auto, on or off, got {flat_field!r}")
                if launch.is_main:  # the outputs before the sinogram's warnings (run_problems checks them again)
                    plan_jobs([sinogram], [output], report, plot, force, as_json, fmt, bit_depth, read_too=read_too)
                sino = read_sinogram(sinogram, dataset=dataset, theta=theta, slices=parse_slices(slices),
                                     normalise={"auto": "auto", "on": True, "off": False}[flat_field],
                                     angle_file=angle_file, angle_unit=angle_unit, transpose=transpose)
                if angles is not None and sino.file_theta is not None:
                    own = np.rad2deg(sino.file_theta)
                    raise UsageError(
                        f"--angles {angles}: {sinogram} has its own {own.size} angles in /exchange/theta ({own.min():.4g} "
                        f"to {own.max():.4g} degrees); leave --angles out to use them, or replace them with --angle-file FILE"
                    )
                if reverse_detector:
                    sino.data = np.ascontiguousarray(sino.data[:, :, ::-1])
                    sino.notes.append("detector reversed (--reverse-detector)")
                if launch.is_main:
                    for warning in sino.warnings:
                        c.warn(warning)
                geom, center_value, center_rule = _geometry(sino, size, beam, detector_spacing, source_origin, origin_detector,
                                                            center, quiet)
                if sino.n_slices > 1 and output_format(output, fmt) == "png":  # PNG would take slices for channels
                    raise UsageError(
                        f"{sino.n_slices} slices make a stack; write it as .tif, .npy or .h5 (--format tif|npy|h5 "
                        "for -o -), not PNG"
                    )
                lo, hi = group.shard(sino.n_slices)
                f_all = torch.from_numpy(sino.data)
                delta_choice = _delta(delta, noise_sigma, tau, f_all)

            def build(path, device):
                op = make_ct_operator(geom, backend=backend, device=device)
                f = f_all[lo:hi].to(device)
                u0 = op.fbp(f) if init == "fbp" else torch.zeros((f.shape[0], geom.size, geom.size), device=device)
                problem = Problem(op=op, f=f, u0=u0, delta=delta_choice and delta_choice.chunk(lo, hi), task="ct")
                if reference is not None:
                    from .reconstruct import _reference

                    problem.reference = _reference(reference, (sino.n_slices, geom.size, geom.size), device,
                                                   stack=sino.n_slices > 1)[lo:hi]
                ctx = {
                    "inputs": {"path": sinogram, **sino.describe(), "init": init},
                    "report_extra": {"geometry": geom.describe(), "center": center_value, "center_rule": center_rule,
                                     "backend": getattr(op, "backend", backend)},
                    "stack": sino.n_slices > 1,  # slices, not colours: TIFF pages, never RGB
                    "delta": delta_choice.as_dict() if delta_choice else None,  # all slices', not this rank's
                }
                if launch.distributed:  # for the report's residual floor, over all slices (rank 0 writes it)
                    ctx["whole"] = (f_all, delta_choice)
                return problem, 2 if sino.n_slices == 1 else 3, ctx

            run = dict(
                inputs=[sinogram], outputs=[output], method=method, options=options, device=dev, report=report, plot=plot,
                force=force, quiet=quiet, fmt=fmt, bit_depth=bit_depth, as_json=as_json, read_too=read_too,
            )
            if not launch.distributed:
                run_problems(build=build, **run)
                return
            with group.stage():
                built = build(sinogram, dev)
            if not launch.is_main:
                group.solve(built[0], method, options)
                code = group.broadcast_exit_code(None)
                if code:
                    raise PeerFailed(code)
                return
            _run_main_rank(group, built, run)
    except PeerFailed as failed:
        # Give rank 0 time to print its message and exit first: torchrun stops the other ranks
        # as soon as one exits non-zero, and reports the first to fail.
        time.sleep(2.0)
        raise typer.Exit(failed.exit_code) from None


def _run_main_rank(group, built, run: dict) -> None:
    """Rank 0 under torchrun: solve (gathering the chunks), write, then tell the ranks the exit code."""
    from ..errors import EdnError

    solved = []

    def solver(*args):
        result = group.solve(*args)
        solved.append(True)
        return result

    code = 1
    try:
        run_problems(build=lambda path, device: built, solver=solver, **run)
        code = 0
    except typer.Exit as done:
        code = done.exit_code
        raise
    except EdnError as err:
        code = err.exit_code
        raise
    finally:
        if solved:  # the other ranks wait for the code only once the chunks were gathered
            group.broadcast_exit_code(code)


def simulate_ct(
    input: Annotated[str, typer.Argument(help="Clean square image (the attenuation map).")],
    output: c.SinogramOutput,
    angles: Annotated[int, typer.Option("--angles", help="Number of angles over 180° (parallel) or 360° (fan).")] = 180,
    detectors: Annotated[Optional[int], typer.Option("--detectors", help="Detector count (default ceil(N sqrt 2)).")] = None,
    beam: Beam = "parallel",
    detector_spacing: Spacing = 1.0,
    source_origin: SourceOrigin = None,
    origin_detector: OriginDetector = None,
    noise_sigma: Annotated[float, typer.Option("--noise-sigma", help="Std of additive Gaussian noise (sinogram units).")] = 0.01,
    seed: c.Seed = 0,
    backend: Backend = "auto",
    force: c.Force = False,
) -> None:
    """Simulate a sinogram (DXchange HDF5 with angles in degrees) from a clean square image."""
    import numpy as np

    from ..io.images import check_writable, read_image
    from ..io.sinograms import write_sinogram
    from ..operators.tomography import CTGeometry, simulate_ct as simulate

    c.check_not_inputs({"-o": output}, [input], "the clean image")
    check_writable(output, force)
    if output == "-" or Path(output).suffix.lower() not in (".h5", ".hdf5"):
        raise UsageError(f"-o {output}: simulated sinograms are written as DXchange HDF5 (.h5)")
    if angles < 1:
        raise UsageError(f"--angles must be >= 1, got {angles}")
    _check_fan_options(beam, source_origin, origin_detector)
    if detectors is not None and detectors < 1:
        raise UsageError(f"--detectors must be >= 1, got {detectors}")
    arr, _ = read_image(input)
    if arr.ndim != 2 or arr.shape[0] != arr.shape[1]:
        raise UsageError(f"{input}: CT phantoms must be square gray images, got shape {arr.shape}")
    n = arr.shape[0]
    arc = math.pi if beam == "parallel" else 2 * math.pi
    geom = CTGeometry(
        size=n, angles=np.linspace(0, arc, angles, endpoint=False),
        detectors=detectors if detectors is not None else int(math.ceil(n * math.sqrt(2))), detector_spacing=detector_spacing, beam=beam,
        source_origin=source_origin, origin_detector=origin_detector,
    )
    sino = simulate(c.to_tensor(arr, "cpu"), geom, noise_sigma=noise_sigma, seed=seed, backend=backend)
    write_sinogram(output, sino[0].numpy(), geom.angles)
