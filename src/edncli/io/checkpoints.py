"""Checkpoints: safetensors files whose header carries edn's metadata (no code is ever executed).

A checkpoint is ``<name>.safetensors`` holding float tensors, plus a JSON document stored in
the safetensors metadata under the key ``"edn"``: task, architecture, operator settings,
training command, data, validation metrics. Beside it, ``<name>.md`` is the model card with
the file's sha256. Loading never unpickles anything.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Dict, Iterator, Optional, Tuple

from ..errors import CheckpointError, UsageError, not_a_file

FORMAT_VERSION = 1


def sha256_of(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    """Write ``data`` to a temporary file in the target folder, then rename it into place.

    The file gets the usual permissions (``0o666`` less the umask), not ``mkstemp``'s ``0o600``.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise


def save_checkpoint(path: str | Path, state_dict: Dict[str, Any], metadata: Dict[str, Any]) -> str:
    """Save tensors and metadata atomically; returns the file's sha256.

    ``metadata`` must be JSON-serialisable and contain at least ``task`` and ``arch``.
    """
    from safetensors.torch import save

    for key in ("task", "arch"):
        if key not in metadata:
            raise ValueError(f"checkpoint metadata needs {key!r}")
    tensors = {k: v.detach().cpu().contiguous() for k, v in state_dict.items()}
    meta = {"edn": json.dumps({"format_version": FORMAT_VERSION, **metadata}, sort_keys=True)}
    atomic_write_bytes(path, save(tensors, metadata=meta))
    return sha256_of(path)


