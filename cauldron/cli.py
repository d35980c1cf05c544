"""The ``cauldron`` and ``Cauldron-router-zmq`` commands (placeholder).

Installed now so the console scripts exist; the real commands replace this.
"""

import sys

__all__ = ["main", "routerMain"]


def _notYet():
    sys.stderr.write("cauldron: not yet available\n")
    sys.exit(2)


def main(argv=None):
    """Entry point of ``cauldron``."""
    _notYet()


def routerMain(argv=None):
    """Entry point of ``Cauldron-router-zmq``."""
    _notYet()
