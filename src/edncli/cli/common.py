"""Pieces every command shares: option types, device choice, progress, inputs, finishing a run.

Nothing here imports torch at module level, so ``edn --help`` answers at once.
"""

from __future__ import annotations

import glob
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, List, Optional, Sequence

import typer
from typing_extensions import Annotated

from ..errors import DeviceError, InputError, UsageError

if TYPE_CHECKING:  # pragma: no cover
    from ..solvers.trace import IterationRecord

# ---------------------------------------------------------------------------- option groups
Output = Annotated[str, typer.Option("--output", "-o", help="Output file ('-' for stdout); .png, .tif, .npy or .h5.")]
SinogramOutput = Annotated[
    str, typer.Option("--output", "-o", help="Output sinogram file: DXchange HDF5 (.h5 or .hdf5); no other format.")
]
OutputDir = Annotated[
    Optional[Path], typer.Option("--output-dir", help="Folder for outputs when the input is a folder or a glob.")
]
Device = Annotated[str, typer.Option("--device", help="auto, cpu, cuda or cuda:N.")]
Seed = Annotated[
    int, typer.Option("--seed", min=0, max=2**32 - 1, help="Random seed (noise, initialisation), 0 to 2^32 - 1.")
]
Quiet = Annotated[bool, typer.Option("--quiet", "-q", help="No progress bars or summaries on stderr.")]
Force = Annotated[bool, typer.Option("--force", help="Overwrite existing output files.")]
Report = Annotated[
    Optional[str],
    typer.Option("--report", help="Write the JSON convergence report here (a folder for a folder or glob of inputs)."),
]
Plot = Annotated[
    Optional[str],
    typer.Option("--plot", help="Write a PNG plot of energy, discrepancy and PSNR (a folder for a folder or glob of inputs)."),
]
# edn ct reads one sinogram: its report, plot and reference are single files
CTReport = Annotated[Optional[str], typer.Option("--report", help="Write the JSON convergence report here (one for the scan).")]
CTPlot = Annotated[Optional[str], typer.Option("--plot", help="Write a PNG plot of energy, discrepancy and PSNR.")]
CTReferenceOpt = Annotated[
    Optional[str],
    typer.Option("--reference", help="Ground-truth slice (or stack of slices): adds PSNR/SSIM per iteration to the report."),
]
DeltaOpt = Annotated[
    Optional[str],
    typer.Option("--delta", help="Discrepancy level δ (absolute, data units), or 'auto' to estimate the noise."),
]
NoiseSigma = Annotated[
    Optional[float], typer.Option("--noise-sigma", help="Known noise std σ (data units): δ = τ σ sqrt(m).")
]
Tau = Annotated[
    Optional[float],
    typer.Option("--tau", help="Safety factor τ in δ = τ σ sqrt(m), with --noise-sigma or --delta auto (default 1.0)."),
]
EvalTau = Annotated[float, typer.Option("--tau", help="Safety factor τ in δ = τ σ sqrt(m), σ = --noise-sigma.")]
MaxIter = Annotated[Optional[int], typer.Option("--max-iter", help="Iteration cap (exit code 3 if δ is not reached).")]
MinIter = Annotated[
    Optional[int], typer.Option("--min-iter", help="gd, cg, edn, potential, red, pnp: iterations before the δ test "
                                "(learned methods: default the checkpoint's).")
]
LearnedSteps = Annotated[
    Optional[int],
    typer.Option(
        "--learned-steps",
        help="edn: network steps at most (default: --min-iter); if δ is not met by then, Landweber "
        "or CG steps (--handover; Armijo-safeguarded) continue until it is. Networks are trained for short paths.",
    ),
]
Handover = Annotated[
    Optional[str],
    typer.Option(
        "--handover",
        help="edn: what continues after the network steps until δ: cg (conjugate gradients, exact "
        "steps) or gd (Landweber steps, many more of them) (default: cg).",
    ),
]
ReferenceOpt = Annotated[
    Optional[str],
    typer.Option(
        "--reference",
        help="Ground truth image: adds PSNR/SSIM per iteration to the report. For sr and deblur, a folder "
        "holds one per input, matched by file name (ref/baby.png for lr/baby.tif).",
    ),
]
Format = Annotated[Optional[str], typer.Option("--format", help="Output format: png, tif, npy or h5 (default: from -o).")]
BitDepth = Annotated[Optional[int], typer.Option("--bit-depth", help="Bits per sample for PNG output (8 or 16; default 16).")]


