"""Ninth audit: a regular install finds the shipped weights, interrupted denoiser training keeps its
work, sudoku training is reproducible by default, and smaller findings. Each test failed on the
code before its fix."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from .test_audit3_images import _one_line
from .test_cli import edn


@pytest.fixture
def images(tmp_path, monkeypatch):
    """A folder of four 48² gray images, the working folder a fresh temporary one."""
    monkeypatch.chdir(tmp_path)
    gen = np.random.default_rng(0)
    os.mkdir("ims")
    for k in range(4):
        Image.fromarray((gen.random((48, 48)) * 255).astype(np.uint8)).save(f"ims/{k}.png")
    return tmp_path


def test_installed_weights_are_searched_under_the_data_prefix(tmp_path, monkeypatch):
    import sysconfig

    from edncli.io import weights

    monkeypatch.delenv("EDN_WEIGHTS_DIR", raising=False)
    monkeypatch.setattr(sysconfig, "get_path", lambda name, *a, **k: str(tmp_path) if name == "data" else None)
    dirs = weights.weights_dirs()
    assert tmp_path / "share" / "edncli" / "weights" in dirs
    (tmp_path / "share" / "edncli" / "weights").mkdir(parents=True)
    src = next(d for d in dirs if d.name == "weights" and d.parent.name != "edncli") / "gradncnn.safetensors"
    (tmp_path / "share" / "edncli" / "weights" / "mine.safetensors").write_bytes(src.read_bytes())
    assert weights.resolve_weights("mine").parent == tmp_path / "share" / "edncli" / "weights"


def test_pyproject_ships_the_weights_as_data_files():
    import tomllib

    root = Path(__file__).resolve().parents[1]
    data_files = tomllib.loads((root / "pyproject.toml").read_text())["tool"]["setuptools"]["data-files"]
    assert data_files["share/edncli/weights"] == ["weights/*.safetensors", "weights/*.md"]
    assert "include weights/*.safetensors weights/*.md" in (root / "MANIFEST.in").read_text()


def test_no_weights_found_names_the_folders_searched(tmp_path, monkeypatch, capsys):
    from edncli.io import weights

    monkeypatch.setenv("EDN_WEIGHTS_DIR", str(tmp_path / "none"))
    monkeypatch.setattr(weights, "weights_dirs", lambda: [tmp_path / "none"])
    monkeypatch.chdir(tmp_path)
    code, out, err = edn(monkeypatch, capsys, "weights", "list")
    assert code == 0 and out == "" and "no checkpoints found in" in err and str(tmp_path / "none") in err, err
    code, _, err = edn(monkeypatch, capsys, "weights", "show", "edn-sr-x4")
    assert code == 4 and _one_line(err) and "no checkpoints found in" in err, err


@pytest.mark.parametrize("home", ["", "/"])
def test_no_home_keeps_the_ct_cache_out_of_the_root(monkeypatch, home):
    from edncli.operators.tomography import default_cache_dir

    monkeypatch.delenv("EDN_CACHE_DIR", raising=False)
    monkeypatch.delenv("XDG_CACHE_HOME", raising=False)
    monkeypatch.setenv("HOME", home)
    assert not str(default_cache_dir()).startswith("/.cache")


def test_xdg_cache_home_is_followed(tmp_path, monkeypatch):
    from edncli.operators.tomography import default_cache_dir

    monkeypatch.delenv("EDN_CACHE_DIR", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert default_cache_dir() == tmp_path / "edn" / "ct"


def test_ctrl_c_in_denoiser_training_keeps_the_weights_and_exits_130(images, monkeypatch, capsys):
    from edncli.io.checkpoints import read_metadata
    from edncli.training import data

    calls = []

    original = data.PatchSampler.sample

    def sample(self, n):
        calls.append(1)
        if len(calls) == 4:  # the 4th mini-batch: 3 steps done
            raise KeyboardInterrupt
        return original(self, n)

    monkeypatch.setattr(data.PatchSampler, "sample", sample)
    args = ("train", "--task", "denoiser", "--arch", "dncnn", "--depth", "2", "--width", "4", "--images", "ims",
            "--patch-size", "16", "--batch-size", "2", "--steps", "50", "--threads", "1", "--out", "d", "--quiet")
    code, _, err = edn(monkeypatch, capsys, *args)
    assert code == 130 and "interrupted at step 3" in err, err
    meta = read_metadata("d.safetensors")
    assert meta["stopped"] == "interrupted" and meta["steps_done"] == 3
    assert "interrupted (Ctrl-C or SIGTERM) after step 3 of 50" in Path("d.md").read_text()
    rows = [json.loads(line) for line in Path("d.train.jsonl").read_text().splitlines()]
    assert rows[-1]["final"] is True and rows[-1]["stopped"] == "interrupted"


def test_ctrl_c_before_any_denoiser_step_leaves_nothing_behind(images, monkeypatch, capsys):
    from edncli.training import data

    def sample(self, n):
        raise KeyboardInterrupt

    monkeypatch.setattr(data.PatchSampler, "sample", sample)
    args = ("train", "--task", "denoiser", "--arch", "dncnn", "--depth", "2", "--width", "4", "--images", "ims",
            "--patch-size", "16", "--batch-size", "2", "--steps", "5", "--threads", "1", "--out", "e", "--quiet")
    code, _, err = edn(monkeypatch, capsys, *args)
    assert code == 130, err
    assert not list(Path().glob("e.*"))  # no empty log blocking a rerun without --force


def test_sudoku_training_is_reproducible_by_default(tmp_path, monkeypatch):
    from edncli.cli.sudoku import train_command
    from edncli.io.checkpoints import load_checkpoint

    monkeypatch.chdir(tmp_path)
    for name in ("a", "b"):
        train_command(out=Path(name), epochs=1, n_puzzles=40, channels=4, blocks=1, quiet=True, command="t")
    ta, ma = load_checkpoint(Path("a.safetensors"), expect_task="sudoku")
    tb, mb = load_checkpoint(Path("b.safetensors"), expect_task="sudoku")
    assert ta.keys() == tb.keys() and all(torch.equal(ta[k], tb[k]) for k in ta)
    assert "schedule" not in ma


def test_a_sudoku_time_limit_says_the_run_is_not_reproducible(tmp_path, monkeypatch):
    from edncli.cli.sudoku import train_command

    monkeypatch.chdir(tmp_path)
    train_command(out=Path("t"), epochs=1, n_puzzles=40, channels=4, blocks=1, quiet=True, time_limit_s=600, command="t")
    assert "a rerun of this command gives a different checkpoint" in Path("t.md").read_text()


@pytest.mark.parametrize("task", [["--task", "ct"], ["--task", "denoiser", "--arch", "dncnn"]])
def test_a_patch_smaller_than_8_is_a_usage_error(images, monkeypatch, capsys, task):
    code, _, err = edn(monkeypatch, capsys, "train", *task, "--images", "ims", "--patch-size", "3", "--steps", "1",
                       "--out", "p", "--quiet")
    assert code == 2 and _one_line(err) and "--patch-size must be >= 8, got 3" in err, err
    assert not list(Path().glob("p.*"))


def test_init_from_another_scale_warns(images, monkeypatch, capsys):
    args = ("train", "--task", "sr", "--kind", "baseline", "--depth", "2", "--width", "4", "--images", "ims",
            "--patch-size", "16", "--batch-size", "2", "--steps", "1", "--val-every", "1", "--val-size", "16",
            "--threads", "1", "--quiet")
    code, _, err = edn(monkeypatch, capsys, *args, "--scale", "4", "--out", "x4")
    assert code == 0, err
    code, _, err = edn(monkeypatch, capsys, *args, "--scale", "2", "--out", "x2", "--init-from", "./x4.safetensors")
    assert code == 0 and "--init-from x4.safetensors was trained with --scale 4; this run trains --scale 2" in err, err


def test_card_data_line_is_a_sentence_not_a_python_dict():
    from edncli.io.checkpoints import describe_data

    text = describe_data({"images": "train400", "n_images": 400, "val_images": "set12", "phantoms": True})
    assert text == "400 images from train400 (patches with flips/rotations) plus random ellipse phantoms; validation: set12"
    root = Path(__file__).resolve().parents[1] / "weights"
    for card in root.glob("*.md"):
        line = next(ln for ln in card.read_text().splitlines() if ln.startswith("- data: "))
        assert "{'" not in line, (card.name, line)


def test_baseline_summary_does_not_claim_a_guarantee(monkeypatch, capsys, tmp_path):
    monkeypatch.chdir(tmp_path)
    ex = Path(__file__).resolve().parents[1] / "examples" / "camera_lr_x4.tif"
    code, _, err = edn(monkeypatch, capsys, "sr", "--scale", "4", str(ex), "-o", "b.png", "--method", "baseline")
    assert code == 0 and "1 iteration," in err and "energy monotone: yes (observed; no guarantee)" in err, err
    assert "True" not in err, err
