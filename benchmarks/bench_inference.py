"""Benchmark: tiled and mixed-precision network evaluation (``--tile``, ``--precision``, ``--channels-last``).

1. One pass of the shipped ``edn-sr-x4`` direction network (backbone + eq. 22 layer) on a
   ``--size``² image, whole vs tiled, fp32 vs bf16: wall time and peak resident memory of a fresh
   process (``ru_maxrss``; tracemalloc does not see torch's allocations), minus the same
   process's memory after start-up and a warm-up pass on a 64² image.
2. ``edn sr --scale 4 examples/camera_lr_x4.tif`` with ``--precision fp32`` vs ``bf16`` (and
   tiled): PSNR against ``examples/camera.png``, iterations, energy monotone.

Usage::

    OMP_NUM_THREADS=1 python benchmarks/bench_inference.py --size 1024 --tile 256 --out benchmarks/results_inference.json
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

PASS = r"""
import json, resource, sys, time
import torch
torch.set_num_threads(1)
from edncli.networks.inference import InferenceConfig
from edncli.solvers.learned import load_learned
size, tile, overlap, precision, channels_last = int(sys.argv[1]), sys.argv[2], int(sys.argv[3]), sys.argv[4], sys.argv[5] == "1"
net, meta = load_learned("edn", "edn-sr-x4", "cpu")
cfg = InferenceConfig(tile=None if tile == "none" else int(tile), tile_overlap=overlap, precision=precision, channels_last=channels_last)
if channels_last:
    net.to(memory_format=torch.channels_last)
net.inference = cfg
with torch.no_grad():
    small = torch.rand(1, 64, 64)
    net(small, small - 0.5, small)
base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
gen = torch.Generator().manual_seed(0)
u, g, data = torch.rand(1, size, size, generator=gen), torch.rand(1, size, size, generator=gen) - 0.5, torch.rand(1, size, size, generator=gen)
with torch.no_grad():
    t = time.perf_counter()
    d = net(u, g, data)
    elapsed = time.perf_counter() - t
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(json.dumps({"time_s": elapsed, "peak_rss_mib": peak / 1024, "extra_rss_mib": (peak - base) / 1024}))
"""


def one_pass(size: int, tile, overlap: int, precision: str, channels_last: bool) -> dict:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    args = [str(size), "none" if tile is None else str(tile), str(overlap), precision, "1" if channels_last else "0"]
    out = subprocess.run([sys.executable, "-c", PASS, *args], capture_output=True, text=True, check=True, env=env)
    row = json.loads(out.stdout.strip().splitlines()[-1])
    return {"size": size, "tile": tile, "overlap": overlap if tile else None, "precision": precision, "channels_last": channels_last, **row}


def sr_run(extra: list) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        rep = Path(tmp) / "r.json"
        cmd = [sys.executable, "-m", "edncli", "sr", "--scale", "4", str(ROOT / "examples/camera_lr_x4.tif"), "-o",
               str(Path(tmp) / "out.tif"), "--reference", str(ROOT / "examples/camera.png"), "--report", str(rep), "-q", *extra]
        subprocess.run(cmd, check=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
        r = json.loads(rep.read_text())
    return {"options": " ".join(extra), "psnr": r["trace"][-1]["psnr"], "iterations": r["iterations"],
            "energy_monotone": r["energy_monotone"], "delta_reached": r["delta_reached"], "elapsed_s": r["elapsed_s"]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", type=int, default=1024)
    ap.add_argument("--tile", type=int, default=256)
    ap.add_argument("--overlap", type=int, default=32)
    ap.add_argument("--out", type=Path, default=None)
    a = ap.parse_args()
    passes = [
        one_pass(a.size, None, 0, "fp32", False),
        one_pass(a.size, a.tile, a.overlap, "fp32", False),
        one_pass(a.size, None, 0, "bf16", False),
        one_pass(a.size, None, 0, "fp32", True),
        one_pass(a.size, a.tile, a.overlap, "bf16", True),
    ]
    for row in passes:
        print(json.dumps(row))
    # Tiles just large enough for an exact result: overlap = receptive field - 1 (module doc of inference.py).
    from edncli.io.checkpoints import read_metadata
    from edncli.io.weights import resolve_weights
    from edncli.networks.direction import DirectionNetConfig

    rf = DirectionNetConfig.from_dict(read_metadata(resolve_weights("edn-sr-x4"))["arch"]).backbone.receptive_field
    tiled = ["--tile", str(rf - 1 + 64), "--tile-overlap", str(rf - 1)]
    runs = [sr_run(["--precision", "fp32"]), sr_run(["--precision", "bf16"]), sr_run(tiled)]
    for row in runs:
        print(json.dumps(row))
    if a.out:
        a.out.write_text(json.dumps({"passes": passes, "sr": runs}, indent=2) + "\n")


if __name__ == "__main__":
    main()
