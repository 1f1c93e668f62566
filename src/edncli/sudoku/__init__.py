"""Sudoku as convex feasibility (paper 001, §5.3-5.4).

``u`` has shape ``(B, 9, 9, 9)`` = (row, column, digit). Five convex sets: simplices along the
digit, row and column axes (C1-C3), one simplex per 3x3 box and digit (C4), and the givens (C5).
The energy ``E(u) = 1/(2N) sum_i dist(u, C_i)^2`` (eq. 25) is minimised by averaged projections
(``gd``) or by an energy dissipating network (``edn``, eq. 22 + Algorithm 1).

Modules: :mod:`.sets` (projections), :mod:`.energy`, :mod:`.puzzles` (CSV, checks, generator),
:mod:`.networks`, :mod:`.solve`, :mod:`.train`, :mod:`.evaluate`.
"""
