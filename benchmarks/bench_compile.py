"""Benchmark: does ``torch.compile`` pay for the project's convolutional networks on CPU?

Every measurement runs in a fresh process (one thread, ``OMP_NUM_THREADS=1``) with its own
inductor cache folder, so a "cold" compile time is what a user's first run pays; "warm" reuses
the folder of the cold run (inductor's on-disk FX-graph cache), which is what later runs pay.

1. One forward pass, batch 1 at 256² and 512², and a batch of 4 x 256²:

   - ``edn``: the shipped direction network ``edn-sr-x4`` (loaded as ``solvers/learned.py`` does),
     the whole ``net(u, g, data)`` call (backbone + eq. 22 layer), its DnCNN backbone compiled
     (that is the part ``run_network`` evaluates, so it is what a flag would wrap);
   - ``gradncnn``: the shipped potential denoiser, ``D(x) = x - ∇g(x)`` (one forward and one
     backward pass), with its ``potential`` compiled.

   Eager NCHW, eager channels-last (the existing ``--channels-last``; edn only) and compiled
   calls are interleaved and the median per call is reported; the compiled object's first call
   (tracing + code generation + C++ compilation) is reported apart as the compile time; the
   output difference is the maximum absolute difference compiled vs eager NCHW.
2. Changing shapes: one compiled backbone called on 256², 320², 384², then 256² again with
   ``dynamic=False`` (one static graph per shape; after ``torch._dynamo.config.recompile_limit``
   shapes dynamo falls back to eager) and ``dynamic=None`` (static first, then one graph with
   symbolic sizes): first-call time per size, graphs compiled, and the steady state at 384².
3. End to end, what ``edn sr --scale 4 examples/camera_lr_x4.tif -o /tmp/x.png --force --quiet``
   does, through the library (read, build the problem, ``solve(problem, "edn", options)``): the
   default run (the checkpoint's 3 network steps) and a 15-step run (``--min-iter 15``), eager,
   eager channels-last, compiled with a cold cache and compiled with a warm cache. The wall time
   of the whole process (imports included) and of ``solve`` (network loading and compilation
   included).

Usage::

    OMP_NUM_THREADS=1 python benchmarks/bench_compile.py --max-autotune --out /tmp/results_compile.json

Result (2026-11-23, 2-core AMD EPYC): it does not pay; see "torch.compile for the networks (CPU)"
in BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


# ------------------------------------------------------------------------------ worker side
def _timed(fn) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def _compile(module_or_fn, spec: dict):
    import torch

    kwargs = {"dynamic": spec.get("dynamic", False)}
    if spec.get("mode"):
        kwargs["mode"] = spec["mode"]
    return torch.compile(module_or_fn, **kwargs)


def _edn_pass(spec: dict) -> dict:
    import torch

    from edncli.networks.inference import InferenceConfig
    from edncli.solvers.learned import load_learned

    B, H, W = spec["shape"]
    gen = torch.Generator().manual_seed(0)
    u, g, data = (torch.rand(B, H, W, generator=gen) for _ in range(3))
    g = g - 0.5
    eager, _ = load_learned("edn", "edn-sr-x4", "cpu")
    last, _ = load_learned("edn", "edn-sr-x4", "cpu")
    last.to(memory_format=torch.channels_last)
    last.inference = InferenceConfig(channels_last=True)
    compiled, _ = load_learned("edn", "edn-sr-x4", "cpu")
    compiled.backbone = _compile(compiled.backbone, spec)
    calls = {"eager": lambda: eager(u, g, data), "eager_channels_last": lambda: last(u, g, data), "compiled": lambda: compiled(u, g, data)}
    with torch.no_grad():
        return _measure(calls, spec["repeat"])


def _gradncnn_pass(spec: dict) -> dict:
    import torch

    from edncli.networks.potentials import load_denoiser

    B, H, W = spec["shape"]
    x = torch.rand(B, H, W, generator=torch.Generator().manual_seed(0))
    eager, _ = load_denoiser("gradncnn", "cpu")
    compiled, _ = load_denoiser("gradncnn", "cpu")
    compiled.potential = _compile(compiled.potential, spec)  # the instance attribute shadows the method
    return _measure({"eager": lambda: eager.denoise(x), "compiled": lambda: compiled.denoise(x)}, spec["repeat"])


def _measure(calls: dict, repeat: int) -> dict:
    """Warm every eager call, time the compiled call's first call, then interleave ``repeat`` rounds."""
    outputs = {name: fn() for name, fn in calls.items() if name != "compiled"}
    compile_s = _timed(lambda: outputs.__setitem__("compiled", calls["compiled"]()))
    times = {name: [] for name in calls}
    for _ in range(repeat):
        for name, fn in calls.items():
            times[name].append(_timed(fn))
    row = {f"{name}_ms": 1e3 * statistics.median(ts) for name, ts in times.items()}
    row["compile_s"] = compile_s
    row["max_abs_diff"] = float((outputs["compiled"] - outputs["eager"]).abs().max())
    row["output_max_abs"] = float(outputs["eager"].abs().max())
    return row


