"""How dispatchers and clients use the router.

:class:`RouterLink` is a dispatcher's side: lease a port pair, bind it
(asking again when a port turns out to be taken), renew the lease with every
heartbeat, register again with the same ports when a restarted router has
forgotten it, and spawn a router when none answers and ``allow-spawn`` says
so.  :class:`Locator` is a client's side: where does a service live?
"""

import os
import subprocess
import sys
import tempfile

from twisted.internet import defer, task
from twisted.logger import Logger

from cauldron.errors import (
    CauldronTimeout,
    LeaseConflict,
    LeaseError,
    RouterUnavailable,
)
from cauldron.protocol.messages import Lease, Locate, Register, Release, Renew
from cauldron.requests import RequestChannel
from cauldron.router import DEFAULT_LEASE_TTL, RouterService
from cauldron.transport import AddressInUse, bindAddress, portOf

__all__ = ["RouterLink", "Locator", "routerChannel", "spawnRouterProcess"]

log = Logger()

#: ports found taken after which a dispatcher gives up asking for more
MAX_BIND_ATTEMPTS = 20


def routerChannel(config, transport, timeout=None):
    """A request channel to the configured router; silence is RouterUnavailable."""
    address = config.routerAddress()

    def unavailable(what, seconds):
        return RouterUnavailable(f"no router answers at {address} ({what}: no reply "
                                 f"within {seconds:g} s)")

    return RequestChannel(
        transport, address, f"router at {address}",
        config.timeoutSeconds() if timeout is None else timeout, onTimeout=unavailable,
    )


def writeConfigFile(config):
    """Write a config's values to a temporary INI file (for a spawned router)."""
    handle, path = tempfile.mkstemp(prefix="cauldron-router-", suffix=".ini")
    with os.fdopen(handle, "w") as f:
        for section, values in config.asDict().items():
            f.write(f"[{section}]\n")
            for key, value in values.items():
                if isinstance(value, bool):
                    value = "yes" if value else "no"
                f.write(f"{key} = {value}\n")
    return path


def spawnRouterProcess(config):
    """Start ``Cauldron-router-zmq`` as a process that outlives this one."""
    path = config.path or writeConfigFile(config)
    return subprocess.Popen(
        [sys.executable, "-c", "from cauldron.cli import routerMain; routerMain()", "-c", path],
        stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        start_new_session=True, close_fds=True,
    )


