"""Plain mode (no keys) is not one forged message away from a hijack.

Each test replays, with raw ZeroMQ requests, an attack a new user tried
against the router and dispatchers: releasing or renewing someone else's
lease, hijacking a service with a three-hour heartbeat, registering invented
services anywhere, exhausting a host's ports, writing without naming the
service.  (Secure mode, with keys: test_curve.py and test_secure_processes.py.)
"""

from helpers import HOST, eventually, startDispatcher
from test_router import RouterTestCase, routedConfig
from twisted.internet import defer
from twisted.internet import reactor as globalReactor
from twisted.trial import unittest

from cauldron import errors, keywords
from cauldron.hostcheck import HostCheck
from cauldron.protocol.messages import (
    Lease,
    Locate,
    Ping,
    Register,
    Release,
    Renew,
    Write,
)
from cauldron.requests import RequestChannel
from cauldron.router import RouterService
from cauldron.transport import Transport, portOf


class Stranger:
    """An unrelated process sending raw requests to the router."""

    def __init__(self, testCase, cfg):
        transport = Transport(globalReactor)
        testCase.addCleanup(transport.shutdown)
        self.channel = RequestChannel(transport, cfg.routerAddress(), "the router", 1.0)
        testCase.addCleanup(self.channel.close)

    def send(self, makeMessage):
        return self.channel.request(makeMessage, "forged request")


class LeaseAttackTests(RouterTestCase):
    """The proof of holding a lease is its secret, which only its holder ever sees."""

    @defer.inlineCallbacks
    def setUpService(self):
        router, cfg = self.routerAndConfig()
        dispatcher = yield self.startDispatcher(cfg)
        stranger = Stranger(self, cfg)
        # Everything a stranger can learn about the holder: its instance id.
        located = yield stranger.send(lambda i: Locate(i, "demo"))
        where = located.dispatchers[0]
        self.assertEqual(where.owner, dispatcher.epoch)
        return router, cfg, dispatcher, stranger

    def held(self, router, dispatcher):
        lease = router.leases.locate("demo", router._now())
        return lease is not None and lease.instance == dispatcher.epoch

    @defer.inlineCallbacks
    def test_releaseWithTheInstanceIdRefused(self):
        """A Release naming the holder's instance, without its secret, changes nothing."""
        router, cfg, dispatcher, stranger = yield self.setUpService()
        yield stranger.send(lambda i: Release(i, "demo", dispatcher.epoch))
        self.assertTrue(self.held(router, dispatcher))

    @defer.inlineCallbacks
    def test_releaseThenLongRegisterCannotHijack(self):
        """Release then Register with a 3,599 s heartbeat: both refused, the owner serves on."""
        router, cfg, dispatcher, stranger = yield self.setUpService()
        port = portOf(dispatcher.dispatchAddress)
        yield stranger.send(lambda i: Release(i, "demo", dispatcher.epoch))
        for interval in (3599.0, 1.0):
            d = stranger.send(lambda i, n=interval: Register(
                i, "demo", HOST, "intruder", port, port + 1, n))
            error = yield self.assertFailure(d, errors.LeaseError)
            if interval > 60:
                self.assertIn("at most 60 s", str(error))
            else:
                self.assertIsInstance(error, errors.LeaseConflict)
        self.assertTrue(self.held(router, dispatcher))
        self.assertEqual(dispatcher.state, "serving")

    @defer.inlineCallbacks
    def test_renewingADeadDispatchersLeaseRefused(self):
        """A stranger renewing a killed dispatcher's instance cannot keep a zombie listed."""
        router, cfg, dispatcher, stranger = yield self.setUpService()
        self.crash(dispatcher)
        d = stranger.send(lambda i: Renew(i, "demo", dispatcher.epoch))
        yield self.assertFailure(d, errors.LeaseConflict)
        yield eventually(lambda: router.leases.locate("demo", router._now()) is None, 3.0)

    @defer.inlineCallbacks
    def test_leaseWithTheInstanceIdGetsNoSecret(self):
        """Asking for the lease again under the holder's instance id gets a conflict, no secret."""
        router, cfg, dispatcher, stranger = yield self.setUpService()
        d = stranger.send(lambda i: Lease(i, "demo", HOST, dispatcher.epoch))
        error = yield self.assertFailure(d, errors.LeaseConflict)
        self.assertNotIn(router.leases.locate("demo", router._now()).secret, str(error.detail))

    @defer.inlineCallbacks
    def test_heartbeatIntervalBounded(self):
        """No lease may ask for heartbeats over 60 s (its lease would outlive it by minutes)."""
        router, cfg = self.routerAndConfig()
        stranger = Stranger(self, cfg)
        for interval in (60.5, 3599.0, float("inf"), 0.0, -1.0):
            d = stranger.send(lambda i, n=interval: Lease(i, "slow", HOST, "i", [], n))
            yield self.assertFailure(d, errors.LeaseError)
        leased = yield stranger.send(lambda i: Lease(i, "slow", HOST, "i", [], 60.0))
        self.assertEqual(leased.ttl, 180.0)


