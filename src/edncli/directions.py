"""Descent-set layers: the last layer of an energy dissipating network (paper 001, §4.1).

Both layers act per sample of a batch. ``g`` is the *negative* gradient ``-grad E(u)``; any
output ``d`` satisfies ``<d, g> > 0`` whenever ``g != 0``, so ``d`` is a descent direction and
the line search of Algorithm 1 terminates.

The layers compute in float64 and return float32: in float32, ``z + relu(zeta - <z, n>) n``
cancels when ``z`` is large against ``g`` (an output 1e5 opposite to ``g`` came back an ascent
direction; at ``||z|| ~ 100`` the margin fell short by up to 5%), and ``||g||^2`` overflows for
``||g|| > 1e19``. From float64, rounding the output to float32 moves ``<d, g>`` by about
``6e-8 ||d|| ||g|| / sqrt(N)``, far inside the margin for the sizes the networks produce.

Norms are taken over all non-batch dimensions. The paper replaces ``||g||`` by
``max(||g||, eps)`` (eps = 1e-6) so the layers stay finite as ``g -> 0``; that also moves the
output out of the set for ``0 < ||g|| < eps`` (data in small units, or a tight δ), where it can be
an ascent direction. Here ``||g||`` (and ``||g||^2``) is only kept above the dtype's smallest
normal number: the same output for ``||g|| >= eps``, in the set down to ``||g|| ~ 1e-19`` in float32
(below, ``||g||^2`` underflows; the solver then replaces a non-descent output by ``-grad E``), and
still finite at ``g = 0``.
"""

from __future__ import annotations

import torch
from torch import nn


def _dot(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Per-sample inner product, shape ``(B, 1, ..., 1)`` broadcastable against ``a``."""
    return (a * b).flatten(1).sum(1).view(-1, *([1] * (a.dim() - 1)))


def _norm(a: torch.Tensor) -> torch.Tensor:
    return a.flatten(1).norm(dim=1).view(-1, *([1] * (a.dim() - 1)))


def _tiny(a: torch.Tensor) -> float:
    """The smallest normal number of ``a``'s dtype: the floor of ``||g||`` and ``||g||^2``."""
    return torch.finfo(a.dtype).tiny


def project_halfspace(z: torch.Tensor, g: torch.Tensor, zeta: float) -> torch.Tensor:
    """Euclidean projection onto ``C(zeta, g) = {d : <d, g> >= zeta ||g||}`` (eq. 8, eq. 21).

    ``z -> z + max(zeta - <z, n>, 0) n`` with ``n = g / ||g||`` (``n = 0`` for ``g = 0``).

    Parameters
    ----------
    z: (B, ...) raw network output.
    g: (B, ...) negative energy gradient, same shape as ``z``.
    zeta: margin ``zeta > 0``.
    """
    n = g / _norm(g).clamp_min(_tiny(g))
    return z + torch.relu(zeta - _dot(z, n)) * n


def map_cone_ball(z: torch.Tensor, g: torch.Tensor, zeta1: float, zeta2: float) -> torch.Tensor:
    """Surjective map onto ``C(zeta1, zeta2, g) = {d : <d,g> >= zeta1 ||g||^2, ||d|| <= zeta2 ||g||}``.

    Eq. 22 of paper 001: ``d = eta_hat g + Pi_B(z - eta g)`` with ``eta = <z, g>/||g||^2``,
    ``eta_hat = clip(eta, zeta1, zeta2)`` and ``B`` the ball of radius
    ``sqrt(zeta2^2 - eta_hat^2) ||g||``. Requires ``0 < zeta1 <= zeta2``. The component of
    ``z`` orthogonal to ``g`` is kept (shrunk into the ball if needed), so the set's angular
    freedom ``cos(theta) >= zeta1 / zeta2`` is available to the network.
    """
    gnorm = _norm(g).clamp_min(_tiny(g))
    gsq = (gnorm**2).clamp_min(_tiny(g))
    eta = _dot(z, g) / gsq
    eta_hat = eta.clamp(zeta1, zeta2)
    w = z - eta * g  # orthogonal to g
    radius = torch.sqrt((zeta2**2 - eta_hat**2).clamp_min(0.0)) * gnorm
    wnorm = _norm(w)
    scale = torch.where(wnorm > radius, radius / wnorm.clamp_min(torch.finfo(w.dtype).tiny), torch.ones_like(wnorm))
    return eta_hat * g + scale * w


class HalfSpaceProjection(nn.Module):
    """Layer form of :func:`project_halfspace` (eq. 21); used for CT in the paper."""

    def __init__(self, zeta: float = 1e-3):
        super().__init__()
        if not zeta > 0:
            raise ValueError(f"zeta must be > 0, got {zeta}")
        self.zeta = float(zeta)

    def forward(self, z: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
        return project_halfspace(z.double(), g.double(), self.zeta).float()

    def extra_repr(self) -> str:
        return f"zeta={self.zeta:g}"


class ConeBallMap(nn.Module):
    """Layer form of :func:`map_cone_ball` (eq. 22); SR x4 uses zeta1=25, zeta2=1e4 in the paper."""

    def __init__(self, zeta1: float = 25.0, zeta2: float = 1e4):
        super().__init__()
        if not (0 < zeta1 <= zeta2):
            raise ValueError(f"need 0 < zeta1 <= zeta2, got zeta1={zeta1}, zeta2={zeta2}")
        self.zeta1, self.zeta2 = float(zeta1), float(zeta2)

    def forward(self, z: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
        return map_cone_ball(z.double(), g.double(), self.zeta1, self.zeta2).float()

    def extra_repr(self) -> str:
        return f"zeta1={self.zeta1:g}, zeta2={self.zeta2:g}"
