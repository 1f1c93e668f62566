"""The linear operator base class.

Every forward model in edn is a :class:`LinearOperator`: a batched, differentiable linear map
``A: R^{B x in_shape} -> R^{B x out_shape}`` with its adjoint ``A^T``. The leading dimension is
always the batch (images, colour channels, or CT slices), and it is never mixed by ``A``.
"""

from __future__ import annotations

from typing import Callable, Optional, Sequence, Tuple

import torch

from ..errors import UsageError

Shape = Tuple[int, ...]


class LinearOperator:
    """A batched linear map with adjoint, composition and a cached operator norm.

    Subclasses implement :meth:`forward` and :meth:`adjoint` for tensors of shape
    ``(B, *in_shape)`` and ``(B, *out_shape)`` respectively, float32, on any device.

    Attributes
    ----------
    in_shape, out_shape:
        Per-sample shapes (without the batch dimension).
    name:
        A short name used in reports.
    """

    name: str = "linear"
    #: True when :meth:`forward` and :meth:`adjoint` always return new tensors that share no
    #: memory with their input or the operator's state, so a caller may overwrite them: the
    #: solver then updates iterates and residuals in that memory (two memory streams instead of
    #: three). False (the safe default) for operators that may hand back their input.
    returns_new: bool = False

    def __init__(self, in_shape: Sequence[int], out_shape: Sequence[int]):
        self.in_shape: Shape = tuple(int(s) for s in in_shape)
        self.out_shape: Shape = tuple(int(s) for s in out_shape)
        self._opnorm: Optional[float] = None

    # -- to be implemented ---------------------------------------------------------------
    def forward(self, x: torch.Tensor) -> torch.Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def adjoint(self, y: torch.Tensor) -> torch.Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def _check(self, x: torch.Tensor, shape: Shape, what: str, hint: str = "") -> torch.Tensor:
        """``x`` itself if it is ``(B, *shape)``; else a one-line :class:`UsageError` naming ``what``."""
        if x.dim() == len(shape) and tuple(x.shape) == tuple(shape):
            raise UsageError(f"{what} has shape {tuple(x.shape)} without a batch dimension; give (B, {', '.join(map(str, shape))})")
        if x.dim() != len(shape) + 1 or tuple(x.shape[1:]) != tuple(shape):
            raise UsageError(f"{what} has shape {tuple(x.shape)}, but {self.name} needs (B, {', '.join(map(str, shape))}){hint}")
        return x

    # -- sugar ---------------------------------------------------------------------------
    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward(x)

    @property
    def T(self) -> "LinearOperator":
        """The adjoint as an operator (``A.T(y) == A.adjoint(y)``)."""
        return _Adjoint(self)

    def __matmul__(self, other: "LinearOperator") -> "LinearOperator":
        """Composition ``(A @ B)(x) = A(B(x))``."""
        return _Composed(self, other)

    def __mul__(self, scalar: float) -> "LinearOperator":
        return _Scaled(self, float(scalar))

    __rmul__ = __mul__

    def gram(self, x: torch.Tensor) -> torch.Tensor:
        """``A^T A x``."""
        return self.adjoint(self.forward(x))

    def to(self, device: torch.device | str) -> "LinearOperator":
        """Move any tensors the operator holds to ``device`` (in place); returns ``self``."""
        for key, value in list(vars(self).items()):
            if isinstance(value, torch.Tensor):
                setattr(self, key, value.to(device))
            elif isinstance(value, LinearOperator):
                value.to(device)
        return self

    def describe(self) -> dict:
        """Plain-JSON description of the operator, for reports and checkpoints."""
        return {"name": self.name, "in_shape": list(self.in_shape), "out_shape": list(self.out_shape)}

    # -- norm ------------------------------------------------------------------------------
    def opnorm(self, iterations: int = 50, device: torch.device | str = "cpu", seed: int = 0) -> float:
        """Operator (spectral) norm ``||A||_2``, estimated by power iteration on ``A^T A``; cached.

        This is the norm, not its square (see :meth:`sqnorm`).
        """
        if self._opnorm is None:
            self._opnorm = power_iteration(self, iterations=iterations, device=device, seed=seed)
        return self._opnorm

    def sqnorm(self, **kwargs) -> float:
        """``||A||_2^2``, the Lipschitz constant of ``u -> A^T (A u - f)``."""
        return self.opnorm(**kwargs) ** 2


