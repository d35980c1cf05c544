"""The router: an address book that leases port pairs to dispatchers.

Dispatchers ask it for a (dispatch, broadcast) port pair, bind them, and
renew the lease with every heartbeat; clients ask it where a service lives
and then talk to the dispatcher directly.  The router is never in the data
path, and all its state is soft: leases expire after missed heartbeats, and
after a restart the live dispatchers register again with the ports they hold.
"""

import os
import time
import uuid

from twisted.application import service
from twisted.internet import task
from twisted.logger import Logger, LogLevel

from cauldron import config as _config
from cauldron.errors import ProtocolError, UnknownService
from cauldron.protocol import codec
from cauldron.protocol.leases import LeaseTable
from cauldron.protocol.messages import (
    Error,
    Lease,
    Leased,
    ListServices,
    Locate,
    Location,
    Ok,
    Ping,
    Pong,
    Register,
    Release,
    Renew,
    ServiceEntry,
    ServiceList,
)
from cauldron.serving import RateLimitedCounter, RateLimitedLog, answer
from cauldron.transport import Transport, bindAddress

__all__ = ["RouterService", "DEFAULT_LEASE_TTL"]

log = Logger()

#: missed heartbeats after which a lease expires
LIVENESS = 3
#: seconds a lease lives without renewal at least: three one-second heartbeats
DEFAULT_LEASE_TTL = 3.0
#: lines per second each kind of verbose log may write (requests can come in floods)
VERBOSE_BURST = 20


