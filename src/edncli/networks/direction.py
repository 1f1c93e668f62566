"""Energy dissipating direction networks ``G(u, f, grad E(u); θ)`` (paper 001 §3-4).

The network sees three planes: the iterate ``u``, the Landweber step ``-grad E(u) / L`` and
the data in image space ``A^T f / L`` (``L = ||A||^2``; this normalisation makes the inputs
image-valued for any operator, so one network serves many geometries, DESIGN §2). Its raw
output ``z`` (image units, trained towards ``u* - u``) goes through a descent-set layer with
the normalised negative gradient ``g = -grad E(u) / L``: eq. 22 (cone and ball,
``<d, g> >= ζ1 ||g||^2, ||d|| <= ζ2 ||g||``) or eq. 21 (half-space ``<d, g> >= ζ ||g||``).
Either way ``d`` is a descent direction for ``E``, so Algorithm 1's line search terminates and
the energy falls — whatever the weights are.

The *baseline network* (paper Table 1) is the same backbone mapping the initial guess to a
reconstruction in one pass, with no layer and no guarantee.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Optional

import torch
from torch import nn

from ..directions import ConeBallMap, HalfSpaceProjection
from .backbones import BackboneConfig, DnCNN
from .inference import InferenceConfig, run_network


@dataclass
class DirectionNetConfig:
    """Architecture of a direction network; stored in the checkpoint to rebuild it."""

    backbone: BackboneConfig = field(default_factory=lambda: BackboneConfig(in_channels=3, out_channels=1))
    layer: str = "cone_ball"  # "cone_ball" (eq. 22) | "halfspace" (eq. 21)
    zeta1: float = 0.05
    zeta2: float = 20.0
    zeta: float = 1e-3

    def as_dict(self) -> dict:
        d = asdict(self)
        d["kind"] = "direction"
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "DirectionNetConfig":
        d = {k: v for k, v in d.items() if k != "kind"}
        d["backbone"] = BackboneConfig(**d["backbone"])
        return cls(**d)


class DirectionNet(nn.Module):
    """``d = Layer(z, g)``, ``z = DnCNN([u, g, A^T f / L])``, ``g = -grad E(u) / L``; shapes ``(B, H, W)``.

    ``inference`` (an :class:`~edncli.networks.inference.InferenceConfig`, not saved in the
    checkpoint) sets how the backbone is evaluated: whole or tiled, fp32/bf16/fp16. The layer
    always acts on the whole stitched ``z`` in float32, so ``d`` is in the descent set whatever
    the tiling or precision.
    """

    def __init__(self, cfg: DirectionNetConfig, inference: Optional[InferenceConfig] = None):
        super().__init__()
        self.cfg = cfg
        self.inference = inference
        self.backbone = DnCNN(cfg.backbone)
        if cfg.layer == "cone_ball":
            self.layer: nn.Module = ConeBallMap(cfg.zeta1, cfg.zeta2)
        elif cfg.layer == "halfspace":
            self.layer = HalfSpaceProjection(cfg.zeta)
        else:
            raise ValueError(f"unknown descent layer {cfg.layer!r}")

    def raw(self, u: torch.Tensor, g: torch.Tensor, data: torch.Tensor) -> torch.Tensor:
        """The backbone's output ``z`` before the descent-set layer, ``(B, H, W)`` float32 (tiled per ``inference``)."""
        x = torch.stack([u, g, data], dim=1)
        bb = self.cfg.backbone
        return run_network(self.backbone, x, self.inference, bb.receptive_field, bb.shuffle)[:, 0]

    def forward(self, u: torch.Tensor, g: torch.Tensor, data: torch.Tensor) -> torch.Tensor:
        """Direction ``d`` for the normalised negative gradient ``g``; ``(B, H, W)`` each.

        The eq. 21/22 layer is applied to the whole image, in float32, after any tiling.
        """
        z = self.raw(u, g, data)
        return self.layer(z.float(), g.float())


class BaselineNet(nn.Module):
    """Feed-forward reconstruction ``x = u0 + DnCNN([u0, A^T f / L])`` (no guarantee).

    ``inference`` as for :class:`DirectionNet` (tiling/precision of the backbone only).
    """

    def __init__(self, cfg: BackboneConfig, inference: Optional[InferenceConfig] = None):
        super().__init__()
        self.cfg = cfg
        self.inference = inference
        self.backbone = DnCNN(cfg)

    def forward(self, u0: torch.Tensor, data: torch.Tensor) -> torch.Tensor:
        """``(B, H, W)`` each -> ``(B, H, W)``."""
        x = torch.stack([u0, data], dim=1)
        return u0 + run_network(self.backbone, x, self.inference, self.cfg.receptive_field, self.cfg.shuffle)[:, 0]


def build_network(arch: dict) -> nn.Module:
    """Rebuild a network from a checkpoint's ``arch`` dict."""
    kind = arch.get("kind")
    if kind == "direction":
        return DirectionNet(DirectionNetConfig.from_dict(arch))
    if kind == "baseline":
        return BaselineNet(BackboneConfig(**{k: v for k, v in arch.items() if k != "kind"}))
    raise ValueError(f"unknown network kind {kind!r}")


def baseline_arch(cfg: BackboneConfig) -> dict:
    return {**cfg.as_dict(), "kind": "baseline"}


def count_parameters(net: nn.Module) -> int:
    return sum(p.numel() for p in net.parameters())


def network_inputs(op, f: torch.Tensor, lipschitz: Optional[float] = None) -> torch.Tensor:
    """``A^T f / L`` with ``L = ||A||^2``: the data brought to image space, in image units."""
    L = lipschitz if lipschitz is not None else op.sqnorm(device=f.device)
    return op.adjoint(f) / L
