"""Training direction networks with the lagged scheme (paper 001 §4.2), and the baseline network.

Loss ``ℓ(u + G(u, f, grad E(u)), u*)`` (mean squared error) over iterates ``u``. The iterates
are drawn from a distribution that depends on the network itself, updated with a lag: for the
first ``lag_every`` mini-batches ``u`` is a gradient-descent iterate (0..K steps of Landweber
with backtracking from the initial guess); afterwards a frozen copy of the network, refreshed
every ``lag_every`` mini-batches, runs Algorithm 1 for a random 0..K steps (K = 10 for SR in
the paper) to produce ``u``. Noise levels are drawn per sample, so one network serves several.

Data-parallel under ``torchrun`` (PyTorch DDP: gloo on CPU, NCCL on GPU): each rank draws its
own patches; rank 0 validates and writes the checkpoint.
"""

from __future__ import annotations

import copy
import json
import math
import os
import sys
import time
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import List, Optional

import numpy as np
import torch
import torch.nn.functional as F

from ..energies import DataFidelity
from ..errors import CheckpointError, UsageError
from ..io.checkpoints import check_side_files, exclusive_output, save_checkpoint, write_model_card
from ..io.reports import strict_json
from ..metrics import psnr
from ..networks.backbones import BackboneConfig
from ..networks.direction import BaselineNet, DirectionNet, DirectionNetConfig, baseline_arch, count_parameters, network_inputs
from ..networks.inference import InferenceConfig
from ..solvers.descent import LineSearch, StopRule, descend, negative_gradient
from ..tasks import TaskSpec
from .data import PatchSampler, list_images, load_gray_images
from .phantoms import random_ellipses


#: The smallest training patch side: below it a 3x3 backbone sees mostly its zero padding.
MIN_PATCH = 8


