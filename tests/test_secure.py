"""Secure mode end to end (issue 10): router, dispatchers and clients with real keys.

Everything runs in this process on real CURVE sockets on 127.0.0.1, with
certificates made by ``generateCertificate`` and read back through each
service's own configuration, as a process reads them.  Who may lease a
service, write or read a keyword, and what a plain or unknown peer gets, are
each shown by the refusal and by the owner still serving afterwards.
(The transport-level refusals are in test_curve.py; the command line in
test_secure_processes.py.)
"""

import os
import shutil
import tempfile

from helpers import HOST, eventually
from test_curve import KeyStore
from test_router import HEARTBEAT, TTL, routedConfig
from twisted.internet import defer
from twisted.internet import reactor as globalReactor
from twisted.logger import capturedLogs, formatEvent
from twisted.trial import unittest

from cauldron import errors, keywords
from cauldron.client import ClientService
from cauldron.config import Config
from cauldron.dispatcher import DispatcherService
from cauldron.protocol.messages import Lease, Locate, Register, Release, Renew
from cauldron.requests import RequestChannel
from cauldron.router import RouterService
from cauldron.transport import Curve, Transport, portOf


class SecureSystem:
    """Keys for a router, two dispatcher keys and three clients, and configs using them.

    ``demo`` is a dispatcher key bound to the service of that name; ``tool``
    is bound to no service.  ``ops``, ``obs-1`` and ``guest`` are allowed
    client keys; ``mallory`` is a valid key pair nobody allowed.
    """

    def __init__(self, testCase):
        root = tempfile.mkdtemp(prefix="cauldron-secure-")
        testCase.addCleanup(shutil.rmtree, root)
        self.keys = KeyStore(root)
        self.keys.make("router")
        for name in ("demo", "tool"):
            self.keys.make(name, into=self.keys.dispatchers)
        for name in ("ops", "obs-1", "guest"):
            self.keys.make(name, into=self.keys.clients)
        self.keys.make("mallory")
        self.routed = routedConfig(0)

    def config(self, key, routerPort=None, base=None, **security):
        """The config of a process holding ``key`` (None: plain mode)."""
        values = (base or self.routed).asDict()
        if routerPort is not None:
            values["zmq-router"]["port"] = routerPort
        if key is not None:
            values["security"] = {
                "curve": "yes",
                "secret-key": os.path.join(self.keys.private, key + ".key_secret"),
                "router-key": self.keys.public("router"),
                "client-keys": self.keys.clients,
                "dispatcher-keys": self.keys.dispatchers,
                **security,
            }
        else:
            values.pop("security", None)
        return Config.fromMapping(values, source=f"<{key or 'plain'} config>")


class SecureTestCase(unittest.TestCase):
    """A secure router, and helpers starting secure dispatchers and clients."""

    def setUp(self):
        self.system = SecureSystem(self)
        self.router = RouterService(self.system.config("router"), reactor=globalReactor,
                                    leaseTTL=TTL)
        self.router.startService()
        self.addCleanup(lambda: self.router.running and self.router.stopService())
        self.routerPort = portOf(self.router.address)

    def config(self, key, **security):
        return self.system.config(key, self.routerPort, **security)

    @defer.inlineCallbacks
    def startDispatcher(self, key="demo", name="demo", kws=None, **kwargs):
        dispatcher = DispatcherService(
            name, self.config(key),
            kws if kws is not None else [keywords.Integer("POS", initial=0)],
            reactor=globalReactor, heartbeatInterval=HEARTBEAT, **kwargs,
        )
        dispatcher.startService()
        self.addCleanup(lambda: dispatcher.running and dispatcher.stopService())
        yield dispatcher.whenReady()
        return dispatcher

    def startClient(self, key="ops", timeout=1.0):
        client = ClientService(self.config(key), reactor=globalReactor, timeout=timeout)
        client.startService()
        self.addCleanup(client.stopService)
        return client

    def remote(self, key="ops", service="demo", timeout=1.0):
        return self.startClient(key, timeout).service(service)

    def channel(self, key):
        """Raw requests to the router from a process holding ``key``."""
        transport = Transport(globalReactor, Curve.fromConfig(self.config(key)))
        self.addCleanup(transport.shutdown)
        channel = RequestChannel(transport, self.config(key).routerAddress(), "the router", 1.0,
                                 serverKey=transport.curve.routerKey())
        self.addCleanup(channel.close)
        return channel

    def held(self, dispatcher, service="demo"):
        lease = self.router.leases.locate(service, self.router._now())
        return lease is not None and lease.instance == dispatcher.epoch


