"""A service spanning several dispatchers, seen by the Deferred client (issue 13).

One process, real sockets: a router, dispatchers ``detector`` (TEMP) and
``motors`` (POS) of service ``deimot``, and a client.  The real commands
across processes: ``test_multidispatcher_processes.py``.
"""

from twisted.internet import defer
from twisted.internet import reactor as globalReactor

from cauldron import errors, keywords
from cauldron.client import DISCOVERY_INTERVAL
from cauldron.dispatcher import DispatcherService
from tests.helpers import eventually
from tests.test_router import HEARTBEAT, RouterTestCase


class SpanningTests(RouterTestCase):
    """Clients address ``deimot.KW`` and never need to know which dispatcher answers."""

    @defer.inlineCallbacks
    def startPart(self, cfg, dispatcher, *kws):
        part = DispatcherService("deimot", cfg, kws, reactor=globalReactor,
                                 heartbeatInterval=HEARTBEAT, dispatcher=dispatcher)
        part.startService()
        self.addCleanup(lambda: part.running and part.stopService())
        yield part.whenReady()
        return part

    @defer.inlineCallbacks
    def split(self):
        """``(cfg, detector, motors, remote)``: deimot split in two, seen by a client."""
        router, cfg = self.routerAndConfig()
        detector = yield self.startPart(cfg, "detector", keywords.Double("TEMP", initial=20.5))
        motors = yield self.startPart(cfg, "motors", keywords.Double("POS", initial=1.25))
        client = self.startClient(cfg)
        remote = yield client.service("deimot")
        return cfg, detector, motors, remote

    @defer.inlineCallbacks
    def test_keywordsOfEveryDispatcher(self):
        """One RemoteService; each keyword goes straight to its own dispatcher."""
        cfg, detector, motors, remote = yield self.split()
        self.assertEqual(remote.keywords(), ["POS", "TEMP"])
        self.assertEqual(sorted(remote.dispatchers), ["detector", "motors"])
        self.assertIs(remote["POS"].dispatcher, remote.dispatchers["motors"])
        self.assertEqual(remote["POS"].dispatcher.dispatchAddress, motors.dispatchAddress)
        self.assertEqual(remote["TEMP"].dispatcher.epoch, detector.epoch)
        self.assertEqual((yield remote["POS"].write(2.5)), "2.5")
        self.assertEqual(motors["POS"].value, 2.5)
        self.assertEqual((yield remote["TEMP"].read()), "20.5")
        infos = yield remote.describe()
        self.assertEqual([(i["name"], i["dispatcher"]) for i in infos],
                         [("POS", "motors"), ("TEMP", "detector")])
        seen = []
        yield remote["POS"].monitor(lambda v: seen.append(v.ascii))
        motors["POS"].set(3.5)
        yield eventually(lambda: seen[-1:] == ["3.5"])

    @defer.inlineCallbacks
    def test_oneDispatcherLostTheOtherServes(self):
        """Only the silent dispatcher's keywords fail, at once; its monitors resume after."""
        cfg, detector, motors, remote = yield self.split()
        positions, temperatures, states = [], [], []
        remote.addStateCallback(lambda r: states.append(r.lost))
        yield remote["POS"].monitor(lambda v: positions.append(v.ascii))
        yield remote["TEMP"].monitor(lambda v: temperatures.append(v.ascii))
        yield motors.stopService()
        yield eventually(lambda: not remote["POS"].connected, timeout=5)
        self.assertEqual((remote.lost, remote.connected, states), (["motors"], False, [["motors"]]))
        self.assertTrue(remote["TEMP"].connected)
        started = globalReactor.seconds()
        error = yield self.assertFailure(remote["POS"].read(timeout=5), errors.ServiceUnavailable)
        self.assertLess(globalReactor.seconds() - started, 1.0)  # not the 5 s timeout
        self.assertIn("dispatcher 'motors'", str(error))
        detector["TEMP"].set(21.5)
        yield eventually(lambda: temperatures[-1:] == ["21.5"])
        self.assertEqual((yield remote["TEMP"].write(22.5)), "22.5")

        motors.startService()
        yield motors.whenReady()
        motors["POS"].set(4.5)
        yield eventually(lambda: remote.connected and positions[-1:] == ["4.5"], timeout=5)
        self.assertEqual(states[-1], [])
        self.assertEqual((yield remote["POS"].read()), "4.5")

    @defer.inlineCallbacks
    def test_dispatcherJoiningLaterIsFound(self):
        """A client that knew only TEMP finds POS once motors registers."""
        router, cfg = self.routerAndConfig()
        yield self.startPart(cfg, "detector", keywords.Double("TEMP", initial=20.5))
        client = self.startClient(cfg)
        remote = yield client.service("deimot")
        self.assertEqual(remote.keywords(), ["TEMP"])
        yield self.startPart(cfg, "motors", keywords.Double("POS", initial=1.25))
        joined = globalReactor.seconds()
        yield eventually(lambda: "POS" in remote, timeout=DISCOVERY_INTERVAL + 3)
        self.assertLess(globalReactor.seconds() - joined, DISCOVERY_INTERVAL + 1)
        yield eventually(lambda: remote.dispatchers["motors"].described)
        self.assertEqual((yield remote["POS"].read()), "1.25")
        self.assertEqual(remote["POS"].type.ktlType, keywords.Double("X").ktlType)

    @defer.inlineCallbacks
    def test_singleDispatcherUnchanged(self):
        """A service of one dispatcher: named after the service, the primary, as before."""
        router, cfg = self.routerAndConfig()
        dispatcher = yield self.startDispatcher(cfg)
        remote = yield self.startClient(cfg).service("demo")
        self.assertEqual(list(remote.dispatchers), ["demo"])
        self.assertIs(remote.primary, remote.dispatchers["demo"])
        self.assertEqual((remote.epoch, remote.owner), (dispatcher.epoch, dispatcher.epoch))
        self.assertEqual(str(remote.primary), "service 'demo'")
