"""``edn sr``, ``edn deblur``, ``edn ct`` (also as ``edn reconstruct sr|deblur|ct``).

Each command parses options, builds a :class:`~edncli.solvers.methods.Problem` per input with
the library, runs the method, writes the result, the report and the plot, and sets the exit
code: 0 δ reached, 3 the cap came first (result still written). With ``--batch-size N``
consecutive inputs of identical shape are stacked into one problem (δ per sample) and the
result is split back per input, so outputs and reports stay per input.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, List, Optional, Sequence, Tuple, Union

import typer
from typing_extensions import Annotated

from ..errors import UsageError
from ..solvers.options import METHOD_OPTIONS, NETWORK_EVAL_METHODS
from . import common as c

METHOD_NAMES = ("gd", "cg", "tv", "edn", "baseline", "potential", "red", "pnp")

MethodOpt = Annotated[str, typer.Option("--method", "-m", help=f"One of: {', '.join(METHOD_NAMES)}.")]
AlphaOpt = Annotated[
    Optional[float], typer.Option("--alpha", help="tv: regularisation weight α (default: by the discrepancy principle).")
]
WeightsOpt = Annotated[Optional[str], typer.Option("--weights", help="Checkpoint path, or name looked up in $EDN_WEIGHTS_DIR, weights/, then the current folder.")]
LamOpt = Annotated[Optional[float], typer.Option("--lam", help="potential/red: regularisation weight λ (default: the --preset's, i.e. this task's validation-tuned value).")]
MuOpt = Annotated[Optional[float], typer.Option("--mu", help="red/pnp: step size µ (default: the --preset's, i.e. this task's validation-tuned value).")]
BoxOpt = Annotated[bool, typer.Option("--box", help="potential: keep iterates in [0, 1] (proximal variant; red and pnp always do).")]
PresetOpt = Annotated[Optional[str], typer.Option("--preset", help="potential/red/pnp: settings of task sr or deblur (validation-tuned), or paper-sr / paper-deblur (Table 2 of the gradient-driven denoisers paper) (default: this task).")]
InitOpt = Annotated[Optional[str], typer.Option("--init", help="Initial guess (see each command's help).")]


def _check_method(method: str, weights: Optional[str] = None) -> str:
    """A usage error for an unknown method, or for ``--weights`` given to a method that loads none."""
    if method not in METHOD_NAMES:
        raise UsageError(f"--method must be one of {', '.join(METHOD_NAMES)}, got {method!r}")
    from ..solvers.learned import check_weights_option

    check_weights_option(method, weights)
    return method


def check_method_options(method: str, given: dict) -> None:
    """A usage error for an option in ``given`` (name -> whether the user set it) that ``method`` does not read."""
    for name, on in given.items():
        if on and method not in METHOD_OPTIONS[name]:
            why = "does not use it"
            if name == "--box" and method in ("red", "pnp"):
                why = "projects onto [0, 1] at every step already (eqs. 28-29)"
            if method == "potential" and METHOD_OPTIONS[name] is NETWORK_EVAL_METHODS:  # its network is evaluated whole
                why = ("evaluates its network whole in float32: tiling, low precision or an ensemble would change "
                       "the energy F = f + λ g_θ whose descent it checks")
            raise UsageError(f"{name} is for --method {'|'.join(METHOD_OPTIONS[name])}; method {method} {why}")


def _options(
    max_iter, min_iter, alpha, weights, reference, lam=None, mu=None, box=False, preset=None,
    tile=None, tile_overlap=None, precision="fp32", channels_last=None, learned_steps=None, handover=None, ensemble=1,
    method=None,
):
    """:class:`~edncli.solvers.methods.MethodOptions` from the command's options (bad values and
    options ``method`` does not read: UsageError)."""
    from ..networks.inference import InferenceConfig
    from ..solvers.methods import MethodOptions

    if method is not None:
        check_method_options(method, {
            "--lam": lam is not None, "--mu": mu is not None, "--box": box, "--preset": preset is not None,
            "--alpha": alpha is not None, "--min-iter": min_iter is not None,
            "--learned-steps": learned_steps is not None, "--handover": handover is not None,
            "--tile": tile is not None, "--tile-overlap": tile_overlap is not None,
            "--precision": precision not in (None, "fp32"), "--channels-last": channels_last is not None,
            "--ensemble": ensemble not in (None, 1),
        })

    if max_iter is not None and max_iter < 0:
        raise UsageError(f"--max-iter must be >= 0, got {max_iter}")
    if min_iter is not None and min_iter < 0:
        raise UsageError(f"--min-iter must be >= 0, got {min_iter}")
    if learned_steps is not None and learned_steps < 0:
        raise UsageError(f"--learned-steps must be >= 0, got {learned_steps}")
    if max_iter is not None and min_iter is not None and min_iter > max_iter:
        raise UsageError(f"--min-iter {min_iter} is above --max-iter {max_iter}; the cap must allow the minimum")
    # An explicit --max-iter (even one equal to the default) overrides the potential/red/pnp presets.
    extra = {"lam": lam, "mu": mu, "box": box}
    if preset:
        extra["preset"] = preset
    return MethodOptions(
        learned_steps=learned_steps,
        handover=handover or MethodOptions.handover,
        max_iter=max_iter,
        min_iter=min_iter,
        alpha=alpha,
        weights=weights,
        record_ssim=reference is not None,
        extra=extra,
        inference=InferenceConfig(tile=tile, tile_overlap=tile_overlap, precision=precision, channels_last=channels_last,
                                  ensemble=ensemble),
    )


def _search_text(result) -> str:
    """`` (+N in the α search)`` for tv with α by the discrepancy principle, else ``""``."""
    search = result.extra.get("search_iterations")
    return f" (+{sum(search)} in the α search)" if search else ""


@dataclass(frozen=True)
class _Job:
    """One input and where its output, report and plot go."""

    path: str
    out: str
    rep: Optional[str]
    plt: Optional[str]


#: A job with its problem built: ``(job, (problem, ndim of the input array, context))``.
_Built = Tuple[_Job, Tuple[Any, int, dict]]


def _batches(jobs: List[_Job], build: Callable[[str, object], tuple], device, size: int) -> Iterator[List[_Built]]:
    """Build the jobs' problems in order and group them: consecutive ones with identical shapes
    of data ``f`` and initial guess ``u0``, at most ``size`` per group."""

    def shape(problem) -> tuple:
        return tuple(problem.f.shape), tuple(problem.u0.shape)

    group: List[_Built] = []
    for job in jobs:
        built = build(job.path, device)
        if group and shape(built[0]) != shape(group[0][1][0]):
            yield group
            group = []
        group.append((job, built))
        if len(group) == size:  # a full group is solved before the next input is read
            yield group
            group = []
    if group:
        yield group


def _check_output_holds(job: _Job, built: tuple, fmt: Optional[str]) -> None:
    """A PNG output takes 1, 3 or 4 channels; anything else is refused before it is solved."""
    from ..io.images import PNG_CHANNELS, output_format

    problem, ndim, _ = built
    channels = 1 if ndim == 2 else int(problem.f.shape[0])
    if output_format(job.out, fmt) == "png" and channels not in PNG_CHANNELS:
        raise UsageError(f"{job.out}: a PNG holds 1, 3 or 4 channels and {job.path} has {channels}; write .tif, .npy or .h5")


def _check_inputs(jobs: List[_Job], build: Callable[[str, object], tuple], check: Callable[[_Job, tuple], None]) -> None:
    """Build every input's problem once on the CPU, and drop it, before any is solved: an
    unreadable, NaN or ill-shaped file anywhere in a folder stops the run before it writes a
    single output (it used to stop at that file, after writing the ones before it). Reading is
    cheap next to solving; the random state is left as it was."""
    import torch

    state = torch.random.get_rng_state()
    try:
        for job in jobs:
            check(job, build(job.path, "cpu"))
    finally:
        torch.random.set_rng_state(state)


def plan_jobs(
    inputs: List[str], outputs: List[str], report: Optional[str], plot: Optional[str], force: bool, as_json: bool,
    fmt: Optional[str], bit_depth: Optional[int], check: bool = True, check_formats: bool = True, several: bool = False,
    read_too: Sequence[Tuple[str, Union[str, Path, None]]] = (),
) -> List[_Job]:
    """Each input's output, report and plot, with ``check`` all checked before any work: writable,
    not there (or ``force``), no two the same file, no report or plot on an input, at most one
    thing on stdout (``as_json`` is one), and (``check_formats``) a known output format and PNG
    bit depth. Errors are usage errors (exit 2) or, for a folder that cannot be written,
    input/output errors (exit 4). ``report`` and ``plot`` name folders when there are several
    inputs or ``several`` (the input was a folder or glob, see :func:`~edncli.cli.common.names_several`).
    ``read_too``: ``(option, path)`` of the other files the run reads (``--reference``,
    ``--kernel``); no output, report or plot may be one of them or a main input, even with ``force``."""
    import os

    from ..io.images import output_format

    several = several or len(inputs) > 1
    jobs = [
        _Job(path, out, c.side_path(report, several, path, ".json"), c.side_path(plot, several, path, ".png"))
        for path, out in zip(inputs, outputs)
    ]
    if not check:
        return jobs
    for job in jobs:
        if job.plt not in (None, "-") and Path(job.plt).suffix.lower() != ".png":
            raise UsageError(f"--plot {job.plt}: the plot is a PNG image; give a file name ending in .png")
    # what each file the run reads is: None for a main input (never a report or plot), else its option
    read = {os.path.realpath(p): None for p in inputs if p != "-"}
    read.update({os.path.realpath(p): option for option, p in read_too if p not in (None, "-")})
    for job in jobs:
        for option, p in (("-o", job.out), ("--report", job.rep), ("--plot", job.plt)):
            real = None if p in (None, "-") else os.path.realpath(p)
            if real not in read:
                continue
            if read[real] is not None:
                raise UsageError(f"{option} {p} is the {read[real]} file of this run; edn never replaces an input")
            what = "its result" if option == "-o" else f"a {option[2:]}"
            where = "-o/--output-dir" if option == "-o" else option
            # even with --force: the measurements are the one thing a rerun cannot recreate
            raise UsageError(f"{where} {p} is an input of this run; edn never replaces an input with {what}")
    if len(jobs) == 1:
        labels = [f"-o {jobs[0].out}", f"--report {jobs[0].rep}", f"--plot {jobs[0].plt}"]
    else:
        labels = [f"the {kind} of {job.path}" for job in jobs for kind in ("output", "report", "plot")]
    c.check_exists_for_write([p for job in jobs for p in (job.out, job.rep, job.plt)], force, labels, json_stdout=as_json)
    if check_formats:
        c.png_bit_depth(bit_depth, [output_format(job.out, fmt) for job in jobs])
    return jobs


def run_problems(
    *,
    inputs: List[str],
    outputs: List[str],
    build: Callable[[str, object], tuple],
    method: str,
    options,
    device,
    report: Optional[str],
    plot: Optional[str],
    force: bool,
    quiet: bool,
    fmt: Optional[str],
    bit_depth: Optional[int],
    as_json: bool,
    write_result: Optional[Callable[[str, object, object], None]] = None,
    solver: Optional[Callable] = None,
    batch_size: int = 1,
    several: bool = False,
    read_too: Sequence[Tuple[str, Union[str, Path, None]]] = (),
) -> None:
    """Solve each input and write outputs; raises ``typer.Exit(3)`` if any run missed δ.

    ``solver(problem, method, options, callback)`` replaces :func:`~edncli.solvers.methods.solve`
    (``edn ct`` under torchrun passes :meth:`~edncli.solvers.sharding.ShardGroup.solve`).
    ``batch_size > 1`` solves up to that many consecutive inputs of identical shape as one batch
    (:meth:`~edncli.solvers.methods.Problem.stack`, then
    :meth:`~edncli.solvers.trace.SolveResult.split`); each report then gets a ``batch`` key.
    ``several``: the input was a folder or glob, so ``report`` and ``plot`` name folders (see :func:`plan_jobs`).
    """
    from ..io.images import encode_image, output_format, write_together
    from ..io.reports import build_report, plot_bytes, report_bytes
    from ..solvers.methods import Problem, solve

    solve = solver or solve

    # Under torchrun (``solver`` given) the other ranks already wait in the solve, so a failed
    # check here would leave them hanging: ``edn ct`` checks its outputs in its argument stage.
    jobs = plan_jobs(inputs, outputs, report, plot, force, as_json, fmt, bit_depth,
                     check=solver is None, check_formats=write_result is None, several=several, read_too=read_too)

    summaries = []

    def finish(job: _Job, built: tuple, result, batch: Optional[dict]) -> None:
        """Write one input's output, report and plot (all or none), and its summary line."""
        problem, ndim, context = built
        # checked only then (no cost to a run that met δ), on all of the data: under torchrun rank
        # 0's problem is its own chunk of the slices, and ``context["whole"]`` holds all of them
        if result.delta_reached is False and (problem.f.shape[0] == len(result.samples) or "whole" in context):
            _explain_unreachable(job.path, built, quiet)
        files = []
        written = None
        if write_result is None:
            out_fmt = output_format(job.out, fmt)
            image = encode_image(c.from_tensor(result.u, ndim), out_fmt, bit_depth or 16,
                                 stack=context.get("stack", False))
            files.append((job.out, image))
            if out_fmt == "png" and problem.f.shape[0] == len(result.samples):
                written = _png_verdict(problem, result, bit_depth or 16)
        # the whole input's δ: under torchrun ``problem`` holds rank 0's slices only
        delta_doc = context.get("delta", problem.delta.as_dict() if problem.delta else None)
        if delta_doc and delta_doc.get("sigma_fallback"):
            c.warn(f"{job.path}: --delta auto estimated no noise in sample(s) "
                  f"{', '.join(map(str, delta_doc['sigma_fallback']))}; they use the median of the others' σ")
        doc = build_report(
            result,
            device=str(device),
            delta=delta_doc,
            checkpoint=result.extra.pop("checkpoint", None),
            inputs=context.get("inputs"),
            operator=problem.op.describe(),
            extra=context.get("report_extra"),
        )
        if batch is not None:
            doc["batch"] = batch
        missed_by_file = bool(written and result.delta_reached and not written["delta_reached"])
        if written is not None:
            doc["output"] = written
            if missed_by_file:
                worst = max(range(len(written["discrepancy"])),
                            key=lambda i: written["discrepancy"][i] / max(result.samples[i].delta or 0.0, 1e-300))
                text = (f"{job.out}: the PNG clips {written['clipped']} value(s) to [0, 1] and rounds to "
                        f"{written['bit_depth']} bits, so the written image has ||Au-f|| = "
                        f"{written['discrepancy'][worst]:.4g} > δ = {result.samples[worst].delta:.4g}; "
                        "write .tif or .npy to keep the result that meets δ")
                doc.setdefault("warnings", []).append(text)
                c.warn(text)
        if job.rep is not None:
            files.append((job.rep, report_bytes(doc)))
        if job.plt is not None:
            files.append((job.plt, plot_bytes(doc)))
        if write_result is not None:
            write_result(job.out, result, context)
        write_together(files, force=force)
        reached = False if missed_by_file else result.delta_reached
        summary = {
            "input": job.path,
            "output": job.out,
            "method": method,
            "iterations": result.iterations,
            "delta": doc["delta"],
            "final_discrepancy": result.final_discrepancy,
            "delta_reached": reached,
            "energy_monotone": result.energy_monotone,
            "elapsed_s": round(result.elapsed_s, 4),
        }
        if missed_by_file:  # the line's verdict is the file's: so is its discrepancy (the result's kept apart)
            summary["final_discrepancy"] = written["discrepancy"][worst]
            summary["result_discrepancy"] = result.final_discrepancy
        summaries.append(summary)
        verdict = {True: "δ reached", False: f"δ NOT reached ({_miss_reason(result)})", None: "no δ set"}[reached]
        if missed_by_file:
            verdict = "δ reached by the result, NOT by the written PNG (clipped to [0, 1])"
        c.say(
            f"{job.path} -> {job.out}: {method}, {result.iterations} iteration{'' if result.iterations == 1 else 's'}{_search_text(result)}, "
            f"||Au-f|| = {result.final_discrepancy:.4g}"
            + (f" (δ = {_delta_text(doc['delta'])})" if doc["delta"] else "")
            + f", {verdict}, energy monotone: {_monotone_text(result.energy_monotone, doc.get('guarantee'))}",
            quiet,
        )

    def holds(job: _Job, built: tuple) -> None:
        if write_result is None:
            _check_output_holds(job, built, fmt)

    if len(jobs) > 1:
        _check_inputs(jobs, build, holds)
    for group in _batches(jobs, build, device, batch_size):
        for job, built in group:
            holds(job, built)  # before the solve, not after it
        problems = [built[0] for _, built in group]
        name = Path(group[0][0].path).name + (f" (+{len(group) - 1})" if len(group) > 1 else "")
        callback, close = c.progress_callback(_iteration_cap(method, problems[0], options), quiet, f"{method} {name}")
        try:
            if len(group) == 1:
                results = [solve(problems[0], method, options, callback)]
            else:
                batched = solve(Problem.stack(problems), method, options, callback)
                results = batched.split([p.f.shape[0] for p in problems])
        finally:
            close()
        for index, ((job, built), result) in enumerate(zip(group, results)):
            note = "time_s and elapsed_s are those of the whole batch"
            finish(job, built, result, {"size": len(group), "index": index, "note": note} if batch_size > 1 else None)
    if as_json:  # one object for one input file, a list for a folder or glob (however many it holds)
        from ..io.stdout import write_stdout
        from ..io.reports import strict_json

        write_stdout(strict_json(summaries[0] if len(summaries) == 1 and not several else summaries) + "\n")
    missed = sum(s["delta_reached"] is False for s in summaries)
    if missed:
        c.say(f"{missed} of {len(jobs)} run(s) ended without reaching δ (exit code 3)", quiet)
        raise typer.Exit(3)


