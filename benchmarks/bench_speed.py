"""Speed to δ: time to reach ``||Au - f|| <= δ`` and PSNR there, every method side by side.

Part 1 runs ``edncli.evaluation.run_eval`` (the code behind ``edn eval sr|deblur|ct``) on each
task with every method and reports, per method, the mean wall time of ``solve`` (what ``edn
eval`` reports as ``time (s)``: checkpoint loading, the α search of ``tv`` and all iterations),
that time as a ratio to ``gd``'s in the same run, the mean iterations, how many images met δ,
and whether the recorded energy never rose. Tasks (DESIGN §4 "When to stop": every method stops
at δ = τ σ √m per image, learned methods after their minimum number of steps):

- ``sr``: x4 average pooling, noise σ = 0.01, init bicubic upsampling.
- ``deblur``: Gaussian blur σ = 1.6, 25x25, reflect boundary, noise σ = 0.01, init the blurred image.
- ``ct``: parallel beam, ``--ct-angles`` over 180°, images centre-cropped and resized to
  ``--ct-size``², noise ``--ct-noise`` in sinogram units (default 0.1, the ``edn eval ct``
  default: about 0.2% of ``||f||``, and FBP's residual is ~3.5x δ, so δ is not met at the start).

A method without a shipped checkpoint for a task (``baseline`` for deblur and CT) is listed as
skipped. Before the timed run every method except ``tv`` runs 2 iterations once (untimed), so
imports, first-call allocations and the CT matrix cache do not land on the first image.

Part 2 splits one iteration of ``gd`` and ``edn`` (SR and CT, first image) into network,
operator (``A``/``Aᵀ`` outside the line search), line search (the extra ``A d`` that
``DataFidelity.along`` makes for the closed-form line restriction) and the rest (bookkeeping:
the solver's arithmetic, norms, float64 inner products, the monotonicity check, the trace).
Nothing in the library is changed: the operator's ``forward``/``adjoint`` are wrapped on the
instance, the network is timed with global module forward hooks (outermost module only), and
counting starts at the solver's iteration-0 callback. Iteration time is the trace's
``time_s[last] - time_s[0]``. Runs are a fixed number of iterations without δ (gd on average
pooling converges in one step and stops, so its solve is repeated until ``--profile-iterations``
iterations have been timed). The target of issue 6 is bookkeeping under 10% of an iteration.

    python benchmarks/bench_speed.py --images ../shared/data/set12 --limit 3 --threads 1 \\
        --json benchmarks/results_speed.json

``--device cuda`` runs the same on a GPU (timers synchronise the device).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import sys
import time
from pathlib import Path
from typing import Dict, List, Optional

import torch

from edncli.evaluation import EvalConfig, prepare_image, run_eval, simulate
from edncli.io.images import IMAGE_SUFFIXES, read_image
from edncli.solvers.learned import DEFAULT_WEIGHTS
from edncli.solvers.methods import MethodOptions, Problem, solve
from edncli.tasks import TaskSpec

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "set12"
METHODS = "gd,cg,tv,red,pnp,potential,edn,baseline"
#: Shipped checkpoint per (method, task) for the learned methods that need one per task.
TASK_WEIGHTS = DEFAULT_WEIGHTS


def task_config(task: str, args, methods: List[str]) -> EvalConfig:
    """The ``EvalConfig`` that ``edn eval <task>`` builds with this script's settings."""
    if task == "sr":
        spec = TaskSpec("sr", scale=4, downsampler="average")
        return EvalConfig(spec=spec, methods=methods, noise_sigma=args.noise_sigma, seed=args.seed,
                          max_iter=args.max_iter, border=4, limit=args.limit)
    if task == "deblur":
        spec = TaskSpec("deblur", kernel_sigma=(1.6, 1.6), kernel_size=25, boundary="reflect")
        return EvalConfig(spec=spec, methods=methods, noise_sigma=args.noise_sigma, seed=args.seed,
                          max_iter=args.max_iter, border=4, limit=args.limit, kernel_sigma=1.6)
    spec = TaskSpec("ct", angles=args.ct_angles)
    return EvalConfig(spec=spec, methods=methods, noise_sigma=args.ct_noise, seed=args.seed,
                      max_iter=args.max_iter, border=0, limit=args.limit, size=args.ct_size)


