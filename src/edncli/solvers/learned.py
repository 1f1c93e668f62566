"""Learned methods: ``edn`` (Algorithm 1 with a direction network) and ``baseline`` (one pass).

``edn`` keeps every promise of Algorithm 1 — the network only chooses *which* descent
direction to take — and follows the learned stopping semantics (DESIGN §4): at least
``min_iter`` steps (default from the checkpoint), then the first iterate with
``||A u - f|| <= δ``, or ``max_iter``. ``baseline`` is the paper's feed-forward network:
no energy, no guarantee; its report states whether the result happens to meet δ.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Optional, Tuple

import torch

from ..energies import DataFidelity, HuberTV
from ..errors import CheckpointError, UsageError
from ..io.checkpoints import load_checkpoint, tensors_fit_architecture
from ..io.weights import resolve_weights
from ..metrics import quality_each
from ..networks.backbones import BackboneConfig
from ..networks.direction import build_network, network_inputs
from ..networks.inference import InferenceConfig
from ..tasks import TaskSpec
from .descent import ConjugateDirections, LineSearch, StopRule, descend
from .methods import Callback, MethodOptions, Problem, check_handover, register_method
from .trace import IterationRecord, SampleVerdict, SolveResult

DEFAULT_WEIGHTS = {
    ("edn", "sr"): "edn-sr-x4",
    ("edn", "ct"): "edn-ct",
    ("edn", "deblur"): "edn-deblur",
    ("baseline", "sr"): "baseline-sr-x4",
    ("baseline", "ct"): "baseline-ct",
    ("baseline", "deblur"): "baseline-deblur",
}


#: What ``edn`` does after its network steps (``MethodOptions.handover``), as the report says it.
AFTER_LEARNED = {
    "cg": "conjugate gradients (CGLS: Fletcher-Reeves directions, exact line minimisation, Armijo-checked)",
    "gd": "landweber (-grad E / ||A||^2, Armijo)",
}


class NetworkThen:
    """Direction provider of ``edn``: the network for steps ``k < learned``, then CG or Landweber.

    ``net(u, -grad/L, data)`` gives the network's (projected) direction; ``then`` is ``"cg"``
    (:class:`~edncli.solvers.descent.ConjugateDirections` restarted at step ``learned``, exact
    first trial steps) or ``"gd"`` (``-grad/L`` with unit steps, i.e. Landweber's ``1/||A||^2``).
    """

    wants_grad_norm_sq = True

    def __init__(self, net: torch.nn.Module, L: float, data: torch.Tensor, learned: int, then: str = "cg"):
        check_handover(then)
        self.net, self.L, self.data, self.learned = net, L, data, learned
        self._cg = ConjugateDirections() if then == "cg" else None
        self._in_cg = False

    @torch.no_grad()
    def __call__(self, u: torch.Tensor, grad: torch.Tensor, k: int, grad_norm_sq: Optional[torch.Tensor] = None) -> torch.Tensor:
        self._in_cg = self._cg is not None and k >= self.learned
        if k < self.learned:
            return self.net(u, -grad / self.L, self.data)
        if self._cg is not None:
            return self._cg(u, grad, k - self.learned, grad_norm_sq)
        return -grad / self.L

    def used(self, d: torch.Tensor) -> None:
        if self._in_cg:
            self._cg.used(d)  # type: ignore[union-attr]

    def initial_step(self, k: int) -> Optional[str]:
        return "exact" if self._cg is not None and k >= self.learned else None


#: Methods that load a checkpoint (``--weights``); the others have none to choose.
CHECKPOINT_METHODS = ("edn", "baseline", "potential", "red", "pnp")


def check_weights_option(method: str, weights: Optional[str], option: str = "--weights") -> None:
    """A usage error when ``weights`` is given for a method that loads no checkpoint (it would be ignored)."""
    if weights is not None and method not in CHECKPOINT_METHODS:
        raise UsageError(
            f"{option} {weights}: method {method} uses no checkpoint; {option} is for {', '.join(CHECKPOINT_METHODS)}"
        )


#: Integer fields of a backbone (``BackboneConfig``) and their smallest sensible values.
_BACKBONE_INTS = {"in_channels": 1, "out_channels": 1, "depth": 2, "width": 1, "shuffle": 1}


def _arch_problem(arch: dict, kind: str) -> Optional[str]:
    """What is wrong with a direction/baseline ``arch`` dict of a checkpoint, or ``None``."""
    want = "direction" if kind == "edn" else "baseline"
    if arch.get("kind") != want:
        return f"arch kind {arch.get('kind')!r}, expected {want!r}"
    bb = arch.get("backbone") if want == "direction" else arch
    if not isinstance(bb, dict):
        return f"backbone must be an object, got {bb!r}"
    for key, low in _BACKBONE_INTS.items():
        value = bb.get(key, low)
        if not isinstance(value, int) or isinstance(value, bool) or value < low:
            return f"{key} must be an integer >= {low}, got {value!r}"
    for key in ("batchnorm", "residual"):
        if not isinstance(bb.get(key, False), bool):
            return f"{key} must be true or false, got {bb[key]!r}"
    if want == "direction":
        # only the values the stored layer uses, with the rules training applies (TrainConfig.check)
        layer = arch.get("layer", "cone_ball")
        if layer not in ("cone_ball", "halfspace"):
            return f"layer must be cone_ball or halfspace, got {layer!r}"
        for key in ("zeta1", "zeta2") if layer == "cone_ball" else ("zeta",):
            value = arch.get(key, 1.0)
            if not isinstance(value, (int, float)) or isinstance(value, bool) or not value > 0:
                return f"{key} must be a number > 0, got {value!r}"
        if layer == "cone_ball" and not arch.get("zeta1", 1.0) <= arch.get("zeta2", 1.0):
            return f"zeta1 must be <= zeta2, got {arch.get('zeta1')!r} and {arch.get('zeta2')!r}"
    return None


def _tensors_problem(arch: dict, state: dict) -> Optional[str]:
    """Where the file's tensors do not fit ``arch``, found before any weight is allocated, or ``None``.

    The header can ask for any depth or width; building that network first would exhaust memory
    before ``load_state_dict`` could object. The depth must be the number of convolution weights
    (4-D tensors) in the file; the network is then built on the ``meta`` device (no storage) and
    its parameter shapes compared with the file's.
    """
    bb = arch["backbone"] if arch.get("kind") == "direction" else arch
    convs = sum(1 for t in state.values() if t.dim() == 4)
    depth = bb.get("depth", BackboneConfig.depth)
    if depth != convs:
        return f"depth {depth}, but the file holds {convs} convolution weights"
    return tensors_fit_architecture(arch, state, build_network)


def checkpoint_spec(meta: dict) -> TaskSpec:
    """The forward model a checkpoint was trained for (``meta["operator"]``); malformed: :class:`CheckpointError`."""
    name = Path(str(meta.get("file", meta.get("name")))).name
    op = meta.get("operator")
    try:
        if not isinstance(op, dict):
            raise TypeError(f"'operator' must be an object, got {op!r}")
        spec = TaskSpec.from_dict(op)
        for key in ("scale", "kernel_size", "angles"):
            value = getattr(spec, key)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"{key} must be an integer >= 1, got {value!r}")
        if not isinstance(spec.downsampler, str):
            raise ValueError(f"downsampler must be a string, got {spec.downsampler!r}")
    except (TypeError, ValueError) as exc:  # UsageError is a ValueError: here the file is at fault
        raise CheckpointError(f"checkpoint {name}: corrupt operator metadata ({str(exc).splitlines()[0]})") from None
    return spec


def load_learned(kind: str, name_or_path: str, device, what: str = "--weights") -> Tuple[torch.nn.Module, dict]:
    """Load a direction (``kind="edn"``) or baseline network; wrong-kind or malformed checkpoints are errors.
    ``what`` names the argument that gave the checkpoint, in the error for a missing one."""
    path = resolve_weights(name_or_path, what)
    tasks = tuple(f"{kind}-{t}" for t in ("sr", "ct", "deblur"))
    state, meta = load_checkpoint(path, device="cpu")
    if meta["task"] not in tasks:
        article = "an" if kind == "edn" else "a"
        raise CheckpointError(
            f"checkpoint {path.name} is for task {meta['task']!r}; method {kind} needs {article} {kind} checkpoint "
            f"({', '.join(tasks)})"
        )
    meta["name"] = path.stem
    problem = _arch_problem(meta["arch"], kind)
    if problem is not None:
        raise CheckpointError(f"checkpoint {path.name}: corrupt architecture metadata ({problem})")
    checkpoint_spec(meta)
    try:
        problem = _tensors_problem(meta["arch"], state)
        if problem is not None:
            raise ValueError(problem)
        net = build_network(meta["arch"])
        net.load_state_dict(state)
    except (ValueError, KeyError, RuntimeError, TypeError) as exc:
        raise CheckpointError(f"checkpoint {path.name}: does not match its architecture ({str(exc).splitlines()[0]})") from None
    net.eval().to(device=device, dtype=torch.float32)  # the solvers' precision, whatever torch's default dtype
    return net, meta


def check_learned(kind: str, weights: Optional[str], spec: TaskSpec, what: str = "--weights") -> None:
    """Raise what ``solve_edn``/``solve_baseline`` would raise for this checkpoint on a problem of
    ``spec`` (missing, corrupt, another kind, task or scale), without a problem: ``edn eval``
    checks every method's checkpoint before the first image is solved."""
    name = weights or DEFAULT_WEIGHTS.get((kind, spec.task))
    if name is None:
        raise CheckpointError(f"method {kind} has no shipped network for task {spec.task!r}; pass --weights")
    _, meta = load_learned(kind, name, "cpu", what)
    checkpoint_spec(meta).check_compatible(spec, meta["name"])


def _problem_spec(problem: Problem) -> TaskSpec:
    desc = problem.op.describe()
    if problem.task == "sr":
        kind = "bicubic" if desc.get("name") == "bicubic" else "average"
        return TaskSpec("sr", scale=int(desc.get("scale", 4)), downsampler=kind)
    if problem.task == "deblur" and desc.get("name") == "blur":
        sigma = desc.get("kernel_sigma")
        return TaskSpec("deblur", kernel_sigma=(sigma, sigma) if sigma is not None else (0.0, 0.0),
                        boundary=desc.get("boundary", "reflect"), extra={"kernel": "file" if sigma is None else "gaussian"})
    return TaskSpec(problem.task)


def _check_spec(spec: TaskSpec, problem: Problem, name: str) -> None:
    """A checkpoint for another task or operator is an error; a problem outside its training
    range (deblurring: σ, boundary, a file kernel) a warning."""
    mine = _problem_spec(problem)
    spec.check_compatible(mine, name)
    why = spec.outside_training(mine, name)
    if why is not None:
        import warnings

        warnings.warn(why, stacklevel=3)


def _checkpoint_info(meta: dict) -> dict:
    return {"name": meta["name"], "sha256": meta["sha256"], "file": meta.get("file")}


def _apply_inference(net: torch.nn.Module, options: MethodOptions, device, meta: dict) -> InferenceConfig:
    """Give ``net`` the tiling/precision/memory format of ``options.inference`` (the default config
    when None; an automatic ``channels_last`` is decided for ``device``) after checking it fits
    the network and device; returns the config in use."""
    cfg = (options.inference or InferenceConfig()).resolved(device)
    backbone = net.cfg.backbone if hasattr(net.cfg, "backbone") else net.cfg
    cfg.check_for(backbone.receptive_field, f"network {meta['name']}", backbone.shuffle).check_device(device)
    if cfg.channels_last:
        net.to(memory_format=torch.channels_last)
    net.inference = cfg
    return cfg


@register_method("edn")
def solve_edn(problem: Problem, options: MethodOptions, callback: Callback = None) -> SolveResult:
    """Algorithm 1 of paper 001 with the direction network of the checkpoint ``options.weights``.

    ``options.inference`` tiles the network or lowers its precision; the descent-set layer, the
    energy and the line search still act on the whole image in float32, so every ``d`` is a
    descent direction and the energy falls whatever the tile size.
    """
    device = problem.f.device
    name = options.weights or DEFAULT_WEIGHTS.get(("edn", problem.task))
    if name is None:
        raise CheckpointError(f"method edn has no shipped network for task {problem.task!r}; pass --weights")
    net, meta = load_learned("edn", name, device)
    spec = checkpoint_spec(meta)
    _check_spec(spec, problem, meta["name"])
    inference = _apply_inference(net, options, device, meta)
    op = problem.op
    f = problem.f.float()  # the network's weights are float32 (data read with numpy is float64)
    # The network was trained on paths from its own initial guess (the checkpoint's `init`).
    u0 = spec.initial(op, f) if spec.init == "zero" else problem.u0
    L = op.sqnorm(device=device)
    data = network_inputs(op, f, L)
    energy = DataFidelity(op, f)
    if options.alpha is not None:  # the classical safeguard E + α R (paper 001 §4.3)
        energy = energy + options.alpha * HuberTV(options.huber_eps)

    min_iter = options.min_iter if options.min_iter is not None else meta.get("min_iter", 15)  # type-checked on load
    if options.min_iter is None and options.max_iter is not None:
        min_iter = min(min_iter, int(options.max_iter))  # a given cap wins over the checkpoint's default
    # Networks are trained on short paths (the lagged scheme's 0-10 steps); far beyond them their
    # directions are out of distribution. After `learned_steps` network steps, a sample that has
    # not met δ continues with conjugate gradients (CGLS, exact steps) or Landweber steps
    # (d = -grad E / L, unit step = 1/||A||^2), which reach δ (early stopping); every step is
    # checked by the same line search.
    learned = options.learned_steps if options.learned_steps is not None else min_iter
    direction = NetworkThen(net, L, data, learned, options.handover)
    result = descend(
        energy,
        u0,
        direction,
        line=LineSearch(c=options.c, rho=options.rho, initial="unit"),  # the network's steps: tau0 = 1
        stop=StopRule(delta=problem.deltas(), min_iter=min_iter, max_iter=max(options.iteration_cap, min_iter), grad_tol=options.grad_tol),
        method="edn",
        reference=problem.reference,
        callback=callback,
        record_ssim=options.record_ssim,
    )
    result.extra["checkpoint"] = _checkpoint_info(meta)
    result.extra["inference"] = inference.describe()  # always: the memory format is decided per device
    result.extra["min_iter"] = min_iter
    result.extra["learned_steps"] = learned
    result.extra["after_learned_steps"] = AFTER_LEARNED[options.handover]
    result.extra["init"] = "zero (from the checkpoint)" if spec.init == "zero" else "the command's --init"
    return result


@register_method("baseline")
def solve_baseline(problem: Problem, options: MethodOptions, callback: Callback = None) -> SolveResult:
    """One forward pass of the baseline network from the initial guess (no guarantee)."""
    start = time.perf_counter()
    device = problem.f.device
    name = options.weights or DEFAULT_WEIGHTS.get(("baseline", problem.task))
    if name is None:
        raise CheckpointError(f"method baseline has no shipped network for task {problem.task!r}; pass --weights")
    net, meta = load_learned("baseline", name, device)
    _check_spec(checkpoint_spec(meta), problem, meta["name"])
    inference = _apply_inference(net, options, device, meta)
    op = problem.op
    f, u0 = problem.f.float(), problem.u0.float()  # float32, as the network's weights
    data = network_inputs(op, f)
    energy = DataFidelity(op, f)
    with torch.no_grad():
        u = net(u0, data)
    records = []
    batch = u.shape[0]
    energies, discs = [], []  # per sample, at u0 and at the network's output
    for k, x in enumerate((u0, u)):
        quality = (None, None) if problem.reference is None else quality_each(x, problem.reference, options.record_ssim)
        energies.append(energy.value(x).double().tolist())
        discs.append(energy.discrepancy(x).double().tolist())
        rec = IterationRecord.of_samples(
            k,
            time.perf_counter() - start,
            energies[-1],
            discs[-1],
            energy.grad(x).flatten(1).double().pow(2).sum(1).tolist(),
            [1.0 if k else None] * batch,
            [0] * batch,
            [k == 0] * batch,
            *quality,  # type: ignore[arg-type]
        )
        records.append(rec)
        if callback is not None:
            callback(rec)
    deltas = problem.deltas()
    (e0, e1), disc = energies, discs[1]
    samples = [
        SampleVerdict(
            iterations=1,
            final_energy=e1[i],
            final_discrepancy=disc[i],
            delta=None if deltas is None else deltas[i],
            delta_reached=None if deltas is None else disc[i] <= deltas[i],
            max_energy_increase=e1[i] - e0[i],
            energy_monotone=e1[i] <= e0[i],
            stop_reason="single_pass",
        )
        for i in range(batch)
    ]
    result = SolveResult(u=u, trace=records, samples=samples, method="baseline", elapsed_s=time.perf_counter() - start)
    result.extra["checkpoint"] = _checkpoint_info(meta)
    result.extra["inference"] = inference.describe()  # always: the memory format is decided per device
    result.extra["guarantee"] = "none: a feed-forward network; delta_reached only reports what happened"
    return result