def _png_verdict(problem, result, bit_depth: int) -> dict:
    """δ on what a PNG output holds: the result clipped to [0, 1] and rounded to ``bit_depth``
    bits, as :func:`~edncli.io.images.encode_image` writes it (one more ``A u``).

    Returns the report's ``output`` entry: ``format``, ``bit_depth``, ``clipped`` (values outside
    [0, 1]), per-sample ``discrepancy`` of the written image and its ``delta_reached``."""
    import torch

    from ..io.images import png_counts

    u = result.u.detach().float()
    q = torch.from_numpy(png_counts(u.cpu().numpy(), bit_depth) / float(2**bit_depth - 1)).float()
    with torch.no_grad():
        disc = (problem.op(q.to(problem.f.device)) - problem.f).flatten(1).double().norm(dim=1).cpu().tolist()
    deltas = [s.delta for s in result.samples]
    reached = None if any(d is None for d in deltas) else all(v <= d for v, d in zip(disc, deltas))
    return {"format": "png", "bit_depth": bit_depth, "clipped": int(((u < 0) | (u > 1)).sum()),
            "discrepancy": disc, "delta_reached": reached}


#: Why a run stopped short of δ, as the summary line says it (keys: ``SampleVerdict.stop_reason``).
_STOP_TEXT = {"max_iter": "iteration cap", "grad_tol": "gradient tolerance", "precision_limit": "float32 precision limit",
              "line_search_stalled": "line search stalled", "single_pass": "single pass"}