def available(method: str, task: str) -> Optional[str]:
    """``None`` when ``method`` can run on ``task``, else why not (no shipped checkpoint)."""
    name = TASK_WEIGHTS.get((method.split(":")[0], task))
    if name is None or ":" in method:
        return None
    from edncli.errors import CheckpointError
    from edncli.io.weights import resolve_weights

    try:
        resolve_weights(name)
    except CheckpointError:
        return f"no shipped checkpoint {name}"
    return None


# -- part 1: time to δ ---------------------------------------------------------------------------


def method_cap(method: str, task: str, max_iter: Optional[int]) -> Optional[int]:
    """The iteration cap a method runs under in ``run_eval`` (red/pnp/potential keep their preset's
    unless ``--max-iter`` is given)."""
    name = method.split(":")[0]
    if name == "baseline":
        return 1
    if name in ("red", "pnp", "potential") and max_iter is None:
        from edncli.solvers.potential import PRESETS

        return PRESETS.get(task, PRESETS["deblur"])[name].max_iter
    return 300 if max_iter is None else max_iter


def speed_table(task: str, files: List[Path], args, device) -> dict:
    wanted = [m.strip() for m in args.methods.split(",") if m.strip()]
    skipped = {m: why for m in wanted if (why := available(m, task))}
    methods = [m for m in wanted if m not in skipped]
    cfg = task_config(task, args, methods)
    # Warm-up (untimed): 2 iterations of every method but tv on the first image.
    warm = task_config(task, args, [m for m in methods if m != "tv"])
    warm.iterations, warm.limit = 2, 1
    run_eval(files, warm, device)
    doc = run_eval(files, cfg, device, progress=None if args.quiet else (lambda m: print(f"  [{task}] {m}", file=sys.stderr)))
    gd_time = doc["methods"]["gd"]["mean"]["time_s"] if "gd" in doc["methods"] else None
    out = {}
    for m in methods:
        rows = [r for r in doc["rows"] if r["method"] == m]
        mean = doc["methods"][m]["mean"]
        cap = method_cap(m, task, args.max_iter)
        missed = [r for r in rows if r["delta_reached"] is False]
        out[m] = {
            "cap": cap,
            "missed_at_cap": sum(cap is not None and r["iterations"] >= cap for r in missed),
            "missed_before_cap": sum(cap is not None and r["iterations"] < cap for r in missed),
            "time_s": mean["time_s"],
            "ratio_to_gd": mean["time_s"] / gd_time if gd_time else None,
            "psnr": mean["psnr"],
            "psnr_init": sum(r["psnr_init"] for r in rows) / len(rows),
            "ssim": mean["ssim"],
            "iterations": mean["iterations"],
            "delta_reached": sum(r["delta_reached"] is True for r in rows),
            "images": len(rows),
            "energy_monotone": sum(bool(r["energy_monotone"]) for r in rows),
        }
    return {"task": task, "protocol": doc["protocol"], "spec": doc["task"], "methods": out, "skipped": skipped,
            "rows": doc["rows"]}


def format_speed(res: dict, max_iter: int) -> str:
    lines = [
        "| method | time to δ (s) | × gd | ms/iter | PSNR at stop (dB) | PSNR start | iterations (cap) | δ reached | "
        "energy monotone |",
        "|---|---:|---:|---:|---:|---:|---:|---|---|",
    ]
    for m, r in res["methods"].items():
        ratio = "–" if r["ratio_to_gd"] is None else f"{r['ratio_to_gd']:.1f}"
        n = r["images"]
        per_it = f"{1e3 * r['time_s'] / r['iterations']:.1f}" if r["iterations"] else "–"
        reached = f"{r['delta_reached']}/{n}"
        why = [f"{r['missed_at_cap']} at cap"] * bool(r["missed_at_cap"]) + [f"{r['missed_before_cap']} stopped early"] * bool(
            r["missed_before_cap"])
        if why:
            reached += f" (missed: {', '.join(why)})"
        lines.append(
            f"| {m} | {r['time_s']:.3f} | {ratio} | {per_it} | {r['psnr']:.2f} | {r['psnr_init']:.2f} | "
            f"{r['iterations']:.1f} ({r['cap']}) | {reached} | {r['energy_monotone']}/{n} |"
        )
    for m, why in res["skipped"].items():
        lines.append(f"| {m} | skipped: {why} | | | | | | | |")
    return "\n".join(lines)


