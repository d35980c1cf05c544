"""Tests for cauldron.feeds: the clients of a reactor share one subscriber per dispatcher."""

from helpers import eventually, startClient, startDispatcher
from twisted.internet import defer
from twisted.internet import reactor as globalReactor
from twisted.trial import unittest

from cauldron import feeds, keywords
from cauldron.feeds import BroadcastFeed
from cauldron.protocol import codec
from cauldron.protocol.messages import Heartbeat
from cauldron.transport import Transport, bindAddress, portOf

COUNT_TOPIC = codec.topicFor("COUNT")


def sharedSockets():
    """The sockets the global reactor's shared feeds hold (0 once they all closed)."""
    pool = feeds._pools.get(globalReactor)
    return 0 if pool is None else len(pool._transport._connections)


class SharedFeedTests(unittest.TestCase):
    @defer.inlineCallbacks
    def setUp(self):
        self.dispatcher = yield startDispatcher(
            self, [keywords.Integer("COUNT", initial=3), keywords.Integer("OTHER", initial=1)],
            heartbeatInterval=0.2)

    @defer.inlineCallbacks
    def remote(self, timeout=2.0, **kwargs):
        """The demo service as seen by a new client (stopped at cleanup)."""
        client = startClient(self, self.dispatcher.dispatchAddress,
                             self.dispatcher.broadcastAddress, timeout=timeout, **kwargs)
        remote = yield client.service("demo")
        return client, remote

    @defer.inlineCallbacks
    def monitor(self, remote, name="COUNT", prime=True):
        seen = []
        subscription = yield remote[name].monitor(lambda v: seen.append(v.binary), prime=prime)
        self.addCleanup(subscription.stop)
        return subscription, seen

    @defer.inlineCallbacks
    def monitoringClients(self, count):
        """``(remotes, seens)``: ``count`` new clients, each monitoring COUNT."""
        remotes, seens = [], []
        for _ in range(count):
            _, remote = yield self.remote()
            _, seen = yield self.monitor(remote)
            remotes.append(remote)
            seens.append(seen)
        return remotes, seens

    @defer.inlineCallbacks
    def test_clientsShareOneSocket(self):
        """Three clients monitoring one keyword: one SUB socket, every change reaches each."""
        remotes, seens = yield self.monitoringClients(3)
        self.assertEqual(sharedSockets(), 1)
        feed = remotes[0].primary._feed
        self.assertTrue(all(remote.primary._feed is feed for remote in remotes))
        self.assertEqual(feed.listeners, 3)
        for value in range(4, 9):
            self.dispatcher["COUNT"].set(value)
        yield eventually(lambda: all(seen[-1:] == [8] for seen in seens))
        for seen in seens:
            self.assertEqual(seen, [3, 4, 5, 6, 7, 8])

    @defer.inlineCallbacks
    def test_laterMonitorPrimedWithoutTheDispatchersAnswer(self):
        """The feed hears COUNT already: the new monitor reads it instead of awaiting an answer.

        The dispatcher answers a subscription only once per socket; without
        the read, the second monitor would wait for its client's timeout.
        """
        _, first = yield self.remote()
        yield self.monitor(first)
        self.dispatcher["COUNT"].set(5)
        _, second = yield self.remote(timeout=60.0)
        d = second["COUNT"].monitor(lambda v: None)
        yield eventually(lambda: d.called)
        subscription = yield d
        self.addCleanup(subscription.stop)
        self.assertEqual(second["COUNT"].latest.binary, 5)

    @defer.inlineCallbacks
    def test_laterUnprimedMonitorStartsFromCurrentValue(self):
        """An unprimed monitor on a shared feed learns the current value silently, as alone.

        The second client described COUNT as 3; it changed to 10 before its
        monitor began: that is no change to report, and 11 is.
        """
        _, first = yield self.remote()
        _, second = yield self.remote()
        _, firstSeen = yield self.monitor(first)
        self.dispatcher["COUNT"].set(10)
        yield eventually(lambda: firstSeen[-1:] == [10])
        self.assertEqual(second["COUNT"].latest.binary, 3)
        _, seen = yield self.monitor(second, prime=False)
        yield eventually(lambda: second["COUNT"]._active)
        self.assertEqual(second["COUNT"].latest.binary, 10)
        self.assertEqual(seen, [])
        self.dispatcher["COUNT"].set(11)
        yield eventually(lambda: seen)
        self.assertEqual(seen, [11])

    @defer.inlineCallbacks
    def test_updatesGoOnlyToTheirMonitors(self):
        """A client hears the updates of the keywords it monitors, not those others monitor."""
        _, first = yield self.remote()
        _, second = yield self.remote()
        yield self.monitor(first, "OTHER")
        _, seen = yield self.monitor(second, "COUNT")
        self.dispatcher["OTHER"].set(2)
        self.dispatcher["COUNT"].set(4)
        yield eventually(lambda: seen[-1:] == [4])
        yield eventually(lambda: first["OTHER"].latest.binary == 2)
        self.assertEqual(second["OTHER"].latest.binary, 1)  # never routed to the second

    @defer.inlineCallbacks
    def test_changesNobodyHearsAreNotSent(self):
        """No message is made of a change nobody subscribes to; a monitor after sees the rest."""
        publisher = self.dispatcher._publisher
        self.assertFalse(publisher.heard(COUNT_TOPIC))
        for value in (4, 5, 6):
            self.dispatcher["COUNT"].set(value)
        self.assertEqual(self.dispatcher._outbox, {})
        _, remote = yield self.remote()
        subscription, seen = yield self.monitor(remote)
        self.assertTrue(publisher.heard(COUNT_TOPIC))
        for value in (7, 8):
            self.dispatcher["COUNT"].set(value)
        yield eventually(lambda: seen[-1:] == [8])
        self.assertEqual(seen, [6, 7, 8])
        subscription.stop()
        yield eventually(lambda: not publisher.heard(COUNT_TOPIC))
        self.dispatcher["COUNT"].set(9)
        self.assertEqual(self.dispatcher._outbox, {})

    @defer.inlineCallbacks
    def test_subscriptionsCounted(self):
        """The socket unsubscribes from a topic after its last monitor stops, not before."""
        _, first = yield self.remote()
        _, second = yield self.remote()
        firstSubscription, _ = yield self.monitor(first)
        secondSubscription, seen = yield self.monitor(second)
        feed = first.primary._feed
        firstSubscription.stop()
        self.dispatcher["COUNT"].set(4)
        yield eventually(lambda: seen[-1:] == [4])
        self.assertIn(COUNT_TOPIC, feed._routes)
        secondSubscription.stop()
        self.assertNotIn(COUNT_TOPIC, feed._routes)
        self.assertNotIn(COUNT_TOPIC, feed._live)

    @defer.inlineCallbacks
    def test_stoppingOneClientLeavesTheOthers(self):
        """A stopped client leaves the feed; the last one out closes it and its Transport."""
        firstClient, first = yield self.remote()
        secondClient, second = yield self.remote()
        yield self.monitor(first)
        _, seen = yield self.monitor(second)
        feed = second.primary._feed
        yield firstClient.stopService()
        self.assertFalse(feed.closed)
        self.assertEqual(feed.listeners, 1)
        self.dispatcher["COUNT"].set(7)
        yield eventually(lambda: seen[-1:] == [7])
        self.assertTrue(second.connected)
        yield secondClient.stopService()
        self.assertTrue(feed.closed)
        self.assertNotIn(globalReactor, feeds._pools)

    @defer.inlineCallbacks
    def test_restartReachesEveryClientOfTheFeed(self):
        """A dispatcher back on its ports after a stop: every client of the feed re-primes."""
        dispatchPort = portOf(self.dispatcher.dispatchAddress)
        broadcastPort = portOf(self.dispatcher.broadcastAddress)
        remotes, seens = yield self.monitoringClients(2)
        yield self.dispatcher.stopService()
        yield eventually(lambda: not any(remote.connected for remote in remotes))
        second = yield startDispatcher(
            self, [keywords.Integer("COUNT", initial=42), keywords.Integer("OTHER", initial=1)],
            heartbeatInterval=0.2, dispatchPort=dispatchPort, broadcastPort=broadcastPort)
        yield eventually(lambda: all(seen[-1:] == [42] for seen in seens))
        second["COUNT"].set(43)
        yield eventually(lambda: all(seen[-1:] == [43] for seen in seens))
        self.assertTrue(all(remote.connected for remote in remotes))
        self.assertEqual(sharedSockets(), 1)

    @defer.inlineCallbacks
    def test_privateConnections(self):
        """shareConnections=False: a feed of the client's own, beside the shared one."""
        _, shared = yield self.remote()
        _, private = yield self.remote(shareConnections=False)
        _, sharedSeen = yield self.monitor(shared)
        _, privateSeen = yield self.monitor(private)
        self.assertIsNot(private.primary._feed, shared.primary._feed)
        self.assertEqual(sharedSockets(), 1)
        self.dispatcher["COUNT"].set(9)
        yield eventually(lambda: sharedSeen[-1:] == [9] and privateSeen[-1:] == [9])


