"""The DnCNN backbone, plain and space-to-depth (``shuffle``): shapes for any image size, the
stated receptive field, exact tiling, and old checkpoints that predate the option."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from edncli.networks.backbones import BackboneConfig, DnCNN
from edncli.networks.direction import build_network
from edncli.networks.inference import InferenceConfig, axis_windows, run_network


def _net(depth=3, width=8, shuffle=4, cin=2, seed=0, residual=False) -> DnCNN:
    torch.manual_seed(seed)
    net = DnCNN(BackboneConfig(in_channels=cin, out_channels=1, depth=depth, width=width, batchnorm=False, shuffle=shuffle,
                               residual=residual))
    torch.nn.init.normal_(net.body[-1].weight, std=0.2)  # the default init zeroes the last layer
    for m in net.modules():  # and each residual block's second convolution
        if m.__class__.__name__ == "_ResBlock":
            torch.nn.init.normal_(m.conv2.weight, std=0.2)
    return net.eval()


@settings(max_examples=25, deadline=None)
@given(h=st.integers(1, 23), w=st.integers(1, 23), shuffle=st.sampled_from([1, 2, 3, 4]))
def test_any_size_keeps_its_shape(h, w, shuffle):
    net = _net(depth=2, width=4, shuffle=shuffle)
    with torch.no_grad():
        y = net(torch.rand(2, 2, h, w))
    assert y.shape == (2, 1, h, w) and bool(torch.isfinite(y).all())


def test_block_multiple_is_pixel_shuffle_of_the_plain_stack():
    net = _net(depth=3, shuffle=4)
    x = torch.rand(1, 2, 16, 24)
    with torch.no_grad():
        assert torch.equal(net(x), F.pixel_shuffle(net.body(F.pixel_unshuffle(x, 4)), 4))
    assert net.body[0].in_channels == 2 * 16 and net.body[-1].out_channels == 16


@pytest.mark.parametrize("depth, shuffle, residual", [(3, 1, False), (3, 2, False), (2, 4, False), (4, 4, False),
                                                     (4, 1, True), (6, 2, True)])
def test_receptive_field_bounds_the_reach_of_one_pixel(depth, shuffle, residual):
    # A change at one pixel moves outputs only within the stated radius, and the bound is tight
    # somewhere (a pixel at a block edge reaches exactly r = s (depth + 1) - 1 away); residual
    # blocks have the same convolutions, so the same field.
    net = _net(depth=depth, shuffle=shuffle, width=6, residual=residual)
    rf = net.cfg.receptive_field
    r = rf // 2
    size = rf + 2 * shuffle * 4
    reach = 0
    for c in range(size // 2 - shuffle, size // 2 + shuffle):
        x = torch.rand(1, 2, size, size, dtype=torch.float64)
        x2 = x.clone()
        x2[0, :, c, c] += 1.0
        with torch.no_grad():
            diff = (net.double()(x2) - net(x)).abs()[0, 0]
        rows = torch.nonzero(diff.amax(dim=1) > 0).flatten()
        reach = max(reach, int((rows - c).abs().max()))
    assert reach == r, (reach, r, rf)


@pytest.mark.parametrize("shape, tile", [((77, 53), 40), ((120, 130), 52), ((31, 90), 36)])
def test_tiles_on_the_block_grid_equal_the_whole_image(shape, tile):
    net = _net(depth=3, width=6, shuffle=4)  # receptive field 31
    x = torch.rand(2, 2, *shape)
    cfg = InferenceConfig(tile=tile, tile_overlap=net.cfg.receptive_field - 1)
    with torch.no_grad():
        whole = net(x)
        tiled = run_network(net, x, cfg, net.cfg.receptive_field, align=4)
        misaligned = run_network(net, x, cfg, net.cfg.receptive_field, align=1)
    assert float((tiled - whole).abs().max()) <= 1e-5 * float(whole.abs().max())
    # Without alignment tiles cut other blocks: still a blend of valid outputs, not the same numbers.
    assert float((misaligned - whole).abs().max()) > 1e-4 * float(whole.abs().max())


def test_aligned_windows_start_on_the_grid_and_cover_every_pixel():
    for size in [*range(40, 140, 7), 255, 256, 257]:
        for tile, overlap, align in [(40, 31, 4), (64, 16, 4), (52, 30, 2), (33, 8, 3)]:
            total = torch.zeros(size, dtype=torch.float64)
            tiles = axis_windows(size, tile, overlap, 8, align)
            for i, (start, stop, w) in enumerate(tiles):
                assert start % align == 0 and 0 <= start < stop <= size
                if i:
                    assert tiles[i - 1][1] - start >= min(overlap, tile), (size, tile, overlap, align)
                total[start:stop] += w
            assert tiles[-1][1] == size
            assert bool((total > 0).all()), (size, tile, overlap, align)


def test_checkpoints_without_shuffle_rebuild_as_plain_dncnn():
    arch = {"backbone": {"batchnorm": False, "depth": 3, "in_channels": 3, "out_channels": 1, "width": 8},
            "kind": "direction", "layer": "cone_ball", "zeta": 0.001, "zeta1": 0.05, "zeta2": 20.0}
    net = build_network(arch)
    assert net.cfg.backbone.shuffle == 1 and net.backbone.body[0].in_channels == 3
    base = build_network({"batchnorm": False, "depth": 3, "in_channels": 2, "out_channels": 1, "width": 8, "kind": "baseline"})
    assert base.cfg.shuffle == 1


def test_he_initialisation_keeps_activations_at_scale():
    # Without batch norm a deep stack must not shrink its signal layer by layer (PyTorch's default
    # conv init does, ~1.7x per layer), or training from scratch stalls.
    torch.manual_seed(0)
    net = DnCNN(BackboneConfig(in_channels=2, out_channels=1, depth=16, width=32, batchnorm=False, shuffle=2))
    h = F.pixel_unshuffle(torch.rand(4, 2, 64, 64), 2)
    first = None
    with torch.no_grad():
        for m in net.body[:-1]:
            h = m(h)
            if isinstance(m, torch.nn.ReLU):
                first = float(h.std()) if first is None else first
    assert float(h.std()) > 0.2 * first
    assert float(net.body[-1].weight.detach().abs().max()) == 0.0


def test_residual_backbone_starts_as_the_first_layer_features_and_rebuilds_from_its_arch():
    # Zero-initialised second convolutions make every block the identity at the start, so the
    # stack is head -> 2x skip -> tail; configurations it cannot build are refused.
    torch.manual_seed(0)
    cfg = BackboneConfig(in_channels=2, out_channels=1, depth=8, width=8, batchnorm=False, shuffle=2, residual=True)
    net = DnCNN(cfg)
    torch.nn.init.normal_(net.body[-1].weight, std=0.2)
    x = F.pixel_unshuffle(torch.rand(2, 2, 16, 16), 2)
    with torch.no_grad():
        head = net.body[1](net.body[0](x))
        want = F.pixel_shuffle(net.body[-1](2 * head), 2)
        assert torch.allclose(net(F.pixel_shuffle(x, 2)), want, atol=1e-6)
    assert sum(p.numel() for p in net.parameters()) == sum(
        p.numel() for p in DnCNN(BackboneConfig(in_channels=2, out_channels=1, depth=8, width=8, batchnorm=False,
                                                shuffle=2)).parameters())  # the same convolutions
    base = build_network({"batchnorm": False, "depth": 8, "in_channels": 2, "out_channels": 1, "width": 8, "shuffle": 2,
                          "residual": True, "kind": "baseline"})
    assert base.cfg.residual and len(base.state_dict()) == len(net.state_dict())
    for bad in (dict(depth=7), dict(depth=8, batchnorm=True)):
        with pytest.raises(ValueError, match="residual"):
            DnCNN(BackboneConfig(**{**cfg.as_dict(), **bad}))