def png_bit_depth(bit_depth: Optional[int], formats: Sequence[str]) -> int:
    """``--bit-depth`` for the outputs' ``formats``: 16 when not given; 8 or 16 when given, and
    only with a PNG output (TIFF, NPY and HDF5 keep float32: it would be ignored)."""
    if bit_depth is None:
        return 16
    if "png" not in formats:
        raise UsageError(f"--bit-depth is for PNG outputs; {'/'.join(sorted(set(formats)))} keeps float32: drop --bit-depth")
    if bit_depth not in (8, 16):
        raise UsageError(f"--bit-depth must be 8 or 16, got {bit_depth}")
    return bit_depth
Dataset = Annotated[Optional[str], typer.Option("--dataset", help="HDF5 dataset path of the input.")]
Json = Annotated[bool, typer.Option("--json", help="Print the run summary as one JSON object on stdout.")]
BatchSize = Annotated[
    int,
    typer.Option(
        "--batch-size",
        help="Solve up to N consecutive inputs of identical shape together, as one batch (faster on a GPU); "
        "outputs, reports and exit code stay per image.",
    ),
]
# Network evaluation (edn, baseline, red, pnp; gd, cg and tv have no network and refuse them).
Tile = Annotated[
    Optional[int],
    typer.Option(
        "--tile",
        help="Networks only: evaluate on overlapping N x N tiles (bounded memory, e.g. 512 for 4K images); "
        "energy, descent-set layer and line search stay whole-image, so the energy still falls. "
        "Must be >= the network's receptive field. In edn sr|deblur|ct refused by gd/cg/tv (no network) and by potential.",
    ),
]
TileOverlap = Annotated[
    Optional[int],
    typer.Option(
        "--tile-overlap",
        help="Pixels shared by neighbouring tiles (< --tile; default 32, or tile/2 for tiles under 64); "
        ">= receptive field - 1 gives the whole-image result.",
    ),
]
Precision = Annotated[
    str,
    typer.Option(
        "--precision",
        help="Networks only: fp32, bf16 or fp16 (autocast; fp16 needs a GPU). The energy, the descent-set "
        "layer and the line search stay float32. In edn sr|deblur|ct refused by gd/cg/tv (no network) and by potential.",
    ),
]
Ensemble = Annotated[
    int,
    typer.Option(
        "--ensemble",
        help="Networks only: 8 averages the network over the 8 flips and 90° rotations of its input "
        "(geometric self-ensemble; 8x the network time, +0.2 dB on Set5 SR x4); 1 (default) is off. "
        "The descent-set layer projects the average, so the guarantee is unchanged. Refused by potential.",
    ),
]
ChannelsLast = Annotated[
    Optional[bool],
    typer.Option(
        "--channels-last/--no-channels-last",
        help="Networks only: NHWC memory format for the conv nets (default: on for the edn/baseline networks on CPU: ~2.3x faster per call for the deblur/CT networks, ~1.1x for the SR ones; off otherwise).",
    ),
]


def check_batch_size(n: int) -> int:
    """``--batch-size``: at least 1."""
    if n < 1:
        raise UsageError(f"--batch-size must be >= 1 (inputs solved together), got {n}")
    return n


