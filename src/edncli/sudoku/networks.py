"""Networks for Sudoku: the energy dissipating direction network and the feed-forward baseline.

Backbone (:class:`FibreNet`): every entry ``(r, c, d)`` of the ``9x9x9`` tensor carries a feature
vector; a layer mixes each entry with mean- and max-pools of its four *fibres* (its row
``(r, :, d)``, column ``(:, c, d)``, box-and-digit and cell ``(r, c, :)``), i.e. exactly the
groups the constraint sets C1-C4 act on. The layer is equivariant to permutations of digits,
of rows within a band, of columns within a stack, of bands and of stacks, as the Sudoku rules are.
"""

from __future__ import annotations

from typing import Any, Dict

import torch
from torch import nn

from ..directions import ConeBallMap
from .sets import givens_onehot

#: Fibres pooled by :class:`FibreLayer`; tensors are channels-last ``(B, 9, 9, 9, C)``.
FIBRES = ("row", "column", "box", "cell")


class FibreLayer(nn.Module):
    """``y = W_0 x + sum_fibre W_fibre [mean_fibre(x), max_fibre(x)] + b`` (channels-last).

    Pooled terms are computed on the small pooled tensors and added by broadcasting.
    """

    def __init__(self, c_in: int, c_out: int):
        super().__init__()
        self.self_lin = nn.Linear(c_in, c_out)
        self.pool_lin = nn.ModuleDict({f: nn.Linear(2 * c_in, c_out, bias=False) for f in FIBRES})

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c = x.shape[0], x.shape[-1]
        y = self.self_lin(x)
        for f, dim in (("row", 2), ("column", 1), ("cell", 3)):
            pooled = torch.cat([x.mean(dim, keepdim=True), x.amax(dim, keepdim=True)], dim=-1)
            y = y + self.pool_lin[f](pooled)
        x7 = x.reshape(b, 3, 3, 3, 3, 9, c)
        pooled = torch.cat([x7.mean((2, 4), keepdim=True), x7.amax((2, 4), keepdim=True)], dim=-1)
        y = y.reshape(b, 3, 3, 3, 3, 9, -1) + self.pool_lin["box"](pooled)
        return y.reshape(b, 9, 9, 9, -1)


class FibreBlock(nn.Module):
    """Pre-norm residual block: ``x + W_2 relu(FibreLayer(LayerNorm(x)))``."""

    def __init__(self, channels: int):
        super().__init__()
        self.norm = nn.LayerNorm(channels)
        self.mix = FibreLayer(channels, channels)
        self.out = nn.Linear(channels, channels)
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.out(torch.relu(self.mix(self.norm(x))))


class FibreNet(nn.Module):
    """Backbone: ``(B, 9, 9, 9, c_in) -> (B, 9, 9, 9)`` logits per entry.

    Parameters
    ----------
    c_in: input features per entry. channels: width. blocks: number of :class:`FibreBlock`.
    """

    def __init__(self, c_in: int, channels: int = 48, blocks: int = 6):
        super().__init__()
        self.inp = FibreLayer(c_in, channels)
        self.blocks = nn.Sequential(*[FibreBlock(channels) for _ in range(blocks)])
        self.norm = nn.LayerNorm(channels)
        self.head = nn.Linear(channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.blocks(self.inp(x))
        return self.head(torch.relu(self.norm(h))).squeeze(-1)


def _givens_features(givens: torch.Tensor) -> torch.Tensor:
    """``(B, 9, 9)`` grid -> ``(B, 9, 9, 9, 2)``: one-hot of the givens and the given-cell mask."""
    onehot = givens_onehot(givens)
    mask = (givens > 0).float().unsqueeze(-1).expand_as(onehot)
    return torch.stack([onehot, mask], dim=-1)


class SudokuDirectionNet(nn.Module):
    """``G(u, grad E(u), givens)``: a descent direction in the cone-and-ball set (eq. 15, eq. 22).

    The backbone sees, per entry, the iterate ``u``, the gradient ``grad E(u)`` (scaled by
    ``grad_scale``), the one-hot givens and the given-cell mask; it predicts digit logits ``l``
    and proposes ``z = softmax_d(l) - u`` (a step to its guessed solution). The eq. 22 map then
    returns ``d`` with ``<d, g> >= zeta1 ||g||^2`` and ``||d|| <= zeta2 ||g||``, ``g = -grad E(u)``.
    For the feasibility energy ``<u* - u, g> >= E(u) >= ||g||^2 / 2`` for any solution ``u*``, so
    with ``zeta1 <= 1/2`` (and ``zeta2`` large) the exact step to the solution is in the set.

    Shapes: ``u``, ``grad`` ``(B, 9, 9, 9)``; ``givens`` ``(B, 9, 9)`` int; returns ``(B, 9, 9, 9)``.
    """

    def __init__(self, channels: int = 48, blocks: int = 6, zeta1: float = 0.1, zeta2: float = 1e4, grad_scale: float = 10.0):
        super().__init__()
        self.arch: Dict[str, Any] = {
            "name": "fibre_direction",
            "channels": channels,
            "blocks": blocks,
            "zeta1": zeta1,
            "zeta2": zeta2,
            "grad_scale": grad_scale,
        }
        self.backbone = FibreNet(5, channels, blocks)
        self.project = ConeBallMap(zeta1, zeta2)
        self.grad_scale = grad_scale

    def logits(self, u: torch.Tensor, grad: torch.Tensor, givens: torch.Tensor) -> torch.Tensor:
        feats = torch.cat([torch.stack([u, self.grad_scale * grad], dim=-1), _givens_features(givens), (u - 1.0 / 9).unsqueeze(-1)], dim=-1)
        return self.backbone(feats)

    def forward(self, u: torch.Tensor, grad: torch.Tensor, givens: torch.Tensor) -> torch.Tensor:
        s = torch.softmax(self.logits(u, grad, givens), dim=-1)
        return self.project(s - u, -grad)


class SudokuBaselineNet(nn.Module):
    """Feed-forward baseline: givens -> digit logits ``(B, 9, 9, 9)`` in one pass (no guarantee)."""

    def __init__(self, channels: int = 48, blocks: int = 6):
        super().__init__()
        self.arch: Dict[str, Any] = {"name": "fibre_baseline", "channels": channels, "blocks": blocks}
        self.backbone = FibreNet(2, channels, blocks)

    def forward(self, givens: torch.Tensor) -> torch.Tensor:
        return self.backbone(_givens_features(givens))


def build_network(arch: Dict[str, Any]) -> nn.Module:
    """Rebuild a network from the ``arch`` dict stored in its checkpoint."""
    name = arch.get("name")
    if name == "fibre_direction":
        return SudokuDirectionNet(
            int(arch["channels"]), int(arch["blocks"]), float(arch["zeta1"]), float(arch["zeta2"]), float(arch["grad_scale"])
        )
    if name == "fibre_baseline":
        return SudokuBaselineNet(int(arch["channels"]), int(arch["blocks"]))
    raise ValueError(f"unknown Sudoku network architecture {name!r}")
