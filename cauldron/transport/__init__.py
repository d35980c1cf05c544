"""The only part of cauldron that imports zmq and txzmq.

It wraps txZMQ connections with safe defaults (see
:mod:`cauldron.transport.sockets`) so that the services above deal in lists
of frames and callbacks, never in sockets.
"""

from cauldron.transport.sockets import (
    AddressInUse,
    QueueFull,
    Transport,
    bindAddress,
    portOf,
)

__all__ = ["AddressInUse", "QueueFull", "Transport", "bindAddress", "portOf"]