class RouterService(service.Service):
    """Serve the address book at ``[zmq-router] protocol://host:port``.

    :param verbose: 0-3, overrides ``[zmq-router] verbose`` when given.
    :param leaseTTL: seconds a lease lives without a renewal.
    """

    name = "cauldron-router"

    def __init__(self, config=None, reactor=None, verbose=None, leaseTTL=DEFAULT_LEASE_TTL,
                 clock=time.monotonic):
        if reactor is None:
            from twisted.internet import reactor
        self.config = _config.load(config)
        self.reactor = reactor
        self.verbose = self.config.get("zmq-router", "verbose") if verbose is None else verbose
        self.leaseTTL = leaseTTL
        self._clock = clock  # monotonic: a wall-clock step must not age leases
        self.epoch = f"{os.getpid():x}-{uuid.uuid4().hex[:12]}"
        self.address = None
        self.leases = LeaseTable(
            self.config.get("zmq-router", "first-port"),
            self.config.get("zmq-router", "last-port"),
            leaseTTL,
        )
        self.malformed = RateLimitedCounter("malformed messages", reactor)
        self._verboseLogs = {}
        self._transport = None
        self._socket = None
        self._expiry = None

    def startService(self):
        """Bind the router socket; raises AddressInUse if another router has it."""
        transport = Transport(self.reactor)
        socket = transport.router(self._received)
        try:
            self.address = socket.bind(bindAddress(
                self.config.get("zmq-router", "protocol"),
                self.config.get("zmq-router", "host"),
                self.config.get("zmq-router", "port"),
            ))
        except Exception:
            transport.shutdown()
            raise
        super().startService()
        self._transport, self._socket = transport, socket
        self._expiry = task.LoopingCall(self._expire)
        self._expiry.clock = self.reactor
        self._expiry.start(self.leaseTTL / 3, now=False)
        log.info("router listening at {address}, leasing ports [{first}, {last})",
                 address=self.address, first=self.config.get("zmq-router", "first-port"),
                 last=self.config.get("zmq-router", "last-port"))

    def stopService(self):
        super().stopService()
        if self._expiry is not None and self._expiry.running:
            self._expiry.stop()
        self.malformed.stop()
        for limited in self._verboseLogs.values():
            limited.stop()
        if self._transport is not None:
            self._transport.shutdown()
            self._transport = self._socket = None

    def _now(self):
        return self._clock()

    def _ttl(self, interval):
        """How long a lease lives: three of the dispatcher's heartbeats, at least."""
        if not isinstance(interval, (int, float)) or not 0 < interval < 3600:
            return None
        return LIVENESS * interval

    def _say(self, level, fmt, **kw):
        """Log when ``verbose`` is at least ``level`` (1: leases, 2: requests, 3: all).

        Each kind of line is rate-limited: requests, and so these lines, can
        come in floods from anyone who reaches the router.
        """
        if self.verbose < level:
            return
        limited = self._verboseLogs.get(fmt)
        if limited is None:
            limited = self._verboseLogs[fmt] = RateLimitedLog(self.reactor, burst=VERBOSE_BURST)
        limited(fmt, level=LogLevel.info, **kw)

    def _expire(self):
        for lease in self.leases.expire(self._now()):
            self._say(1, "lease of {service} expired: ports {d}/{b} are free again",
                      service=lease.service, d=lease.dispatchPort, b=lease.broadcastPort)

    # -- requests

    def _received(self, peer, frames):
        if self.verbose >= 3:
            self._logRequest(frames)
        reply = answer(frames, self._handlers, self, peer, self.malformed, "CauldronError")
        if reply is None:
            return
        if isinstance(reply, Error):
            self._say(1, "refused: {error}: {message}", error=reply.error, message=reply.message)
        self._socket.sendTo(peer, codec.encode(reply))

    def _logRequest(self, frames):
        try:
            self._say(3, "request {r!r}", r=codec.decode(frames))
        except ProtocolError:
            pass  # counted and logged as malformed when answered

    def _leased(self, requestId, lease):
        return Leased(requestId, lease.service, lease.host, lease.dispatchPort,
                      lease.broadcastPort, lease.ttl)

    def _handleLease(self, request, peer):
        lease = self.leases.lease(request.service, request.host, request.instance,
                                  self._now(), avoid=request.avoid,
                                  ttl=self._ttl(request.interval),
                                  protocol=_protocol(request.protocol))
        self._say(1, "leased {d}/{b} to {service} on {host}", d=lease.dispatchPort,
                  b=lease.broadcastPort, service=lease.service, host=lease.host)
        return self._leased(request.id, lease)

    def _handleRegister(self, request, peer):
        lease = self.leases.register(request.service, request.host, request.instance,
                                     request.dispatchPort, request.broadcastPort, self._now(),
                                     ttl=self._ttl(request.interval),
                                     protocol=_protocol(request.protocol),
                                     takeover=request.takeover)
        self._say(1, "{service} on {host} registered ports {d}/{b}", service=lease.service,
                  host=lease.host, d=lease.dispatchPort, b=lease.broadcastPort)
        return self._leased(request.id, lease)

    def _handleRenew(self, request, peer):
        lease = self.leases.renew(request.service, request.instance, self._now())
        self._say(2, "renewed {service}", service=lease.service)
        return self._leased(request.id, lease)

    def _handleRelease(self, request, peer):
        if self.leases.release(request.service, request.instance, self._now()):
            self._say(1, "{service} released its ports", service=request.service)
        return Ok(request.id)

    def _handleLocate(self, request, peer):
        lease = self.leases.locate(request.service, self._now())
        if lease is None:
            raise UnknownService(f"no service {request.service.lower()!r} is registered "
                                 f"with the router at {self.address}")
        return Location(
            request.id, lease.service, lease.host,
            bindAddress(lease.protocol, lease.host, lease.dispatchPort),
            bindAddress(lease.protocol, lease.host, lease.broadcastPort),
            lease.instance,
        )

    def _handleList(self, request, peer):
        now = self._now()
        entries = [
            ServiceEntry(lease.service, lease.host, lease.dispatchPort, lease.broadcastPort,
                         lease.age(now))
            for lease in self.leases.leases(now)
        ]
        return ServiceList(request.id, entries)

    def _handlePing(self, request, peer):
        return Pong(request.id, "router", self.epoch)

    _handlers = {
        Lease: _handleLease,
        Register: _handleRegister,
        Renew: _handleRenew,
        Release: _handleRelease,
        Locate: _handleLocate,
        ListServices: _handleList,
        Ping: _handlePing,
    }


def _protocol(name):
    """The dispatcher's transport, as the router will hand it to clients."""
    if name not in ("tcp", "ipc"):
        raise ProtocolError(f"unknown transport protocol {name!r}: expected tcp or ipc")
    return name
