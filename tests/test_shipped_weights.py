"""Every checkpoint shipped in ``weights/``: small enough for git, loads without executing code,
and has a model card whose sha256 is the file's and which says how it was trained."""

from __future__ import annotations

from pathlib import Path

import pytest

from edncli.io.checkpoints import read_metadata, sha256_of

WEIGHTS = Path(__file__).resolve().parents[1] / "weights"
SHIPPED = sorted(WEIGHTS.glob("*.safetensors"))


def test_weights_are_shipped():
    assert {"edn-sr-x4", "baseline-sr-x4", "edn-ct", "edn-deblur"} <= {p.stem for p in SHIPPED}


@pytest.mark.parametrize("path", SHIPPED, ids=[p.stem for p in SHIPPED])
def test_card_matches_checkpoint(path: Path):
    assert path.stat().st_size < 10 * 2**20
    card = path.with_suffix(".md").read_text()
    assert card.splitlines()[0] == f"# {path.stem}"
    assert f"sha256: `{sha256_of(path)}`" in card
    assert "edn train" in card
    meta = read_metadata(path)
    assert meta.get("task") and meta.get("arch")


@pytest.mark.parametrize("pair", ["large", "clean"])
def test_large_sr_pairs_run_with_their_guarantee_and_beat_their_baseline_without_noise(pair):
    # edn-sr-x4-large/-clean: one learned step from bicubic, then CG to the data; every step lowers
    # the energy, and on noise-free data the result explains f to round-off while the baseline of
    # the same backbone does not (the edn's data-consistency gain of BENCHMARKS.md's Set5 table).
    import numpy as np
    import torch

    from edncli.metrics import psnr
    from edncli.solvers.methods import MethodOptions, Problem, solve
    from edncli.solvers.stopping import DeltaChoice
    from edncli.tasks import TaskSpec
    from edncli.io.images import read_image, to_luminance

    arr, _ = read_image(Path(__file__).resolve().parents[1] / "examples" / "camera.png")
    x = torch.from_numpy(np.ascontiguousarray(to_luminance(arr, "full")[64:192, 64:192], dtype=np.float32))[None]
    spec = TaskSpec("sr", scale=4)
    op = spec.operator(tuple(x.shape[-2:]))
    f = op(x)
    u0 = spec.initial(op, f)
    problem = Problem(op=op, f=f, u0=u0, delta=DeltaChoice(1e-4, "given"), task="sr")
    res = solve(problem, "edn", MethodOptions(weights=f"edn-sr-x4-{pair}", max_iter=15))
    base = solve(problem, "baseline", MethodOptions(weights=f"baseline-sr-x4-{pair}"))
    assert res.energy_monotone and res.delta_reached and res.extra["learned_steps"] == 1
    assert float(torch.linalg.vector_norm(op(res.u) - f)) <= 1e-4 < float(torch.linalg.vector_norm(op(base.u) - f))
    assert psnr(res.u, x) > psnr(base.u, x) > psnr(u0, x) + 1.0