def _monotone_text(monotone: bool, guarantee: object) -> str:
    """``yes`` or ``NO``; for a method without a guarantee (the baseline network's one pass, whose
    report's ``guarantee`` starts with ``none``) ``yes`` is what was observed, and says so."""
    if not monotone:
        return "NO"
    return "yes (observed; no guarantee)" if isinstance(guarantee, str) and guarantee.startswith("none") else "yes"


def _miss_reason(result) -> str:
    """The stop reasons of the samples that missed δ, in words (``"iteration cap"`` when unknown)."""
    reasons = [s.stop_reason for s in result.samples if s.delta_reached is False] or ["max_iter"]
    return ", ".join(dict.fromkeys(_STOP_TEXT.get(r, r.replace("_", " ")) for r in reasons))


def _explain_unreachable(path: str, built: tuple, quiet: bool) -> None:
    """After a run that missed δ: say so when data no unknown reaches already exceed δ, so no
    number of iterations could have met it, and put the floor in the report. See
    :func:`~edncli.solvers.stopping.residual_floor`."""
    from ..solvers.stopping import residual_floor

    problem, _, context = built
    # under torchrun: (f, δ choice) of every slice; the operator acts slice by slice, so rank 0's serves
    f, choice = context.get("whole") or (problem.f, problem.delta)
    f = f.to(problem.f.device)
    floors, counts = residual_floor(problem.op, f)
    if not any(counts):
        return
    context["report_extra"] = {**(context.get("report_extra") or {}),
                               "residual_floor": {"norm": floors, "measurements": counts[0]}}
    deltas = None if choice is None else choice.per_sample(f.shape[0])
    if deltas is None:
        return
    missed = [i for i, (fl, d) in enumerate(zip(floors, deltas)) if fl > d]
    if missed:
        i = missed[0]
        which = f" (sample {', '.join(map(str, missed))})" if len(floors) > 1 else ""
        c.warn(f"{path}{which}: δ = {deltas[i]:.4g} cannot be reached: {counts[i]} measurements that no "
              f"pixel of the result reaches hold ||f|| = {floors[i]:.4g} there (for CT: a larger --size, or check --center)")


