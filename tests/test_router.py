"""The router and its use by dispatchers and clients, in one process on real sockets."""

import random
import shutil
import socket
import tempfile

from twisted.internet import defer
from twisted.internet import reactor as globalReactor
from twisted.trial import unittest

from cauldron import config, keywords
from cauldron.client import ClientService
from cauldron.dispatcher import DispatcherService
from cauldron.errors import LeaseError, ProtocolError, RouterUnavailable, UnknownService
from cauldron.protocol import codec
from cauldron.protocol.messages import Lease, ListServices, Ping, Pong, ServiceList
from cauldron.requests import RequestChannel
from cauldron.router import RouterService
from cauldron.transport import Transport, bindAddress, portOf
from tests.helpers import HOST, eventually, freePort, randomLeaseStart

HEARTBEAT = 0.1
TTL = 3 * HEARTBEAT


def routedConfig(routerPort, firstPort=None, lastPort=None, **router):
    """A config using the router at ``routerPort`` on 127.0.0.1."""
    if firstPort is None:
        firstPort = randomLeaseStart()
        lastPort = firstPort + 40
    values = {"host": HOST, "port": routerPort, "first-port": firstPort,
              "last-port": lastPort, "timeout": 500, "allow-spawn": "no"}
    values.update(router)
    return config.Config.fromMapping({"zmq": {"host": HOST}, "zmq-router": values})


def freePair():
    """A port p such that p and p + 1 were both free a moment ago."""
    while True:
        port = freePort()
        with socket.socket() as probe:
            try:
                probe.bind((HOST, port + 1))
            except OSError:
                continue
        return port


class RouterTestCase(unittest.TestCase):
    """Starts routers, dispatchers and clients that are cleaned up after each test."""

    def startRouter(self, cfg):
        router = RouterService(cfg, reactor=globalReactor, leaseTTL=TTL)
        router.startService()
        self.addCleanup(lambda: router.running and router.stopService())
        return router

    def routerAndConfig(self, **kw):
        cfg = routedConfig(0, **kw)
        router = self.startRouter(cfg)
        return router, cfg.replace("zmq-router", "port", portOf(router.address))

    @defer.inlineCallbacks
    def startDispatcher(self, cfg, name="demo", value=1.0):
        dispatcher = DispatcherService(
            name, cfg, [keywords.Double("TEMP", initial=value)], reactor=globalReactor,
            heartbeatInterval=HEARTBEAT,
        )
        dispatcher.startService()
        self.addCleanup(lambda: dispatcher.running and dispatcher.stopService())
        yield dispatcher.whenReady()
        return dispatcher

    def startClient(self, cfg, timeout=1.0):
        client = ClientService(cfg, reactor=globalReactor, timeout=timeout)
        client.startService()
        self.addCleanup(client.stopService)
        return client

    def listServices(self, cfg):
        transport = Transport(globalReactor)
        self.addCleanup(transport.shutdown)
        channel = RequestChannel(transport, cfg.routerAddress(), "router", 1.0)
        self.addCleanup(channel.close)
        d = channel.request(lambda i: ListServices(i), "list")
        d.addCallback(lambda reply: {entry.service: entry for entry in reply.services})
        return d

    def crash(self, dispatcher):
        """Make a dispatcher fall silent as if killed: no heartbeat, no release."""
        dispatcher._heartbeat.stop()
        dispatcher._router._channel.close()
        dispatcher._router = None


