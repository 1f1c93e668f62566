"""Energies ``E(u)`` minimised by the solvers, all per sample of a batch.

Each energy returns values of shape ``(B,)`` and gradients shaped like ``u``. The quadratic data
term also offers the closed form of ``E(u + tau d)`` along a line (DESIGN §3), so the line
search of Algorithm 1 costs one extra ``A d`` per iteration, not one ``A`` per trial step.
"""

from __future__ import annotations

from typing import Callable, List, Optional, Sequence, Tuple

import torch

from .operators.base import LinearOperator

LineFn = Callable[[torch.Tensor], torch.Tensor]


def dot(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Per-sample inner product ``<a_b, b_b>``, shape ``(B,)``, accumulated in float64.

    float64 accumulation matters: near convergence the Armijo decrease is ~1e-9 of E, below
    float32 summation noise, and the solver's round-off guard would stop the run early.
    """
    return (a.flatten(1) * b.flatten(1)).sum(1, dtype=torch.float64)


def fast_dot(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Per-sample inner product ``<a_b, b_b>``, shape ``(B,)``, accumulated by BLAS in the inputs' dtype.

    4-8x cheaper than :func:`dot` on the CPU (one fused pass, no float64 temporaries); relative
    error ~1e-7. For the line's coefficients and gradient norms, whose errors the Armijo test
    tolerates (its decrease condition has slack ``1 - c``); energies themselves use :func:`dot`.
    """
    n = a.shape[0]
    if n == 1 and a.is_contiguous() and b.is_contiguous():  # one BLAS dot: half the dispatch cost
        return torch.dot(a.view(-1), b.view(-1)).view(1)
    return torch.bmm(_rows(a).unsqueeze(1), _rows(b).unsqueeze(2)).view(n)


def fast_dot_host(a: torch.Tensor, b: torch.Tensor) -> float:
    """:func:`fast_dot` of a batch of one as a host float: the same product, one tensor call fewer."""
    if a.shape[0] == 1 and a.is_contiguous() and b.is_contiguous():
        return torch.dot(a.view(-1), b.view(-1)).item()
    return fast_dot(a, b).item()


def _rows(x: torch.Tensor) -> torch.Tensor:
    """``(B, ...) -> (B, m)`` without a copy when ``x`` is contiguous (``view`` is ~10x cheaper
    than ``reshape``/``flatten`` per call, which matters for small images)."""
    return x.view(x.shape[0], -1) if x.is_contiguous() else x.reshape(x.shape[0], -1)


def _sum(x: torch.Tensor) -> torch.Tensor:
    """Per-sample sum over all non-batch dimensions, shape ``(B,)``, accumulated in float64."""
    return x.flatten(1).sum(1, dtype=torch.float64)


def _bcast(t: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """Reshape a per-sample ``(B,)`` tensor to broadcast against ``like``."""
    return t.view(-1, *([1] * (like.dim() - 1)))


class Energy:
    """A differentiable energy, per sample. Subclasses define :meth:`value` and :meth:`grad`."""

    name = "energy"
    #: Lipschitz constant of the gradient, when known (for the ``1/L`` initial step).
    lipschitz: Optional[float] = None
    #: True when :meth:`grad` always returns a new tensor that nothing else references, so the
    #: solver may build the next iterate in its memory. False (safe) unless an energy says so.
    grad_returns_new: bool = False

    def value(self, u: torch.Tensor) -> torch.Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def grad(self, u: torch.Tensor) -> torch.Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def value_and_grad(self, u: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        return self.value(u), self.grad(u)

    def along(self, u: torch.Tensor, d: torch.Tensor, e0: Optional[torch.Tensor] = None) -> LineFn:
        """``tau (B,) -> E(u + tau d) (B,)``; ``e0 = E(u)`` when known. Closed forms override this."""

        def line(tau: torch.Tensor) -> torch.Tensor:
            return self.value(u + _bcast(tau, u) * d)

        return line

    def __add__(self, other: "Energy") -> "SumEnergy":
        return SumEnergy([(1.0, self), (1.0, other)])

    def __rmul__(self, weight: float) -> "SumEnergy":
        return SumEnergy([(float(weight), self)])

    def describe(self) -> dict:
        return {"name": self.name}


def _version(t: torch.Tensor) -> Optional[int]:
    """``t``'s in-place version counter (None for inference-mode tensors, which keep none)."""
    try:
        return t._version
    except RuntimeError:
        return None


class DataFidelity(Energy):
    """``E(u) = 1/2 ||A u - f||^2`` with gradient ``A^T (A u - f)`` (paper 001 eq. 1-2).

    Parameters
    ----------
    op: the forward operator ``A``.
    f: measured data, shape ``(B, *op.out_shape)``; held in float32, the solvers' precision (data
    read with numpy is float64, and would turn the residual and gradient float64 against float32
    iterates and directions).
    """

    name = "data"

    def __init__(self, op: LinearOperator, f: torch.Tensor):
        self.op = op
        self.f = f.float()
        self._cache_u: Optional[torch.Tensor] = None
        self._cache_r: Optional[torch.Tensor] = None
        self._cache_version: Optional[int] = None  # u's version counter when its residual was cached
        self._line: Optional[Tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]] = None
        self._updates = 0
        self._exact = False  # the cached residual is A u - f as computed, not moved by r + tau A d

    #: Residuals updated in place (``r + tau A d``) are recomputed exactly every this many steps.
    REFRESH_EVERY = 25

    @property
    def lipschitz(self) -> float:  # type: ignore[override]
        return self.op.sqnorm(device=self.f.device)

    @property
    def grad_returns_new(self) -> bool:  # type: ignore[override]
        # A^T r is new when A^T's outputs are (the identity hands back the cached residual)
        return self.op.returns_new

    def residual(self, u: torch.Tensor) -> torch.Tensor:
        """``A u - f``; the last result is cached by identity of ``u`` and its version counter, so
        a ``u`` changed in place (``u -= t * g``) gets its new residual."""
        if not self._cached(u):
            self._cache_r = self.op.forward(u) - self.f
            self._cache_u, self._cache_version = u, _version(u)
            self._exact = True
        elif self._cache_version is None:  # moved(): u_new was written after the residual was moved
            self._cache_version = _version(u)
        return self._cache_r  # type: ignore[return-value]

    def _cached(self, u: torch.Tensor) -> bool:
        if self._cache_u is not u:
            return False
        return self._cache_version is None or self._cache_version == _version(u)

    def residual_is_exact(self, u: torch.Tensor) -> bool:
        """True when the cached residual is ``u``'s, computed as ``A u - f`` (not moved in place)."""
        return self._cached(u) and self._exact

    def exact_discrepancy(self, u: torch.Tensor, rows: Optional[List[bool]] = None) -> torch.Tensor:
        """``||A u - f||`` per sample, ``(B,)`` float64, from a residual computed afresh unless
        the cached one already is ``u``'s exact residual; the fresh residual replaces the cache,
        or, with ``rows``, only the cached rows of the samples where ``rows[i]`` is True.

        A residual moved in place (:meth:`moved`) drifts from ``A u - f`` by float32 round-off,
        ~1e-7 ``||f||``: negligible until ``||A u - f||`` itself is that small, where the
        solvers' δ test must not rest on it. ``rows`` lets a solver confirm some samples' δ while
        the others go on from their own residual, as they would in a batch without those samples."""
        if self.residual_is_exact(u):
            r = self.residual(u)
        elif rows is None or all(rows):
            self._cache_u = None  # residual() recomputes it
            r = self.residual(u)
        else:
            moved = self.residual(u)
            r = self.op.forward(u) - self.f
            keep = torch.tensor([not x for x in rows], device=r.device).view(-1, *([1] * (r.dim() - 1)))
            self._cache_r = torch.where(keep, moved, r)  # the cache stays u's (not exact in every row)
        return torch.linalg.vector_norm(_rows(r), dim=1, dtype=torch.float64)

    def discrepancy(self, u: torch.Tensor) -> torch.Tensor:
        """``||A u - f||`` per sample, shape ``(B,)`` float64: squares summed in float64, so data
        in tiny units (``|r| < 1e-19``, whose float32 squares underflow) do not read 0."""
        return torch.linalg.vector_norm(_rows(self.residual(u)), dim=1, dtype=torch.float64)

    def value(self, u):
        # vector_norm with a float64 accumulator: one pass, relative error ~1e-14 (the
        # solver's round-off guard compares consecutive energies, so this precision matters)
        n = torch.linalg.vector_norm(_rows(self.residual(u)), dim=1, dtype=torch.float64)
        return 0.5 * n * n

    def grad(self, u):
        return self.op.adjoint(self.residual(u))

    def value_host(self, u: torch.Tensor) -> float:
        """:meth:`value` of a batch of one as a host float, the same float64 arithmetic (for
        loops that want the number, not a tensor: two tensor operations fewer per call)."""
        if type(self).value is not DataFidelity.value:  # a subclass's own energy is the energy
            return self.value(u).item()
        n = torch.linalg.vector_norm(_rows(self.residual(u)), dim=1, dtype=torch.float64).item()
        return 0.5 * n * n

    def line_host(self, u: torch.Tensor, d: torch.Tensor, rad: Optional[float] = None) -> Tuple[float, float]:
        """:meth:`along`'s ``(<r, A d>, ||A d||^2)`` for a batch of one, as host floats.

        The same products as :func:`fast_dot` and the same state for :meth:`moved`; ``rad``,
        when known, is passed through.
        """
        if type(self).along is not DataFidelity.along:  # a subclass's own line
            a1, a2 = self.along(u, d, None, rad=rad).quadratic  # type: ignore[attr-defined]
            return float(a1), float(a2)
        r = self.residual(u)
        ad = self.op.forward(d)
        self._line = (u, d, r, ad)
        return (fast_dot_host(r, ad) if rad is None else rad), fast_dot_host(ad, ad)

    def along(self, u, d, e0=None, rad=None):
        """Closed form ``1/2||r||^2 + tau <r, A d> + tau^2/2 ||A d||^2`` with ``r = A u - f``.

        ``rad = <r, A d>`` may be passed when known: for ``d = grad E(u) = A^T r`` it is
        ``||grad E(u)||^2``, which the solver already has (saves a pass over the data).
        """
        r = self.residual(u)
        ad = self.op.forward(d)
        self._line = (u, d, r, ad)
        if rad is None:
            rad = fast_dot(r, ad)
        adad = fast_dot(ad, ad)
        # E(u) is needed only if the line is evaluated on the device (callers with the closed
        # form's coefficients use them on the host): computed lazily, from ``r`` as it is now.
        base = [e0]

        def line(tau: torch.Tensor) -> torch.Tensor:
            if base[0] is None:
                base[0] = 0.5 * dot(r, r)
            return base[0] + tau * rad + 0.5 * tau * tau * adad

        line.quadratic = (rad, adad)  # type: ignore[attr-defined]  # phi(t) = e0 + a1 t + a2 t^2 / 2
        return line

    def moved(self, u_new: torch.Tensor, u: torch.Tensor, d: torch.Tensor, tau: "torch.Tensor | float") -> bool:
        """Tell the energy ``u_new = u + tau d``: its residual becomes ``r + tau A d``, no new ``A u``.

        Reads neither ``u_new`` nor ``d`` (the solver calls it before it writes ``u_new``, which
        may be ``d``'s memory): ``u_new`` is kept by identity, as the tensor the residual is of.

        ``tau``: per-sample steps ``(B,)``, or one float for a batch of one (a new tensor, not
        in place: an operator such as the identity may hand ``r`` back as the gradient). Returns
        True when the residual was updated this way, so ``E(u_new)`` is the line's closed form at
        ``tau``; False when the next use recomputes ``A u_new - f`` exactly (every
        ``REFRESH_EVERY`` steps, or when ``d`` was not the last line's direction).
        """
        if self._line is None or self._line[0] is not u or self._line[1] is not d:
            return False
        _, _, r, ad = self._line
        self._line = None
        self._updates += 1
        if self._updates % self.REFRESH_EVERY == 0 or self._cache_u is not u:
            return False
        # ``A d`` is not needed after this: the new residual is built in its memory where the
        # operator's outputs are new tensors (two memory streams instead of three).
        out = ad if self.op.returns_new else None
        if isinstance(tau, float):
            self._cache_r = torch.add(r, ad, alpha=tau, out=out)
        else:
            self._cache_r = torch.addcmul(r, _bcast(tau.to(r.dtype), r), ad, out=out)
        self._cache_u, self._cache_version = u_new, None  # the solver writes u_new next; pinned at first use
        self._exact = False
        return True

    def describe(self):
        return {"name": self.name, "operator": self.op.describe()}


def image_gradient(u: torch.Tensor) -> torch.Tensor:
    """Forward differences with Neumann boundary; ``(B, H, W) -> (B, 2, H, W)``."""
    dx = torch.zeros_like(u)
    dy = torch.zeros_like(u)
    dy[..., :-1, :] = u[..., 1:, :] - u[..., :-1, :]
    dx[..., :, :-1] = u[..., :, 1:] - u[..., :, :-1]
    return torch.stack([dy, dx], dim=-3)


def image_gradient_adjoint(p: torch.Tensor) -> torch.Tensor:
    """Adjoint of :func:`image_gradient` (minus the divergence); ``(B, 2, H, W) -> (B, H, W)``."""
    py, px = p[..., 0, :, :], p[..., 1, :, :]
    out = torch.zeros_like(py)
    out[..., :-1, :] -= py[..., :-1, :]
    out[..., 1:, :] += py[..., :-1, :]
    out[..., :, :-1] -= px[..., :, :-1]
    out[..., :, 1:] += px[..., :, :-1]
    return out


class HuberTV(Energy):
    """Huber total variation ``R(u) = sum_pixels h_eps(|grad u|)`` (isotropic).

    ``h_eps(t) = t^2 / (2 eps)`` for ``t <= eps`` and ``t - eps/2`` otherwise; its gradient is
    ``(grad)^T (grad u / max(eps, |grad u|))``, Lipschitz with constant ``8 / eps``.
    Acts on the last two dimensions of ``u`` (``(B, H, W)``).
    """

    name = "huber_tv"
    grad_returns_new = True

    def __init__(self, eps: float = 0.01):
        if not eps > 0:
            raise ValueError(f"Huber eps must be > 0, got {eps}")
        self.eps = float(eps)
        self.lipschitz = 8.0 / self.eps

    def _mag(self, g: torch.Tensor) -> torch.Tensor:
        return torch.sqrt((g * g).sum(dim=-3))

    def value(self, u):
        m = self._mag(image_gradient(u))
        h = torch.where(m <= self.eps, m * m / (2 * self.eps), m - self.eps / 2)
        return _sum(h)

    def grad(self, u):
        g = image_gradient(u)
        m = self._mag(g).unsqueeze(-3)
        return image_gradient_adjoint(g / m.clamp_min(self.eps))

    def describe(self):
        return {"name": self.name, "eps": self.eps}


class SumEnergy(Energy):
    """``E = sum_i w_i E_i``; the line restriction uses each term's own (closed form) ``along``."""

    name = "sum"
    grad_returns_new = True  # sum(w_i grad_i) is a new tensor

    def __init__(self, terms: Sequence[Tuple[float, Energy]]):
        flat: List[Tuple[float, Energy]] = []
        for w, e in terms:
            if isinstance(e, SumEnergy):
                flat.extend((w * wi, ei) for wi, ei in e.terms)
            else:
                flat.append((w, e))
        self.terms = flat

    @property
    def lipschitz(self) -> Optional[float]:  # type: ignore[override]
        total = 0.0
        for w, e in self.terms:
            if e.lipschitz is None:
                return None
            total += abs(w) * e.lipschitz
        return total

    def value(self, u):
        return sum(w * e.value(u) for w, e in self.terms)

    def grad(self, u):
        return sum(w * e.grad(u) for w, e in self.terms)

    def along(self, u, d, e0=None):
        lines = [(w, e.along(u, d)) for w, e in self.terms]

        def line(tau):
            return sum(w * fn(tau) for w, fn in lines)

        quads = [getattr(fn, "quadratic", None) for _, fn in lines]
        if all(q is not None for q in quads):  # a sum of quadratics is quadratic
            line.quadratic = (  # type: ignore[attr-defined]
                sum(w * q[0] for (w, _), q in zip(lines, quads)),
                sum(w * q[1] for (w, _), q in zip(lines, quads)),
            )
        return line

    def moved(self, u_new, u, d, tau) -> bool:
        """Forward the step to the terms that track it; False: the sum has no closed-form value."""
        for _, e in self.terms:
            if hasattr(e, "moved"):
                e.moved(u_new, u, d, tau)
        return False

    def data_term(self) -> Optional[DataFidelity]:
        for _, e in self.terms:
            if isinstance(e, DataFidelity):
                return e
        return None

    def describe(self):
        return {"name": self.name, "terms": [{"weight": w, **e.describe()} for w, e in self.terms]}


def data_term_of(energy: Energy) -> Optional[DataFidelity]:
    """The :class:`DataFidelity` inside ``energy`` (itself, or a term of a sum), if any."""
    if isinstance(energy, DataFidelity):
        return energy
    if isinstance(energy, SumEnergy):
        return energy.data_term()
    return None
