"""Training Gaussian denoisers: ``y = x + σ n``, loss ``||D_θ(y) - x||^2`` (paper 000 §4, DESIGN §5).

For the potential models (GraDnCNN, DnICNN, DnDICNN) ``D_θ(y) = y - ∇g_θ(y)`` is itself a
gradient, so the loss needs double backprop (``create_graph=True``); the plain DnCNN is a residual
network. σ is drawn uniformly per patch from a range, so one blind denoiser serves all levels.
Validation: PSNR of the denoised central crops of a folder of test images at fixed noise levels.

Outputs, written atomically: ``<out>.safetensors`` (task ``"denoiser"``, the ``arch`` dict, σ range,
command, data, metrics), the model card ``<out>.md``, and a JSON-lines log ``<out>.train.jsonl``.
"""

from __future__ import annotations

import json
import math
import platform
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

import numpy as np
import torch

from ..errors import UsageError
from ..io.reports import strict_json
from ..metrics import psnr


@dataclass
class DenoiserTrainConfig:
    """Settings of ``edn train --task denoiser`` (defaults: the CPU-sized shipped models).

    Attributes
    ----------
    arch: ``gradncnn`` | ``dnicnn`` | ``dndicnn`` | ``dncnn``.
    depth, width: network size (``None``: the architecture's default, see ``default_arch``).
    sigma: noise range ``(lo, hi)`` in [0, 1] image units; σ is uniform in it per patch.
    images: folder of training images (gray; colour is converted to luminance).
    val_images: folder of validation images (``None``: no validation).
    val_sigmas: noise levels of the validation PSNR; ``val_crop``: central crop side (pixels).
    patch_size, batch_size, steps, lr: optimisation (Adam, cosine decay to ``lr/20``).
    time_limit_s: stop earlier when the wall time is spent (the checkpoint says so).
    seed: patches, noise and initial weights. threads: torch CPU threads (``None``: torch's choice).
    log_every: steps between log lines. force: overwrite an existing output.
    """

    arch: str = "gradncnn"
    depth: Optional[int] = None
    width: Optional[int] = None
    sigma: Tuple[float, float] = (0.01, 0.1)
    images: str = "../shared/data/train400"
    val_images: Optional[str] = "../shared/data/set12"
    val_sigmas: Tuple[float, ...] = (0.01, 0.03, 0.05)
    val_crop: int = 128
    patch_size: int = 40
    batch_size: int = 16
    steps: int = 1000
    lr: float = 1e-3
    time_limit_s: Optional[float] = None
    seed: int = 0
    device: str = "cpu"
    threads: Optional[int] = None
    log_every: int = 50
    force: bool = False

    def check(self) -> None:
        """Raise :class:`UsageError` (one line naming the option) for impossible settings."""
        from ..networks.potentials import ARCHS, default_arch

        if self.arch not in ARCHS:
            raise UsageError(f"--arch must be one of {', '.join(ARCHS)}, got {self.arch!r}")
        default_arch(self.arch, self.depth, self.width)  # --depth >= 2, --width >= 1
        lo, hi = self.sigma
        if not (0 <= lo <= hi and hi > 0):
            raise UsageError(f"--sigma must be lo:hi with 0 <= lo <= hi and hi > 0, got {lo}:{hi}")
        from .lagged import MIN_PATCH

        for name, value, low in (("--steps", self.steps, 1), ("--batch-size", self.batch_size, 1),
                                 ("--patch-size", self.patch_size, MIN_PATCH)):
            if value < low:
                raise UsageError(f"{name} must be >= {low}, got {value}")
        if not (self.lr > 0 and math.isfinite(self.lr)):
            raise UsageError(f"--lr must be > 0 and finite, got {self.lr}")
        if self.time_limit_s is not None and not self.time_limit_s > 0:
            raise UsageError(f"--time-limit must be > 0 seconds, got {self.time_limit_s}")


def output_paths(out: str | Path) -> Tuple[Path, Path, Path]:
    """``(checkpoint, card, log)`` for ``out``, a path or a name (``.safetensors`` added), as for
    every ``edn train`` task: a bare name is written to the current folder, never into ``weights/``."""
    from ..io.weights import SUFFIX

    s = str(out)
    ckpt = Path(s if s.endswith(SUFFIX) else s + SUFFIX)
    stem = str(ckpt)[: -len(SUFFIX)]  # "my.v1" keeps its dot: my.v1.md, not my.md
    return ckpt, Path(stem + ".md"), Path(stem + ".train.jsonl")


