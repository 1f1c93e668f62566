"""Writing to stdout for pipelines: every edn command's data on stdout goes through here."""

from __future__ import annotations

import sys

from ..errors import InputError, StdoutClosed


def write_stdout(data: "bytes | str") -> None:
    """Write ``data`` to stdout and flush: a closed pipe is :class:`StdoutClosed`, no stdout (the
    shell closed it, ``>&-``) or a failed write (``> /dev/full``) an :class:`InputError`."""
    out = sys.stdout
    if out is None:
        raise InputError("stdout is closed: nothing can be written to it; give -o FILE (or --json FILE where offered)")
    try:
        if isinstance(data, bytes):
            out.buffer.write(data)
            out.buffer.flush()
        else:
            out.write(data)
            out.flush()
    except BrokenPipeError:
        raise StdoutClosed("stdout closed by its reader") from None
    except OSError as exc:
        raise InputError(f"stdout: cannot write ({exc.strerror or exc})") from None
