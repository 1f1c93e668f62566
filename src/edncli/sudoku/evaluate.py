"""``edn eval sudoku``: compare ``gd``, ``baseline`` and ``edn`` on puzzles with known solutions
(paper 001 Table 2: cell accuracy, fraction solved; plus mean iterations and wall time).

Cell accuracy counts all 81 cells (givens included), as the paper's accuracy does;
``blank_accuracy`` counts only the blank cells. ``iterations`` is, per puzzle, the first
iteration whose rounding solves it, or the iterations run when it is never solved.
"""

from __future__ import annotations

import datetime
import platform
from pathlib import Path
from typing import Any, Dict, List, Optional

import numpy as np

from ..errors import InputError, UsageError
from .puzzles import check_solution, read_puzzles
from .solve import METHODS, monotone_word, solve_table


def evaluate_methods(
    puzzles: str | Path,
    methods: List[str],
    label: Optional[str] = None,
    limit: Optional[int] = None,
    gd_iterations: Optional[int] = None,
    edn_iterations: Optional[int] = None,
    weights: Optional[str] = None,
    baseline_weights: Optional[str] = None,
    device: str = "cpu",
) -> Dict[str, Any]:
    """Run each method on the same puzzles; returns ``{"puzzles", "methods", "by_label", "rows"}``.

    ``methods.<name>`` holds ``cell_accuracy``, ``blank_accuracy``, ``solved_rate``,
    ``iterations`` (mean), ``time_s``, ``energy_monotone``; ``rows`` one dict per puzzle.
    """
    bad = [m for m in methods if m not in METHODS]
    if bad or not methods:
        raise UsageError(f"--methods {','.join(methods)}: unknown {', '.join(bad) or '(none)'}; choose from {', '.join(METHODS)}")
    if len(set(methods)) < len(methods):
        raise UsageError(f"--methods {','.join(methods)}: a method is listed more than once; give each method once")
    for option, value in (("--gd-iterations", gd_iterations), ("--edn-iterations", edn_iterations)):
        if value is not None and value < 0:
            raise UsageError(f"{option} {value}: must be >= 0")
    for option, value, method in (("--gd-iterations", gd_iterations, "gd"), ("--edn-iterations", edn_iterations, "edn"),
                                  ("--weights", weights, "edn"), ("--baseline-weights", baseline_weights, "baseline")):
        if value is not None and method not in methods:
            raise UsageError(f"{option} is read by method {method}, which --methods {','.join(methods)} does not run; "
                             f"add {method} or drop {option}")
    gd_iterations = 750 if gd_iterations is None else gd_iterations
    table = read_puzzles(puzzles)
    if table.solutions is None:
        raise InputError(f"{Path(puzzles).name}: evaluation needs a 'solution' for every puzzle (a CSV with puzzle,solution columns)")
    idx = list(range(len(table)))
    if label is not None:
        if table.labels is None:
            raise UsageError(f"--label {label}: {Path(puzzles).name} has no 'label' column; drop --label")
        idx = [i for i in idx if table.labels[i] == label]
        if not idx:
            raise UsageError(f"--label {label}: no rows with this label; labels present: {', '.join(sorted(set(table.labels)))}")
    if limit is not None:
        if limit < 1:
            raise UsageError(f"--limit {limit}: must be >= 1")
        idx = idx[:limit]
    table = table.subset(idx)
    for i in range(len(table)):  # accuracies are measured against the solutions: they must be solutions
        wrong = check_solution(table.solutions[i], table.puzzles[i])
        if wrong:
            line = f"line {table.lines[i]}" if table.lines else f"puzzle {table.ids[i]}"
            raise InputError(f"{Path(puzzles).name} {line}: the solution is not a solution of its puzzle ({wrong[0]})")
    givens = (table.puzzles > 0).sum(1)
    out: Dict[str, Any] = {
        "puzzles": {
            "file": str(puzzles),
            "label": label,
            "count": len(table),
            "givens_min": int(givens.min()),
            "givens_max": int(givens.max()),
            "givens_mean": float(givens.mean()),
        },
        "date": datetime.datetime.now().isoformat(timespec="seconds"),
        "machine": platform.processor() or platform.machine(),
        "methods": {},
        "by_label": {},
        "rows": [
            {"id": table.ids[i], "givens": int(givens[i]), **({"label": table.labels[i]} if table.labels else {})}
            for i in range(len(table))
        ],
    }
    for m in methods:
        its = gd_iterations if m == "gd" else edn_iterations if m == "edn" else None
        w = baseline_weights if m == "baseline" else weights if m == "edn" else None
        rep = solve_table(table, m, its, w, device=device)
        s = rep.summary()
        out["methods"][m] = {
            "cell_accuracy": s["cell_accuracy"],
            "blank_accuracy": s["blank_accuracy"],
            "solved_rate": s["solved_rate"],
            "iterations": s["mean_iterations"],
            "max_iterations": rep.iterations,
            "time_s": s["time_s"],
            "energy_monotone": s["energy_monotone"],
            "checkpoint": rep.checkpoint,
        }
        if table.labels:
            labs: Dict[str, List[bool]] = {}
            for r in rep.rows:
                labs.setdefault(r.get("label", ""), []).append(r["solved"])
            out["by_label"][m] = {k: float(np.mean(v)) for k, v in sorted(labs.items())}
        for row, r in zip(out["rows"], rep.rows):
            row[m] = {
                "solved": r["solved"],
                "cell_accuracy": r["cell_accuracy"],
                "iterations": r["iterations"],
                "energy": r["energy"],
            }
    return out


def format_table(table: Dict[str, Any]) -> str:
    """The comparison as aligned text lines."""
    p = table["puzzles"]
    lines = [
        f"{p['count']} puzzles from {p['file']}" + (f" (label {p['label']})" if p["label"] else "")
        + f", givens {p['givens_min']}-{p['givens_max']}",
        f"{'method':<10}{'iters':>7}{'cell acc':>10}{'solved':>9}{'mean it':>9}{'time s':>9}  monotone",
    ]
    for m, r in table["methods"].items():
        lines.append(
            f"{m:<10}{r['max_iterations']:>7}{100 * r['cell_accuracy']:>9.1f}%{100 * r['solved_rate']:>8.1f}%"
            f"{r['iterations']:>9.1f}{r['time_s']:>9.1f}  {monotone_word(r['energy_monotone'])}"
        )
    for m, labs in table.get("by_label", {}).items():
        if len(labs) > 1:
            lines.append(f"{m} solved by label: " + ", ".join(f"{k} {100 * v:.0f}%" for k, v in labs.items()))
    return "\n".join(lines)