class LeaseTests(RouterTestCase):
    """Dispatchers lease port pairs and clients find them through the router."""

    @defer.inlineCallbacks
    def test_twoDispatchersReachable(self):
        """Two dispatchers get distinct pairs in range and clients reach both by name."""
        router, cfg = self.routerAndConfig()
        first, last = cfg.get("zmq-router", "first-port"), cfg.get("zmq-router", "last-port")
        demo = yield self.startDispatcher(cfg, "demo", 1.0)
        other = yield self.startDispatcher(cfg, "other", 2.0)
        ports = {portOf(a) for d in (demo, other)
                 for a in (d.dispatchAddress, d.broadcastAddress)}
        self.assertEqual(len(ports), 4)
        self.assertTrue(all(first <= p < last for p in ports))
        client = self.startClient(cfg)
        for name, value in (("demo", "1.0"), ("other", "2.0")):
            remote = yield client.service(name)
            self.assertEqual((yield remote["TEMP"].read()), value)
        listed = yield self.listServices(cfg)
        self.assertEqual(sorted(listed), ["demo", "other"])
        self.assertEqual(listed["demo"].dispatchPort, portOf(demo.dispatchAddress))
        self.assertLess(listed["demo"].age, 1.0)

    @defer.inlineCallbacks
    def test_unknownService(self):
        """Locating a service nobody registered fails with UnknownService naming it."""
        router, cfg = self.routerAndConfig()
        client = self.startClient(cfg)
        error = yield self.assertFailure(client.service("nowhere"), UnknownService)
        self.assertIn("nowhere", str(error))

    @defer.inlineCallbacks
    def test_expiredLeaseReused(self):
        """A silent dispatcher disappears after the TTL and its ports go to the next one."""
        router, cfg = self.routerAndConfig()
        dead = yield self.startDispatcher(cfg, "dead")
        ports = (dead.dispatchAddress, dead.broadcastAddress)
        self.crash(dead)
        yield dead.stopService()
        yield eventually(lambda: router.leases.locate("dead", router._now()) is None, 2.0)
        fresh = yield self.startDispatcher(cfg, "fresh")
        self.assertEqual((fresh.dispatchAddress, fresh.broadcastAddress), ports)

    @defer.inlineCallbacks
    def test_restartedDispatcherGetsItsPortsBack(self):
        """A dispatcher restarted after a clean stop regains its previous pair."""
        router, cfg = self.routerAndConfig()
        yield self.startDispatcher(cfg, "filler")
        first = yield self.startDispatcher(cfg, "demo")
        ports = (first.dispatchAddress, first.broadcastAddress)
        yield first.stopService()
        again = yield self.startDispatcher(cfg, "demo")
        self.assertEqual((again.dispatchAddress, again.broadcastAddress), ports)

    @defer.inlineCallbacks
    def test_exhaustedPortsAreALeaseError(self):
        """When every pair is leased the next dispatcher fails cleanly; the rest still work."""
        port = freePair()
        router, cfg = self.routerAndConfig(firstPort=port, lastPort=port + 2)
        yield self.startDispatcher(cfg, "one")
        extra = DispatcherService("two", cfg, [keywords.Double("TEMP")], reactor=globalReactor,
                                  heartbeatInterval=HEARTBEAT)
        extra.startService()
        self.addCleanup(extra.stopService)
        error = yield self.assertFailure(extra.whenReady(), LeaseError)
        self.assertIn("no free port pair", str(error))
        remote = yield self.startClient(cfg).service("one")
        self.assertEqual((yield remote["TEMP"].read()), "1.0")

    @defer.inlineCallbacks
    def test_takenPortAvoided(self):
        """A leased port already taken on the host is reported and another pair is used."""
        router, cfg = self.routerAndConfig()
        first = cfg.get("zmq-router", "first-port")
        squatter = Transport(globalReactor)
        self.addCleanup(squatter.shutdown)
        squatter.router(lambda *a: None).bind(bindAddress("tcp", HOST, first))
        dispatcher = yield self.startDispatcher(cfg, "demo")
        self.assertNotIn(first, (portOf(dispatcher.dispatchAddress),
                                 portOf(dispatcher.broadcastAddress)))

    @defer.inlineCallbacks
    def test_unknownTransportRefused(self):
        """A lease for a transport clients cannot use is refused, naming it."""
        router, cfg = self.routerAndConfig()
        transport = Transport(globalReactor)
        self.addCleanup(transport.shutdown)
        channel = RequestChannel(transport, cfg.routerAddress(), "router", 2.0)
        self.addCleanup(channel.close)
        error = yield self.assertFailure(
            channel.request(lambda i: Lease(i, "demo", HOST, "i1", [], 1.0, "udp"), "lease"),
            ProtocolError)
        self.assertIn("'udp'", str(error))
        self.assertIsNone(router.leases.locate("demo", router._now()))

    @defer.inlineCallbacks
    def test_malformedInputSurvived(self):
        """Random frames sent to the router are counted and it keeps answering."""
        router, cfg = self.routerAndConfig()
        transport = Transport(globalReactor)
        self.addCleanup(transport.shutdown)
        dealer = transport.dealer(lambda frames: None)
        dealer.connect(cfg.routerAddress())
        rng = random.Random(7)
        for _ in range(500):
            frames = [rng.randbytes(rng.randrange(0, 40)) for _ in range(rng.randrange(1, 4))]
            if rng.random() < 0.3:
                frames[0] = codec.VERSION
            dealer.send(frames)
        channel = RequestChannel(transport, cfg.routerAddress(), "router", 2.0)
        self.addCleanup(channel.close)
        pong = yield channel.request(lambda i: Ping(i), "ping")
        self.assertIsInstance(pong, Pong)
        yield eventually(lambda: router.malformed.count >= 400, 2.0)


