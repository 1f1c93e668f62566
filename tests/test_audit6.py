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
