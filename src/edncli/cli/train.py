"""``edn train --task sr|ct|deblur|denoiser|sudoku``: train a checkpoint with the project's own code.

Also runs under ``torchrun --nproc-per-node N -m edncli train ...`` (data-parallel).
"""

from __future__ import annotations

import shlex
import sys
from pathlib import Path
from typing import Optional

import typer
from typing_extensions import Annotated

from ..errors import UsageError
from . import common as c

TASKS = ("sr", "ct", "deblur", "denoiser", "sudoku")


def _check_out_name(name: str) -> None:
    """``--out`` names a checkpoint file: not stdout, not a folder, and not, as a bare name, one
    that ``--weights NAME`` finds elsewhere first (a shipped checkpoint would shadow the result)."""
    if name.strip() in ("", "-") or name.endswith(("/", "\\")):
        raise UsageError(f"--out {name!r}: give a checkpoint name (e.g. my-sr), not stdout or a folder")
    if "/" not in name and "\\" not in name:
        from ..io.weights import weights_dirs

        stem = name[: -len(".safetensors")] if name.endswith(".safetensors") else name
        for folder in weights_dirs():
            if (folder / f"{stem}.safetensors").is_file():
                raise UsageError(f"--out {name}: {folder / (stem + '.safetensors')} has that name, and --weights {stem} "
                                 f"would find it first; choose another name, or give a path (./{stem})")


def _out_path(name: str) -> Path:
    _check_out_name(name)
    p = Path(name)
    if p.suffix != ".safetensors":
        p = p.with_suffix(".safetensors") if p.suffix == "" else Path(str(p) + ".safetensors")
    if not p.parent.exists():
        raise UsageError(f"--out {name}: folder {p.parent} does not exist")
    return p


#: The options each task reads, by parameter name; any other option given is a usage error.
_COMMON = {"task", "out", "device", "seed", "quiet", "force", "threads"}
_NETWORK = {"images", "val_images", "depth", "width", "patch", "batch", "steps", "lr"}
_LAGGED = _COMMON | _NETWORK | {
    "kind", "noise", "init", "shuffle", "precision", "residual", "batchnorm", "layer", "zeta1", "zeta2", "zeta",
    "lag_every", "max_lag_steps", "min_iter", "val_every", "val_size", "val_count", "val_noise", "resume", "init_from",
}
READS = {
    "sr": _LAGGED | {"scale", "downsampler"},
    "ct": _LAGGED | {"angles"},
    "deblur": _LAGGED | {"kernel_sigma", "kernel_size"},
    "denoiser": _COMMON | _NETWORK | {"arch", "sigma", "time_limit"},
    "sudoku": _COMMON | {"puzzles", "epochs", "n_puzzles", "baseline", "time_limit"},
}


def _check_options_read(ctx: typer.Context, task: str) -> None:
    """An option given on the command line that ``task`` does not read: one line, exit 2
    (``edn train --task sudoku --steps 1`` trained its default epochs and said nothing)."""
    from .._click_compat import ParameterSource

    for param in ctx.command.params:
        if param.name in READS[task] or ctx.get_parameter_source(param.name) != ParameterSource.COMMANDLINE:
            continue
        tasks = "|".join(t for t in TASKS if param.name in READS[t])
        option = max(param.opts, key=len)
        raise UsageError(f"{option} is for --task {tasks}; --task {task} does not use it")


def _reported_by_rank0(command):
    """Under torchrun, rank 0 prints an error and the others exit with its code silently, a moment
    later (torchrun then names rank 0 as the first to fail). A usage, input or checkpoint error met
    before the ranks connect is met alike by every rank (the same arguments and files); the
    training set-up after that is voted on (``training.lagged._setup_stage``), so an error of one
    rank only reaches rank 0 as ``rank N: ...``. Other errors (a rank's device) print where met."""
    import functools

    @functools.wraps(command)
    def wrapper(*args, **kwargs):
        import time

        from ..errors import CheckpointError, InputError
        from ..solvers.sharding import Launch, PeerFailed

        try:
            return command(*args, **kwargs)
        except PeerFailed as failed:  # rank 0 reports the error
            time.sleep(2.0)
            raise typer.Exit(failed.exit_code) from None
        except (UsageError, InputError, CheckpointError) as err:
            try:
                launch = Launch.from_env()
            except UsageError:  # a malformed torchrun environment: report the error itself
                raise err from None
            if not launch.distributed or launch.is_main:
                raise
            time.sleep(2.0)
            raise typer.Exit(err.exit_code) from None

    return wrapper


