"""Direction networks: the guarantee holds for any weights; training, checkpoints, eval, DDP."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from edncli.errors import CheckpointError
from edncli.io.checkpoints import load_checkpoint, read_metadata, save_checkpoint
from edncli.networks.backbones import BackboneConfig
from edncli.networks.direction import BaselineNet, DirectionNet, DirectionNetConfig
from edncli.solvers.methods import MethodOptions, Problem, solve
from edncli.solvers.stopping import DeltaChoice
from edncli.tasks import TaskSpec
from edncli.training.lagged import TrainConfig, train

from .test_cli import edn


def _images(folder: Path, n=3, size=40):
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    from scipy.ndimage import gaussian_filter

    for i in range(n):
        img = gaussian_filter(rng.random((size, size)), 1.5)
        img = (img - img.min()) / (img.max() - img.min())
        Image.fromarray(np.round(img * 255).astype(np.uint8)).save(folder / f"im{i}.png")
    return folder


@pytest.fixture(scope="module")
def tiny_sr(tmp_path_factory):
    """A tiny edn-sr-x4 checkpoint trained by the project's own training code."""
    root = tmp_path_factory.mktemp("tiny")
    imgs = _images(root / "imgs")
    cfg = TrainConfig(spec=TaskSpec("sr", scale=4), images=str(imgs), val_images=str(imgs), depth=3, width=8, patch=24,
                      batch=4, steps=6, lag_every=3, max_lag_steps=2, val_every=3, val_size=32, min_iter=4)
    out = train(cfg, root / "tiny-sr.safetensors", command="pytest", device=torch.device("cpu"), quiet=True,
                log_path=root / "tiny-sr.train.jsonl")
    return out


def _sr_problem(n=32, sigma=0.01):
    from edncli.operators.downsample import AveragePool, upsample

    gen = torch.Generator().manual_seed(0)
    x = torch.nn.functional.interpolate(torch.rand(1, 1, 8, 8, generator=gen), size=(n, n), mode="bicubic")[:, 0].clamp(0, 1)
    op = AveragePool((n, n), 4)
    f = op(x) + sigma * torch.randn(1, n // 4, n // 4, generator=gen)
    return x, op, f, upsample(f, 4)


def test_checkpoint_is_complete_and_loads_without_code(tiny_sr):
    meta = read_metadata(tiny_sr)
    assert meta["task"] == "edn-sr" and meta["arch"]["kind"] == "direction"
    assert meta["operator"]["scale"] == 4 and meta["command"] == "pytest"
    assert "val_psnr" in meta["metrics"]["best"]
    card = tiny_sr.with_suffix(".md").read_text()
    assert "sha256" in card and "pytest" in card
    assert tiny_sr.with_suffix(".train.jsonl").read_text().strip()
    with pytest.raises(CheckpointError, match="task"):
        load_checkpoint(tiny_sr, expect_task="denoiser")


@pytest.mark.parametrize("layer", ["cone_ball", "halfspace"])
def test_random_direction_network_keeps_the_guarantee(layer, tmp_path):
    # Whatever the weights, Algorithm 1 with the projection layer must lower the energy every step
    # and stop at δ: the network only chooses which descent direction to take.
    torch.manual_seed(3)
    net = DirectionNet(DirectionNetConfig(backbone=BackboneConfig(depth=3, width=8), layer=layer))
    for p in net.parameters():
        torch.nn.init.normal_(p, std=0.1)
    path = tmp_path / "rand.safetensors"
    save_checkpoint(path, net.state_dict(), {"task": "edn-sr", "arch": net.cfg.as_dict(),
                                              "operator": TaskSpec("sr", scale=4).as_dict(), "min_iter": 3})
    x, op, f, u0 = _sr_problem()
    delta = 1.1 * 0.01 * math.sqrt(f[0].numel())
    res = solve(Problem(op, f, u0, DeltaChoice(delta, "given"), task="sr"), "edn", MethodOptions(weights=str(path), max_iter=300))
    energies = [r.energy for r in res.trace]
    assert all(b <= a for a, b in zip(energies, energies[1:]))
    assert res.energy_monotone
    # min_iter from the checkpoint, unless float32 precision ended the run first (then said so)
    assert res.iterations >= 3 or res.samples[0].stop_reason == "precision_limit"
    # A random network is a worst case: eq. 22 keeps d on the ball's rim at angle up to
    # arccos(ζ1/ζ2) from the gradient (Prop. 2's slow rate with γ = ζ1/ζ2), eq. 21 bounds only
    # the component along the gradient. Either way the energy falls and never rises.
    assert energies[-1] < energies[0]
    if layer == "cone_ball":
        assert energies[-1] < 0.5 * energies[0]
    assert res.samples[0].fallback_steps == 0


def test_edn_method_with_trained_checkpoint(tiny_sr):
    x, op, f, u0 = _sr_problem()
    delta = 1.1 * 0.01 * math.sqrt(f[0].numel())
    res = solve(Problem(op, f, u0, DeltaChoice(delta, "given"), reference=x, task="sr"), "edn", MethodOptions(weights=str(tiny_sr)))
    assert res.delta_reached and res.energy_monotone
    import hashlib

    assert res.extra["checkpoint"]["sha256"] == hashlib.sha256(tiny_sr.read_bytes()).hexdigest()


def test_wrong_scale_and_wrong_kind_are_clear_errors(tiny_sr):
    from edncli.operators.downsample import AveragePool, upsample

    f = torch.rand(1, 16, 16)
    problem = Problem(AveragePool((32, 32), 2), f, upsample(f, 2), None, task="sr")
    with pytest.raises(CheckpointError, match="x4"):
        solve(problem, "edn", MethodOptions(weights=str(tiny_sr)))
    with pytest.raises(CheckpointError, match="baseline"):
        solve(problem, "baseline", MethodOptions(weights=str(tiny_sr)))


def test_corrupt_and_foreign_checkpoints(tmp_path):
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"\x00" * 64)
    with pytest.raises(CheckpointError):
        read_metadata(bad)
    from safetensors.torch import save_file

    foreign = tmp_path / "foreign.safetensors"
    save_file({"w": torch.zeros(2)}, str(foreign))
    with pytest.raises(CheckpointError, match="not an edn checkpoint"):
        read_metadata(foreign)
    pickle_file = tmp_path / "evil.pt"
    torch.save({"a": 1}, pickle_file)
    with pytest.raises(CheckpointError):
        read_metadata(pickle_file)


