"""The router and its use by dispatchers and clients, in one process on real sockets."""

import random
import shutil
import socket
import tempfile

from twisted.internet import defer, task
from twisted.internet import reactor as globalReactor
from twisted.logger import capturedLogs, formatEvent
from twisted.trial import unittest

from cauldron import config, keywords
from cauldron.client import ClientService
from cauldron.dispatcher import DispatcherService
from cauldron.errors import (
    LeaseConflict,
    LeaseError,
    PermissionDenied,
    ProtocolError,
    RouterUnavailable,
    UnknownKeyword,
    UnknownService,
)
from cauldron.protocol import codec
from cauldron.protocol.messages import (
    DispatcherLocation,
    Lease,
    ListServices,
    Locate,
    Locations,
    Ping,
    Pong,
    Register,
    ServiceList,
)
from cauldron.requests import RequestChannel
from cauldron.router import RouterService
from cauldron.routerlink import Locator, Where
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
    """A port p such that p and p + 1 were both free a moment ago.

    Drawn below the ephemeral ports, where the sockets other tests bind to
    port 0 can never land between the check and the use.
    """
    while True:
        port = randomLeaseStart(2)
        with socket.socket() as first, socket.socket() as second:
            try:
                first.bind((HOST, port))
                second.bind((HOST, port + 1))
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

    @defer.inlineCallbacks
    def startPart(self, cfg, service, dispatcher, names, heartbeatInterval=HEARTBEAT):
        """A dispatcher named ``dispatcher`` serving keywords ``names`` of ``service``."""
        part = DispatcherService(
            service, cfg, [keywords.Integer(name, initial=i) for i, name in enumerate(names)],
            reactor=globalReactor, heartbeatInterval=heartbeatInterval, dispatcher=dispatcher,
        )
        part.startService()
        self.addCleanup(lambda: part.running and part.stopService())
        yield part.whenReady()
        return part

    def channel(self, cfg, timeout=1.0):
        """Raw requests to the router of ``cfg``."""
        transport = Transport(globalReactor)
        self.addCleanup(transport.shutdown)
        channel = RequestChannel(transport, cfg.routerAddress(), "router", timeout)
        self.addCleanup(channel.close)
        return channel

    def listServices(self, cfg):
        d = self.channel(cfg).request(lambda i: ListServices(i), "list")
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
    def demoThroughRouter(self):
        """The RemoteService of a ``demo`` dispatcher (TEMP = 4.5), found through a router."""
        router, cfg = self.routerAndConfig()
        yield self.startDispatcher(cfg, "demo", value=4.5)
        remote = yield self.startClient(cfg).service("demo")
        return remote

    @defer.inlineCallbacks
    def test_refusedByAnotherRunSentAgainToTheOwner(self):
        """A NotOwner reply: the client asks the router, sends again; the caller gets the value."""
        remote = yield self.demoThroughRouter()
        primary = remote.primary
        real = primary.owner
        primary.owner = "a-run-long-gone"  # as if the dispatcher restarted since we asked
        self.assertEqual((yield remote["TEMP"].read()), "4.5")
        self.assertEqual(primary.owner, real)

    @defer.inlineCallbacks
    def test_cancelledWhileSentAgain(self):
        """A read cancelled while its NotOwner resend is under way stays cancelled, quietly."""
        remote = yield self.demoThroughRouter()
        primary = remote.primary
        answers, held = [], defer.Deferred()
        locate = primary._locate

        def heldLocate():  # the router's answer waits until the read is cancelled
            answers.append(locate())
            return held

        primary._locate = heldLocate
        primary.owner = "a-run-long-gone"
        read = remote["TEMP"].read()
        yield eventually(lambda: answers)
        read.cancel()
        yield self.assertFailure(read, defer.CancelledError)
        held.callback((yield answers[0]))  # the resend goes on, and must not fire `read` again
        yield eventually(lambda: primary.owner != "a-run-long-gone")
        self.assertEqual((yield remote["TEMP"].read()), "4.5")  # and nothing was left broken

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


