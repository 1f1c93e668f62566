"""Sudoku: puzzle files and bad input, the generator, gd/edn solving (energy monotone), the CLI
end to end with exit codes, and a tiny training run that writes a loadable checkpoint."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from edncli.errors import CheckpointError, EdnError, InputError, UsageError
from edncli.sudoku.networks import SudokuDirectionNet
from edncli.sudoku.puzzles import (
    check_solution,
    count_solutions,
    find_conflicts,
    generate_puzzles,
    parse_grid,
    puzzles_from_argument,
    read_puzzles,
    solve_exact,
)
from edncli.sudoku.solve import run_descent, solve_table, solved_mask

EASY = "530070000600195000098000060800060003400803001700020006060000280000419005000080079"
EASY_SOLUTION = "534678912672195348198342567859761423426853791713924856961537284287419635345286179"
DUPLICATE = "550070000600195000098000060800060003400803001700020006060000280000419005000080079"


def invoke(args, **kw):
    """Run the sudoku Typer app as ``edn`` does: an EdnError becomes its exit code."""
    from edncli.cli.sudoku import app

    res = CliRunner().invoke(app, args, **kw)
    code = res.exception.exit_code if isinstance(res.exception, EdnError) else res.exit_code
    return res, code


# ----------------------------------------------------------------------------- puzzles


def test_parse_and_check():
    g = parse_grid(EASY.replace("0", "."))
    assert (g == parse_grid(EASY)).all()
    assert check_solution(parse_grid(EASY_SOLUTION), g) == []
    assert solve_exact(g).tolist() == parse_grid(EASY_SOLUTION).tolist()
    assert count_solutions(g) == 1
    assert find_conflicts(parse_grid(DUPLICATE)) == [
        "digit 5 twice in row 1 (r1c1, r1c2)",
        "digit 5 twice in box 1 (rows 1-3, columns 1-3) (r1c1, r1c2)",
    ]
    assert "givens changed" in " ".join(check_solution(parse_grid(EASY_SOLUTION), parse_grid(DUPLICATE)))


@pytest.mark.parametrize(
    "text, fragment",
    [(EASY[:-1], "has 80 characters"), (EASY[:-1] + "x", "character 'x' at position 81"), ("", "has 0 characters")],
)
def test_parse_bad_strings(text, fragment):
    with pytest.raises(InputError, match=fragment):
        parse_grid(text)


def test_read_layouts(tmp_path: Path):
    (tmp_path / "bare.txt").write_text(f"{EASY}\n{EASY.replace('0', '.')}\n")
    (tmp_path / "header.csv").write_text(f"quizzes\n{EASY}\n")
    (tmp_path / "ps.csv").write_text(f"puzzle,solution\n{EASY},{EASY_SOLUTION}\n")
    (tmp_path / "dev.csv").write_text(f"id,puzzle,solution,givens,label\nx1,{EASY},{EASY_SOLUTION},30,easy\n")
    assert len(read_puzzles(tmp_path / "bare.txt")) == 2
    assert read_puzzles(tmp_path / "header.csv").solutions is None
    assert read_puzzles(tmp_path / "ps.csv").solutions.shape == (1, 81)
    t = read_puzzles(tmp_path / "dev.csv")
    assert t.ids == ["x1"] and t.labels == ["easy"]


@pytest.mark.parametrize(
    "content, fragment",
    [
        ("", "the file is empty"),
        ("puzzle,solution\n", "only a header line"),
        (f"puzzle\n{EASY[:70]}\n", "line 2: puzzle '53007000060019500...' has 70 characters"),
        ("a,b\n1,2\n", "no 'puzzle' column"),
    ],
)
def test_read_bad_files(tmp_path: Path, content, fragment):
    p = tmp_path / "p.csv"
    p.write_text(content)
    with pytest.raises(InputError, match=fragment.replace("(", r"\(").replace(".", r"\.")):
        read_puzzles(p)


def test_argument_is_string_or_file(tmp_path: Path):
    assert len(puzzles_from_argument(EASY)) == 1
    with pytest.raises(InputError, match="neither an 81-character puzzle string nor an existing file"):
        puzzles_from_argument(str(tmp_path / "missing.csv"))
    with pytest.raises(UsageError, match="has 5 characters"):  # a bad argument value, not a bad file
        puzzles_from_argument("53007")


def test_generator_unique_and_difficulty_knob():
    p, s = generate_puzzles(6, (30, 36), seed=11)
    for puz, sol in zip(p, s):
        assert count_solutions(puz) == 1
        assert check_solution(sol, puz) == []
        assert 30 <= (puz > 0).sum() <= 36
    p2, _ = generate_puzzles(6, (30, 36), seed=11)
    assert (p == p2).all()
    with pytest.raises(UsageError):
        generate_puzzles(1, (40, 30))


# ----------------------------------------------------------------------------- solving


def test_gd_solves_known_easy_puzzle_with_monotone_energy():
    g = torch.tensor(parse_grid(EASY), dtype=torch.long).view(1, 9, 9)
    out = run_descent(g, 2000)  # averaged projections solve it at iteration 1754
    assert bool(solved_mask(out.u, g)[0])
    assert all(out.energy_monotone)
    energies = [r["energy"] for r in out.trace]
    assert all(b <= a * (1 + 1e-5) + 1e-12 for a, b in zip(energies, energies[1:]))


def test_stop_when_solved_ends_each_puzzle_at_its_first_solution():
    # a batch of the README's easy puzzle (solved by edn at iteration 1) and the classic one
    # (averaged projections need 1754 iterations): with the stop, the first ends at its solution
    # and the second runs on to the cap; without it, both run to the cap
    from edncli.sudoku.solve import load_network

    readme_easy = "007000325000900100040528090870004600609307050000100008100430067003006240020759030"
    g = torch.tensor(np.stack([parse_grid(readme_easy), parse_grid(EASY)]), dtype=torch.long).view(2, 9, 9)
    net, _ = load_network(None, "edn")
    out = run_descent(g, 20, net, stop_when_solved=True)
    assert out.iterations.tolist() == [int(out.first_solved[0]), 20] and 1 <= int(out.first_solved[0]) < 20
    assert bool(solved_mask(out.u, g)[0]) and all(out.energy_monotone)
    full = run_descent(g, 20, net)
    assert full.iterations.tolist() == [20, 20] and int(full.first_solved[0]) == int(out.first_solved[0])


def test_edn_energy_monotone_for_any_network():
    """The guarantee does not depend on training: an untrained network still only descends."""
    torch.manual_seed(0)
    net = SudokuDirectionNet(channels=8, blocks=1).eval()
    p, _ = generate_puzzles(3, (26, 36), seed=2)
    g = torch.tensor(p, dtype=torch.long).view(-1, 9, 9)
    out = run_descent(g, 20, net)
    assert all(out.energy_monotone)
    assert max(out.max_energy_increase) <= 1e-6
    e = [r["energy"] for r in out.trace]
    assert e[-1] < e[0]


def test_solve_table_reports_infeasible_and_accuracy(tmp_path: Path):
    p = tmp_path / "ps.csv"
    p.write_text(f"puzzle,solution\n{EASY},{EASY_SOLUTION}\n{DUPLICATE},{EASY_SOLUTION}\n")
    rep = solve_table(read_puzzles(p), "gd", iterations=2000)
    assert rep.rows[0]["solved"] and rep.rows[0]["cell_accuracy"] == 1.0
    assert rep.rows[1]["status"] == "infeasible" and rep.rows[1]["energy"] > 0
    assert rep.summary()["solved"] == 1


# ----------------------------------------------------------------------------- CLI


def test_cli_solve_string_gd():
    res, code = invoke(["solve", EASY, "--method", "gd", "--iterations", "2000"])
    assert code == 0, res.output
    assert EASY_SOLUTION in res.output


def test_cli_solve_exit_3_when_not_solved(tmp_path: Path):
    out, js = tmp_path / "s.csv", tmp_path / "r.json"
    res, code = invoke(["solve", EASY, "--method", "gd", "--iterations", "2", "--out", str(out), "--json", str(js)])
    assert code == 3, res.output
    assert "(not solved: " in res.output  # the rounded grid is marked, with a rule it breaks
    assert out.read_text().splitlines()[1].endswith("not solved")
    doc = json.loads(js.read_text())
    assert doc["summary"]["solved"] == 0 and doc["puzzles"][0]["energy_monotone"]
    res, code = invoke(["solve", EASY, "--method", "gd", "--out", str(out)])
    assert code == 2 and "already exists" in str(res.exception)


@pytest.mark.parametrize(
    "arg, code, fragment",
    [
        (EASY[:-2], 2, "has 79 characters"),
        (EASY[:-1], 2, "has 80 characters"),
        (DUPLICATE, 2, "infeasible: digit 5 twice in row 1"),
        ("nope.csv", 4, "neither an 81-character puzzle string nor an existing file"),
    ],
)
def test_cli_bad_input(arg, code, fragment):
    res, got = invoke(["solve", arg, "--method", "gd", "--iterations", "5"])
    assert got == code
    assert fragment in str(res.exception)
    assert "\n" not in str(res.exception)
    assert res.stdout == ""  # no grid or summary line before the error


def test_cli_infeasible_puzzle_in_a_file_is_an_input_error(tmp_path: Path):
    p = tmp_path / "ps.csv"
    p.write_text(f"puzzle\n{DUPLICATE}\n")
    res, code = invoke(["solve", str(p), "--method", "gd", "--iterations", "5"])
    assert code == 4 and "infeasible: digit 5 twice in row 1" in str(res.exception)


def test_cli_bad_method_and_missing_weights(tmp_path: Path):
    res, code = invoke(["solve", EASY, "--method", "magic"])
    assert code == 2
    res, code = invoke(["solve", EASY, "--method", "edn", "--weights", str(tmp_path / "none.safetensors")])
    assert code == 4 and isinstance(res.exception, CheckpointError)


def test_cli_empty_file(tmp_path: Path):
    p = tmp_path / "empty.csv"
    p.write_text("")
    res, code = invoke(["solve", str(p)])
    assert code == 4 and "no puzzles found" in str(res.exception)


def test_tiny_training_writes_loadable_checkpoint(tmp_path: Path):
    from edncli.cli.sudoku import train_command
    from edncli.io.checkpoints import load_checkpoint

    info = train_command(
        out=tmp_path / "tiny", epochs=1, n_puzzles=24, batch_size=8, channels=8, blocks=1, quiet=True, command="test"
    )
    tensors, meta = load_checkpoint(info["checkpoint"], expect_task="sudoku")
    assert meta["arch"]["name"] == "fibre_direction" and meta["default_iterations"] == 100
    assert meta["zeta1"] == 0.1 and Path(info["card"]).read_text().count(info["sha256"]) == 1
    res, code = invoke(["solve", EASY, "--weights", info["checkpoint"], "--iterations", "5", "--json", str(tmp_path / "r.json")])
    assert code in (0, 3), res.output
    assert json.loads((tmp_path / "r.json").read_text())["summary"]["energy_monotone"]
    with pytest.raises(UsageError, match="already exists"):
        train_command(out=tmp_path / "tiny", epochs=1, n_puzzles=24, quiet=True)
    base = train_command(
        out=tmp_path / "base", epochs=1, n_puzzles=24, batch_size=8, channels=8, blocks=1, baseline=True, quiet=True
    )
    res, code = invoke(["solve", EASY, "--method", "baseline", "--weights", base["checkpoint"]])
    assert code in (0, 3)
    res, code = invoke(["solve", EASY, "--method", "edn", "--weights", base["checkpoint"]])
    assert code == 4 and "sudoku-baseline" in str(res.exception)


def test_cli_eval(tmp_path: Path):
    p = tmp_path / "ps.csv"
    p.write_text(f"id,puzzle,solution,label\na,{EASY},{EASY_SOLUTION},easy\n")
    js = tmp_path / "t.json"
    res, code = invoke(["eval", "--puzzles", str(p), "--methods", "gd", "--gd-iterations", "50", "--json", str(js)])
    assert code == 0, res.output
    doc = json.loads(js.read_text())
    assert set(doc["methods"]["gd"]) >= {"cell_accuracy", "solved_rate", "iterations", "time_s"}
    assert doc["rows"][0]["gd"]["cell_accuracy"] is not None
    res, code = invoke(["eval", "--puzzles", str(p), "--methods", "gd,magic"])
    assert code == 2


# ----------------------------------------------------------------------------- audit: bad strings, outputs


@pytest.mark.parametrize(
    "arg, fragment",
    [(EASY[:-1] + "x", "character 'x' at position 81"), (EASY[:40] + " " + EASY[41:], "character ' ' at position 41"),
     ("", "has 0 characters")],
)
def test_cli_malformed_81_character_or_empty_string_is_a_usage_error(tmp_path: Path, monkeypatch, arg, fragment):
    monkeypatch.chdir(tmp_path)
    res, code = invoke(["solve", arg, "--method", "gd", "--iterations", "5"])
    assert code == 2 and fragment in str(res.exception) and "\n" not in str(res.exception)
    assert res.stdout == ""


def test_cli_outputs_are_checked_before_any_work(tmp_path: Path):
    import os

    same = tmp_path / "same"
    res, code = invoke(["solve", EASY, "--method", "gd", "--out", str(same), "--json", str(same)])
    assert code == 2 and "named twice" in str(res.exception) and not same.exists() and res.stdout == ""
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    res, code = invoke(["solve", EASY, "--method", "gd", "--out", str(fifo), "--force"])
    assert code == 2 and "not a regular file" in str(res.exception) and fifo.is_fifo()
    res, code = invoke(["solve", EASY, "--method", "gd", "--out", "-"])
    assert code == 2 and not Path("-").exists()


@pytest.mark.skipif(not Path("/proc/self").exists(), reason="needs Linux /proc")
def test_cli_unwritable_output_folder_is_one_line_exit_4():
    res, code = invoke(["solve", EASY, "--method", "gd", "--json", "/proc/r.json"])
    assert code == 4 and isinstance(res.exception, InputError) and res.stdout == ""


def test_cli_eval_refuses_a_solution_column_that_does_not_solve_its_puzzle(tmp_path: Path):
    wrong = EASY_SOLUTION[:-1] + "8"  # last cell changed: a digit twice in row 9
    p = tmp_path / "ps.csv"
    p.write_text(f"puzzle,solution\n{EASY},{EASY_SOLUTION}\n{EASY},{wrong}\n")
    res, code = invoke(["eval", "--puzzles", str(p), "--methods", "gd", "--gd-iterations", "5"])
    assert code == 4 and "line 3" in str(res.exception) and "not a solution" in str(res.exception)
    assert res.stdout == ""  # was: 100% solved next to a cell accuracy below 100%


@pytest.mark.parametrize(
    "args, fragment",
    [(["--methods", "gd,gd"], "more than once"), (["--methods", "gd", "--gd-iterations", "-3"], "--gd-iterations -3")],
)
def test_cli_eval_bad_methods_and_iterations_are_usage_errors(tmp_path: Path, args, fragment):
    p = tmp_path / "ps.csv"
    p.write_text(f"puzzle,solution\n{EASY},{EASY_SOLUTION}\n")
    res, code = invoke(["eval", "--puzzles", str(p), *args])
    assert code == 2 and fragment in str(res.exception) and res.stdout == ""
