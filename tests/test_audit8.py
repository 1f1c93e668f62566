"""Eighth audit: what the reports record and how --reference meets a folder of inputs. Each test
failed on the code before its fix."""

from __future__ import annotations

import io
import json
import os
from pathlib import Path

import numpy as np
import pytest
import tifffile
from PIL import Image

from .test_audit3_images import _one_line
from .test_cli import edn
from .test_output_errors import workdir  # noqa: F401 - fixture: a temporary folder holding lr.png (16x16)

CG = ("--method", "cg", "--delta", "0.05", "--max-iter", "5")


def _psnr(u: np.ndarray, ref: np.ndarray) -> float:
    return float(10 * np.log10(1.0 / np.mean((u.astype(np.float64) - ref) ** 2)))


@pytest.fixture
def pair(tmp_path, monkeypatch, capsys):
    """in/a.tif, in/b.tif (x4 low-resolution) and ref/a.png, ref/b.png (their 64² ground truths)."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("EDN_CACHE_DIR", str(tmp_path / "cache"))
    gen = np.random.default_rng(0)
    os.mkdir("in"), os.mkdir("ref")
    for name, freq in (("a", 2.0), ("b", 5.0)):
        y, x = np.mgrid[0:64, 0:64] / 64
        img = 0.5 + 0.4 * np.sin(2 * np.pi * freq * x) * np.cos(2 * np.pi * y) + 0.02 * gen.standard_normal((64, 64))
        Image.fromarray((np.clip(img, 0, 1) * 255).round().astype(np.uint8)).save(f"ref/{name}.png")
        code, _, err = edn(monkeypatch, capsys, "simulate", "sr", "--scale", "4", f"ref/{name}.png", "-o", f"in/{name}.tif")
        assert code == 0, err
    return tmp_path


def test_a_folder_of_references_is_matched_to_a_folder_of_inputs_by_name(pair, monkeypatch, capsys):
    # was: "--reference ref: is a folder; pass --output-dir to process a folder of images", exit 4,
    # although --output-dir was given
    code, _, err = edn(monkeypatch, capsys, "sr", "--scale", "4", "in", "--output-dir", "out", "--reference", "ref",
                       "--report", "reports", *CG)
    assert code in (0, 3), err
    for name in ("a", "b"):
        ref = np.asarray(Image.open(f"ref/{name}.png"), dtype=np.float64) / 255
        u = tifffile.imread(f"out/{name}.tif")
        last = json.loads(Path(f"reports/{name}.json").read_text())["trace"][-1]
        assert last["psnr"] == pytest.approx(_psnr(u, ref), abs=0.01)  # each against its own ground truth


def test_a_reference_folder_missing_an_input_fails_before_any_output(pair, monkeypatch, capsys):
    os.remove("ref/b.png")
    code, _, err = edn(monkeypatch, capsys, "sr", "--scale", "4", "in", "--output-dir", "out", "--reference", "ref", *CG)
    assert code == 4 and _one_line(err), err
    assert "--reference ref" in err and "b" in err and "matched" in err and "pass --output-dir" not in err, err
    assert not Path("out").exists() or not os.listdir("out")


def test_a_reference_folder_is_never_written_into(pair, monkeypatch, capsys):
    code, _, err = edn(monkeypatch, capsys, "sr", "--scale", "4", "in", "--output-dir", "ref", "--format", "png",
                       "--reference", "ref", "--force", *CG)
    assert code == 2 and _one_line(err) and "--reference" in err, err


def test_one_reference_on_stdin_serves_every_input(pair, monkeypatch, capsys):
    # was: read once per input; the second read found stdin empty and failed after writing the first output
    data = Path("ref/a.png").read_bytes()

    class Stdin:
        buffer = io.BytesIO(data)

    monkeypatch.setattr("sys.stdin", Stdin)
    code, _, err = edn(monkeypatch, capsys, "sr", "--scale", "4", "in", "--output-dir", "out", "--reference", "-",
                       "--report", "reports", *CG)
    assert code in (0, 3), err
    assert all("psnr" in json.loads(Path(f"reports/{n}.json").read_text())["trace"][-1] for n in ("a", "b"))


@pytest.mark.parametrize("method", ["edn", "baseline"])
@pytest.mark.parametrize("flag", [[], ["--no-channels-last"]])
def test_learned_reports_always_record_the_inference_settings(pair, monkeypatch, capsys, method, flag):
    # was: no `inference` block when every setting was the default (e.g. --no-channels-last),
    # although the README says the report records them
    code, _, err = edn(monkeypatch, capsys, "sr", "--scale", "4", "in/a.tif", "-o", "x.tif", "--method", method,
                       "--noise-sigma", "0.01", "--report", "r.json", *flag)
    assert code in (0, 3), err
    inference = json.loads(Path("r.json").read_text())["inference"]
    assert inference["channels_last"] is (not flag) and inference["precision"] == "fp32" and inference["tile"] is None


@pytest.mark.parametrize("flag", [[], ["--precision", "bf16"]])
def test_red_reports_record_the_memory_format_in_use(pair, monkeypatch, capsys, flag):
    # was: channels_last null (and no block at all without network options)
    img = np.asarray(Image.open("ref/a.png"), dtype=np.float32) / 255
    tifffile.imwrite("clean.tif", img)
    code, _, err = edn(monkeypatch, capsys, "simulate", "deblur", "--kernel-sigma", "1.6", "--noise-sigma", "0.01",
                       "clean.tif", "-o", "b.tif")
    assert code == 0, err
    code, _, err = edn(monkeypatch, capsys, "deblur", "--kernel-sigma", "1.6", "b.tif", "--method", "red", "-o", "x.tif",
                       "--max-iter", "3", "--report", "r.json", *flag)
    assert code in (0, 3), err
    inference = json.loads(Path("r.json").read_text())["inference"]
    assert inference["channels_last"] is False and inference["precision"] == (flag[1] if flag else "fp32")


def test_a_reference_folder_for_ct_is_a_usage_error_that_says_so(pair, monkeypatch, capsys):
    # was: "--reference ref: is a folder; pass --output-dir to process a folder of images" (exit 4)
    pytest.importorskip("astra")
    code, _, err = edn(monkeypatch, capsys, "simulate", "ct", "ref/a.png", "-o", "s.h5", "--angles", "20")
    assert code == 0, err
    code, _, err = edn(monkeypatch, capsys, "ct", "--sinogram", "s.h5", "-o", "x.tif", "--reference", "ref",
                       "--method", "gd", "--max-iter", "2")
    assert code == 2 and _one_line(err) and "--reference ref is a folder" in err and "--output-dir" not in err, err
    assert not Path("x.tif").exists()


@pytest.mark.parametrize("method", ["gd", "cg"])
def test_a_samples_result_does_not_depend_on_the_batch_it_shares(method):
    # was: confirming one sample's δ stop on a fresh A u - f refreshed the residual of the whole
    # batch, so the samples still running changed by round-off (and could stop an iteration
    # apart): a torchrun shard differed from the single-process run, against the README's promise
    import torch

    from edncli.operators.blur import Blur, gaussian_kernel
    from edncli.solvers.methods import MethodOptions, Problem, solve
    from edncli.solvers.stopping import DeltaChoice

    torch.manual_seed(0)
    op = Blur((48, 48), gaussian_kernel(1.6, 25), "reflect")
    x = torch.rand(4, 48, 48)
    sigma = torch.tensor([0.002, 0.02, 0.005, 0.01])
    f = op(x) + sigma.view(4, 1, 1) * torch.randn(4, 48, 48)
    deltas = (sigma * 48).tolist()

    def run(idx):
        p = Problem(op, f[idx], f[idx].clone(), delta=DeltaChoice([deltas[i] for i in idx], "given"), task="deblur")
        return solve(p, method, MethodOptions(max_iter=300))

    whole = run([0, 1, 2, 3])
    halves = [run([0, 1]), run([2, 3])]
    stops = [s.iterations for s in whole.samples]
    assert len(set(stops)) == 4, stops  # the samples stop at different iterations: the case that matters
    for h, part in enumerate(halves):
        for j in range(2):
            i = 2 * h + j
            assert part.samples[j].iterations == whole.samples[i].iterations
            assert torch.equal(part.u[j], whole.u[i]), (method, i, float((part.u[j] - whole.u[i]).abs().max()))


def _margin(d, g):
    import torch

    return (d.double() * g.double()).flatten(1).sum(1), g.double().flatten(1).norm(dim=1)


def test_halfspace_layer_keeps_its_margin_in_float32_for_large_outputs():
    # was: z + relu(ζ - <z, n>) n cancelled in float32: a network output 1e5 against the gradient
    # came out as an ascent direction (<d, g> = -1.49), and ||z|| ~ 100 missed ζ by up to 5%
    import torch

    from edncli.directions import HalfSpaceProjection

    layer = HalfSpaceProjection(1e-3)
    torch.manual_seed(0)
    # (the output is float32: its rounding moves <d, g> by ~6e-8 ||d|| ||g|| / 64 here, so the
    # part of z orthogonal to g is kept to sizes where that stays inside the margin)
    for scale, across in ((1e2, 0.3), (1e5, 1e-3)):
        for _ in range(20):
            g = torch.randn(1, 64, 64)
            z = -scale * g / g.norm() + scale * across * torch.randn(1, 64, 64) / 64
            d = layer(z, g)
            dot, gn = _margin(d, g)
            assert d.dtype == torch.float32 and bool((dot >= 0.999 * 1e-3 * gn).all()), (scale, float(dot), float(gn))


def test_cone_ball_layer_keeps_zeta1_for_outputs_far_larger_than_the_gradient():
    import torch

    from edncli.directions import ConeBallMap

    layer = ConeBallMap(0.05, 20.0)
    torch.manual_seed(290)
    for _ in range(20):
        g = torch.randn(1, 32, 32)
        g = 1e-3 * g / g.norm()
        z = -1e3 * g / g.norm() + 10 * torch.randn(1, 32, 32) / 32
        d = layer(z, g)
        dot, gn = _margin(d, g)
        assert bool((dot >= 0.999 * 0.05 * gn**2).all()) and bool((d.double().flatten(1).norm(dim=1) <= 20.0 * gn * 1.001).all())


def test_descent_set_layers_do_not_overflow_for_huge_gradients():
    import torch

    from edncli.directions import ConeBallMap, HalfSpaceProjection

    torch.manual_seed(1)
    g = 1e20 * torch.randn(2, 16, 16) / 16
    z = torch.randn(2, 16, 16)
    for layer in (HalfSpaceProjection(1e-3), ConeBallMap(0.05, 20.0)):
        d = layer(z, g)
        dot, _ = _margin(d, g)
        assert bool(torch.isfinite(d).all()) and bool((dot > 0).all())


def _sr_problem(**kw):
    import torch

    from edncli.operators.downsample import AveragePool, upsample
    from edncli.solvers.methods import Problem

    torch.manual_seed(0)
    op = AveragePool((64, 64), 4)
    f = op(torch.rand(1, 64, 64)) + 0.01 * torch.randn(1, 16, 16)
    return op, f, dict(op=op, f=f, u0=upsample(f, 4), task="sr", **kw)


def test_operators_refuse_inputs_of_another_shape():
    # was: a (1, 80, 80) image through a 64² blur came back (1, 64, 64), cropped; bicubic's
    # adjoint of a (1, 20, 20) image gave (1, 64, 64) garbage; an (H, W) image a torch traceback
    import torch

    from edncli.errors import UsageError
    from edncli.operators.blur import Blur, gaussian_kernel
    from edncli.operators.downsample import AveragePool, BicubicDownsample

    cases = [
        (Blur((64, 64), gaussian_kernel(1.6, 25), "reflect"), "forward", (1, 80, 80)),
        (Blur((64, 64), gaussian_kernel(1.6, 25), "circular"), "adjoint", (1, 64, 63)),
        (BicubicDownsample((64, 64), 4), "adjoint", (1, 20, 20)),
        (AveragePool((64, 64), 4), "forward", (1, 63, 65)),
        (AveragePool((64, 64), 4), "forward", (64, 64)),
        (AveragePool((64, 64), 4), "adjoint", (1, 1, 16, 16)),
    ]
    for op, which, shape in cases:
        with pytest.raises(UsageError, match=r"needs \(B, |without a batch dimension"):
            getattr(op, which)(torch.rand(*shape))


def test_solve_detaches_data_that_requires_grad():
    # was: RuntimeError "add(): functions with out=... arguments don't support automatic differentiation"
    from edncli.solvers.methods import MethodOptions, Problem, solve

    op, f, kw = _sr_problem(delta=0.05)
    kw["f"] = f.clone().requires_grad_()
    for method in ("gd", "cg", "tv"):
        result = solve(Problem(**kw), method, MethodOptions(max_iter=5))
        assert not result.u.requires_grad


def test_data_fidelity_sees_an_iterate_changed_in_place():
    # was: the residual was cached by identity only: E(3u) read E(u) (128 instead of 1152)
    import torch

    from edncli.energies import DataFidelity
    from edncli.operators.downsample import AveragePool

    energy = DataFidelity(AveragePool((64, 64), 4), torch.zeros(1, 16, 16))
    u = torch.ones(1, 64, 64)
    assert float(energy.value(u)) == pytest.approx(128.0)
    u.mul_(3)
    assert float(energy.value(u)) == pytest.approx(1152.0)
    assert torch.allclose(energy.grad(u), torch.full((1, 64, 64), 3.0 / 16))


def test_learned_methods_run_under_a_float64_default_dtype():
    # was: "Input type (float) and bias type (double) should be the same"
    import torch

    from edncli.solvers.methods import MethodOptions, Problem, solve

    old = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    try:
        _, _, kw = _sr_problem(delta=0.05)
        for method in ("edn", "baseline"):
            result = solve(Problem(**kw), method, MethodOptions())
            assert result.u.dtype == torch.float32 and torch.isfinite(result.u).all()
    finally:
        torch.set_default_dtype(old)


@pytest.mark.parametrize("delta", [0.0, -1.0, float("nan"), float("inf")])
def test_a_problem_refuses_a_delta_that_is_not_finite_and_positive(delta):
    # was: tv and potential ran and reported delta_reached False (tv took log10 of it); δ = inf
    # was "reached" by every method (gd returned u0)
    from edncli.errors import UsageError
    from edncli.solvers.methods import Problem

    _, _, kw = _sr_problem(delta=delta)
    with pytest.raises(UsageError, match="finite number > 0"):
        Problem(**kw)


def test_a_problem_refuses_nan_data():
    # was: gd ended "precision_limit", potential certified a NaN energy as monotone
    from edncli.errors import InputError
    from edncli.solvers.methods import Problem

    _, f, kw = _sr_problem(delta=0.05)
    f = f.clone()
    f[0, 3, 3] = float("nan")
    kw["f"] = f
    with pytest.raises(InputError, match="1 NaN/Inf"):
        Problem(**kw)
    kw["f"] = f.nan_to_num()
    kw["u0"] = kw["u0"].clone()
    kw["u0"][0, 0, 0] = float("inf")
    with pytest.raises(InputError, match="u0 holds 1 NaN/Inf"):
        Problem(**kw)


# ---- torchrun (helper audit of sharding and DDP) -----------------------------------------------

def test_torchrun_cg_equals_the_single_process_run_bit_for_bit(tmp_path):
    # was: 1.2e-7 apart on rank 1's slices, as the README promised equality with two slices a rank
    from .test_sharding import _scan, _single, _torchrun

    _scan(tmp_path / "scan.h5", tmp_path / "cache", n_slices=4)
    common = ["--sinogram", "scan.h5", "--slices", "0:4", "--size", "32", "--method", "cg", "--device", "cpu",
              "--backend", "matrix", "--quiet"]
    one = _single(tmp_path, *common, "-o", "one.tif", "--report", "one.json")
    two = _torchrun(tmp_path, *common, "-o", "two.tif", "--report", "two.json")
    assert one.returncode == 0 and two.returncode == 0, (one.stderr[-2000:], two.stderr[-3000:])
    r1 = json.loads((tmp_path / "one.json").read_text())
    stops = [s["iterations"] for s in r1["samples"]]
    assert len(set(stops)) > 1, stops  # slices stop at different iterations: the case that differed
    assert np.array_equal(tifffile.imread(tmp_path / "one.tif"), tifffile.imread(tmp_path / "two.tif"))


def test_torchrun_train_reports_an_error_met_on_one_rank_only(tmp_path):
    # was: rank 1 exited silently (it assumed rank 0 met the same error) and rank 0 died in DDP's
    # set-up with a 50-line gloo traceback "Connection closed by peer"; no "edn: error" line at all
    import subprocess
    import sys

    from .test_learned import _images
    from .test_sharding import _env

    imgs = _images(tmp_path / "imgs", n=3, size=40)
    small = ["train", "--task", "sr", "--scale", "4", "--images", str(imgs), "--depth", "3", "--width", "8",
             "--patch-size", "24", "--batch-size", "2", "--steps", "2", "--device", "cpu", "--quiet"]
    env = _env(tmp_path)
    made = subprocess.run([sys.executable, "-m", "edncli", *small, "--out", str(tmp_path / "base"), "--kind", "baseline"],
                          capture_output=True, text=True, env=env, cwd=tmp_path, timeout=240)
    assert made.returncode == 0, made.stderr[-2000:]
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "base.safetensors").write_bytes(b"\x00" * 3000)  # what rank 1 alone finds
    wrap = tmp_path / "wrap.sh"
    wrap.write_text(f'#!/bin/bash\n[ "$RANK" = 1 ] && cd {tmp_path / "other"}\nexec {sys.executable} -m edncli "$@"\n')
    wrap.chmod(0o755)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", "--no-python", str(wrap),
           *small, "--init-from", "base.safetensors", "--out", str(tmp_path / "w1")]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=tmp_path, timeout=240)
    errors = [line for line in proc.stderr.splitlines() if "edn: error:" in line]
    assert proc.returncode != 0 and len(errors) == 1 and "rank 1:" in errors[0] and "base.safetensors" in errors[0], \
        proc.stderr[-3000:]
    assert "[rank0]: Traceback" not in proc.stderr and "gloo" not in proc.stderr, proc.stderr[-3000:]  # (torchrun's own
    # ChildFailedError traceback is torchrun's way of saying a rank failed)
    assert not (tmp_path / "w1.safetensors").exists()


# ---- shell pipelines (helper audit of stdin/stdout, signals and outputs) ------------------------

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


def _run_edn(tmp_path, *args, **kw):
    import subprocess
    import sys

    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-m", "edncli", *map(str, args)], capture_output=kw.pop("capture", True),
                          cwd=tmp_path, env=env, timeout=240, **kw)


@pytest.mark.skipif(not Path("/dev/full").exists(), reason="needs /dev/full")
def test_a_stdout_that_cannot_be_written_is_one_line_and_leaves_no_report(tmp_path):
    # was: a 40-line OSError traceback, exit 1, and r.json in place saying δ was reached
    with open("/dev/full", "wb") as full:
        proc = _run_edn(tmp_path, "sr", "--scale", "4", "--method", "gd", "-q", EXAMPLES / "camera_lr_x4.tif", "-o", "-",
                        "--report", "r.json", stdout=full, stderr=__import__("subprocess").PIPE, capture=False)
    err = proc.stderr.decode()
    assert proc.returncode == 4 and _one_line(err) and "stdout: cannot write" in err, err
    assert not (tmp_path / "r.json").exists() and not list(tmp_path.glob(".*.tmp"))
    with open("/dev/full", "wb") as full:
        proc = _run_edn(tmp_path, "weights", "list", stdout=full, stderr=__import__("subprocess").PIPE, capture=False)
    assert proc.returncode == 4 and _one_line(proc.stderr.decode()), proc.stderr


def test_a_reader_that_closes_the_pipe_ends_edn_silently_with_141(tmp_path):
    # was: exit 1 (click's EPIPE handling), or 0, depending on timing
    import subprocess
    import sys

    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    for args in (["weights", "list"], ["weights", "show", "edn-sr-x4"]):
        proc = subprocess.Popen([sys.executable, "-m", "edncli", *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                cwd=tmp_path, env=env)
        proc.stdout.close()  # the reader is gone before edn writes
        err = proc.stderr.read().decode()
        assert proc.wait(timeout=120) == 141 and err == "", err


def test_a_closed_stdin_or_stdout_is_one_line(tmp_path):
    # was: AttributeError: 'NoneType' object has no attribute 'buffer' (a traceback, exit 1)
    proc = _run_edn(tmp_path, "sr", "--scale", "4", "--method", "gd", "-q", "-", "-o", "a.png", preexec_fn=lambda: os.close(0))
    assert proc.returncode == 4 and _one_line(proc.stderr.decode()) and b"stdin is closed" in proc.stderr, proc.stderr
    proc = _run_edn(tmp_path, "sr", "--scale", "4", "--method", "gd", "-q", EXAMPLES / "camera_lr_x4.tif", "-o", "-",
                    stdout=None, stderr=__import__("subprocess").PIPE, capture=False, preexec_fn=lambda: os.close(1))
    assert proc.returncode == 4 and b"stdout is closed" in proc.stderr, proc.stderr


def test_sigterm_unwinds_and_removes_the_folders_it_made(tmp_path):
    import signal
    import subprocess
    import sys
    import time

    np.save(tmp_path / "big.npy", np.random.default_rng(0).random((256, 256)).astype(np.float32))
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "edncli", "deblur", "--kernel-sigma", "1.6", "big.npy", "--output-dir",
                             "outs", "--report", "reps", "--method", "gd", "--delta", "1e-9", "--max-iter", "1000000", "-q"],
                            cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.time() + 60
    while not (tmp_path / "outs").exists() and time.time() < deadline:
        time.sleep(0.2)
    time.sleep(1.0)
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=60) == 143
    assert not (tmp_path / "outs").exists() and not (tmp_path / "reps").exists()


def test_simulate_never_replaces_its_input_even_with_force(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    Image.fromarray(np.full((32, 32), 128, np.uint8)).save("c.png")
    before = Path("c.png").read_bytes()
    for cmd in (["sr"], ["deblur"]):
        code, _, err = edn(monkeypatch, capsys, "simulate", *cmd, "c.png", "-o", "c.png", "--force")
        assert code == 2 and _one_line(err) and "never replaces an input" in err, err
    assert Path("c.png").read_bytes() == before


def test_a_dangling_symlink_output_needs_force(workdir, monkeypatch, capsys):
    os.symlink("nowhere.png", "d.png")
    code, _, err = edn(monkeypatch, capsys, "sr", "--scale", "4", "lr.png", "-o", "d.png", *CG)
    assert code == 2 and _one_line(err) and "symbolic link" in err and "--force" in err, err
    assert os.path.islink("d.png") and not os.path.exists("d.png")


def test_json_of_a_folder_is_a_list_however_many_images_it_holds(workdir, monkeypatch, capsys):
    os.mkdir("one")
    os.rename("lr.png", "one/lr.png")
    code, out, err = edn(monkeypatch, capsys, "sr", "--scale", "4", "one", "--output-dir", "o1", "--json", *CG)
    assert code in (0, 3), err
    doc = json.loads(out)
    assert isinstance(doc, list) and len(doc) == 1 and "delta_reached" in doc[0]


EASY = "007000325000900100040528090870004600609307050000100008100430067003006240020759030"


def test_sudoku_prints_its_result_on_stdout_and_its_summary_on_stderr(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    code, out, err = edn(monkeypatch, capsys, "sudoku", "solve", EASY)
    assert code == 0 and out.strip().isdigit() and len(out.strip()) == 81, (out, err)
    assert "solved with" in err and "solved with" not in out
    code, out, err = edn(monkeypatch, capsys, "sudoku", "solve", EASY, "-q")
    assert code == 0 and len(out.strip()) == 81 and err == "", (out, err)  # -q: the answer is still printed


def test_sudoku_writes_its_csv_and_json_together_or_not_at_all(tmp_path, monkeypatch, capsys):
    # was: the CSV was renamed into place, then the JSON failed: a traceback and half an output set
    import tempfile

    monkeypatch.chdir(tmp_path)
    os.mkdir("ok"), os.mkdir("bad")
    real, calls = tempfile.mkstemp, []

    def failing(*a, **kw):
        if Path(kw.get("dir", ".")).name == "bad":
            calls.append(1)
            if len(calls) >= 3:  # the up-front checks pass; the write itself fails
                raise PermissionError(13, "Permission denied")
        return real(*a, **kw)

    monkeypatch.setattr(tempfile, "mkstemp", failing)
    code, _, err = edn(monkeypatch, capsys, "sudoku", "solve", EASY, "--method", "gd", "--out", "ok/s.csv",
                       "--json", "bad/s.json")
    assert code == 4 and _one_line(err) and "cannot write" in err, err
    assert os.listdir("ok") == [] and os.listdir("bad") == []


def test_cg_past_the_float32_floor_is_not_reported_as_a_rise(tmp_path, monkeypatch, capsys):
    # was: --min-iter 3 made cg go on from an exact solution (energy 1e-28 on the residual moved
    # in place); the fresh A u - f of the δ check read 5e-12, "energy_monotone": false with exit 0
    monkeypatch.chdir(tmp_path)
    code, _, err = edn(monkeypatch, capsys, "sr", "--scale", "4", EXAMPLES / "camera_lr_x4.tif", "-o", "x.tif",
                       "--method", "cg", "--min-iter", "3", "--report", "r.json")
    assert code == 0, err
    doc = json.loads(Path("r.json").read_text())
    assert doc["energy_monotone"] is True and doc["delta_reached"] is True
    # a real rise is still one: the slack is float32's resolution of the residual, no more
    from edncli.solvers.trace import residual_resolution, rose_beyond_roundoff as rose

    import torch

    (eta,) = residual_resolution(torch.full((1, 16, 16), 0.5))
    assert not rose(0.5 * eta**2 * 0.9, 0.0, eta) and rose(2 * eta**2, 0.0, eta) and rose(1e-3, 1.0, eta)


@pytest.mark.parametrize("method", ["red", "potential"])
def test_ct_says_that_potential_red_and_pnp_run_with_the_deblurring_preset(tmp_path, monkeypatch, capsys, method):
    # was: silently the deblurring preset, a 125-iteration cap, exit 3 without a word
    pytest.importorskip("astra")
    from .test_ct_cli_errors import _phantom, _sinogram

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("EDN_CACHE_DIR", str(tmp_path / "cache"))
    _phantom(tmp_path / "phantom.png")
    _sinogram(monkeypatch, capsys)
    code, _, err = edn(monkeypatch, capsys, "ct", "--sinogram", "sino.h5", "--size", "48", "-o", "x.tif", "--method", method,
                       "--max-iter", "2", "--report", "r.json")
    assert code in (0, 3), err
    assert "edn: warning:" in err and "no CT preset" in err, err
    assert json.loads(Path("r.json").read_text())["preset"] == "deblur (no ct preset)"


# ---- caches, environment, concurrent writers (helper audit) -------------------------------------

def test_a_bad_ct_matrix_size_limit_is_one_line(tmp_path, monkeypatch, capsys):
    # was: float('2e9x') raised a ValueError traceback, exit 1
    pytest.importorskip("astra")
    from .test_ct_cli_errors import _phantom, _sinogram

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("EDN_CACHE_DIR", str(tmp_path / "cache"))
    _phantom(tmp_path / "phantom.png")
    _sinogram(monkeypatch, capsys)
    monkeypatch.setenv("EDN_CT_MATRIX_MAX_BYTES", "2e9x")
    code, _, err = edn(monkeypatch, capsys, "ct", "--sinogram", "sino.h5", "--size", "48", "-o", "x.tif", "--method", "cg")
    assert code == 2 and _one_line(err) and "EDN_CT_MATRIX_MAX_BYTES" in err, err


def test_a_ct_matrix_cache_entry_of_another_geometry_or_with_nan_is_rebuilt(tmp_path):
    # was: trusted when its shape fit: a NaN made every later run "precision limit", exit 3, and
    # another centre's matrix copied over the entry gave a wrong reconstruction
    pytest.importorskip("astra")
    import shutil
    import warnings

    import torch

    from edncli.operators.tomography import CTGeometry, make_ct_operator

    theta = np.linspace(0, np.pi, 30, endpoint=False)
    g1, g2 = CTGeometry(32, theta, 46, center=22.0), CTGeometry(32, theta, 46, center=24.0)
    x = torch.rand(1, 32, 32, generator=torch.Generator().manual_seed(0))
    truth = {}
    for g in (g1, g2):
        truth[g.center] = make_ct_operator(g, backend="matrix", cache_dir=tmp_path / "fresh" / str(g.center))(x)
    cache = tmp_path / "cache"
    make_ct_operator(g1, backend="matrix", cache_dir=cache)
    make_ct_operator(g2, backend="matrix", cache_dir=cache)
    f1, f2 = (next((cache).rglob(f"{g.key()}*.npz")) for g in (g1, g2))
    shutil.copy(f1, f2)  # centre 22's matrix under centre 24's name
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        y = make_ct_operator(g2, backend="matrix", cache_dir=cache)(x)
    assert torch.allclose(y, truth[24.0]) and any("another geometry" in str(w.message) for w in caught)
    z = dict(np.load(f1))
    z["data"][5] = np.nan
    np.savez(f1, **z)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        y = make_ct_operator(g1, backend="matrix", cache_dir=cache)(x)
    assert torch.allclose(y, truth[22.0]) and any("NaN" in str(w.message) for w in caught)


def test_tv_on_data_in_tiny_units_does_not_report_a_discrepancy_of_zero(tmp_path, monkeypatch, capsys):
    # was: float32 squares underflowed: ||Au-f|| = 0 reported, "δ reached", exit 0, for 5.6e-30 > δ
    monkeypatch.chdir(tmp_path)
    tifffile.imwrite("small.tif", (np.random.RandomState(1).rand(64, 64) * 1e-30).astype(np.float32))
    code, _, err = edn(monkeypatch, capsys, "sr", "--scale", "4", "small.tif", "-o", "out.tif", "--method", "tv",
                       "--delta", "1e-30", "--report", "r.json")
    doc = json.loads(Path("r.json").read_text())
    assert doc["final_discrepancy"] > 1e-30 and doc["delta_reached"] is False and code == 3, err


def test_two_trainings_of_one_checkpoint_at_once_are_refused(tmp_path, monkeypatch, capsys):
    # was: both ran and exited 0; the checkpoint was the last writer's and the log held NUL bytes
    import fcntl

    from .test_learned import _images

    monkeypatch.chdir(tmp_path)
    imgs = _images(tmp_path / "imgs", n=3, size=40)
    lock = open(tmp_path / ".m.safetensors.lock", "a+")
    fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)  # another run holds the checkpoint
    try:
        code, _, err = edn(monkeypatch, capsys, "train", "--task", "sr", "--images", str(imgs), "--out", "m", "--depth", "3",
                           "--width", "8", "--patch-size", "24", "--batch-size", "2", "--steps", "2", "--quiet")
    finally:
        lock.close()
    assert code == 2 and _one_line(err) and "another edn train is writing" in err, err
    assert not Path("m.safetensors").exists() and not Path("m.train.jsonl").exists()
    code, _, err = edn(monkeypatch, capsys, "train", "--task", "sr", "--images", str(imgs), "--out", "m", "--depth", "3",
                       "--width", "8", "--patch-size", "24", "--batch-size", "2", "--steps", "2", "--quiet")
    assert code == 0 and Path("m.safetensors").exists() and not Path(".m.safetensors.lock").exists(), err


def test_an_output_folder_removed_during_the_run_is_an_io_failure(tmp_path, monkeypatch):
    from edncli.errors import InputError
    from edncli.io.images import write_together

    monkeypatch.chdir(tmp_path)
    with pytest.raises(InputError, match="is gone"):
        write_together([("gone/x.tif", b"data")])


def test_a_bad_dist_timeout_under_torchrun_is_printed_once(tmp_path):
    # was: every rank printed "$EDN_DIST_TIMEOUT must be a positive number of seconds"
    import subprocess
    import sys

    from .test_sharding import _env, _scan

    _scan(tmp_path / "scan.h5", tmp_path / "cache", n_slices=2)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", "-m", "edncli",
           "reconstruct", "ct", "--sinogram", "scan.h5", "--slices", "0:2", "--size", "32", "-o", "d.tif", "--quiet"]
    proc = subprocess.run(cmd, capture_output=True, text=True, env={**_env(tmp_path), "EDN_DIST_TIMEOUT": "abc"},
                          cwd=tmp_path, timeout=240)
    errors = [line for line in proc.stderr.splitlines() if "edn: error:" in line]
    assert proc.returncode != 0 and len(errors) == 1 and "EDN_DIST_TIMEOUT" in errors[0], proc.stderr[-3000:]


# ---- training (helper audit of edn train) -------------------------------------------------------

def test_training_refuses_nan_and_inf_ranges_and_rates_before_writing(tmp_path, monkeypatch, capsys):
    # was: --noise-sigma nan trained to NaN and wrote a checkpoint edn refuses; --kernel-sigma 1:nan
    # failed after the log was opened; the denoiser took --lr inf; sudoku a negative --time-limit
    from .test_learned import _images

    monkeypatch.chdir(tmp_path)
    imgs = str(_images(tmp_path / "imgs", n=3, size=40))
    small = ["--depth", "3", "--width", "8", "--patch-size", "24", "--batch-size", "2", "--steps", "2", "--quiet"]
    for args in (["--task", "sr", "--images", imgs, "--noise-sigma", "nan"], ["--task", "sr", "--images", imgs, "--noise-sigma", "0:inf"],
                 ["--task", "deblur", "--images", imgs, "--kernel-sigma", "1.5:nan"],
                 ["--task", "denoiser", "--arch", "dncnn", "--images", imgs, "--lr", "inf"]):
        code, _, err = edn(monkeypatch, capsys, "train", *args, *small, "--out", "m")
        assert code == 2 and _one_line(err), (args, err)
        assert not list(Path(".").glob("m*")), (args, os.listdir("."))
    code, _, err = edn(monkeypatch, capsys, "train", "--task", "sudoku", "--n-puzzles", "20", "--epochs", "1",
                       "--time-limit", "-5", "--out", "m", "--quiet")
    assert code == 2 and "--time-limit" in err and not list(Path(".").glob("m*")), err


def test_a_denoiser_named_with_a_dot_gets_its_own_card(tmp_path):
    from edncli.training.denoiser import output_paths

    assert [str(p) for p in output_paths(tmp_path / "my.v1")] == [str(tmp_path / f"my.v1{s}") for s in
                                                                 (".safetensors", ".md", ".train.jsonl")]


def test_training_under_a_shipped_name_is_refused(tmp_path, monkeypatch, capsys):
    # was: ./edn-sr-x4.safetensors written, and --weights edn-sr-x4 then found the shipped one
    monkeypatch.chdir(tmp_path)
    code, _, err = edn(monkeypatch, capsys, "train", "--task", "sr", "--images", "x", "--out", "edn-sr-x4")
    assert code == 2 and _one_line(err) and "./edn-sr-x4" in err, err
