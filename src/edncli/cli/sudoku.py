"""``edn sudoku solve``, ``edn eval sudoku`` and ``edn train --task sudoku``: parse, call
:mod:`edncli.sudoku`, format. torch is imported inside the commands only (``edn --help`` stays fast).

Exit codes: 0 all puzzles solved, 3 some not solved (results still written), 2 usage error
(also: a malformed or infeasible puzzle string), 4 input or checkpoint error (also: a puzzle in
a file whose givens break the rules).
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import List, Optional

import typer
from typing_extensions import Annotated

from ..errors import InputError, UsageError
from . import common as c

app = typer.Typer(
    name="sudoku",
    help="Solve Sudokus as convex feasibility: averaged projections (gd) or an energy dissipating network (edn).",
    no_args_is_help=True,
    add_completion=False,
)

JsonOut = Annotated[Optional[Path], typer.Option("--json", help="Write the machine-readable report (JSON) to this file.")]
Quiet = Annotated[bool, typer.Option("--quiet", "-q", help="No summary or progress on stderr (results still go to stdout).")]
Force = Annotated[bool, typer.Option("--force", help="Overwrite existing output files.")]
DeviceOpt = Annotated[str, typer.Option("--device", help="auto, cpu, cuda or cuda:N.")]
Weights = Annotated[
    Optional[str], typer.Option("--weights", help="Checkpoint name (in weights/) or path; default edn-sudoku / sudoku-baseline.")
]


#: Why an infeasible puzzle has no answer: C5 (the givens) misses C1-C4, so E > 0 everywhere.
_NO_GRID = "no grid keeps these givens and the rules (the energy is > 0 for every u)"


def _echo(msg: str, quiet: bool) -> None:
    """A summary or progress line: stderr, as every edn command's (stdout is for results)."""
    from .common import say

    say(msg, quiet)


def _result(msg: str) -> None:
    """A result line (a grid, a puzzle's status, a table): stdout, with or without --quiet."""
    from ..io.stdout import write_stdout

    write_stdout(msg + "\n")


def _check_outputs(paths: List[Optional[Path]], force: bool) -> None:
    """Before any work: refuse to overwrite an existing file without ``--force``, to replace a
    non-regular file at all, to write one file twice, or ``-`` (these outputs are files); a
    folder that cannot be written is an input error (see :func:`~edncli.io.images.check_writable`)."""
    from ..io.images import check_writable

    seen: set = set()
    for p in paths:
        if p is None:
            continue
        if str(p) == "-":
            raise UsageError("output -: these outputs are files, not stdout; give a file name")
        if p.is_dir():
            raise UsageError(f"output {p}: is a folder; pass a file name")
        if p.exists() and not p.is_file():
            raise UsageError(f"output {p}: exists and is not a regular file; edn replaces only regular files, even with --force")
        if p.exists() and not force:
            raise UsageError(f"output {p}: already exists; pass --force to overwrite it or choose another name")
        if not p.parent.exists():
            raise UsageError(f"output {p}: the folder {p.parent} does not exist; create it first")
        key = p.resolve()
        if key in seen:
            raise UsageError(f"output {p}: named twice; give each output its own file")
        seen.add(key)
        check_writable(str(p), force)


def _json_bytes(doc: dict) -> bytes:
    from ..io.reports import strict_json

    return (strict_json(doc, indent=2, sort_keys=False) + "\n").encode()


def _write_json(path: Path, doc: dict) -> None:
    from ..io.images import write_together

    write_together([(str(path), _json_bytes(doc))], force=True)  # existence was checked up front


def _device(spec: str) -> str:
    from .common import resolve_device

    return str(resolve_device(spec))