def _check_stdin(inputs: List[str], reference: Optional[str]) -> None:
    """stdin can be read once: ``--reference -`` with the input ``-`` is a usage error."""
    if reference == "-" and "-" in inputs:
        raise UsageError("the input and --reference are both '-' (stdin); give one of them as a file")


def _reference(path: Optional[str], shape, device, stack: bool = False, cache: Optional[dict] = None):
    """The ``--reference`` image as a ``shape`` tensor (one image serves every sample);
    ``stack``: the result is a CT volume, so a 3D file holds slices as stored (see :func:`read_image`).
    ``cache`` keeps what was read from stdin, which can be read only once, for the next input."""
    if path is None:
        return None
    from ..errors import InputError
    from ..io.images import read_image

    if path != "-" and Path(path).is_dir():  # sr and deblur match a folder to their inputs first
        raise UsageError(f"--reference {path} is a folder; give the one ground-truth image (or stack of slices) of this scan")
    if cache is not None and path in cache:
        arr = cache[path]
    else:
        try:
            arr, _ = read_image(path, stack=stack)
        except InputError as err:  # name the option: the input and the reference are both image files
            raise InputError(f"--reference {err}") from None
        if cache is not None and path == "-":
            cache[path] = arr
    ref = c.to_tensor(arr, device)
    if tuple(ref.shape[-2:]) != tuple(shape[-2:]) or (ref.shape[0] not in (1, shape[0])):
        raise UsageError(f"--reference {path}: shape {tuple(arr.shape)} does not match the result {tuple(shape)}")
    return ref.expand(shape[0], *ref.shape[1:]).contiguous()


