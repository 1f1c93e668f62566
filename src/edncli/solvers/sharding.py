"""Sharding a batch of independent problems (the slices of a 3D scan) over ``torchrun`` ranks.

Launched as ``torchrun --nproc-per-node N ...``, every rank holds the whole batch's set-up (the
decisions that depend on all samples, such as δ from ``--delta auto`` or the rotation centre, are
made on the full data, so the result equals a single-process run), solves one contiguous chunk
of the batch (:func:`shard_bounds`), and rank 0 gathers the chunks into one
:class:`~edncli.solvers.trace.SolveResult` (:func:`merge_results`). Gloo runs on CPU, NCCL on
CUDA with one GPU per rank (``cuda:LOCAL_RANK``).

Failures never leave a rank waiting: work is done in *stages* (:meth:`ShardGroup.stage`) that
end with a collective vote; if any rank failed, every rank raises. Rank 0 raises the first
failure (by rank) so that it alone reports it; the other ranks raise :class:`PeerFailed`, which
carries the exit code and no message. Without ``torchrun`` (``WORLD_SIZE`` unset or 1) a
:class:`ShardGroup` is a group of one and every collective is a no-op.

The process group's timeout (``$EDN_DIST_TIMEOUT`` seconds, default 3600) bounds both the
start-up and any wait inside a collective, e.g. a rank that finished its chunk waiting for a
slower one.
"""

from __future__ import annotations

import datetime
import math
import os
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Callable, Dict, Iterator, List, Optional, Sequence, Tuple

import torch

from ..errors import DeviceError, EdnError, UsageError
from .trace import PER_SAMPLE_EXTRA, PER_SAMPLE_LOGS, IterationRecord, SolveResult

TIMEOUT_ENV = "EDN_DIST_TIMEOUT"
DEFAULT_TIMEOUT_S = 3600.0


class PeerFailed(Exception):
    """Raised on ranks other than 0 when a stage failed somewhere: rank 0 reports the error.

    Not an :class:`~edncli.errors.EdnError` on purpose: it carries only ``exit_code``, so the
    command line exits with that code without printing a second copy of rank 0's message.
    """

    def __init__(self, exit_code: int):
        super().__init__(f"another rank failed (exit code {exit_code})")
        self.exit_code = exit_code


class ShardError(EdnError):
    """An error met on a rank other than 0, raised again on rank 0 (which reports it)."""

    def __init__(self, message: str, exit_code: int):
        super().__init__(message)
        self.exit_code = exit_code


# ---------------------------------------------------------------------------- launch
@dataclass(frozen=True)
class Launch:
    """Where this process stands in a ``torchrun`` launch (``WORLD_SIZE``, ``RANK``, ``LOCAL_RANK``)."""

    world_size: int = 1
    rank: int = 0
    local_rank: int = 0

    @classmethod
    def from_env(cls, environ: Optional[Dict[str, str]] = None) -> "Launch":
        env = os.environ if environ is None else environ
        try:
            world = int(env.get("WORLD_SIZE", "1"))
            rank = int(env.get("RANK", "0"))
            local = int(env.get("LOCAL_RANK", str(rank)))
        except ValueError:
            raise UsageError(
                f"WORLD_SIZE/RANK/LOCAL_RANK must be integers, got {env.get('WORLD_SIZE')!r}/"
                f"{env.get('RANK')!r}/{env.get('LOCAL_RANK')!r}; start the command with torchrun"
            ) from None
        if world < 1 or not 0 <= rank < world or local < 0:
            raise UsageError(f"inconsistent torchrun environment: WORLD_SIZE={world}, RANK={rank}, LOCAL_RANK={local}")
        return cls(world, rank, local)

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @contextmanager
    def unanimous(self) -> Iterator[None]:
        """For checks that every rank makes alike before the group exists (arguments, options).

        An :class:`~edncli.errors.EdnError` is raised as is on rank 0 and as
        :class:`PeerFailed` elsewhere, so that the message is printed once.
        """
        try:
            yield
        except EdnError as err:
            if self.is_main:
                raise
            raise PeerFailed(err.exit_code) from err


