"""Bad option values and malformed checkpoints: one line, exit 2 (usage) or 4 (checkpoint), no files left behind."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import tifffile
import torch

from edncli.errors import CheckpointError, UsageError
from edncli.io.checkpoints import load_checkpoint, save_checkpoint
from edncli.networks.backbones import BackboneConfig
from edncli.networks.direction import BaselineNet, DirectionNet, DirectionNetConfig, baseline_arch
from edncli.tasks import TaskSpec

from .test_cli import edn
from .test_learned import _images


def _one_line(err: str) -> bool:
    lines = [line for line in err.splitlines() if line.strip()]
    return len(lines) == 1 and lines[0].startswith("edn: error:") and "Traceback" not in err


# --------------------------------------------------------------------------- checkpoints


def _tiny_meta(kind: str = "edn"):
    """``(tensors, metadata)`` of an untrained, tiny SR x4 network as training would save it."""
    bb = BackboneConfig(in_channels=3 if kind == "edn" else 2, out_channels=1, depth=3, width=4, batchnorm=False)
    if kind == "edn":
        net_cfg = DirectionNetConfig(backbone=bb)
        net: torch.nn.Module = DirectionNet(net_cfg)
        arch = net_cfg.as_dict()
    else:
        net, arch = BaselineNet(bb), baseline_arch(bb)
    meta = {"task": f"{kind}-sr", "arch": arch, "operator": TaskSpec("sr", scale=4, init="zero").as_dict(), "min_iter": 2}
    return {k: v.clone() for k, v in net.state_dict().items()}, meta


def _write_raw(path: Path, tensors: dict, meta: dict) -> Path:
    """A safetensors file with ``meta`` as its edn header, written as is (no checks)."""
    from safetensors.torch import save_file

    save_file(tensors, str(path), metadata={"edn": json.dumps({"format_version": 1, **meta})})
    return path


@pytest.fixture
def lr_tif(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    rng = np.random.default_rng(0)
    tifffile.imwrite("lr.tif", rng.random((16, 16)).astype(np.float32))
    return tmp_path / "lr.tif"


def _sr(monkeypatch, capsys, weights: Path, method: str = "edn"):
    return edn(monkeypatch, capsys, "sr", "--scale", "4", "lr.tif", "-o", "out.tif", "--method", method,
               "--weights", str(weights), "--noise-sigma", "0.01", "--quiet")


def test_the_tiny_checkpoint_itself_loads(lr_tif, monkeypatch, capsys):
    tensors, meta = _tiny_meta()
    save_checkpoint(lr_tif.parent / "good.safetensors", tensors, meta)
    code, _, err = _sr(monkeypatch, capsys, lr_tif.parent / "good.safetensors")
    assert code in (0, 3), err
    assert Path("out.tif").exists()


@pytest.mark.parametrize(
    "edit, words",
    [
        ({"arch": "direction"}, "'arch' must be an object"),
        ({"operator": None}, "'operator' must be an object"),
        ({"min_iter": -5}, "'min_iter' must be an integer >= 0"),
        ({"min_iter": "3"}, "'min_iter' must be an integer >= 0"),
        ({"task": 5}, "'task' must be a non-empty string"),
        ({"metrics": [1]}, "'metrics' must be an object"),
        ({"arch": {"kind": "direction", "backbone": "big"}}, "backbone must be an object"),
        ({"arch": {"kind": "direction", "backbone": {"depth": "3", "width": 4}}}, "depth must be an integer >= 2"),
        ({"arch": {"kind": "direction", "backbone": {"depth": 3, "width": 0}}}, "width must be an integer >= 1"),
        ({"arch": {"kind": "direction", "backbone": {"depth": 3, "width": 4, "batchnorm": "no"}}}, "batchnorm must be"),
        ({"arch": {"kind": "direction", "backbone": {"depth": 3, "width": 4}, "zeta1": "x"}}, "zeta1 must be a number"),
        ({"arch": {"kind": "baseline", "depth": 3, "width": 4}}, "arch kind 'baseline', expected 'direction'"),
        ({"operator": {"task": "sr", "scale": "4"}}, "scale must be an integer >= 1"),
        ({"operator": {"task": "sr", "init": "foo"}}, "corrupt operator metadata"),
        ({"operator": {"task": "sr", "bogus": 1}}, "corrupt operator metadata"),
        ({"operator": {"task": "sr", "kernel_sigma": 3}}, "corrupt operator metadata"),
    ],
)
def test_malformed_checkpoint_metadata_is_one_line_exit_4(lr_tif, monkeypatch, capsys, edit, words):
    tensors, meta = _tiny_meta()
    bad = _write_raw(lr_tif.parent / "bad.safetensors", tensors, {**meta, **edit})
    code, _, err = _sr(monkeypatch, capsys, bad)
    assert code == 4, err
    assert _one_line(err) and "bad.safetensors" in err and words in err, err
    assert "needs an edn checkpoint" not in err  # the hint is for checkpoints of another task only
    assert not Path("out.tif").exists()


@pytest.mark.parametrize(
    "edit, ok",
    [
        ({"layer": "cone_ball", "zeta": 0.0}, True),  # zeta belongs to the half-space layer: unused here
        ({"layer": "halfspace", "zeta1": 0.0, "zeta": 1e-3}, True),  # zeta1/zeta2 unused by eq. 21
        ({"layer": "halfspace", "zeta": 0.0}, False),
        ({"layer": "cone_ball", "zeta1": 2.0, "zeta2": 1.0}, False),
        ({"layer": "sphere"}, False),
    ],
)
def test_descent_layer_settings_are_checked_as_training_checks_them(lr_tif, monkeypatch, capsys, edit, ok):
    # what `edn train` accepts, loading accepts: only the stored layer's own ζ values are checked
    tensors, meta = _tiny_meta()
    path = _write_raw(lr_tif.parent / "z.safetensors", tensors, {**meta, "arch": {**meta["arch"], **edit}})
    code, _, err = _sr(monkeypatch, capsys, path)
    if ok:
        assert code in (0, 3), err
    else:
        assert code == 4 and _one_line(err) and "corrupt architecture metadata" in err, err


def test_malformed_baseline_metadata_is_one_line_exit_4(lr_tif, monkeypatch, capsys):
    tensors, meta = _tiny_meta("baseline")
    bad = _write_raw(lr_tif.parent / "badb.safetensors", tensors, {**meta, "arch": {**meta["arch"], "shuffle": None}})
    code, _, err = _sr(monkeypatch, capsys, bad, method="baseline")
    assert code == 4 and _one_line(err) and "shuffle must be an integer >= 1" in err, err


def test_non_finite_weights_are_refused(lr_tif, monkeypatch, capsys):
    tensors, meta = _tiny_meta()
    key = next(k for k, v in tensors.items() if v.is_floating_point() and v.numel() > 1)
    tensors[key].view(-1)[0] = float("nan")
    save_checkpoint(lr_tif.parent / "nan.safetensors", tensors, meta)
    with pytest.raises(CheckpointError, match="NaN or Inf"):
        load_checkpoint(lr_tif.parent / "nan.safetensors")
    code, _, err = _sr(monkeypatch, capsys, lr_tif.parent / "nan.safetensors")
    assert code == 4 and _one_line(err) and "nan.safetensors" in err and "NaN or Inf" in err, err
    assert not Path("out.tif").exists()
    tensors[key].view(-1)[0] = float("inf")
    save_checkpoint(lr_tif.parent / "inf.safetensors", tensors, meta)
    with pytest.raises(CheckpointError, match="NaN or Inf"):
        load_checkpoint(lr_tif.parent / "inf.safetensors")


def test_wrong_kind_hint_only_for_checkpoints_of_another_task(lr_tif, monkeypatch, capsys):
    tensors, meta = _tiny_meta("baseline")
    save_checkpoint(lr_tif.parent / "base.safetensors", tensors, meta)
    code, _, err = _sr(monkeypatch, capsys, lr_tif.parent / "base.safetensors")
    assert code == 4 and _one_line(err) and "method edn needs an edn checkpoint" in err, err
    garbage = lr_tif.parent / "garbage.safetensors"
    garbage.write_bytes(b"\x00" * 64)
    code, _, err = _sr(monkeypatch, capsys, garbage)
    assert code == 4 and _one_line(err) and "not a readable safetensors file" in err, err
    assert "needs a" not in err


def test_weights_for_a_method_without_checkpoint_is_a_usage_error():
    from edncli.solvers.learned import check_weights_option

    with pytest.raises(UsageError, match="method gd uses no checkpoint"):
        check_weights_option("gd", "edn-sr-x4")
    check_weights_option("gd", None)
    check_weights_option("edn", "edn-sr-x4")
    check_weights_option("potential", "gradncnn")


@pytest.mark.parametrize(
    "args",
    [
        ["sr", "--scale", "4", "camera_lr_x4.tif"],
        ["deblur", "--kernel-sigma", "1.6", "camera_blur.tif"],
        ["ct", "--sinogram", "phantom_sino.h5"],
    ],
)
def test_weights_with_a_method_that_loads_none_is_refused_before_any_work(args, tmp_path, monkeypatch, capsys):
    # `--method gd --weights X` would silently ignore X: one line, exit 2, no output file
    examples = Path(__file__).resolve().parents[1] / "examples"
    argv = [*args[:-1], str(examples / args[-1])]
    code, _, err = edn(monkeypatch, capsys, *argv, "-o", tmp_path / "x.tif", "--method", "gd", "--weights", "edn-sr-x4")
    assert code == 2 and "method gd uses no checkpoint" in err and _one_line(err), err
    assert not (tmp_path / "x.tif").exists()


# --------------------------------------------------------------------------- edn eval


@pytest.mark.parametrize(
    "args, words",
    [
        (["--methods", "foo"], "unknown method 'foo'"),
        (["--methods", "gd,tv2"], "unknown method 'tv2'"),
        (["--methods", "gd:edn-sr-x4"], "method gd uses no checkpoint"),
        (["--methods", "gd", "--iterations", "-3"], "--iterations must be >= 0"),
        (["--methods", "gd", "--max-iter", "-3"], "--max-iter must be >= 0"),
        (["--methods", "gd", "--limit", "0"], "--limit must be >= 1"),
        (["--methods", "gd", "--limit", "-1"], "--limit must be >= 1"),
        (["--methods", "gd", "--border", "-1"], "--border must be >= 0"),
        (["--methods", "gd", "--border", "16"], "--border 16 leaves no pixels"),
        (["--methods", "gd", "--luma", "rgb"], "--luma must be one of"),
        (["--methods", "gd", "--tau", "0"], "--tau must be > 0"),
        (["--methods", "gd", "--noise-sigma", "-0.1", "--iterations", "3"], "--noise-sigma must be >= 0"),
    ],
)
def test_eval_bad_values_are_usage_errors_before_any_work(tmp_path, monkeypatch, capsys, args, words):
    monkeypatch.chdir(tmp_path)
    _images(tmp_path / "clean", n=2, size=32)
    calls = []
    import edncli.solvers.methods as methods

    real = methods.solve
    monkeypatch.setattr(methods, "solve", lambda *a, **k: calls.append(a) or real(*a, **k))
    code, out, err = edn(monkeypatch, capsys, "eval", "sr", "--images", "clean", *args, "--json", "t.json", "--quiet")
    assert code == 2 and _one_line(err) and words in err, err
    assert not calls and not Path("t.json").exists() and "|" not in out


# --------------------------------------------------------------------------- edn train

_TRAIN = ["train", "--task", "sr", "--images", "imgs", "--depth", "3", "--width", "8", "--patch-size", "24",
          "--batch-size", "2", "--steps", "2", "--val-every", "2", "--threads", "1", "--quiet"]


@pytest.mark.parametrize(
    "args, words",
    [
        (["--patch-size", "0"], "--patch-size must be >= 8"),
        (["--patch-size", "30"], "--patch-size 30 must be divisible by --scale 4"),
        (["--batch-size", "0"], "--batch-size must be >= 1"),
        (["--lr", "-1"], "--lr must be > 0"),
        (["--lr", "nan"], "--lr must be > 0"),
        (["--val-noise-sigma", "-0.1"], "--val-noise-sigma must be a finite number >= 0"),
        (["--val-size", "0"], "--val-size must be >= 1"),
        (["--val-size", "30"], "--val-size 30 must be divisible by --scale 4"),
        (["--val-count", "0"], "--val-count must be >= 1"),
        (["--val-images", "imgs", "--val-size", "64"], "no image is 64x64 or larger"),
        (["--layer", "foo"], "--layer must be cone_ball or halfspace"),
        (["--zeta1", "0"], "--zeta1 and --zeta2"),
        (["--val-every", "0"], "--val-every must be >= 1"),
        (["--lag-every", "0"], "--lag-every must be >= 1"),
        (["--max-lag-steps", "-1"], "--max-lag-steps must be >= 0"),
        (["--min-iter", "-1"], "--min-iter must be >= 0"),
        (["--depth", "0"], "--depth must be >= 2, got 0"),
        (["--depth", "1"], "--depth must be >= 2, got 1"),
        (["--width", "0"], "--width must be >= 1, got 0"),
        (["--residual", "--depth", "2"], "even --depth >= 4"),
        (["--downsampler", "foo"], "--downsampler must be"),
        (["--kind", "foo"], "--kind must be edn or baseline"),
    ],
)
def test_train_bad_values_are_usage_errors_and_write_nothing(tmp_path, monkeypatch, capsys, args, words):
    monkeypatch.chdir(tmp_path)
    _images(tmp_path / "imgs", n=1, size=32)
    code, _, err = edn(monkeypatch, capsys, *_TRAIN, "--out", "tr", *args)
    assert code == 2 and _one_line(err) and words in err, err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["imgs"]


def test_train_deblur_sizes_are_checked_first(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    _images(tmp_path / "imgs", n=1, size=32)
    deblur = ["--task", "deblur", *_TRAIN[3:], "--out", "tr"]
    for args, words in ((["--kernel-size", "4"], "--kernel-size must be a positive odd integer"),
                        (["--kernel-sigma", "0:1"], "--kernel-sigma must be > 0"),
                        (["--patch-size", "12"], "--patch-size 12 is too small for --kernel-size 25")):
        code, _, err = edn(monkeypatch, capsys, "train", *deblur, *args)
        assert code == 2 and _one_line(err) and words in err, err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["imgs"]


def test_train_needs_out_and_names_the_val_images_option(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    _images(tmp_path / "imgs", n=1, size=32)
    code, _, err = edn(monkeypatch, capsys, *_TRAIN)
    assert code == 2 and _one_line(err) and "--out is required" in err, err
    for task in ("denoiser", "sudoku"):
        code, _, err = edn(monkeypatch, capsys, "train", "--task", task, "--arch", "dncnn", "--images", "imgs")
        assert code == 2 and "--out is required" in err, err
    code, _, err = edn(monkeypatch, capsys, *_TRAIN, "--out", "tr", "--val-images", "nodir")
    assert code == 4 and _one_line(err) and "--val-images nodir: not a folder" in err, err
    code, _, err = edn(monkeypatch, capsys, *_TRAIN, "--out", "tr", "--images", "nodir")
    assert code == 4 and "--images nodir: not a folder" in err, err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["imgs"]


def test_train_denoiser_sizes_are_checked_first(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    _images(tmp_path / "imgs", n=1, size=32)
    code, _, err = edn(monkeypatch, capsys, "train", "--task", "denoiser", "--arch", "gradncnn", "--images", "imgs",
                       "--out", str(tmp_path / "d"), "--depth", "0")
    assert code == 2 and _one_line(err) and "--depth must be >= 2" in err, err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["imgs"]


@pytest.mark.parametrize("edit", [{"depth": "x"}, {"depth": 0}, {"width": None}, {"name": "gradncnn", "depth": None}])
def test_malformed_denoiser_metadata_is_a_checkpoint_error(tmp_path, edit):
    from edncli.networks.potentials import build_denoiser, default_arch, load_denoiser

    arch = default_arch("gradncnn", depth=2, width=2)
    tensors = {k: v.clone() for k, v in build_denoiser(arch).state_dict().items()}
    bad = _write_raw(tmp_path / "den.safetensors", tensors, {"task": "denoiser", "arch": {**arch, **edit}})
    with pytest.raises(CheckpointError, match="den.safetensors: corrupt architecture metadata"):
        load_denoiser(str(bad))


def test_bad_angle_count_names_the_value():
    with pytest.raises(UsageError, match=r"--angles must be >= 1, got 0$"):
        TaskSpec("ct", angles=0)
    with pytest.raises(UsageError, match=r"got -2$"):
        TaskSpec("ct", angles=90, angle_choices=(90, -2))
