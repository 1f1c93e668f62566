"""Convolutional backbones (DnCNN-style: Zhang et al. 2017, as used by paper 001 §5.1).

With ``shuffle = s > 1`` the stack runs on a space-to-depth view of the input (FFDNet-style,
Zhang et al. 2018): ``pixel_unshuffle`` by ``s`` in, ``pixel_shuffle`` by ``s`` out. A layer
then costs ``1/s²`` as much per pixel at the same width, so at equal compute the network can be
``s²`` times wider or reach ``s`` times further; for SR x``s`` with average pooling each
low-resolution cell is exactly one input block.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import nn


@dataclass
class BackboneConfig:
    """A DnCNN-style stack: ``conv3x3 -> ReLU``, ``depth - 2`` x ``conv3x3 -> BN -> ReLU``, ``conv3x3``.

    ``in_channels`` input planes, ``out_channels`` output planes, ``width`` feature channels;
    ``shuffle`` the space-to-depth factor (1: the plain DnCNN). The receptive field is
    ``s (2 depth + 2) - 1`` pixels (``2 depth + 1`` for ``s = 1``).

    ``residual``: the ``depth - 2`` middle convolutions form ``(depth - 2) / 2`` residual blocks
    ``x + conv(ReLU(conv(x)))`` (EDSR-style, Lim et al. 2017; no batch norm), with a skip from the
    first layer's features around all of them. Same convolutions, same receptive field; deep
    stacks train faster than the plain chain.
    """

    in_channels: int = 3
    out_channels: int = 1
    depth: int = 17
    width: int = 64
    batchnorm: bool = True
    shuffle: int = 1
    residual: bool = False

    def as_dict(self) -> dict:
        return asdict(self)

    @property
    def receptive_field(self) -> int:
        return self.shuffle * (2 * self.depth + 2) - 1


class _ResBlock(nn.Module):
    """``x + conv(ReLU(conv(x)))``, 3x3 convolutions of ``width`` channels."""

    def __init__(self, width: int):
        super().__init__()
        self.conv1 = nn.Conv2d(width, width, 3, padding=1)
        self.conv2 = nn.Conv2d(width, width, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv2(F.relu(self.conv1(x)))


class _Skip(nn.Module):
    """``x + inner(x)``: the long skip around a stack of residual blocks."""

    def __init__(self, inner: nn.Module):
        super().__init__()
        self.inner = inner

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.inner(x)


class DnCNN(nn.Module):
    """DnCNN backbone on ``(B, in_channels, H, W)`` -> ``(B, out_channels, H, W)``, any ``H, W``.

    With ``shuffle = s > 1`` the input is replicate-padded to multiples of ``s`` (the pad is
    cropped from the output), so pixel ``(i, j)`` falls in block ``(i // s, j // s)``.
    """

    def __init__(self, cfg: BackboneConfig):
        super().__init__()
        if cfg.depth < 2 or cfg.width < 1 or cfg.shuffle < 1:
            raise ValueError(
                f"backbone needs depth >= 2, width >= 1 and shuffle >= 1, got {cfg.depth}, {cfg.width}, {cfg.shuffle}"
            )
        if cfg.residual and (cfg.batchnorm or (cfg.depth - 2) % 2):
            raise ValueError(f"a residual backbone needs an even depth - 2 and no batch norm, got depth {cfg.depth}")
        self.cfg = cfg
        s2 = cfg.shuffle**2
        layers: list[nn.Module] = [nn.Conv2d(cfg.in_channels * s2, cfg.width, 3, padding=1), nn.ReLU(inplace=True)]
        if cfg.residual:
            layers.append(_Skip(nn.Sequential(*(_ResBlock(cfg.width) for _ in range((cfg.depth - 2) // 2)))))
        else:
            for _ in range(cfg.depth - 2):
                layers.append(nn.Conv2d(cfg.width, cfg.width, 3, padding=1, bias=not cfg.batchnorm))
                if cfg.batchnorm:
                    layers.append(nn.BatchNorm2d(cfg.width))
                layers.append(nn.ReLU(inplace=True))
        layers.append(nn.Conv2d(cfg.width, cfg.out_channels * s2, 3, padding=1))
        self.body = nn.Sequential(*layers)
        # He initialisation (as DnCNN): keeps activations at scale through a deep stack without
        # batch norm (PyTorch's default shrinks them ~1.7x per layer); the last layer starts at 0.
        for m in self.body.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, nonlinearity="relu")
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
        for m in self.body.modules():
            if isinstance(m, _ResBlock):  # each block starts as the identity
                nn.init.zeros_(m.conv2.weight)
        nn.init.zeros_(self.body[-1].weight)
        nn.init.zeros_(self.body[-1].bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = self.cfg.shuffle
        if s == 1:
            return self.body(x)
        H, W = x.shape[-2:]
        ph, pw = -H % s, -W % s
        if ph or pw:
            x = F.pad(x, (0, pw, 0, ph), mode="replicate")
        y = F.pixel_shuffle(self.body(F.pixel_unshuffle(x, s)), s)
        return y[..., :H, :W] if (ph or pw) else y
