"""Tiled and mixed-precision network evaluation: exactness of the stitching, the descent-set
guarantee under any tiling and precision, and the CLI options and errors as a user meets them."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from edncli.errors import UsageError
from edncli.io.images import read_image
from edncli.networks.backbones import BackboneConfig, DnCNN
from edncli.networks.direction import BaselineNet, DirectionNet, DirectionNetConfig
from edncli.networks.inference import InferenceConfig, axis_windows, dihedral, dihedral_inverse, run_network

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


def _backbone(depth=5, width=8, cin=3, seed=0) -> DnCNN:
    """A random DnCNN whose last layer is not zero (the default init zeroes it)."""
    torch.manual_seed(seed)
    net = DnCNN(BackboneConfig(in_channels=cin, out_channels=1, depth=depth, width=width, batchnorm=False)).eval()
    torch.nn.init.normal_(net.body[-1].weight, std=0.2)
    return net


def _direction_net(depth=3, width=4, seed=0) -> DirectionNet:
    torch.manual_seed(seed)
    net = DirectionNet(DirectionNetConfig(backbone=BackboneConfig(depth=depth, width=width, batchnorm=False), layer="cone_ball"))
    torch.nn.init.normal_(net.backbone.body[-1].weight, std=0.5)
    return net.eval()


def _in_cone_ball(d, g, zeta1, zeta2, rtol=1e-4):
    gg = g.flatten(1).pow(2).sum(1).double()
    dg = (d * g).flatten(1).sum(1).double()
    dn = d.flatten(1).norm(dim=1).double()
    assert bool((dg >= zeta1 * gg * (1 - rtol)).all()), (dg, zeta1 * gg)
    assert bool((dn <= zeta2 * gg.sqrt() * (1 + rtol)).all()), (dn, zeta2 * gg.sqrt())


# ------------------------------------------------------------------------------ windows
def test_windows_are_positive_everywhere():
    for size in [*range(1, 50), 64, 65, 97, 100, 113, 130, 131, 200]:
        for tile in (5, 17, 32):
            for overlap in sorted({0, 1, tile // 2, tile - 1}):
                for radius in (2, 8):
                    total = torch.zeros(size, dtype=torch.float64)
                    for start, stop, w in axis_windows(size, tile, overlap, radius):
                        assert 0 <= start < stop <= size
                        total[start:stop] += w
                    assert bool((total > 0).all()), (size, tile, overlap, radius)


# ------------------------------------------------------------------------------ exactness
@pytest.mark.parametrize(
    "shape, tile",
    [((77, 53), 32), ((64, 64), 32), ((100, 41), 24), ((20, 13), 32), ((33, 200), 40), ((11, 11), 11)],
)
def test_tiled_equals_whole_when_overlap_covers_receptive_field(shape, tile):
    net = _backbone(depth=5)  # receptive field 11, radius 5
    x = torch.randn(2, 3, *shape)
    overlap = net.cfg.receptive_field - 1
    with torch.no_grad():
        whole = net(x)
        tiled = run_network(net, x, InferenceConfig(tile=tile, tile_overlap=overlap), net.cfg.receptive_field)
    assert tiled.shape == whole.shape and tiled.dtype == torch.float32
    assert float((tiled - whole).abs().max()) <= 1e-5 * float(whole.abs().max())


def test_smaller_overlap_is_close_not_exact():
    """overlap = receptive radius: the seams carry some zero-padding error (measured, bounded loosely)."""
    net = _backbone(depth=5)
    x = torch.randn(1, 3, 90, 70)
    with torch.no_grad():
        whole = net(x)
        tiled = run_network(net, x, InferenceConfig(tile=32, tile_overlap=5), net.cfg.receptive_field)
    rel = float((tiled - whole).abs().max() / whole.abs().max())
    assert 0 < rel < 0.5


def test_gradients_flow_through_tiles():
    net = _backbone(depth=3, width=4)
    x = torch.randn(1, 3, 40, 40, requires_grad=True)
    y = run_network(net, x, InferenceConfig(tile=16, tile_overlap=6), net.cfg.receptive_field)
    (gx,) = torch.autograd.grad(y.pow(2).sum(), x)
    x2 = x.detach().requires_grad_(True)
    (gw,) = torch.autograd.grad(net(x2).pow(2).sum(), x2)
    assert torch.allclose(gx, gw, atol=1e-5, rtol=1e-4)


def test_baseline_net_uses_tiles():
    torch.manual_seed(0)
    net = BaselineNet(BackboneConfig(in_channels=2, out_channels=1, depth=4, width=4, batchnorm=False)).eval()
    torch.nn.init.normal_(net.backbone.body[-1].weight, std=0.3)
    u0, data = torch.rand(1, 50, 45), torch.rand(1, 50, 45)
    with torch.no_grad():
        whole = net(u0, data)
        net.inference = InferenceConfig(tile=20, tile_overlap=8)
        tiled = net(u0, data)
    assert torch.allclose(whole, tiled, atol=1e-5)


# ------------------------------------------------------------------------------ the guarantee
@settings(max_examples=12, deadline=None)
@given(
    h=st.integers(6, 40),
    w=st.integers(6, 40),
    tile=st.integers(7, 40),
    overlap_frac=st.floats(0.0, 0.95),
    seed=st.integers(0, 2**16),
    precision=st.sampled_from(["fp32", "bf16"]),
)
def test_tiled_direction_is_in_the_descent_set(h, w, tile, overlap_frac, seed, precision):
    net = _direction_net()  # depth 3: receptive field 7
    net.inference = InferenceConfig(tile=tile, tile_overlap=int(overlap_frac * tile), precision=precision)
    gen = torch.Generator().manual_seed(seed)
    u, g, data = (torch.randn(2, h, w, generator=gen) for _ in range(3))
    g[1] *= 1e-3  # a small gradient too
    with torch.no_grad():
        d = net(u, g, data)
    assert d.dtype == torch.float32 and d.shape == u.shape
    _in_cone_ball(d, g, net.cfg.zeta1, net.cfg.zeta2)


def test_bf16_on_cpu_stays_in_set_and_close_to_fp32():
    net = _direction_net(depth=5, width=8, seed=3)
    gen = torch.Generator().manual_seed(0)
    u, g, data = (torch.rand(2, 48, 48, generator=gen) for _ in range(3))
    g = g - 0.5
    with torch.no_grad():
        z32, d32 = net.raw(u, g, data), net(u, g, data)
        net.inference = InferenceConfig(precision="bf16")
        z16, d16 = net.raw(u, g, data), net(u, g, data)
    assert z16.dtype == torch.float32
    _in_cone_ball(d16, g, net.cfg.zeta1, net.cfg.zeta2)
    assert float((z16 - z32).norm() / z32.norm()) < 0.03  # bf16 keeps ~3 significant digits
    assert float((d16 - d32).norm() / d32.norm()) < 0.03


# ------------------------------------------------------------------------------ self-ensemble
def test_dihedral_transforms_are_the_eight_symmetries_and_invert():
    x = torch.arange(2 * 3 * 4 * 5, dtype=torch.float32).view(2, 3, 4, 5)
    images = {tuple(dihedral(x, k).flatten().tolist()) + tuple(dihedral(x, k).shape) for k in range(8)}
    assert len(images) == 8  # all distinct (a non-symmetric input)
    for k in range(8):
        assert torch.equal(dihedral_inverse(dihedral(x, k), k), x)


def test_ensemble_averages_the_back_transformed_outputs():
    net = _backbone(depth=3, width=4, cin=3)
    x = torch.rand(2, 3, 20, 12, generator=torch.Generator().manual_seed(1))  # not square: rotations swap H, W
    with torch.no_grad():
        got = run_network(net, x, InferenceConfig(ensemble=8))
        want = sum(dihedral_inverse(net(dihedral(x, k).contiguous()), k) for k in range(8)) / 8
        plain = net(x)
    assert got.shape == plain.shape and torch.allclose(got, want, atol=1e-6)
    assert not torch.allclose(got, plain, atol=1e-4)  # a random network is not equivariant
    # an equivariant map (a pixelwise function of the channels) is its own ensemble
    pointwise = torch.nn.Conv2d(3, 1, 1)
    with torch.no_grad():
        assert torch.allclose(run_network(pointwise, x, InferenceConfig(ensemble=8)), pointwise(x), atol=1e-6)


@settings(max_examples=10, deadline=None)
@given(h=st.integers(6, 30), w=st.integers(6, 30), seed=st.integers(0, 2**16), tiled=st.booleans())
def test_ensembled_direction_is_in_the_descent_set(h, w, seed, tiled):
    net = _direction_net()
    net.inference = InferenceConfig(ensemble=8, tile=8 if tiled else None, tile_overlap=6 if tiled else None)
    gen = torch.Generator().manual_seed(seed)
    u, g, data = (torch.randn(2, h, w, generator=gen) for _ in range(3))
    g[1] *= 1e-3
    with torch.no_grad():
        d = net(u, g, data)
    assert d.shape == u.shape
    _in_cone_ball(d, g, net.cfg.zeta1, net.cfg.zeta2)


def test_sr_with_ensemble_is_monotone_meets_delta_and_says_so(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    code, _, err = _edn(monkeypatch, capsys, "sr", "--scale", "4", EXAMPLES / "camera_lr_x4.tif", "-o", "out.png",
                        "--ensemble", "8", "--report", "r.json", "-q")
    assert code == 0, err
    report = json.loads(Path("r.json").read_text())
    assert report["energy_monotone"] is True and report["delta_reached"] is True
    assert report["inference"]["ensemble"] == 8


# ------------------------------------------------------------------------------ settings
@pytest.mark.parametrize(
    "kwargs, words",
    [
        ({"tile": 64, "tile_overlap": 64}, ["--tile-overlap 64", "--tile 64"]),
        ({"tile": 64, "tile_overlap": -1}, ["--tile-overlap", "-1"]),
        ({"tile": 0}, ["--tile", "0"]),
        ({"precision": "fp8"}, ["--precision", "fp8", "bf16"]),
        ({"ensemble": 4}, ["--ensemble", "4", "8"]),
    ],
)
def test_bad_settings_name_option_value_and_fix(kwargs, words):
    with pytest.raises(UsageError) as err:
        InferenceConfig(**kwargs)
    msg = str(err.value)
    assert "\n" not in msg and all(w in msg for w in words)


def test_checks_that_need_network_or_device():
    with pytest.raises(UsageError, match="--tile 8 is smaller than the receptive field"):
        InferenceConfig(tile=8).check_for(17)
    InferenceConfig(tile=17).check_for(17)
    with pytest.raises(UsageError, match="bf16"):
        InferenceConfig(precision="fp16").check_device("cpu")
    assert InferenceConfig(tile=20).overlap == 10 and InferenceConfig(tile=512).overlap == 32
    assert InferenceConfig().is_default and not InferenceConfig(channels_last=True).is_default


def test_potential_refuses_tiles_and_red_tiles_its_dncnn():
    from edncli.solvers.potential import _with_inference, get_denoiser

    grad_model, grad_meta = get_denoiser("gradncnn")
    with pytest.raises(UsageError, match="--tile 64: not available for method potential"):
        _with_inference("potential", grad_model, grad_meta, InferenceConfig(tile=64), "cpu")
    with pytest.raises(UsageError, match="--precision bf16"):
        _with_inference("red", grad_model, grad_meta, InferenceConfig(precision="bf16"), "cpu")
    assert _with_inference("potential", grad_model, grad_meta, InferenceConfig(), "cpu") is grad_model
    model, meta = get_denoiser("dncnn")
    rf = model.net.cfg.receptive_field
    tiled = _with_inference("pnp", model, meta, InferenceConfig(tile=40, tile_overlap=rf - 1), "cpu")
    x = torch.rand(1, 70, 52)
    with torch.no_grad():
        assert torch.allclose(tiled.denoise(x), model.denoise(x), atol=1e-5)


# ------------------------------------------------------------------------------ the CLI
from .test_cli import edn as _edn  # noqa: E402  (the suite's in-process CLI runner)


def test_sr_with_tiles_keeps_energy_monotone(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    code, _, err = _edn(monkeypatch, capsys, "sr", "--scale", "4", EXAMPLES / "camera_lr_x4.tif", "-o", "out.png",
                        "--tile", "128", "--tile-overlap", "16", "--report", "r.json", "-q")
    assert code == 0, err
    report = json.loads(Path("r.json").read_text())
    assert report["energy_monotone"] is True and report["delta_reached"] is True
    assert report["inference"]["tile"] == 128 and report["inference"]["tile_overlap"] == 16
    assert Path("out.png").exists()


@pytest.mark.parametrize(
    "args, words",
    [
        (["--tile", "4"], ["--tile 4", "receptive field"]),
        (["--tile-overlap", "64", "--tile", "64"], ["--tile-overlap 64", "--tile 64"]),
        (["--precision", "fp16", "--device", "cpu"], ["fp16", "bf16"]),
        (["--precision", "half"], ["--precision", "half"]),
        (["--tile", "64", "--method", "potential"], ["--tile is for", "potential evaluates its network whole"]),
        (["--ensemble", "2"], ["--ensemble", "2"]),
        (["--ensemble", "8", "--method", "potential"], ["--ensemble is for", "potential evaluates its network whole"]),
    ],
)
def test_bad_options_exit_2_with_one_line(tmp_path, monkeypatch, capsys, args, words):
    monkeypatch.chdir(tmp_path)
    code, out, err = _edn(monkeypatch, capsys, "sr", "--scale", "4", EXAMPLES / "camera_lr_x4.tif", "-o", "out.png", *args)
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("edn: error:") and all(w in lines[0] for w in words), err
    assert not Path("out.png").exists()


def test_gpu_out_of_memory_is_one_line_exit_4(tmp_path, monkeypatch, capsys):
    import edncli.solvers.methods as methods

    def boom(*args, **kwargs):
        raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 12.00 GiB (GPU 0; 79 GiB total)")

    monkeypatch.setattr(methods, "solve", boom)
    monkeypatch.chdir(tmp_path)
    code, _, err = _edn(monkeypatch, capsys, "sr", "--scale", "4", EXAMPLES / "camera_lr_x4.tif", "-o", "out.png", "--method", "gd")
    assert code == 4
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("edn: error: out of GPU memory") and "try --tile 512" in lines[0]


def test_other_runtime_errors_still_raise(monkeypatch):
    from edncli.cli.main import is_gpu_oom

    assert not is_gpu_oom(RuntimeError("shape mismatch"))
    assert is_gpu_oom(RuntimeError("CUDA out of memory. Tried to allocate 2 GiB"))


def test_channels_last_is_automatic_per_device():
    assert InferenceConfig().resolved("cpu").channels_last is True
    assert InferenceConfig().resolved("cuda").channels_last is False
    assert InferenceConfig(channels_last=False).resolved("cpu").channels_last is False
    assert InferenceConfig().resolved("cpu").tile is None  # only the memory format is decided


def test_sr_uses_nhwc_on_cpu_by_default_with_the_same_result(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    docs, outs = {}, {}
    for flag in ("", "--no-channels-last"):
        args = ["sr", "--scale", "4", EXAMPLES / "camera_lr_x4.tif", "-o", f"out{flag}.tif", "--report", f"r{flag}.json", "-q"]
        code, _, err = _edn(monkeypatch, capsys, *(args + ([flag] if flag else [])))
        assert code == 0, err
        docs[flag] = json.loads(Path(f"r{flag}.json").read_text())
        outs[flag] = read_image(f"out{flag}.tif")[0]
    assert docs[""]["inference"]["channels_last"] is True
    assert docs["--no-channels-last"]["inference"]["channels_last"] is False
    assert docs[""]["iterations"] == docs["--no-channels-last"]["iterations"]
    assert np.abs(outs[""] - outs["--no-channels-last"]).max() < 1e-4


def test_tiles_closer_than_the_block_grid_are_refused_not_nan():
    # A tile step (tile - overlap) below a space-to-depth network's block grid left pixels that no
    # tile's valid part covered: their summed weight was 0 and the network output NaN there.
    from edncli.networks.inference import tile_starts

    torch.manual_seed(0)
    net = DnCNN(BackboneConfig(in_channels=2, out_channels=1, depth=3, width=6, batchnorm=False, shuffle=4)).eval()
    x = torch.rand(1, 2, 77, 53)
    rf = net.cfg.receptive_field  # 31
    for tile, overlap in ((32, 31), (33, 31), (104, 102)):
        cfg = InferenceConfig(tile=tile, tile_overlap=overlap)
        with pytest.raises(UsageError, match=rf"--tile {tile} with --tile-overlap {overlap} steps .* 4-pixel block grid"):
            cfg.check_for(rf, "net", align=4)
        with pytest.raises(UsageError, match="block grid"):
            tile_starts(200, tile, overlap, align=4)
    cfg = InferenceConfig(tile=35, tile_overlap=31).check_for(rf, "net", align=4)  # step 4: fine, and exact
    with torch.no_grad():
        whole, tiled = net(x), run_network(net, x, cfg, rf, align=4)
    assert bool(torch.isfinite(tiled).all()) and float((tiled - whole).abs().max()) <= 1e-5 * float(whole.abs().max())
    InferenceConfig(tile=32, tile_overlap=31).check_for(rf, "net", align=1)  # a plain network may step by 1


def test_sr_tile_overlap_off_the_block_grid_is_a_usage_error(tmp_path, monkeypatch, capsys):
    from .test_cli import edn

    monkeypatch.chdir(tmp_path)
    code, _, err = edn(monkeypatch, capsys, "sr", "--scale", "4", str(EXAMPLES / "camera_lr_x4.tif"), "-o", "hr.tif",
                       "--tile", "104", "--tile-overlap", "103", "--quiet")
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 2 and len(lines) == 1 and "--tile-overlap <= 100 or --tile >= 107" in err, err
    assert not Path("hr.tif").exists()