# ---------------------------------------------------------------------------- device
def resolve_device(spec: str):
    """``auto`` -> CUDA when present else CPU; ``cuda[:N]`` fails clearly without a GPU."""
    import torch

    spec = spec.strip().lower()
    if spec == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if spec == "cpu":
        return torch.device("cpu")
    if spec.startswith("cuda"):
        if not torch.cuda.is_available():
            raise DeviceError(f"--device {spec}: no CUDA device is available on this machine; use --device cpu")
        try:
            dev = torch.device(spec)
        except RuntimeError:
            raise DeviceError(f"--device {spec}: not a device name; use cuda or cuda:N") from None
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise DeviceError(f"--device {spec}: only {torch.cuda.device_count()} CUDA device(s) present")
        return dev
    raise DeviceError(f"--device must be auto, cpu, cuda or cuda:N, got {spec!r}")


# ---------------------------------------------------------------------------- progress
def progress_callback(total: int, quiet: bool, desc: str) -> tuple[Optional[Callable[["IterationRecord"], None]], Callable[[], None]]:
    """A solver callback drawing a progress bar on stderr (only on a terminal, not with --quiet)."""
    if quiet or not sys.stderr.isatty():
        return None, lambda: None
    from tqdm import tqdm

    bar = tqdm(total=total, desc=desc, file=sys.stderr, leave=False, unit="it")

    def update(rec: "IterationRecord") -> None:
        if rec.iter > 0:
            bar.update(1)
        if rec.discrepancy is not None:
            bar.set_postfix_str(f"E={rec.energy:.3g} |Au-f|={rec.discrepancy:.3g}", refresh=False)

    return update, bar.close


def say(msg: str, quiet: bool) -> None:
    """A human-readable line on stderr (stdout is kept for data and --json); not with --quiet."""
    if not quiet:
        print(msg, file=sys.stderr)


def warn(msg: str) -> None:
    """An ``edn: warning: ...`` line on stderr, with or without --quiet (which drops only bars and
    summaries: a warning says something about the result the user would not otherwise know)."""
    print(f"edn: warning: {msg}", file=sys.stderr)


# ---------------------------------------------------------------------------- inputs
#: What a folder or glob of inputs (and of --reference images) picks up: every format edn reads.
INPUT_SUFFIXES = (".png", ".tif", ".tiff", ".npy", ".h5", ".hdf5", ".jpg", ".jpeg", ".bmp", ".pgm")
#: The input suffixes an output of ``--output-dir`` keeps (the others, read-only formats, become ``.png``).
KEPT_SUFFIXES = (".png", ".tif", ".tiff", ".npy", ".h5", ".hdf5")


def expand_inputs(spec: str, exts: tuple = INPUT_SUFFIXES) -> List[str]:
    """A file, ``-``, a folder (its image files, sorted) or a glob pattern -> list of paths."""
    if spec == "-":
        return ["-"]
    p = Path(spec)
    if p.is_dir():
        named = [q for q in p.iterdir() if q.suffix.lower() in exts]
        odd = [q for q in named if not q.is_file() and not q.is_dir()]  # a broken link or a FIFO: not skipped without a word
        if odd:
            what = "a broken link" if odd[0].is_symlink() and not odd[0].exists() else "not a regular file"
            raise InputError(f"{odd[0]}: {what}, in the input folder {spec}; remove it or fix it")
        files = sorted(str(q) for q in named)
        if not files:
            raise InputError(f"{spec}: the folder holds no images ({', '.join(exts)})")
        return files
    if p.is_file():  # a file whose name holds glob characters, say "scan [1].png", is that file
        return [spec]
    if any(ch in spec for ch in "*?["):
        files = sorted(f for f in glob.glob(spec) if Path(f).is_file())
        if not files:
            raise InputError(f"{spec}: the pattern matches no files")
        return files
    if not p.exists():
        raise InputError(f"{spec}: no such file")
    return [spec]


