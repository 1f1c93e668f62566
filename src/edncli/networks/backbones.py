"""Convolutional backbones (DnCNN-style: Zhang et al. 2017, as used by paper 001 §5.1)."""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
from torch import nn


@dataclass
class BackboneConfig:
    """A DnCNN-style stack: ``conv3x3 -> ReLU``, ``depth - 2`` x ``conv3x3 -> BN -> ReLU``, ``conv3x3``.

    ``in_channels`` input planes, ``out_channels`` output planes, ``width`` feature channels.
    The receptive field is ``2 * depth + 1`` pixels.
    """

    in_channels: int = 3
    out_channels: int = 1
    depth: int = 17
    width: int = 64
    batchnorm: bool = True

    def as_dict(self) -> dict:
        return asdict(self)

    @property
    def receptive_field(self) -> int:
        return 2 * self.depth + 1


class DnCNN(nn.Module):
    """DnCNN backbone on ``(B, in_channels, H, W)`` -> ``(B, out_channels, H, W)``."""

    def __init__(self, cfg: BackboneConfig):
        super().__init__()
        if cfg.depth < 2 or cfg.width < 1:
            raise ValueError(f"backbone needs depth >= 2 and width >= 1, got {cfg.depth}, {cfg.width}")
        self.cfg = cfg
        layers: list[nn.Module] = [nn.Conv2d(cfg.in_channels, cfg.width, 3, padding=1), nn.ReLU(inplace=True)]
        for _ in range(cfg.depth - 2):
            layers.append(nn.Conv2d(cfg.width, cfg.width, 3, padding=1, bias=not cfg.batchnorm))
            if cfg.batchnorm:
                layers.append(nn.BatchNorm2d(cfg.width))
            layers.append(nn.ReLU(inplace=True))
        layers.append(nn.Conv2d(cfg.width, cfg.out_channels, 3, padding=1))
        self.body = nn.Sequential(*layers)
        nn.init.zeros_(self.body[-1].weight)
        nn.init.zeros_(self.body[-1].bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)
