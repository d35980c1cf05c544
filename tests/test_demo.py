"""The demo service (router + ``demo`` dispatcher) on real sockets, ephemeral ports."""

import os
import shutil
import tempfile

from twisted.internet import defer
from twisted.internet import reactor as globalReactor
from twisted.trial import unittest

from cauldron import demo
from cauldron.client import ClientService
from cauldron.config import Config
from cauldron.errors import BadValue, ReadOnly
from cauldron.transport import portOf
from tests.helpers import HOST, eventually, randomLeaseStart

TICK = 0.05
EXPECTED = ["COUNT", "FILTER", "MESSAGE", "MODE", "POSITION", "SETPOINT", "SHUTTER",
            "STATUS", "TEMP"]


def routedConfig():
    """A config with an ephemeral router port and a random, private lease range."""
    first = randomLeaseStart()
    return Config.fromMapping({
        "zmq": {"host": HOST},
        "zmq-router": {"host": HOST, "port": 0, "first-port": first, "last-port": first + 40,
                       "timeout": 500, "allow-spawn": "no"},
    })


def directConfig():
    return Config.fromMapping({
        "zmq": {"host": HOST, "dispatch-port": 0, "broadcast-port": 0},
        "zmq-router": {"enable": "no"},
    })


class DemoTestCase(unittest.TestCase):
    """Starts a demo and a client aimed at it; both stopped at cleanup."""

    @defer.inlineCallbacks
    def startDemo(self, cfg):
        service = demo.makeDemoService(cfg, globalReactor, tick=TICK)
        service.startService()
        self.addCleanup(lambda: service.running and service.stopService())
        yield service.whenReady()
        return service

    def clientConfig(self, service):
        """What a client needs: the router's real port, or the dispatcher's real ports."""
        dispatcher = service.dispatcher
        if service.router is not None:
            return dispatcher.config
        return dispatcher.config.replace(
            "zmq", "dispatch-port", portOf(dispatcher.dispatchAddress)
        ).replace("zmq", "broadcast-port", portOf(dispatcher.broadcastAddress))

    @defer.inlineCallbacks
    def connect(self, service):
        client = ClientService(self.clientConfig(service), reactor=globalReactor, timeout=2.0)
        client.startService()
        self.addCleanup(client.stopService)
        remote = yield client.service("demo")
        return remote


