"""How dispatchers and clients use the router.

:class:`RouterLink` is a dispatcher's side: lease a port pair, bind it
(asking again when a port turns out to be taken), renew the lease with every
heartbeat, register again with the same ports when a restarted router has
forgotten it, spawn a router when none answers and ``allow-spawn`` says
so (never in secure mode), and fence the dispatcher when the router names another owner.
A dispatcher's lease is keyed by its service and dispatcher name (one service
may span several dispatchers) and names the keywords it serves; a keyword
added while it runs is announced with the next heartbeat.
:class:`Locator` is a client's side: where do a service's dispatchers live,
and which one owns a keyword?
"""

import os
import socket
import subprocess
import sys
import tempfile
from typing import NamedTuple

from twisted.internet import defer, task
from twisted.logger import Logger

from cauldron.errors import (
    CauldronTimeout,
    LeaseConflict,
    LeaseError,
    ProtocolError,
    RouterUnavailable,
    UnknownService,
)
from cauldron.protocol.messages import Lease, Locate, Register, Release, Renew
from cauldron.requests import RequestChannel
from cauldron.router import DEFAULT_LEASE_TTL, RouterService
from cauldron.transport import AddressInUse, addressFree, bindAddress
from cauldron.transport.curve import isValidKey

__all__ = ["RouterLink", "Locator", "Where", "routerChannel", "spawnRouterProcess",
           "advertisedHost"]

log = Logger()

#: ports found taken after which a dispatcher gives up asking for more
MAX_BIND_ATTEMPTS = 20
#: hosts that bind every interface and so cannot be connected to as such
WILDCARD_HOSTS = ("*", "0.0.0.0", "::", "[::]")
#: seconds between attempts to start a router while renewals find none
RESPAWN_INTERVAL = 5.0
#: how long past a rival's first-announced expiry we wait before calling it alive
CONFLICT_MARGIN = 0.5
#: seconds between two lease requests while a rival holds the service
CONFLICT_POLL = 0.25
#: a stopping dispatcher waits at most this long for the router to take its release
RELEASE_TIMEOUT = 0.25


class Where(NamedTuple):
    """Where one dispatcher of a service lives, as a client needs to know it."""

    dispatchAddress: str
    broadcastAddress: str
    #: the run of the dispatcher holding the lease ("" without a router)
    owner: str = ""
    #: the dispatcher's CURVE public key (Z85 bytes; None in plain mode)
    serverKey: bytes | None = None
    #: the dispatcher's name within the service ("" in direct mode: the service name)
    dispatcher: str = ""
    #: the host the dispatcher advertised ("" in direct mode)
    host: str = ""
    #: the (upper-case) keyword names it owns (() in direct mode: unknown until described)
    keywords: tuple = ()


def routerChannel(config, transport, timeout=None):
    """A request channel to the configured router; silence is RouterUnavailable."""
    address = config.routerAddress()

    def unavailable(what, seconds):
        return RouterUnavailable(f"no router answers at {address} ({what}: no reply "
                                 f"within {seconds:g} s)")

    return RequestChannel(
        transport, address, f"router at {address}",
        config.timeoutSeconds() if timeout is None else timeout, onTimeout=unavailable,
        serverKey=transport.curve.routerKey() if transport.secure else None,
    )


def writeConfigFile(config):
    """Write a config's values to a temporary INI file (for a spawned router).

    Always the values in force, never ``config.path``: a config may have been
    changed (``replace``) since it was read from its file.
    """
    port = config.get("zmq-router", "port")
    handle, path = tempfile.mkstemp(prefix=f"cauldron-router-{port}-", suffix=".ini")
    with os.fdopen(handle, "w") as f:
        for section, values in config.asDict().items():
            f.write(f"[{section}]\n")
            for key, value in values.items():
                if isinstance(value, bool):
                    value = "yes" if value else "no"
                f.write(f"{key} = {value}\n")
    return path


def routerLogFile(config):
    """Where a router started as a process writes its log."""
    port = config.get("zmq-router", "port")
    return os.path.join(tempfile.gettempdir(), f"cauldron-router-{port}.log")