def references_for(reference: Optional[str], inputs: List[str]) -> List[Optional[str]]:
    """The ``--reference`` file of each input: the one file (or ``-``) for all of them, or, for a
    folder, its image with the input's stem (``ref/baby.png`` for ``lr/baby.tif``). Every input is
    matched before any work, so a missing ground truth stops the run before its first output."""
    if reference is None or reference == "-" or not Path(reference).is_dir():
        return [reference] * len(inputs)
    by_stem: dict = {}
    for q in sorted(Path(reference).iterdir()):
        if q.is_file() and q.suffix.lower() in INPUT_SUFFIXES:
            by_stem.setdefault(q.stem, []).append(str(q))
    matched = []
    for path in inputs:
        if path == "-":
            raise UsageError(f"--reference {reference} is a folder, matched to the inputs by file name, and stdin has none; "
                             "give --reference FILE")
        stem = Path(path).stem
        found = by_stem.get(stem, [])
        if not found:
            raise InputError(f"--reference {reference}: no image named {stem}.* for the input {path} (a folder of "
                             "references is matched to the inputs by file name)")
        if len(found) > 1:
            raise UsageError(f"--reference {reference}: {' and '.join(found)} both match the input {path}; keep one")
        matched.append(found[0])
    return matched


def plan_outputs(inputs: List[str], output: Optional[str], output_dir: Optional[Path], fmt: Optional[str]) -> List[str]:
    """Output path per input: ``-o`` for one input, ``--output-dir/<stem>.<ext>`` for several."""
    if len(inputs) == 1 and output_dir is None:
        if output is None:
            raise UsageError("missing -o/--output: where should the result go? ('-' for stdout)")
        return [output]
    if output_dir is None:
        raise UsageError(f"{len(inputs)} inputs: pass --output-dir DIR instead of -o")
    if str(output_dir) == "-":
        raise UsageError("--output-dir -: give a folder; '-' (stdout) is for -o with one input")
    if output not in (None, ""):
        raise UsageError("with several inputs use --output-dir, not -o" if len(inputs) > 1
                         else f"give -o {output} or --output-dir {output_dir}, not both")
    from ..io.images import output_format

    ext = None if fmt is None else "." + output_format("-", fmt)  # checks --format (and its aliases tiff, hdf5)
    make_folder(output_dir, "--output-dir:")
    outs = []
    for path in inputs:
        stem = Path(path).stem if path != "-" else "stdin"
        own = Path(path).suffix if path != "-" else ""
        suffix = ext or (own if own.lower() in KEPT_SUFFIXES else ".png")
        outs.append(str(output_dir / f"{stem}{suffix}"))
    return outs


def names_several(spec: str) -> bool:
    """Whether an input argument is a folder or a glob (not one file or ``-``): with
    ``--output-dir``, its reports and plots go to folders too, however many images it holds."""
    return spec != "-" and (Path(spec).is_dir() or (not Path(spec).is_file() and any(ch in spec for ch in "*?[")))


def side_path(base: Optional[str], several: bool, input_path: str, suffix: str) -> Optional[str]:
    """Report/plot path for one input: the path itself for a single input, ``base/<stem><suffix>``
    when ``several`` (a folder or glob of inputs)."""
    if base is None:
        return None
    if not several:
        return base
    if base == "-":
        option = "--report" if suffix == ".json" else "--plot"
        raise UsageError(f"{option} -: with a folder or glob of inputs there is one {option[2:]} per input; name a folder, not stdout")
    folder = Path(base)
    make_folder(folder, "with a folder or glob of inputs, --report/--plot name a folder:")
    return str(folder / f"{Path(input_path).stem}{suffix}")


#: Set by a command that has said on stderr why it ends with exit code 130 (``edn train``).
INTERRUPT_REPORTED = False

#: Folders :func:`make_folder` created in this process, outermost first (see :func:`remove_created_folders`).
_CREATED: List[Path] = []


def make_folder(folder: Path, what: str) -> None:
    """Create an output folder (and its parents): one line, exit 2 or 4, when it cannot be."""
    if folder.exists() and not folder.is_dir():
        raise UsageError(f"{what} {folder} exists and is not a folder")
    missing = [p for p in (folder, *folder.parents) if not p.exists()]
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise InputError(f"{what} cannot create the folder {folder} ({exc.strerror or exc})") from None
    _CREATED.extend(reversed(missing))


