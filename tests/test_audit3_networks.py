"""Audit 3, learned-network inference and checkpoints: tile placement on a block grid, and
checkpoints whose architecture header does not fit their tensors."""

from __future__ import annotations

import copy
import math
import os
from pathlib import Path

import pytest
import torch

from edncli.errors import CheckpointError
from edncli.networks.backbones import BackboneConfig, DnCNN
from edncli.networks.inference import InferenceConfig, axis_windows, run_network, tile_starts

WEIGHTS = Path(__file__).resolve().parents[1] / "weights"


# ------------------------------------------------------------------------------ tile placement
@pytest.mark.parametrize("size, tile, overlap, align", [(256, 106, 102, 4), (212, 106, 102, 4), (300, 110, 102, 4),
                                                        (1000, 283, 278, 4), (97, 35, 31, 4), (100, 32, 0, 4)])
def test_tiles_on_a_block_grid_are_distinct_and_as_few_as_the_step_allows(size, tile, overlap, align):
    # With tile - overlap equal to (or a few pixels above) the block grid, the starts were spread
    # with a step of 1 px and then rounded down to the grid: every start came up to `align` times
    # (151 starts, 38 distinct, for 256 px at --tile 106 --tile-overlap 102), so a 2-D image ran
    # the network ~16x as often as needed (hours instead of minutes for edn SR).
    starts = tile_starts(size, tile, overlap, align)
    assert starts == sorted(set(starts)) and starts[0] == 0 and all(s % align == 0 for s in starts)
    step = (tile - overlap) // align * align
    assert len(starts) == 1 + math.ceil((size - tile) // align * align / step)
    windows = axis_windows(size, tile, overlap, radius=overlap // 2, align=align)
    assert windows[-1][1] == size
    for (_, stop, _), (start, _, _) in zip(windows, windows[1:]):
        assert stop - start >= overlap  # neighbours still share the asked-for band


def test_tiled_run_on_the_block_grid_calls_the_network_once_per_distinct_tile_and_is_exact():
    torch.manual_seed(0)
    net = DnCNN(BackboneConfig(in_channels=2, out_channels=1, depth=3, width=6, batchnorm=False, shuffle=4)).eval()
    torch.nn.init.normal_(net.body[-1].weight, std=0.3)
    rf = net.cfg.receptive_field  # 31
    calls = []

    def counted(t):
        calls.append(tuple(t.shape[-2:]))
        return net(t)

    x = torch.rand(1, 2, 120, 84)
    cfg = InferenceConfig(tile=35, tile_overlap=31, channels_last=False).check_for(rf, "net", align=4)
    with torch.no_grad():
        whole, tiled = net(x), run_network(counted, x, cfg, rf, align=4)
    assert len(calls) == len(tile_starts(120, 35, 31, 4)) * len(tile_starts(84, 35, 31, 4)) == 22 * 13
    assert float((tiled - whole).abs().max()) <= 1e-5 * float(whole.abs().max())


def test_tile_starts_without_a_grid_are_unchanged():
    for size in range(1, 300, 7):
        for tile, overlap in ((32, 0), (32, 10), (17, 16), (64, 32)):
            n = math.ceil((size - overlap) / (tile - overlap))  # the placement before the fix
            old = [round(i * (size - tile) / (n - 1)) for i in range(n)] if size > tile else [0]
            assert tile_starts(size, tile, overlap) == old, (size, tile, overlap)


# ------------------------------------------------------------------------------ checkpoints
def _forged(tmp_path, edit) -> Path:
    """edn-sr-x4's tensors under a header changed by ``edit(meta)``."""
    from safetensors.torch import load_file

    from edncli.io.checkpoints import read_metadata, save_checkpoint

    src = WEIGHTS / "edn-sr-x4.safetensors"
    meta = copy.deepcopy(read_metadata(src))
    edit(meta)
    path = tmp_path / "forged.safetensors"
    save_checkpoint(path, load_file(str(src)), meta)
    return path


@pytest.mark.parametrize(
    "key, value, words",
    [("depth", 10**7, "depth 10000000, but the file holds 12 convolution weights"),
     ("width", 200_000, "backbone.body.0.bias: (200000,) in the architecture, (64,) in the file"),
     ("shuffle", 10**6, "backbone.body.0.weight")],
)
def test_a_header_asking_for_a_huge_network_is_refused_before_allocating_it(tmp_path, monkeypatch, key, value, words):
    # The network was built from the header before its tensors were compared: depth 10^7 allocated
    # ~1.5 TB layer by layer (the process grew until memory ran out), width 2e5 asked for 1.4 TB.
    from edncli.networks import direction
    from edncli.solvers.learned import load_learned

    path = _forged(tmp_path, lambda m: m["arch"]["backbone"].__setitem__(key, value))
    real = direction.build_network

    def only_on_meta(arch):  # building it with storage is the bug (and would exhaust memory here)
        assert torch.empty(0).device.type == "meta", f"network of {key} {value} built with real storage"
        return real(arch)

    monkeypatch.setattr("edncli.solvers.learned.build_network", only_on_meta)
    with pytest.raises(CheckpointError, match="does not match its architecture") as info:
        load_learned("edn", str(path), "cpu")
    assert words in str(info.value)


def test_a_fitting_checkpoint_still_loads(tmp_path):
    from edncli.solvers.learned import load_learned

    path = _forged(tmp_path, lambda m: None)
    net, meta = load_learned("edn", str(path), "cpu")
    assert meta["arch"]["backbone"]["depth"] == 12 and not net.training


# ------------------------------------------------------------------------------ --weights NAME
def test_weights_name_finds_what_edn_train_out_name_wrote(tmp_path, monkeypatch):
    # `edn train --out my-sr` writes ./my-sr.safetensors; `--weights my-sr` answered "no such
    # checkpoint; shipped: ..." and only `--weights my-sr.safetensors` worked.
    import shutil

    from edncli.io.weights import resolve_weights

    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("EDN_WEIGHTS_DIR", raising=False)
    shutil.copy(WEIGHTS / "edn-deblur.safetensors", "my-sr.safetensors")
    shutil.copy(WEIGHTS / "edn-deblur.safetensors", "edn-sr-x4.safetensors")
    assert resolve_weights("my-sr") == Path("my-sr.safetensors")
    assert resolve_weights("edn-sr-x4") == WEIGHTS / "edn-sr-x4.safetensors"  # shipped names come first


def test_unknown_name_with_a_weights_dir_that_is_not_a_folder_says_so(tmp_path, monkeypatch):
    from edncli.io.weights import resolve_weights

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("EDN_WEIGHTS_DIR", str(tmp_path / "typo"))
    with pytest.raises(CheckpointError, match=r"--weights mine: no such checkpoint; .*\$EDN_WEIGHTS_DIR .*typo is not a folder"):
        resolve_weights("mine")


# ------------------------------------------------------------------------------ hostile headers
def test_deeply_nested_metadata_is_a_corrupt_checkpoint_not_a_traceback(tmp_path, monkeypatch, capsys):
    # json.loads raised RecursionError (not a JSONDecodeError) on "[[[[...", which escaped as a
    # traceback with exit 1 from `edn weights show`, `edn sr --weights` and every loader.
    from safetensors.torch import save_file

    from edncli.io.checkpoints import read_metadata

    from .test_cli import edn

    monkeypatch.chdir(tmp_path)
    save_file({"a": torch.zeros(1)}, "nest.safetensors", metadata={"edn": '{"task": "edn-sr", "arch": ' + "[" * 200_000 + "]" * 200_000 + "}"})
    with pytest.raises(CheckpointError, match="not valid JSON"):
        read_metadata("nest.safetensors")
    for args in (("weights", "show", "./nest.safetensors"),
                 ("sr", "--scale", "4", str(WEIGHTS.parent / "examples" / "camera_lr_x4.tif"), "-o", "hr.tif",
                  "--weights", "./nest.safetensors", "--quiet")):
        code, _, err = edn(monkeypatch, capsys, *args)
        lines = [line for line in err.splitlines() if line.strip()]
        assert code == 4 and len(lines) == 1 and "nest.safetensors" in err, err


def test_a_folder_named_like_a_shipped_checkpoint_does_not_hide_it(tmp_path, monkeypatch):
    # Any existing path was taken as the checkpoint file: a folder `edn-sr-x4` in the working
    # directory (say an --output-dir) turned `--weights edn-sr-x4` into "no such checkpoint file".
    from edncli.io.weights import resolve_weights

    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("EDN_WEIGHTS_DIR", raising=False)
    Path("edn-sr-x4").mkdir()
    assert resolve_weights("edn-sr-x4") == WEIGHTS / "edn-sr-x4.safetensors"
    with pytest.raises(CheckpointError, match="is a folder, not a file"):
        resolve_weights(f".{os.sep}edn-sr-x4")  # a path stays a path
    with pytest.raises(CheckpointError, match="no such checkpoint file"):
        resolve_weights(f".{os.sep}nosuch")


def test_sudoku_weights_are_looked_up_like_every_other_commands(tmp_path, monkeypatch):
    # was: sudoku let $EDN_WEIGHTS_DIR replace weights/ (a shipped name then failed) and did not
    # look in the current folder, unlike --weights everywhere else
    import shutil

    from edncli.io.weights import resolve_weights
    from edncli.sudoku.solve import resolve_checkpoint

    shipped = resolve_weights("edn-sudoku")
    monkeypatch.setenv("EDN_WEIGHTS_DIR", str(tmp_path / "mine"))
    (tmp_path / "mine").mkdir()
    assert resolve_checkpoint(None, "edn") == shipped
    monkeypatch.chdir(tmp_path)
    shutil.copy(shipped, tmp_path / "local-sudoku.safetensors")
    assert resolve_checkpoint("local-sudoku", "edn").resolve() == (tmp_path / "local-sudoku.safetensors").resolve()


@pytest.mark.parametrize(
    "name, key, value, words",
    [("gradncnn", "depth", 10**7, "depth 10000000, but the file holds only"),
     ("dnicnn", "width", 200_000, "in the architecture"),
     ("edn-sudoku", "blocks", 10**7, "blocks 10000000, but the file holds only"),
     ("edn-sudoku", "channels", 200_000, "in the architecture")],
)
def test_denoiser_and_sudoku_headers_asking_for_huge_networks_are_refused(tmp_path, name, key, value, words):
    # was: load_denoiser and the Sudoku loader built the network from the header before comparing
    # tensors (the same memory exhaustion as for direction networks)
    from safetensors.torch import load_file

    from edncli.io.checkpoints import read_metadata, save_checkpoint
    from edncli.networks.potentials import load_denoiser
    from edncli.sudoku.solve import load_network

    src = WEIGHTS / f"{name}.safetensors"
    meta = copy.deepcopy(read_metadata(src))
    meta["arch"][key] = value
    path = tmp_path / "forged.safetensors"
    save_checkpoint(path, load_file(str(src)), meta)
    with pytest.raises(CheckpointError, match="do not fit its architecture") as info:
        load_denoiser(str(path)) if name != "edn-sudoku" else load_network(str(path), "edn")
    assert words in str(info.value)