def spawnRouterProcess(configPath):
    """Start ``Cauldron-router-zmq -c configPath`` as a process that outlives this one.

    Its output goes to :func:`routerLogFile`, so a router that failed to
    start leaves a trace.
    """
    from cauldron import config as _config

    logPath = routerLogFile(_config.load(configPath))
    with open(logPath, "ab") as logFile:
        return subprocess.Popen(
            [sys.executable, "-c", "from cauldron.cli import routerMain; routerMain()",
             "-c", os.path.abspath(configPath)],
            stdin=subprocess.DEVNULL, stdout=logFile, stderr=subprocess.STDOUT,
            start_new_session=True, close_fds=True,
        )


def advertisedHost(host):
    """The name clients should connect to for a dispatcher bound on ``host``."""
    if host in WILDCARD_HOSTS:
        return socket.getfqdn()
    return host


class RouterLink:
    """A dispatcher's lease with the router, from start to release.

    :ivar fenced: True once the router named another owner of the service.
    """

    def __init__(self, dispatcher, transport, reactor):
        self.dispatcher = dispatcher
        self.config = dispatcher.config
        self.reactor = reactor
        #: where we bind (may be a wildcard such as ``*``)
        self.bindHost = self.config.get("zmq", "host")
        #: what the router tells clients: a wildcard is no address to connect to
        self.host = advertisedHost(self.bindHost)
        self.protocol = self.config.get("zmq", "protocol")
        self.spawnedRouter = None
        self.fenced = False
        self._transport = transport
        self._channel = routerChannel(self.config, transport)
        self._renewing = None
        self._routerLost = False
        self._ports = None  # the leased (dispatch, broadcast) pair once bound
        self._secret = ""  # the lease's proof of holding, from the router
        self._announced = None  # the keyword names the router last accepted from us
        self._refused = None  # the names it last refused: not asked for again as they are
        self._lastSpawn = -RESPAWN_INTERVAL
        self._spawnedConfig = None  # the config file written for a spawned router

    @property
    def service(self):
        return self.dispatcher.name

    @property
    def dispatcherName(self):
        """Our dispatcher's name within the service (the service name by default)."""
        return self.dispatcher.dispatcherName

    @property
    def label(self):
        """``service/dispatcher`` for log lines, or the service alone when named alike."""
        if self.dispatcherName == self.service:
            return self.service
        return f"{self.service}/{self.dispatcherName}"

    @property
    def instance(self):
        return self.dispatcher.epoch

    def _currentKeywords(self):
        """The names of the keywords our dispatcher serves now, sorted."""
        return list(self.dispatcher.keywords())

    def _leaseMessage(self, requestId, avoid, keywords):
        return Lease(requestId, self.service, self.host, self.instance, list(avoid),
                     self.dispatcher.heartbeatInterval, self.protocol, self._secret,
                     self.dispatcherName, keywords)

    def _registerMessage(self, requestId, ports, keywords, takeover=False, secret=""):
        return Register(requestId, self.service, self.host, self.instance, *ports,
                        self.dispatcher.heartbeatInterval, self.protocol, takeover, secret,
                        self.dispatcherName, keywords)

    # -- start: lease, bind, and spawn a router if there is none

    @defer.inlineCallbacks
    def start(self):
        """Lease ports and bind them; fires with the bound addresses.

        Cancelling the Deferred abandons the start wherever it is (waiting
        for the router, or for a rival's lease to expire).
        """
        avoid = []
        for _ in range(MAX_BIND_ATTEMPTS):
            keywords = self._currentKeywords()
            leased = yield self._lease(avoid, keywords)
            self._secret = leased.secret
            self._announced = keywords
            try:
                addresses = self.dispatcher.bind(
                    bindAddress(self.protocol, self.bindHost, leased.dispatchPort),
                    bindAddress(self.protocol, self.bindHost, leased.broadcastPort),
                )
            except AddressInUse as e:
                log.warn("{service}: {address} is taken on this host; asking for other ports",
                         service=self.label, address=e.address)
                avoid.extend([leased.dispatchPort, leased.broadcastPort])
                continue
            self._ports = (leased.dispatchPort, leased.broadcastPort)
            self._forgetSpawnedConfig()
            return addresses
        raise LeaseError(f"{self.label}: {MAX_BIND_ATTEMPTS} leased port pairs were all "
                         f"taken on {self.host}: {sorted(set(avoid))}")

    def _request(self, makeMessage, what):
        return self._channel.request(makeMessage, f"{what} {self.label}")

    @defer.inlineCallbacks
    def _lease(self, avoid, keywords):
        """Ask for a lease, spawning a router or outlasting a rival as needed.

        A rival holding our dispatcher name (or one of our keywords) is
        either our crashed predecessor (its lease expires within its ttl,
        unless it held our dispatcher name and we can prove it dead and take
        over at once) or a live dispatcher, which keeps renewing: once its
        lease has outlived the expiry the router first gave us, we stop.
        """
        spawned = False
        giveUpAt = None
        while True:
            try:
                leased = yield self._request(
                    lambda i: self._leaseMessage(i, avoid, keywords), "lease ports for")
                return leased
            except RouterUnavailable as e:
                if spawned or not self._maySpawn():
                    raise self._unavailable(e) from None
                self._spawnRouter(e)
                spawned = True
                continue
            except LeaseConflict as e:
                conflict = e
            taken = yield self._takeOver(conflict.detail, keywords)
            if taken is not None:
                return taken
            now = self.reactor.seconds()
            expiresIn = float(conflict.detail.get("expiresIn", DEFAULT_LEASE_TTL))
            if giveUpAt is None:
                giveUpAt = now + expiresIn + CONFLICT_MARGIN
                log.info("{service}: {why}", service=self.label, why=_holderLine(conflict))
            elif now >= giveUpAt:
                raise LeaseConflict(self._giveUpLine(conflict), detail=conflict.detail)
            yield task.deferLater(self.reactor, min(CONFLICT_POLL, max(expiresIn, 0.01)),
                                  lambda: None)

    def _giveUpLine(self, conflict):
        """Why we stop waiting for a rival that keeps renewing its lease."""
        detail = conflict.detail
        where = (f"on host {detail.get('host', '?')} (ports {detail.get('dispatchPort', '?')}/"
                 f"{detail.get('broadcastPort', '?')}) and keeps renewing its lease")
        keyword = detail.get("keyword")
        if keyword:
            return (f"{self.label}: keyword {keyword} is served by dispatcher "
                    f"{detail.get('dispatcher', '?')!r} of the service {where}: stop that one "
                    "first, or serve the keyword from one dispatcher only")
        what = "service" if self.dispatcherName == self.service else "dispatcher"
        return (f"{self.label}: another dispatcher serves it {where}: stop that one first, "
                f"or serve another {what} name")

    def _takeOver(self, holder, keywords):
        """Fires with a lease if the holder is a dead predecessor on this host, else None.

        Binding its exact addresses here proves nothing listens there any
        more; the router then hands the lease over without waiting.  Only a
        holder of our own dispatcher name is our predecessor: a dispatcher
        holding one of our keywords under another name is no one to replace.
        """
        if holder.get("dispatcher") != self.dispatcherName or holder.get("keyword"):
            return defer.succeed(None)
        if holder.get("host") != self.host or holder.get("protocol") != self.protocol:
            return defer.succeed(None)
        ports = (holder.get("dispatchPort"), holder.get("broadcastPort"))
        if not all(isinstance(port, int) for port in ports):
            return defer.succeed(None)
        if not all(addressFree(bindAddress(self.protocol, self.bindHost, p)) for p in ports):
            return defer.succeed(None)  # alive (perhaps frozen), or someone else's now
        d = self._request(
            lambda i: self._registerMessage(i, ports, keywords, takeover=True), "take over")

        def tookOver(leased):
            log.info("{service}: its previous dispatcher on this host is gone (ports {d}/{b} "
                     "were free); took its lease over", service=self.label, d=ports[0],
                     b=ports[1])
            return leased

        d.addCallback(tookOver)
        d.addErrback(lambda f: f.trap(LeaseConflict) and None)
        return d

    def _maySpawn(self):
        """Whether to start a router when none answers.

        Never in secure mode: a router started here would hold this
        dispatcher's key, not the one every other process knows as the router's.
        """
        return self.config.get("zmq-router", "allow-spawn") and not self._transport.secure

    def _unavailable(self, error):
        if self._transport.secure and self.config.get("zmq-router", "allow-spawn"):
            return RouterUnavailable(f"{error} (secure mode never starts a router: start it "
                                     "with its own key, as docs/security.rst shows)")
        return error

    def _spawnRouter(self, unavailable):
        """Start a router where the configuration says one should be.

        Only a router on this host can be started here; when binding its
        address fails for any reason but "in use" (another router won the
        race), the original RouterUnavailable stands, with the reason added.
        """
        mode = self.config.get("zmq-router", "process")
        address = self.config.routerAddress()
        if mode == "thread":
            router = RouterService(self.config, reactor=self.reactor)
            try:
                router.startService()
            except AddressInUse:
                log.info("another router just bound {address}; using it", address=address)
                return
            except Exception as e:
                raise RouterUnavailable(
                    f"{unavailable}; starting one here failed: {e}"
                ) from None
            log.info("no router answered at {address}: started one in this process",
                     address=address)
            self.spawnedRouter = router
        else:
            self._spawnedConfig = writeConfigFile(self.config)
            process = spawnRouterProcess(self._spawnedConfig)
            log.info("no router answered at {address}: started one as process {pid} "
                     "(its log: {logfile})", address=address, pid=process.pid,
                     logfile=routerLogFile(self.config))

    def _forgetSpawnedConfig(self):
        """The spawned router answered, so it has read its config file: remove it."""
        path, self._spawnedConfig = self._spawnedConfig, None
        if path is not None:
            try:
                os.unlink(path)
            except OSError:
                pass

    # -- heartbeat: renew, register again after a router restart, or be fenced

    def beat(self):
        """Renew the lease (called on every dispatcher heartbeat).

        When our dispatcher's keywords changed since the router last took
        them (a keyword added while serving), register again instead, with
        the same ports and secret, so the router learns them.  A set the
        router refused is not asked for again until it changes once more.
        """
        if self._renewing is not None or self._ports is None or self.fenced:
            return
        keywords = self._currentKeywords()
        if keywords != self._announced and keywords != self._refused:
            d = self._request(
                lambda i: self._registerMessage(i, self._ports, keywords, secret=self._secret),
                "register the keywords of")
            d.addCallback(self._announcedKeywords, keywords)
            d.addErrback(self._keywordsRefused, keywords)
        else:
            d = self._request(
                lambda i: Renew(i, self.service, self.instance, self._secret,
                                self.dispatcherName),
                "renew")
            d.addErrback(self._registerAgain)
        d.addCallbacks(self._renewed, self._renewFailed)
        d.addBoth(self._doneRenewing)
        self._renewing = d

    def _announcedKeywords(self, leased, keywords):
        self._announced, self._refused = keywords, None
        return leased

    def _keywordsRefused(self, failure, keywords):
        """Another dispatcher of the service owns a keyword we added: keep the lease we have.

        The router left our lease as it was (with the keywords it had):
        renew it.  The refused set is not claimed again until it changes
        (another keyword added): claiming it with every heartbeat would,
        after a router restart, race the keyword's owner registering again,
        and fence the owner if we won.
        """
        failure.trap(LeaseConflict)
        detail = failure.value.detail
        if not detail.get("keyword") or detail.get("dispatcher") == self.dispatcherName \
                or detail.get("service") != self.service:
            return failure  # about our lease itself: fenced, as for a renewal
        log.error("{service}: the keywords it serves now are refused by the router, which "
                  "sends clients elsewhere for them: {why} (serve each keyword from one "
                  "dispatcher only)", service=self.label, why=failure.getErrorMessage())
        self._refused = keywords
        d = self._request(
            lambda i: Renew(i, self.service, self.instance, self._secret, self.dispatcherName),
            "renew")
        d.addErrback(self._registerAgain)
        return d

    def _registerAgain(self, failure):
        failure.trap(LeaseError)
        if failure.check(LeaseConflict):
            return failure
        # The router does not know us (it restarted, or our lease expired
        # while we could not reach it): claim the ports we hold.
        if not self._routerLost:
            log.info("{service}: the router forgot our lease; registering again",
                     service=self.label)
        # Only the keywords the router had accepted: one it refused us is
        # not ours to claim first after a router restart.
        keywords = self._announced if self._announced is not None else self._currentKeywords()
        return self._request(
            lambda i: self._registerMessage(i, self._ports, keywords, secret=self._secret),
            "register",
        )

    def _renewed(self, leased):
        self._secret = leased.secret  # a restarted router hands out a new one
        if self._routerLost:
            log.info("{service}: the router answers again", service=self.label)
            self._routerLost = False

    def _renewFailed(self, failure):
        failure.trap(RouterUnavailable, CauldronTimeout, LeaseError)
        conflict = failure.value
        if failure.check(LeaseConflict) and conflict.detail.get("service") == self.service:
            # The router gave our dispatcher name, or one of our keywords, to
            # another dispatcher (our lease expired while we could not reach
            # it): it is theirs now.
            self.fenced = True
            self.dispatcher.fence(conflict)
            return
        self._routerGone(failure)

    def _routerGone(self, failure):
        first = not self._routerLost
        if first:
            log.warn("{service}: cannot renew the lease: {why}", service=self.label,
                     why=failure.getErrorMessage())
            self._routerLost = True
        now = self.reactor.seconds()
        if (
            failure.check(RouterUnavailable)
            and self._maySpawn()
            and now - self._lastSpawn >= RESPAWN_INTERVAL
        ):
            # The router we used is gone (perhaps with the dispatcher that
            # ran it in-thread): start another, as at startup.
            self._lastSpawn = now
            try:
                self._spawnRouter(failure.value)
            except RouterUnavailable as e:
                if first:
                    log.info("{service}: {why}", service=self.label, why=e)

    def _doneRenewing(self, _):
        self._renewing = None

    # -- stop

    def stop(self):
        """Give the ports back (best effort, bounded by RELEASE_TIMEOUT)."""
        if self._renewing is not None:
            self._renewing.cancel()
        if self.dispatcher.dispatchAddress is None or self.fenced:
            d = defer.succeed(None)
        else:
            d = self._channel.request(lambda i: Release(i, self.service, self.instance,
                                                        self._secret, self.dispatcherName),
                                      f"release {self.label}",
                                      min(self._channel.timeout, RELEASE_TIMEOUT))
            d.addErrback(lambda f: None)
        d.addBoth(self._close)
        return d

    def _close(self, _):
        self._channel.close()
        self._forgetSpawnedConfig()
        if self.spawnedRouter is not None:
            self.spawnedRouter.stopService()
            self.spawnedRouter = None


