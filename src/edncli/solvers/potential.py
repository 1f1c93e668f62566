"""Reconstruction with learned denoisers (paper 000): potential descent, projected RED-SD and PnP-PGD.

Methods registered here (all batched ``(B, H, W)``, per-sample stopping):

- ``potential`` — Algorithm 1 of paper 000: gradient descent on ``F(x) = f(x) + λ g_θ(x)``,
  ``f = 1/2 ||A x - y||^2``, with ``∇F = ∇f + λ (x - D_θ(x))`` (eq. 7), step ``µ_k = 1/L̂``
  and backtracking: ``L̂`` starts at ``L0 = 1 + λ`` and is multiplied by ``β = √2`` until
  ``F(x+) <= F(x) - µ/2 ||∇F(x)||^2`` (descent lemma, eq. 20); ``L̂`` is kept between
  iterations (so ``1/µ_k <= max(L0, βL)``, Theorem 1). With ``box=True`` the constrained variant
  (eqs. 22-24): ``x+ = P_[0,1](x - µ ∇F(x))`` and the test uses the gradient mapping
  ``G_µ(x) = (x - x+)/µ``: ``F(x+) <= F(x) - µ/2 ||G_µ(x)||^2``. ``F`` never rises, and the
  trace's ``energy`` is ``F`` (summed over the batch).
- ``red`` — projected RED-SD (eq. 29): ``x+ = P_[0,1](x - µ (∇f(x) + λ (x - D(x))))``.
- ``pnp`` — projected PnP-PGD (eq. 28): ``x+ = P_[0,1](D(x - µ ∇f(x)))``.
  RED and PnP minimise no known energy; their trace's ``energy`` is the data term
  ``1/2 ||A x - y||^2``, recorded honestly (its monotonicity is not promised).

Network evaluation (``options.inference``, ``--tile``/``--precision``): ``red`` and ``pnp`` with a
plain DnCNN denoiser evaluate it tiled and/or under autocast (output float32). ``potential`` refuses
both: tiling changes ``g_θ`` and so the energy ``F`` itself, and the backtracking test on ``F``
(which must never rise) is kept in float32; a potential denoiser used by ``red``/``pnp`` is refused
likewise (its ``D = x - ∇g`` is an autograd gradient of the whole-image potential).

Every method stops per sample on the discrepancy principle: after at least ``min_iter`` steps at
the first iterate with ``||A x - y|| <= δ``, or at ``max_iter`` (DESIGN §4 "When to stop").
Defaults come from :data:`PRESETS` by ``problem.task`` ("deblur", "sr"): validation-tuned for the
shipped weights; the paper's Table 2 values are ``--preset paper-deblur`` / ``paper-sr``.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass, replace
from typing import Any, Dict, List, Optional, Tuple

import torch

from ..energies import DataFidelity
from ..errors import UsageError
from ..metrics import quality_each
from .methods import Callback, MethodOptions, Problem, register_method
from .trace import IterationRecord, SampleVerdict, SolveResult, residual_resolution, rose_beyond_roundoff


@dataclass(frozen=True)
class Preset:
    """Settings of one method for one task (paper 000 Table 2, images in [0, 1]).

    ``lam``: regularisation weight λ (``None`` for PnP); ``mu``: fixed step (RED/PnP; ``None``
    for potential descent, which backtracks); ``L0 = L0_offset + λ``, ``beta``: backtracking;
    ``max_iter``: the paper's iteration count; ``min_iter``: steps taken before the δ stop may act.
    """

    lam: Optional[float]
    mu: Optional[float]
    max_iter: int
    min_iter: int
    beta: float = math.sqrt(2.0)
    L0_offset: float = 1.0

    def as_dict(self) -> Dict[str, Any]:
        return asdict(self)


#: The methods whose settings (caps included) come from a preset of :data:`PRESETS`.
POTENTIAL_METHODS = ("potential", "red", "pnp")

#: Paper 000 Table 2 settings (images in [0, 1]); ``min_iter`` is ours. Reachable as
#: ``--preset paper-deblur`` / ``--preset paper-sr`` (``PRESETS["paper-deblur"]``, ...).
PAPER_PRESETS: Dict[str, Dict[str, Preset]] = {
    "deblur": {
        "potential": Preset(lam=0.02, mu=None, max_iter=400, min_iter=150),
        "red": Preset(lam=0.05, mu=1.99, max_iter=200, min_iter=100),
        "pnp": Preset(lam=None, mu=1.99, max_iter=125, min_iter=25),
    },
    "sr": {
        "potential": Preset(lam=0.04, mu=None, max_iter=400, min_iter=100),
        "red": Preset(lam=0.05, mu=2.99, max_iter=125, min_iter=60),
        "pnp": Preset(lam=None, mu=1.99, max_iter=75, min_iter=40),
    },
}

#: ``PRESETS[task][method]``; tasks "deblur" (Gaussian blur σ = 1.6 25x25, noise σ = 0.01, init: the
#: blurred image) and "sr" (x4 average pooling, noise σ = 0.01, init: bilinear upsampling, while
#: the CLI starts every SR method from bicubic, which measured 0.15-0.25 dB higher), plus the
#: paper's values as "paper-deblur" / "paper-sr". The task presets were TUNED for the shipped CPU
#: weights (``gradncnn``, ``dncnn``) on a validation set that is neither Set12 nor BSD68: central
#: 128x128 luminance crops of the 5 Set5 images (``benchmarks/sweep_denoisers.py``, results in
#: ``benchmarks/results_denoisers.md``). Every method got a grid of the same kind, each picked by
#: best mean validation PSNR, δ = σ sqrt(m) stop replayed for every ``min_iter`` / ``max_iter``
#: (max_iter at most the paper's counts): potential λ ∈ {0.02..0.2} x L0_offset ∈ {1, 0.25} (x box:
#: no gain, so unconstrained); RED λ ∈ {0.02..0.8} x µ ∈ {1, 1.99} (deblur) / {2.99, 8} (SR);
#: PnP µ ∈ {0.5, 1, 1.99} (deblur) / {1.99, 8, 16} (SR). ``L0_offset = 0.25`` keeps Algorithm 1
#: (backtracking still guarantees F never rises) but lets it start from larger steps.
PRESETS: Dict[str, Dict[str, Preset]] = {
    "deblur": {
        "potential": Preset(lam=0.07, mu=None, max_iter=125, min_iter=80, L0_offset=0.25),
        "red": Preset(lam=0.2, mu=1.0, max_iter=125, min_iter=100),
        "pnp": Preset(lam=None, mu=1.99, max_iter=75, min_iter=25),
    },
    "sr": {
        "potential": Preset(lam=0.02, mu=None, max_iter=125, min_iter=100, L0_offset=0.25),
        "red": Preset(lam=0.1, mu=2.99, max_iter=75, min_iter=60),
        "pnp": Preset(lam=None, mu=8.0, max_iter=75, min_iter=25),
    },
    "paper-deblur": PAPER_PRESETS["deblur"],
    "paper-sr": PAPER_PRESETS["sr"],
}
#: Shipped checkpoints used when ``options.weights`` is not given.
DEFAULT_WEIGHTS = {"potential": "gradncnn", "red": "dncnn", "pnp": "dncnn"}
#: Backtracking gives up (and the sample stops, "line_search_stalled") after this many increases of L̂.
MAX_BACKTRACKS = 60

_MODELS: Dict[Tuple[str, float, str], Tuple[torch.nn.Module, Dict[str, Any]]] = {}


def _rows(x: torch.Tensor) -> torch.Tensor:
    return x.flatten(1)


def _bcast(t: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    return t.view(-1, *([1] * (like.dim() - 1)))


def get_denoiser(name_or_path: str, device: torch.device | str = "cpu") -> Tuple[torch.nn.Module, Dict[str, Any]]:
    """:func:`~edncli.networks.potentials.load_denoiser`, cached by path, modification time and device."""
    from ..io.weights import resolve_weights
    from ..networks.potentials import load_denoiser

    path = resolve_weights(name_or_path)
    key = (str(path.resolve()), path.stat().st_mtime, str(device))
    if key not in _MODELS:
        _MODELS[key] = load_denoiser(str(path), device)
    return _MODELS[key]


def resolve_settings(method: str, problem: Problem, options: MethodOptions) -> Tuple[Preset, str]:
    """The preset for ``(problem.task, method)`` with the overrides of ``options``; ``(settings, preset name)``.

    Overrides: ``options.extra`` keys ``"lam"``, ``"mu"``, ``"beta"``, ``"max_iter"``,
    ``"preset"`` (a task name, to use another task's settings); ``options.min_iter`` when not
    ``None`` (raising the preset's cap to it where needed); ``options.max_iter`` when not ``None``
    (any value given, the default's included).
    A task without presets (CT) falls back to the deblur preset, and says so in the preset name
    (``"deblur (no ct preset)"``).
    """
    extra = options.extra or {}
    name = str(extra.get("preset") or problem.task)
    fallback = name not in PRESETS
    if fallback:
        if "preset" in extra:
            raise UsageError(f"--preset must be one of {', '.join(PRESETS)}, got {name!r}")
        name = "deblur"
    p = PRESETS[name][method]
    changes: Dict[str, Any] = {}
    for key in ("lam", "mu", "beta"):
        if extra.get(key) is not None:
            changes[key] = float(extra[key])  # type: ignore[arg-type]
    if extra.get("max_iter") is not None:
        changes["max_iter"] = int(extra["max_iter"])  # type: ignore[arg-type]
    elif options.max_iter is not None:
        changes["max_iter"] = int(options.max_iter)
    if options.min_iter is not None:
        changes["min_iter"] = int(options.min_iter)
        if "max_iter" not in changes:  # a given minimum raises the preset's cap (at least min_iter steps)
            changes["max_iter"] = max(p.max_iter, changes["min_iter"])
    elif "max_iter" in changes:  # a given cap wins over the preset's minimum (as for the learned methods)
        changes["min_iter"] = min(p.min_iter, changes["max_iter"])
    p = replace(p, **changes)
    if method != "pnp" and not (p.lam is not None and p.lam > 0 and math.isfinite(p.lam)):
        raise UsageError(f"--lam (λ) must be > 0 for method {method}, got {p.lam}")
    if method != "potential" and not (p.mu is not None and p.mu > 0 and math.isfinite(p.mu)):
        raise UsageError(f"--mu (step µ) must be > 0 for method {method}, got {p.mu}")
    if not p.beta > 1:
        raise UsageError(f"--beta (backtracking factor) must be > 1, got {p.beta}")
    if p.max_iter < 0 or p.min_iter < 0:
        raise UsageError(f"--max-iter and --min-iter must be >= 0, got {p.max_iter} and {p.min_iter}")
    return p, (f"deblur (no {problem.task} preset)" if fallback else name)


class _Tracker:
    """Per-sample bookkeeping shared by the three methods: stopping, monotonicity, the trace."""

    def __init__(self, problem: Problem, settings: Preset, callback: Callback, record_ssim: bool, exact: bool = False):
        self.problem = problem
        self.delta = problem.deltas()  # per sample, or None
        self.min_iter, self.max_iter = settings.min_iter, settings.max_iter
        self.callback = callback
        self.record_ssim = record_ssim
        b = problem.f.shape[0]
        self.batch = b
        self.active = torch.ones(b, dtype=torch.bool)
        self.iters = torch.zeros(b, dtype=torch.long)
        self.max_inc = torch.full((b,), -math.inf, dtype=torch.float64)
        self.monotone = torch.ones(b, dtype=torch.bool)
        # float32 resolution of the data term's residual; none where ``Au - f`` is recomputed every step
        # (red, pnp: no guarantee, so ``energy_monotone`` reports any rise of the data term)
        self.eta = residual_resolution(problem.f)
        if exact:
            self.eta = [0.0 for _ in self.eta]
        self.reasons: List[str] = [""] * b
        self.trace: List[IterationRecord] = []
        self.start = time.perf_counter()

    def record(
        self, k: int, u: torch.Tensor, energy: torch.Tensor, disc: torch.Tensor, gnorm: torch.Tensor,
        steps: List[Optional[float]], backtracks: List[int],
    ) -> None:
        """Append the record of iteration ``k``: ``energy``, ``disc``, ``gnorm`` are ``(B,)``; ``steps[i]`` None if not moved."""
        ref = self.problem.reference
        quality = (None, None) if ref is None else quality_each(u, ref, self.record_ssim)
        if k == 0:  # a run that starts at a NaN/Inf energy certifies nothing, moved or not
            self.monotone &= torch.isfinite(energy.double().cpu())
        rec = IterationRecord.of_samples(
            k,
            time.perf_counter() - self.start,
            energy.double().tolist(),
            disc.double().tolist(),
            gnorm.double().pow(2).tolist(),
            steps,
            backtracks,
            self.active.tolist(),
            *quality,  # type: ignore[arg-type]
        )
        self.trace.append(rec)
        if self.callback is not None:
            self.callback(rec)

    def moved(self, moved: torch.Tensor, e_old: torch.Tensor, e_new: torch.Tensor) -> None:
        inc = (e_new - e_old).double().cpu()
        moved = moved.cpu()
        self.max_inc = torch.where(moved, torch.maximum(self.max_inc, inc), self.max_inc)
        e_old = e_old.double().cpu()
        rises = [rose_beyond_roundoff(float(a), float(b), h) for a, b, h in zip(inc, e_old, self.eta)]
        rises = torch.tensor(rises, dtype=torch.bool)
        self.monotone &= ~(moved & rises)  # a NaN energy certifies nothing
        self.monotone &= torch.isfinite(e_new.double().cpu()) | ~moved

    def stop(self, i: int, k: int, reason: str) -> None:
        self.active[i] = False
        self.iters[i] = k
        self.reasons[i] = reason

    def update(self, k: int, disc: torch.Tensor, gnorm: Optional[torch.Tensor] = None) -> None:
        # one transfer per tensor, not one per sample (each is a device sync on a GPU)
        disc_h = disc.double().tolist()
        gnorm_h = None if gnorm is None else gnorm.double().tolist()
        for i in range(self.batch):
            if not self.active[i]:
                continue
            if k >= self.min_iter and self.delta is not None and disc_h[i] <= self.delta[i]:
                self.stop(i, k, "delta")
            elif gnorm_h is not None and gnorm_h[i] == 0.0:
                self.stop(i, k, "stationary")
            elif k >= self.max_iter:
                self.stop(i, k, "max_iter")

    def result(self, u: torch.Tensor, energy: torch.Tensor, disc: torch.Tensor, method: str, extra: Dict[str, Any]) -> SolveResult:
        samples = []
        for i in range(self.batch):
            di = float(disc[i])
            inc = float(self.max_inc[i])
            samples.append(
                SampleVerdict(
                    iterations=int(self.iters[i]),
                    final_energy=float(energy[i]),
                    final_discrepancy=di,
                    delta=None if self.delta is None else self.delta[i],
                    delta_reached=None if self.delta is None else di <= self.delta[i],
                    max_energy_increase=inc if math.isfinite(inc) else 0.0,
                    energy_monotone=bool(self.monotone[i]),
                    stop_reason=self.reasons[i],
                )
            )
        return SolveResult(u=u, trace=self.trace, samples=samples, method=method, elapsed_s=time.perf_counter() - self.start, extra=extra)


def potential_descent(
    problem: Problem,
    model: torch.nn.Module,
    settings: Preset,
    *,
    box: bool = False,
    callback: Callback = None,
    record_ssim: bool = False,
) -> SolveResult:
    """Algorithm 1 of paper 000 (backtracking gradient descent on ``F = f + λ g_θ``); box variant eq. 22-24.

    Parameters
    ----------
    problem: operator, data ``y`` ``(B, *out_shape)``, initial guess ``x0`` ``(B, H, W)``, δ, reference.
    model: a potential denoiser (``potential_and_grad``), in eval mode.
    settings: λ, ``β``, ``L0 = L0_offset + λ``, iteration limits.
    box: project onto ``[0, 1]`` after each step and test with the gradient mapping (eq. 24).

    Returns
    -------
    SolveResult whose trace ``energy`` is ``F`` summed over the batch; per-sample ``F`` never rises.
    """
    lam = float(settings.lam)  # type: ignore[arg-type]
    data = DataFidelity(problem.op, problem.f)
    u = problem.u0.detach().float().clone()
    if box:
        u = u.clamp(0, 1)
    tr = _Tracker(problem, settings, callback, record_ssim)
    dev = u.device

    def energy_with_graph(x: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(F(x) (B,) float64, g_θ(x) with graph, x as the leaf)``."""
        with torch.enable_grad():
            xl = x.detach().requires_grad_(True)
            g = model.potential(xl)
        return data.value(x) + lam * g.detach(), g, xl

    def gradient(x: torch.Tensor, g: torch.Tensor, xl: torch.Tensor) -> torch.Tensor:
        (dg,) = torch.autograd.grad(g.sum(), xl)
        return data.grad(x) + lam * dg

    F, g_graph, xl = energy_with_graph(u)
    G = gradient(u, g_graph, xl)
    disc = data.discrepancy(u)
    gnorm = _rows(G).norm(dim=1)
    L = torch.full((tr.batch,), settings.L0_offset + lam, dtype=torch.float64)
    tr.record(0, u, F, disc, gnorm, [None] * tr.batch, [0] * tr.batch)
    tr.update(0, disc, gnorm)
    k = 0
    while bool(tr.active.any()):
        k += 1
        act = tr.active.clone()
        trials = torch.zeros(tr.batch, dtype=torch.long)
        while True:
            mu = torch.where(act, 1.0 / L, torch.zeros_like(L)).to(dev)
            x_new = u - _bcast(mu.float(), u) * G
            if box:
                x_new = x_new.clamp(0, 1)
            # Gradient mapping G_µ = (x - x+)/µ (eq. 23); equals ∇F without the box.
            gmap_sq = _rows(G).pow(2).sum(1, dtype=torch.float64) if not box else (
                _rows(u - x_new).pow(2).sum(1, dtype=torch.float64) / mu.double().clamp_min(1e-300) ** 2
            )
            F_new, g_graph, xl = energy_with_graph(x_new)
            ok = (F_new <= F - 0.5 * mu.double() * gmap_sq).cpu() | ~act
            fail = ~ok
            if not bool(fail.any()):
                break
            give_up = fail & (trials >= MAX_BACKTRACKS)
            for i in torch.nonzero(give_up).flatten().tolist():
                act[i] = False  # this sample stays where it is
                tr.stop(i, k - 1, "line_search_stalled")
            L = torch.where(fail & ~give_up, L * settings.beta, L)
            trials = trials + (fail & ~give_up).long()
        if not bool(act.any()):  # all remaining samples stalled at the previous iterate
            k -= 1
            break
        mask = _bcast(act.to(dev), u)
        u_prev, F_prev = u, F
        u = torch.where(mask, x_new, u)
        F = torch.where(act.to(F.device), F_new, F)
        # Samples not moving had µ = 0, so x_new == u for them: the graph is at u for all.
        G = gradient(u, g_graph, xl)
        tr.moved(act, F_prev, F)
        disc = data.discrepancy(u)
        gnorm = _rows(G).norm(dim=1)
        steps = [1.0 / lk if a else None for lk, a in zip(L.tolist(), act.tolist())]
        tr.record(k, u, F, disc, gnorm, steps, trials.tolist())
        tr.update(k, disc, gnorm)
    extra = {"final_L": [float(x) for x in L], "box": bool(box), "energy": "F = 1/2||Au-f||^2 + lam g(u)"}
    return tr.result(u, F, disc, "potential", extra)


def projected_red_pnp(
    problem: Problem,
    model: torch.nn.Module,
    settings: Preset,
    *,
    kind: str,
    callback: Callback = None,
    record_ssim: bool = False,
) -> SolveResult:
    """Projected RED-SD (eq. 29, ``kind="red"``) or PnP-PGD (eq. 28, ``kind="pnp"``), fixed step µ.

    Shapes as in :func:`potential_descent`. The trace's ``energy`` is the data term ``1/2||Ax - y||^2``
    (neither iteration minimises a known energy; monotonicity is recorded, not promised).
    """
    data = DataFidelity(problem.op, problem.f)
    u = problem.u0.detach().float().clone()
    # Table 2's µ assumes ||A|| <= 1 (e.g. a circular blur); a reflect-boundary blur has ||A|| slightly
    # above 1, and µ = 1.99 would then exceed 2/||A||^2 and diverge: scale µ by 1/max(1, ||A||^2).
    lip = problem.op.sqnorm(device=problem.f.device)
    mu = float(settings.mu) / max(1.0, lip)  # type: ignore[arg-type]
    lam = float(settings.lam) if settings.lam is not None else 0.0
    tr = _Tracker(problem, settings, callback, record_ssim, exact=True)
    dev = u.device

    def state(x: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        return data.value(x), data.grad(x), data.discrepancy(x)

    E, gf, disc = state(u)
    gnorm = _rows(gf).norm(dim=1)
    tr.record(0, u, E, disc, gnorm, [None] * tr.batch, [0] * tr.batch)
    tr.update(0, disc)
    k = 0
    with torch.no_grad():
        while bool(tr.active.any()):
            k += 1
            act = tr.active.clone()
            if kind == "pnp":
                x_new = model.denoise(u - mu * gf)
            else:
                x_new = u - mu * (gf + lam * (u - model.denoise(u)))
            x_new = x_new.clamp(0, 1)
            u = torch.where(_bcast(act.to(dev), u), x_new, u)
            E_old = E
            E, gf, disc = state(u)
            tr.moved(act, E_old, E)
            gnorm = _rows(gf).norm(dim=1)
            tr.record(k, u, E, disc, gnorm, [mu if a else None for a in act.tolist()], [0] * tr.batch)
            tr.update(k, disc)
    extra = {
        "energy": "data term 1/2||Au-f||^2 (RED/PnP minimise no known energy; monotonicity not promised)",
        "mu_effective": mu,
    }
    return tr.result(u, E, disc, kind, extra)


class _EvaluatedDenoiser:
    """A plain DnCNN denoiser ``D(x) = x - N(x)`` with ``N`` evaluated per an ``InferenceConfig``."""

    has_potential = False

    def __init__(self, model: torch.nn.Module, config: Any):
        self.model, self.config = model, config

    def denoise(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, H, W) -> (B, H, W)`` float32; tiles and precision per the config."""
        from ..networks.inference import run_network

        net = self.model.net
        return x - run_network(net, x.unsqueeze(1), self.config, net.cfg.receptive_field)[:, 0]


def _with_inference(method: str, model: torch.nn.Module, meta: Dict[str, Any], config: Any, device) -> Any:
    """``model`` itself, or a wrapper evaluating it per ``config``; refuses what would change ``F``."""
    if config is None or config.is_default:
        return model
    asked = " ".join(
        flag for flag, on in (
            (f"--tile {config.tile}", config.tile is not None),
            (f"--precision {config.precision}", config.precision != "fp32"),
            ("--channels-last", config.channels_last),
            (f"--ensemble {config.ensemble}", config.ensemble > 1),
        ) if on
    )
    if method == "potential":
        raise UsageError(
            f"{asked}: not available for method potential (tiling, low precision or an ensemble would change the energy "
            "F = f + λ g_θ whose descent is checked); leave them out, or use --method red/pnp/edn"
        )
    if getattr(model, "has_potential", False) or not hasattr(model, "net"):
        raise UsageError(
            f"{asked}: denoiser {meta.get('name')} is a gradient of a potential and is evaluated whole in float32; "
            "leave them out or use --weights dncnn"
        )
    config.check_for(model.net.cfg.receptive_field, f"denoiser {meta.get('name')}").check_device(device)
    return _EvaluatedDenoiser(model, config)


def _checkpoint_info(meta: Dict[str, Any]) -> Dict[str, Any]:
    return {"name": meta.get("name"), "sha256": meta.get("sha256"), "arch": meta.get("arch"), "file": meta.get("file")}


def _run(method: str, problem: Problem, options: MethodOptions, callback: Callback) -> SolveResult:
    settings, preset_name = resolve_settings(method, problem, options)
    weights = options.weights or DEFAULT_WEIGHTS[method]
    model, meta = get_denoiser(weights, problem.f.device)
    if method == "potential" and not getattr(model, "has_potential", False):
        raise UsageError(
            f"--weights {weights}: a {meta['arch'].get('name')} denoiser has no potential; method potential "
            "needs a gradncnn, dnicnn or dndicnn checkpoint (or use --method red/pnp)"
        )
    model = _with_inference(method, model, meta, options.inference, problem.f.device)
    box = bool((options.extra or {}).get("box", False))
    if method == "potential":
        result = potential_descent(problem, model, settings, box=box, callback=callback, record_ssim=options.record_ssim)
    else:
        result = projected_red_pnp(problem, model, settings, kind=method, callback=callback, record_ssim=options.record_ssim)
    result.extra.update(
        {
            "checkpoint": _checkpoint_info(meta),
            "lam": settings.lam,
            "mu": settings.mu if method != "potential" else "backtracking",
            "preset": preset_name,
            "settings": settings.as_dict(),
        }
    )
    if method != "potential":  # the denoiser's settings; channels_last as used (NCHW unless asked)
        from ..networks.inference import InferenceConfig

        config = options.inference or InferenceConfig()
        result.extra["inference"] = replace(config, channels_last=bool(config.channels_last)).describe()
    if method == "potential":
        result.extra.update({"L0": settings.L0_offset + float(settings.lam), "beta": settings.beta})  # type: ignore[arg-type]
    return result


@register_method("potential")
def solve_potential(problem: Problem, options: MethodOptions, callback: Callback = None) -> SolveResult:
    """Algorithm 1 of paper 000 with a gradient-driven denoiser (default weights ``gradncnn``)."""
    return _run("potential", problem, options, callback)


@register_method("red")
def solve_red(problem: Problem, options: MethodOptions, callback: Callback = None) -> SolveResult:
    """Projected RED-SD, eq. 29 of paper 000 (default weights ``dncnn``)."""
    return _run("red", problem, options, callback)


@register_method("pnp")
def solve_pnp(problem: Problem, options: MethodOptions, callback: Callback = None) -> SolveResult:
    """Projected PnP-PGD, eq. 28 of paper 000 (default weights ``dncnn``)."""
    return _run("pnp", problem, options, callback)


__all__ = [
    "Preset",
    "PRESETS",
    "PAPER_PRESETS",
    "DEFAULT_WEIGHTS",
    "resolve_settings",
    "get_denoiser",
    "potential_descent",
    "projected_red_pnp",
    "solve_potential",
    "solve_red",
    "solve_pnp",
]
