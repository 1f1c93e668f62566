"""A tiny denoiser training run writes a loadable checkpoint, a model card and a JSON-lines log."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from edncli.errors import UsageError
from edncli.io.checkpoints import read_metadata, sha256_of
from edncli.networks.potentials import load_denoiser
from edncli.training.denoiser import DenoiserTrainConfig, output_paths, train_denoiser


@pytest.fixture
def image_folder(tmp_path):
    rng = np.random.default_rng(0)
    folder = tmp_path / "imgs"
    folder.mkdir()
    yy, xx = np.mgrid[0:40, 0:40] / 40.0
    for k in range(3):
        im = 0.5 + 0.3 * np.sin(6 * xx + k) * np.cos(4 * yy) + 0.05 * rng.standard_normal((40, 40))
        Image.fromarray((np.clip(im, 0, 1) * 255).astype(np.uint8)).save(folder / f"{k}.png")
    return folder


def _cfg(folder, arch="gradncnn", **kw) -> DenoiserTrainConfig:
    base = dict(arch=arch, depth=3, width=4, images=str(folder), val_images=str(folder), val_crop=24, patch_size=16,
                batch_size=4, steps=3, log_every=1, threads=1)
    base.update(kw)
    return DenoiserTrainConfig(**base)


@pytest.mark.parametrize("arch", ["gradncnn", "dncnn"])
def test_tiny_training_run_gives_loadable_checkpoint(tmp_path, image_folder, arch):
    out = tmp_path / "w" / f"tiny-{arch}"
    ckpt = train_denoiser(_cfg(image_folder, arch), out, command=f"edn train --task denoiser --arch {arch}", quiet=True)
    model, meta = load_denoiser(str(ckpt))
    assert meta["task"] == "denoiser" and meta["arch"]["name"] == arch
    assert meta["sigma_range"] == [0.01, 0.1] and meta["command"].startswith("edn train")
    assert set(meta["metrics"]["val_psnr"]) == {"0.01", "0.03", "0.05"}
    _, card, log = output_paths(out)
    assert sha256_of(ckpt) in card.read_text()
    rows = [json.loads(line) for line in log.read_text().splitlines()]
    assert rows[-1]["final"] and rows[0]["step"] == 1


def test_existing_output_needs_force(tmp_path, image_folder):
    out = tmp_path / "x.safetensors"
    train_denoiser(_cfg(image_folder, steps=1), out, quiet=True)
    first = read_metadata(out)
    with pytest.raises(UsageError, match="--force"):
        train_denoiser(_cfg(image_folder, steps=1), out, quiet=True)
    train_denoiser(_cfg(image_folder, steps=1, force=True, seed=1), out, quiet=True)
    assert read_metadata(out)["config"]["seed"] == 1 != first["config"]["seed"]


@pytest.mark.parametrize(
    "kw,match",
    [({"arch": "unet"}, "--arch"), ({"sigma": (0.1, 0.01)}, "--sigma"), ({"steps": 0}, "--steps"), ({"lr": 0.0}, "--lr")],
)
def test_bad_settings_are_usage_errors(tmp_path, image_folder, kw, match):
    with pytest.raises(UsageError, match=match):
        train_denoiser(_cfg(image_folder, **kw), tmp_path / "bad", quiet=True)


def test_bare_out_name_goes_to_the_current_folder_not_weights():
    # as for every edn train task: a bare --out never lands beside (or over) a shipped checkpoint
    from pathlib import Path

    ckpt, card, log = output_paths("gradncnn")
    assert (ckpt, card, log) == (Path("gradncnn.safetensors"), Path("gradncnn.md"), Path("gradncnn.train.jsonl"))
    assert output_paths("w/x.safetensors")[0] == Path("w/x.safetensors")