class RestartTests(RouterTestCase):
    """Restarts of the router and of dispatchers heal without anyone's help."""

    @defer.inlineCallbacks
    def test_routerRestartRepopulated(self):
        """A router restarted on its address learns the live dispatchers' existing ports."""
        router, cfg = self.routerAndConfig()
        demo = yield self.startDispatcher(cfg, "demo")
        other = yield self.startDispatcher(cfg, "other")
        router.stopService()
        reborn = self.startRouter(cfg)
        yield eventually(lambda: len(reborn.leases.leases(reborn._now())) == 2, 3.0)
        listed = yield self.listServices(cfg)
        self.assertEqual(listed["demo"].dispatchPort, portOf(demo.dispatchAddress))
        self.assertEqual(listed["other"].broadcastPort, portOf(other.broadcastAddress))

    @defer.inlineCallbacks
    def test_clientFollowsMovedDispatcher(self):
        """A monitor follows its service to new ports after a restart, re-primed."""
        router, cfg = self.routerAndConfig()
        yield self.startDispatcher(cfg, "filler")
        demo = yield self.startDispatcher(cfg, "demo", 1.0)
        client = self.startClient(cfg)
        remote = yield client.service("demo")
        seen = []
        yield remote["TEMP"].monitor(lambda value: seen.append(value.ascii))
        yield eventually(lambda: remote.heartbeatInterval == HEARTBEAT)
        self.crash(demo)
        yield demo.stopService()
        yield eventually(lambda: not remote.connected, 2.0)
        # Another service takes the old pair once it expires; demo comes back elsewhere.
        yield eventually(lambda: router.leases.locate("demo", router._now()) is None, 2.0)
        yield self.startDispatcher(cfg, "thief")
        moved = yield self.startDispatcher(cfg, "demo", 7.0)
        yield eventually(lambda: seen[-1:] == ["7.0"], 5.0)
        self.assertEqual(remote.dispatchAddress, moved.dispatchAddress)
        self.assertTrue(remote.connected)


class SpawnTests(RouterTestCase):
    """What a dispatcher does when no router answers."""

    @defer.inlineCallbacks
    def test_noRouterNoSpawn(self):
        """With allow-spawn = no the dispatcher fails with RouterUnavailable naming the address."""
        cfg = routedConfig(freePort())
        dispatcher = DispatcherService("demo", cfg, [keywords.Double("TEMP")],
                                       reactor=globalReactor, heartbeatInterval=HEARTBEAT)
        dispatcher.startService()
        self.addCleanup(dispatcher.stopService)
        error = yield self.assertFailure(dispatcher.whenReady(), RouterUnavailable)
        self.assertIn(cfg.routerAddress(), str(error))

    @defer.inlineCallbacks
    def test_spawnInThread(self):
        """With allow-spawn = yes and process = thread the dispatcher runs its own router."""
        cfg = routedConfig(freePort(), **{"allow-spawn": "yes", "process": "thread"})
        dispatcher = yield self.startDispatcher(cfg, "demo", 4.0)
        self.assertIsNotNone(dispatcher._router.spawnedRouter)
        remote = yield self.startClient(cfg).service("demo")
        self.assertEqual((yield remote["TEMP"].read()), "4.0")

    @defer.inlineCallbacks
    def test_racingSpawnersShareOneRouter(self):
        """Two dispatchers spawning at once end up with one router that both use."""
        cfg = routedConfig(freePort(), **{"allow-spawn": "yes", "process": "thread"})
        one, two = yield defer.gatherResults([
            self.startDispatcher(cfg, "one"), self.startDispatcher(cfg, "two")])
        spawned = [d._router.spawnedRouter for d in (one, two) if d._router.spawnedRouter]
        self.assertEqual(len(spawned), 1)
        listed = yield self.listServices(cfg)
        self.assertEqual(sorted(listed), ["one", "two"])

    @defer.inlineCallbacks
    def test_clientWithoutRouter(self):
        """A client with no router fails within its timeout with RouterUnavailable naming it."""
        cfg = routedConfig(freePort())
        client = self.startClient(cfg, timeout=0.5)
        started = globalReactor.seconds()
        error = yield self.assertFailure(client.service("demo"), RouterUnavailable)
        self.assertIn(cfg.routerAddress(), str(error))
        self.assertLess(globalReactor.seconds() - started, 2.0)