def _validation_set(folder: str, crop: int, sigmas: Tuple[float, ...], seed: int) -> List[Tuple[float, torch.Tensor, torch.Tensor]]:
    """``[(σ, clean (N, c, c), noisy (N, c, c))]`` from central crops; fixed noise per seed."""
    from .data import list_images, load_gray_images

    ims = load_gray_images(list_images(folder, "--val-images"))
    crops = []
    for im in ims:
        c = min(crop, *im.shape)
        i, j = (im.shape[0] - c) // 2, (im.shape[1] - c) // 2
        crops.append(torch.from_numpy(np.ascontiguousarray(im[i : i + c, j : j + c])))
    side = min(c.shape[0] for c in crops)
    clean = torch.stack([c[:side, :side] for c in crops])
    gen = torch.Generator().manual_seed(seed + 12345)
    return [(s, clean, clean + s * torch.randn(clean.shape, generator=gen)) for s in sigmas]


def evaluate_denoiser(model: torch.nn.Module, val: List[Tuple[float, torch.Tensor, torch.Tensor]], device: str) -> Dict[str, Any]:
    """Validation PSNR (dB) per σ of ``model.denoise`` and of the noisy input."""
    was_training = model.training
    model.eval()
    out: Dict[str, Any] = {"val_psnr": {}, "noisy_psnr": {}}
    for s, clean, noisy in val:
        den = torch.cat([model.denoise(noisy[i : i + 4].to(device)).detach().cpu() for i in range(0, len(noisy), 4)])
        out["val_psnr"][f"{s:g}"] = round(psnr(den.clamp(0, 1), clean), 3)
        out["noisy_psnr"][f"{s:g}"] = round(psnr(noisy.clamp(0, 1), clean), 3)
    model.train(was_training)
    return out


def _machine() -> str:
    name = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                name = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{name}, {torch.get_num_threads()} torch threads"