def shard_bounds(n_items: int, parts: int) -> List[Tuple[int, int]]:
    """Split ``range(n_items)`` into ``parts`` contiguous chunks ``[lo, hi)`` of near-equal size.

    The first ``n_items % parts`` chunks hold one item more. Every chunk must be non-empty:
    more parts than items is a :class:`~edncli.errors.UsageError` naming the fix.
    """
    if parts < 1:
        raise ValueError(f"parts must be >= 1, got {parts}")
    if n_items < parts and parts > 1:
        raise UsageError(
            f"{parts} ranks for {n_items} slice(s): every rank needs at least one slice; "
            f"start torchrun with --nproc-per-node {max(n_items, 1)} or fewer, or select more slices with --slices"
        )
    base, rest = divmod(n_items, parts)
    bounds, lo = [], 0
    for i in range(parts):
        hi = lo + base + (1 if i < rest else 0)
        bounds.append((lo, hi))
        lo = hi
    return bounds


def rank_device(device: torch.device, launch: Launch) -> torch.device:
    """The device of this rank: ``cuda`` becomes ``cuda:LOCAL_RANK`` under torchrun (one GPU per rank)."""
    if device.type != "cuda" or not launch.distributed:
        return device
    if device.index is not None:
        raise UsageError(
            f"--device {device} under torchrun: each rank uses the GPU cuda:LOCAL_RANK; pass --device cuda or auto "
            "(and CUDA_VISIBLE_DEVICES to choose the GPUs)"
        )
    count = torch.cuda.device_count()
    if launch.local_rank >= count:
        raise DeviceError(
            f"LOCAL_RANK {launch.local_rank} needs GPU cuda:{launch.local_rank} but this node has {count}; "
            f"start torchrun with --nproc-per-node {count} or fewer"
        )
    return torch.device("cuda", launch.local_rank)


def dist_timeout_s() -> float:
    """``$EDN_DIST_TIMEOUT`` in seconds (default :data:`DEFAULT_TIMEOUT_S`); a usage error unless > 0."""
    raw = os.environ.get(TIMEOUT_ENV)
    if raw is None:
        return DEFAULT_TIMEOUT_S
    try:
        value = float(raw)
    except ValueError:
        value = float("nan")
    if not (value > 0 and math.isfinite(value)):
        raise UsageError(f"${TIMEOUT_ENV} must be a positive number of seconds, got {raw!r}")
    return value


# ---------------------------------------------------------------------------- the group
class ShardGroup:
    """The ranks of a launch as a context manager: starts the process group, ends it on exit.

    Gloo for a CPU ``device``, NCCL for CUDA (``device`` must be this rank's GPU, see
    :func:`rank_device`). A group that was already started by the caller is used and left alone.
    """

    def __init__(self, launch: Launch, device: torch.device, timeout_s: Optional[float] = None):
        self.launch = launch
        self.device = device
        self.timeout_s = dist_timeout_s() if timeout_s is None else timeout_s
        self.bounds: Optional[List[Tuple[int, int]]] = None
        self._owns_group = False

    @property
    def backend(self) -> str:
        return "nccl" if self.device.type == "cuda" else "gloo"

    def __enter__(self) -> "ShardGroup":
        if self.launch.distributed:
            import torch.distributed as dist

            if self.device.type == "cuda":
                torch.cuda.set_device(self.device)
            if not dist.is_initialized():
                dist.init_process_group(backend=self.backend, timeout=datetime.timedelta(seconds=self.timeout_s))
                self._owns_group = True
        return self

    def __exit__(self, *exc) -> None:
        if self._owns_group:
            import torch.distributed as dist

            dist.destroy_process_group()
            self._owns_group = False

    # -- agreement
    @contextmanager
    def stage(self) -> Iterator[None]:
        """Run the body on every rank, then vote; if it failed on any rank, it fails on all.

        Rank 0 raises the first failure (its own exception when it is the first, else a
        :class:`ShardError` naming the rank); other ranks raise :class:`PeerFailed`, except a
        rank whose own failure was not an :class:`~edncli.errors.EdnError` (a bug: its traceback
        is worth seeing), which raises its own exception.
        """
        if not self.launch.distributed:
            yield
            return
        try:
            yield
        except Exception as exc:
            self._vote(exc)
            raise
        self._vote(None)

    def _vote(self, exc: Optional[BaseException]) -> None:
        import torch.distributed as dist

        mine = None
        if exc is not None:
            code = exc.exit_code if isinstance(exc, EdnError) else 1
            text = str(exc) if isinstance(exc, EdnError) else f"{type(exc).__name__}: {exc}"
            mine = (code, text, isinstance(exc, EdnError))
        votes: List[Any] = [None] * self.launch.world_size
        dist.all_gather_object(votes, mine)
        failed = [(rank, v) for rank, v in enumerate(votes) if v is not None]
        if not failed:
            return
        first_rank, (code, text, _) = failed[0]
        if self.launch.is_main:
            if exc is not None and first_rank == 0:
                return  # the caller re-raises this rank's own exception
            raise ShardError(f"rank {first_rank}: {text}", code)
        if exc is not None and not isinstance(exc, EdnError):
            return
        raise PeerFailed(code)

    # -- work
    def shard(self, n_items: int) -> Tuple[int, int]:
        """This rank's chunk ``[lo, hi)`` of a batch of ``n_items`` (all of it without torchrun)."""
        self.bounds = shard_bounds(n_items, self.launch.world_size)
        return self.bounds[self.launch.rank]

    def solve(self, problem, method: str, options, callback: Optional[Callable[[IterationRecord], None]] = None) -> Optional[SolveResult]:
        """Solve this rank's chunk (``problem``) and gather: the merged result on rank 0, ``None`` elsewhere.

        Without torchrun this is :func:`~edncli.solvers.methods.solve`. ``callback`` sees only
        this rank's records.
        """
        from .methods import solve

        if not self.launch.distributed:
            return solve(problem, method, options, callback)
        if self.bounds is None:
            raise RuntimeError("ShardGroup.solve before ShardGroup.shard: the chunks are not known")
        import torch.distributed as dist

        with self.stage():
            result = solve(problem, method, options, callback)
            result.u = result.u.detach().cpu()
        gathered: Optional[List[Any]] = [None] * self.launch.world_size if self.launch.is_main else None
        dist.gather_object((result, str(self.device)), gathered, dst=0)
        if not self.launch.is_main:
            return None
        assert gathered is not None
        return merge_results([r for r, _ in gathered], self.bounds, devices=[d for _, d in gathered])

    def broadcast_exit_code(self, code: Optional[int]) -> int:
        """Rank 0's exit code, on every rank (``code`` is ignored elsewhere)."""
        if not self.launch.distributed:
            return int(code or 0)
        import torch.distributed as dist

        box = [int(code or 0) if self.launch.is_main else None]
        dist.broadcast_object_list(box, src=0)
        return int(box[0])  # type: ignore[arg-type]