@_reported_by_rank0
def train(
    ctx: typer.Context,
    task: Annotated[str, typer.Option("--task", help=f"One of: {', '.join(TASKS)}.")],
    out: Annotated[Optional[str], typer.Option("--out", "-o", help="Checkpoint name or path (.safetensors added); a model card .md (and a training log) is written beside it. Required: there is no default, so a run never writes under a shipped checkpoint's name.")] = None,
    images: Annotated[Optional[str], typer.Option("--images", help="Folder of training images; several: comma-separated (train400,bsd68).")] = None,
    val_images: Annotated[Optional[str], typer.Option("--val-images", help="Folder of validation images.")] = None,
    kind: Annotated[str, typer.Option("--kind", help="sr/ct/deblur: edn (direction network) or baseline.")] = "edn",
    scale: Annotated[int, typer.Option("--scale", help="sr: upscaling factor.")] = 4,
    downsampler: Annotated[str, typer.Option("--downsampler", help="sr: average or bicubic.")] = "average",
    kernel_sigma: Annotated[str, typer.Option("--kernel-sigma", help="deblur: Gaussian σ or range lo:hi.")] = "1.0:2.0",
    kernel_size: Annotated[int, typer.Option("--kernel-size", help="deblur: kernel side.")] = 25,
    angles: Annotated[str, typer.Option("--angles", help="ct: parallel-beam angles over 180° at training size; a list such as 90,60,120,180 draws one per mini-batch (validation at the first).")] = "90",
    noise: Annotated[str, typer.Option("--noise-sigma", help="Training noise std range lo:hi (per sample).")] = "0:0.02",
    init: Annotated[Optional[str], typer.Option("--init", help="Initial guess: zero (default for edn) or classic (bicubic/data/FBP; default for baseline).")] = None,
    depth: Annotated[Optional[int], typer.Option("--depth", help="Backbone depth, >= 2 (paper: 17-20; default 8, denoisers: per architecture; with --residual even and >= 4).")] = None,
    width: Annotated[Optional[int], typer.Option("--width", help="Backbone channels, >= 1 (paper: 64; default 32).")] = None,
    shuffle: Annotated[int, typer.Option("--shuffle", help="sr/ct/deblur: space-to-depth factor of the backbone (1: plain DnCNN; 4 for SR x4 runs the convolutions on 4x4 blocks, 16x cheaper per layer).")] = 1,
    threads: Annotated[Optional[int], typer.Option("--threads", help="torch CPU threads (default: torch's choice).")] = None,
    precision: Annotated[str, typer.Option("--precision", help="sr/ct/deblur: fp32 or bf16 autocast for the backbone (bf16: 2.3-2.7x faster per step for the SR networks on a CPU with AMX, also faster on GPUs; the descent-set layer, loss and optimiser stay float32).")] = "fp32",
    residual: Annotated[bool, typer.Option("--residual/--plain", help="sr/ct/deblur: group the backbone's middle convolutions into residual blocks (EDSR-style; even depth - 2, no batch norm) instead of a plain chain.")] = False,
    batchnorm: Annotated[bool, typer.Option("--batchnorm/--no-batchnorm", help="Batch norm in the backbone (paper: on; off trains more reliably with the lagged scheme's shifting inputs).")] = False,
    layer: Annotated[str, typer.Option("--layer", help="Descent layer: cone_ball (eq. 22) or halfspace (eq. 21).")] = "cone_ball",
    zeta1: Annotated[float, typer.Option("--zeta1", help="eq. 22 ζ1 (on the normalised gradient).")] = 0.05,
    zeta2: Annotated[float, typer.Option("--zeta2", help="eq. 22 ζ2.")] = 20.0,
    zeta: Annotated[float, typer.Option("--zeta", help="eq. 21 ζ.")] = 1e-3,
    patch: Annotated[int, typer.Option("--patch-size", help="Training patch side, >= 8.")] = 48,
    batch: Annotated[int, typer.Option("--batch-size", help="Mini-batch size per process.")] = 16,
    steps: Annotated[int, typer.Option("--steps", help="Optimiser steps.")] = 2000,
    lr: Annotated[float, typer.Option("--lr", help="Adam learning rate.")] = 1e-3,
    lag_every: Annotated[int, typer.Option("--lag-every", help="Refresh the lagged iterate distribution every N mini-batches.")] = 100,
    max_lag_steps: Annotated[int, typer.Option("--max-lag-steps", help="Iterates from 0..K steps of the current method.")] = 10,
    min_iter: Annotated[int, typer.Option("--min-iter", help="Default steps before the δ test, stored in the checkpoint.")] = 15,
    val_every: Annotated[int, typer.Option("--val-every", help="sr/ct/deblur: validate every N steps (an epoch).")] = 250,
    val_size: Annotated[int, typer.Option("--val-size", help="sr/ct/deblur: side of the validation centre crops (images smaller are skipped).")] = 96,
    val_count: Annotated[int, typer.Option("--val-count", help="sr/ct/deblur: how many validation images (crops) to use.")] = 8,
    val_noise: Annotated[float, typer.Option("--val-noise-sigma", help="sr/ct/deblur: noise std of the validation measurements; the best checkpoint at this level is kept.")] = 0.01,
    resume: Annotated[Optional[Path], typer.Option("--resume", help="Continue from this checkpoint, at the step of its weights (its best validated step).")] = None,
    init_from: Annotated[Optional[str], typer.Option("--init-from", help="sr/ct/deblur: start from the backbone of this baseline or edn checkpoint (same task, depth, width), as the paper starts from a pretrained DnCNN.")] = None,
    arch: Annotated[Optional[str], typer.Option("--arch", help="denoiser: gradncnn, dnicnn, dndicnn or dncnn.")] = None,
    sigma: Annotated[Optional[str], typer.Option("--sigma", help="denoiser: noise std range lo:hi.")] = None,
    puzzles: Annotated[Optional[str], typer.Option("--puzzles", help="sudoku: CSV of puzzles (default: generated).")] = None,
    epochs: Annotated[Optional[int], typer.Option("--epochs", help="sudoku: epochs.")] = None,
    baseline: Annotated[bool, typer.Option("--baseline", help="sudoku: train the feed-forward baseline instead.")] = False,
    time_limit: Annotated[Optional[float], typer.Option("--time-limit", help="sudoku/denoiser: training time cap in seconds (default: none, the run is its --epochs/--steps). Sudoku stretches its learning-rate schedule to it, so the run ends on time but a rerun differs.")] = None,
    n_puzzles: Annotated[Optional[int], typer.Option("--n-puzzles", help="sudoku: generated puzzles when no --puzzles.")] = None,
    device: c.Device = "auto",
    seed: c.Seed = 0,
    quiet: c.Quiet = False,
    force: c.Force = False,
) -> None:
    """Train a network for a task and write a checkpoint (safetensors) plus its model card."""
    import torch

    from ..io.checkpoints import exclusive_output
    from ..training.data import parse_range

    if task not in TASKS:
        raise UsageError(f"--task must be one of {', '.join(TASKS)}, got {task!r}")
    command = "edn " + " ".join(shlex.quote(a) for a in sys.argv[1:])
    dev = c.resolve_device(device)
    if threads is not None:
        if threads < 1:
            raise UsageError(f"--threads must be >= 1, got {threads}")
        torch.set_num_threads(threads)
    if precision != "fp32" and task in ("sudoku", "denoiser"):
        raise UsageError(f"--precision is for --task sr|ct|deblur; --task {task} trains in fp32")
    if residual and task in ("sudoku", "denoiser"):
        raise UsageError(f"--residual is for --task sr|ct|deblur; --task {task} has its own architecture")
    if not out:
        raise UsageError("--out is required: the name or path of the checkpoint to write, e.g. --out my-" + task)
    _check_options_read(ctx, task)
    _check_out_name(out)
    for name, value, tasks in (
        ("--time-limit", time_limit, ("denoiser", "sudoku")), ("--resume", resume, ("sr", "ct", "deblur")),
        ("--init-from", init_from, ("sr", "ct", "deblur")), ("--arch", arch, ("denoiser",)),
        ("--sigma", sigma, ("denoiser",)), ("--puzzles", puzzles, ("sudoku",)), ("--epochs", epochs, ("sudoku",)),
        ("--n-puzzles", n_puzzles, ("sudoku",)), ("--baseline", baseline or None, ("sudoku",)),
        ("--images", images, ("sr", "ct", "deblur", "denoiser")), ("--val-images", val_images, ("sr", "ct", "deblur", "denoiser")),
    ):
        if value is not None and task not in tasks:  # an option a task would silently ignore
            raise UsageError(f"{name} is for --task {'|'.join(tasks)}; --task {task} does not use it")
    if task == "sudoku":
        from .sudoku import train_command

        kwargs = {"puzzles": Path(puzzles) if puzzles else None, "seed": seed, "device": str(dev), "quiet": quiet,
                  "force": force, "baseline": baseline, "command": command, "out": Path(out)}
        if epochs is not None:
            kwargs["epochs"] = epochs
        if time_limit is not None:
            kwargs["time_limit_s"] = time_limit
        if n_puzzles is not None:
            kwargs["n_puzzles"] = n_puzzles
        with exclusive_output(_out_path(out)):  # one writer per checkpoint
            train_command(**kwargs)
        return
    if task == "denoiser":
        from ..training.denoiser import DenoiserTrainConfig, train_denoiser

        if arch is None:
            raise UsageError("--task denoiser needs --arch gradncnn|dnicnn|dndicnn|dncnn")
        if images is None:
            raise UsageError("--task denoiser needs --images FOLDER")
        cfg = DenoiserTrainConfig(
            arch=arch, sigma=parse_range(sigma or "0.01:0.1", "--sigma"), images=images, val_images=val_images,
            depth=depth, width=width, patch_size=patch, batch_size=batch, steps=steps, lr=lr, seed=seed,
            time_limit_s=time_limit, device=str(dev), threads=threads, force=force,
        )
        with exclusive_output(_out_path(out)):  # one writer per checkpoint
            written = train_denoiser(cfg, out, command=command, quiet=quiet)
        from ..io.checkpoints import read_metadata

        meta = read_metadata(written)
        if meta.get("stopped") == "interrupted":  # the weights so far are kept, but the run did not end: exit 130
            print(f"edn: interrupted at step {meta.get('steps_done')}; {written} holds the weights of that step",
                  file=sys.stderr)
            c.INTERRUPT_REPORTED = True
            raise typer.Exit(130)
        return

    from ..tasks import TaskSpec
    from ..training.data import list_images
    from ..training.lagged import TrainConfig, train as run_train

    try:
        angle_list = [int(a) for a in angles.split(",")]
    except ValueError:
        raise UsageError(f"--angles must be an integer or a comma-separated list of integers, got {angles!r}") from None

    spec = TaskSpec(
        task=task, scale=scale, downsampler=downsampler, kernel_sigma=parse_range(kernel_sigma, "--kernel-sigma"),
        kernel_size=kernel_size, angles=angle_list[0], angle_choices=tuple(angle_list) if len(angle_list) > 1 else (),
        noise_sigma=parse_range(noise, "--noise-sigma"),
        init=init or ("zero" if kind == "edn" else "classic"),
    )
    cfg = TrainConfig(
        spec=spec, kind=kind, images=images, val_images=val_images, depth=8 if depth is None else depth,
        width=32 if width is None else width, batchnorm=batchnorm, shuffle=shuffle, residual=residual, layer=layer,
        zeta1=zeta1, zeta2=zeta2, zeta=zeta, patch=patch, batch=batch, steps=steps, lr=lr, lag_every=lag_every,
        max_lag_steps=max_lag_steps, min_iter=min_iter, val_every=val_every, seed=seed, init_from=init_from,
        precision=precision, val_noise=val_noise, val_size=val_size, val_count=val_count,
    )
    cfg.check()  # every option value before any data is read or any file written
    if images is not None:
        list_images(images, "--images")
    if val_images is not None:
        list_images(val_images, "--val-images")
    path = _out_path(out)
    torch.manual_seed(seed)
    written = run_train(cfg, path, command=command, device=dev, quiet=quiet, force=force, resume=resume,
                        log_path=path.with_suffix(".train.jsonl"))
    if written is not None:
        c.say(f"wrote {written} and {written.with_suffix('.md')}", quiet)
        from ..io.checkpoints import read_metadata

        metrics = read_metadata(written).get("metrics", {})
        if metrics.get("interrupted"):  # the best state so far is kept, but the run did not end: exit 130
            print(f"edn: interrupted at step {metrics.get('steps')}; {written} holds the best validated state so far",
                  file=sys.stderr)
            c.INTERRUPT_REPORTED = True
            raise typer.Exit(130)
