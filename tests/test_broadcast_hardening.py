"""The publisher's defences against what subscribers send (issue 8), on real sockets.

Only subscriptions to topics the publisher accepts are applied; a connection
sending an oversized subscription, too many refused ones or anything but
subscriptions is dropped; the per-connection tables follow connections as
they come and go.  Peers are raw pyzmq sockets or raw ZMTP over TCP (which
shows when the publisher hangs up).
"""

import zmq
from helpers import HOST, eventually, turn
from test_floods import zmtpFrame, zmtpPeer
from twisted.internet import defer
from twisted.internet import reactor as globalReactor
from twisted.logger import globalLogPublisher
from twisted.trial import unittest

from cauldron.transport import Transport, bindAddress, portOf
from cauldron.transport import publisher as publisherModule
from cauldron.transport.publisher import (
    MAX_REFUSED_TOPICS,
    MAX_SUBSCRIPTION_BYTES,
    PROBLEM_LOG_SECONDS,
)

TOPICS = frozenset({b"H\x00", b"KA\x00", b"KB\x00"})


def hungUp(peer):
    """Whether the other end closed this non-blocking TCP socket."""
    try:
        return peer.recv(65536) == b""
    except BlockingIOError:
        return False
    except ConnectionResetError:
        return True


def receive(sub, into):
    """Move what ``sub`` has received into ``into``; True if ``into`` holds anything."""
    while True:
        try:
            into.append(sub.recv_multipart(zmq.NOBLOCK))
        except zmq.Again:
            return bool(into)