@app.command("solve")
def solve(
    puzzle: Annotated[str, typer.Argument(help="An 81-character puzzle (0 or . = blank), or a CSV/text file of puzzles.")],
    method: Annotated[str, typer.Option("--method", "-m", help="edn (learned, default), gd (averaged projections) or baseline.")] = "edn",
    iterations: Annotated[
        Optional[int], typer.Option("--iterations", "-n", help="Iteration cap (default: 100 for edn, 750 for gd).")
    ] = None,
    out: Annotated[Optional[Path], typer.Option("--out", "-o", help="Write id,puzzle,solution,status rows to this CSV.")] = None,
    json_out: JsonOut = None,
    weights: Weights = None,
    batch_size: Annotated[int, typer.Option("--batch-size", help="Puzzles solved together.")] = 256,
    stop_when_solved: Annotated[
        bool,
        typer.Option(
            "--stop-when-solved/--run-to-cap",
            help="Stop each puzzle at the first iterate whose rounding is a solution (default), or run every "
            "puzzle to the iteration cap (the paper's protocol; edn sudoku eval does this).",
        ),
    ] = True,
    device: DeviceOpt = "cpu",
    quiet: Quiet = False,
    force: Force = False,
) -> None:
    """Solve puzzles; report solved / not solved per puzzle (checked against the rules and givens).

    Exit code 0 when every puzzle is solved, 3 when some are not (results are still written;
    an unsolved grid is printed with "(not solved: ...)"), 2 for a malformed or infeasible puzzle
    string, 4 when a file's puzzle has givens that break the rules (reported as infeasible) or
    the file is unreadable.
    """
    from ..io.images import write_together
    from ..sudoku.puzzles import find_conflicts, puzzles_from_argument, solutions_csv
    from ..sudoku.solve import monotone_word, solve_table

    if method == "gd" and weights is not None:
        raise UsageError("--weights is read by edn and baseline; gd (averaged projections) uses no network: drop --weights")
    if method == "baseline" and iterations is not None:
        raise UsageError("--iterations is read by edn and gd; baseline is one network pass: drop --iterations")
    _check_outputs([out, json_out], force)
    c.check_not_inputs({"--out": out, "--json": json_out}, [puzzle], "the puzzle file")
    table = puzzles_from_argument(puzzle)
    single = len(table) == 1 and table.source == "argument"
    conflicts = find_conflicts(table.puzzles[0]) if single else []
    if conflicts:  # a bad argument value: refused before any work
        raise UsageError(f"argument PUZZLE: infeasible: {conflicts[0]}; {_NO_GRID}; fix the givens")
    report = solve_table(table, method, iterations, weights, batch_size, _device(device), stop_when_solved=stop_when_solved)
    files = []  # written together: both or neither
    if out is not None:
        files.append((str(out), solutions_csv(table.ids, table.puzzles, report.rows)))
    if json_out is not None:
        files.append((str(json_out), _json_bytes(report.as_dict())))
    if files:
        write_together(files, force=True)  # existing files were refused without --force up front
    for r in report.rows:
        if r["status"] == "infeasible":
            continue
        if single:
            _result(r["grid"] if r["solved"] else f"{r['grid']}  (not solved: {r['problems'][0]})")
        else:
            _result(f"{r['id']}: {r['status']} ({r['iterations']} it)" + ("" if r["solved"] else f": {r['problems'][0]}"))
    s = report.summary()
    _echo(
        f"{s['solved']}/{s['puzzles']} solved with {method}"
        + (f" ({report.iterations} iterations max)" if method != "baseline" else "")
        + (f", energy monotone: {monotone_word(s['energy_monotone'])}" if s["energy_monotone"] is not None else "")
        + f", {s['time_s']:.1f} s",
        quiet,
    )
    infeasible = [r for r in report.rows if r["status"] == "infeasible"]
    if infeasible:  # only from a file (a single puzzle argument was checked up front)
        r = infeasible[0]
        where = f"puzzle {r['id']}: "
        more = f" (and {len(infeasible) - 1} more infeasible puzzles)" if len(infeasible) > 1 else ""
        raise InputError(f"{where}infeasible: {r['problems'][0]}; {_NO_GRID}{more}; fix the givens")
    if s["solved"] < s["puzzles"]:
        raise typer.Exit(3)