def _iteration_cap(method: str, problem, options) -> int:
    """The cap ``method`` runs under (the progress bar's length): potential/red/pnp keep their preset's."""
    from ..solvers.potential import POTENTIAL_METHODS, resolve_settings

    if method in POTENTIAL_METHODS:
        return resolve_settings(method, problem, options)[0].max_iter
    return options.iteration_cap


def _delta_text(delta) -> str:
    """δ for a summary line: one value, or the range of the per-sample values."""
    if isinstance(delta, (list, tuple)):
        lo, hi = min(delta), max(delta)
        return (f"{lo:.4g}" if f"{lo:.4g}" == f"{hi:.4g}" else f"{lo:.4g}–{hi:.4g}") + " per sample"
    return f"{delta:.4g}"


def _delta(delta, noise_sigma, tau, f):
    """δ from the command's options; ``--tau`` (``None`` when not given) with a numeric ``--delta`` is a usage error."""
    from ..solvers.stopping import choose_delta

    if tau is not None and delta is not None and str(delta).lower() != "auto":
        raise UsageError(f"--tau scales the noise level (δ = τ σ sqrt(m)); with --delta {delta} it does nothing: drop --tau")

    m = int(f[0].numel())
    return choose_delta(delta, noise_sigma, tau, m, f.detach().cpu().numpy())


