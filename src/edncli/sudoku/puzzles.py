"""Sudoku puzzles: parsing, CSV reading and writing, rule checks, an exact solution counter and a
generator of puzzles with unique solutions.

A grid is a length-81 integer array in row-major order, 0 = blank, 1-9 = digit. Puzzle strings
are 81 characters, ``0`` or ``.`` for blanks.
"""

from __future__ import annotations

import csv
import io
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import List, Optional, Sequence, Tuple

import numpy as np

from ..errors import InputError, UsageError

BLANKS = "0."
_ROW = [i // 9 for i in range(81)]
_COL = [i % 9 for i in range(81)]
_BOX = [(i // 27) * 3 + (i % 9) // 3 for i in range(81)]
FULL = 0x1FF


# --------------------------------------------------------------------------- parsing


def parse_grid(text: str, what: str = "puzzle", where: str = "", allow_blanks: bool = True) -> np.ndarray:
    """Parse an 81-character string into a ``(81,)`` int8 grid; raise :class:`InputError` if malformed.

    ``where`` prefixes the message (e.g. ``"puzzles.csv line 3: "``).
    """
    s = text.strip()
    shown = s if len(s) <= 20 else s[:17] + "..."
    if len(s) != 81:
        raise InputError(
            f"{where}{what} '{shown}' has {len(s)} characters, expected 81 "
            f"(digits 1-9{', and 0 or . for blanks' if allow_blanks else ''})"
        )
    out = np.zeros(81, dtype=np.int8)
    for i, ch in enumerate(s):
        if ch in "123456789":
            out[i] = ord(ch) - 48
        elif allow_blanks and ch in BLANKS:
            out[i] = 0
        else:
            allowed = "digits 1-9, and 0 or . for blanks" if allow_blanks else "digits 1-9 only"
            raise InputError(
                f"{where}{what} has the character {ch!r} at position {i + 1} (row {i // 9 + 1}, column {i % 9 + 1}); "
                f"allowed are {allowed}"
            )
    return out


def grid_to_string(grid: Sequence[int], blank: str = "0") -> str:
    """``(81,)`` grid -> 81-character string."""
    return "".join(str(int(v)) if v else blank for v in grid)


def looks_like_puzzle(text: str) -> bool:
    """True for a string made only of digits and ``.`` (a puzzle, possibly of the wrong length)."""
    s = text.strip()
    return bool(s) and all(ch in "0123456789." for ch in s)


@dataclass
class PuzzleTable:
    """Puzzles read from a file: ``puzzles`` ``(n, 81)`` int8, optional ``solutions`` ``(n, 81)``."""

    ids: List[str]
    puzzles: np.ndarray
    solutions: Optional[np.ndarray] = None
    labels: Optional[List[str]] = None
    source: str = ""
    lines: List[int] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.ids)

    def subset(self, idx: Sequence[int]) -> "PuzzleTable":
        idx = list(idx)
        return PuzzleTable(
            ids=[self.ids[i] for i in idx],
            puzzles=self.puzzles[idx],
            solutions=None if self.solutions is None else self.solutions[idx],
            labels=None if self.labels is None else [self.labels[i] for i in idx],
            source=self.source,
            lines=[self.lines[i] for i in idx] if self.lines else [],
        )


_PUZZLE_KEYS = ("puzzle", "puzzles", "quizzes", "quiz")
_SOLUTION_KEYS = ("solution", "solutions")


def _is_grid_field(s: str) -> bool:
    s = s.strip()
    return len(s) == 81 and looks_like_puzzle(s)


def read_puzzles(path: str | Path) -> PuzzleTable:
    """Read puzzles (and solutions, ids, labels when present) from a CSV or plain text file.

    Accepted layouts: a CSV with a ``puzzle`` column (optional ``solution``, ``id``, ``label``);
    a bare file of puzzle strings, one per line, with or without a header line; and header-less
    ``puzzle,solution`` rows. Raises :class:`InputError` naming the file and line for anything else.
    """
    path = Path(path)
    if not path.exists():
        raise InputError(f"puzzle file {path}: no such file; pass an existing CSV or an 81-character puzzle string")
    if path.is_dir():
        raise InputError(f"puzzle file {path}: is a folder; pass a CSV file of puzzles")
    try:
        text = path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError:
        raise InputError(f"puzzle file {path}: not a UTF-8 text file; pass a CSV of 81-character puzzles") from None
    except OSError as exc:
        raise InputError(f"puzzle file {path}: cannot be read ({exc.strerror})") from None
    rows = [(n + 1, r) for n, r in enumerate(csv.reader(io.StringIO(text))) if r and any(f.strip() for f in r)]
    empty_msg = (
        f"puzzle file {path}: no puzzles found; expected one 81-character puzzle per line "
        "or a CSV with a 'puzzle' column"
    )
    if not rows:
        raise InputError(f"{empty_msg} (the file is empty)")
    first = [f.strip() for f in rows[0][1]]
    has_header = not any(_is_grid_field(f) for f in first)
    p_col, s_col, id_col, label_col = 0, None, None, None
    if has_header:
        lower = [f.lower() for f in first]
        named = [i for i, f in enumerate(lower) if f in _PUZZLE_KEYS]
        if named:
            p_col = named[0]
        elif len(first) == 1 and not looks_like_puzzle(first[0]):
            p_col = 0
        elif len(first) == 1:
            parse_grid(first[0], where=f"{path.name} line {rows[0][0]}: ")  # raises the length error
        else:
            raise InputError(f"{path.name}: no 'puzzle' column; its columns are {', '.join(first)}")
        s_col = next((i for i, f in enumerate(lower) if f in _SOLUTION_KEYS), None)
        id_col = next((i for i, f in enumerate(lower) if f == "id"), None)
        label_col = next((i for i, f in enumerate(lower) if f in ("label", "difficulty")), None)
        body = rows[1:]
    else:
        body = rows
        if len(first) >= 2 and _is_grid_field(first[1]) and "0" not in first[1] and "." not in first[1]:
            s_col = 1
    if not body:
        raise InputError(f"{empty_msg} (only a header line)")
    ids, puzzles, solutions, labels, lines = [], [], [], [], []
    for line, fields in body:
        where = f"{path.name} line {line}: "
        if p_col >= len(fields):
            raise InputError(f"{where}has no puzzle field (column {p_col + 1})")
        puzzles.append(parse_grid(fields[p_col], where=where))
        if s_col is not None:
            sol = fields[s_col].strip() if s_col < len(fields) else ""
            solutions.append(parse_grid(sol, what="solution", where=where, allow_blanks=False) if sol else None)
        ids.append(fields[id_col].strip() if id_col is not None and id_col < len(fields) else str(len(ids) + 1))
        labels.append(fields[label_col].strip() if label_col is not None and label_col < len(fields) else "")
        lines.append(line)
    sol_arr = None
    if s_col is not None and all(s is not None for s in solutions):
        sol_arr = np.stack(solutions)  # type: ignore[arg-type]
    return PuzzleTable(
        ids=ids,
        puzzles=np.stack(puzzles),
        solutions=sol_arr,
        labels=labels if label_col is not None else None,
        source=str(path),
        lines=lines,
    )


def puzzles_from_argument(arg: str) -> PuzzleTable:
    """The ``PUZZLE`` argument of ``edn sudoku solve``: a puzzle string, or a file of puzzles.

    A malformed puzzle string is a bad argument value (:class:`UsageError`); problems in a file
    are input errors (:class:`InputError`).
    """
    p = Path(arg)
    malformed = not arg.strip() or (len(arg.strip()) == 81 and not p.exists())  # a puzzle string, not a file
    if (looks_like_puzzle(arg) or malformed) and not p.is_file():
        try:
            grid = parse_grid(arg, where="argument PUZZLE: ")
        except InputError as exc:
            raise UsageError(str(exc)) from None
        return PuzzleTable(ids=["1"], puzzles=grid[None], source="argument", lines=[0])
    if not p.exists():
        raise InputError(
            f"argument PUZZLE {arg!r}: neither an 81-character puzzle string nor an existing file; "
            "pass e.g. 530070000600195000... or puzzles.csv"
        )
    return read_puzzles(p)


def solutions_csv(ids: Sequence[str], puzzles: np.ndarray, rows: Sequence[dict]) -> bytes:
    """``id,puzzle,solution,status`` rows as CSV bytes."""
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["id", "puzzle", "solution", "status"])
    for pid, puz, row in zip(ids, puzzles, rows):
        w.writerow([pid, grid_to_string(puz), row.get("grid", ""), row["status"]])
    return buf.getvalue().encode()


# --------------------------------------------------------------------------- rules


def _unit_name(kind: str, k: int) -> str:
    if kind == "box":
        return f"box {k + 1} (rows {3 * (k // 3) + 1}-{3 * (k // 3) + 3}, columns {3 * (k % 3) + 1}-{3 * (k % 3) + 3})"
    return f"{kind} {k + 1}"


def find_conflicts(grid: Sequence[int]) -> List[str]:
    """Rule violations among the filled cells of ``grid`` (``(81,)``): duplicate digits per unit.

    Returns one message per duplicate, e.g. ``"digit 5 twice in row 1 (r1c1, r1c4)"``; empty if none.
    """
    out = []
    g = [int(v) for v in grid]
    for kind, key in (("row", _ROW), ("column", _COL), ("box", _BOX)):
        for k in range(9):
            seen: dict = {}
            for i in range(81):
                if key[i] == k and g[i]:
                    seen.setdefault(g[i], []).append(i)
            for digit, cells in sorted(seen.items()):
                if len(cells) > 1:
                    where = ", ".join(f"r{i // 9 + 1}c{i % 9 + 1}" for i in cells)
                    times = "twice" if len(cells) == 2 else f"{len(cells)} times"
                    out.append(f"digit {digit} {times} in {_unit_name(kind, k)} ({where})")
    return out


def check_solution(grid: Sequence[int], puzzle: Sequence[int]) -> List[str]:
    """Why ``grid`` is not a solution of ``puzzle`` (both ``(81,)``); an empty list means solved."""
    problems = []
    blanks = sum(1 for v in grid if not 1 <= int(v) <= 9)
    if blanks:
        problems.append(f"{blanks} cells not filled")
    changed = [i for i in range(81) if puzzle[i] and int(grid[i]) != int(puzzle[i])]
    if changed:
        problems.append(f"{len(changed)} givens changed")
    problems += find_conflicts(grid)
    return problems


# --------------------------------------------------------------------------- exact solver


def _masks(grid: Sequence[int]) -> Optional[Tuple[List[int], List[int], List[int]]]:
    rows, cols, boxes = [0] * 9, [0] * 9, [0] * 9
    for i, v in enumerate(grid):
        if v:
            bit = 1 << (int(v) - 1)
            r, c, b = _ROW[i], _COL[i], _BOX[i]
            if (rows[r] | cols[c] | boxes[b]) & bit:
                return None
            rows[r] |= bit
            cols[c] |= bit
            boxes[b] |= bit
    return rows, cols, boxes


def _search(grid: List[int], limit: int, rng: Optional[random.Random]) -> Tuple[int, Optional[List[int]]]:
    """Depth-first search with the most-constrained-cell heuristic on bitmasks.

    Returns ``(number of solutions found, up to limit; the first solution)``.
    """
    m = _masks(grid)
    if m is None:
        return 0, None
    rows, cols, boxes = m
    empties = [i for i in range(81) if not grid[i]]
    found = [0]
    first: List[Optional[List[int]]] = [None]

    def dfs(n_left: int) -> bool:
        if n_left == 0:
            found[0] += 1
            if first[0] is None:
                first[0] = list(grid)
            return found[0] >= limit
        best_j, best_mask, best_n = -1, 0, 10
        for j in range(n_left):
            i = empties[j]
            cand = FULL & ~(rows[_ROW[i]] | cols[_COL[i]] | boxes[_BOX[i]])
            n = cand.bit_count()
            if n < best_n:
                best_j, best_mask, best_n = j, cand, n
                if n <= 1:
                    break
        if best_n == 0:
            return False
        i = empties[best_j]
        empties[best_j], empties[n_left - 1] = empties[n_left - 1], empties[best_j]
        r, c, b = _ROW[i], _COL[i], _BOX[i]
        bits = [1 << k for k in range(9) if best_mask >> k & 1]
        if rng is not None:
            rng.shuffle(bits)
        for bit in bits:
            rows[r] |= bit
            cols[c] |= bit
            boxes[b] |= bit
            grid[i] = bit.bit_length()
            stop = dfs(n_left - 1)
            rows[r] &= ~bit
            cols[c] &= ~bit
            boxes[b] &= ~bit
            grid[i] = 0
            if stop:
                empties[best_j], empties[n_left - 1] = empties[n_left - 1], empties[best_j]
                return True
        empties[best_j], empties[n_left - 1] = empties[n_left - 1], empties[best_j]
        return False

    dfs(len(empties))
    return found[0], first[0]


def count_solutions(puzzle: Sequence[int], limit: int = 2) -> int:
    """Number of solutions of ``puzzle`` (``(81,)``), counting no further than ``limit``."""
    return _search([int(v) for v in puzzle], limit, None)[0]


def solve_exact(puzzle: Sequence[int]) -> Optional[np.ndarray]:
    """One solution by exhaustive search (the reference, not a method), or None if there is none."""
    n, sol = _search([int(v) for v in puzzle], 1, None)
    return np.array(sol, dtype=np.int8) if n else None


# --------------------------------------------------------------------------- generator


def random_full_grid(rng: random.Random) -> np.ndarray:
    """A uniformly shuffled valid complete grid, by randomized backtracking from the empty grid."""
    _, sol = _search([0] * 81, 1, rng)
    assert sol is not None
    return np.array(sol, dtype=np.int8)


def generate_puzzle(rng: random.Random, givens: int = 36) -> Tuple[np.ndarray, np.ndarray]:
    """A puzzle with a unique solution and (about) ``givens`` givens; returns ``(puzzle, solution)``.

    From a random complete grid, cells are blanked in random order; a blank that would admit a
    second solution (checked by :func:`count_solutions`) is put back. Stops at ``givens`` givens
    or when no cell can be removed (then the puzzle keeps more givens: minimal puzzles of 17-30
    givens are common, so very low targets are not always reached). ``givens`` is the difficulty
    knob: fewer givens = harder.
    """
    if not 17 <= givens <= 81:
        raise UsageError(f"givens={givens}: must be between 17 and 81 (fewer is harder; 36-37 is 'easy')")
    solution = random_full_grid(rng)
    puzzle = [int(v) for v in solution]
    order = list(range(81))
    rng.shuffle(order)
    filled = 81
    for i in order:
        if filled <= givens:
            break
        keep = puzzle[i]
        puzzle[i] = 0
        if count_solutions(puzzle, 2) != 1:
            puzzle[i] = keep
        else:
            filled -= 1
    return np.array(puzzle, dtype=np.int8), solution


def generate_puzzles(
    n: int, givens: Tuple[int, int] = (30, 40), seed: int = 0
) -> Tuple[np.ndarray, np.ndarray]:
    """``n`` generated puzzles with givens drawn uniformly from ``givens`` (inclusive range).

    Returns ``(puzzles, solutions)``, both ``(n, 81)`` int8. Deterministic given ``seed``.
    """
    lo, hi = givens
    if lo > hi:
        raise UsageError(f"givens range {lo}-{hi}: the lower end must not exceed the upper end")
    rng = random.Random(seed)
    ps, ss = [], []
    for _ in range(n):
        p, s = generate_puzzle(rng, rng.randint(lo, hi))
        ps.append(p)
        ss.append(s)
    return np.stack(ps), np.stack(ss)
