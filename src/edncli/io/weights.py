"""Finding shipped and user checkpoints by name: ``edn-sr-x4`` -> ``weights/edn-sr-x4.safetensors``."""

from __future__ import annotations

import os
from pathlib import Path
from typing import List

from ..errors import CheckpointError, not_a_file

SUFFIX = ".safetensors"


#: Where a regular (non-editable) install puts the shipped checkpoints, under the install's data
#: prefix (``pyproject.toml``: ``[tool.setuptools.data-files]``).
INSTALLED = Path("share") / "edncli" / "weights"


def weights_dirs() -> List[Path]:
    """Where named checkpoints are looked up, in order: ``$EDN_WEIGHTS_DIR``; the source checkout's
    ``weights/`` (an editable install or a run from the repository); ``<prefix>/share/edncli/weights``,
    where ``pip install`` of the project puts them (the environment's prefix, then the user prefix)."""
    import site
    import sys
    import sysconfig

    dirs = []
    env = os.environ.get("EDN_WEIGHTS_DIR")
    if env:
        dirs.append(Path(env))
    package = Path(__file__).resolve().parents[1]  # .../edncli
    if package.parent.name == "src":  # a source checkout: <repo>/src/edncli
        dirs.append(package.parents[1] / "weights")
    for prefix in (sysconfig.get_path("data"), sys.prefix, getattr(site, "USER_BASE", None)):
        if prefix and Path(prefix) / INSTALLED not in dirs:
            dirs.append(Path(prefix) / INSTALLED)
    return dirs


def searched() -> str:
    """The folders :func:`weights_dirs` looks in, for messages: ``a, b (set $EDN_WEIGHTS_DIR to add one)``."""
    text = ", ".join(str(d) for d in weights_dirs())
    return text if os.environ.get("EDN_WEIGHTS_DIR") else text + " (set $EDN_WEIGHTS_DIR to add a folder)"


def env_note() -> str:
    """``; $EDN_WEIGHTS_DIR X is not a folder`` when it is set to something else, for messages; else ``""``."""
    env = os.environ.get("EDN_WEIGHTS_DIR")
    return f"; $EDN_WEIGHTS_DIR {env} is not a folder" if env and not Path(env).is_dir() else ""


def resolve_weights(name_or_path: str, what: str = "--weights") -> Path:
    """A checkpoint path from a file path or a name; a clear error when neither exists.

    A name is looked up in :func:`weights_dirs`, then as ``<name>.safetensors`` in the current
    folder (what ``edn train --out <name>`` writes). ``what`` names the argument in the error
    (``--weights``, or ``edn weights show``).
    """
    p = Path(name_or_path)
    if p.suffix == SUFFIX or p.is_file() or os.sep in name_or_path:
        if not p.is_file():
            why = not_a_file(p)
            raise CheckpointError(f"{what} {name_or_path}: {'no such checkpoint file' if why == 'no such file' else why}")
        return p
    for d in (*weights_dirs(), Path()):
        cand = d / f"{name_or_path}{SUFFIX}"
        if cand.is_file():
            return cand
    if p.is_dir():
        raise CheckpointError(f"{what} {name_or_path}: is a folder, not a file (nor the name of a checkpoint)")
    known = ", ".join(sorted(q.stem for q in list_weights() if _readable(q)))
    where = f"shipped: {known}" if known else f"no checkpoints found in {searched()}"
    raise CheckpointError(f"{what} {name_or_path}: no such checkpoint; {where} (see edn weights list){env_note()}")


def list_weights() -> List[Path]:
    """Checkpoint files (``*.safetensors``, not folders) by name; ``$EDN_WEIGHTS_DIR`` shadows ``weights/``."""
    seen = {}
    for d in weights_dirs():
        if d.is_dir():
            for q in sorted(d.glob(f"*{SUFFIX}")):
                if q.is_file():
                    seen.setdefault(q.stem, q)
    return list(seen.values())


def _readable(path: Path) -> bool:
    """Whether ``path``'s edn header reads (so an error's list of names offers only usable ones)."""
    from .checkpoints import read_metadata

    try:
        read_metadata(path)
    except Exception:
        return False
    return True