@dataclass
class TrainConfig:
    """Everything ``edn train --task sr|ct|deblur`` needs; stored in the checkpoint."""

    spec: TaskSpec
    kind: str = "edn"  # "edn" (direction network) | "baseline"
    images: Optional[str] = None
    val_images: Optional[str] = None
    depth: int = 8
    width: int = 32
    batchnorm: bool = False
    #: Space-to-depth factor of the backbone (1: plain DnCNN; see ``networks/backbones.py``).
    shuffle: int = 1
    #: Residual blocks instead of a plain chain (``BackboneConfig.residual``).
    residual: bool = False
    layer: str = "cone_ball"
    zeta1: float = 0.05
    zeta2: float = 20.0
    zeta: float = 1e-3
    patch: int = 48
    batch: int = 16
    steps: int = 2000
    lr: float = 1e-3
    lag_every: int = 100
    max_lag_steps: int = 10
    min_iter: int = 15
    val_every: int = 250
    val_count: int = 8
    val_size: int = 96
    #: Noise std of the validation measurements (the checkpoint kept is the best at this level).
    val_noise: float = 0.01
    seed: int = 0
    phantom_fraction: float = 0.5
    #: Warm start: a baseline or direction checkpoint of the same task whose backbone weights
    #: initialise this network (paper 001 starts from a pretrained DnCNN; see :func:`warm_start`).
    init_from: Optional[str] = None
    #: Autocast dtype of the backbone during training, lagged iterates and validation: "fp32" or
    #: "bf16" (the descent-set layer, the loss and the optimiser stay float32).
    precision: str = "fp32"

    def as_dict(self) -> dict:
        d = asdict(self)
        d["spec"] = self.spec.as_dict()
        return d

    def check(self) -> None:
        """Raise :class:`UsageError` (one line naming the option) for a setting that cannot work.

        Called before any file is written or any data is read.
        """
        if self.kind not in ("edn", "baseline"):
            raise UsageError(f"--kind must be edn or baseline, got {self.kind!r}")
        if self.precision not in ("fp32", "bf16"):
            raise UsageError(f"--precision for training must be fp32 or bf16, got {self.precision!r}")
        if self.layer not in ("cone_ball", "halfspace"):
            raise UsageError(f"--layer must be cone_ball or halfspace, got {self.layer!r}")
        if self.layer == "cone_ball" and not 0 < self.zeta1 <= self.zeta2:
            raise UsageError(f"--zeta1 and --zeta2 need 0 < zeta1 <= zeta2, got {self.zeta1} and {self.zeta2}")
        if self.layer == "halfspace" and not self.zeta > 0:
            raise UsageError(f"--zeta must be > 0, got {self.zeta}")
        for name, value, low in (("--depth", self.depth, 2), ("--width", self.width, 1), ("--shuffle", self.shuffle, 1),
                                 ("--patch-size", self.patch, MIN_PATCH), ("--batch-size", self.batch, 1),
                                 ("--steps", self.steps, 1), ("--lag-every", self.lag_every, 1),
                                 ("--val-every", self.val_every, 1), ("--max-lag-steps", self.max_lag_steps, 0),
                                 ("--min-iter", self.min_iter, 0), ("--val-count", self.val_count, 1),
                                 ("--val-size", self.val_size, 1)):
            if value < low:
                raise UsageError(f"{name} must be >= {low}, got {value}")
        if self.residual and (self.batchnorm or self.depth < 4 or self.depth % 2):
            raise UsageError(
                "--residual needs --no-batchnorm and an even --depth >= 4 (a first and a last convolution around "
                f"blocks of 2), got --depth {self.depth}" + (" with --batchnorm" if self.batchnorm else "")
            )
        if not (math.isfinite(self.lr) and self.lr > 0):
            raise UsageError(f"--lr must be > 0, got {self.lr}")
        if not (math.isfinite(self.val_noise) and self.val_noise >= 0):
            raise UsageError(f"--val-noise-sigma must be a finite number >= 0, got {self.val_noise}")
        spec = self.spec
        if spec.task == "sr":
            from ..operators.downsample import check_scale

            check_scale(spec.scale)
            if spec.downsampler not in ("average", "bicubic"):
                raise UsageError(f"--downsampler must be average or bicubic, got {spec.downsampler!r}")
            for name, side in (("--patch-size", self.patch), ("--val-size", self.val_size)):
                if side % spec.scale:
                    raise UsageError(f"{name} {side} must be divisible by --scale {spec.scale}")
        if spec.task == "deblur":
            from ..operators.blur import gaussian_kernel

            for sigma in spec.kernel_sigma:  # both ends of the range: σ > 0, odd size: usage errors
                gaussian_kernel(sigma, spec.kernel_size)
            for name, side in (("--patch-size", self.patch), ("--val-size", self.val_size)):
                if spec.boundary == "reflect" and spec.kernel_size // 2 >= side:
                    raise UsageError(
                        f"{name} {side} is too small for --kernel-size {spec.kernel_size} "
                        f"(reflect boundary: the side must be larger than {spec.kernel_size // 2})"
                    )


@dataclass
class TrainState:
    step: int = 0
    best_val: float = -math.inf
    history: List[dict] = field(default_factory=list)


def _dist_info():
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    return world, rank


def _init_distributed(device: torch.device):
    """``(world, rank, device)``; under torchrun a CUDA ``device`` becomes ``cuda:LOCAL_RANK``
    (NCCL refuses two ranks on one GPU, and DDP needs each rank's own device index)."""
    world, rank = _dist_info()
    if world <= 1:
        return 1, 0, device
    import torch.distributed as dist

    from ..solvers.sharding import Launch, rank_device

    device = rank_device(device, Launch.from_env())
    if device.type == "cuda":
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
    return world, rank, device


def _setup_stage(world: int, device: torch.device):
    """A :meth:`~edncli.solvers.sharding.ShardGroup.stage` under torchrun, else nothing."""
    from contextlib import nullcontext

    if world <= 1:
        return nullcontext()
    from ..solvers.sharding import Launch, ShardGroup

    return ShardGroup(Launch.from_env(), device).stage()


