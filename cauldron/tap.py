"""twistd plugin options and service makers (placeholder services).

The option parsers are real so ``twistd cauldron-router --help`` works now;
the services land later.
"""

from twisted.python import usage

__all__ = [
    "RouterOptions",
    "DispatcherOptions",
    "makeRouterService",
    "makeDispatcherService",
]


class RouterOptions(usage.Options):
    """Options of ``twistd cauldron-router`` and ``Cauldron-router-zmq``."""

    synopsis = "[-c CONFIG] [-v ...]"
    optParameters = [
        ["config", "c", None, "Configuration file (default: $CAULDRON_CONFIG, else built-in)."],
    ]

    def __init__(self):
        usage.Options.__init__(self)
        self["verbose"] = 0

    def opt_verbose(self):
        """Increase verbosity (up to three times)."""
        self["verbose"] = min(self["verbose"] + 1, 3)

    opt_v = opt_verbose


class DispatcherOptions(usage.Options):
    """Options of ``twistd cauldron-dispatcher``."""

    synopsis = "-c CONFIG -s SERVICE -k KEYWORDS.toml"
    optParameters = [
        ["config", "c", None, "Configuration file (default: $CAULDRON_CONFIG, else built-in)."],
        ["service", "s", None, "Name of the service to serve."],
        ["keywords", "k", None, "TOML file defining the keywords."],
    ]


def makeRouterService(options):
    """Build the router service from parsed options."""
    raise usage.UsageError("not yet available")


def makeDispatcherService(options):
    """Build a dispatcher service from parsed options."""
    raise usage.UsageError("not yet available")