# -- part 2: per-iteration cost split -------------------------------------------------------------


class Split:
    """Accumulates seconds per part while ``on``; operator and network timers are installed on demand."""

    def __init__(self, device):
        self.cuda = torch.device(device).type == "cuda"
        self.on = False
        self.t = {"network": 0.0, "operator": 0.0, "line_search": 0.0}
        self.calls = {"network": 0, "operator": 0, "line_search": 0}
        self._net_depth = 0
        self._net_t0 = 0.0
        self._op_depth = 0

    def now(self) -> float:
        if self.cuda:
            torch.cuda.synchronize()
        return time.perf_counter()

    def wrap_operator(self, op) -> None:
        """Time ``op.forward``/``op.adjoint`` (instance attributes shadow the class methods)."""
        for name in ("forward", "adjoint"):
            inner = getattr(op, name)

            def timed(x, _inner=inner, _name=name):
                if not self.on or self._op_depth:
                    return _inner(x)
                # The A d of DataFidelity.along is the line search's (closed-form restriction).
                part = "line_search" if _name == "forward" and sys._getframe(1).f_code.co_name == "along" else "operator"
                self._op_depth += 1
                t0 = self.now()
                try:
                    return _inner(x)
                finally:
                    self.t[part] += self.now() - t0
                    self.calls[part] += 1
                    self._op_depth -= 1

            setattr(op, name, timed)

    def install_network_hooks(self):
        def pre(module, inputs):
            if self.on and self._net_depth == 0:
                self._net_t0 = self.now()
            self._net_depth += 1

        def post(module, inputs, output):
            self._net_depth -= 1
            if self.on and self._net_depth == 0:
                self.t["network"] += self.now() - self._net_t0
                self.calls["network"] += 1

        return (torch.nn.modules.module.register_module_forward_pre_hook(pre),
                torch.nn.modules.module.register_module_forward_hook(post))

    def reset(self):
        for k in self.t:
            self.t[k] = 0.0
            self.calls[k] = 0


def profile_case(task: str, method: str, files: List[Path], args, device) -> dict:
    cfg = task_config(task, args, [method])
    arr, _ = read_image(files[0])
    x = torch.from_numpy(prepare_image(arr, cfg))[None].to(device)
    op, f = simulate(x, cfg, 0, device, {})
    op.sqnorm(device=device)  # the cached norm is set-up, not iteration
    u0 = cfg.spec.initial(op, f)
    split = Split(device)
    split.wrap_operator(op)
    handles = split.install_network_hooks()
    n = args.profile_iterations
    iters = 0
    loop_s = 0.0
    runs = 0
    try:
        # warm-up run (untimed), then timed runs until n iterations have been measured
        solve(Problem(op=op, f=f, u0=u0, delta=None, task=task), method, MethodOptions(max_iter=3, min_iter=3))
        split.reset()
        while iters < n:

            def callback(rec):
                if rec.iter == 0:
                    split.on = True  # start counting after the set-up and iteration 0's record

            res = solve(Problem(op=op, f=f, u0=u0, delta=None, task=task), method,
                        MethodOptions(max_iter=n - iters, min_iter=n - iters), callback)
            split.on = False
            k = res.trace[-1].iter
            loop_s += res.trace[-1].time_s - res.trace[0].time_s
            iters += k
            runs += 1
            if k == 0:
                break
    finally:
        split.on = False
        for h in handles:
            h.remove()
    iters = max(iters, 1)
    parts = {k: v / iters for k, v in split.t.items()}
    total = loop_s / iters
    parts["bookkeeping"] = total - sum(parts.values())
    return {
        "task": task, "method": method, "iterations": iters, "solves": runs, "ms_per_iter": 1e3 * total,
        "parts_ms": {k: 1e3 * v for k, v in parts.items()},
        "parts_pct": {k: 100 * v / total if total > 0 else 0.0 for k, v in parts.items()},
        "calls_per_iter": {k: v / iters for k, v in split.calls.items()},
        "image": Path(files[0]).name,
    }


