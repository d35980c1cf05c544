"""Is anyone listening on an address?  Answered without ZeroMQ, synchronously.

A dispatcher restarted at once after a crash finds its service still leased
to its dead predecessor.  If the predecessor's addresses are on this host and
can be bound now, nothing listens there any more: the predecessor is gone,
and the new dispatcher may take its lease over instead of waiting for it to
expire.  A plain socket answers at once (a ZeroMQ bind would answer too, but
its close completes later, in ZeroMQ's own thread).
"""

import errno
import os
import socket

__all__ = ["addressFree"]

_WILDCARDS = ("*", "0.0.0.0", "::", "[::]")


def addressFree(address):
    """True if ``tcp://host:port`` could be bound now, or ``ipc://path`` has no listener."""
    scheme, _, rest = address.partition("://")
    if scheme == "tcp":
        host, _, port = rest.rpartition(":")
        return _tcpFree(host, int(port))
    if scheme == "ipc":
        return _ipcFree(rest)
    return False


def _tcpFree(host, port):
    host = host.strip("[]")
    if host in _WILDCARDS:
        host = "0.0.0.0" if host in ("*", "0.0.0.0") else "::"
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except OSError:
        return False
    for family, kind, proto, _, sockaddr in infos:
        with socket.socket(family, kind, proto) as probe:
            # As ZeroMQ binds: a port in TIME_WAIT only is free to bind.
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                probe.bind(sockaddr)
            except OSError:
                return False
    return bool(infos)


def _ipcFree(path):
    if not os.path.exists(path):
        return True
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
        try:
            probe.connect(path)
        except OSError as e:
            return e.errno in (errno.ECONNREFUSED, errno.ENOENT)
    return False
