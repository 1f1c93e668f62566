"""A run's other input files (``--reference``, ``--kernel``, ``--angle-file``) are inputs too:
no output, report or plot may replace one of them, even with ``--force`` (it was only checked
against the main input, so ``--report ref.png --force`` wrote JSON over the ground truth)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from .test_cli import _clean, edn
from .test_cli_audit import _one_line


@pytest.fixture
def files(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    _clean(tmp_path / "ref.png", n=32)
    return tmp_path


@pytest.mark.parametrize("where", ["-o", "--report", "--plot"])
def test_sr_never_replaces_the_reference(files, monkeypatch, capsys, where):
    assert edn(monkeypatch, capsys, "simulate", "sr", "--scale", "2", "ref.png", "-o", "lr.tif")[0] == 0
    before = Path("ref.png").read_bytes()
    args = {"-o": "hr.png", "--report": "r.json", "--plot": "p.png", where: "ref.png"}
    code, _, err = edn(monkeypatch, capsys, "sr", "--scale", "2", "lr.tif", "--method", "gd", "--noise-sigma", "0.01",
                       "--reference", "ref.png", "--force", "--quiet", *[x for kv in args.items() for x in kv])
    assert code == 2 and _one_line(err) and "--reference" in err
    assert Path("ref.png").read_bytes() == before
    assert not any(Path(p).exists() for p in ("hr.png", "r.json", "p.png"))


def test_deblur_never_replaces_the_kernel_file(files, monkeypatch, capsys):
    np.save("k.npy", np.ones((3, 3)))
    before = Path("k.npy").read_bytes()
    assert edn(monkeypatch, capsys, "simulate", "deblur", "--kernel-sigma", "1", "--kernel-size", "5", "ref.png", "-o", "b.tif")[0] == 0
    code, _, err = edn(monkeypatch, capsys, "deblur", "--kernel", "k.npy", "b.tif", "-o", "s.png", "--report", "k.npy",
                       "--method", "gd", "--noise-sigma", "0.01", "--force", "--quiet")
    assert code == 2 and _one_line(err) and "--kernel" in err
    assert Path("k.npy").read_bytes() == before and not Path("s.png").exists()


def test_ct_never_replaces_the_angle_file(files, monkeypatch, capsys):
    pytest.importorskip("astra")
    assert edn(monkeypatch, capsys, "simulate", "ct", "--angles", "20", "ref.png", "-o", "s.h5")[0] == 0
    Path("angles.txt").write_text("\n".join(str(a) for a in np.linspace(0, 180, 20, endpoint=False)) + "\n")
    before = Path("angles.txt").read_bytes()
    code, _, err = edn(monkeypatch, capsys, "ct", "--sinogram", "s.h5", "--angle-file", "angles.txt", "--size", "32",
                       "-o", "x.tif", "--report", "angles.txt", "--method", "gd", "--max-iter", "2", "--force", "--quiet")
    assert code == 2 and _one_line(err) and "--angle-file" in err
    assert Path("angles.txt").read_bytes() == before and not Path("x.tif").exists()


@pytest.mark.parametrize("opts", [("--precision", "bf16"), ("--ensemble", "8"), ("--learned-steps", "2")])
def test_eval_refuses_network_options_no_listed_method_reads(files, monkeypatch, capsys, opts):
    # `edn eval --methods gd,tv --precision bf16` ran and wrote a table whose header claimed bf16.
    Path("im").mkdir()
    Path("ref.png").rename("im/ref.png")
    code, out, err = edn(monkeypatch, capsys, "eval", "sr", "--scale", "2", "--images", "im", "--methods", "gd,tv",
                         "--noise-sigma", "0.01", "--quiet", *opts)
    assert code == 2 and _one_line(err) and opts[0] in err and out == ""


def test_eval_network_options_with_a_network_method_are_checked_not_refused():
    from edncli.evaluation import EvalConfig, check_config
    from edncli.tasks import TaskSpec

    check_config(EvalConfig(spec=TaskSpec("sr", scale=4), methods=["gd", "edn"], noise_sigma=0.01, precision="bf16",
                            ensemble=8, learned_steps=2))
