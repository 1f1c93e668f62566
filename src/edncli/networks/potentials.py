"""Gradient-driven denoisers ``D_θ(x) = x - ∇g_θ(x)`` and a plain DnCNN denoiser (paper 000, DESIGN §5).

Every potential model maps an image batch ``x`` of shape ``(B, H, W)`` to a scalar per sample,
``g_θ(x)`` of shape ``(B,)`` (summed in float64), and its denoiser is exactly one gradient step
on that potential, ``D_θ(x) = x - ∇g_θ(x)`` with ``∇`` by autograd. Reconstruction with such a
denoiser (RED) is then true gradient descent on ``F = f + λ g_θ``.

- :class:`GraDnCNN`: ``g(x) = 1/2 ||R(x)||^2`` with ``R`` a DnCNN-style stack with smooth (ELU)
  activations and no batch norm, so ``∇g = J_R(x)^T R(x)`` is Lipschitz continuous.
- :class:`DnICNN`: ``g`` an input-convex network (Amos et al. 2017): hidden-path convolutions with
  weights ``|w| >= 0``, convex non-decreasing activations (softplus), arbitrary
  convolutions from the input ``x`` into every layer; ``g`` is convex in ``x``.
- :class:`DnDICNN`: ``g = g_1 - g_2``, a difference of two input-convex networks.
- :class:`DnCNNDenoiser`: ``D(x) = x - N(x)`` (residual DnCNN, Zhang et al. 2017) for the RED/PnP
  baselines; no potential.

Architectures are described by plain dicts (``arch``) stored in checkpoints;
:func:`build_denoiser` rebuilds a model from one and :func:`load_denoiser` loads a checkpoint of
task ``"denoiser"``.
"""

from __future__ import annotations

from typing import Any, Dict, List, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from .backbones import BackboneConfig, DnCNN

#: Checkpoint task of every denoiser (potential or plain).
TASK = "denoiser"
#: Architectures :func:`build_denoiser` knows; the first three have a potential.
ARCHS = ("gradncnn", "dnicnn", "dndicnn", "dncnn")
POTENTIAL_ARCHS = ("gradncnn", "dnicnn", "dndicnn")