class SeveralDispatchersTests(RouterTestCase):
    """One service spread over several dispatchers, each with its own lease and keywords."""

    @defer.inlineCallbacks
    def startDeimot(self, cfg):
        motors = yield self.startPart(cfg, "deimot", "motors", ["M1", "M2"])
        temps = yield self.startPart(cfg, "DEIMOT", "Temps", ["TEMP"])
        return motors, temps

    @defer.inlineCallbacks
    def test_locateAnswersEveryDispatcher(self):
        """Locate names each live dispatcher: where it listens, its run and its keywords."""
        router, cfg = self.routerAndConfig()
        motors, temps = yield self.startDeimot(cfg)
        self.assertEqual((temps.name, temps.dispatcherName), ("deimot", "temps"))
        self.assertNotEqual(motors.dispatchAddress, temps.dispatchAddress)
        reply = yield self.channel(cfg).request(lambda i: Locate(i, "DeiMot"), "locate")
        self.assertIsInstance(reply, Locations)
        self.assertEqual(reply.service, "deimot")
        self.assertEqual(reply.dispatchers, [
            DispatcherLocation("motors", HOST, motors.dispatchAddress, motors.broadcastAddress,
                               motors.epoch, "", ["M1", "M2"]),
            DispatcherLocation("temps", HOST, temps.dispatchAddress, temps.broadcastAddress,
                               temps.epoch, "", ["TEMP"]),
        ])
        locator = Locator(cfg, self.transport())
        self.addCleanup(locator.close)
        where = yield locator.locate("deimot")
        self.assertEqual(where, [
            Where(motors.dispatchAddress, motors.broadcastAddress, motors.epoch, None,
                  "motors", HOST, ("M1", "M2")),
            Where(temps.dispatchAddress, temps.broadcastAddress, temps.epoch, None,
                  "temps", HOST, ("TEMP",)),
        ])
        # A dispatcher that stops is no longer named; the last one gone, nor is the service.
        yield motors.stopService()
        where = yield locator.locate("deimot")
        self.assertEqual([w.dispatcher for w in where], ["temps"])
        yield temps.stopService()
        error = yield self.assertFailure(locator.locate("deimot"), UnknownService)
        self.assertIn("'deimot'", str(error))

    def transport(self):
        transport = Transport(globalReactor)
        self.addCleanup(transport.shutdown)
        return transport

    @defer.inlineCallbacks
    def test_locateByKeyword(self):
        """Locate with a keyword names only the dispatcher owning it."""
        router, cfg = self.routerAndConfig()
        motors, temps = yield self.startDeimot(cfg)
        channel = self.channel(cfg)
        reply = yield channel.request(lambda i: Locate(i, "deimot", "temp"), "locate")
        self.assertEqual([(entry.dispatcher, entry.dispatchAddress, entry.owner)
                          for entry in reply.dispatchers],
                         [("temps", temps.dispatchAddress, temps.epoch)])
        locator = Locator(cfg, self.transport())
        self.addCleanup(locator.close)
        [where] = yield locator.locate("deimot", "M2")
        self.assertEqual((where.dispatcher, where.dispatchAddress, where.keywords),
                         ("motors", motors.dispatchAddress, ("M1", "M2")))
        error = yield self.assertFailure(locator.locate("deimot", "NOPE"), UnknownKeyword)
        self.assertIn("'NOPE'", str(error))
        self.assertIn("'deimot'", str(error))
        yield self.assertFailure(locator.locate("nowhere", "M1"), UnknownService)
        # The owner gone, its keywords are nobody's.
        yield motors.stopService()
        yield self.assertFailure(locator.locate("deimot", "M1"), UnknownKeyword)

    @defer.inlineCallbacks
    def test_serviceListHasOneEntryPerDispatcher(self):
        """ListServices lists each dispatcher, by service then dispatcher name."""
        router, cfg = self.routerAndConfig()
        motors, temps = yield self.startDeimot(cfg)
        plain = yield self.startDispatcher(cfg, "alone")
        reply = yield self.channel(cfg).request(lambda i: ListServices(i), "list")
        self.assertEqual(
            [(e.service, e.dispatcher, e.keywords, e.dispatchPort) for e in reply.services],
            [("alone", "alone", 1, portOf(plain.dispatchAddress)),
             ("deimot", "motors", 2, portOf(motors.dispatchAddress)),
             ("deimot", "temps", 1, portOf(temps.dispatchAddress))])
        self.assertTrue(all(entry.age < 1.0 for entry in reply.services))

    @defer.inlineCallbacks
    def test_keywordConflictOverTheWire(self):
        """A keyword served by one dispatcher is refused to another, named with its owner."""
        router, cfg = self.routerAndConfig()
        motors, temps = yield self.startDeimot(cfg)
        error = yield self.assertFailure(self.channel(cfg).request(
            lambda i: Lease(i, "deimot", HOST, "rival", [], HEARTBEAT, dispatcher="extra",
                            keywords=["X", "m2"]), "lease"), LeaseConflict)
        self.assertTrue(str(error).startswith(
            "keyword DEIMOT.M2 is served by dispatcher 'motors' of service 'deimot' on host "
            f"'{HOST}', ports {portOf(motors.dispatchAddress)}/"), str(error))
        self.assertEqual(
            (error.detail["keyword"], error.detail["dispatcher"], error.detail["instance"]),
            ("M2", "motors", motors.epoch))
        # A dispatcher claiming it waits for the owner's lease to expire, then gives up.
        extra = DispatcherService("deimot", cfg, [keywords.Integer("TEMP")],
                                  reactor=globalReactor, heartbeatInterval=HEARTBEAT,
                                  dispatcher="extra")
        extra.startService()
        self.addCleanup(extra.stopService)
        error = yield self.assertFailure(extra.whenReady(), LeaseConflict)
        self.assertIn("keyword TEMP is served by dispatcher 'temps'", str(error))
        self.assertEqual(error.detail["dispatcher"], "temps")
        self.assertEqual(extra.dispatchAddress, None)
        self.assertEqual([lease.dispatcher for lease in router.leases.dispatchers("deimot",
                                                                                  router._now())],
                         ["motors", "temps"])
        self.assertEqual((motors.state, temps.state), ("serving", "serving"))

    @defer.inlineCallbacks
    def test_keywordFreedWhenItsDispatcherStops(self):
        """Once its owner has stopped, a keyword goes to the next dispatcher claiming it."""
        router, cfg = self.routerAndConfig()
        motors, temps = yield self.startDeimot(cfg)
        yield temps.stopService()
        spare = yield self.startPart(cfg, "deimot", "spare", ["TEMP"])
        lease = router.leases.owner("deimot", "TEMP", router._now())
        self.assertEqual((lease.dispatcher, lease.instance), ("spare", spare.epoch))

    @defer.inlineCallbacks
    def test_sameDispatcherNameIsOneOwner(self):
        """A second process with a live dispatcher's name waits, then gives up, as ever."""
        router, cfg = self.routerAndConfig()
        motors, temps = yield self.startDeimot(cfg)
        twin = DispatcherService("deimot", cfg, [keywords.Integer("OTHER")],
                                 reactor=globalReactor, heartbeatInterval=HEARTBEAT,
                                 dispatcher="MOTORS")
        twin.startService()
        self.addCleanup(twin.stopService)
        error = yield self.assertFailure(twin.whenReady(), LeaseConflict)
        self.assertIn("or serve another dispatcher name", str(error))
        self.assertEqual(error.detail["dispatcher"], "motors")
        self.assertEqual(router.leases.owner("deimot", "M1", router._now()).instance,
                         motors.epoch)
        self.assertIsNone(router.leases.owner("deimot", "OTHER", router._now()))

    @defer.inlineCallbacks
    def test_restartedDispatcherTakesItsNameOver(self):
        """A dispatcher restarted at once on its ports takes over its crashed run's lease."""
        router, cfg = self.routerAndConfig()
        # Slow heartbeats: the crashed run's lease lives 6 s, far longer than the test.
        first = yield self.startPart(cfg, "deimot", "motors", ["M1"], heartbeatInterval=2.0)
        ports = (first.dispatchAddress, first.broadcastAddress)
        self.crash(first)
        yield first.stopService()
        second = yield self.startPart(cfg, "deimot", "motors", ["M1", "M3"],
                                      heartbeatInterval=2.0)
        self.assertEqual((second.dispatchAddress, second.broadcastAddress), ports)
        lease = router.leases.owner("deimot", "M3", router._now())
        self.assertEqual((lease.instance, lease.keywords), (second.epoch,
                                                            frozenset({"M1", "M3"})))

    @defer.inlineCallbacks
    def test_fencedWhenItsKeywordIsTakenMeanwhile(self):
        """A dispatcher whose lease lapsed, and whose keyword another took, is fenced."""
        router, cfg = self.routerAndConfig()
        motors, temps = yield self.startDeimot(cfg)
        fenced = motors.whenFenced()
        # Its lease lapses (as when the router could not hear it) and a rival claims M1.
        self.assertTrue(router.leases.release("deimot", motors.epoch, router._now(),
                                              motors._router._secret, dispatcher="motors"))
        router.leases.lease("deimot", "elsewhere", "rival", router._now(), ttl=60.0,
                            dispatcher="rival", keywords=["M1"])
        conflict = yield fenced
        self.assertEqual((conflict.detail["keyword"], conflict.detail["dispatcher"]),
                         ("M1", "rival"))
        self.assertEqual((motors.state, temps.state), ("fenced", "serving"))

    @defer.inlineCallbacks
    def test_keywordAddedWhileServingIsAnnounced(self):
        """A keyword added to a running dispatcher is the router's to hand out next heartbeat."""
        router, cfg = self.routerAndConfig()
        motors, temps = yield self.startDeimot(cfg)
        lease = router.leases.locate("deimot", router._now(), dispatcher="motors")
        motors.addKeyword(keywords.Integer("M3"))
        yield eventually(lambda: router.leases.owner("deimot", "M3", router._now()) is not None)
        now = router._now()
        self.assertEqual(router.leases.owner("deimot", "M3", now).instance, motors.epoch)
        held = router.leases.locate("deimot", now, dispatcher="motors")
        self.assertEqual((held.ports, held.secret, held.granted),
                         (lease.ports, lease.secret, lease.granted))
        self.assertEqual(held.keywords, frozenset({"M1", "M2", "M3"}))

    @defer.inlineCallbacks
    def test_addedKeywordOfAnotherDispatcherRefusedNotFenced(self):
        """Adding a keyword another dispatcher serves is refused and said; the lease lives on.

        The refused set is not asked for again (even once the owner is gone)
        until the keywords change once more.
        """
        router, cfg = self.routerAndConfig()
        motors, temps = yield self.startDeimot(cfg)
        with capturedLogs() as events:
            motors.addKeyword(keywords.Integer("TEMP"))
            # Several lease lifetimes: it keeps its lease, and says why once.
            yield task.deferLater(globalReactor, 3 * TTL, lambda: None)
        lines = [formatEvent(e) for e in events if "refused" in formatEvent(e)]
        self.assertEqual(len(lines), 1, lines)
        self.assertIn("keyword DEIMOT.TEMP is served by dispatcher 'temps'", lines[0])
        self.assertEqual(motors.state, "serving")
        now = router._now()
        self.assertEqual(router.leases.owner("deimot", "TEMP", now).dispatcher, "temps")
        held = router.leases.locate("deimot", now, dispatcher="motors")
        self.assertEqual((held.instance, held.keywords), (motors.epoch, frozenset({"M1", "M2"})))
        # After a router restart it does not claim the keyword first: the owner keeps it.
        router.stopService()
        reborn = self.startRouter(cfg)
        yield eventually(lambda: len(reborn.leases.leases(reborn._now())) == 2, 3.0)
        yield task.deferLater(globalReactor, 2 * TTL, lambda: None)
        self.assertEqual(reborn.leases.owner("deimot", "TEMP", reborn._now()).instance,
                         temps.epoch)
        self.assertEqual((motors.state, temps.state), ("serving", "serving"))
        # Its owner gone, the keyword is claimed with the next change of keywords.
        yield temps.stopService()
        yield task.deferLater(globalReactor, 2 * TTL, lambda: None)
        self.assertIsNone(reborn.leases.owner("deimot", "TEMP", reborn._now()))
        motors.addKeyword(keywords.Integer("M3"))
        yield eventually(lambda: reborn.leases.owner("deimot", "TEMP", reborn._now())
                         is not None, 2.0)
        lease = reborn.leases.owner("deimot", "TEMP", reborn._now())
        self.assertEqual((lease.instance, lease.keywords),
                         (motors.epoch, frozenset({"M1", "M2", "M3", "TEMP"})))

    @defer.inlineCallbacks
    def test_routerRestartLearnsTheKeywords(self):
        """A restarted router learns each dispatcher's keywords as they register again."""
        router, cfg = self.routerAndConfig()
        motors, temps = yield self.startDeimot(cfg)
        router.stopService()
        reborn = self.startRouter(cfg)
        yield eventually(lambda: len(reborn.leases.leases(reborn._now())) == 2, 3.0)
        now = reborn._now()
        self.assertEqual(reborn.leases.owner("deimot", "M2", now).instance, motors.epoch)
        self.assertEqual(reborn.leases.owner("deimot", "TEMP", now).instance, temps.epoch)

    @defer.inlineCallbacks
    def test_registerWithKeywordOfAnotherRefused(self):
        """Register, too, refuses a keyword of another dispatcher of the service."""
        router, cfg = self.routerAndConfig()
        motors, temps = yield self.startDeimot(cfg)
        port = cfg.get("zmq-router", "first-port") + 20
        error = yield self.assertFailure(self.channel(cfg).request(
            lambda i: Register(i, "deimot", HOST, "rival", port, port + 1, HEARTBEAT,
                               dispatcher="rival", keywords=["M1"]), "register"),
            LeaseConflict)
        self.assertEqual(error.detail["keyword"], "M1")
        self.assertIsNone(router.leases.locate("deimot", router._now(), dispatcher="rival"))


