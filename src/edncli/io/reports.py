"""Convergence reports: a JSON document (and optionally a PNG plot) for every reconstruction."""

from __future__ import annotations

import json
import math
import platform
import sys
from typing import Any, Dict, Optional

from ..solvers.trace import SolveResult


def versions() -> Dict[str, Optional[str]]:
    """Versions of edn and the libraries a result depends on."""
    from .. import __version__

    out: Dict[str, Optional[str]] = {"edn": __version__, "python": platform.python_version()}
    for name in ("torch", "numpy", "astra"):
        mod = sys.modules.get(name)
        out[name] = getattr(mod, "__version__", None) if mod is not None else None
    return out


def build_report(
    result: SolveResult,
    *,
    device: str,
    delta: Optional[dict] = None,
    checkpoint: Optional[dict] = None,
    inputs: Optional[dict] = None,
    operator: Optional[dict] = None,
    extra: Optional[dict] = None,
) -> Dict[str, Any]:
    """The report of one run (DESIGN §7): verdict, provenance and the per-iteration trace.

    ``delta`` is one number, or a list with each sample's δ (``--delta auto`` on a stack).
    ``final_discrepancy`` is the worst sample's ``||A u - f||`` (largest ratio to its own δ), so
    ``delta_reached`` is ``final_discrepancy <= delta`` (that sample's δ); each trace ``discrepancy`` is the norm
    over the whole batch; ``samples`` holds the per-sample verdicts (one per image, colour
    channel or slice).
    """
    per_sample_delta = delta["delta"] if delta else None
    report: Dict[str, Any] = {
        "method": result.method,
        "delta": per_sample_delta,
        "delta_rule": delta,
        "final_discrepancy": result.final_discrepancy,
        "delta_reached": result.delta_reached,
        "iterations": result.iterations,
        "energy_monotone": result.energy_monotone,
        "max_energy_increase": result.max_energy_increase,
        "device": device,
        "checkpoint": checkpoint,
        "versions": versions(),
        "elapsed_s": result.elapsed_s,
        "operator": operator,
        "inputs": inputs,
        "samples": [s.as_dict() for s in result.samples],
        "trace": [r.as_dict() for r in result.trace],
    }
    if result.extra:
        report.update({k: v for k, v in result.extra.items()})
    if extra:
        report.update(extra)
    return report


def report_bytes(report: Dict[str, Any]) -> bytes:
    """The JSON report as the bytes :func:`write_report` writes."""
    return (strict_json(report, indent=2) + "\n").encode()


def strict_json(obj: Any, **kwargs: Any) -> str:
    """``json.dumps`` that always gives standard JSON: NaN and ±Infinity (an energy that
    overflowed, a metric of an empty set) become ``null``, numpy values plain numbers."""

    def finite(x: Any) -> Any:
        if isinstance(x, float):
            return x if math.isfinite(x) else None
        if isinstance(x, dict):
            return {k: finite(v) for k, v in x.items()}
        if isinstance(x, (list, tuple)):
            return [finite(v) for v in x]
        jsonable = _jsonable(x) if not isinstance(x, (str, int, type(None))) else x
        return jsonable if jsonable is x or isinstance(jsonable, str) else finite(jsonable)

    return json.dumps(finite(obj), allow_nan=False, **kwargs)


def write_report(path: str, report: Dict[str, Any], force: bool = False) -> None:
    """Write the JSON report atomically (``-`` for stdout)."""
    from .images import write_bytes

    write_bytes(path, report_bytes(report), force=force)


def _jsonable(obj):
    try:
        import numpy as np

        if isinstance(obj, np.generic):
            return obj.item()
        if isinstance(obj, np.ndarray):
            return obj.tolist()
    except ImportError:  # pragma: no cover
        pass
    return str(obj)


def plot_report(path: str, report: Dict[str, Any], force: bool = False) -> None:
    """Write the PNG of :func:`plot_bytes` atomically (``-`` for stdout)."""
    from .images import check_writable, write_bytes

    check_writable(path, force)
    write_bytes(path, plot_bytes(report), force=force)


def _matplotlib_config_dir() -> None:
    """Give matplotlib a writable config/cache folder before its import when its own is not
    (a read-only or missing ``$HOME``): ``<tmp>/edn-matplotlib-<uid>``, kept between runs so that
    its font cache is built once. Else matplotlib prints two lines about ``MPLCONFIGDIR`` on every plot."""
    import os
    import sys
    import tempfile
    from pathlib import Path

    if os.environ.get("MPLCONFIGDIR") or "matplotlib" in sys.modules:
        return
    xdg = os.environ.get("XDG_CONFIG_HOME")
    home = os.environ.get("HOME") or os.path.expanduser("~")
    own = Path(xdg) / "matplotlib" if xdg and os.path.isabs(xdg) else Path(home) / ".config" / "matplotlib"
    try:
        own.mkdir(parents=True, exist_ok=True)
        if os.access(own, os.W_OK | os.X_OK):
            return
    except OSError:
        pass
    uid = os.getuid() if hasattr(os, "getuid") else "user"
    fallback = Path(tempfile.gettempdir()) / f"edn-matplotlib-{uid}"
    try:
        fallback.mkdir(mode=0o700, exist_ok=True)
    except OSError:
        return  # matplotlib then makes its own temporary folder, and says so
    if os.access(fallback, os.W_OK | os.X_OK):
        os.environ["MPLCONFIGDIR"] = str(fallback)


def plot_bytes(report: Dict[str, Any]) -> bytes:
    """PNG with energy, discrepancy (and δ) and, when known, PSNR per iteration."""
    import io

    _matplotlib_config_dir()
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    trace = report["trace"]
    its = [r["iter"] for r in trace]
    has_psnr = any("psnr" in r for r in trace)
    ncols = 3 if has_psnr else 2
    fig, axes = plt.subplots(1, ncols, figsize=(4.2 * ncols, 3.4), constrained_layout=True)
    axes[0].semilogy(its, [max(r["energy"], 1e-30) for r in trace], marker=".")
    axes[0].set(title="energy E(u)", xlabel="iteration")
    disc = [r["discrepancy"] for r in trace]
    if any(d is not None for d in disc):
        axes[1].semilogy(its, [None if d is None else max(d, 1e-30) for d in disc], marker=".", label="||Au - f||")
        if report.get("delta"):
            import math

            # the trace holds the norm over the batch, so the line is the norm of the samples' δ
            delta = report["delta"]
            n = max(len(report.get("samples", [])), 1)
            level = math.sqrt(sum(d * d for d in delta)) if isinstance(delta, list) else delta * math.sqrt(n)
            axes[1].axhline(level, color="C3", ls="--", label="δ")
        axes[1].legend()
    axes[1].set(title="discrepancy", xlabel="iteration")
    if has_psnr:
        axes[2].plot(its, [r.get("psnr") for r in trace], marker=".")
        axes[2].set(title="PSNR (dB)", xlabel="iteration")
    fig.suptitle(f"{report['method']}: δ reached: {report['delta_reached']}, monotone: {report['energy_monotone']}")
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    plt.close(fig)
    return buf.getvalue()