class SecureServiceTests(SecureTestCase):
    """With keys everywhere, the system works as in plain mode."""

    @defer.inlineCallbacks
    def test_readWriteMonitorDescribe(self):
        dispatcher = yield self.startDispatcher()
        remote = yield self.remote()
        seen = []
        yield remote["POS"].monitor(lambda value: seen.append(value.ascii))
        yield remote["POS"].write(5)
        self.assertEqual((yield remote["POS"].read()), "5")
        yield eventually(lambda: seen == ["0", "5"])
        self.assertEqual([info["name"] for info in (yield remote.describe())], ["POS"])
        self.assertTrue(dispatcher._transport.secure)

    @defer.inlineCallbacks
    def test_routerVouchesForTheDispatchersKey(self):
        """Locate answers with the key of the lease's holder, which the client then requires."""
        yield self.startDispatcher()
        located = yield self.channel("ops").request(lambda i: Locate(i, "demo"), "locate")
        where = located.dispatchers[0]
        self.assertEqual(where.serverKey.encode(), self.system.keys.curve("demo").publicKey)
        remote = yield self.remote()
        self.assertEqual(remote.serverKey, where.serverKey.encode())

    @defer.inlineCallbacks
    def test_unboundServiceTakenByAnyDispatcherKeyFirstCome(self):
        """A service no key is named after goes to the first dispatcher key; others conflict."""
        tool = yield self.startDispatcher(key="tool", name="misc")
        self.assertEqual(self.router.leases.locate("misc", self.router._now()).key, "tool")
        d = self.channel("demo").request(
            lambda i: Lease(i, "misc", HOST, "rival", [], HEARTBEAT), "lease")
        yield self.assertFailure(d, errors.LeaseConflict)
        remote = yield self.remote(service="misc")
        self.assertEqual((yield remote["POS"].read()), "0")
        self.assertTrue(self.held(tool, "misc"))


class LeaseRefusalTests(SecureTestCase):
    """Nobody but a service's own dispatcher key takes, renews or drops its lease."""

    @defer.inlineCallbacks
    def test_strangerRegistrationUnderLiveServiceRefused(self):
        """A client key, and another dispatcher key, cannot lease or register 'demo'."""
        dispatcher = yield self.startDispatcher()
        port = portOf(dispatcher.dispatchAddress)
        for key in ("ops", "tool"):
            channel = self.channel(key)
            for message in (lambda i: Lease(i, "demo", HOST, "intruder", [], HEARTBEAT),
                            lambda i: Register(i, "demo", HOST, "intruder", port, port + 1,
                                               HEARTBEAT, takeover=True)):
                error = yield self.assertFailure(channel.request(message, "hijack"),
                                                 errors.PermissionDenied)
                self.assertIn(repr(key), str(error))
        self.assertTrue(self.held(dispatcher))
        remote = yield self.remote()
        self.assertEqual((yield remote["POS"].read()), "0")

    @defer.inlineCallbacks
    def test_strangerReleaseAndRenewRefused(self):
        dispatcher = yield self.startDispatcher()
        for key in ("ops", "tool"):
            channel = self.channel(key)
            for message in (lambda i: Release(i, "demo", dispatcher.epoch),
                            lambda i: Renew(i, "demo", dispatcher.epoch)):
                yield self.assertFailure(channel.request(message, "drop"),
                                         errors.PermissionDenied)
        self.assertTrue(self.held(dispatcher))
        self.assertEqual(dispatcher.state, "serving")

    @defer.inlineCallbacks
    def test_boundServiceRefusedToOtherDispatcherKey(self):
        """The 'tool' key cannot serve 'demo' even while nobody does: the name is bound."""
        d = self.startDispatcher(key="tool", name="demo")
        error = yield self.assertFailure(d, errors.PermissionDenied)
        self.assertIn("bound to the dispatcher key of its name", str(error))
        self.assertIsNone(self.router.leases.locate("demo", self.router._now()))