# ---------------------------------------------------------------------------- merging
def _norm(values: Sequence[Optional[float]]) -> Optional[float]:
    if any(v is None for v in values):
        return None
    return math.sqrt(sum(float(v) ** 2 for v in values))  # type: ignore[arg-type]


def _weighted_mean(values: Sequence[Optional[float]], weights: Sequence[int]) -> Optional[float]:
    if any(v is None for v in values):
        return None
    return sum(float(v) * w for v, w in zip(values, weights)) / max(sum(weights), 1)  # type: ignore[arg-type]


def merge_traces(traces: Sequence[Sequence[IterationRecord]], sizes: Sequence[int]) -> List[IterationRecord]:
    """One trace for a batch from the traces of its chunks (``sizes[i]`` samples in chunk ``i``).

    Row ``k`` aggregates the chunks as one batch would (see :class:`IterationRecord`):
    ``energy`` is the sum, ``discrepancy`` and ``grad_norm`` the Euclidean norm over the chunks
    (square root of the summed squares), ``active`` the sum, ``backtracks`` and ``time_s`` the
    maximum, ``step`` the mean over the chunks weighted by their active samples, PSNR/SSIM (per
    image means) the mean weighted by ``sizes``. Rows run over the union of the chunks'
    iterations; a chunk that has stopped holds its last energy, discrepancy, gradient norm,
    PSNR/SSIM and time, with no active samples, no step and no backtracks, as its samples do in
    a single batch.
    """
    if len(traces) != len(sizes):
        raise ValueError(f"{len(traces)} traces for {len(sizes)} chunk sizes")
    live = [list(t) for t in traces if t]
    weights = [s for t, s in zip(traces, sizes) if t]
    if not live:
        return []
    iters = sorted({r.iter for t in live for r in t})
    pos = [0] * len(live)
    merged: List[IterationRecord] = []
    for k in iters:
        rows: List[Tuple[IterationRecord, bool, int]] = []  # (record, moving at k, chunk size)
        for i, t in enumerate(live):
            while pos[i] + 1 < len(t) and t[pos[i] + 1].iter <= k:
                pos[i] += 1
            rec = t[pos[i]]
            if rec.iter > k:  # this chunk has no row yet (traces all start at 0 in practice)
                continue
            rows.append((rec, rec.iter == k, weights[i]))
        recs = [r for r, _, _ in rows]
        moving = [(r, r.active) for r, m, _ in rows if m]
        step_weights = [a for _, a in moving]
        step = (
            sum(r.step * a for r, a in moving) / sum(step_weights)
            if sum(step_weights) > 0
            else (sum(r.step for r, _ in moving) / len(moving) if moving else 0.0)
        )
        sizes_k = [s for _, _, s in rows]
        merged.append(
            IterationRecord(
                iter=k,
                energy=float(sum(r.energy for r in recs)),
                discrepancy=_norm([r.discrepancy for r in recs]),
                grad_norm=float(_norm([r.grad_norm for r in recs]) or 0.0),
                step=float(step),
                backtracks=max((r.backtracks for r, m, _ in rows if m), default=0),
                time_s=max(r.time_s for r in recs),
                active=sum(r.active for r, m, _ in rows if m),
                psnr=_weighted_mean([r.psnr for r in recs], sizes_k) if any(r.psnr is not None for r in recs) else None,
                ssim=_weighted_mean([r.ssim for r in recs], sizes_k) if any(r.ssim is not None for r in recs) else None,
            )
        )
    return merged


