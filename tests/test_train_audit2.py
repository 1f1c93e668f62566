"""edn train as a demanding user meets it: --resume and --init-from combinations, options a task
would ignore, the training log of a rerun, Ctrl-C's exit code, the model card's validation line."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from edncli.io.checkpoints import read_metadata

from .test_cli import edn
from .test_learned import _images

_TRAIN = ["train", "--task", "sr", "--images", "imgs", "--depth", "3", "--width", "8", "--patch-size", "24",
          "--batch-size", "2", "--steps", "2", "--val-every", "2", "--val-size", "32", "--threads", "1", "--quiet"]


def _one_line(err: str) -> bool:
    lines = [line for line in err.splitlines() if line.strip()]
    return len(lines) == 1 and lines[0].startswith("edn: error:") and "Traceback" not in err


@pytest.fixture
def trained(tmp_path, monkeypatch, capsys):
    """A folder with images and a 2-step checkpoint ``a`` (with its card and log)."""
    monkeypatch.chdir(tmp_path)
    _images(tmp_path / "imgs", n=2, size=32)
    code, _, err = edn(monkeypatch, capsys, *_TRAIN, "--out", "a")
    assert code == 0, err
    return tmp_path


def _snapshot(folder: Path) -> dict:
    return {p.name: p.read_bytes() for p in folder.iterdir() if p.is_file()}


def test_force_rerun_starts_a_fresh_log_and_resume_continues_it(trained, monkeypatch, capsys):
    code, _, err = edn(monkeypatch, capsys, *_TRAIN, "--out", "a", "--force")
    assert code == 0, err
    assert [json.loads(r)["step"] for r in Path("a.train.jsonl").read_text().splitlines()] == [2]
    code, _, err = edn(monkeypatch, capsys, *_TRAIN, "--out", "a", "--resume", "a.safetensors", "--steps", "4")
    assert code == 0, err
    rows = [json.loads(r) for r in Path("a.train.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [2, 2, 4]  # the resumed weights are validated again, as a candidate
    assert [r.get("resumed", False) for r in rows] == [False, True, False]


def test_resume_from_another_file_does_not_overwrite_out_without_force(trained, monkeypatch, capsys):
    Path("b.safetensors").write_bytes(Path("a.safetensors").read_bytes())
    before = _snapshot(trained)
    code, _, err = edn(monkeypatch, capsys, *_TRAIN, "--out", "a", "--resume", "b.safetensors", "--steps", "4")
    assert code == 2 and _one_line(err) and "a.safetensors exists; pass --force" in err, err
    assert _snapshot(trained) == before


@pytest.mark.parametrize(
    "args, words",
    [
        (["--scale", "2"], "it was trained with --scale 4, this run asks for --scale 2"),
        (["--downsampler", "bicubic"], "--downsampler average"),
        (["--layer", "halfspace"], "layer 'cone_ball' (this run: 'halfspace')"),
        (["--depth", "4"], "depth 3 (this run: 4)"),
    ],
)
def test_resume_with_another_scale_or_network_is_refused(trained, monkeypatch, capsys, args, words):
    before = _snapshot(trained)
    code, _, err = edn(monkeypatch, capsys, *_TRAIN, "--out", "r", "--resume", "a.safetensors", "--steps", "4", *args)
    assert code == 4 and _one_line(err) and words in err, err  # 4, as for a checkpoint of another task
    assert _snapshot(trained) == before


@pytest.mark.parametrize(
    "task_args, args, words",
    [
        ([], ["--time-limit", "5"], "--time-limit is for --task denoiser|sudoku"),
        ([], ["--arch", "dncnn"], "--arch is for --task denoiser"),
        ([], ["--epochs", "3"], "--epochs is for --task sudoku"),
        (["--task", "denoiser", "--arch", "dncnn"], ["--resume", "a.safetensors"], "--resume is for --task sr|ct|deblur"),
        (["--task", "denoiser", "--arch", "dncnn"], ["--init-from", "a.safetensors"], "--init-from is for --task sr|ct|deblur"),
        (["--task", "sudoku"], ["--images", "imgs"], "--images is for --task"),
        # options with a default were not checked at all: sudoku trained its default epochs
        (["--task", "sudoku"], ["--steps", "1"], "--steps is for --task sr|ct|deblur|denoiser; --task sudoku"),
        (["--task", "sudoku"], ["--lr", "0.1"], "--lr is for --task sr|ct|deblur|denoiser"),
        (["--task", "ct"], ["--scale", "2"], "--scale is for --task sr; --task ct does not use it"),
        ([], ["--angles", "60"], "--angles is for --task ct; --task sr does not use it"),
        ([], ["--kernel-size", "9"], "--kernel-size is for --task deblur"),
        (["--task", "denoiser", "--arch", "dncnn"], ["--noise-sigma", "0:0.1"], "--noise-sigma is for --task sr|ct|deblur"),
        (["--task", "denoiser", "--arch", "dncnn"], ["--val-every", "5"], "--val-every is for --task sr|ct|deblur"),
    ],
)
def test_an_option_the_task_would_ignore_is_a_usage_error(trained, monkeypatch, capsys, task_args, args, words):
    before = _snapshot(trained)
    # _TRAIN without its validation options, which the denoiser and sudoku tasks do not read
    base = [a for i, a in enumerate(_TRAIN) if a not in ("--val-every", "--val-size") and _TRAIN[i - 1] not in ("--val-every", "--val-size")]
    if "sudoku" in task_args and "--images" not in args:  # nor the network options
        base = ["train", "--threads", "1", "--quiet"]
    code, _, err = edn(monkeypatch, capsys, *base, *task_args, "--out", "r", *args)
    assert code == 2 and _one_line(err) and words in err, err
    assert _snapshot(trained) == before


def test_init_from_a_missing_checkpoint_names_the_option(trained, monkeypatch, capsys):
    code, _, err = edn(monkeypatch, capsys, *_TRAIN, "--out", "r", "--init-from", "no-such-net")
    assert code == 4 and _one_line(err) and "--init-from no-such-net: no such checkpoint" in err, err
    assert not list(trained.glob("r.*"))


def test_ctrl_c_keeps_the_best_state_and_exits_130(trained, monkeypatch, capsys):
    import edncli.training.lagged as lagged

    real, calls = lagged._measure, []

    def measure(*a, **k):
        calls.append(1)
        if len(calls) == 4:  # the 3rd step's mini-batch (2 steps and 1 validation before it)
            raise KeyboardInterrupt
        return real(*a, **k)

    monkeypatch.setattr(lagged, "_measure", measure)
    code, _, err = edn(monkeypatch, capsys, *_TRAIN, "--out", "c", "--steps", "50")
    assert code == 130 and "interrupted at step 2" in err, err
    meta = read_metadata("c.safetensors")
    assert meta["metrics"]["interrupted"] is True and meta["metrics"]["steps"] == 2


def test_card_says_validation_ran_on_phantoms_without_val_images(trained, monkeypatch, capsys):
    card = Path("a.md").read_text()
    assert "on 8 random ellipse phantoms of 32² (no --val-images)" in card and "centre crops" not in card
    code, _, err = edn(monkeypatch, capsys, *_TRAIN, "--out", "v", "--val-images", "imgs")
    assert code == 0, err
    assert "on up to 8 centre crops of 32²;" in Path("v.md").read_text()


def test_images_may_name_several_folders(tmp_path):
    """``--images a,b``: the images of both folders, in that order; an empty name or a missing
    folder among them is the same clear error as for one folder."""
    import numpy as np
    import pytest as _pytest

    from edncli.errors import InputError, UsageError
    from edncli.training.data import list_images

    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir()
    b.mkdir()
    for folder, names in ((a, ("2.npy", "1.npy")), (b, ("0.npy",))):
        for n in names:
            np.save(folder / n, np.zeros((4, 4), np.float32))
    assert [p.relative_to(tmp_path).as_posix() for p in list_images(f"{a},{b}")] == ["a/1.npy", "a/2.npy", "b/0.npy"]
    with _pytest.raises(UsageError, match="empty folder name"):
        list_images(f"{a},")
    with _pytest.raises(InputError, match="not a folder"):
        list_images(f"{a},{tmp_path / 'missing'}")
    odd = tmp_path / "x,y"  # a folder whose name has a comma is still one folder
    odd.mkdir()
    np.save(odd / "3.npy", np.zeros((4, 4), np.float32))
    assert [p.name for p in list_images(str(odd))] == ["3.npy"]
