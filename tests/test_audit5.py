"""Fifth audit (2026-12-07): outputs that replaced the run's own inputs even where edn says it never
does, training outputs beside the checkpoint replaced without --force, a vacuous "δ reached", and
an infinite --kernel-sigma taken as a box blur. Each test fails on the code before the fix."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from .test_cli import _clean, edn
from .test_cli_audit import _eval_images, _one_line
from .test_train_audit2 import _TRAIN
from .test_learned import _images


@pytest.fixture
def work(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    _clean(tmp_path / "clean.png", n=32)
    return tmp_path


def _blurred(monkeypatch, capsys, name="b.tif"):
    code, _, err = edn(monkeypatch, capsys, "simulate", "deblur", "--kernel-sigma", "1", "--kernel-size", "5",
                       "--noise-sigma", "0.01", "--seed", "0", "clean.png", "-o", name)
    assert code == 0, err


def test_output_is_never_the_input_even_with_force(work, monkeypatch, capsys):
    _blurred(monkeypatch, capsys)
    before = Path("b.tif").read_bytes()
    code, _, err = edn(monkeypatch, capsys, "deblur", "--kernel-sigma", "1", "--kernel-size", "5", "--method", "cg",
                       "b.tif", "-o", "b.tif", "--force", "--quiet")
    assert code == 2 and _one_line(err) and "input" in err
    assert Path("b.tif").read_bytes() == before


def test_output_dir_is_never_the_input_folder_even_with_force(work, monkeypatch, capsys):
    _blurred(monkeypatch, capsys)
    Path("in").mkdir()
    shutil.move("b.tif", "in/b.tif")
    before = Path("in/b.tif").read_bytes()
    code, _, err = edn(monkeypatch, capsys, "deblur", "--kernel-sigma", "1", "--kernel-size", "5", "--method", "cg",
                       "in", "--output-dir", "in", "--force", "--quiet")
    assert code == 2 and _one_line(err) and "input" in err
    assert Path("in/b.tif").read_bytes() == before and sorted(p.name for p in Path("in").iterdir()) == ["b.tif"]


def test_eval_json_never_replaces_an_image_it_reads(work, monkeypatch, capsys):
    _eval_images(Path("imgs"))
    before = Path("imgs/im0.png").read_bytes()
    code, _, err = edn(monkeypatch, capsys, "eval", "sr", "--images", "imgs", "--methods", "gd", "-q",
                       "--json", "imgs/im0.png", "--force")
    assert code == 2 and _one_line(err) and "--json" in err
    assert Path("imgs/im0.png").read_bytes() == before


@pytest.mark.parametrize("option", ["--out", "--json"])
def test_sudoku_never_replaces_its_puzzle_file(work, monkeypatch, capsys, option):
    puzzle = "007000325000900100040528090870004600609307050000100008100430067003006240020759030\n"
    Path("p.txt").write_text(puzzle)
    code, _, err = edn(monkeypatch, capsys, "sudoku", "solve", "p.txt", option, "p.txt", "--force")
    assert code == 2 and _one_line(err) and option in err
    assert Path("p.txt").read_text() == puzzle


@pytest.mark.parametrize("side", [".md", ".train.jsonl"])
def test_train_never_replaces_the_card_or_log_without_force(work, monkeypatch, capsys, side):
    _images(work / "imgs", n=2, size=32)
    Path("a" + side).write_text("my notes\n")
    code, _, err = edn(monkeypatch, capsys, *_TRAIN, "--out", "a")
    assert code == 2 and _one_line(err) and "--force" in err
    assert Path("a" + side).read_text() == "my notes\n" and not Path("a.safetensors").exists()


@pytest.mark.parametrize("side", [".md", ".train.jsonl"])
def test_train_refuses_a_folder_where_the_card_or_log_goes(work, monkeypatch, capsys, side):
    _images(work / "imgs", n=2, size=32)
    Path("c" + side).mkdir()
    code, _, err = edn(monkeypatch, capsys, *_TRAIN, "--out", "c", "--force")
    assert code == 2 and _one_line(err) and "not a regular file" in err
    assert not Path("c.safetensors").exists()


def test_denoiser_training_never_replaces_the_card_without_force(work, monkeypatch, capsys):
    _images(work / "imgs", n=2, size=32)
    Path("d.md").write_text("my notes\n")
    code, _, err = edn(monkeypatch, capsys, "train", "--task", "denoiser", "--arch", "dncnn", "--images", "imgs",
                       "--depth", "3", "--width", "4", "--patch-size", "16", "--steps", "1", "--out", "d", "--quiet")
    assert code == 2 and _one_line(err)
    assert Path("d.md").read_text() == "my notes\n"


def test_eval_with_fixed_iterations_does_not_claim_delta_reached(work, monkeypatch, capsys):
    _eval_images(Path("imgs"))
    code, out, err = edn(monkeypatch, capsys, "eval", "deblur", "--images", "imgs", "--methods", "gd",
                         "--iterations", "1", "-q", "--json", "t.json")
    assert code == 0, err
    doc = json.loads(Path("t.json").read_text())
    assert all(r["delta_reached"] is None for r in doc["rows"])
    assert doc["methods"]["gd"]["delta_reached_all"] is None
    row = next(line for line in out.splitlines() if line.startswith("| gd"))
    assert "n/a" in row and "True" not in row.split("|")[-3]


@pytest.mark.parametrize("cmd", [["simulate", "deblur", "clean.png", "-o", "s.tif"],
                                 ["deblur", "clean.png", "-o", "s.tif", "--method", "cg", "--noise-sigma", "0.01"]])
def test_infinite_kernel_sigma_is_a_usage_error(work, monkeypatch, capsys, cmd):
    code, _, err = edn(monkeypatch, capsys, *cmd, "--kernel-sigma", "inf")
    assert code == 2 and _one_line(err) and "--kernel-sigma" in err
    assert not Path("s.tif").exists()