def read_metadata(path: str | Path) -> Dict[str, Any]:
    """The edn metadata of a checkpoint, without loading its tensors."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path}: {not_a_file(path)}")
    try:
        from safetensors import safe_open

        with safe_open(str(path), framework="pt") as fh:
            raw = (fh.metadata() or {}).get("edn")
    except Exception as exc:  # safetensors raises its own error types for corrupt headers
        raise CheckpointError(f"checkpoint {path}: not a readable safetensors file ({exc})") from None
    if raw is None:
        raise CheckpointError(f"checkpoint {path}: a safetensors file, but not an edn checkpoint (no 'edn' metadata)")
    try:
        meta = json.loads(raw)
    except (json.JSONDecodeError, RecursionError):  # RecursionError: nested deeper than Python's stack
        raise CheckpointError(f"checkpoint {path}: its edn metadata is not valid JSON") from None
    if not isinstance(meta, dict) or "task" not in meta or "arch" not in meta:
        raise CheckpointError(f"checkpoint {path}: its edn metadata lacks 'task' or 'arch'")
    problem = _metadata_problem(meta)
    if problem is not None:
        raise CheckpointError(f"checkpoint {path}: corrupt edn metadata ({problem})")
    return meta


def _metadata_problem(meta: Dict[str, Any]) -> Optional[str]:
    """What is wrong with the types of the shared metadata fields loaders read, or ``None``."""
    if not isinstance(meta["task"], str) or not meta["task"]:
        return f"'task' must be a non-empty string, got {meta['task']!r}"
    if not isinstance(meta["arch"], dict):
        return f"'arch' must be an object, got {meta['arch']!r}"
    if "operator" in meta and not isinstance(meta["operator"], dict):
        return f"'operator' must be an object, got {meta['operator']!r}"
    min_iter = meta.get("min_iter", 0)
    if not isinstance(min_iter, int) or isinstance(min_iter, bool) or min_iter < 0:
        return f"'min_iter' must be an integer >= 0, got {min_iter!r}"
    if not isinstance(meta.get("metrics", {}), dict):
        return f"'metrics' must be an object, got {meta['metrics']!r}"
    return None


def load_checkpoint(
    path: str | Path, expect_task: Optional[str | Tuple[str, ...]] = None, device: str = "cpu"
) -> Tuple[Dict[str, Any], Dict[str, Any]]:
    """Load ``(state_dict, metadata)``; with ``expect_task``, a checkpoint for another task is an error.

    Metadata of the wrong types and tensors holding NaN or Inf are :class:`CheckpointError` too.
    """
    import torch

    meta = read_metadata(path)
    if expect_task is not None:
        tasks = (expect_task,) if isinstance(expect_task, str) else tuple(expect_task)
        if meta["task"] not in tasks:
            raise CheckpointError(
                f"checkpoint {Path(path).name} is for task {meta['task']!r}, but {'/'.join(tasks)} was asked for"
            )
    try:
        from safetensors.torch import load_file

        tensors = load_file(str(path), device=device)
    except Exception as exc:
        raise CheckpointError(f"checkpoint {path}: cannot read its tensors ({exc})") from None
    for name, t in tensors.items():
        if not bool(torch.isfinite(t).all()):
            raise CheckpointError(f"checkpoint {path}: corrupt, tensor {name!r} holds NaN or Inf values")
    meta["sha256"] = sha256_of(path)
    meta["file"] = str(path)
    return tensors, meta


#: Architecture keys that count layers: each layer holds at least one tensor of the file.
_LAYER_COUNTS = ("depth", "blocks")


def tensors_fit_architecture(arch: Dict[str, Any], state: Dict[str, Any], build: Any) -> Optional[str]:
    """Where the file's tensors ``state`` do not fit ``arch`` (``None`` when they do), found
    before any weight is allocated.

    A header can ask for any depth or width; building that network to let ``load_state_dict``
    object could exhaust memory first. A layer count (``depth``, ``blocks``) must not exceed the
    number of tensors in the file; the network is then built by ``build(arch)`` on the ``meta``
    device (shapes only, no storage) and its parameter shapes compared with the file's.
    """
    import torch

    for key in _LAYER_COUNTS:
        value = arch.get(key)
        if isinstance(value, int) and value > len(state):
            return f"{key} {value}, but the file holds only {len(state)} tensors"
    with torch.device("meta"):
        probe = build(arch)
    want = {k: tuple(v.shape) for k, v in probe.state_dict().items()}
    have = {k: tuple(v.shape) for k, v in state.items()}
    for key in sorted(want.keys() | have.keys()):
        if want.get(key) != have.get(key):
            return f"{key}: {want.get(key, 'absent')} in the architecture, {have.get(key, 'absent')} in the file"
    return None


def describe_data(data: Any) -> str:
    """The model card's ``data:`` line: a text as it is; the lagged trainer's dict (``images``,
    ``n_images``, ``val_images``, ``phantoms``) as a sentence, any other dict as JSON."""
    if data is None:
        return "n/a"
    if not isinstance(data, dict):
        return str(data)
    if set(data) <= {"images", "n_images", "val_images", "phantoms"}:
        parts = []
        if data.get("images"):
            count = f"{data['n_images']} images from " if data.get("n_images") is not None else ""
            parts.append(f"{count}{data['images']} (patches with flips/rotations)")
        if data.get("phantoms"):
            parts.append("random ellipse phantoms")
        text = " plus ".join(parts) or "n/a"
        return text + (f"; validation: {data['val_images']}" if data.get("val_images") else "; validation: phantoms"
                       if data.get("phantoms") else "")
    return json.dumps(data, sort_keys=True)


def write_model_card(card_path: str | Path, name: str, meta: Dict[str, Any], sha256: str, body: str = "") -> None:
    """Write ``<name>.md`` beside the checkpoint: what it is, how it was made, how well it does."""
    lines = [
        f"# {name}",
        "",
        f"- task: `{meta.get('task')}`",
        f"- architecture: `{json.dumps(meta.get('arch'), sort_keys=True)}`",
        f"- sha256: `{sha256}`",
        f"- file size: {meta.get('file_size', 'n/a')} bytes",
        f"- trained with: `{meta.get('command', 'n/a')}`",
        f"- data: {describe_data(meta.get('data'))}",
        f"- device: {meta.get('device', 'n/a')}; time: {meta.get('train_time_s', 'n/a')} s",
        "",
        "## Validation metrics",
        "",
        "```json",
        json.dumps(meta.get("metrics", {}), indent=2, sort_keys=True),
        "```",
    ]
    if body:
        lines += ["", body.strip()]
    atomic_write_bytes(card_path, ("\n".join(lines) + "\n").encode())


@contextmanager
def exclusive_output(out: Path) -> Iterator[None]:
    """Hold an advisory lock on ``.<name>.lock`` beside ``out`` while a run writes it: a second
    run writing the same checkpoint at the same time is refused (one line, exit 2) instead of
    replacing this one's checkpoint and interleaving its log. The lock goes with the process,
    even a killed one; where the platform has no ``fcntl`` (Windows) only the up-front checks remain."""
    try:
        import fcntl
    except ImportError:  # pragma: no cover - Windows
        yield
        return
    lock = out.parent / f".{out.name}.lock"
    try:
        fh = open(lock, "a+")
    except OSError:  # a folder that cannot take the lock file cannot take the checkpoint either: said later
        yield
        return
    try:
        fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        fh.close()
        raise UsageError(f"another edn train is writing {out} now; wait for it to end, or choose another --out") from None
    try:
        yield
    finally:
        try:
            lock.unlink()
        except OSError:
            pass
        fh.close()


def check_side_files(out: Path, log_path: Optional[Path], force: bool) -> None:
    """Before any work: the model card and the training log written beside ``out`` are outputs
    too, so neither replaces a file without ``force`` (a resume of ``out`` continues its own),
    and neither may be a folder or another non-regular file."""
    for what, p in (("model card", out.with_suffix(".md")), ("training log", log_path)):
        if p is None or not (p.exists() or p.is_symlink()):
            continue
        if not p.is_file():
            raise UsageError(f"{p} (the {what} of {out.name}) exists and is not a regular file; choose another --out")
        if not force:
            raise UsageError(f"{p} (the {what} of {out.name}) exists; pass --force to overwrite it")