class _Sampler:
    """Ground-truth patches for a task: natural-image crops, plus ellipse phantoms for CT."""

    def __init__(self, cfg: TrainConfig, images: List[np.ndarray], seed: int):
        self.cfg = cfg
        self.patches = PatchSampler(images, cfg.patch, seed=seed) if images else None
        self.rng = np.random.default_rng(seed + 7)

    def sample(self, n: int) -> torch.Tensor:
        if self.cfg.spec.task != "ct" or self.patches is None:
            if self.patches is None:
                return random_ellipses(n, self.cfg.patch, self.rng)
            return self.patches.sample(n)
        n_ph = int(round(n * self.cfg.phantom_fraction))
        parts = [random_ellipses(n_ph, self.cfg.patch, self.rng), self.patches.sample(n - n_ph)]
        return torch.cat(parts)[torch.from_numpy(self.rng.permutation(n))]


def _measure(spec: TaskSpec, x: torch.Tensor, gen: torch.Generator, op_cache: dict, device):
    """``(op, f, sigma)`` for a batch of ground truths: noise std per sample in ``spec.noise_sigma``;
    one blur σ (deblur) or angle count (ct, from ``spec.angle_choices``) drawn per batch."""
    lo, hi = spec.noise_sigma
    kernel_sigma = None
    if spec.task == "deblur":
        klo, khi = spec.kernel_sigma
        kernel_sigma = round(float(klo + (khi - klo) * torch.rand(1, generator=gen)), 3)
    angles = None
    if spec.task == "ct" and spec.angle_choices:
        angles = spec.angle_choices[int(torch.randint(len(spec.angle_choices), (1,), generator=gen))]
    key = (tuple(x.shape[-2:]), kernel_sigma, angles)
    if key not in op_cache:
        op_cache[key] = spec.operator(x.shape[-2:], kernel_sigma=kernel_sigma, device=device, angles=angles)
    op = op_cache[key]
    clean = op(x)
    sigma = lo + (hi - lo) * torch.rand(x.shape[0], generator=gen)
    noise = torch.randn(clean.shape, generator=gen).to(device) * sigma.to(device).view(-1, *([1] * (clean.dim() - 1)))
    return op, clean + noise, sigma


def _iterate(spec, net_lagged, op, f, k: int, L: float):
    """The training iterate: ``k`` steps of GD (``net_lagged is None``) or Algorithm 1 with the lagged net."""
    u0 = spec.initial(op, f)
    if k == 0:
        return u0
    energy = DataFidelity(op, f)
    if net_lagged is None:
        res = descend(energy, u0, negative_gradient, line=LineSearch(initial="lipschitz"), stop=StopRule(max_iter=k))
    else:
        data = network_inputs(op, f, L)

        def direction(u, g, _k):
            return net_lagged(u, -g / L, data)

        res = descend(energy, u0, direction, line=LineSearch(initial="unit"), stop=StopRule(max_iter=k))
    return res.u


def _validation_set(cfg: TrainConfig, seed: int) -> torch.Tensor:
    """Fixed validation ground truths ``(n, s, s)``, ``s = val_size``: centre crops of the first
    ``val_count`` validation images at least ``s`` on a side (plus as many phantoms for CT), or
    ``val_count`` phantoms without ``--val-images``. No image that large is a :class:`UsageError`."""
    s = cfg.val_size
    rng = np.random.default_rng(seed + 1234)
    if cfg.val_images:
        crops, sides = [], set()
        for path in list_images(cfg.val_images, "--val-images"):  # read only until val_count crops
            (im,) = load_gray_images([path])
            if min(im.shape) < s:
                sides.add(min(im.shape))
                continue
            i, j = (im.shape[0] - s) // 2, (im.shape[1] - s) // 2
            crops.append(im[i : i + s, j : j + s])
            if len(crops) == cfg.val_count:
                break
        if not crops:
            raise UsageError(f"--val-images {cfg.val_images}: no image is {s}x{s} or larger (smallest sides: "
                             f"{', '.join(map(str, sorted(sides)[:5]))}); give a smaller --val-size")
        out = torch.from_numpy(np.stack(crops))
        if cfg.spec.task == "ct":
            out = torch.cat([out, random_ellipses(len(crops), s, rng)])
        return out
    return random_ellipses(cfg.val_count, s, rng)