class PublisherTests(unittest.TestCase):
    """A transport publisher on the global reactor, attacked from a separate context."""

    def setUp(self):
        self.transport = Transport(globalReactor)
        self.addCleanup(self.transport.shutdown)
        self.context = zmq.Context()
        self.addCleanup(self.context.destroy, linger=0)

    def publisher(self, onSubscribe=None, topics=TOPICS):
        publisher = self.transport.publisher(
            onSubscribe, isTopic=lambda topic, subscriber: topic in topics)
        return publisher, publisher.bind(bindAddress("tcp", HOST, 0))

    def peer(self, kind, address, *topics):
        """A pyzmq socket of this test's context, subscribed to ``topics``, connected."""
        s = self.context.socket(kind)
        s.linger = 0
        for topic in topics:
            s.subscribe(topic)
        s.connect(address)
        return s

    def raw(self, address):
        """A ZMTP peer over plain TCP, non-blocking once connected (closed at cleanup)."""
        peer = zmtpPeer(portOf(address))
        self.addCleanup(peer.close)
        return peer

    @defer.inlineCallbacks
    def published(self, publisher, sub, topic):
        """Publish on ``topic`` until ``sub`` gets a message; all it got."""
        got = []
        yield eventually(lambda: publisher.send([topic, b"news"]) or receive(sub, got))
        return got

    @defer.inlineCallbacks
    def test_welcomeAfterSubscriptionApplied(self):
        """onSubscribe runs once the subscription is live: its one welcome arrives."""
        welcomed = []

        def onSubscribe(topic):
            welcomed.append(topic)
            publisher.send([topic, b"welcome"])  # sent once, never again

        publisher, address = self.publisher(onSubscribe)
        sub = self.peer(zmq.SUB, address, b"KA\x00")
        got = []
        yield eventually(lambda: receive(sub, got))
        self.assertEqual(got, [[b"KA\x00", b"welcome"]])
        self.assertEqual(welcomed, [b"KA\x00"])
        self.assertEqual((publisher.refused, publisher.cuts), (0, 0))

    @defer.inlineCallbacks
    def test_unknownTopicsNotApplied(self):
        """Subscriptions to topics not accepted (prefixes too) bring nothing and cut no one."""
        welcomed = []
        publisher, address = self.publisher(welcomed.append)
        sub = self.peer(zmq.SUB, address, b"KNOPE\x00", b"K", b"", b"KA\x00")
        yield eventually(lambda: publisher.refused == 3)
        got = yield self.published(publisher, sub, b"KA\x00")
        for topic in (b"KNOPE\x00", b"KB\x00"):
            publisher.send([topic, b"not for you"])
        got += yield self.published(publisher, sub, b"KA\x00")
        self.assertEqual({frames[0] for frames in got}, {b"KA\x00"})
        self.assertEqual(welcomed, [b"KA\x00"])
        self.assertEqual(publisher.cuts, 0)

    @defer.inlineCallbacks
    def test_unsubscribeApplied(self):
        """An unsubscription from an accepted topic stops its messages."""
        publisher, address = self.publisher()
        sub = self.peer(zmq.SUB, address, b"KA\x00", b"KB\x00")
        yield self.published(publisher, sub, b"KA\x00")
        sub.unsubscribe(b"KA\x00")
        got = []

        def onlyB():
            publisher.send([b"KA\x00", b"gone"])
            publisher.send([b"KB\x00", b"still"])
            receive(sub, got)
            return got and got[-2:] == [[b"KB\x00", b"still"]] * 2

        yield eventually(onlyB)

    @defer.inlineCallbacks
    def test_heardWhileAConnectionIsSubscribed(self):
        """A topic is heard while a connection is subscribed to it, not after it leaves."""
        publisher, address = self.publisher()
        self.assertFalse(publisher.heard(b"KA\x00"))
        first = self.peer(zmq.SUB, address, b"KA\x00", b"KB\x00")
        second = self.peer(zmq.SUB, address, b"KA\x00")
        yield eventually(lambda: publisher._subscribers == {b"KA\x00": 2, b"KB\x00": 1})
        first.unsubscribe(b"KB\x00")
        yield eventually(lambda: not publisher.heard(b"KB\x00"))
        first.close(0)
        yield eventually(lambda: publisher._subscribers == {b"KA\x00": 1})
        second.close(0)
        yield eventually(lambda: not publisher.heard(b"KA\x00"))

    @defer.inlineCallbacks
    def test_unsubscribingWhatOneNeverSubscribedMutesNobody(self):
        """A peer's unsubscriptions from topics it never subscribed to leave others' heard."""
        publisher, address = self.publisher()
        sub = self.peer(zmq.SUB, address, b"KA\x00")
        yield self.published(publisher, sub, b"KA\x00")
        hostile = self.raw(address)  # raw: a libzmq XSUB sends no such unsubscriptions
        hostile.sendall(zmtpFrame(b"\x00KA\x00") * 3
                        + zmtpFrame(b"\x01KB\x00"))  # heard once those before it were read
        yield eventually(lambda: publisher.heard(b"KB\x00"))
        self.assertEqual(publisher._subscribers, {b"KA\x00": 1, b"KB\x00": 1})
        got = yield self.published(publisher, sub, b"KA\x00")
        self.assertTrue(got)

    @defer.inlineCallbacks
    def test_oversizedSubscriptionDropsThatPeerOnly(self):
        """A subscription over MAX_SUBSCRIPTION_BYTES drops its connection; others carry on."""
        publisher, address = self.publisher()
        sub = self.peer(zmq.SUB, address, b"KA\x00")
        yield self.published(publisher, sub, b"KA\x00")
        largest = self.raw(address)
        largest.sendall(zmtpFrame(b"\x01K" + b"x" * (MAX_SUBSCRIPTION_BYTES - 2)))
        largest.setblocking(False)
        yield eventually(lambda: publisher.refused == 1)  # taken, refused, kept
        huge = self.raw(address)
        huge.sendall(zmtpFrame(b"\x01K" + b"x" * (MAX_SUBSCRIPTION_BYTES - 1)))
        huge.setblocking(False)
        yield eventually(lambda: hungUp(huge))
        self.assertFalse(hungUp(largest))
        self.assertEqual((publisher.refused, publisher.cuts), (1, 0))  # libzmq dropped it
        yield self.published(publisher, sub, b"KA\x00")

    @defer.inlineCallbacks
    def test_refusedBudgetPerConnection(self):
        """A peer over MAX_REFUSED_TOPICS refused subscriptions is cut; one at it is served."""
        publisher, address = self.publisher()
        stale = self.peer(zmq.XSUB, address)  # a client of a restarted dispatcher
        for i in range(MAX_REFUSED_TOPICS):
            stale.send(b"\x01KGONE%d\x00" % i)
        stale.send(b"\x01KA\x00")
        greedy = self.raw(address)
        greedy.sendall(b"".join(zmtpFrame(b"\x01KNEW%d\x00" % i)
                                for i in range(MAX_REFUSED_TOPICS + 1)))
        greedy.setblocking(False)
        yield eventually(lambda: hungUp(greedy))
        yield self.published(publisher, stale, b"KA\x00")
        self.assertEqual(publisher.cuts, 1)
        self.assertEqual(publisher.refused, 2 * MAX_REFUSED_TOPICS + 1)

    @defer.inlineCallbacks
    def test_refusedBudgetOverall(self):
        """Past the publisher's total, the connection holding the most refused bytes is cut."""
        self.patch(publisherModule, "MAX_REFUSED_TOPICS_TOTAL", 10)
        publisher, address = self.publisher()
        modest = self.raw(address)
        modest.sendall(b"".join(zmtpFrame(b"\x01KM%d\x00" % i) for i in range(5)))
        modest.setblocking(False)
        yield eventually(lambda: publisher.refused == 5)
        greedy = self.raw(address)
        greedy.sendall(b"".join(zmtpFrame(b"\x01KGREEDY%d\x00" % i) for i in range(6)))
        greedy.setblocking(False)
        yield eventually(lambda: hungUp(greedy))
        self.assertFalse(hungUp(modest))
        self.assertEqual(publisher.cuts, 1)
        self.assertEqual(publisher._refusedTopics, 5)

    @defer.inlineCallbacks
    def test_garbageCutsItsSender(self):
        """A message that is no subscription is counted and its sender cut; nothing is kept."""
        publisher, address = self.publisher()
        sub = self.peer(zmq.SUB, address, b"KA\x00")
        yield self.published(publisher, sub, b"KA\x00")
        junk = self.raw(address)
        junk.sendall(zmtpFrame(b"\x02junk", more=True) + zmtpFrame(b"\x01KA\x00")
                     + zmtpFrame(b"more junk"))
        junk.setblocking(False)
        yield eventually(lambda: hungUp(junk))
        self.assertGreaterEqual(publisher.malformed, 1)
        self.assertEqual(publisher.cuts, 1)
        yield self.published(publisher, sub, b"KA\x00")

    @defer.inlineCallbacks
    def test_subscriptionsAmongGarbageReachTheirOwnPeer(self):
        """Subscribers joining while garbage pours in get their own topics, and only those.

        libzmq pairs subscriptions with connections through a queue that
        garbage puts out of step; a subscription read then must not be
        applied (it could reach another peer): its peer is made to send it
        again.
        """
        count = 60
        topics = [b"K%d\x00" % i for i in range(count)]
        publisher, address = self.publisher(topics=frozenset(topics))
        junk = self.peer(zmq.XSUB, address)
        subs = []
        for topic in topics:
            for _ in range(20):
                junk.send(b"\x02junk")
            subs.append(self.peer(zmq.SUB, address, topic))
            yield turn()
        got = [[] for _ in topics]

        def allServed():
            for topic in topics:
                publisher.send([topic, b"news"])
            return all([receive(sub, into) for sub, into in zip(subs, got, strict=True)])

        yield eventually(allServed, timeout=15)
        for topic, frames in zip(topics, got, strict=True):
            self.assertEqual({f[0] for f in frames}, {topic})
        self.assertGreater(publisher.malformed, 0)

    @defer.inlineCallbacks
    def test_connectionTablesFollowConnections(self):
        """200 subscribers come and go: the per-connection tables end empty."""
        publisher, address = self.publisher()
        for i in range(200):
            sub = self.peer(zmq.SUB, address, b"KA\x00", b"KSTALE%d\x00" % i)
            yield eventually(lambda n=i + 1: publisher.refused == n)
            self.assertLessEqual(len(publisher._peers), 2)
            sub.close(0)
        yield eventually(lambda: not publisher._peers)
        self.assertEqual((publisher._refusedTopics, publisher._refusedBytes), (0, 0))
        self.assertEqual(publisher.cuts, 0)

    @defer.inlineCallbacks
    def test_problemsLoggedAtABoundedRate(self):
        """Hundreds of refused subscriptions make at most one log line a second, counting all."""
        events = []

        def observe(event):
            if event.get("log_namespace") == publisherModule.log.namespace and "problems" in event:
                events.append(event)

        globalLogPublisher.addObserver(observe)
        self.addCleanup(globalLogPublisher.removeObserver, observe)
        publisher, address = self.publisher()
        flood = self.peer(zmq.XSUB, address)
        for i in range(MAX_REFUSED_TOPICS):
            flood.send(b"\x01KNOPE%d\x00" % i)
        yield eventually(lambda: sum(
            e["problems"].get("refused subscriptions", 0) for e in events
        ) == MAX_REFUSED_TOPICS, timeout=PROBLEM_LOG_SECONDS + 5)
        self.assertLessEqual(len(events), 2)
        if len(events) == 2:
            self.assertGreaterEqual(events[1]["log_time"] - events[0]["log_time"],
                                    PROBLEM_LOG_SECONDS * 0.9)

    @defer.inlineCallbacks
    def test_closesCleanly(self):
        """Closing a publisher with peers and a pending report leaves no socket or timer."""
        publisher, address = self.publisher()
        sub = self.peer(zmq.SUB, address, b"KA\x00", b"KNOPE1\x00", b"KNOPE2\x00")
        yield self.published(publisher, sub, b"KA\x00")
        yield eventually(lambda: publisher.refused == 2)
        self.assertIsNotNone(publisher._problems._flush)  # the second waits to be reported
        monitor = publisher._monitor
        self.transport.close(publisher)
        self.assertTrue(publisher.closed and monitor.closed)
        for connection in (publisher, monitor):
            self.assertNotIn(connection, globalReactor.getReaders())
        self.assertIsNone(publisher._problems._flush)
        self.transport.shutdown()  # the context terminates: nothing is left open

    @defer.inlineCallbacks
    def test_monitorEndClosedFirst(self):
        """Closing the monitor's end first (as Transport.shutdown may) stops monitoring first.

        libzmq's I/O thread would block on the next connection event, sent
        to nobody, holding a lock that closing the publisher needs.
        """
        publisher, address = self.publisher()
        sub = self.peer(zmq.SUB, address, b"KA\x00")
        yield self.published(publisher, sub, b"KA\x00")
        self.transport.close(publisher._monitor)
        sub.close(0)  # a connection event nobody reads
        other = self.peer(zmq.SUB, address, b"KB\x00")
        yield self.published(publisher, other, b"KB\x00")  # libzmq's I/O thread still runs
        self.transport.shutdown()

    @defer.inlineCallbacks
    def test_inprocPeersServed(self):
        """Peers without a file descriptor (inproc) are served, and refused without a cut."""
        publisher = self.transport.publisher(isTopic=lambda topic, subscriber: topic in TOPICS)
        publisher.bind("inproc://cauldron-hardening")
        sub = self.transport._factory.context.socket(zmq.SUB)  # inproc: the same context
        self.addCleanup(sub.close, 0)  # before the transport's context terminates
        sub.subscribe(b"KNOPE\x00")
        sub.subscribe(b"KA\x00")
        sub.connect("inproc://cauldron-hardening")
        yield self.published(publisher, sub, b"KA\x00")
        yield eventually(lambda: publisher.refused == 1)
        self.assertEqual((publisher.cuts, publisher._peers), (0, {}))
        # Known by no descriptor, it may hear anything: every topic counts as heard.
        self.assertTrue(publisher.heard(b"KB\x00"))
