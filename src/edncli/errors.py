"""Exceptions the library raises for bad input; the CLI turns each into one line and an exit code.

Exit codes (documented in the README): 0 δ reached, 2 usage error, 3 ran to the iteration cap
without reaching δ (result still written), 4 input/output or checkpoint failure, 130 interrupted,
141 stdout closed by its reader (``| head``), 143 terminated (SIGTERM).
"""

from __future__ import annotations

import os


class EdnError(Exception):
    """Base class: a problem the user can fix; ``str(err)`` is the one-line message."""

    exit_code: int = 4


class UsageError(EdnError, ValueError):
    """An argument value that cannot work (bad scale, δ <= 0, wrong shapes for a geometry...)."""

    exit_code = 2


class InputError(EdnError):
    """A file that is missing, unreadable, of the wrong kind, or holds NaN/Inf."""

    exit_code = 4


class CheckpointError(EdnError):
    """A checkpoint that is corrupt, foreign, or made for another task/operator."""

    exit_code = 4


class DeviceError(EdnError):
    """A device that was asked for but is not there (e.g. ``cuda`` on a machine without a GPU)."""

    exit_code = 2


class StdoutClosed(EdnError):
    """The reader of stdout went away (``edn ... | head -1``): exit 141 (128 + SIGPIPE) and no
    message, as a command killed by SIGPIPE; anything not yet written is not written."""

    exit_code = 141


def not_a_file(path: "str | os.PathLike[str]") -> str:
    """Why ``path`` is not a readable regular file, for a message: a folder, something else, or missing."""
    p = os.fspath(path)
    if os.path.isdir(p):
        return "is a folder, not a file"
    return "is not a regular file" if os.path.exists(p) else "no such file"