class RoutedDemoTests(DemoTestCase):
    """The demo as ``cauldron demo`` runs it: router first, then the dispatcher."""

    @defer.inlineCallbacks
    def setUp(self):
        self.demo = yield self.startDemo(routedConfig())
        self.remote = yield self.connect(self.demo)

    def test_routerPortResolved(self):
        """A router port of 0 becomes the bound port in the dispatcher's config."""
        self.assertIsNotNone(self.demo.router)
        self.assertEqual(self.demo.dispatcher.config.get("zmq-router", "port"),
                         portOf(self.demo.router.address))
        self.assertNotEqual(portOf(self.demo.router.address), 0)

    @defer.inlineCallbacks
    def test_describeListsEveryKeyword(self):
        """describe answers every keyword, each with its KTL type."""
        infos = yield self.remote.describe()
        types = {info["name"]: info["type"] for info in infos}
        self.assertEqual(sorted(types), EXPECTED)
        self.assertEqual(types["TEMP"], "double")
        self.assertEqual(types["MODE"], "enumerated")
        self.assertEqual(types["SHUTTER"], "boolean")
        self.assertEqual(types["COUNT"], "integer")
        self.assertEqual(types["MESSAGE"], "string")
        self.assertEqual(types["STATUS"], "mask")
        self.assertEqual(types["POSITION"], "double array")

    @defer.inlineCallbacks
    def test_tempChangesByItself(self):
        """With nobody writing, the simulated sensor's monitor sees new values."""
        seen = []
        subscription = yield self.remote["TEMP"].monitor(seen.append)
        self.addCleanup(subscription.stop)
        yield eventually(lambda: len({v.binary for v in seen}) >= 3)
        sequences = [v.sequence for v in seen]
        self.assertEqual(sequences, sorted(sequences))

    @defer.inlineCallbacks
    def test_countTicks(self):
        """COUNT, read-only, counts up by itself."""
        seen = []
        subscription = yield self.remote["COUNT"].monitor(lambda v: seen.append(v.binary))
        self.addCleanup(subscription.stop)
        yield eventually(lambda: seen[-1] >= seen[0] + 2)
        self.assertEqual(seen, sorted(seen))

    @defer.inlineCallbacks
    def test_slowFilterWrite(self):
        """The FILTER write answers once the wheel arrived; meanwhile STATUS says MOVING."""
        write = self.remote["FILTER"].write("V")
        # Sent after the write on the same connection: handled while it moves.
        during = yield self.remote["STATUS"].read()
        self.assertFalse(write.called)
        self.assertIn("MOVING", during)
        result = yield write
        self.assertEqual(result, "V")
        after = yield self.remote["STATUS"].read()
        self.assertNotIn("MOVING", after)
        message = yield self.remote["MESSAGE"].read()
        self.assertEqual(message, "filter wheel at V")

    @defer.inlineCallbacks
    def test_modeOnCoolsTowardsSetpoint(self):
        """MODE=ON drives TEMP towards SETPOINT, and STATUS shows COOLING meanwhile."""
        yield self.remote["SETPOINT"].write(100.0)
        seen = []
        subscription = yield self.remote["TEMP"].monitor(lambda v: seen.append(v.binary))
        self.addCleanup(subscription.stop)
        yield self.remote["MODE"].write("ON")
        status = yield self.remote["STATUS"].read()
        self.assertIn("COOLING", status)
        yield eventually(lambda: seen[-1] < seen[0] - 0.5)

    @defer.inlineCallbacks
    def test_checksAndReadOnly(self):
        """POSITION's check hook refuses two values; TEMP is read-only."""
        yield self.assertFailure(self.remote["POSITION"].write("1 2"), BadValue)
        yield self.assertFailure(self.remote["TEMP"].write(5.0), ReadOnly)
        value = yield self.remote["POSITION"].write("1 2 3")
        self.assertEqual(value, "1.0 2.0 3.0")

    def test_banner(self):
        """The banner names the service, the router and the commands to try."""
        text = demo.demoBanner(self.demo.dispatcher)
        self.assertIn(self.demo.dispatcher.config.routerAddress(), text)
        self.assertIn(self.demo.dispatcher.dispatchAddress, text)
        for command in ("cauldron show -s demo TEMP MODE", "cauldron monitor -s demo TEMP",
                        "cauldron modify -s demo MODE=ON", "cauldron describe -s demo",
                        "cauldron services"):
            self.assertIn(command, text)
        self.assertNotIn(" -c ", text)


class DirectDemoTests(DemoTestCase):
    """With ``enable = no`` there is no router: the dispatcher binds [zmq]'s ports."""

    @defer.inlineCallbacks
    def test_directMode(self):
        service = yield self.startDemo(directConfig())
        self.assertIsNone(service.router)
        self.assertEqual([s.name for s in service], ["demo"])
        remote = yield self.connect(service)
        self.assertEqual(remote.keywords(), EXPECTED)
        text = demo.demoBanner(service)
        self.assertIn("direct mode", text)
        self.assertNotIn("cauldron services", text)

    @defer.inlineCallbacks
    def test_bannerNamesConfigFile(self):
        """Started from a file, every suggested command carries ``-c FILE``."""
        directory = tempfile.mkdtemp(prefix="cauldron-demo-")
        self.addCleanup(shutil.rmtree, directory, True)
        path = os.path.join(directory, "demo.ini")
        with open(path, "w") as f:
            f.write("[zmq]\nhost = %s\ndispatch-port = 0\nbroadcast-port = 0\n"
                    "[zmq-router]\nenable = no\n" % (HOST,))
        service = yield self.startDemo(path)
        text = demo.demoBanner(service.dispatcher)
        self.assertIn("cauldron show -c %s -s demo TEMP MODE" % (path,), text)
        self.assertIn("cauldron describe -c %s -s demo" % (path,), text)
        # The file asks for ephemeral ports: the banner says which were bound.
        self.assertIn("dispatch-port = %d" % portOf(service.dispatcher.dispatchAddress), text)
