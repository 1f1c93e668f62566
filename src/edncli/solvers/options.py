"""Which reconstruction methods read which method option (torch-free, so the CLI can check
options before anything heavy is imported). Giving an option to a method that does not read it
is a usage error, in ``edn sr|deblur|ct`` and in ``edn eval``, never silently ignored."""

from __future__ import annotations

#: Iteration cap when none is given: gd, cg, tv and the learned methods. potential, red and pnp
#: keep their preset's (the papers' counts) unless a cap is given, whatever its value.
DEFAULT_MAX_ITER = 300

#: Methods that evaluate a network, and so read the network-evaluation options.
NETWORK_METHODS = ("edn", "baseline", "potential", "red", "pnp")
#: The methods that read each method option. (``potential`` refuses the network-evaluation
#: options itself, saying why.)
METHOD_OPTIONS = {
    "--lam": ("potential", "red"),
    "--mu": ("red", "pnp"),
    "--box": ("potential", "red", "pnp"),
    "--preset": ("potential", "red", "pnp"),
    "--alpha": ("tv", "edn"),
    "--min-iter": ("gd", "cg", "edn", "potential", "red", "pnp"),
    "--learned-steps": ("edn",),
    "--handover": ("edn",),
    "--tile": NETWORK_METHODS,
    "--tile-overlap": NETWORK_METHODS,
    "--precision": NETWORK_METHODS,
    "--channels-last": NETWORK_METHODS,
    "--ensemble": NETWORK_METHODS,
}