def sr(
    input: Annotated[str, typer.Argument(help="Low-resolution image, a folder, a glob, or '-' for stdin.")],
    output: c.Output = None,  # type: ignore[assignment]
    scale: Annotated[int, typer.Option("--scale", "-s", help="Integer upscaling factor >= 2.")] = 4,
    downsampler: Annotated[str, typer.Option("--downsampler", help="Forward model: average (pooling) or bicubic.")] = "average",
    method: MethodOpt = "edn",
    init: InitOpt = None,
    delta: c.DeltaOpt = "auto",
    noise_sigma: c.NoiseSigma = None,
    tau: c.Tau = None,
    max_iter: c.MaxIter = None,
    min_iter: c.MinIter = None,
    learned_steps: c.LearnedSteps = None,
    handover: c.Handover = None,
    alpha: AlphaOpt = None,
    weights: WeightsOpt = None,
    lam: LamOpt = None,
    mu: MuOpt = None,
    box: BoxOpt = False,
    preset: PresetOpt = None,
    reference: c.ReferenceOpt = None,
    report: c.Report = None,
    plot: c.Plot = None,
    output_dir: c.OutputDir = None,
    fmt: c.Format = None,
    bit_depth: c.BitDepth = None,
    dataset: c.Dataset = None,
    device: c.Device = "auto",
    seed: c.Seed = 0,
    quiet: c.Quiet = False,
    force: c.Force = False,
    as_json: c.Json = False,
    batch_size: c.BatchSize = 1,
    tile: c.Tile = None,
    tile_overlap: c.TileOverlap = None,
    precision: c.Precision = "fp32",
    channels_last: c.ChannelsLast = None,
    ensemble: c.Ensemble = 1,
) -> None:
    """Super-resolve: find u with ||A u - f|| <= δ, A = downsampling by --scale.

    --init: bicubic (default), bilinear, nearest or adjoint (A^T f scaled).
    Colour images are reconstructed channel by channel.
    """
    from ..operators.downsample import check_scale, make_sr_operator, upsample
    from ..solvers.methods import Problem

    scale = check_scale(scale)
    _check_method(method, weights)
    c.check_batch_size(batch_size)
    init = init or "bicubic"
    if init not in ("bicubic", "bilinear", "nearest", "adjoint"):
        raise UsageError(f"--init for sr must be bicubic, bilinear, nearest or adjoint, got {init!r}")
    if noise_sigma is not None and delta == "auto":
        delta = None
    options = _options(
        max_iter, min_iter, alpha, weights, reference, lam, mu, box, preset, tile, tile_overlap, precision, channels_last,
        learned_steps, handover, ensemble, method=method,
    )
    inputs = c.expand_inputs(input)
    _check_stdin(inputs, reference)
    c.check_dataset(dataset, inputs)
    references, stdin_reference = dict(zip(inputs, c.references_for(reference, inputs))), {}
    outputs = c.plan_outputs(inputs, output, output_dir, fmt)
    dev = c.resolve_device(device)
    import torch

    torch.manual_seed(seed)

    def build(path, device):
        from ..io.images import read_image

        arr, info = read_image(path, dataset)
        f = c.to_tensor(arr, device)
        hr = (f.shape[-2] * scale, f.shape[-1] * scale)
        op = make_sr_operator(hr, scale, downsampler)
        if init == "adjoint":
            u0 = op.adjoint(f) * scale * scale
        else:
            u0 = upsample(f, scale, init)
        problem = Problem(op=op, f=f, u0=u0, delta=_delta(delta, noise_sigma, tau, f), task="sr")
        problem.reference = _reference(references[path], u0.shape, device, cache=stdin_reference)
        ctx = {"inputs": {"path": path, "shape": list(arr.shape), "dtype": info.dtype, "init": init}}
        return problem, arr.ndim, ctx

    run_problems(
        inputs=inputs, outputs=outputs, build=build, method=method, options=options, device=dev, report=report,
        plot=plot, force=force, quiet=quiet, fmt=fmt, bit_depth=bit_depth, as_json=as_json, batch_size=batch_size,
        several=output_dir is not None and c.names_several(input), read_too=[("--reference", r) for r in set(references.values())],
    )


