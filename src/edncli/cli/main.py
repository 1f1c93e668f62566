"""The ``edn`` command line: one Typer app; library errors become one line and an exit code here.

Exit codes: 0 δ reached (or the command succeeded), 2 usage error, 3 ran to the iteration cap
without reaching δ (result still written), 4 input/output or checkpoint failure, 130 interrupted.
"""

from __future__ import annotations

import os
import re
import sys
from typing import Optional

import typer

from . import reconstruct as rec
from . import simulate

app = typer.Typer(
    name="edn",
    help="Learned image reconstruction you can trust: every run lowers a model energy and stops at ||Au - f|| <= δ.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)

reconstruct_app = typer.Typer(help="Reconstruct from measurements (same as edn sr|deblur|ct).", no_args_is_help=True)

for target in (app, reconstruct_app):
    target.command("sr")(rec.sr)
    target.command("deblur")(rec.deblur)

app.add_typer(reconstruct_app, name="reconstruct")
app.add_typer(simulate.app, name="simulate")


def _attach_sudoku(module) -> None:
    app.add_typer(module.app, name="sudoku")
    eval_cmd = getattr(module, "evaluate", None)
    if eval_cmd is not None:
        import importlib

        importlib.import_module("edncli.cli.evaluate").app.command("sudoku")(eval_cmd)


def _register_optional() -> None:
    """Command groups that live in their own modules (added as they land)."""
    import importlib

    for module, attach in (
        ("edncli.cli.ct", lambda m: (app.command("ct")(m.ct), reconstruct_app.command("ct")(m.ct), simulate.app.command("ct")(m.simulate_ct))),
        ("edncli.cli.train", lambda m: app.command("train")(m.train)),
        ("edncli.cli.evaluate", lambda m: app.add_typer(m.app, name="eval")),
        ("edncli.cli.weights", lambda m: app.add_typer(m.app, name="weights")),
        ("edncli.cli.sudoku", _attach_sudoku),
    ):
        try:
            attach(importlib.import_module(module))
        except ModuleNotFoundError as exc:
            if exc.name != module:
                raise


_register_optional()


def _print_version(value: bool) -> None:
    """``--version``: print and exit while parsing (eager), so that no command is needed."""
    if value:
        from .. import __version__

        print(f"edn {__version__}")
        raise typer.Exit(0)


@app.callback()
def _main(
    version: bool = typer.Option(
        False, "--version", help="Print the version and exit.", is_eager=True, callback=_print_version
    ),
) -> None:
    """Options of ``edn`` itself (the commands have their own)."""


class Terminated(BaseException):
    """SIGTERM, raised in the main thread so that the run unwinds (temporary files go); a
    BaseException, as KeyboardInterrupt, so no ``except Exception`` takes it for an error."""


def _terminate_cleanly() -> None:
    """Turn SIGTERM into :class:`Terminated` (``edn train`` installs its own handler, which saves).

    Not under torchrun: there SIGTERM is how torchrun stops the other ranks when one fails, and a
    rank waiting inside a collective would see the exception only when the wait ends."""
    import signal
    import threading

    if threading.current_thread() is not threading.main_thread() or os.environ.get("WORLD_SIZE", "1") not in ("", "1"):
        return

    def handler(signum, frame):
        raise Terminated()

    signal.signal(signal.SIGTERM, handler)


def _quiet_stdout() -> None:
    """Point stdout at /dev/null, so that the interpreter's last flush into a closed pipe is silent."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, AttributeError, ValueError):
        pass


def _check_thread_env() -> None:
    """An ``OMP_NUM_THREADS`` that is not a positive count (or a comma list of them) is dropped,
    with one edn warning, before torch loads OpenMP (whose libgomp would print its own line)."""
    value = os.environ.get("OMP_NUM_THREADS")
    if value is None or all(part.strip().isdigit() and int(part) > 0 for part in value.split(",")):
        return
    del os.environ["OMP_NUM_THREADS"]
    print(f"edn: warning: OMP_NUM_THREADS={value!r} is not a positive number of threads; ignored", file=sys.stderr)


def _exit_interrupted() -> None:
    """Ctrl-C: finished outputs stay, empty folders edn made go, one line, exit 130."""
    from . import common

    common.remove_created_folders()
    if os.environ.get("RANK", "0") in ("0", ""):  # under torchrun Ctrl-C reaches every rank: say it once
        print("edn: interrupted", file=sys.stderr)
    sys.exit(130)


def _interrupted(exc: BaseException) -> bool:
    """Whether a KeyboardInterrupt is the cause (or context) of ``exc``, however deep."""
    seen = set()
    while exc is not None and id(exc) not in seen:
        if isinstance(exc, KeyboardInterrupt):
            return True
        seen.add(id(exc))
        exc = exc.__cause__ or exc.__context__
    return False


def run() -> None:
    """Console-script entry point: run the app, turning library errors into one line + exit code."""
    from ..errors import EdnError, StdoutClosed

    from .._click_compat import Abort, ClickException, Exit

    from . import common

    import warnings

    warnings.showwarning = _show_warning
    _check_thread_env()
    common._CREATED.clear()  # folders made by an earlier in-process run are not this run's
    common.INTERRUPT_REPORTED = False
    _terminate_cleanly()
    try:
        code = app(standalone_mode=False)
    except Exit as exc:
        sys.exit(exc.exit_code)
    except StdoutClosed as exc:  # `edn ... | head`: silent, as a command SIGPIPE ends
        common.remove_created_folders()
        _quiet_stdout()
        sys.exit(exc.exit_code)
    except Terminated:  # SIGTERM: what was finished stays, empty folders edn made go; no message
        common.remove_created_folders()
        sys.exit(143)
    except ClickException as exc:  # usage errors from option parsing: exit 2, one line
        show_click_error(exc)
        sys.exit(exc.exit_code)
    except (KeyboardInterrupt, Abort):
        _exit_interrupted()
    except EdnError as err:
        from .common import remove_created_folders

        remove_created_folders()
        print(f"edn: error: {err}", file=sys.stderr)
        sys.exit(err.exit_code)
    except OSError as exc:  # a write or read the library did not expect to fail (a full disk, a lost mount)
        common.remove_created_folders()
        where = f"{exc.filename}: " if getattr(exc, "filename", None) else ""
        print(f"edn: error: {where}{exc.strerror or exc}", file=sys.stderr)
        sys.exit(4)
    except MemoryError:
        common.remove_created_folders()
        print(f"edn: error: out of memory; {CPU_OOM_HINT}", file=sys.stderr)
        sys.exit(4)
    except RuntimeError as exc:  # typer's Exit/Abort (RuntimeError subclasses) are caught above
        if _interrupted(exc):  # Ctrl-C inside an import (matplotlib's class set-up wraps it in a RuntimeError)
            _exit_interrupted()
        common.remove_created_folders()
        if is_gpu_oom(exc):
            detail = str(exc).strip().splitlines()[0][:160] if str(exc).strip() else type(exc).__name__
            hint = "try --tile 512 (or smaller), a smaller --batch-size, fewer slices, or --device cpu"
            print(f"edn: error: out of GPU memory ({detail}); {hint}", file=sys.stderr)
            sys.exit(4)
        wanted = cpu_oom_bytes(exc)
        if wanted is None:
            raise
        size = f" (an array of {wanted / 1e9:.3g} GB was asked for)" if wanted else ""
        print(f"edn: error: out of memory{size}; {CPU_OOM_HINT}", file=sys.stderr)
        sys.exit(4)
    if code == 130:  # typer turns Ctrl-C into an exit code of 130
        common.remove_created_folders()  # only the still-empty ones: finished outputs stay
        if not common.INTERRUPT_REPORTED:
            print("edn: interrupted", file=sys.stderr)
    sys.exit(code if isinstance(code, int) else 0)


def show_click_error(exc: BaseException) -> None:
    """Print a Click parsing error as one line ``edn: error: ...`` on stderr (a bare command
    group still shows its help, as Click's ``no_args_is_help`` does)."""
    if type(exc).__name__ == "NoArgsIsHelpError":
        exc.show()  # type: ignore[attr-defined]
        return
    message = " ".join(exc.format_message().split())  # type: ignore[attr-defined]
    ctx = getattr(exc, "ctx", None)
    hint = f" (see '{ctx.command_path} --help')" if ctx is not None else ""
    print(f"edn: error: {message}{hint}", file=sys.stderr)


def _show_warning(message, category, filename, lineno, file=None, line=None) -> None:
    """A Python warning as one ``edn: warning: ...`` line on stderr (not file:line, category and
    the source line: e.g. the CT matrix cache that cannot be written)."""
    text = " ".join(str(message).split())
    print(f"edn: warning: {text}", file=file or sys.stderr)


#: What to try when host memory runs out.
CPU_OOM_HINT = "try a smaller --scale or --size, --tile 512 (networks), a smaller --batch-size, or fewer --slices"


def cpu_oom_bytes(exc: BaseException) -> Optional[int]:
    """The size of the failed allocation when ``exc`` is torch's host out-of-memory error
    (``DefaultCPUAllocator: can't allocate memory: you tried to allocate N bytes``), else None;
    0 when the message names no size."""
    text = str(exc)
    if "can't allocate memory" not in text:
        return None
    match = re.search(r"allocate (\d+) bytes", text)
    return int(match.group(1)) if match else 0


def is_gpu_oom(exc: BaseException) -> bool:
    """Whether ``exc`` is a CUDA out-of-memory error (checked without importing torch)."""
    torch = sys.modules.get("torch")
    oom_type = getattr(getattr(torch, "cuda", None), "OutOfMemoryError", None) if torch is not None else None
    if oom_type is not None and isinstance(exc, oom_type):
        return True
    text = str(exc)
    return "CUDA out of memory" in text or "CUDNN_STATUS_ALLOC_FAILED" in text or "CUBLAS_STATUS_ALLOC_FAILED" in text