class RouterLink:
    """A dispatcher's lease with the router, from start to release."""

    def __init__(self, dispatcher, transport, reactor):
        self.dispatcher = dispatcher
        self.config = dispatcher.config
        self.reactor = reactor
        self.host = self.config.get("zmq", "host")
        self.spawnedRouter = None
        self._transport = transport
        self._channel = routerChannel(self.config, transport)
        self._renewing = None
        self._routerLost = False

    @property
    def service(self):
        return self.dispatcher.name

    @property
    def instance(self):
        return self.dispatcher.epoch

    # -- start: lease, bind, and spawn a router if there is none

    @defer.inlineCallbacks
    def start(self):
        """Lease ports and bind them; fires with the bound addresses."""
        avoid = []
        for _ in range(MAX_BIND_ATTEMPTS):
            leased = yield self._lease(avoid)
            protocol = self.config.get("zmq", "protocol")
            try:
                addresses = self.dispatcher.bind(
                    bindAddress(protocol, self.host, leased.dispatchPort),
                    bindAddress(protocol, self.host, leased.broadcastPort),
                )
            except AddressInUse as e:
                log.warn("{service}: {address} is taken on this host; asking for other ports",
                         service=self.service, address=e.address)
                avoid.extend([leased.dispatchPort, leased.broadcastPort])
                continue
            return addresses
        raise LeaseError(f"{self.service}: {MAX_BIND_ATTEMPTS} leased port pairs were all "
                         f"taken on {self.host}: {sorted(set(avoid))}")

    @defer.inlineCallbacks
    def _lease(self, avoid):
        """Ask for a lease, spawning a router or waiting out a conflict as needed."""
        deadline = self.reactor.seconds() + self._patience()
        spawned = False
        while True:
            try:
                leased = yield self._channel.request(
                    lambda i: Lease(i, self.service, self.host, self.instance, list(avoid)),
                    f"lease ports for {self.service}",
                )
                return leased
            except RouterUnavailable:
                if spawned or not self.config.get("zmq-router", "allow-spawn"):
                    raise
                self._spawnRouter()
                spawned = True
            except LeaseConflict as e:
                # A previous run of this service may still hold the lease
                # (killed without releasing): it expires within one TTL.
                if self.reactor.seconds() >= deadline:
                    raise
                log.info("{service}: {why}; waiting for it to expire", service=self.service,
                         why=e)
                yield task.deferLater(self.reactor, 0.25, lambda: None)

    def _patience(self):
        return DEFAULT_LEASE_TTL + 2 * self.dispatcher.heartbeatInterval

    def _spawnRouter(self):
        mode = self.config.get("zmq-router", "process")
        address = self.config.routerAddress()
        if mode == "thread":
            router = RouterService(self.config, reactor=self.reactor)
            try:
                router.startService()
            except AddressInUse:
                log.info("another router just bound {address}; using it", address=address)
                return
            log.info("no router answered at {address}: started one in this process",
                     address=address)
            self.spawnedRouter = router
        else:
            process = spawnRouterProcess(self.config)
            log.info("no router answered at {address}: started one as process {pid}",
                     address=address, pid=process.pid)

    # -- heartbeat: renew, or register again after a router restart

    def beat(self):
        """Renew the lease (called on every dispatcher heartbeat)."""
        if self._renewing is not None or self.dispatcher.dispatchAddress is None:
            return
        d = self._channel.request(lambda i: Renew(i, self.service, self.instance),
                                  f"renew {self.service}")
        d.addErrback(self._renewFailed)
        d.addCallbacks(self._renewed, self._routerGone)
        d.addBoth(self._doneRenewing)
        self._renewing = d

    def _renewFailed(self, failure):
        failure.trap(LeaseError)
        # The router does not know us (it restarted, or our lease expired
        # while we were stopped): claim the ports we hold.
        log.info("{service}: the router forgot our lease; registering again",
                 service=self.service)
        return self._channel.request(
            lambda i: Register(
                i, self.service, self.host, self.instance,
                portOf(self.dispatcher.dispatchAddress), portOf(self.dispatcher.broadcastAddress),
            ),
            f"register {self.service}",
        )

    def _renewed(self, _):
        if self._routerLost:
            log.info("{service}: the router answers again", service=self.service)
            self._routerLost = False

    def _routerGone(self, failure):
        failure.trap(RouterUnavailable, CauldronTimeout, LeaseError)
        if not self._routerLost:
            log.warn("{service}: cannot renew the lease: {why}", service=self.service,
                     why=failure.getErrorMessage())
            self._routerLost = True

    def _doneRenewing(self, _):
        self._renewing = None

    # -- stop

    def stop(self):
        """Give the ports back (best effort, bounded by the router timeout)."""
        if self._renewing is not None:
            self._renewing.cancel()
        if self.dispatcher.dispatchAddress is None:
            d = defer.succeed(None)
        else:
            d = self._channel.request(lambda i: Release(i, self.service, self.instance),
                                      f"release {self.service}")
            d.addErrback(lambda f: None)
        d.addBoth(self._close)
        return d

    def _close(self, _):
        self._channel.close()
        if self.spawnedRouter is not None:
            self.spawnedRouter.stopService()
            self.spawnedRouter = None


class Locator:
    """A client's questions to the router: where does a service live?"""

    def __init__(self, config, transport, timeout=None):
        self._channel = routerChannel(config, transport, timeout)

    def locate(self, service):
        """Fires with ``(dispatchAddress, broadcastAddress)``; UnknownService if none."""
        d = self._channel.request(lambda i: Locate(i, service), f"locate {service!r}")
        d.addCallback(lambda where: (where.dispatchAddress, where.broadcastAddress))
        return d

    def request(self, makeMessage, what):
        """Any other router request (e.g. ListServices)."""
        return self._channel.request(makeMessage, what)

    def close(self):
        self._channel.close()