class _Listener:
    def __init__(self, fails=False):
        self.heard, self.bad, self.fails = [], [], fails

    def broadcastReceived(self, message):
        self.heard.append(message)
        if self.fails:
            raise RuntimeError("listener bug")

    def malformed(self, reason):
        self.bad.append(reason)


class FeedRoutingTests(unittest.TestCase):
    """A feed on its own, given frames as its socket would."""

    def setUp(self):
        transport = Transport(globalReactor)
        self.addCleanup(transport.shutdown)
        address = transport.publisher().bind(bindAddress("tcp", "127.0.0.1", 0))
        self.feed = BroadcastFeed(transport, address)
        self.first, self.second = _Listener(fails=True), _Listener()
        self.feed.join(self.first)
        self.feed.join(self.second)

    def test_malformedBroadcastReachesEachListener(self):
        self.feed._received([codec.HEARTBEAT_TOPIC, b"junk"])
        self.assertEqual(len(self.first.bad), 1)
        self.assertEqual(len(self.second.bad), 1)

    def test_oneListenerFailingLeavesTheOthers(self):
        """A listener that raises is logged; those after it still hear the broadcast."""
        beat = Heartbeat("demo", "e1", 0.0, 1.0, {})
        self.feed._received(codec.encodeBroadcast(beat))
        self.assertEqual(self.second.heard, [beat])
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)

    def test_listenerLeavingMidwayHearsNoMore(self):
        """A listener that leaves while an earlier one takes a broadcast does not get it."""
        self.first.broadcastReceived = lambda message: self.feed.leave(self.second)
        self.feed._received(codec.encodeBroadcast(Heartbeat("demo", "e1", 0.0, 1.0, {})))
        self.assertEqual(self.second.heard, [])

    def test_lastListenerClosesTheSocket(self):
        self.feed.subscribe(COUNT_TOPIC, self.first)
        self.feed.leave(self.first)
        self.assertNotIn(COUNT_TOPIC, self.feed._routes)
        self.assertFalse(self.feed.closed)
        self.feed.leave(self.second)
        self.assertTrue(self.feed.closed)