class PermissionTests(SecureTestCase):
    """writers and readers, per keyword, by client key name or pattern."""

    def guarded(self):
        return [
            keywords.Integer("POS", initial=0, writers=["ops", "obs-*"]),
            keywords.Boolean("SHUTTER", initial=False, readers=["ops"]),
            keywords.Integer("FREE", initial=0),
        ]

    @defer.inlineCallbacks
    def test_permittedWriterWritesOthersDenied(self):
        yield self.startDispatcher(kws=self.guarded(), writers=["ops"])
        ops, obs, guest = yield defer.gatherResults(
            [self.remote(key) for key in ("ops", "obs-1", "guest")])
        with capturedLogs() as events:
            yield ops["POS"].write(1)
            yield obs["POS"].write(2)
            error = yield self.assertFailure(guest["POS"].write(3), errors.PermissionDenied)
            # FREE names no writers: the service's default (ops only) applies.
            yield self.assertFailure(obs["FREE"].write(1), errors.PermissionDenied)
            yield ops["FREE"].write(1)
        self.assertEqual(str(error), "demo.POS: your key may not write it")
        self.assertEqual(error.detail, {"keyword": "POS"})
        self.assertEqual((yield guest["POS"].read()), "2")
        audits = [e for e in events if e.get("log_namespace") == "cauldron.audit"]
        self.assertEqual([(e["keyword"], e["key"], e["new"]) for e in audits],
                         [("POS", "ops", "1"), ("POS", "obs-1", "2"), ("FREE", "ops", "1")])
        self.assertIn("demo.POS written by ops (", formatEvent(audits[0]))

    @defer.inlineCallbacks
    def test_readersGuardReadsDescribesAndMonitors(self):
        dispatcher = yield self.startDispatcher(kws=self.guarded())
        ops = yield self.remote("ops")
        guest = yield self.remote("guest", timeout=0.3)
        yield self.assertFailure(guest["SHUTTER"].read(), errors.PermissionDenied)
        described = {info["name"]: info for info in (yield guest.describe())}
        self.assertEqual((described["SHUTTER"]["binary"], described["SHUTTER"]["ascii"]),
                         (None, ""))  # its metadata only
        self.assertEqual(described["FREE"]["ascii"], "0")
        seen = []
        refusedBefore = dispatcher._publisher.refused
        # The broadcast socket refuses the subscription; the priming read then fails.
        d = guest["SHUTTER"].monitor(lambda value: seen.append(value.ascii))
        yield self.assertFailure(d, errors.PermissionDenied)
        self.assertEqual(dispatcher._publisher.refused, refusedBefore + 1)
        opsSeen = []
        yield ops["SHUTTER"].monitor(lambda value: opsSeen.append(value.ascii))
        yield ops["SHUTTER"].write(True)
        yield eventually(lambda: opsSeen[-1:] == ["1"])
        self.assertEqual(seen, [])


