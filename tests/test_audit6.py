"""Sixth audit: what a resumed or interrupted `edn train` keeps, and the smaller CLI findings left
open by the fifth audit. Each test failed on the code before its fix."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

import edncli.training.lagged as lagged
from edncli.io.checkpoints import load_checkpoint, read_metadata, save_checkpoint
from edncli.tasks import TaskSpec
from edncli.training.lagged import TrainConfig, train

from .test_learned import _images

_CPU = torch.device("cpu")


def _cfg(imgs: Path, **kw) -> TrainConfig:
    base = dict(spec=TaskSpec("sr", scale=4), images=str(imgs), val_images=str(imgs), depth=3, width=8, patch=24,
                batch=4, val_size=32, val_every=2, kind="baseline", shuffle=1)
    return TrainConfig(**{**base, **kw})


def _rows(log: Path) -> list:
    return [json.loads(line) for line in log.read_text().splitlines()]


def test_a_resumed_run_that_validates_lower_keeps_the_checkpoints_weights(tmp_path):
    # The run keeps its best validated step; a resume that only got worse (here: a learning rate
    # that wrecks the network) used to write its own, worse weights over the checkpoint's.
    imgs = _images(tmp_path / "imgs")
    first = train(_cfg(imgs, steps=2), tmp_path / "a.safetensors", command="pytest", device=_CPU, quiet=True)
    before, meta0 = load_checkpoint(first)
    log = tmp_path / "b.train.jsonl"
    more = train(_cfg(imgs, steps=4, lr=50.0), tmp_path / "b.safetensors", command="pytest", device=_CPU, quiet=True,
                 resume=first, log_path=log)
    after, meta = load_checkpoint(more)
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert meta["metrics"]["best"]["step"] == 2 and meta["metrics"]["steps"] == 4
    rows = _rows(log)
    assert [r["step"] for r in rows] == [2, 4] and rows[0]["resumed"] is True
    assert rows[0]["val_psnr"] == pytest.approx(meta0["metrics"]["best"]["val_psnr"], abs=1e-6)
    assert rows[1]["val_psnr"] < rows[0]["val_psnr"]


def test_resume_goes_on_from_the_step_of_the_weights_it_loads(tmp_path, capsys):
    # A checkpoint holds its best step's weights; after Ctrl-C at step 5 with the best at step 2,
    # --resume used to continue at step 5 with step 2's weights (and refuse --steps 4 as done).
    imgs = _images(tmp_path / "imgs")
    first = train(_cfg(imgs, steps=2), tmp_path / "a.safetensors", command="pytest", device=_CPU, quiet=True)
    tensors, meta = load_checkpoint(first)
    meta["metrics"].update(steps=5, interrupted=True)
    save_checkpoint(tmp_path / "cut.safetensors", tensors, meta)
    log = tmp_path / "c.train.jsonl"
    more = train(_cfg(imgs, steps=4), tmp_path / "c.safetensors", command="pytest", device=_CPU, quiet=False,
                 resume=tmp_path / "cut.safetensors", log_path=log)
    assert [r["step"] for r in _rows(log)] == [2, 4]
    assert read_metadata(more)["metrics"]["steps"] == 4
    assert "resuming at step 2" in capsys.readouterr().err


def test_a_resumed_run_draws_new_samples_and_continues_the_clock(tmp_path, monkeypatch):
    imgs = _images(tmp_path / "imgs")
    seen: list = []
    real = lagged._Sampler.sample
    monkeypatch.setattr(lagged._Sampler, "sample", lambda self, n: seen.append(real(self, n)) or seen[-1])
    first = train(_cfg(imgs, steps=2), tmp_path / "a.safetensors", command="pytest", device=_CPU, quiet=True)
    fresh = list(seen)
    seen.clear()
    more = train(_cfg(imgs, steps=4), tmp_path / "b.safetensors", command="pytest", device=_CPU, quiet=True,
                 resume=first, log_path=tmp_path / "b.train.jsonl")
    resumed = list(seen)
    assert not torch.equal(fresh[0], resumed[0]) and not torch.equal(fresh[1], resumed[1])
    seen.clear()  # the same resume again draws the same batches: seeded by (seed, rank, start step)
    train(_cfg(imgs, steps=4), tmp_path / "b2.safetensors", command="pytest", device=_CPU, quiet=True, resume=first)
    assert all(torch.equal(a, b) for a, b in zip(resumed, seen))
    t_first = read_metadata(first)["train_time_s"]
    rows = _rows(tmp_path / "b.train.jsonl")
    assert rows[0]["time_s"] >= t_first and read_metadata(more)["train_time_s"] >= t_first


def test_the_validation_at_ctrl_c_is_in_the_log(tmp_path, monkeypatch):
    # Interrupted before its first validation, training validates once to have a best row; that row
    # was in the card but not in the .train.jsonl.
    imgs = _images(tmp_path / "imgs")
    calls = []
    real = lagged._Sampler.sample

    def sample(self, n):
        calls.append(n)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(self, n)

    monkeypatch.setattr(lagged._Sampler, "sample", sample)
    log = tmp_path / "i.train.jsonl"
    out = train(_cfg(imgs, steps=8, val_every=4), tmp_path / "i.safetensors", command="pytest", device=_CPU,
                quiet=True, log_path=log)
    meta = read_metadata(out)
    assert meta["metrics"]["interrupted"] is True
    rows = _rows(log)
    assert [r["step"] for r in rows] == [1] and rows[0]["interrupted"] is True
    assert rows[0]["val_psnr"] == pytest.approx(meta["metrics"]["best"]["val_psnr"])


def test_an_edn_resume_between_two_refreshes_uses_a_lagged_copy_at_once(tmp_path, monkeypatch):
    # Resumed at step 3 with --lag-every 2, the iterates came from gradient descent until step 4.
    imgs = _images(tmp_path / "imgs")
    cfg = dict(kind="edn", lag_every=2, max_lag_steps=2, val_every=3)
    first = train(_cfg(imgs, steps=3, **cfg), tmp_path / "e.safetensors", command="pytest", device=_CPU, quiet=True)
    lags: list = []
    real = lagged._iterate
    monkeypatch.setattr(lagged, "_iterate", lambda spec, net, *a: lags.append(net is not None) or real(spec, net, *a))
    train(_cfg(imgs, steps=5, **cfg), tmp_path / "f.safetensors", command="pytest", device=_CPU, quiet=True,
          resume=first)
    assert lags == [True, True]


# ---- CLI wording and options (fifth audit's open findings) ----------------------------------

from .test_cli import edn  # noqa: E402

_EX = Path(__file__).resolve().parents[1] / "examples"


def _one_line(err: str) -> str:
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("edn: error:") and "Traceback" not in err, err
    return lines[0]


def test_a_folder_given_as_a_file_is_called_a_folder(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "d").mkdir()
    code, _, err = edn(monkeypatch, capsys, "deblur", "--kernel", "d", _EX / "camera_blur.tif", "-o", "x.png")
    assert code == 4 and "--kernel d: is a folder, not a file" in _one_line(err)
    code, _, err = edn(monkeypatch, capsys, "sr", "--weights", "d", _EX / "camera_lr_x4.tif", "-o", "x.png")
    assert code == 4 and "--weights d: is a folder, not a file" in _one_line(err)
    _images(tmp_path / "imgs", n=2, size=32)
    code, _, err = edn(monkeypatch, capsys, "train", "--task", "sr", "--images", "imgs", "--depth", "3", "--width", "8",
                       "--patch-size", "24", "--steps", "2", "--out", "r", "--resume", "d", "--quiet")
    assert code == 4 and "checkpoint d: is a folder, not a file" in _one_line(err)
    assert not list(tmp_path.glob("x.*")) and not list(tmp_path.glob("r.*"))


def test_a_corrupt_npy_is_not_met_with_numpys_pickle_hint(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    Path("k.npy").write_bytes(b"garbage, not an array")
    Path("in.npy").write_bytes(b"garbage, not an array")
    for args in (["deblur", "--kernel", "k.npy", _EX / "camera_blur.tif"], ["sr", "in.npy"]):
        code, _, err = edn(monkeypatch, capsys, *args, "-o", "x.png")
        line = _one_line(err)
        assert code == 4 and "not a NumPy array file" in line and "allow_pickle" not in line, line


def test_an_hdf5_kernel_with_several_datasets_is_chosen_with_kernel_dataset(tmp_path, monkeypatch, capsys):
    import h5py
    import numpy as np

    from edncli.io.images import read_image
    from edncli.operators.blur import gaussian_kernel

    monkeypatch.chdir(tmp_path)
    wide, narrow = gaussian_kernel(2.5, 15).numpy(), gaussian_kernel(0.8, 15).numpy()
    with h5py.File("k.h5", "w") as fh:
        fh["wide"], fh["narrow"] = wide, narrow
    clean = _EX / "camera.png"
    code, _, err = edn(monkeypatch, capsys, "simulate", "deblur", "--kernel", "k.h5", clean, "-o", "b.tif")
    assert code == 4 and "several datasets" in err and "pass --kernel-dataset" in _one_line(err)
    for name in ("wide", "narrow"):
        code, _, err = edn(monkeypatch, capsys, "simulate", "deblur", "--kernel", "k.h5", "--kernel-dataset", name,
                           "--noise-sigma", "0", clean, "-o", f"{name}.tif")
        assert code == 0, err
    a, b = read_image("wide.tif")[0], read_image("narrow.tif")[0]
    assert float(np.abs(np.diff(a, axis=1)).mean()) < float(np.abs(np.diff(b, axis=1)).mean())  # wider = smoother
    code, _, err = edn(monkeypatch, capsys, "deblur", "--kernel", "k.h5", "--kernel-dataset", "narrow", "narrow.tif",
                       "-o", "s.tif", "--method", "tv", "--noise-sigma", "0.01", "--report", "s.json", "--quiet")
    assert code in (0, 3), err
    code, _, err = edn(monkeypatch, capsys, "deblur", "--kernel-sigma", "1", "--kernel-dataset", "narrow",
                       "narrow.tif", "-o", "t.tif")
    assert code == 2 and "--kernel-dataset applies to --kernel FILE" in _one_line(err)
    np.save("k.npy", narrow)
    code, _, err = edn(monkeypatch, capsys, "deblur", "--kernel", "k.npy", "--kernel-dataset", "narrow", "narrow.tif",
                       "-o", "t.tif")
    assert code == 2 and "applies to an HDF5 kernel only" in _one_line(err)
    assert not Path("t.tif").exists()


def test_weights_list_keeps_errors_out_of_task_and_names_only_usable_checkpoints(tmp_path, monkeypatch, capsys):
    (tmp_path / "w").mkdir()
    (tmp_path / "w" / "junk.safetensors").write_bytes(b"not a checkpoint")
    monkeypatch.setenv("EDN_WEIGHTS_DIR", str(tmp_path / "w"))
    code, out, err = edn(monkeypatch, capsys, "weights", "list", "--json")
    rows = {r["name"]: r for r in json.loads(out)}
    assert code == 0 and rows["junk"]["task"] is None and rows["junk"]["error"]
    assert rows["edn-sr-x4"]["task"] == "edn-sr" and rows["edn-sr-x4"]["error"] is None
    code, out, _ = edn(monkeypatch, capsys, "weights", "list")
    assert "junk" in out and "unreadable" in out
    code, _, err = edn(monkeypatch, capsys, "sr", "--weights", "nosuch", _EX / "camera_lr_x4.tif", "-o", "x.png")
    line = _one_line(err)
    assert code == 4 and "edn-sr-x4" in line and "junk" not in line


@pytest.mark.parametrize("method, weights", [("potential", "gradncnn"), ("red", "dncnn")])
def test_a_given_cap_below_the_presets_minimum_is_the_minimum_in_the_report(tmp_path, monkeypatch, capsys, method,
                                                                           weights):
    # The deblur preset's min_iter (80 for potential, 100 for red) stood in the report above
    # --max-iter 60, though the run stopped at 60.
    monkeypatch.chdir(tmp_path)
    code, _, err = edn(monkeypatch, capsys, "deblur", "--kernel-sigma", "1.6", _EX / "camera_blur.tif", "-o", "p.png",
                       "--method", method, "--weights", weights, "--max-iter", "6", "--report", "p.json", "--quiet")
    assert code in (0, 3), err
    rep = json.loads(Path("p.json").read_text())
    assert rep["settings"]["max_iter"] == 6 and rep["settings"]["min_iter"] == 6 and rep["iterations"] == 6


@pytest.mark.parametrize(
    "task, args, keys",
    [
        ("sr", ["--scale", "4"], {"task", "scale", "downsampler", "init"}),
        ("deblur", ["--kernel-sigma", "1.6"], {"task", "kernel_sigma", "kernel_size", "boundary", "init"}),
    ],
)
def test_eval_json_states_only_the_forward_model_it_used(tmp_path, monkeypatch, capsys, task, args, keys):
    # The task block carried training ranges (noise_sigma 0-0.02, though the run used one σ) and the
    # other tasks' fields (angles, beam for SR).
    monkeypatch.chdir(tmp_path)
    _images(tmp_path / "imgs", n=1, size=32)
    code, _, err = edn(monkeypatch, capsys, "eval", task, *args, "--images", "imgs", "--methods", "gd",
                       "--max-iter", "3", "--json", "t.json", "--quiet")
    assert code == 0, err
    block = json.loads(Path("t.json").read_text())["task"]
    assert set(block) == keys and block["task"] == task
    if task == "deblur":
        assert block["kernel_sigma"] == 1.6


def test_tv_alpha_after_a_missed_final_solve_stays_near_the_discrepancy_principle():
    # Slice ph.T of a noisy 64² scan: the search's inexact solves put α = 0.512 at 0.09% below δ,
    # the converged final solve lands just above δ, and halving α left the result 12% below δ.
    import numpy as np
    from skimage.data import shepp_logan_phantom
    from skimage.transform import resize

    from edncli.operators.tomography import CTGeometry, make_ct_operator, simulate_ct
    from edncli.solvers.methods import TV_DISC_RTOL, MethodOptions, Problem, solve

    ph = resize(shepp_logan_phantom(), (64, 64)).astype(np.float32)
    imgs = np.stack([ph, ph[::-1], ph.T, np.roll(ph, 5, 1), ph * 0.7])  # a batch, as `edn ct --slices 0:5`
    geo = CTGeometry.parallel(64, 90)
    f = simulate_ct(torch.from_numpy(imgs.copy()), geo, noise_sigma=0.05, seed=3, backend="matrix")
    op = make_ct_operator(geo, backend="matrix")
    delta = 0.05 * float(np.sqrt(f[0].numel()))
    res = solve(Problem(op=op, f=f, u0=op.fbp(f), delta=delta, task="ct"), "tv", MethodOptions())
    disc = torch.linalg.vector_norm((op(res.u) - f).flatten(1), dim=1)
    assert bool((disc <= delta * (1 + 1e-5)).all() and (disc >= delta * (1 - TV_DISC_RTOL)).all()), (disc, delta)


# ---- torchrun (seventh helper audit) ---------------------------------------------------------

def test_torchrun_report_keeps_the_residual_floor_and_the_alpha_search(tmp_path):
    # Sharded, rank 0 held only its chunk: the "δ cannot be reached" warning and residual_floor
    # were dropped, and tv's alpha_search moved into ranks[].extra.
    from .test_sharding import _scan, _single, _torchrun

    _scan(tmp_path / "scan.h5", tmp_path / "cache", n_slices=3)
    small = ["--sinogram", "scan.h5", "--slices", "0:3", "--size", "20", "--method", "gd", "--device", "cpu",
             "--backend", "matrix", "--max-iter", "5"]
    one = _single(tmp_path, *small, "-o", "one.tif", "--report", "one.json")
    two = _torchrun(tmp_path, *small, "-o", "two.tif", "--report", "two.json")
    assert one.returncode == 3 and "exitcode  : 3" in two.stderr, two.stderr[-3000:]  # torchrun itself exits 1
    warn = [line for line in two.stderr.splitlines() if "cannot be reached" in line]
    assert len(warn) == 1 and warn == [line for line in one.stderr.splitlines() if "cannot be reached" in line]
    r1, r2 = (json.loads((tmp_path / f"{n}.json").read_text()) for n in ("one", "two"))
    assert r2["residual_floor"]["measurements"] == r1["residual_floor"]["measurements"] > 0
    assert r2["residual_floor"]["norm"] == pytest.approx(r1["residual_floor"]["norm"], rel=1e-6)
    tv = ["--sinogram", "scan.h5", "--slices", "0:3", "--size", "32", "--method", "tv", "--device", "cpu",
          "--backend", "matrix", "--noise-sigma", "0.02", "--quiet"]
    two = _torchrun(tmp_path, *tv, "-o", "tv.tif", "--report", "tv.json")
    assert two.returncode == 0, two.stderr[-3000:]
    rep = json.loads((tmp_path / "tv.json").read_text())
    assert rep["alpha_search"] and all(len(e["alpha"]) == 3 for e in rep["alpha_search"])
    assert not any("alpha_search" in r.get("extra", {}) for r in rep["ranks"])


def test_torchrun_train_prints_an_error_once(tmp_path):
    import os
    import subprocess
    import sys

    imgs = _images(tmp_path / "imgs")
    env = {k: v for k, v in os.environ.items() if k not in ("WORLD_SIZE", "RANK", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")}
    (tmp_path / "m.safetensors").write_bytes(b"x")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", "-m", "edncli",
           "train", "--task", "sr", "--images", str(imgs), "--out", str(tmp_path / "m"), "--depth", "3", "--width", "8",
           "--steps", "2", "--device", "cpu", "--quiet"]
    proc = subprocess.run(cmd, capture_output=True, text=True, env={**env, "OMP_NUM_THREADS": "1"}, timeout=240)
    errors = [line for line in proc.stderr.splitlines() if "edn: error:" in line]
    assert proc.returncode != 0 and len(errors) == 1 and "exists; pass --force" in errors[0], proc.stderr[-3000:]
    assert (tmp_path / "m.safetensors").read_bytes() == b"x"


@pytest.mark.parametrize("method", ["tv", "gd"])
def test_a_result_does_not_depend_on_the_inputs_memory_layout(method):
    from edncli.operators.blur import Blur, gaussian_kernel
    from edncli.solvers.methods import MethodOptions, Problem, solve

    gen = torch.Generator().manual_seed(0)
    x = torch.rand(1, 40, 40, generator=gen)
    op = Blur((40, 40), gaussian_kernel(1.6, 9), "reflect")
    f = op(x) + 0.01 * torch.randn(1, 40, 40, generator=gen)
    ft = f.transpose(1, 2).contiguous().transpose(1, 2)  # the same values, strides of a transpose
    assert not ft.is_contiguous() and torch.equal(ft, f)
    opts = MethodOptions(alpha=0.003, max_iter=50) if method == "tv" else MethodOptions(max_iter=50)
    a = solve(Problem(op, f, f.clone(), 0.01 * 40), method, opts)
    b = solve(Problem(op, ft, ft.clone(), 0.01 * 40), method, opts)
    assert torch.equal(a.u, b.u) and b.u.is_contiguous()


def test_a_deblur_checkpoint_warns_outside_its_training_blur(tmp_path, monkeypatch, capsys):
    # edn-deblur was trained on Gaussian σ 1-2 with the reflect boundary; σ 3 ran silently.
    import numpy as np

    monkeypatch.chdir(tmp_path)
    inp = _EX / "camera_blur.tif"
    for args, words in ((["--kernel-sigma", "3"], "this blur has σ 3"),
                        (["--kernel-sigma", "1.6", "--boundary", "circular"], "the circular boundary"),
                        (["--kernel", "k.npy"], "this kernel has no stated Gaussian σ (a kernel file"),
                        (["--kernel-sigma", "1.6"], None)):
        np.save("k.npy", np.full((5, 5), 1 / 25, np.float32))
        code, _, err = edn(monkeypatch, capsys, "deblur", *args, inp, "-o", "d.png", "--force", "--max-iter", "3",
                           "--quiet")
        assert code in (0, 3), err
        warns = [line for line in err.splitlines() if line.startswith("edn: warning: checkpoint edn-deblur")]
        if words is None:
            assert not warns, err
        else:
            assert len(warns) == 1 and words in warns[0] and "σ 1–2, reflect boundary" in warns[0], err


# ---- README walkthrough (eighth helper audit) ------------------------------------------------

def test_tv_elapsed_s_counts_the_alpha_search():
    import time

    from edncli.operators.blur import Blur, gaussian_kernel
    from edncli.solvers.methods import MethodOptions, Problem, solve

    gen = torch.Generator().manual_seed(0)
    x = torch.rand(1, 48, 48, generator=gen)
    op = Blur((48, 48), gaussian_kernel(1.6, 9), "reflect", sigma=1.6)
    f = op(x) + 0.02 * torch.randn(1, 48, 48, generator=gen)
    t0 = time.perf_counter()
    res = solve(Problem(op, f, f.clone(), 0.02 * 48), "tv", MethodOptions())
    wall = time.perf_counter() - t0
    assert sum(res.extra["search_iterations"]) > 0
    assert res.elapsed_s >= 0.9 * wall and res.elapsed_s > res.trace[-1].time_s


def test_refusals_name_only_the_methods_that_read_an_option(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    code, _, err = edn(monkeypatch, capsys, "sr", _EX / "camera_lr_x4.tif", "-o", "x.png", "--method", "gd",
                       "--precision", "bf16")
    line = _one_line(err)
    assert code == 2 and "--precision is for --method edn|baseline|red|pnp" in line and "potential" not in line


def test_errors_name_the_options_not_the_parameters(tmp_path, monkeypatch, capsys):
    import h5py
    import numpy as np

    monkeypatch.chdir(tmp_path)
    code, _, err = edn(monkeypatch, capsys, "ct", "--sinogram", _EX / "phantom_sino.h5", "--slices", "200",
                       "-o", "s.tif")
    assert code == 2 and "--slices" in _one_line(err) and "slices=" not in err
    with h5py.File("k.h5", "w") as fh:
        fh["psf"] = np.full((3, 3), 1 / 9)
    code, _, err = edn(monkeypatch, capsys, "deblur", "--kernel", "k.h5", "--kernel-dataset", "/nope",
                       _EX / "camera_blur.tif", "-o", "d.png")
    line = _one_line(err)
    assert code == 4 and "no dataset '/nope'" in line and "it holds psf" in line and "pass --kernel-dataset" not in line


def test_eval_names_methods_not_weights_for_a_missing_checkpoint(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    _images(tmp_path / "imgs", n=1, size=32)
    code, _, err = edn(monkeypatch, capsys, "eval", "sr", "--images", "imgs", "--methods", "gd,edn:nosuch",
                       "--json", "t.json", "--quiet")
    line = _one_line(err)
    assert code == 4 and line.startswith("edn: error: --methods edn:nosuch: checkpoint nosuch: no such checkpoint")
    assert "--weights" not in line and not Path("t.json").exists()