def train_denoiser(cfg: DenoiserTrainConfig, out: str | Path, command: str = "", quiet: bool = False) -> Path:
    """Train a Gaussian denoiser and write checkpoint, model card and log; returns the checkpoint path.

    Parameters
    ----------
    cfg: the settings (checked first; a bad value is a :class:`UsageError`).
    out: output path or name (current folder); an existing file is an error unless ``cfg.force``.
    command: the command line that started the run, stored in the metadata and the card.
    quiet: no progress lines on stderr.
    """
    import sys

    from ..io.checkpoints import save_checkpoint, write_model_card
    from ..networks.potentials import TASK, build_denoiser, count_parameters, default_arch
    from .data import PatchSampler, draw_sigmas, list_images, load_gray_images

    cfg.check()
    ckpt, card, log_path = output_paths(out)
    if ckpt.exists() and not cfg.force:
        raise UsageError(f"output {ckpt} exists; pass --force to overwrite it or choose another name")
    from ..io.checkpoints import check_side_files

    check_side_files(ckpt, log_path, force=cfg.force)
    if cfg.threads:
        torch.set_num_threads(int(cfg.threads))
    torch.manual_seed(cfg.seed)
    gen = torch.Generator().manual_seed(cfg.seed)

    def say(msg: str) -> None:
        if not quiet:
            print(msg, file=sys.stderr, flush=True)

    files = list_images(cfg.images)
    images = load_gray_images(files, min_size=cfg.patch_size)
    sampler = PatchSampler(images, cfg.patch_size, seed=cfg.seed)
    val = _validation_set(cfg.val_images, cfg.val_crop, cfg.val_sigmas, cfg.seed) if cfg.val_images else []

    arch = default_arch(cfg.arch, cfg.depth, cfg.width)
    model = build_denoiser(arch).to(cfg.device)
    model.train()
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda k: 0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * min(k, cfg.steps) / cfg.steps)))
    lo, hi = cfg.sigma
    log_path.parent.mkdir(parents=True, exist_ok=True)
    logf = open(log_path, "w")
    say(f"training {cfg.arch} ({count_parameters(model)} parameters) on {len(files)} images, σ in [{lo:g}, {hi:g}]")
    t0 = time.perf_counter()
    running, step, stopped = 0.0, 0, "steps"
    from .lagged import _raise_on_sigterm

    _raise_on_sigterm()  # SIGTERM ends training like Ctrl-C
    try:
        try:
            for k in range(1, cfg.steps + 1):
                x = sampler.sample(cfg.batch_size).to(cfg.device)
                s = draw_sigmas(cfg.batch_size, lo, hi, gen).to(cfg.device).view(-1, 1, 1)
                y = x + s * torch.randn(x.shape, generator=gen).to(cfg.device)
                den = model(y)
                loss = ((den - x) ** 2).flatten(1).mean(1).mean()
                opt.zero_grad(set_to_none=True)
                loss.backward()
                torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
                opt.step()
                sched.step()
                step = k  # steps completed
                running += float(loss.detach())
                if step % cfg.log_every == 0 or step == cfg.steps:
                    n = cfg.log_every if step % cfg.log_every == 0 else step % cfg.log_every
                    row = {"step": step, "loss": running / n, "psnr_train": 10 * math.log10(1 / max(running / n, 1e-12)),
                           "lr": sched.get_last_lr()[0], "time_s": round(time.perf_counter() - t0, 2)}
                    logf.write(strict_json(row) + "\n")
                    logf.flush()
                    say(f"step {step}/{cfg.steps}: loss {row['loss']:.3e} ({row['psnr_train']:.2f} dB) {row['time_s']:.0f} s")
                    running = 0.0
                if cfg.time_limit_s is not None and time.perf_counter() - t0 > cfg.time_limit_s:
                    stopped = "time_limit"
                    break
        except KeyboardInterrupt:
            # Ctrl-C (or SIGTERM) ends training early but keeps the work: the weights after the last
            # completed step are validated and written, and the card says the run was interrupted.
            # With no step done there is nothing to keep: the fresh log goes too, so a rerun needs no --force.
            if step == 0:
                logf.close()
                log_path.unlink(missing_ok=True)
                raise
            stopped = "interrupted"
            say(f"interrupted at step {step}; validating and writing the weights of that step")
        train_time = time.perf_counter() - t0
        metrics = evaluate_denoiser(model, val, cfg.device) if val else {}
        logf.write(strict_json({"final": True, "steps_done": step, "stopped": stopped, **metrics}) + "\n")
    finally:
        logf.close()
    say(f"validation: {json.dumps(metrics)}")

    meta: Dict[str, Any] = {
        "task": TASK,
        "arch": arch,
        "sigma_range": [lo, hi],
        "command": command,
        "config": {k: (list(v) if isinstance(v, tuple) else v) for k, v in asdict(cfg).items()},
        "data": f"{len(files)} images from {cfg.images} ({cfg.patch_size}x{cfg.patch_size} patches, flips/rotations)",
        "validation_data": f"central {cfg.val_crop}x{cfg.val_crop} crops of {cfg.val_images}" if cfg.val_images else None,
        "metrics": metrics,
        "steps_done": step,
        "stopped": stopped,
        "train_time_s": round(train_time, 1),
        "device": f"{cfg.device} ({_machine()})",
        "parameters": count_parameters(model),
        "torch": torch.__version__,
        "date": time.strftime("%Y-%m-%d"),
    }
    if ckpt.exists() and not cfg.force:
        raise UsageError(f"output {ckpt} appeared during training; pass --force to overwrite it")
    model.eval()
    sha = save_checkpoint(ckpt, model.state_dict(), meta)
    meta["file_size"] = ckpt.stat().st_size
    kind = "a gradient-step denoiser D(x) = x - ∇g(x) of a learned potential" if arch["name"] != "dncnn" else "a residual DnCNN denoiser D(x) = x - N(x) (no potential; for RED/PnP baselines)"
    how = {"time_limit": "stopped by the time limit",
           "interrupted": f"interrupted (Ctrl-C or SIGTERM) after step {step} of {cfg.steps}"}.get(stopped, "all steps done")
    body = (
        f"## What it is\n\n{ckpt.stem}: {kind}, trained for Gaussian noise σ in [{lo:g}, {hi:g}] on [0, 1] images "
        f"(gray), {step} Adam steps of {cfg.batch_size} patches {cfg.patch_size}x{cfg.patch_size} "
        f"({how}).\n\n"
        "Validation: PSNR (dB) of the denoised central crops vs the noisy input, per σ (above).\n"
    )
    write_model_card(card, ckpt.stem, meta, sha, body)
    say(f"wrote {ckpt} (sha256 {sha[:12]}...) and {card}")
    return ckpt


__all__ = ["DenoiserTrainConfig", "train_denoiser", "evaluate_denoiser", "output_paths"]