def evaluate(cfg: TrainConfig, net, x: torch.Tensor, device, seed: int = 0) -> dict:
    """Mean PSNR of the initial guess and of the method after ``min_iter`` steps on ``x``."""
    gen = torch.Generator().manual_seed(seed)
    spec = cfg.spec
    x = x.to(device)
    sigma = float(cfg.val_noise)
    op, f, _ = _measure(TaskSpec(**{**spec.as_dict(), "noise_sigma": (sigma, sigma), "angle_choices": ()}), x, gen, {}, device)
    u0 = spec.initial(op, f)
    was_training = net.training
    net.eval()
    with torch.no_grad():
        L = op.sqnorm(device=device)
        data = network_inputs(op, f, L)
        if cfg.kind == "baseline":
            u = net(u0, data)
            monotone = None
        else:
            res = descend(
                DataFidelity(op, f),
                u0,
                lambda u, g, k: net(u, -g / L, data),
                line=LineSearch(initial="unit"),
                stop=StopRule(max_iter=cfg.min_iter),
            )
            u, monotone = res.u, res.energy_monotone
    net.train(was_training)
    classic = TaskSpec(**{**spec.as_dict(), "init": "classic"}).initial(op, f)
    return {
        "val_psnr": psnr(u.clamp(0, 1), x),
        "val_psnr_init": psnr(classic.clamp(0, 1), x),
        "val_energy_monotone": monotone,
        "val_noise_sigma": sigma,
    }


def train(cfg: TrainConfig, out: Path, *, command: str, device: torch.device, quiet: bool = False, force: bool = False,
          resume: Optional[Path] = None, log_path: Optional[Path] = None) -> Optional[Path]:
    """Train and write ``out`` (safetensors) and its model card ``out.with_suffix('.md')``.

    Returns the checkpoint path on rank 0 (``None`` on other ranks). Under torchrun every rank
    waits for rank 0's checkpoint (a barrier) and the process group this call created is
    destroyed before it returns: a rank that exited while rank 0 was still writing sometimes
    aborted in gloo ("terminate called without an active exception", exit -6; 1 run in 3 under
    pytest), and torchrun reported a run that had succeeded as failed.
    """
    import torch.distributed as dist

    from contextlib import ExitStack

    owns_group = _dist_info()[0] > 1 and not (dist.is_available() and dist.is_initialized())
    try:
        with ExitStack() as held:  # the lock on ``out``, taken in the set-up (rank 0), kept to the end
            result = _train(cfg, out, command=command, device=device, quiet=quiet, force=force, resume=resume,
                            log_path=log_path, held=held)
        if owns_group:  # every rank leaves together, once rank 0 has written the checkpoint
            dist.barrier()
        return result
    finally:
        if owns_group and dist.is_initialized():
            dist.destroy_process_group()


