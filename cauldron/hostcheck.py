"""Is a peer on the host it names?  The router asks before every lease.

A dispatcher leases ports on its own host and the router tells clients to
connect there.  Without this check anyone who reaches the router could
register a service at any address (another machine, port 22) or fill
another host's port range.  A request is accepted when the address it came
from is one of the host's addresses; a request from this machine
(loopback) may name any name of this machine.  A request without an
address (ipc, inproc) comes from this machine.  An ipc "host" is a path,
so an ipc lease must come from this machine.
"""

import ipaddress
import socket
import time

from twisted.internet import defer
from twisted.internet.threads import deferToThreadPool

from cauldron.errors import LeaseError

__all__ = ["HostCheck"]

#: seconds a host's addresses are remembered
CACHE_SECONDS = 60.0
#: hosts remembered at most (the least recently resolved is forgotten first)
CACHE_ENTRIES = 1024


class HostCheck:
    """Checks hosts against peer addresses, resolving names off the reactor thread.

    :param resolve: ``resolve(host)`` firing with a list of address strings;
        by default ``getaddrinfo`` in the reactor's thread pool.
    """

    def __init__(self, reactor, resolve=None, clock=time.monotonic):
        self._reactor = reactor
        self._resolve = resolve or self._getaddrinfo
        self._clock = clock
        self._cache = {}  # host -> (expiry, frozenset of addresses)

    def verify(self, host, peerAddress):
        """A Deferred firing with None if ``peerAddress`` may act for ``host``, else LeaseError."""
        if not peerAddress:
            return defer.succeed(None)
        peer = _address(peerAddress)
        if peer is None:
            return defer.fail(LeaseError(f"unreadable peer address {peerAddress!r}"))
        literal = _address(host.strip("[]"))
        if literal is not None:
            return defer.maybeDeferred(self._judge, host, peer, frozenset([literal]))
        d = self._addresses(host)
        d.addCallback(lambda addresses: self._judge(host, peer, addresses))
        return d

    def verifyLocal(self, peerAddress, what):
        """None if the peer is on this machine (``what`` needs it to be), else LeaseError."""
        peer = _address(peerAddress) if peerAddress else None
        if not peerAddress or (peer is not None and _isLocal(peer)):
            return defer.succeed(None)
        return defer.fail(LeaseError(f"{what} is for dispatchers on the router's machine; "
                                     f"the request came from {peerAddress}"))

    def _addresses(self, host):
        now = self._clock()
        cached = self._cache.get(host)
        if cached is not None and cached[0] > now:
            return defer.succeed(cached[1])
        d = defer.maybeDeferred(self._resolve, host)
        d.addCallback(self._remember, host)
        d.addErrback(self._unresolved, host)
        return d

    def _remember(self, found, host):
        addresses = frozenset(a for a in (_address(text) for text in found) if a is not None)
        self._cache.pop(host, None)
        self._cache[host] = (self._clock() + CACHE_SECONDS, addresses)
        while len(self._cache) > CACHE_ENTRIES:
            del self._cache[next(iter(self._cache))]
        return addresses

    def _unresolved(self, failure, host):
        failure.trap(OSError, UnicodeError, ValueError)
        raise LeaseError(f"host {host!r} does not resolve ({failure.getErrorMessage()}): "
                         "a dispatcher registers under a name clients can reach")

    def _judge(self, host, peer, addresses):
        if peer in addresses:
            return None
        if peer.is_loopback and any(_isLocal(a) for a in addresses):
            return None
        shown = ", ".join(sorted(str(a) for a in addresses)) or "no address"
        raise LeaseError(
            f"a dispatcher registers its own host only: {host!r} is {shown}, "
            f"but the request came from {peer}"
        )

    def _getaddrinfo(self, host):
        return deferToThreadPool(self._reactor, self._reactor.getThreadPool(),
                                 _lookUp, host)


def _lookUp(host):
    return [info[4][0] for info in socket.getaddrinfo(host, None, type=socket.SOCK_STREAM)]


def _address(text):
    """An ip_address (IPv4-mapped IPv6 made IPv4), or None if ``text`` is none."""
    try:
        address = ipaddress.ip_address(text.split("%", 1)[0])
    except ValueError:
        return None
    if address.version == 6 and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


def _isLocal(address):
    """Whether ``address`` belongs to this machine (it can be bound here)."""
    if address.is_loopback:
        return True
    family = socket.AF_INET if address.version == 4 else socket.AF_INET6
    with socket.socket(family, socket.SOCK_DGRAM) as probe:
        try:
            probe.bind((str(address), 0))
        except OSError:
            return False
    return True