def test_train_cli_bad_input(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    Path("empty").mkdir()
    code, _, err = edn(monkeypatch, capsys, "train", "--task", "sr", "--images", "empty", "--out", "m", "--steps", "1")
    assert code == 4 and "no images" in err
    _images(tmp_path / "small", n=1, size=16)
    code, _, err = edn(monkeypatch, capsys, "train", "--task", "sr", "--images", "small", "--out", "m", "--steps", "1")
    assert code == 2 and "patch" in err
    assert not list(tmp_path.glob("m*.safetensors"))
    code, _, err = edn(monkeypatch, capsys, "train", "--task", "nope")
    assert code == 2
    code, _, err = edn(monkeypatch, capsys, "train", "--task", "sr", "--images", "small", "--out", "m", "--shuffle", "0")
    assert code == 2 and "--shuffle must be >= 1" in err and "Traceback" not in err
    code, _, err = edn(monkeypatch, capsys, "train", "--task", "sr", "--images", "small", "--out", "m", "--residual",
                       "--depth", "7")
    assert code == 2 and "--residual needs" in err and "--depth 7" in err and "Traceback" not in err
    code, _, err = edn(monkeypatch, capsys, "train", "--task", "denoiser", "--residual")
    assert code == 2 and "--residual is for --task sr|ct|deblur" in err and "Traceback" not in err
    assert not list(tmp_path.glob("m*.safetensors"))


def test_eval_and_weights_commands(tiny_sr, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    _images(tmp_path / "clean", n=2, size=32)
    code, out, err = edn(monkeypatch, capsys, "eval", "sr", "--images", "clean", "--methods", f"gd,tv,edn:{tiny_sr}",
                         "--json", "table.json")
    assert code == 0, err
    doc = json.loads(Path("table.json").read_text())
    for name in ("gd", "tv", f"edn:{tiny_sr}"):
        mean = doc["methods"][name]["mean"]
        assert set(mean) >= {"psnr", "ssim", "residual_sq", "iterations", "time_s"}
    assert doc["methods"][f"edn:{tiny_sr}"]["energy_monotone_all"] is True
    assert len(doc["rows"]) == 6
    # tv's α search is work outside its `iterations`: counted per image, and shown in the table
    tv_rows = [r for r in doc["rows"] if r["method"] == "tv"]
    assert all(r["search_iterations"] > 0 and r["alpha"] > 0 for r in tv_rows)
    assert not any("search_iterations" in r for r in doc["rows"] if r["method"] != "tv")
    assert doc["methods"]["tv"]["mean"]["search_iterations"] == sum(r["search_iterations"] for r in tv_rows) / 2
    assert "α search)" in out
    monkeypatch.setenv("EDN_WEIGHTS_DIR", str(tiny_sr.parent))
    code, out, _ = edn(monkeypatch, capsys, "weights", "show", tiny_sr.stem)
    assert code == 0 and json.loads(out)["task"] == "edn-sr"
    code, out, _ = edn(monkeypatch, capsys, "weights", "list")
    assert code == 0 and tiny_sr.stem in out


def test_eval_paper_protocol_fixed_iterations_with_learned_steps(tiny_sr, tmp_path, monkeypatch, capsys):
    # Table 1 of paper 001: noise-free data, a fixed number of iterations. With --learned-steps 2
    # edn takes two network steps and then Landweber steps; for average pooling one Landweber step
    # fits the data exactly, so the residual ends at round-off (all network steps: it need not).
    monkeypatch.chdir(tmp_path)
    _images(tmp_path / "clean", n=2, size=32)
    args = ["eval", "sr", "--images", "clean", "--methods", f"edn:{tiny_sr}", "--noise-sigma", "0", "--iterations", "6"]
    code, _, err = edn(monkeypatch, capsys, *args, "--learned-steps", "2", "--json", "t.json")
    assert code == 0, err
    doc = json.loads(Path("t.json").read_text())
    assert doc["protocol"]["learned_steps"] == 2 and doc["protocol"]["iterations"] == 6
    mean = doc["methods"][f"edn:{tiny_sr}"]["mean"]
    assert mean["residual_sq"] < 1e-8 and 2 < mean["iterations"] <= 6  # stops early once E is at round-off
    code, _, err = edn(monkeypatch, capsys, *args, "--learned-steps", "-1")
    assert code == 2 and "--learned-steps must be >= 0" in err and "Traceback" not in err
    # the protocol records the hand-over and the network precision; bad values are usage errors
    assert doc["protocol"]["handover"] == "cg" and doc["protocol"]["precision"] == "fp32"
    code, _, err = edn(monkeypatch, capsys, *args, "--precision", "bf16", "--handover", "gd", "--json", "b.json")
    assert code == 0, err
    doc = json.loads(Path("b.json").read_text())
    assert doc["protocol"]["handover"] == "gd" and doc["protocol"]["precision"] == "bf16"
    assert doc["methods"][f"edn:{tiny_sr}"]["energy_monotone_all"] is True
    for bad, msg in ((["--precision", "fp8"], "--precision must be one of"), (["--handover", "lbfgs"], "--handover must be gd or cg")):
        code, _, err = edn(monkeypatch, capsys, *args, *bad)
        assert code == 2 and msg in err and "Traceback" not in err, err


def test_residual_backbone_trains_warm_starts_and_solves(tmp_path):
    # a residual baseline, then a residual edn warm-started from it (the shipped chain's shape);
    # a plain network cannot start from it, and the edn run keeps the energy monotone and meets δ
    from edncli.errors import UsageError

    imgs = _images(tmp_path / "imgs")
    common = dict(spec=TaskSpec("sr", scale=4), images=str(imgs), val_images=str(imgs), depth=4, width=8, patch=24,
                  batch=4, steps=3, val_every=3, val_size=32, shuffle=4, residual=True)
    base = train(TrainConfig(kind="baseline", **common), tmp_path / "b.safetensors", command="pytest",
                 device=torch.device("cpu"), quiet=True)
    assert read_metadata(base)["arch"]["residual"] is True
    out = train(TrainConfig(kind="edn", init_from=str(base), lag_every=2, max_lag_steps=1, min_iter=2, **common),
                tmp_path / "e.safetensors", command="pytest", device=torch.device("cpu"), quiet=True)
    with pytest.raises(UsageError, match="residual True does not match"):
        train(TrainConfig(kind="edn", init_from=str(base), **{**common, "residual": False}), tmp_path / "p.safetensors",
              command="pytest", device=torch.device("cpu"), quiet=True)
    x, op, f, u0 = _sr_problem()
    res = solve(Problem(op=op, f=f, u0=u0, delta=DeltaChoice(0.01 * 8, "given"), task="sr"), "edn",
                MethodOptions(weights=str(out)))
    assert res.energy_monotone and res.delta_reached


def test_eval_luma_conventions(tmp_path, monkeypatch, capsys):
    # --luma ycbcr (the "Y channel" of SR benchmark tables) spans 219/255 of the full range: for
    # gd, which commutes with y -> a y + b (average pooling and bicubic upsampling keep
    # constants; Armijo steps do not depend on scale), the same reconstruction reads exactly
    # 20 log10(255/219) dB higher; images are kept inside [0.2, 0.8] so the [0, 1] clamp never acts.
    monkeypatch.chdir(tmp_path)
    from scipy.ndimage import gaussian_filter

    rng = np.random.default_rng(5)
    Path("rgb").mkdir()
    for i in range(2):
        img = gaussian_filter(rng.random((32, 32, 3)), (2, 2, 0))
        img = 0.2 + 0.6 * (img - img.min()) / (img.max() - img.min())
        Image.fromarray(np.round(img * 255).astype(np.uint8), "RGB").save(f"rgb/im{i}.png")
    _images(tmp_path / "gray", n=1, size=32)
    base = ["eval", "sr", "--methods", "gd", "--noise-sigma", "0", "--iterations", "3"]
    psnr = {}
    for luma in ("full", "ycbcr"):
        for folder in ("rgb", "gray"):
            code, _, err = edn(monkeypatch, capsys, *base, "--images", folder, "--luma", luma, "--json", f"{folder}-{luma}.json")
            assert code == 0, err
            doc = json.loads(Path(f"{folder}-{luma}.json").read_text())
            assert doc["protocol"]["luma"] == luma and luma in ("full", "ycbcr")
            psnr[folder, luma] = [r["psnr"] for r in doc["rows"]]
    shift = 20 * math.log10(255 / 219)
    assert all(abs((y - f) - shift) < 2e-3 for f, y in zip(psnr["rgb", "full"], psnr["rgb", "ycbcr"])), psnr
    assert psnr["gray", "full"] == psnr["gray", "ycbcr"]  # gray images are used as they are
    code, _, err = edn(monkeypatch, capsys, *base, "--images", "rgb", "--luma", "yuv")
    assert code == 2 and "--luma must be one of full, ycbcr" in err and "Traceback" not in err


@pytest.mark.slow
def test_data_parallel_training_with_torchrun(tmp_path):
    imgs = _images(tmp_path / "imgs")
    # --standalone: a rendezvous on a free local port; inherited rank variables dropped. Run three
    # times: without the final barrier a finished rank aborted in gloo at exit in ~1 run of 3.
    env = {k: v for k, v in os.environ.items() if k not in ("WORLD_SIZE", "RANK", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")}
    env["OMP_NUM_THREADS"] = "1"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", "-m", "edncli",
           "train", "--task", "sr", "--images", str(imgs), "--out", str(tmp_path / "ddp"), "--depth", "3", "--width", "8",
           "--patch-size", "24", "--batch-size", "2", "--steps", "4", "--val-every", "2", "--lag-every", "2",
           "--max-lag-steps", "1", "--device", "cpu", "--quiet", "--force"]
    cmd[3:3] = ["--tee", "3"]  # each rank's stderr prefixed with its rank, so an abort names the rank
    for _ in range(3):
        proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
        # head and tail: a rank's own abort message comes before torchrun's long failure summary
        assert proc.returncode == 0, proc.stderr[:3000] + "\n...\n" + proc.stderr[-3000:]
    meta = read_metadata(tmp_path / "ddp.safetensors")
    assert meta["world_size"] == 2 and meta["metrics"]["steps"] == 4


def test_edn_hands_over_to_landweber_after_its_learned_steps(tiny_sr):
    # With --handover gd, after `learned_steps` network steps a sample that has not met δ continues
    # with -grad/L at a unit trial step: with learned_steps=0 that is exactly Landweber (gd).
    x, op, f, u0 = _sr_problem(sigma=0.02)
    problem = Problem(op, f, u0, DeltaChoice(0.5 * 0.02 * 8, "given"), task="sr")
    land = solve(problem, "edn", MethodOptions(weights=str(tiny_sr), min_iter=0, learned_steps=0, max_iter=200, handover="gd"))
    ref = solve(problem, "gd", MethodOptions(max_iter=200))
    assert land.extra["learned_steps"] == 0
    assert land.iterations == ref.iterations > 0
    assert torch.allclose(land.u, ref.u, atol=1e-6)


def test_edn_learned_steps_then_delta_is_reached(tiny_sr):
    x, op, f, u0 = _sr_problem(sigma=0.02)
    delta = DeltaChoice(0.5 * 0.02 * 8, "given")  # below the noise: needs steps beyond the learned ones
    res = solve(Problem(op, f, u0, delta, task="sr"), "edn", MethodOptions(weights=str(tiny_sr), min_iter=2, learned_steps=2, max_iter=300))
    assert res.extra["learned_steps"] == 2
    assert res.energy_monotone
    assert res.delta_reached and res.iterations > 2


@pytest.mark.parametrize("shuffle", [1, 2])
def test_warm_start_from_a_baseline_gives_its_correction_as_the_first_raw_output(tmp_path, shuffle):
    # edn train --init-from: the direction network's backbone starts as the baseline's, with the
    # gradient plane at zero, so its raw output z equals the baseline's correction x - u0 (also
    # with a space-to-depth backbone, whose input planes are blocks of shuffle² channels).
    from edncli.networks.direction import network_inputs
    from edncli.solvers.learned import load_learned
    from edncli.training.lagged import warm_start

    imgs = _images(tmp_path / "imgs")
    common = dict(spec=TaskSpec("sr", scale=4, init="classic"), images=str(imgs), val_images=str(imgs), depth=3, width=8,
                  patch=24, batch=4, steps=3, val_every=3, val_size=32, shuffle=shuffle)
    base = train(TrainConfig(kind="baseline", **common), tmp_path / "b.safetensors", command="pytest",
                 device=torch.device("cpu"), quiet=True)
    cfg = TrainConfig(kind="edn", min_iter=1, **common)
    net = DirectionNet(DirectionNetConfig(backbone=BackboneConfig(3, 1, 3, 8, False, shuffle)))
    warm_start(net, cfg, str(base))
    bnet, _ = load_learned("baseline", str(base), "cpu")
    x, op, f, u0 = _sr_problem()
    data = network_inputs(op, f)
    g = torch.randn_like(u0)  # any gradient: its plane starts with zero weights
    with torch.no_grad():
        assert torch.allclose(net.raw(u0, g, data), bnet(u0, data) - u0, atol=1e-6)
    bnet.backbone.body[-1].weight.data.normal_(std=0.1)  # a correction that is not zero, seen through both
    net.backbone.body[-1].weight.data.copy_(bnet.backbone.body[-1].weight.data)
    with torch.no_grad():
        assert float((bnet(u0, data) - u0).abs().max()) > 1e-3
        assert torch.allclose(net.raw(u0, g, data), bnet(u0, data) - u0, atol=1e-5)
    with pytest.raises(Exception, match="depth"):
        warm_start(DirectionNet(DirectionNetConfig(backbone=BackboneConfig(3, 1, 4, 8, False, shuffle))),
                   TrainConfig(kind="edn", **{**common, "depth": 4}), str(base))
    other = 3 - shuffle
    with pytest.raises(Exception, match=f"shuffle {shuffle}, residual False does not match --depth 3 --width 8 --shuffle {other}"):
        warm_start(DirectionNet(DirectionNetConfig(backbone=BackboneConfig(3, 1, 3, 8, False, other))),
                   TrainConfig(kind="edn", **{**common, "shuffle": other}), str(base))


def test_ct_training_draws_one_angle_count_per_batch(tmp_path, monkeypatch, capsys):
    # `--angles 12,8,16`: each mini-batch is measured with one of the listed geometries, the
    # validation with the first; the checkpoint and its card say which were used.
    pytest.importorskip("astra")
    drawn = []
    real = TaskSpec.operator

    def spy(self, shape, kernel_sigma=None, device="cpu", angles=None):
        op = real(self, shape, kernel_sigma=kernel_sigma, device=device, angles=angles)
        drawn.append((tuple(shape[-2:]), op.out_shape[0]))
        return op

    monkeypatch.setattr(TaskSpec, "operator", spy)
    monkeypatch.chdir(tmp_path)
    code, _, err = edn(monkeypatch, capsys, "train", "--task", "ct", "--angles", "12,8,16", "--out", "m", "--steps", "12",
                       "--depth", "2", "--width", "4", "--patch-size", "16", "--batch-size", "2", "--val-every", "12",
                       "--lag-every", "6", "--max-lag-steps", "1", "--min-iter", "1", "--quiet")
    assert code == 0, err
    train_angles = {n for shape, n in drawn if shape == (16, 16)}
    assert train_angles == {8, 12, 16}  # 12 batches: every listed count drawn (seeded)
    assert {n for shape, n in drawn if shape != (16, 16)} == {12}  # validation at the first
    meta = read_metadata(tmp_path / "m.safetensors")
    assert meta["operator"]["angles"] == 12 and meta["operator"]["angle_choices"] == [12, 8, 16]
    assert "[12, 8, 16]" in (tmp_path / "m.md").read_text()
    code, _, err = edn(monkeypatch, capsys, "train", "--task", "ct", "--angles", "90,x", "--out", "m2")
    assert code == 2 and "--angles" in err


def test_train_in_bf16_writes_a_float32_checkpoint_that_keeps_the_guarantee(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    _images(tmp_path / "imgs", n=2, size=32)
    args = ["train", "--task", "sr", "--images", "imgs", "--depth", "3", "--width", "8", "--patch-size", "24",
            "--batch-size", "4", "--steps", "4", "--lag-every", "2", "--max-lag-steps", "2", "--val-every", "2",
            "--min-iter", "2", "--device", "cpu", "--quiet"]
    code, _, err = edn(monkeypatch, capsys, *args, "--out", "b", "--precision", "bf16")
    assert code == 0, err
    meta = read_metadata(Path("b.safetensors"))
    assert meta["train_config"]["precision"] == "bf16"
    tensors, _ = load_checkpoint(Path("b.safetensors"), expect_task="edn-sr")
    assert all(t.dtype == torch.float32 for t in tensors.values())
    x, op, f, u0 = _sr_problem()
    res = solve(Problem(op, f, u0, DeltaChoice(0.01 * 8, "given"), task="sr"), "edn",
                MethodOptions(weights=str(Path("b.safetensors").resolve()), max_iter=50))
    assert res.energy_monotone
    code, _, err = edn(monkeypatch, capsys, *args, "--out", "c", "--precision", "fp16")
    assert code == 2 and "--precision for training must be fp32 or bf16" in err and "Traceback" not in err
    assert not Path("c.safetensors").exists()
    code, _, err = edn(monkeypatch, capsys, "train", "--task", "denoiser", "--arch", "dncnn", "--images", "imgs",
                       "--out", "d", "--precision", "bf16")
    assert code == 2 and "--precision is for --task sr|ct|deblur" in err


def test_warm_start_is_validated_first_and_kept_when_no_step_beats_it(tmp_path, monkeypatch):
    # --init-from: the warm start is validated as step 0 before any update; when no later step
    # validates higher (here the validation is made to fall), the checkpoint holds the warm start.
    import edncli.training.lagged as lagged
    from edncli.io.checkpoints import load_checkpoint
    from edncli.training.lagged import warm_start

    imgs = _images(tmp_path / "imgs")
    common = dict(spec=TaskSpec("sr", scale=4), images=str(imgs), val_images=str(imgs), depth=3, width=8, patch=24,
                  batch=4, val_size=32, shuffle=1)
    base = train(TrainConfig(kind="baseline", steps=3, val_every=3, **common), tmp_path / "b.safetensors",
                 command="pytest", device=torch.device("cpu"), quiet=True, log_path=tmp_path / "b.train.jsonl")
    # no warm start, no step 0
    assert [json.loads(line)["step"] for line in Path(tmp_path / "b.train.jsonl").read_text().splitlines()] == [3]
    real, calls = lagged.evaluate, []

    def falling(*args, **kwargs):
        calls.append(1)
        return {**real(*args, **kwargs), "val_psnr": 30.0 - len(calls)}

    monkeypatch.setattr(lagged, "evaluate", falling)
    cfg = TrainConfig(kind="edn", init_from=str(base), lr=1e-2, steps=2, val_every=1, lag_every=2, max_lag_steps=1,
                      min_iter=1, **common)
    out = train(cfg, tmp_path / "e.safetensors", command="pytest", device=torch.device("cpu"), quiet=True,
                log_path=tmp_path / "e.train.jsonl")
    rows = [json.loads(line) for line in Path(tmp_path / "e.train.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [0, 1, 2] and rows[0]["loss"] is None
    meta = read_metadata(out)
    assert meta["metrics"]["best"]["step"] == 0
    tensors, _ = load_checkpoint(out)
    start = DirectionNet(DirectionNetConfig(backbone=BackboneConfig(3, 1, 3, 8, False, 1)))
    warm_start(start, cfg, str(base))
    for name, value in start.state_dict().items():
        assert torch.equal(tensors[name], value), name
    # when a trained step validates higher, it is kept instead
    monkeypatch.setattr(lagged, "evaluate", lambda *a, **k: {**real(*a, **k), "val_psnr": 20.0 + len(calls.append(1) or calls)})
    out = train(cfg, tmp_path / "e2.safetensors", command="pytest", device=torch.device("cpu"), quiet=True)
    assert read_metadata(out)["metrics"]["best"]["step"] == 2
    assert not torch.equal(load_checkpoint(out)[0]["backbone.body.0.weight"], start.state_dict()["backbone.body.0.weight"])


def test_validation_noise_level_is_the_configured_one(tmp_path):
    # --val-noise-sigma: validation measurements carry exactly that noise (0: the same data for any
    # seed), the log and the card state it, and a negative level is a usage error
    from edncli.errors import UsageError
    from edncli.training.lagged import evaluate

    imgs = _images(tmp_path / "imgs")
    common = dict(spec=TaskSpec("sr", scale=4), images=str(imgs), val_images=str(imgs), depth=3, width=8, patch=24,
                  batch=4, val_size=32, kind="baseline")
    net = BaselineNet(BackboneConfig(2, 1, 3, 8, False, 1))
    x = torch.rand(2, 32, 32, generator=torch.Generator().manual_seed(0))
    clean = [evaluate(TrainConfig(val_noise=0.0, **common), net, x, torch.device("cpu"), seed=s) for s in (0, 1)]
    noisy = [evaluate(TrainConfig(val_noise=0.05, **common), net, x, torch.device("cpu"), seed=s) for s in (0, 1)]
    assert clean[0]["val_psnr_init"] == clean[1]["val_psnr_init"] and clean[0]["val_noise_sigma"] == 0.0
    assert noisy[0]["val_psnr_init"] != noisy[1]["val_psnr_init"] and noisy[0]["val_noise_sigma"] == 0.05
    assert noisy[0]["val_psnr_init"] < clean[0]["val_psnr_init"]
    out = train(TrainConfig(val_noise=0.0, steps=2, val_every=2, **common), tmp_path / "v.safetensors",
                command="pytest", device=torch.device("cpu"), quiet=True, log_path=tmp_path / "v.train.jsonl")
    assert json.loads(Path(tmp_path / "v.train.jsonl").read_text().splitlines()[-1])["val_noise_sigma"] == 0.0
    assert "at noise std 0, on up to 8 centre crops of 32²;" in out.with_suffix(".md").read_text()
    with pytest.raises(UsageError, match="--val-noise-sigma must be"):
        TrainConfig(val_noise=-0.01, **common).check()
    # --val-size / --val-count: the centre crops of the first images large enough, as many as asked
    from edncli.training.lagged import _validation_set

    _images(tmp_path / "mixed", n=2, size=24)
    for name, size in (("big0.png", 44), ("big1.png", 48)):
        Image.fromarray(np.full((size, size + 4), 7, np.uint8)).save(tmp_path / "mixed" / name)
    val = {**common, "val_images": str(tmp_path / "mixed")}
    assert tuple(_validation_set(TrainConfig(**{**val, "val_size": 40, "val_count": 8}), 0).shape) == (2, 40, 40)
    assert tuple(_validation_set(TrainConfig(**{**val, "val_size": 40, "val_count": 1}), 0).shape) == (1, 40, 40)
    assert tuple(_validation_set(TrainConfig(**{**val, "val_size": 20, "val_count": 3}), 0).shape) == (3, 20, 20)
    with pytest.raises(UsageError, match="no image is 52x52 or larger"):
        _validation_set(TrainConfig(**{**val, "val_size": 52}), 0)


def test_resume_continues_the_step_count_quietly_and_refuses_nothing_to_do(tmp_path):
    # --resume: training goes on from the checkpoint's step (its schedule fast-forwarded without
    # torch's "scheduler before optimizer" warning); a --steps the checkpoint already reached is a
    # usage error before any file is written
    import warnings

    from edncli.errors import UsageError

    imgs = _images(tmp_path / "imgs")
    common = dict(spec=TaskSpec("sr", scale=4), images=str(imgs), val_images=str(imgs), depth=3, width=8, patch=24,
                  batch=4, val_size=32, val_every=2, kind="baseline")
    first = train(TrainConfig(steps=2, **common), tmp_path / "a.safetensors", command="pytest",
                  device=torch.device("cpu"), quiet=True)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        more = train(TrainConfig(steps=4, **common), tmp_path / "b.safetensors", command="pytest",
                     device=torch.device("cpu"), quiet=True, resume=first, log_path=tmp_path / "b.train.jsonl")
    assert not [w for w in caught if "lr_scheduler" in str(w.message)]
    assert read_metadata(more)["metrics"]["steps"] == 4
    assert [json.loads(r)["step"] for r in (tmp_path / "b.train.jsonl").read_text().splitlines()] == [2, 4]
    with pytest.raises(UsageError, match="its weights are those of step 2, so --steps 2 leaves nothing to do"):
        train(TrainConfig(steps=2, **common), tmp_path / "c.safetensors", command="pytest", device=torch.device("cpu"),
              quiet=True, resume=first, log_path=tmp_path / "c.train.jsonl")
    assert not list(tmp_path.glob("c.*"))


def test_training_log_is_standard_json_when_a_metric_is_not_finite(tmp_path, monkeypatch):
    # A diverged validation (NaN PSNR) was written as a bare `NaN`, which strict JSON readers
    # (jq, JSON.parse) refuse; the log rows are standard JSON with null, like the reports.
    import edncli.training.lagged as lagged

    imgs = _images(tmp_path / "imgs")
    real = lagged.evaluate
    monkeypatch.setattr(lagged, "evaluate", lambda *a, **k: {**real(*a, **k), "val_psnr_init": float("nan")})
    cfg = TrainConfig(kind="baseline", spec=TaskSpec("sr", scale=4), images=str(imgs), val_images=str(imgs), depth=3,
                      width=8, patch=24, batch=4, val_size=32, shuffle=1, steps=2, val_every=2)
    log = tmp_path / "n.train.jsonl"
    train(cfg, tmp_path / "n.safetensors", command="pytest", device=torch.device("cpu"), quiet=True, log_path=log)
    text = log.read_text()
    assert "NaN" not in text
    rows = [json.loads(line, parse_constant=lambda c: pytest.fail(f"non-standard JSON constant {c}")) for line in text.splitlines()]
    assert rows[-1]["val_psnr_init"] is None


@pytest.mark.parametrize("cap", [0, 1, 2])
def test_a_given_cap_below_the_checkpoints_min_iter_wins(tiny_sr, cap):
    # tiny_sr defaults to 4 steps before the δ test; --max-iter N < 4 (no --min-iter) runs N steps.
    x, op, f, u0 = _sr_problem()
    delta = DeltaChoice(10.0, "given")  # met from the start: only the cap and min_iter decide
    res = solve(Problem(op, f, u0, delta, task="sr"), "edn", MethodOptions(weights=str(tiny_sr), max_iter=cap))
    assert res.iterations == cap
    assert res.extra["min_iter"] == cap
    free = solve(Problem(op, f, u0, delta, task="sr"), "edn", MethodOptions(weights=str(tiny_sr)))
    assert free.iterations == free.extra["min_iter"] == 4  # without a cap the checkpoint's default holds