def format_split(rows: List[dict]) -> str:
    lines = [
        "| case | iterations (solves) | ms/iter | network | operator (A, Aᵀ) | line search (A d) | bookkeeping |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        ms, pct, calls = r["parts_ms"], r["parts_pct"], r["calls_per_iter"]

        def cell(k, show_calls=True):
            c = f", {calls[k]:.2f} calls" if show_calls and k in calls else ""
            return f"{ms[k]:.2f} ms ({pct[k]:.1f}%{c})"

        lines.append(
            f"| {r['task']} {r['method']} | {r['iterations']} ({r['solves']}) | {r['ms_per_iter']:.2f} | {cell('network')} | "
            f"{cell('operator')} | {cell('line_search')} | {cell('bookkeeping', False)} |"
        )
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", default=str(DATA), help="folder of clean images (default: shared set12)")
    ap.add_argument("--limit", type=int, default=3, help="first N images (sorted by name)")
    ap.add_argument("--tasks", default="sr,deblur,ct")
    ap.add_argument("--methods", default=METHODS)
    ap.add_argument("--noise-sigma", type=float, default=0.01, help="SR and deblur noise σ")
    ap.add_argument("--ct-noise", type=float, default=0.1, help="CT noise σ (sinogram units)")
    ap.add_argument("--ct-size", type=int, default=128)
    ap.add_argument("--ct-angles", type=int, default=90)
    ap.add_argument("--max-iter", type=int, default=None,
                    help="iteration cap when stopping at δ (default 300; red/pnp/potential: their preset's)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--profile-iterations", type=int, default=30, help="iterations timed per split case (0: skip)")
    ap.add_argument("--profile-tasks", default="sr,ct")
    ap.add_argument("--threads", type=int, default=1, help="torch intra-op threads (default 1: the machine is shared)")
    ap.add_argument("--device", default="cpu", help="cpu (default) or cuda")
    ap.add_argument("--json", dest="json_out", default=None, help="write all results to this JSON file")
    ap.add_argument("--quiet", action="store_true")
    args = ap.parse_args()

    if args.device.startswith("cuda") and not torch.cuda.is_available():
        ap.error("--device cuda: CUDA is not available here")
    device = torch.device(args.device)
    torch.set_num_threads(args.threads)
    files = sorted(p for p in Path(args.images).iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)[: args.limit]
    if not files:
        ap.error(f"no images in {args.images}")

    started = time.perf_counter()
    machine = {
        "platform": platform.platform(), "processor": platform.processor() or platform.machine(),
        "torch": torch.__version__, "threads": torch.get_num_threads(), "device": str(device),
        "gpu": torch.cuda.get_device_name(device) if device.type == "cuda" else None,
        "date": datetime.datetime.now().isoformat(timespec="seconds"),
        "loadavg_start": [round(x, 2) for x in os.getloadavg()],
    }
    print(f"machine: {machine['processor']}, torch {machine['torch']}, threads {machine['threads']}, device {device}"
          + (f" ({machine['gpu']})" if machine["gpu"] else ""))
    print(f"images: {', '.join(p.name for p in files)}; load average {machine['loadavg_start']}")
    doc: Dict[str, object] = {"machine": machine, "command": " ".join(sys.argv), "speed": {}, "split": []}

    for task in [t.strip() for t in args.tasks.split(",") if t.strip()]:
        t0 = time.perf_counter()
        res = speed_table(task, files, args, device)
        doc["speed"][task] = res  # type: ignore[index]
        print(f"\n### {task} (δ = τσ√m per image; run {time.perf_counter() - t0:.0f} s)\n")
        print(format_speed(res, args.max_iter))

    if args.profile_iterations > 0:
        rows = []
        for task in [t.strip() for t in args.profile_tasks.split(",") if t.strip()]:
            for method in ("gd", "edn"):
                rows.append(profile_case(task, method, files, args, device))
        doc["split"] = rows
        print("\n### Per-iteration cost split (fixed iterations, no δ; first image)\n")
        print(format_split(rows))

    doc["total_s"] = time.perf_counter() - started
    machine["loadavg_end"] = [round(x, 2) for x in os.getloadavg()]
    print(f"\ntotal {doc['total_s']:.0f} s; load average (1, 5, 15 min) at start {machine['loadavg_start']}, "
          f"at end {machine['loadavg_end']}")
    if args.json_out:
        Path(args.json_out).write_text(json.dumps(doc, indent=2) + "\n")


if __name__ == "__main__":
    main()