def _merge_logs(logs: Sequence[List[dict]], sizes: Sequence[int]) -> List[dict]:
    """One log (:data:`PER_SAMPLE_LOGS`, e.g. tv's α search) from the chunks' logs: entry ``k``'s
    per-sample lists concatenated in batch order, ``None`` for the samples of a chunk whose log
    ended before ``k`` (its search had finished). The inverse of :meth:`SolveResult.split`'s slicing."""
    merged: List[dict] = []
    for k in range(max(len(log) for log in logs)):
        entry: Dict[str, Any] = {}
        keys = dict.fromkeys(name for log in logs if k < len(log) for name in log[k])
        for name in keys:
            parts = []
            for log, n in zip(logs, sizes):
                v = log[k].get(name) if k < len(log) else None
                parts.extend(v if isinstance(v, list) and len(v) == n else [None] * n)
            entry[name] = parts
        merged.append(entry)
    return merged


def merge_results(
    results: Sequence[SolveResult], bounds: Sequence[Tuple[int, int]], devices: Optional[Sequence[str]] = None
) -> SolveResult:
    """The result of the whole batch from the results of its chunks (``bounds[i]`` = ``[lo, hi)`` of chunk ``i``).

    ``u`` and the per-sample verdicts are concatenated in batch order, the traces merged by
    :func:`merge_traces`, ``elapsed_s`` is the slowest chunk's. ``extra`` keeps the entries
    that agree on all chunks, concatenates the per-sample ones (:data:`PER_SAMPLE_EXTRA`) and
    moves the others to each rank's entry; it gains ``world_size`` and ``ranks``: per rank its
    chunk (``slices``: ``[lo, hi)`` positions in the batch, i.e. indices into ``samples``),
    device, iterations and time.
    """
    if len(results) != len(bounds) or not results:
        raise ValueError(f"{len(results)} results for {len(bounds)} chunks")
    for r, (lo, hi) in zip(results, bounds):
        if len(r.samples) != hi - lo:
            raise ValueError(f"chunk [{lo}, {hi}) holds {len(r.samples)} samples")
    ranks: List[Dict[str, Any]] = [
        {
            "rank": i,
            "slices": [lo, hi],
            **({"device": devices[i]} if devices is not None else {}),
            "iterations": r.iterations,
            "elapsed_s": r.elapsed_s,
        }
        for i, (r, (lo, hi)) in enumerate(zip(results, bounds))
    ]
    extra: Dict[str, Any] = {}
    keys = list(dict.fromkeys(k for r in results for k in r.extra))
    for key in keys:
        values = [r.extra.get(key) for r in results]
        if key in PER_SAMPLE_EXTRA and all(isinstance(v, list) for v in values):
            extra[key] = [x for v in values for x in v]  # type: ignore[union-attr]
        elif key in PER_SAMPLE_LOGS and all(isinstance(v, list) for v in values):
            extra[key] = _merge_logs(values, [hi - lo for lo, hi in bounds])  # type: ignore[arg-type]
        elif all(v == values[0] for v in values[1:]):
            extra[key] = values[0]
        else:
            for entry, v in zip(ranks, values):
                entry.setdefault("extra", {})[key] = v
    extra["world_size"] = len(results)
    extra["ranks"] = ranks
    return SolveResult(
        u=torch.cat([r.u for r in results]),
        trace=merge_traces([r.trace for r in results], [hi - lo for lo, hi in bounds]),
        samples=[s for r in results for s in r.samples],
        method=results[0].method,
        elapsed_s=max(r.elapsed_s for r in results),
        extra=extra,
    )
