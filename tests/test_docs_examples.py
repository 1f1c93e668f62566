"""The README's examples and option lists, checked against what the code does."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch

from .test_cli import _clean, edn

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()


def _params(*path: str) -> set[str]:
    """The option names of ``edn PATH...``."""
    from typer.main import get_command

    from edncli.cli.main import app

    cmd = get_command(app)
    for name in path:
        cmd = cmd.commands[name]
    return {opt for p in cmd.params for opt in p.opts}


@pytest.fixture
def workdir(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    _clean(tmp_path / "clean.png")
    return tmp_path


def test_readme_library_snippet_runs_as_written(monkeypatch):
    block = re.search(r"## Library\n.*?```python\n(.*?)```", README, re.S).group(1)
    monkeypatch.chdir(ROOT)
    scope: dict = {}
    exec(compile(block, "README.md (Library)", "exec"), scope)
    result = scope["result"]
    assert result.u.shape == (1, 256, 256)
    assert result.delta_reached and result.energy_monotone and len(result.trace) > 0


def test_common_options_are_where_the_readme_says():
    # "(`edn sr`, `edn deblur`) `--output-dir`": edn ct reads one sinogram file, no folder.
    for cmd in (("sr",), ("deblur",), ("reconstruct", "sr"), ("reconstruct", "deblur")):
        assert "--output-dir" in _params(*cmd)
    assert "--output-dir" not in _params("ct")
    # "--seed, except `edn sudoku` and `edn eval sudoku`".
    for cmd in (("sr",), ("ct",), ("train",), ("eval", "sr"), ("eval", "deblur"), ("eval", "ct"), ("simulate", "sr")):
        assert "--seed" in _params(*cmd), cmd
    for cmd in (("sudoku", "solve"), ("sudoku", "eval"), ("eval", "sudoku")):
        assert "--seed" not in _params(*cmd), cmd


@pytest.mark.skipif(torch.cuda.is_available(), reason="fp16 is allowed where a GPU is present")
def test_network_methods_refuse_fp16_on_cpu(workdir, monkeypatch, capsys):
    edn(monkeypatch, capsys, "simulate", "sr", "--scale", "4", "clean.png", "-o", "lr.tif")
    code, _, err = edn(monkeypatch, capsys, "sr", "--scale", "4", "lr.tif", "-o", "hr.tif", "--precision", "fp16")
    assert code == 2
    assert err.count("\n") == 1 and "bf16" in err