def deblur(
    input: Annotated[str, typer.Argument(help="Blurred image, a folder, a glob, or '-' for stdin.")],
    output: c.Output = None,  # type: ignore[assignment]
    kernel_sigma: Annotated[Optional[float], typer.Option("--kernel-sigma", help="Gaussian blur std (pixels).")] = None,
    kernel_size: Annotated[Optional[int], typer.Option("--kernel-size", help="Gaussian kernel side (odd; default 25, as in edn simulate/eval/train).")] = None,
    kernel: Annotated[Optional[Path], typer.Option("--kernel", help="Kernel file (.npy, .txt, image, HDF5); normalised to sum 1.")] = None,
    kernel_dataset: Annotated[Optional[str], typer.Option("--kernel-dataset", help="Dataset of an HDF5 --kernel holding several.")] = None,
    boundary: Annotated[str, typer.Option("--boundary", help="reflect, circular or zero.")] = "reflect",
    method: MethodOpt = "edn",
    init: InitOpt = None,
    delta: c.DeltaOpt = "auto",
    noise_sigma: c.NoiseSigma = None,
    tau: c.Tau = None,
    max_iter: c.MaxIter = None,
    min_iter: c.MinIter = None,
    learned_steps: c.LearnedSteps = None,
    handover: c.Handover = None,
    alpha: AlphaOpt = None,
    weights: WeightsOpt = None,
    lam: LamOpt = None,
    mu: MuOpt = None,
    box: BoxOpt = False,
    preset: PresetOpt = None,
    reference: c.ReferenceOpt = None,
    report: c.Report = None,
    plot: c.Plot = None,
    output_dir: c.OutputDir = None,
    fmt: c.Format = None,
    bit_depth: c.BitDepth = None,
    dataset: c.Dataset = None,
    device: c.Device = "auto",
    seed: c.Seed = 0,
    quiet: c.Quiet = False,
    force: c.Force = False,
    as_json: c.Json = False,
    batch_size: c.BatchSize = 1,
    tile: c.Tile = None,
    tile_overlap: c.TileOverlap = None,
    precision: c.Precision = "fp32",
    channels_last: c.ChannelsLast = None,
    ensemble: c.Ensemble = 1,
) -> None:
    """Deblur: find u with ||k * u - f|| <= δ for a Gaussian (--kernel-sigma) or file (--kernel) blur.

    --init: blurred (default, the data itself) or zero.
    """
    from ..operators.blur import DEFAULT_KERNEL_SIZE, Blur
    from ..solvers.methods import Problem

    _check_method(method, weights)
    c.check_batch_size(batch_size)
    if (kernel_sigma is None) == (kernel is None):
        raise UsageError("give exactly one of --kernel-sigma (Gaussian) or --kernel FILE")
    if kernel is not None and kernel_size is not None:
        raise UsageError(f"--kernel-size applies to the Gaussian of --kernel-sigma; --kernel {kernel} has its own size, drop --kernel-size")
    size = DEFAULT_KERNEL_SIZE if kernel_size is None else kernel_size  # not `or`: --kernel-size 0 is an error
    k = c.kernel_from_options(kernel, kernel_dataset, kernel_sigma, size)
    init = init or "blurred"
    if init not in ("blurred", "zero"):
        raise UsageError(f"--init for deblur must be blurred or zero, got {init!r}")
    if noise_sigma is not None and delta == "auto":
        delta = None
    options = _options(
        max_iter, min_iter, alpha, weights, reference, lam, mu, box, preset, tile, tile_overlap, precision, channels_last,
        learned_steps, handover, ensemble, method=method,
    )
    inputs = c.expand_inputs(input)
    _check_stdin(inputs, reference)
    c.check_dataset(dataset, inputs)
    references, stdin_reference = dict(zip(inputs, c.references_for(reference, inputs))), {}
    outputs = c.plan_outputs(inputs, output, output_dir, fmt)
    dev = c.resolve_device(device)
    import torch

    torch.manual_seed(seed)

    def build(path, device):
        from ..io.images import read_image

        arr, info = read_image(path, dataset)
        f = c.to_tensor(arr, device)
        op = Blur(f.shape[-2:], k, boundary, sigma=kernel_sigma if kernel is None else None).to(device)
        u0 = f.clone() if init == "blurred" else torch.zeros_like(f)
        problem = Problem(op=op, f=f, u0=u0, delta=_delta(delta, noise_sigma, tau, f), task="deblur")
        problem.reference = _reference(references[path], u0.shape, device, cache=stdin_reference)
        ctx = {
            "inputs": {"path": path, "shape": list(arr.shape), "dtype": info.dtype, "init": init},
            "report_extra": {"kernel": {"sigma": kernel_sigma, "size": list(k.shape), "file": str(kernel) if kernel else None}},
        }
        return problem, arr.ndim, ctx

    run_problems(
        inputs=inputs, outputs=outputs, build=build, method=method, options=options, device=dev, report=report,
        plot=plot, force=force, quiet=quiet, fmt=fmt, bit_depth=bit_depth, as_json=as_json, batch_size=batch_size,
        several=output_dir is not None and c.names_several(input),
        read_too=[*(("--reference", r) for r in set(references.values())), ("--kernel", kernel)],
    )