class FailClosedTests(SecureTestCase):
    """Peers without an allowed key get nothing; key problems stop processes at start."""

    @defer.inlineCallbacks
    def test_plainAndUnknownClientsGetNothing(self):
        dispatcher = yield self.startDispatcher()
        for key in (None, "mallory"):
            client = ClientService(self.system.config(key, self.routerPort) if key is None
                                   else self.config(key, **{"client-keys": ""}),
                                   reactor=globalReactor, timeout=0.3)
            client.startService()
            self.addCleanup(client.stopService)
            yield self.assertFailure(client.service("demo"), errors.RouterUnavailable)
        # Straight to the dispatcher's port, bypassing the router: no answer either.
        direct = self.system.config(None, base=self.system.routed.replace(
            "zmq-router", "enable", "no").replace(
            "zmq", "dispatch-port", portOf(dispatcher.dispatchAddress)).replace(
            "zmq", "broadcast-port", portOf(dispatcher.broadcastAddress)))
        plain = ClientService(direct, reactor=globalReactor, timeout=0.3)
        plain.startService()
        self.addCleanup(plain.stopService)
        yield self.assertFailure(plain.service("demo"), errors.CauldronTimeout)
        yield eventually(lambda: self.router._transport.refusals.total >= 2
                         and dispatcher._transport.refusals.total >= 1)
        self.assertTrue(self.held(dispatcher))

    @defer.inlineCallbacks
    def test_keyProblemStopsEveryProcessAtStart(self):
        secret = os.path.join(self.system.keys.private, "demo.key_secret")
        os.chmod(secret, 0o644)
        dispatcher = DispatcherService("demo", self.config("demo"),
                                       [keywords.Integer("POS")], reactor=globalReactor)
        dispatcher.startService()
        self.addCleanup(dispatcher.stopService)
        error = yield self.assertFailure(dispatcher.whenReady(), errors.ConfigError)
        self.assertEqual(str(error), f"{secret}: readable by others (mode 0644): chmod 600 it")
        self.assertEqual((dispatcher.state, dispatcher.dispatchAddress), ("stopped", None))
        client = ClientService(self.config("demo"), reactor=globalReactor)
        self.assertRaises(errors.ConfigError, client.startService)
        self.assertFalse(client.running)
        router = RouterService(self.config("demo"), reactor=globalReactor)
        self.assertRaises(errors.ConfigError, router.startService)
        self.assertIsNone(router.address)

    @defer.inlineCallbacks
    def test_secureDispatcherNeverStartsARouter(self):
        """A router started by a dispatcher would hold the dispatcher's key: never."""
        yield self.router.stopService()
        cfg = self.config("demo").replace("zmq-router", "allow-spawn", "yes")
        dispatcher = DispatcherService("demo", cfg, [keywords.Integer("POS")],
                                       reactor=globalReactor)
        dispatcher.startService()
        self.addCleanup(dispatcher.stopService)
        error = yield self.assertFailure(dispatcher.whenReady(), errors.RouterUnavailable)
        self.assertIn("secure mode never starts a router", str(error))
        self.assertIsNone(dispatcher._router.spawnedRouter if dispatcher._router else None)


class DirectModeTests(unittest.TestCase):
    """Without a router, a client takes the dispatcher's key from dispatcher-keys."""

    @defer.inlineCallbacks
    def test_clientUsesDispatcherKeysWithoutRouter(self):
        system = SecureSystem(self)
        direct = system.routed.replace("zmq-router", "enable", "no")
        dispatcher = DispatcherService(
            "demo", system.config("demo", base=direct), [keywords.Integer("POS", initial=7)],
            reactor=globalReactor)
        dispatcher.startService()
        self.addCleanup(dispatcher.stopService)
        yield dispatcher.whenReady()
        where = direct.replace("zmq", "dispatch-port", portOf(dispatcher.dispatchAddress)) \
            .replace("zmq", "broadcast-port", portOf(dispatcher.broadcastAddress))
        client = ClientService(system.config("ops", base=where), reactor=globalReactor,
                               timeout=1.0)
        client.startService()
        self.addCleanup(client.stopService)
        remote = yield client.service("demo")
        self.assertEqual((yield remote["POS"].read()), "7")
        error = yield self.assertFailure(client.service("other"), errors.ConfigError)
        self.assertIn("no key named 'other'", str(error))