def _train(cfg: TrainConfig, out: Path, *, command: str, device: torch.device, quiet: bool, force: bool,
           resume: Optional[Path], log_path: Optional[Path], held) -> Optional[Path]:
    cfg.check()
    world, rank, device = _init_distributed(device)
    # Set-up is voted on: an error met on one rank only (a file that differs between nodes, a
    # failed read) stops every rank, and rank 0 reports it ("rank 1: ..."), before DDP would hang.
    with _setup_stage(world, device):
        if rank == 0 and out.parent.is_dir():  # one writer per checkpoint: a concurrent run is refused
            held.enter_context(exclusive_output(out))
        same = resume is not None and Path(resume).resolve() == Path(out).resolve()
        if out.exists() and not force and not same:
            raise UsageError(f"{out} exists; pass --force to overwrite it (or --resume {out})")
        check_side_files(out, log_path, force=force or same)
        torch.manual_seed(cfg.seed + rank)
        images = load_gray_images(list_images(cfg.images), min_size=cfg.patch) if cfg.images else []
        if cfg.spec.task != "ct" and not images:
            raise UsageError(f"--images is required for task {cfg.spec.task}")
        val_x = _validation_set(cfg, cfg.seed)  # on every rank, so a usage error stops them all alike
        if rank != 0:
            val_x = None

        bb = BackboneConfig(in_channels=3 if cfg.kind == "edn" else 2, out_channels=1, depth=cfg.depth, width=cfg.width,
                            batchnorm=cfg.batchnorm, shuffle=cfg.shuffle, residual=cfg.residual)
        if cfg.kind == "edn":
            net_cfg = DirectionNetConfig(backbone=bb, layer=cfg.layer, zeta1=cfg.zeta1, zeta2=cfg.zeta2, zeta=cfg.zeta)
            net: torch.nn.Module = DirectionNet(net_cfg)
            arch = net_cfg.as_dict()
        else:
            net = BaselineNet(bb)
            arch = baseline_arch(bb)
        state = TrainState()
        time_before = 0.0  # training time of the resumed checkpoint, so time_s and the card's time add up
        if cfg.init_from is not None and resume is None:
            warm_start(net, cfg, cfg.init_from)
        if resume is not None:
            from ..io.checkpoints import load_checkpoint

            tensors, meta = load_checkpoint(resume, expect_task=f"{cfg.kind}-{cfg.spec.task}")
            _check_resume_fits(resume, meta, cfg, arch)
            try:
                net.load_state_dict(tensors)
            except RuntimeError as exc:
                raise CheckpointError(
                    f"--resume {resume}: its tensors do not fit this network (--depth {cfg.depth} --width {cfg.width} "
                    f"--shuffle {cfg.shuffle}): {str(exc).splitlines()[0]}"
                ) from None
            steps = meta.get("metrics", {}).get("steps", 0)
            if not isinstance(steps, int) or isinstance(steps, bool) or steps < 0:
                raise CheckpointError(f"--resume {resume}: corrupt edn metadata (metrics.steps must be an integer >= 0, got {steps!r})")
            state.step = _resume_step(meta, steps)
            if state.step >= cfg.steps:
                raise UsageError(
                    f"--resume {resume}: its weights are those of step {state.step}, so --steps {cfg.steps} leaves "
                    f"nothing to do; give --steps above {state.step}"
                )
            if state.step != steps and rank == 0 and not quiet:
                print(f"edn: resuming at step {state.step}, the checkpoint's best validated step, whose weights it "
                      f"holds (the run had reached step {steps})", file=sys.stderr)
            t = meta.get("train_time_s")
            time_before = float(t) if isinstance(t, (int, float)) and not isinstance(t, bool) and t >= 0 else 0.0
        # A resumed run draws new samples: its streams are seeded by (seed, rank, the step it starts at),
        # so it neither replays the batches of steps 1, 2, ... nor depends on how it got there.
        stream = cfg.seed * 1000 + rank if state.step == 0 else int(
            np.random.SeedSequence([cfg.seed, rank, state.step]).generate_state(1)[0])
        gen = torch.Generator().manual_seed(stream)
        sampler = _Sampler(cfg, images, seed=stream)
        net.to(device).train()
        if cfg.precision != "fp32":
            # autocast around the backbone only (networks/inference.py); NHWC where it pays (CPU)
            net.inference = InferenceConfig(precision=cfg.precision).resolved(device)
            if net.inference.channels_last:
                net.to(memory_format=torch.channels_last)
    model = net
    if world > 1:
        from torch.nn.parallel import DistributedDataParallel as DDP

        model = DDP(net, device_ids=[device.index] if device.type == "cuda" else None)
    opt = torch.optim.Adam(net.parameters(), lr=cfg.lr)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=max(cfg.steps, 1), eta_min=cfg.lr * 0.02)
    with warnings.catch_warnings():  # fast-forwarding a resumed schedule "before optimizer.step()" is intended
        warnings.simplefilter("ignore", UserWarning)
        for _ in range(state.step):
            sched.step()

    lagged = None
    op_cache: dict = {}
    t0 = time.perf_counter() - time_before
    # A resumed run continues its own log; any other run starts a fresh one (no rows of an older run).
    log_fh = open(log_path, "a" if same else "w") if (log_path is not None and rank == 0) else None
    bar = None
    if rank == 0 and not quiet and sys.stderr.isatty():
        from tqdm import tqdm

        bar = tqdm(total=cfg.steps, initial=state.step, desc=f"train {cfg.kind}-{cfg.spec.task}", file=sys.stderr)
    best_state = None
    interrupted = False
    _raise_on_sigterm()

    def validate(loss: Optional[float], **flags: bool) -> None:
        """Validate, log a row, keep the state if it is the best so far (rank 0 only).

        ``flags`` (``resumed``, ``interrupted``) mark the rows that are not a scheduled validation.
        """
        nonlocal best_state
        row_metrics = evaluate(cfg, net, val_x, device)  # type: ignore[arg-type]
        row = {"step": state.step, "loss": loss, "time_s": time.perf_counter() - t0, **row_metrics, **flags}
        state.history.append(row)
        if log_fh is not None:
            log_fh.write(strict_json(row) + "\n")
            log_fh.flush()
        if row_metrics["val_psnr"] > state.best_val:
            state.best_val = row_metrics["val_psnr"]
            best_state = {k: v.detach().cpu().clone() for k, v in net.state_dict().items()}
        if quiet is False and bar is None:
            print(strict_json(row), file=sys.stderr)

    try:
        try:
            if rank == 0 and cfg.init_from is not None and resume is None and state.step == 0:
                # The warm start is a candidate too: training keeps it if no later step validates higher.
                validate(None)
            if rank == 0 and resume is not None:
                # So are the resumed weights: a resume that only validates lower keeps them.
                validate(None, resumed=True)
            while state.step < cfg.steps:
                if cfg.kind == "edn" and state.step >= cfg.lag_every and (state.step % cfg.lag_every == 0 or lagged is None):
                    # (a resume between two refreshes takes its copy at once)
                    lagged = copy.deepcopy(net).eval()
                    for p in lagged.parameters():
                        p.requires_grad_(False)
                x = sampler.sample(cfg.batch).to(device)
                op, f, _ = _measure(cfg.spec, x, gen, op_cache, device)
                L = op.sqnorm(device=device)
                data = network_inputs(op, f, L)
                if cfg.kind == "edn":
                    k = int(torch.randint(0, cfg.max_lag_steps + 1, (1,), generator=gen))
                    with torch.no_grad():
                        u = _iterate(cfg.spec, lagged, op, f, k, L)
                    g = -DataFidelity(op, f).grad(u) / L
                    d = model(u, g, data)
                    loss = F.mse_loss(u + d, x)
                else:
                    u0 = cfg.spec.initial(op, f)
                    loss = F.mse_loss(model(u0, data), x)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                torch.nn.utils.clip_grad_norm_(net.parameters(), 1.0)
                opt.step()
                sched.step()
                state.step += 1
                if bar is not None:
                    bar.update(1)
                    bar.set_postfix_str(f"loss={float(loss.detach()):.3g}", refresh=False)
                if rank == 0 and (state.step % cfg.val_every == 0 or state.step == cfg.steps):
                    validate(float(loss.detach()))
        except KeyboardInterrupt:
            # Ctrl-C ends training early but keeps the work: the best validated state is written,
            # and the card says it was interrupted.
            interrupted = True
            if rank == 0 and best_state is None:
                validate(None, interrupted=True)
    finally:
        if bar is not None:
            bar.close()
        if log_fh is not None:
            log_fh.close()
    if rank != 0:
        return None
    best_row = max(state.history, key=lambda r: r["val_psnr"]) if state.history else {}
    final_state = best_state or {k: v.detach().cpu() for k, v in net.state_dict().items()}
    meta = {
        "task": f"{cfg.kind}-{cfg.spec.task}",
        "arch": arch,
        "operator": cfg.spec.as_dict(),
        "min_iter": cfg.min_iter,
        "train_config": cfg.as_dict(),
        "command": command,
        "data": {"images": cfg.images, "n_images": len(images), "val_images": cfg.val_images,
                 "phantoms": cfg.spec.task == "ct"},
        "metrics": {"steps": state.step, "interrupted": interrupted, "best": best_row, "parameters": count_parameters(net)},
        "device": str(device),
        "world_size": world,
        "train_time_s": round(time.perf_counter() - t0, 1),
    }
    sha = save_checkpoint(out, final_state, meta)
    meta["file_size"] = out.stat().st_size
    write_model_card(out.with_suffix(".md"), out.stem, meta, sha, body=_card_body(cfg, world))
    return out