class SecureDispatcherNameTests(unittest.TestCase):
    """Secure mode binds a dispatcher name to the dispatcher key named after it."""

    @defer.inlineCallbacks
    def test_dispatcherNameBoundToItsKey(self):
        from test_secure import SecureSystem  # it imports this module: not at the top

        system = SecureSystem(self)
        system.keys.make("motors", into=system.keys.dispatchers)
        router = RouterService(system.config("router"), reactor=globalReactor, leaseTTL=60.0)
        router.startService()
        self.addCleanup(router.stopService)
        routerPort = portOf(router.address)

        channels = {}

        def ask(key, service, dispatcher):
            channel = channels.get(key)
            if channel is None:
                channel = channels[key] = self.channelFor(system, routerPort, key)
            return channel.request(lambda i: Lease(i, service, HOST, key, [], HEARTBEAT,
                                                   dispatcher=dispatcher), "lease")

        # 'motors' is a dispatcher key: only it may hold that dispatcher name, in any service.
        error = yield self.assertFailure(ask("tool", "deimot", "motors"), PermissionDenied)
        self.assertIn("dispatcher 'motors' of service 'deimot' is bound to the dispatcher key",
                      str(error))
        yield ask("motors", "deimot", "motors")
        # The default name is the service name: 'demo' stays bound to its key, as before.
        yield self.assertFailure(ask("tool", "demo", ""), PermissionDenied)
        yield ask("demo", "demo", "DEMO")
        # Nobody but its key adds a dispatcher to a bound service: no keywords slipped in.
        error = yield self.assertFailure(ask("tool", "demo", "extra"), PermissionDenied)
        self.assertIn("bound to the dispatcher key of service 'demo'", str(error))
        yield ask("demo", "demo", "extra")
        # A name bound to no key goes to any dispatcher key; never to a client key.
        yield ask("tool", "deimot", "other")
        yield self.assertFailure(ask("ops", "deimot", "another"), PermissionDenied)
        # A client learns the key of the holder of each dispatcher name.
        reply = yield channels["ops"].request(lambda i: Locate(i, "deimot"), "locate")
        keys = {entry.dispatcher: entry.serverKey.encode() for entry in reply.dispatchers}
        self.assertEqual(keys, {"motors": system.keys.curve("motors").publicKey,
                                "other": system.keys.curve("tool").publicKey})

    def channelFor(self, system, routerPort, key):
        from cauldron.transport import Curve

        cfg = system.config(key, routerPort)
        transport = Transport(globalReactor, Curve.fromConfig(cfg))
        self.addCleanup(transport.shutdown)
        channel = RequestChannel(transport, cfg.routerAddress(), "the router", 1.0,
                                 serverKey=transport.curve.routerKey())
        self.addCleanup(channel.close)
        return channel


del ServiceList