def power_iteration(
    op: LinearOperator, iterations: int = 50, device: torch.device | str = "cpu", seed: int = 0, tol: float = 1e-6
) -> float:
    """Estimate ``||A||_2`` by power iteration on ``A^T A`` from a seeded random start."""
    gen = torch.Generator(device="cpu").manual_seed(seed)
    x = torch.randn((1, *op.in_shape), generator=gen).to(device)
    x = x / x.norm()
    estimate = 0.0
    for _ in range(iterations):
        y = op.gram(x)
        norm = float(y.norm())
        if norm == 0.0:
            return 0.0
        x = y / norm
        converged = abs(norm - estimate) <= tol * norm
        estimate = norm
        if converged:
            break
    return float(estimate) ** 0.5


class _Adjoint(LinearOperator):
    def __init__(self, op: LinearOperator):
        super().__init__(op.out_shape, op.in_shape)
        self.op = op
        self.name = f"{op.name}.T"
        self.returns_new = op.returns_new

    def forward(self, x):
        return self.op.adjoint(x)

    def adjoint(self, y):
        return self.op.forward(y)

    def opnorm(self, **kwargs):
        return self.op.opnorm(**kwargs)


class _Composed(LinearOperator):
    def __init__(self, outer: LinearOperator, inner: LinearOperator):
        if tuple(outer.in_shape) != tuple(inner.out_shape):
            raise ValueError(
                f"cannot compose: outer operator takes {outer.in_shape}, inner gives {inner.out_shape}"
            )
        super().__init__(inner.in_shape, outer.out_shape)
        self.outer, self.inner = outer, inner
        self.name = f"{outer.name}@{inner.name}"
        self.returns_new = outer.returns_new and inner.returns_new

    def forward(self, x):
        return self.outer.forward(self.inner.forward(x))

    def adjoint(self, y):
        return self.inner.adjoint(self.outer.adjoint(y))


class _Scaled(LinearOperator):
    def __init__(self, op: LinearOperator, scale: float):
        super().__init__(op.in_shape, op.out_shape)
        self.op, self.scale = op, scale
        self.name = f"{scale:g}*{op.name}"
        self.returns_new = True  # scale * (...) is a new tensor

    def forward(self, x):
        return self.scale * self.op.forward(x)

    def adjoint(self, y):
        return self.scale * self.op.adjoint(y)

    def opnorm(self, **kwargs):
        return abs(self.scale) * self.op.opnorm(**kwargs)

    def describe(self):
        return {**self.op.describe(), "scale": self.scale}


class Identity(LinearOperator):
    """``A = I`` (denoising)."""

    name = "identity"

    def __init__(self, shape: Sequence[int]):
        super().__init__(shape, shape)
        self._opnorm = 1.0

    def forward(self, x):
        return x

    def adjoint(self, y):
        return y


def adjoint_mismatch(
    op: LinearOperator,
    batch: int = 2,
    device: torch.device | str = "cpu",
    dtype: torch.dtype = torch.float32,
    seed: int = 0,
) -> float:
    """Relative adjoint error ``|<A u, v> - <u, A^T v>| / (||A u|| ||v||)`` on random ``u, v``.

    The inner products are accumulated in float64, so the result measures the operator, not
    the summation; float32 operators typically give ~1e-7.
    """
    gen = torch.Generator(device="cpu").manual_seed(seed)
    u = torch.randn((batch, *op.in_shape), generator=gen, dtype=dtype).to(device)
    v = torch.randn((batch, *op.out_shape), generator=gen, dtype=dtype).to(device)
    au = op.forward(u)
    atv = op.adjoint(v)
    if tuple(au.shape) != (batch, *op.out_shape):
        raise AssertionError(f"forward gave shape {tuple(au.shape)}, expected {(batch, *op.out_shape)}")
    if tuple(atv.shape) != (batch, *op.in_shape):
        raise AssertionError(f"adjoint gave shape {tuple(atv.shape)}, expected {(batch, *op.in_shape)}")
    lhs = (au.double() * v.double()).sum()
    rhs = (u.double() * atv.double()).sum()
    scale = float(au.double().norm() * v.double().norm()) or 1.0
    return float((lhs - rhs).abs()) / scale


def adjoint_by_autograd(forward: Callable[[torch.Tensor], torch.Tensor], x_like: torch.Tensor, y: torch.Tensor):
    """The exact adjoint of a linear torch function, ``A^T y``, via a vector-Jacobian product."""
    x = torch.zeros_like(x_like, requires_grad=True)
    with torch.enable_grad():
        out = forward(x)
        (grad,) = torch.autograd.grad(out, x, grad_outputs=y, create_graph=y.requires_grad)
    return grad
