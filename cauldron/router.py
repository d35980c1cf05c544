"""The router: an address book that leases port pairs to dispatchers.

Dispatchers ask it for a (dispatch, broadcast) port pair, bind them, and
renew the lease with every heartbeat; clients ask it where a service lives
and then talk to the dispatcher directly.  A service may span several
dispatchers, each with its own name, lease and keywords: the router answers
where each lives, or which one owns a given keyword.  The router is never in
the data path, and all its state is soft: leases expire after missed
heartbeats, and after a restart the live dispatchers register again with the
ports and keywords they hold.
"""

import os
import time
import uuid

from twisted.application import service
from twisted.internet import defer, task
from twisted.logger import Logger, LogLevel

from cauldron import config as _config
from cauldron.errors import (
    LeaseError,
    PermissionDenied,
    ProtocolError,
    UnknownKeyword,
    UnknownService,
)
from cauldron.hostcheck import HostCheck
from cauldron.protocol import codec
from cauldron.protocol.leases import LeaseTable
from cauldron.protocol.messages import (
    DispatcherLocation,
    Error,
    Lease,
    Leased,
    ListServices,
    Locate,
    Locations,
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
from cauldron.transport import Curve, Transport, bindAddress

__all__ = ["RouterService", "DEFAULT_LEASE_TTL"]

log = Logger()

#: missed heartbeats after which a lease expires
LIVENESS = 3
#: seconds a lease lives without renewal at least: three one-second heartbeats
DEFAULT_LEASE_TTL = 3.0
#: lines per second each kind of verbose log may write (requests can come in floods)
VERBOSE_BURST = 20
#: the longest heartbeat interval a dispatcher may ask for: its lease lives
#: three of them, so this bounds how long a vanished holder keeps a service
MAX_HEARTBEAT_INTERVAL = 60.0
#: leases one host may hold at once (the default range has 50 pairs a host)
MAX_LEASES_PER_HOST = 64


class RouterService(service.Service):
    """Serve the address book at ``[zmq-router] protocol://host:port``.

    :param verbose: 0-3, overrides ``[zmq-router] verbose`` when given.
    :param leaseTTL: seconds a lease lives without a renewal.
    :param maxLeasesPerHost: leases one host may hold at once.
    :param hostCheck: checks that a lease request comes from the host it
        names (a :class:`cauldron.hostcheck.HostCheck` by default).
    """

    name = "cauldron-router"

    def __init__(self, config=None, reactor=None, verbose=None, leaseTTL=DEFAULT_LEASE_TTL,
                 clock=time.monotonic, hostCheck=None,
                 maxLeasesPerHost=MAX_LEASES_PER_HOST):
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
            maxPerHost=maxLeasesPerHost,
        )
        self.malformed = RateLimitedCounter("malformed messages", reactor)
        self._hosts = hostCheck or HostCheck(reactor)
        self._verboseLogs = {}
        self._transport = None
        self._socket = None
        self._expiry = None
        self._curve = None

    def startService(self):
        """Bind the router socket; raises AddressInUse if another router has it.

        In secure mode a key problem raises ConfigError before anything binds.
        """
        self._curve = Curve.fromConfig(self.config)
        transport = Transport(self.reactor, curve=self._curve)
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
        log.info("router listening at {address}, leasing ports [{first}, {last}){secure}",
                 address=self.address, first=self.config.get("zmq-router", "first-port"),
                 last=self.config.get("zmq-router", "last-port"),
                 secure=" in secure mode" if self._curve is not None else "")

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
        if isinstance(interval, bool) or not isinstance(interval, (int, float)) \
                or not 0 < interval <= MAX_HEARTBEAT_INTERVAL:
            raise LeaseError(f"a heartbeat interval must be more than 0 and at most "
                             f"{MAX_HEARTBEAT_INTERVAL:g} s, not {interval!r}")
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
                      service=lease.label, d=lease.dispatchPort, b=lease.broadcastPort)

    # -- requests

    def _received(self, peer, frames):
        if self.verbose >= 3:
            self._logRequest(frames)
        reply = answer(frames, self._handlers, self, peer, self.malformed, "CauldronError")
        if isinstance(reply, defer.Deferred):
            reply.addCallback(self._reply, peer)
        elif reply is not None:
            self._reply(reply, peer)

    def _reply(self, reply, peer):
        if isinstance(reply, Error):
            self._say(1, "refused: {error}: {message}", error=reply.error, message=reply.message)
        if self._socket is not None:
            self._socket.sendTo(peer, codec.encode(reply))

    def _logRequest(self, frames):
        try:
            self._say(3, "request {r!r}", r=codec.decode(frames))
        except ProtocolError:
            pass  # counted and logged as malformed when answered

    def _leased(self, requestId, lease):
        return Leased(requestId, lease.service, lease.host, lease.dispatchPort,
                      lease.broadcastPort, lease.ttl, lease.secret, lease.dispatcher)

    def _fromItsHost(self, request, peer, then):
        """Run ``then(request)`` once the request is known to come from the host it names."""
        self._ttl(request.interval)  # refuse a bad interval before any lookup
        if _protocol(request.protocol) == "ipc":
            checked = self._hosts.verifyLocal(peer.address, "an ipc lease")
        else:
            checked = self._hosts.verify(request.host, peer.address)
        return checked.addCallback(lambda _: then(request))

    def _keyOf(self, request, peer):
        """The name of the key that may hold the request's lease: the peer's (secure mode).

        Only a dispatcher key may hold a lease.  A dispatcher name (the
        service name unless the request names another) that a dispatcher
        key is named after is bound to that key alone; otherwise a service
        name that a key is named after binds every dispatcher of the service
        to that key, so nobody else can add keywords to a bound service.
        Any dispatcher key may hold a name bound to none (first come).  ""
        in plain mode.
        """
        if self._curve is None:
            return ""
        key, service = peer.userId, request.service
        label = _label(service, request.dispatcher)
        if not self._curve.isDispatcher(key):
            raise PermissionDenied(f"{label}: key {key!r} is not a dispatcher key "
                                   "and may not hold a lease")
        name = _dispatcherName(request)
        for bound, whose in ((name, "its name"), (service.lower(), f"service {service!r}")):
            if self._curve.dispatcherKey(bound) is not None:
                if key.lower() != bound:
                    raise PermissionDenied(f"{label} is bound to the dispatcher key of {whose}: "
                                           f"key {key!r} may not hold it")
                break
        return key

    def _handleLease(self, request, peer):
        key = self._keyOf(request, peer)
        return self._fromItsHost(request, peer, lambda request: self._lease(request, key))

    def _lease(self, request, key):
        lease = self.leases.lease(request.service, request.host, request.instance,
                                  self._now(), avoid=request.avoid,
                                  ttl=self._ttl(request.interval),
                                  protocol=_protocol(request.protocol), secret=request.secret,
                                  key=key, dispatcher=request.dispatcher or None,
                                  keywords=request.keywords)
        self._say(1, "leased {d}/{b} to {service} on {host} ({n} keywords)",
                  d=lease.dispatchPort, b=lease.broadcastPort, service=lease.label,
                  host=lease.host, n=len(lease.keywords))
        return self._leased(request.id, lease)

    def _handleRegister(self, request, peer):
        key = self._keyOf(request, peer)
        return self._fromItsHost(request, peer, lambda request: self._register(request, key))

    def _register(self, request, key):
        if not self.leases.isPair(request.dispatchPort, request.broadcastPort):
            raise LeaseError(
                f"ports {request.dispatchPort}/{request.broadcastPort} are not a pair of "
                f"[{self.leases.firstPort}, {self.leases.lastPort}): register ports "
                "this router leased"
            )
        lease = self.leases.register(request.service, request.host, request.instance,
                                     request.dispatchPort, request.broadcastPort, self._now(),
                                     ttl=self._ttl(request.interval),
                                     protocol=_protocol(request.protocol),
                                     takeover=request.takeover, secret=request.secret,
                                     key=key, dispatcher=request.dispatcher or None,
                                     keywords=request.keywords)
        self._say(1, "{service} on {host} registered ports {d}/{b} ({n} keywords)",
                  service=lease.label, host=lease.host, d=lease.dispatchPort,
                  b=lease.broadcastPort, n=len(lease.keywords))
        return self._leased(request.id, lease)

    def _handleRenew(self, request, peer):
        self._keyOf(request, peer)
        lease = self.leases.renew(request.service, request.instance, self._now(),
                                  request.secret, dispatcher=request.dispatcher or None)
        self._say(2, "renewed {service}", service=lease.label)
        return self._leased(request.id, lease)

    def _handleRelease(self, request, peer):
        self._keyOf(request, peer)
        if self.leases.release(request.service, request.instance, self._now(), request.secret,
                               dispatcher=request.dispatcher or None):
            self._say(1, "{service} released its ports",
                      service=_label(request.service, request.dispatcher))
        return Ok(request.id)

    def _handleLocate(self, request, peer):
        now = self._now()
        service = request.service
        leases = self.leases.dispatchers(service, now) if service else []
        if not leases:
            raise UnknownService(f"no service {service.lower()!r} is registered "
                                 f"with the router at {self.address}")
        if request.keyword:
            owner = self.leases.owner(service, request.keyword, now)
            if owner is None:
                raise UnknownKeyword(
                    f"no dispatcher of service {service.lower()!r} serves keyword "
                    f"{request.keyword.upper()!r}",
                    detail={"keyword": request.keyword.upper()})
            leases = [owner]
        return Locations(request.id, service.lower(), [
            DispatcherLocation(
                lease.dispatcher, lease.host,
                bindAddress(lease.protocol, lease.host, lease.dispatchPort),
                bindAddress(lease.protocol, lease.host, lease.broadcastPort),
                lease.instance,
                self._publicKeyOf(lease),
                sorted(lease.keywords),
            )
            for lease in leases
        ])

    def _publicKeyOf(self, lease):
        """The holder's public key, for clients to authenticate it ("" in plain mode)."""
        if self._curve is None:
            return ""
        key = self._curve.publicKeyOf(lease.key)
        return key.decode("ascii") if key is not None else ""

    def _handleList(self, request, peer):
        now = self._now()
        entries = [
            ServiceEntry(lease.service, lease.host, lease.dispatchPort, lease.broadcastPort,
                         lease.age(now), lease.dispatcher, len(lease.keywords))
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


def _dispatcherName(request):
    """The dispatcher name a request means, lower-case ("" means the service's)."""
    return (request.dispatcher or request.service).lower()


def _label(service, dispatcher):
    """``service/dispatcher`` for messages, or the service alone when they are named alike."""
    service = service.lower()
    dispatcher = (dispatcher or service).lower()
    return f"service {service!r}" if dispatcher == service \
        else f"dispatcher {dispatcher!r} of service {service!r}"


def _protocol(name):
    """The dispatcher's transport, as the router will hand it to clients."""
    if name not in ("tcp", "ipc"):
        raise ProtocolError(f"unknown transport protocol {name!r}: expected tcp or ipc")
    return name