#: Input planes of each network kind, in order (see ``networks/direction.py``).
_INPUT_PLANES = {"edn": ("u", "g", "data"), "baseline": ("u", "data")}


def warm_start(net: torch.nn.Module, cfg: TrainConfig, name_or_path: str) -> None:
    """Initialise ``net``'s backbone from the checkpoint ``name_or_path`` (same task, depth, width, shuffle).

    A baseline network ``u0 + DnCNN([u0, A^T f / L])`` and a direction network
    ``DnCNN([u, -grad E / L, A^T f / L])`` share the backbone except for the first layer's input
    planes: those are copied by meaning (``u``, ``data``) and a plane the source lacks (the
    gradient) starts at zero, so the direction network's first raw output is the baseline's
    correction. The descent-set layer is untouched: the guarantee holds from the first step.
    """
    from ..io.checkpoints import load_checkpoint
    from ..io.weights import resolve_weights

    path = resolve_weights(name_or_path, "--init-from")
    tensors, meta = load_checkpoint(path, expect_task=(f"edn-{cfg.spec.task}", f"baseline-{cfg.spec.task}"))
    src_kind = meta["task"].split("-", 1)[0]
    arch = meta["arch"]  # a dict (read_metadata checks)
    src_bb = arch.get("backbone", arch)
    if not isinstance(src_bb, dict):
        raise CheckpointError(f"checkpoint {path.name}: corrupt architecture metadata (backbone must be an object)")
    src_shape = (src_bb.get("depth"), src_bb.get("width"), src_bb.get("shuffle", 1), bool(src_bb.get("residual", False)))
    if src_shape != (cfg.depth, cfg.width, cfg.shuffle, cfg.residual):
        raise UsageError(
            f"--init-from {path.name}: backbone depth {src_shape[0]}, width {src_shape[1]}, shuffle {src_shape[2]}, "
            f"residual {src_shape[3]} does not match --depth {cfg.depth} --width {cfg.width} --shuffle {cfg.shuffle}"
            f" {'--residual' if cfg.residual else '--plain'}"
        )
    op = meta.get("operator") or {}
    for key in ("scale", "downsampler") if cfg.spec.task == "sr" else ():
        if key in op and op[key] != getattr(cfg.spec, key):  # allowed (a warm start), but never silent
            import sys

            print(f"edn: warning: --init-from {path.name} was trained with --{key} {op[key]}; this run trains "
                  f"--{key} {getattr(cfg.spec, key)} (its weights are only a starting point)", file=sys.stderr)
    own = net.state_dict()
    first = "backbone.body.0.weight"
    for key, value in tensors.items():
        if key not in own:
            continue
        if key == first and value.shape != own[key].shape:
            w = torch.zeros_like(own[key])
            src_planes, dst_planes = _INPUT_PLANES[src_kind], _INPUT_PLANES[cfg.kind]
            n = cfg.shuffle**2  # pixel_unshuffle puts plane c in input channels c*n .. c*n + n - 1
            for i, plane in enumerate(src_planes):
                if plane in dst_planes:
                    j = dst_planes.index(plane)
                    w[:, j * n : (j + 1) * n] = value[:, i * n : (i + 1) * n]
            own[key] = w
        elif value.shape == own[key].shape:
            own[key] = value.clone()
    net.load_state_dict(own)


