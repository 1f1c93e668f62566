"""Click's exception types, wherever this Typer version keeps them (vendored or the click package)."""

from typer import Abort, Exit

try:  # typer >= 0.26 vendors click
    from typer._click.core import ParameterSource
    from typer._click.exceptions import ClickException
except ImportError:  # pragma: no cover - older typer with the click package
    from click.core import ParameterSource  # type: ignore[no-redef]
    from click.exceptions import ClickException  # type: ignore[no-redef]

__all__ = ["Abort", "ClickException", "Exit", "ParameterSource"]
