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