def _resume_step(meta: dict, steps: int) -> int:
    """The step whose weights a checkpoint holds: its best validated step (what training writes),
    or its step count where it has no finite best row."""
    best = meta.get("metrics", {}).get("best")
    step = best.get("step") if isinstance(best, dict) else None
    psnr = best.get("val_psnr") if isinstance(best, dict) else None
    if (isinstance(step, int) and not isinstance(step, bool) and 0 <= step <= steps
            and isinstance(psnr, (int, float)) and math.isfinite(psnr)):
        return step
    return steps


def _check_resume_fits(resume: Path, meta: dict, cfg: TrainConfig, arch: dict) -> None:
    """Refuse (:class:`CheckpointError`, exit 4 like every other ``--resume`` or ``--weights`` mismatch) a
    checkpoint of another architecture or forward model (scale, downsampler): its weights would load,
    but it would go on training another network."""
    def flat(a: dict) -> dict:
        return {**{k: v for k, v in a.items() if k != "backbone"}, **(a.get("backbone") or {})}

    theirs, ours = flat(meta.get("arch") or {}), flat(arch)
    # keys the checkpoint lacks predate their option; a shape they change is caught on loading
    diff = [f"{k} {theirs[k]!r} (this run: {ours.get(k)!r})" for k in sorted(theirs) if theirs[k] != ours.get(k)]
    if diff:
        raise CheckpointError(f"--resume {resume}: its network differs from this run's: {', '.join(diff)}")
    op = meta.get("operator") or {}
    for key in ("scale", "downsampler") if cfg.spec.task == "sr" else ():
        if key in op and op[key] != getattr(cfg.spec, key):
            raise CheckpointError(f"--resume {resume}: it was trained with --{key} {op[key]}, this run asks for "
                             f"--{key} {getattr(cfg.spec, key)}")


