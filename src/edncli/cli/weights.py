"""``edn weights list|show``: the checkpoints edn knows, read without executing code."""

from __future__ import annotations

from typing import Optional

import typer
from typing_extensions import Annotated

from ..io.stdout import write_stdout

app = typer.Typer(help="List and inspect checkpoints (shipped in weights/ or in $EDN_WEIGHTS_DIR).", no_args_is_help=True)


JsonList = Annotated[
    bool, typer.Option("--json", help="Print a JSON array on stdout: one object (name, task, bytes, sha256, path, error) per checkpoint; an unreadable one has task null and error set.")
]


@app.command("list")
def list_cmd(as_json: JsonList = False) -> None:
    """List checkpoints with task, size and sha256."""
    from ..io.checkpoints import read_metadata, sha256_of
    from ..io.weights import list_weights

    rows = []
    for path in list_weights():
        error: Optional[str] = None
        task: Optional[str] = None
        try:
            task = read_metadata(path)["task"]
        except Exception as exc:  # a foreign file in the folder must not hide the others
            error = str(exc)
        try:
            digest: Optional[str] = sha256_of(path)
        except OSError:  # unreadable: listed (its task says why), not fatal
            digest = None
        rows.append({"name": path.stem, "task": task, "bytes": path.stat().st_size, "sha256": digest, "path": str(path),
                     "error": error})
    if not rows:  # say where it looked, on stderr (stdout stays the empty list)
        import sys

        from ..io.weights import env_note, searched

        print(f"edn: no checkpoints found in {searched()}{env_note()}", file=sys.stderr)
    if as_json:
        from ..io.reports import strict_json

        write_stdout(strict_json(rows, indent=2) + "\n")
        return
    lines = []
    for r in rows:
        task = r["task"] if r["error"] is None else "unreadable"
        why = "" if r["error"] is None else f"  ({r['error']})"
        lines.append(f"{r['name']:<22} {task:<18} {r['bytes'] / 1e6:6.2f} MB  {(r['sha256'] or '-')[:16]:<16}  {r['path']}{why}\n")
    write_stdout("".join(lines))


@app.command("show")
def show_cmd(name: Annotated[str, typer.Argument(help="Checkpoint name or path.")]) -> None:
    """Print a checkpoint's metadata (task, architecture, operator, training command, metrics)."""
    from ..io.checkpoints import read_metadata, sha256_of
    from ..io.weights import resolve_weights

    path = resolve_weights(name, what="edn weights show")
    meta = read_metadata(path)
    meta["sha256"] = sha256_of(path)
    meta["file"] = str(path)
    from ..io.reports import strict_json  # NaN in a header prints as null, not as bare NaN

    write_stdout(strict_json(meta, indent=2, sort_keys=True) + "\n")
