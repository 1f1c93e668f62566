"""Which reconstruction methods read which method option (torch-free, so the CLI can check
options before anything heavy is imported). Giving an option to a method that does not read it
is a usage error, in ``edn sr|deblur|ct`` and in ``edn eval``, never silently ignored."""

from __future__ import annotations

#: Iteration cap when none is given: gd, cg, tv and the learned methods. potential, red and pnp
#: keep their preset's (the papers' counts) unless a cap is given, whatever its value.
DEFAULT_MAX_ITER = 300

#: Methods that evaluate a network.
NETWORK_METHODS = ("edn", "baseline", "potential", "red", "pnp")
#: Those that read the network-evaluation options (tiling, precision, memory format, ensemble):
#: ``potential`` does not, since they would change the energy whose descent it checks.
NETWORK_EVAL_METHODS = ("edn", "baseline", "red", "pnp")
#: The methods that read each method option.
METHOD_OPTIONS = {
    "--lam": ("potential", "red"),
    "--mu": ("red", "pnp"),
    "--box": ("potential",),  # red and pnp project onto [0, 1] at every step (eqs. 28-29)
    "--preset": ("potential", "red", "pnp"),
    "--alpha": ("tv", "edn"),
    "--min-iter": ("gd", "cg", "edn", "potential", "red", "pnp"),
    "--learned-steps": ("edn",),
    "--handover": ("edn",),
    "--tile": NETWORK_EVAL_METHODS,
    "--tile-overlap": NETWORK_EVAL_METHODS,
    "--precision": NETWORK_EVAL_METHODS,
    "--channels-last": NETWORK_EVAL_METHODS,
    "--ensemble": NETWORK_EVAL_METHODS,
}