class HostAttackTests(RouterTestCase):
    """A lease is for the host the request comes from, with ports of the range."""

    @defer.inlineCallbacks
    def test_inventedServiceOnAnotherHostRefused(self):
        """Leasing or registering for a host other than one's own is refused and not listed."""
        router, cfg = self.routerAndConfig()
        stranger = Stranger(self, cfg)
        first = cfg.get("zmq-router", "first-port")
        for host in ("10.99.99.99", "192.0.2.7"):
            d = stranger.send(lambda i, h=host: Lease(i, "fake", h, "i"))
            error = yield self.assertFailure(d, errors.LeaseError)
            self.assertIn("registers its own host only", str(error))
            d = stranger.send(lambda i, h=host, p=first: Register(i, "fake", h, "i", p, p + 1))
            yield self.assertFailure(d, errors.LeaseError)
        self.assertEqual(router.leases.leases(router._now()), [])

    @defer.inlineCallbacks
    def test_portsOutsideTheRangeRefused(self):
        """Registering ports the router never leases (22, 80) is refused."""
        router, cfg = self.routerAndConfig()
        stranger = Stranger(self, cfg)
        d = stranger.send(lambda i: Register(i, "ssh", HOST, "i", 22, 80))
        error = yield self.assertFailure(d, errors.LeaseError)
        self.assertIn("are not a pair", str(error))
        self.assertEqual(router.leases.leases(router._now()), [])

    @defer.inlineCallbacks
    def test_oneHostCannotTakeEveryPair(self):
        """A host's leases are capped; past the cap it is refused with a clear error."""
        cfg = routedConfig(0)
        router = RouterService(cfg, reactor=globalReactor, maxLeasesPerHost=3)
        router.startService()
        self.addCleanup(router.stopService)
        stranger = Stranger(self, cfg.replace("zmq-router", "port", portOf(router.address)))
        for n in range(3):
            yield stranger.send(lambda i, n=n: Lease(i, f"junk{n}", HOST, f"i{n}"))
        d = stranger.send(lambda i: Lease(i, "junk3", HOST, "i3"))
        error = yield self.assertFailure(d, errors.LeaseError)
        self.assertIn("already holds 3 leases", str(error))


class DispatcherAttackTests(unittest.TestCase):
    """A dispatcher serves only requests naming it."""

    @defer.inlineCallbacks
    def test_writeWithoutServiceNameRefused(self):
        """A Write naming no service (or another) is refused and applies nothing."""
        calls = []
        dispatcher = yield startDispatcher(
            self, [keywords.Integer("POS", initial=0, write=calls.append)])
        transport = Transport(globalReactor)
        self.addCleanup(transport.shutdown)
        channel = RequestChannel(transport, dispatcher.dispatchAddress, "it", 1.0)
        self.addCleanup(channel.close)
        for service in ("", "other"):
            d = channel.request(lambda i, s=service: Write(i, "POS", 5, s), "write")
            yield self.assertFailure(d, errors.UnknownService)
        self.assertEqual(calls, [])
        self.assertEqual((yield channel.request(lambda i: Ping(i), "ping")).service, "demo")


class HostCheckTests(unittest.TestCase):
    """The rule itself, with a resolver standing in for DNS."""

    def check(self, addresses):
        resolved = []

        def resolve(host):
            resolved.append(host)
            if host not in addresses:
                raise OSError("Name or service not known")
            return addresses[host]

        return HostCheck(globalReactor, resolve=resolve), resolved

    def verdict(self, check, host, peer):
        d = check.verify(host, peer)
        failures = []
        d.addErrback(lambda f: failures.append(f.trap(errors.LeaseError) and f.value))
        return failures[0] if failures else None

    def test_rules(self):
        check, resolved = self.check({
            "ccd1": ["10.0.0.2"], "ops1": ["10.0.0.1"], "me": ["127.0.1.1"],
        })
        self.assertIsNone(self.verdict(check, "ccd1", "10.0.0.2"))
        self.assertIsNone(self.verdict(check, "10.0.0.2", "::ffff:10.0.0.2"))
        self.assertIsNone(self.verdict(check, "me", "127.0.0.1"))  # Debian's own-name address
        self.assertIsNone(self.verdict(check, "ccd1", ""))  # ipc or inproc: this machine
        refused = self.verdict(check, "ops1", "10.0.0.2")
        self.assertIn("'ops1' is 10.0.0.1, but the request came from 10.0.0.2", str(refused))
        self.assertIn("does not resolve", str(self.verdict(check, "nowhere", "10.0.0.2")))
        self.assertIsNotNone(self.verdict(check, "ccd1", "127.0.0.1"))  # not this machine's
        self.assertEqual(resolved.count("ccd1"), 1)  # remembered
