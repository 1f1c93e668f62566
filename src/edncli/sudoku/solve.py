"""Solving Sudokus with ``gd`` (averaged projections), ``edn`` (Algorithm 1 with the learned
direction) or ``baseline`` (one pass of a feed-forward network), and checking the result.

Every method ends the same way: the iterate ``u`` ``(B, 9, 9, 9)`` is rounded by argmax over
the digit axis and the grid is checked against the rules and the givens; a puzzle counts as
solved only if that check passes. Puzzles whose givens break the rules are reported as
infeasible (with the duplicates) and not solved.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

import numpy as np
import torch

from ..errors import CheckpointError, UsageError
from ..io.checkpoints import load_checkpoint, tensors_fit_architecture
from ..solvers.descent import LineSearch, StopRule, descend
from .energy import SudokuEnergy
from .networks import build_network
from .puzzles import PuzzleTable, check_solution, find_conflicts, grid_to_string

METHODS = ("gd", "edn", "baseline")
#: Iterations when none are asked for (paper 001 Table 2: 750 for gradient descent, 100 for edn).
DEFAULT_ITERATIONS = {"gd": 750, "edn": 100, "baseline": 1}
DEFAULT_CHECKPOINTS = {"edn": "edn-sudoku", "baseline": "sudoku-baseline"}
TASKS = {"edn": "sudoku", "baseline": "sudoku-baseline"}


# --------------------------------------------------------------------------- checks in torch


def round_grid(u: torch.Tensor) -> torch.Tensor:
    """``(B, 9, 9, 9)`` -> ``(B, 81)`` digits 1-9 by argmax over the digit axis."""
    return (u.argmax(-1) + 1).reshape(u.shape[0], 81)


def solved_mask(u: torch.Tensor, givens: torch.Tensor) -> torch.Tensor:
    """``(B,)`` bool: the rounded grid obeys the rules and keeps the givens ``(B, 9, 9)``."""
    onehot = torch.nn.functional.one_hot(u.argmax(-1), 9)  # (B, 9, 9, 9)
    rows = (onehot.sum(2) == 1).flatten(1).all(1)
    cols = (onehot.sum(1) == 1).flatten(1).all(1)
    boxes = (onehot.reshape(-1, 3, 3, 3, 3, 9).sum((2, 4)) == 1).flatten(1).all(1)
    g = givens.reshape(givens.shape[0], 81)
    keep = ((g == 0) | (g == round_grid(u))).all(1)
    return rows & cols & boxes & keep


# --------------------------------------------------------------------------- checkpoints


def resolve_checkpoint(spec: Optional[str], method: str) -> Path:
    """A checkpoint path from ``--weights`` (a path or a name, looked up as every command does:
    :func:`~edncli.io.weights.resolve_weights`), or the shipped default of ``method``."""
    from ..io.weights import resolve_weights

    name = spec or DEFAULT_CHECKPOINTS[method]
    try:
        return resolve_weights(name)
    except CheckpointError as err:
        raise CheckpointError(
            f"{err}; pass the path of a '{TASKS[method]}' .safetensors file, or train one with edn train --task sudoku"
        ) from None


def load_network(spec: Optional[str], method: str, device: str = "cpu") -> Tuple[torch.nn.Module, Dict[str, Any]]:
    """Load the ``edn`` direction network or the ``baseline`` network; returns ``(net, metadata)``."""
    path = resolve_checkpoint(spec, method)
    tensors, meta = load_checkpoint(path, expect_task=TASKS[method], device=device)
    try:
        problem = tensors_fit_architecture(meta["arch"], tensors, build_network)
        if problem:
            raise ValueError(problem)
        net = build_network(meta["arch"])
        net.load_state_dict(tensors)
    except (ValueError, KeyError, RuntimeError, TypeError, AttributeError) as exc:
        msg = (str(exc).splitlines() or [type(exc).__name__])[0]
        raise CheckpointError(f"checkpoint {path.name}: its tensors do not fit its architecture ({msg})") from None
    return net.to(device=device, dtype=torch.float32).eval(), meta


# --------------------------------------------------------------------------- methods


@dataclass
class RunOutput:
    """Result of one method on a batch: the final iterate, per-sample verdicts and timings."""

    u: torch.Tensor
    first_solved: torch.Tensor  # (B,) long: first iteration whose rounding is a solution, -1 if never
    iterations: torch.Tensor  # (B,) long: iterations run
    final_energy: torch.Tensor  # (B,)
    energy_monotone: List[Optional[bool]]  # None: no iterations, nothing was checked (the baseline)
    max_energy_increase: List[float]
    time_s: float
    trace: List[Dict[str, Any]] = field(default_factory=list)


class _Tracker:
    """Wraps a direction provider to record the first iteration at which each sample is solved."""

    def __init__(self, direction, givens: torch.Tensor):
        self.direction = direction
        self.givens = givens
        self.first = torch.full((givens.shape[0],), -1, dtype=torch.long)

    def note(self, u: torch.Tensor, k: int) -> None:
        ok = solved_mask(u, self.givens).cpu() & (self.first < 0)
        self.first[ok] = k

    def __call__(self, u: torch.Tensor, grad: torch.Tensor, k: int) -> torch.Tensor:
        self.note(u, k)
        return self.direction(u, grad, k)


def run_descent(
    givens: torch.Tensor,
    iterations: int,
    net: Optional[torch.nn.Module] = None,
    u0: Optional[torch.Tensor] = None,
    stop_when_solved: bool = False,
) -> RunOutput:
    """``gd`` (``net=None``: ``d = -grad E``, unit step = averaged projections) or ``edn``
    (``d = G(u, grad E(u), givens)``, eq. 22) under Algorithm 1 with Armijo backtracking.

    ``givens`` ``(B, 9, 9)``; ``u0`` defaults to :meth:`SudokuEnergy.initial_point`. With
    ``stop_when_solved`` a puzzle stops at the first iterate whose rounding is a solution;
    otherwise every puzzle runs to the cap (the paper's protocol).
    """
    energy = SudokuEnergy(givens)
    if u0 is None:
        u0 = energy.initial_point()
    if net is None:

        def direction(u, grad, k):
            return -grad

        line = LineSearch(initial="lipschitz")
        method = "gd"
    else:

        @torch.no_grad()
        def direction(u, grad, k):
            return net(u, grad, givens)

        line = LineSearch(initial="unit")
        method = "edn"
    tracker = _Tracker(direction, givens)
    start = time.perf_counter()
    done = (lambda u: solved_mask(u, givens)) if stop_when_solved else None
    stop = StopRule(max_iter=iterations, grad_tol=1e-9, done=done)
    res = descend(energy, u0, tracker, line=line, stop=stop, method=method)
    tracker.note(res.u, max(s.iterations for s in res.samples) if res.samples else 0)
    iters = torch.tensor([s.iterations for s in res.samples], dtype=torch.long)
    first = torch.where(tracker.first >= 0, torch.minimum(tracker.first, iters), tracker.first)
    return RunOutput(
        u=res.u,
        first_solved=first,
        iterations=iters,
        final_energy=torch.tensor([s.final_energy for s in res.samples]),
        energy_monotone=[s.energy_monotone for s in res.samples],
        max_energy_increase=[s.max_energy_increase for s in res.samples],
        time_s=time.perf_counter() - start,
        trace=[r.as_dict() for r in res.trace],
    )


@torch.no_grad()
def run_baseline(givens: torch.Tensor, net: torch.nn.Module) -> RunOutput:
    """One forward pass of the baseline network; ``u`` = softmax of its logits ``(B, 9, 9, 9)``,
    with the given cells set to their digits (projection onto C5)."""
    start = time.perf_counter()
    energy = SudokuEnergy(givens)
    u = energy.projections[4](torch.softmax(net(givens), dim=-1))
    ok = solved_mask(u, givens)
    b = givens.shape[0]
    return RunOutput(
        u=u,
        first_solved=torch.where(ok.cpu(), 1, -1).long(),
        iterations=torch.ones(b, dtype=torch.long),
        final_energy=energy.value(u).cpu(),
        energy_monotone=[None] * b,  # one network pass, no iterations: nothing was checked
        max_energy_increase=[0.0] * b,
        time_s=time.perf_counter() - start,
    )


# --------------------------------------------------------------------------- the user-facing solve


@dataclass
class SudokuReport:
    """Per-puzzle outcomes of one method on a table of puzzles, plus totals."""

    method: str
    iterations: int
    rows: List[Dict[str, Any]]
    time_s: float
    checkpoint: Optional[Dict[str, Any]] = None

    @property
    def n_solved(self) -> int:
        return sum(1 for r in self.rows if r["solved"])

    @property
    def n_infeasible(self) -> int:
        return sum(1 for r in self.rows if r["status"] == "infeasible")

    def summary(self) -> Dict[str, Any]:
        """Totals; accuracies only where solutions are known (all cells, givens included)."""
        out: Dict[str, Any] = {
            "method": self.method,
            "iterations": self.iterations,
            "puzzles": len(self.rows),
            "solved": self.n_solved,
            "infeasible": self.n_infeasible,
            "solved_rate": self.n_solved / max(len(self.rows), 1),
            "time_s": self.time_s,
            "energy_monotone": _all_checked(r["energy_monotone"] for r in self.rows),
        }
        accs = [r["cell_accuracy"] for r in self.rows if r.get("cell_accuracy") is not None]
        if accs and len(accs) == len(self.rows):
            out["cell_accuracy"] = float(np.mean(accs))
            out["blank_accuracy"] = float(np.mean([r["blank_accuracy"] for r in self.rows]))
        its = [r["iterations"] for r in self.rows if r["status"] != "infeasible"]
        out["mean_iterations"] = float(np.mean(its)) if its else 0.0
        return out

    def as_dict(self) -> Dict[str, Any]:
        return {"summary": self.summary(), "checkpoint": self.checkpoint, "puzzles": self.rows}


def _all_checked(flags) -> Optional[bool]:
    """True when every checked flag is True, False when one is not, None when none was checked."""
    checked = [f for f in flags if f is not None]
    return None if not checked else all(checked)


def monotone_word(flag: Optional[bool]) -> str:
    """``yes``, ``NO``, or ``-`` where nothing was checked (the baseline's one pass)."""
    return "-" if flag is None else ("yes" if flag else "NO")


def infeasible_energy(puzzle: np.ndarray, device: str = "cpu") -> float:
    """The energy at the initial point of a puzzle whose givens break the rules.

    C5 and C1-C4 are disjoint then: E > 0 at every u (this value is E at the start, not its
    minimum).
    """
    e = SudokuEnergy(torch.tensor(puzzle, dtype=torch.long, device=device).view(1, 9, 9))
    return float(e.value(e.initial_point()))


def solve_table(
    table: PuzzleTable,
    method: str = "edn",
    iterations: Optional[int] = None,
    weights: Optional[str] = None,
    batch_size: int = 256,
    device: str = "cpu",
    net: Optional[torch.nn.Module] = None,
    progress=None,
    stop_when_solved: bool = False,
) -> SudokuReport:
    """Solve every puzzle of ``table`` with ``method`` and check each result.

    Parameters
    ----------
    table: puzzles ``(n, 81)``; solutions, when present, add cell accuracies to the rows.
    method: ``gd``, ``edn`` or ``baseline``.
    iterations: cap for ``gd``/``edn`` (default 750 / the checkpoint's default, 100).
    weights: checkpoint name or path for ``edn``/``baseline`` (ignored if ``net`` is given).
    progress: optional ``callable(done, total)`` after each batch.
    stop_when_solved: ``gd``/``edn`` stop each puzzle once its rounding is a solution (else run to the cap).
    """
    if method not in METHODS:
        raise UsageError(f"--method {method}: unknown; choose one of {', '.join(METHODS)}")
    if iterations is not None and iterations < 0:
        raise UsageError(f"--iterations {iterations}: must be >= 0")
    if batch_size < 1:
        raise UsageError(f"--batch-size {batch_size}: must be >= 1")
    meta: Optional[Dict[str, Any]] = None
    if method != "gd" and net is None:
        net, meta = load_network(weights, method, device)
    if iterations is None:
        iterations = int((meta or {}).get("default_iterations", DEFAULT_ITERATIONS[method]))
    if method == "baseline":
        iterations = 1

    n = len(table)
    conflicts = [find_conflicts(p) for p in table.puzzles]
    feasible = [i for i in range(n) if not conflicts[i]]
    rows: List[Optional[Dict[str, Any]]] = [None] * n
    start = time.perf_counter()
    for i in range(n):
        if conflicts[i]:
            rows[i] = {
                "id": table.ids[i],
                "puzzle": grid_to_string(table.puzzles[i]),
                "grid": "",
                "solved": False,
                "status": "infeasible",
                "problems": conflicts[i],
                "energy": infeasible_energy(table.puzzles[i], device),
                "iterations": 0,
                "energy_monotone": None,  # not run
                "cell_accuracy": None,
                "blank_accuracy": None,
            }
    for b0 in range(0, len(feasible), batch_size):
        idx = feasible[b0 : b0 + batch_size]
        givens = torch.tensor(table.puzzles[idx], dtype=torch.long, device=device).view(-1, 9, 9)
        if method == "baseline":
            out = run_baseline(givens, net)  # type: ignore[arg-type]
        else:
            out = run_descent(givens, iterations, net if method == "edn" else None, stop_when_solved=stop_when_solved)
        grids = round_grid(out.u).cpu().numpy()
        for j, i in enumerate(idx):
            problems = check_solution(grids[j], table.puzzles[i])
            solved = not problems
            row: Dict[str, Any] = {
                "id": table.ids[i],
                "puzzle": grid_to_string(table.puzzles[i]),
                "grid": grid_to_string(grids[j]),
                "solved": solved,
                "status": "solved" if solved else "not solved",
                "problems": problems,
                "energy": float(out.final_energy[j]),
                "iterations": int(out.first_solved[j]) if solved and out.first_solved[j] >= 0 else int(out.iterations[j]),
                "iterations_run": int(out.iterations[j]),
                "energy_monotone": None if out.energy_monotone[j] is None else bool(out.energy_monotone[j]),
                "max_energy_increase": float(out.max_energy_increase[j]),
                "cell_accuracy": None,
                "blank_accuracy": None,
            }
            if table.solutions is not None:
                sol = table.solutions[i]
                right = grids[j] == sol
                blank = table.puzzles[i] == 0
                row["cell_accuracy"] = float(right.mean())
                row["blank_accuracy"] = float(right[blank].mean()) if blank.any() else 1.0
                row["matches_reference"] = bool(right.all())
            if table.labels is not None:
                row["label"] = table.labels[i]
            rows[i] = row
        if progress is not None:
            progress(min(b0 + batch_size, len(feasible)), len(feasible))
    ck = None
    if meta is not None:
        ck = {"file": meta.get("file"), "sha256": meta.get("sha256"), "task": meta.get("task"), "arch": meta.get("arch")}
    return SudokuReport(method=method, iterations=iterations, rows=rows, time_s=time.perf_counter() - start, checkpoint=ck)  # type: ignore[arg-type]
