"""cauldron: KTL-style keywords served over ZeroMQ, driven by Twisted.

Submodules are imported on demand so that ``import cauldron`` stays cheap and
pure (no reactor, no zmq) for tools that only need the configuration or types.
"""

__version__ = "0.1.0"

__all__ = ["__version__"]