def _raise_on_sigterm() -> None:
    """Let SIGTERM end training like Ctrl-C (so background jobs can be stopped cleanly)."""
    import signal
    import threading

    if threading.current_thread() is threading.main_thread():

        def handler(signum, frame):
            raise KeyboardInterrupt

        signal.signal(signal.SIGTERM, handler)
        signal.signal(signal.SIGINT, handler)


def _card_body(cfg: TrainConfig, world: int) -> str:
    s = cfg.spec
    lines = [
        "## Notes",
        "",
        f"- Network: {'direction network with the ' + ('eq. 22 cone-and-ball' if cfg.layer == 'cone_ball' else 'eq. 21 half-space') + ' layer' if cfg.kind == 'edn' else 'baseline feed-forward network (no guarantee)'}; "
        f"DnCNN backbone depth {cfg.depth}, width {cfg.width}, batch norm {cfg.batchnorm}"
        + (f", {(cfg.depth - 2) // 2} residual blocks" if cfg.residual else "")
        + (f", space-to-depth by {cfg.shuffle} (convolutions on {cfg.shuffle}x{cfg.shuffle} blocks)" if cfg.shuffle > 1 else "")
        + ".",
        f"- Forward model: {json.dumps(s.as_dict())}.",
        f"- Training noise std drawn uniformly in {list(s.noise_sigma)} per sample; patches {cfg.patch}², batch {cfg.batch}, "
        f"{cfg.steps} steps, Adam lr {cfg.lr} with cosine decay, {world} process(es).",
    ]
    if s.task == "ct" and s.angle_choices:
        lines.append(
            f"- Geometry: parallel beam, one angle count per mini-batch drawn from {list(s.angle_choices)} "
            f"(over 180°); validation at {s.angles} angles."
        )
    if cfg.init_from:
        lines.append(f"- Warm start: backbone initialised from `{cfg.init_from}` (input planes matched by meaning).")
    if cfg.kind == "edn":
        lines.append(
            f"- Lagged scheme: gradient-descent iterates for the first {cfg.lag_every} mini-batches, then iterates of "
            f"Algorithm 1 with a copy of the network refreshed every {cfg.lag_every} mini-batches, 0–{cfg.max_lag_steps} steps."
        )
        lines.append(f"- Default minimum iterations before the δ test: {cfg.min_iter}.")
    if cfg.val_images is None:  # _validation_set: phantoms only
        where = f"{cfg.val_count} random ellipse phantoms of {cfg.val_size}² (no --val-images)"
    else:
        where = f"up to {cfg.val_count} centre crops of {cfg.val_size}²" + (" plus as many ellipse phantoms" if s.task == "ct" else "")
    lines.append(
        f"- Validation: mean PSNR (dB) after the default iterations at noise std {cfg.val_noise:g}, on {where}; "
        "the best step is kept"
        + (" (step 0, the warm start, validated before training, included)." if cfg.init_from else ".")
    )
    return "\n".join(lines)
