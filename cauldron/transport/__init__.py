"""The only part of cauldron that imports zmq and txzmq.

It wraps txZMQ connections with safe defaults so that the services above
deal in lists of frames and callbacks, never in sockets:
:mod:`cauldron.transport.sockets` (requests and replies, subscribers),
:mod:`cauldron.transport.publisher` (the broadcast socket, hardened against
what subscribers send), :mod:`cauldron.transport.context` (the
:class:`Transport` that makes them), :mod:`cauldron.transport.curve`
(secure mode: keys and the authenticator) and
:mod:`cauldron.transport.probe` (is anyone listening on an address?).
"""

from cauldron.transport.context import Transport
from cauldron.transport.curve import Curve
from cauldron.transport.probe import addressFree
from cauldron.transport.sockets import (
    AddressInUse,
    QueueFull,
    bindAddress,
    portOf,
)

__all__ = [
    "AddressInUse",
    "Curve",
    "QueueFull",
    "Transport",
    "addressFree",
    "bindAddress",
    "portOf",
]