def remove_created_folders() -> None:
    """Remove the folders this run created that are still empty: a run refused after planning
    its outputs leaves no empty output folders behind."""
    while _CREATED:
        try:
            _CREATED.pop().rmdir()
        except OSError:  # not empty (something was written there) or already gone
            pass


def to_tensor(arr: Any, device) -> "Any":
    """numpy ``(H, W)`` or ``(C, H, W)`` -> float32 torch ``(B, H, W)`` on ``device``."""
    import numpy as np
    import torch

    a = np.asarray(arr, dtype=np.float32)
    if a.ndim == 2:
        a = a[None]
    return torch.from_numpy(np.ascontiguousarray(a)).to(device)


def from_tensor(t, like_ndim: int):
    """float32 torch ``(B, H, W)`` -> numpy shaped like the input (``(H, W)`` for gray)."""
    a = t.detach().float().cpu().numpy()
    return a[0] if like_ndim == 2 else a


def check_exists_for_write(
    paths: List[Optional[str]], force: bool, labels: Optional[List[str]] = None, json_stdout: bool = False
) -> None:
    """Before any work: every planned output can be written (see
    :func:`~edncli.io.images.check_writable`), no two of them are the same file, and at most one
    thing goes to stdout (``-`` outputs, and the ``--json`` summary when ``json_stdout``).

    ``labels`` (one per path) name the outputs in the error, e.g. ``the report of a.png``.
    """
    import os

    from ..io.images import check_writable

    seen: dict = {}
    stdout = ["--json"] if json_stdout else []
    for i, p in enumerate(paths):
        if p is None:
            continue
        label = labels[i] if labels is not None else p
        if p == "-":
            stdout.append(label)
            continue
        key = os.path.realpath(p)
        if key in seen:
            raise UsageError(f"{p} would be written twice in one run ({seen[key]} and {label}); give them distinct names")
        seen[key] = label
    if len(stdout) > 1:
        both = "both" if len(stdout) == 2 else "all"
        raise UsageError(f"{' and '.join(stdout)} would {both} write to stdout; send all but one of them to a file")
    for p in paths:
        if p is not None:
            check_writable(p, force)


def check_not_inputs(outputs: dict, inputs: Sequence[str], what: str) -> None:
    """Refuse, even with ``--force``, an output (``{option: path or None}``) that is one of the
    files the run reads (``-`` and puzzle strings are no files): ``what`` names the input."""
    import os

    read = {os.path.realpath(p) for p in inputs if p != "-" and os.path.isfile(p)}
    for option, p in outputs.items():
        if p is not None and str(p) != "-" and os.path.realpath(p) in read:
            raise UsageError(f"{option} {p} is {what} of this run; edn never replaces an input")


def check_dataset(dataset: Optional[str], inputs: List[str]) -> None:
    """``--dataset`` names an HDF5 dataset: a usage error with an input that is not HDF5."""
    if dataset is None:
        return
    from ..io.images import sniff_format

    for path in inputs:
        if path != "-" and sniff_format(path) != "h5":
            raise UsageError(f"--dataset {dataset} applies to HDF5 inputs only, and {path} is not HDF5; drop it")


def kernel_from_options(kernel: Optional[Path], kernel_dataset: Optional[str], sigma: Optional[float], size: int):
    """The blur kernel of ``--kernel FILE [--kernel-dataset D]`` or, without a file, the Gaussian of
    ``--kernel-sigma`` and ``--kernel-size``; ``--kernel-dataset`` without ``--kernel`` is a usage error."""
    from ..operators.blur import gaussian_kernel, read_kernel

    if kernel_dataset is not None and kernel is None:
        raise UsageError("--kernel-dataset applies to --kernel FILE (an HDF5 kernel); drop it or give --kernel")
    return gaussian_kernel(sigma, size) if kernel is None else read_kernel(kernel, kernel_dataset)  # type: ignore[arg-type]