def _holderLine(conflict):
    """One honest line about who holds what we asked for, for a dispatcher that must wait."""
    holder = conflict.detail
    where = (f"host {holder.get('host', '?')}, ports {holder.get('dispatchPort', '?')}/"
             f"{holder.get('broadcastPort', '?')}")
    if holder.get("keyword"):
        where = (f"keyword {holder['keyword']} is served by dispatcher "
                 f"{holder.get('dispatcher', '?')!r}, {where}")
    age, expiresIn = float(holder.get("age", 0)), float(holder.get("expiresIn", 0))
    interval = float(holder.get("ttl", DEFAULT_LEASE_TTL)) / 3
    if age <= 1.5 * interval:
        return (f"a live dispatcher holds it ({where}; it renewed its lease {age:.1f} s ago); "
                f"waiting up to {expiresIn + CONFLICT_MARGIN:.1f} s in case it is stopping")
    return (f"its previous dispatcher ({where}) stopped renewing {age:.1f} s ago; "
            f"waiting {expiresIn:.1f} s for its lease to expire")


class Locator:
    """A client's questions to the router: where do a service's dispatchers live?"""

    def __init__(self, config, transport, timeout=None):
        self._channel = routerChannel(config, transport, timeout)

    def locate(self, service, keyword=None):
        """Fires with a list of :class:`Where`, one per dispatcher of the service.

        Sorted by dispatcher name; with ``keyword``, just the dispatcher
        owning it (UnknownKeyword if no live dispatcher of the service owns
        it).  UnknownService if the service has no live dispatcher.
        ``owner`` identifies the run of a dispatcher that holds its lease;
        clients send it with their requests so no other dispatcher serves
        them.  In secure mode the router, authenticated by its own key,
        vouches for each dispatcher's key; a location without one is refused.
        """
        what = f"locate {service!r}" if keyword is None else f"locate {service}.{keyword}"
        d = self._channel.request(lambda i: Locate(i, service, keyword or ""), what)
        d.addCallback(self._where, service)
        return d

    def _where(self, locations, service):
        if not locations.dispatchers:
            raise UnknownService(f"the router names no dispatcher of service {service!r}")
        found = []
        for location in sorted(locations.dispatchers, key=lambda entry: entry.dispatcher):
            serverKey = None
            if self._channel.serverKey is not None:
                serverKey = location.serverKey.encode("ascii", "replace")
                if not isValidKey(serverKey):
                    raise ProtocolError(
                        f"the router named no valid key for dispatcher "
                        f"{location.dispatcher!r} of service {service!r}")
            found.append(Where(location.dispatchAddress, location.broadcastAddress,
                               location.owner, serverKey, location.dispatcher, location.host,
                               tuple(location.keywords)))
        return found

    def request(self, makeMessage, what):
        """Any other router request (e.g. ListServices)."""
        return self._channel.request(makeMessage, what)

    def close(self):
        self._channel.close()