def _shapes(spec: dict) -> dict:
    import torch
    import torch._dynamo
    from torch._dynamo.utils import counters

    from edncli.solvers.learned import load_learned

    net, _ = load_learned("edn", "edn-sr-x4", "cpu")
    eager = net.backbone
    compiled = torch.compile(eager, dynamic=spec["dynamic"])
    first = []
    with torch.no_grad():
        for side in spec["sides"]:
            x = torch.rand(1, 3, side, side, generator=torch.Generator().manual_seed(side))
            before = counters["stats"]["unique_graphs"]
            first.append({"side": side, "first_call_s": _timed(lambda: compiled(x)), "new_graphs": counters["stats"]["unique_graphs"] - before})
        side = spec["steady_side"]
        x = torch.rand(1, 3, side, side, generator=torch.Generator().manual_seed(1))
        e, c = [], []
        for _ in range(spec["repeat"]):
            e.append(_timed(lambda: eager(x)))
            c.append(_timed(lambda: compiled(x)))
    return {"calls": first, "graphs": counters["stats"]["unique_graphs"], "steady_side": side,
            "eager_ms": 1e3 * statistics.median(e), "compiled_ms": 1e3 * statistics.median(c)}


def _end_to_end(spec: dict) -> dict:
    """What ``edn sr --scale 4 <lr> -o <out> --force --quiet`` does, with the backbone compiled or not."""
    import torch

    import edncli.solvers.learned as learned
    from edncli.io.images import read_image
    from edncli.networks.inference import InferenceConfig
    from edncli.operators.downsample import make_sr_operator, upsample
    from edncli.solvers.methods import MethodOptions, Problem, solve
    from edncli.solvers.stopping import choose_delta

    load = learned.load_learned

    def load_compiled(kind, name, device):
        net, meta = load(kind, name, device)
        net.backbone = torch.compile(net.backbone, dynamic=False)
        return net, meta

    if spec["variant"] == "compiled":
        learned.load_learned = load_compiled  # solve_edn looks the loader up in its module
    t = time.perf_counter()
    arr, _ = read_image(str(ROOT / "examples/camera_lr_x4.tif"))
    f = torch.from_numpy(arr[None].astype("float32"))
    scale = 4
    op = make_sr_operator((f.shape[-2] * scale, f.shape[-1] * scale), scale, "average")
    u0 = upsample(f, scale, "bicubic")
    delta = choose_delta("auto", None, 1.0, int(f[0].numel()), f.numpy())
    problem = Problem(op=op, f=f, u0=u0, delta=delta, task="sr")
    options = MethodOptions(min_iter=spec["min_iter"], inference=InferenceConfig(channels_last=spec["variant"] == "channels_last"))
    result = solve(problem, "edn", options)
    solve_s = time.perf_counter() - t
    return {"solve_s": solve_s, "iterations": result.iterations, "energy_monotone": result.energy_monotone,
            "delta_reached": result.delta_reached, "u_sum": float(result.u.double().sum())}


WORKERS = {"edn": _edn_pass, "gradncnn": _gradncnn_pass, "shapes": _shapes, "e2e": _end_to_end}


def _worker(spec: dict) -> None:
    import torch

    torch.set_num_threads(1)
    print(json.dumps(WORKERS[spec["worker"]](spec)))


# ------------------------------------------------------------------------------ driver side
def run_worker(spec: dict, cache_dir: str, timeout: float = 900) -> dict:
    """Run one measurement in a fresh process; adds its wall time (start-up and imports included)."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TORCHINDUCTOR_CACHE_DIR": cache_dir}
    t = time.perf_counter()
    try:
        out = subprocess.run([sys.executable, __file__, "--worker", json.dumps(spec)], capture_output=True, text=True,
                             env=env, timeout=timeout)
    except subprocess.TimeoutExpired:
        return {**spec, "error": f"timed out after {timeout:.0f} s"}
    wall = time.perf_counter() - t
    if out.returncode != 0:
        return {**spec, "error": (out.stderr.strip().splitlines() or ["?"])[-1]}
    row = {**spec, **json.loads(out.stdout.strip().splitlines()[-1]), "process_s": wall}
    print(json.dumps(row), flush=True)
    return row


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    ap.add_argument("--repeat", type=int, default=7, help="Interleaved timed rounds per case (median reported).")
    ap.add_argument("--max-autotune", action="store_true", help="Also try mode='max-autotune-no-cudagraphs' on edn 256².")
    ap.add_argument("--skip", default="", help="Comma-separated parts to skip: passes, shapes, e2e.")
    ap.add_argument("--out", type=Path, default=None)
    a = ap.parse_args()
    if a.worker:
        _worker(json.loads(a.worker))
        return
    skip = set(a.skip.split(",")) - {""}
    results: dict = {}
    with tempfile.TemporaryDirectory() as tmp:
        def cold() -> str:
            return tempfile.mkdtemp(dir=tmp)

        if "passes" not in skip:
            shapes = [(1, 256, 256), (1, 512, 512), (4, 256, 256)]
            results["passes"] = [run_worker({"worker": net, "shape": s, "repeat": a.repeat}, cold())
                                 for net in ("edn", "gradncnn") for s in shapes]
            if a.max_autotune:
                results["passes"].append(run_worker({"worker": "edn", "shape": (1, 256, 256), "repeat": a.repeat,
                                                     "mode": "max-autotune-no-cudagraphs"}, cold(), timeout=600))
        if "shapes" not in skip:
            results["shapes"] = [run_worker({"worker": "shapes", "dynamic": dyn, "sides": [256, 320, 384, 256],
                                             "steady_side": 384, "repeat": a.repeat}, cold()) for dyn in (False, None)]
        if "e2e" not in skip:
            rows = []
            for min_iter in (None, 15):
                for variant in ("eager", "channels_last"):
                    rows.append({**run_worker({"worker": "e2e", "variant": variant, "min_iter": min_iter}, cold()), "cache": "-"})
                cache = cold()
                for state in ("cold", "warm"):
                    rows.append({**run_worker({"worker": "e2e", "variant": "compiled", "min_iter": min_iter}, cache), "cache": state})
            results["e2e"] = rows
    if a.out:
        a.out.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