class PotentialDenoiser(nn.Module):
    """Base class: a scalar potential ``g_θ`` and its gradient-step denoiser.

    Subclasses implement :meth:`potential`. Inputs are ``(B, H, W)`` images in [0, 1].
    """

    has_potential = True

    def potential(self, x: torch.Tensor) -> torch.Tensor:  # pragma: no cover - abstract
        """``g_θ(x)``: ``(B, H, W) -> (B,)`` float64."""
        raise NotImplementedError

    def potential_and_grad(self, x: torch.Tensor, create_graph: bool = False) -> Tuple[torch.Tensor, torch.Tensor]:
        """``(g_θ(x), ∇g_θ(x))`` with shapes ``(B,)`` and ``(B, H, W)``, one forward and one backward pass.

        With ``create_graph`` the gradient stays differentiable in ``θ`` (double backprop, training).
        """
        with torch.enable_grad():
            xg = x if (create_graph and x.requires_grad) else x.detach().requires_grad_(True)
            g = self.potential(xg)
            (grad,) = torch.autograd.grad(g.sum(), xg, create_graph=create_graph)
        if not create_graph:
            g, grad = g.detach(), grad.detach()
        return g, grad

    def grad_potential(self, x: torch.Tensor, create_graph: bool = False) -> torch.Tensor:
        """``∇g_θ(x)``, shape ``(B, H, W)``."""
        return self.potential_and_grad(x, create_graph)[1]

    def denoise(self, x: torch.Tensor, create_graph: bool = False) -> torch.Tensor:
        """``D_θ(x) = x - ∇g_θ(x)`` (paper 000 eq. 5), shape ``(B, H, W)``."""
        return x - self.grad_potential(x, create_graph)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Same as :meth:`denoise` with a differentiable graph in ``θ`` when training."""
        return self.denoise(x, create_graph=self.training)


def _conv(cin: int, cout: int, bias: bool = True) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, 3, padding=1, bias=bias)


class GraDnCNN(PotentialDenoiser):
    """``g(x) = 1/2 ||R(x)||^2`` per sample, ``R`` = conv3x3-ELU x (depth-1), conv3x3 (no batch norm).

    ``∇g(x) = J_R(x)^T R(x)``; ELU has a Lipschitz derivative, so ``∇g`` is Lipschitz on bounded sets.
    """

    def __init__(self, depth: int = 7, width: int = 32):
        super().__init__()
        if depth < 2 or width < 1:
            raise ValueError(f"GraDnCNN needs depth >= 2 and width >= 1, got {depth}, {width}")
        layers: List[nn.Module] = [_conv(1, width), nn.ELU()]
        for _ in range(depth - 2):
            layers += [_conv(width, width), nn.ELU()]
        layers.append(_conv(width, 1))
        # PyTorch's default init of the last layer (not a small one): with ``R`` near zero the
        # gradient in θ of ``J_R^T R`` is quadratic in ``R`` and training stalls for hundreds of steps.
        self.body = nn.Sequential(*layers)

    def potential(self, x: torch.Tensor) -> torch.Tensor:
        r = self.body(x.unsqueeze(1))
        return 0.5 * (r * r).flatten(1).sum(1, dtype=torch.float64)


class ICNN(nn.Module):
    """Input-convex CNN ``(B, H, W) -> (B,)`` (Amos et al. 2017), convex in ``x``.

    ``z_1 = s(W_0 x + b_0)``, ``z_{k+1} = s(V_k z_k + W_k x + b_k)`` for ``k = 1..depth-2``,
    ``g(x) = sum_pixels (V_out z + W_out x)``, with hidden-path weights ``V = |v| >= 0`` and
    ``s = softplus`` (convex, non-decreasing). Convolutions are 3x3 with zero padding (linear).
    Non-negative combinations of convex functions, composed with a convex non-decreasing ``s``,
    stay convex, so ``g`` is convex for every value of the parameters ``v`` (the reparametrisation
    ``|v|`` never blocks gradients, unlike clamping, and keeps Adam's steps on the scale of ``V``).
    """

    def __init__(self, depth: int = 6, width: int = 32):
        super().__init__()
        if depth < 2 or width < 1:
            raise ValueError(f"ICNN needs depth >= 2 and width >= 1, got {depth}, {width}")
        self.first = _conv(1, width)
        self.skips = nn.ModuleList([_conv(1, width) for _ in range(depth - 2)])
        fan_in = 9 * width
        self.hidden = nn.ParameterList([nn.Parameter(torch.rand(width, width, 3, 3) * (2.0 / fan_in)) for _ in range(depth - 2)])
        # A small output layer: D starts near the identity; Adam's steps (~lr) still move |v| quickly.
        self.out_hidden = nn.Parameter(torch.rand(1, width, 3, 3) * (0.2 / fan_in))
        self.out_skip = _conv(1, 1, bias=False)
        with torch.no_grad():
            self.out_skip.weight.zero_()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x1 = x.unsqueeze(1)
        z = F.softplus(self.first(x1))
        for raw, skip in zip(self.hidden, self.skips):
            z = F.softplus(F.conv2d(z, raw.abs(), padding=1) + skip(x1))
        out = F.conv2d(z, self.out_hidden.abs(), padding=1) + self.out_skip(x1)
        return out.flatten(1).sum(1, dtype=torch.float64)


class DnICNN(PotentialDenoiser):
    """Convex potential ``g = ICNN(x)``; ``D = x - ∇g`` (paper 000 §4, DnICNN)."""

    def __init__(self, depth: int = 6, width: int = 32):
        super().__init__()
        self.net = ICNN(depth, width)

    def potential(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class DnDICNN(PotentialDenoiser):
    """Difference-of-convex potential ``g = g_1 - g_2``, two ICNNs of equal size (paper 000, DnDICNN)."""

    def __init__(self, depth: int = 6, width: int = 32):
        super().__init__()
        self.convex = ICNN(depth, width)
        self.concave = ICNN(depth, width)

    def potential(self, x: torch.Tensor) -> torch.Tensor:
        return self.convex(x) - self.concave(x)


class DnCNNDenoiser(nn.Module):
    """Residual DnCNN denoiser ``D(x) = x - N(x)`` on ``(B, H, W)`` (baselines of paper 000 eqs. 28-29)."""

    has_potential = False

    def __init__(self, depth: int = 8, width: int = 32, batchnorm: bool = True):
        super().__init__()
        self.net = DnCNN(BackboneConfig(in_channels=1, out_channels=1, depth=depth, width=width, batchnorm=batchnorm))

    def denoise(self, x: torch.Tensor, create_graph: bool = False) -> torch.Tensor:
        """``x - N(x)``, shape ``(B, H, W)``."""
        return x - self.net(x.unsqueeze(1))[:, 0]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.denoise(x)


def default_arch(name: str, depth: int | None = None, width: int | None = None, batchnorm: bool | None = None) -> Dict[str, Any]:
    """The ``arch`` dict for ``name`` with optional overrides (defaults: the CPU-sized shipped models)."""
    from ..errors import UsageError

    name = str(name).lower()
    if name not in ARCHS:
        raise UsageError(f"--arch must be one of {', '.join(ARCHS)}, got {name!r}")
    arch: Dict[str, Any] = {"kind": "denoiser", "name": name, "depth": 7 if name == "gradncnn" else 6, "width": 32}
    if name == "dncnn":
        arch["depth"] = 8
        arch["batchnorm"] = True if batchnorm is None else bool(batchnorm)
    if depth is not None:
        arch["depth"] = int(depth)
    if width is not None:
        arch["width"] = int(width)
    if arch["depth"] < 2 or arch["width"] < 1:
        raise UsageError(f"--depth must be >= 2 and --width >= 1, got {arch['depth']} and {arch['width']}")
    return arch


def build_denoiser(arch: Dict[str, Any]) -> nn.Module:
    """A fresh model from an ``arch`` dict (``{"kind": "denoiser", "name", "depth", "width"[, "batchnorm"]}``)."""
    from ..errors import CheckpointError

    name = arch.get("name")
    if arch.get("kind", "denoiser") != "denoiser" or name not in ARCHS:
        raise CheckpointError(f"architecture {arch!r} is not a denoiser ({', '.join(ARCHS)})")
    depth, width = int(arch["depth"]), int(arch["width"])
    if name == "gradncnn":
        return GraDnCNN(depth, width)
    if name == "dnicnn":
        return DnICNN(depth, width)
    if name == "dndicnn":
        return DnDICNN(depth, width)
    return DnCNNDenoiser(depth, width, bool(arch.get("batchnorm", True)))


def load_denoiser(name_or_path: str, device: str | torch.device = "cpu") -> Tuple[nn.Module, Dict[str, Any]]:
    """Load a denoiser checkpoint (shipped name or path) in eval mode; ``(module, metadata)``.

    A checkpoint of another task (e.g. a direction network) raises :class:`CheckpointError`.
    """
    from ..errors import CheckpointError
    from ..io.checkpoints import load_checkpoint, tensors_fit_architecture
    from ..io.weights import resolve_weights

    path = resolve_weights(name_or_path)
    state, meta = load_checkpoint(path, expect_task=TASK, device="cpu")
    try:
        problem = tensors_fit_architecture(meta["arch"], state, build_denoiser)
        model = None if problem else build_denoiser(meta["arch"])
    except (KeyError, TypeError, ValueError) as exc:  # a malformed arch dict (read_metadata checks it is a dict)
        raise CheckpointError(f"checkpoint {path}: corrupt architecture metadata ({str(exc).splitlines()[0]})") from None
    if problem:
        raise CheckpointError(f"checkpoint {path}: its tensors do not fit its architecture ({problem})")
    try:
        model.load_state_dict(state)
    except RuntimeError as exc:
        first = str(exc).splitlines()[0]
        raise CheckpointError(f"checkpoint {path}: its tensors do not fit its architecture ({first})") from None
    model.to(device=device, dtype=torch.float32).eval()  # float32 whatever torch's default dtype
    for p in model.parameters():
        p.requires_grad_(False)
    meta["name"] = path.stem
    return model, meta


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


__all__ = [
    "ARCHS",
    "POTENTIAL_ARCHS",
    "TASK",
    "PotentialDenoiser",
    "GraDnCNN",
    "ICNN",
    "DnICNN",
    "DnDICNN",
    "DnCNNDenoiser",
    "default_arch",
    "build_denoiser",
    "load_denoiser",
    "count_parameters",
]