class RecoveryTests(RouterTestCase):
    """Dispatchers keep the address book alive whatever happens to one router."""

    @defer.inlineCallbacks
    def test_threadRouterReplacedWhenItsDispatcherStops(self):
        """When the dispatcher running the router in-thread stops, another starts one."""
        cfg = routedConfig(freePort(), **{"allow-spawn": "yes", "process": "thread"})
        first = yield self.startDispatcher(cfg, "first")
        second = yield self.startDispatcher(cfg, "second")
        self.assertIsNotNone(first._router.spawnedRouter)
        self.assertIsNone(second._router.spawnedRouter)
        yield first.stopService()
        yield eventually(lambda: second._router.spawnedRouter is not None, 5.0)
        router = second._router.spawnedRouter
        yield eventually(lambda: router.leases.locate("second", router._now()) is not None, 5.0)
        remote = yield self.startClient(cfg).service("second")
        self.assertEqual((yield remote["TEMP"].read()), "1.0")

    @defer.inlineCallbacks
    def test_leaseLivesThreeOfTheDispatchersHeartbeats(self):
        """A dispatcher with slow heartbeats gets a lease of three heartbeats, not the minimum."""
        router, cfg = self.routerAndConfig()
        slow = DispatcherService("slow", cfg, [keywords.Double("TEMP")], reactor=globalReactor,
                                 heartbeatInterval=2.0)
        slow.startService()
        self.addCleanup(slow.stopService)
        yield slow.whenReady()
        self.assertEqual(router.leases.locate("slow", router._now()).ttl, 6.0)

    @defer.inlineCallbacks
    def test_wildcardHostIsNotAdvertised(self):
        """A dispatcher bound on every interface is advertised by its host name, not '*'."""
        router, cfg = self.routerAndConfig()
        dispatcher = yield self.startDispatcher(cfg.replace("zmq", "host", "*"), "wide")
        lease = router.leases.locate("wide", router._now())
        self.assertEqual(lease.host, socket.getfqdn())
        self.assertTrue(dispatcher.dispatchAddress.startswith("tcp://"))

    @defer.inlineCallbacks
    def test_remoteRouterIsNotStartedHere(self):
        """A router configured on another machine is not started here; the error says why."""
        cfg = routedConfig(freePort(), host="10.255.255.1",
                           **{"allow-spawn": "yes", "process": "thread"})
        dispatcher = DispatcherService("demo", cfg, [keywords.Double("TEMP")],
                                       reactor=globalReactor, heartbeatInterval=HEARTBEAT)
        dispatcher.startService()
        self.addCleanup(dispatcher.stopService)
        error = yield self.assertFailure(dispatcher.whenReady(), RouterUnavailable)
        self.assertIn("10.255.255.1", str(error))
        self.assertIn("starting one here failed", str(error))

    @defer.inlineCallbacks
    def test_ipcDispatcherRegistersAgain(self):
        """An ipc dispatcher registers again after a router restart and is located as ipc."""
        folder = tempfile.mkdtemp(prefix="cauldron-ipc-")
        self.addCleanup(shutil.rmtree, folder, True)
        router, routerCfg = self.routerAndConfig()  # the router's own [zmq] says tcp
        cfg = routerCfg.replace("zmq", "protocol", "ipc").replace("zmq", "host", folder + "/svc")
        dispatcher = yield self.startDispatcher(cfg, "ipcsvc")
        self.assertTrue(dispatcher.dispatchAddress.startswith("ipc://"))
        router.stopService()
        reborn = self.startRouter(routerCfg)
        yield eventually(lambda: reborn.leases.locate("ipcsvc", reborn._now()) is not None, 3.0)
        remote = yield self.startClient(cfg).service("ipcsvc")
        self.assertEqual((yield remote["TEMP"].read()), "1.0")


del ServiceList