@app.command("eval")
def evaluate(
    puzzles: Annotated[Path, typer.Option("--puzzles", help="CSV with puzzle and solution columns.")],
    methods: Annotated[str, typer.Option("--methods", help="Comma-separated: gd, baseline, edn.")] = "gd,baseline,edn",
    label: Annotated[Optional[str], typer.Option("--label", help="Only rows with this label (e.g. easy).")] = None,
    limit: Annotated[Optional[int], typer.Option("--limit", help="Only the first N puzzles (after --label).")] = None,
    gd_iterations: Annotated[Optional[int], typer.Option("--gd-iterations", help="Iterations of gradient descent (default 750).")] = None,
    edn_iterations: Annotated[Optional[int], typer.Option("--edn-iterations", help="Iterations of edn (default from checkpoint).")] = None,
    weights: Annotated[Optional[str], typer.Option("--weights", help="edn checkpoint (name or path).")] = None,
    baseline_weights: Annotated[Optional[str], typer.Option("--baseline-weights", help="Baseline checkpoint (name or path).")] = None,
    json_out: JsonOut = None,
    device: DeviceOpt = "cpu",
    quiet: Quiet = False,
    force: Force = False,
) -> None:
    """Compare methods on puzzles with known solutions: cell accuracy, solved rate, iterations, time."""
    from ..sudoku.evaluate import evaluate_methods, format_table

    _check_outputs([json_out], force)
    c.check_not_inputs({"--json": json_out}, [str(puzzles)], "the puzzle file")
    names = [m.strip() for m in methods.split(",") if m.strip()]
    table = evaluate_methods(
        puzzles,
        names,
        label=label,
        limit=limit,
        gd_iterations=gd_iterations,
        edn_iterations=edn_iterations,
        weights=weights,
        baseline_weights=baseline_weights,
        device=_device(device),
    )
    if json_out is not None:
        _write_json(json_out, table)
    _result(format_table(table))


def train_command(
    puzzles: Optional[Path] = None,
    out: Path = Path("edn-sudoku"),
    epochs: int = 20,
    batch_size: int = 64,
    lr: float = 2e-3,
    n_puzzles: int = 3000,
    givens_min: int = 24,
    givens_max: int = 40,
    channels: int = 32,
    blocks: int = 6,
    baseline: bool = False,
    time_limit_s: Optional[float] = None,
    seed: int = 0,
    device: str = "cpu",
    quiet: bool = False,
    force: bool = False,
    command: Optional[str] = None,
) -> dict:
    """``edn train --task sudoku``: train the direction network (or, with ``baseline``, the baseline).

    Without ``puzzles``, trains on ``n_puzzles`` generated puzzles with ``givens_min``-
    ``givens_max`` givens. Writes ``<out>.safetensors`` and ``<out>.md``; returns their paths and
    sha256. By default the run is its epochs (20 epochs of 2,850 puzzles: about 12 min on 2 idle CPU
    cores) and the same seed gives the same checkpoint. ``time_limit_s`` caps the training time and
    stretches the learning-rate schedule to it, so a run ends on time whatever the load, but the
    schedule then follows the wall clock and two runs differ (the card says so).
    """
    from ..sudoku.train import TrainConfig, checkpoint_paths, save_trained, train

    ck, card = checkpoint_paths(out)
    _check_outputs([ck, card], force)
    cfg = TrainConfig(
        puzzles=None if puzzles is None else str(puzzles),
        n_puzzles=n_puzzles,
        givens_min=givens_min,
        givens_max=givens_max,
        epochs=epochs,
        batch_size=batch_size,
        lr=lr,
        channels=channels,
        blocks=blocks,
        time_limit_s=time_limit_s,
        seed=seed,
        device=_device(device),
    )
    net, meta = train(cfg, baseline=baseline, log=lambda s: _echo(s, quiet))
    info = save_trained(net, meta, out, command=command or "edn " + " ".join(sys.argv[1:]))
    _echo(f"wrote {info['checkpoint']} ({info['size'] / 1e6:.2f} MB, sha256 {info['sha256'][:12]}) and {info['card']}", quiet)
    return info
