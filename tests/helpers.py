"""Shared fixtures for the real-socket tests: direct-mode configs, services, waits.

Everything here runs on the global reactor (the trial TestCases that use it
spin it), binds ephemeral ports on 127.0.0.1 and registers its own cleanup on
the test case, so the trial janitor finds no sockets or timers left behind.
"""

import random

from twisted.internet import defer, task
from twisted.internet import reactor as globalReactor

from cauldron import config
from cauldron.client import ClientService
from cauldron.dispatcher import DispatcherService
from cauldron.protocol import codec
from cauldron.transport import Transport, bindAddress, portOf

HOST = "127.0.0.1"


#: lease ranges of tests lie below Linux's ephemeral ports (32768-60999), where
#: the ports other tests bind with port 0 can never collide with them
LEASE_RANGE_FLOOR, LEASE_RANGE_CEILING = 20000, 32768


def randomLeaseStart(width=40):
    """The even first port of a random lease range of ``width`` ports below the ephemeral ones."""
    return random.randrange(LEASE_RANGE_FLOOR, LEASE_RANGE_CEILING - width, 2)


def directConfig(dispatchPort=0, broadcastPort=0):
    """A router-less config: the dispatcher binds (and clients find it) on the given ports."""
    return config.Config.fromMapping({
        "zmq": {"host": HOST, "dispatch-port": dispatchPort, "broadcast-port": broadcastPort},
        "zmq-router": {"enable": "no"},
    })


@defer.inlineCallbacks
def eventually(predicate, timeout=5.0, reactor=globalReactor, interval=0.005):
    """Wait until ``predicate()`` is true, polling; AssertionError after ``timeout`` s."""
    deadline = reactor.seconds() + timeout
    while not predicate():
        if reactor.seconds() > deadline:
            raise AssertionError(f"not true within {timeout} s: {predicate}")
        yield task.deferLater(reactor, interval, lambda: None)


def turn(reactor=globalReactor):
    """Yield to the reactor once (a Deferred firing on its next iteration)."""
    return task.deferLater(reactor, 0, lambda: None)


@defer.inlineCallbacks
def startDispatcher(testCase, keywords=(), name="demo", heartbeatInterval=1.0,
                    dispatchPort=0, broadcastPort=0, **kwargs):
    """A running dispatcher (stopped at cleanup); fires with it once it serves."""
    dispatcher = DispatcherService(
        name, directConfig(dispatchPort, broadcastPort), keywords,
        reactor=globalReactor, heartbeatInterval=heartbeatInterval, **kwargs,
    )
    dispatcher.startService()
    testCase.addCleanup(dispatcher.stopService)
    yield dispatcher.whenReady()
    return dispatcher


def clientConfigFor(dispatchAddress, broadcastAddress):
    """The config a client needs to reach a dispatcher bound at these addresses."""
    return directConfig(portOf(dispatchAddress), portOf(broadcastAddress))


def startClient(testCase, dispatchAddress, broadcastAddress, timeout=2.0, **kwargs):
    """A running ClientService aimed at the given addresses (stopped at cleanup)."""
    client = ClientService(
        clientConfigFor(dispatchAddress, broadcastAddress), reactor=globalReactor,
        timeout=timeout, **kwargs,
    )
    client.startService()
    testCase.addCleanup(client.stopService)
    return client


@defer.inlineCallbacks
def startPair(testCase, keywords, name="demo", heartbeatInterval=1.0, timeout=2.0, **kwargs):
    """``(dispatcher, client, remoteService)`` for ``keywords``, all cleaned up."""
    dispatcher = yield startDispatcher(
        testCase, keywords, name=name, heartbeatInterval=heartbeatInterval, **kwargs
    )
    client = startClient(
        testCase, dispatcher.dispatchAddress, dispatcher.broadcastAddress, timeout=timeout
    )
    remote = yield client.service(name)
    return dispatcher, client, remote


class FakePeer:
    """A raw ROUTER that records decoded requests and answers only when told to."""

    def __init__(self, testCase, reactor=globalReactor):
        self.transport = Transport(reactor)
        testCase.addCleanup(self.transport.shutdown)
        self.requests = []
        self.router = self.transport.router(self._received)
        self.address = self.router.bind(bindAddress("tcp", HOST, 0))

    def _received(self, identity, frames):
        self.requests.append((identity, codec.decode(frames)))

    def reply(self, identity, message):
        return self.router.sendTo(identity, codec.encode(message))


class Silent:
    """A bound address that never answers, plus a second unused one for broadcasts."""

    def __init__(self, testCase, reactor=globalReactor):
        self.transport = Transport(reactor)
        testCase.addCleanup(self.transport.shutdown)
        self.requests = []
        router = self.transport.router(lambda identity, frames: self.requests.append(frames))
        self.dispatchAddress = router.bind(bindAddress("tcp", HOST, 0))
        self.broadcastAddress = self.transport.publisher().bind(bindAddress("tcp", HOST, 0))


def freePort():
    """A TCP port that was free a moment ago (bound ephemerally, then closed)."""
    transport = Transport(globalReactor)
    try:
        router = transport.router(lambda identity, frames: None)
        return portOf(router.bind(bindAddress("tcp", HOST, 0)))
    finally:
        transport.shutdown()
