"""Tests for cauldron.client against real dispatchers: values, monitors, deadlines, liveness."""

from helpers import (
    FakePeer,
    Silent,
    clientConfigFor,
    eventually,
    freePort,
    startClient,
    startDispatcher,
    startPair,
    turn,
)
from twisted.internet import defer
from twisted.internet import reactor as globalReactor
from twisted.trial import unittest

from cauldron import errors, keywords
from cauldron.client import LIVENESS, ClientService, KeywordValue
from cauldron.protocol import codec
from cauldron.protocol.messages import Error, Heartbeat, Ping, Pong, Read, Value
from cauldron.requests import RequestChannel
from cauldron.transport import Transport, portOf

HEARTBEAT = 0.1


def demoKeywords():
    return [
        keywords.Double("TEMP", initial=3.5, units="K", range=(0, 400), description="cold head"),
        keywords.Integer("COUNT", initial=3),
        keywords.Boolean("FLAG", initial=True),
        keywords.String("MSG", initial="hello"),
        keywords.Enumerated("MODE", enumerators=["OFF", "ON"], initial="ON"),
        keywords.Mask("BITS", bits=["A", "B", "C"], initial=5),
        keywords.IntegerArray("IA", initial=[1, 2, 3]),
        keywords.DoubleArray("DA", initial=[1.5, -2.0]),
        keywords.Integer("RO", readonly=True, initial=1),
    ]


class ValueTests(unittest.TestCase):
    """Describe, read and write through a RemoteService."""

    @defer.inlineCallbacks
    def setUp(self):
        self.dispatcher, self.client, self.remote = yield startPair(self, demoKeywords())

    def test_keywordsAndMetadata(self):
        """client.service("demo") knows every keyword name, its type and its metadata."""
        self.assertEqual(self.remote.name, "demo")
        self.assertEqual(self.remote.keywords(), sorted(
            ["TEMP", "COUNT", "FLAG", "MSG", "MODE", "BITS", "IA", "DA", "RO"]))
        temp = self.remote["temp"]
        self.assertIs(temp, self.remote["TEMP"])
        self.assertIn("Temp", self.remote)
        self.assertEqual(temp.info["units"], "K")
        self.assertEqual(temp.info["description"], "cold head")
        self.assertEqual(temp.info["range"], [0.0, 400.0])
        self.assertIsInstance(temp.type, keywords.Double)
        self.assertEqual(temp.type.toBinary("7"), 7.0)
        self.assertTrue(self.remote["RO"].info["readonly"])
        self.assertEqual(self.remote["MODE"].type.enumerators, {0: "OFF", 1: "ON"})
        self.assertEqual(temp.latest.binary, 3.5)  # describe carried the value
        self.assertEqual(self.remote.epoch, self.dispatcher.epoch)
        self.assertTrue(self.remote.connected)

    @defer.inlineCallbacks
    def test_sameServiceTwice(self):
        """Asking twice for a service gives the same RemoteService."""
        again = yield self.client.service("DEMO")
        self.assertIs(again, self.remote)

    def test_unknownKeyword(self):
        """An unknown keyword name raises UnknownKeyword (a KeyError) at once."""
        error = self.assertRaises(errors.UnknownKeyword, self.remote.__getitem__, "nope")
        self.assertIsInstance(error, KeyError)
        self.assertEqual(str(error), "service 'demo' has no keyword 'NOPE'")

    @defer.inlineCallbacks
    def test_readTypesPreserved(self):
        """Binary reads keep native types: Integer int, Double float, Boolean bool, arrays list."""
        expected = {
            "COUNT": (int, 3, "3"),
            "TEMP": (float, 3.5, "3.5"),
            "FLAG": (bool, True, "1"),
            "MSG": (str, "hello", "hello"),
            "MODE": (int, 1, "ON"),
            "BITS": (int, 5, "A, C"),
            "IA": (list, [1, 2, 3], "1 2 3"),
            "DA": (list, [1.5, -2.0], "1.5 -2.0"),
        }
        for name, (cls, binary, ascii) in expected.items():
            keyword = self.remote[name]
            got = yield keyword.read(binary=True)
            self.assertIs(type(got), cls, name)
            self.assertEqual(got, binary, name)
            self.assertEqual((yield keyword.read()), ascii, name)
            self.assertEqual((yield keyword.read(both=True)), (binary, ascii), name)
        da = yield self.remote["DA"].read(binary=True)
        self.assertTrue(all(type(x) is float for x in da))

    @defer.inlineCallbacks
    def test_writeFiresWithNewValue(self):
        """write() fires with the new ascii value once the dispatcher completed it."""
        result = yield self.remote["COUNT"].write(9)
        self.assertEqual(result, "9")
        self.assertEqual(self.dispatcher["COUNT"].value, 9)
        self.assertEqual((yield self.remote["COUNT"].read(binary=True)), 9)
        self.assertEqual((yield self.remote["IA"].write((4, 5))), "4 5")
        self.assertEqual((yield self.remote["MODE"].write("off")), "OFF")
        self.assertEqual(self.remote["COUNT"].latest.binary, 9)

    @defer.inlineCallbacks
    def test_textRoundTrips(self):
        """Values with a colon, newlines and any characters round-trip unchanged."""
        for text in ("ready: all good", "line one\nline two\n", "tab\tnul\x00 é ☃ ; , |"):
            self.assertEqual((yield self.remote["MSG"].write(text)), text)
            self.assertEqual((yield self.remote["MSG"].read()), text)
            self.assertEqual(self.dispatcher["MSG"].value, text)

    @defer.inlineCallbacks
    def test_unsendableValue(self):
        """A value no keyword can hold fails locally with BadValue, before sending."""
        yield self.assertFailure(self.remote["MSG"].write({"a": 1}), errors.BadValue)
        self.assertEqual(self.remote.primary._channel.pending, 0)

    @defer.inlineCallbacks
    def test_typedErrorsReachTheClient(self):
        """A write the dispatcher rejects fails with the matching error class and message."""
        error = yield self.assertFailure(self.remote["TEMP"].write(500), errors.BadValue)
        local = self.assertRaises(errors.BadValue, self.dispatcher["TEMP"].toBinary, 500)
        self.assertEqual(str(error), str(local))
        self.assertEqual(str(error), "TEMP: 500.0 is above the maximum 400.0")
        error = yield self.assertFailure(self.remote["RO"].write(2), errors.ReadOnly)
        self.assertEqual(str(error), "demo.RO is read-only")

    @defer.inlineCallbacks
    def test_describeFresh(self):
        """describe() fetches fresh metadata and values for the keywords asked."""
        self.dispatcher["COUNT"].set(11)
        infos = yield self.remote.describe(["count"])
        self.assertEqual([(i["name"], i["binary"]) for i in infos], [("COUNT", 11)])


class MonitorTests(unittest.TestCase):
    """Monitors and waitFor."""

    @defer.inlineCallbacks
    def setUp(self):
        self.count = keywords.Integer("COUNT", initial=3)
        self.dispatcher, self.client, self.remote = yield startPair(
            self, [self.count], heartbeatInterval=HEARTBEAT
        )

    @defer.inlineCallbacks
    def test_monitorSeesEveryValue(self):
        """A monitor gets the current value 3, then 4 5 6 7 for writes 4..7, in order."""
        seen = []
        subscription = yield self.remote["COUNT"].monitor(seen.append)
        self.addCleanup(subscription.stop)
        for value in range(4, 8):
            yield self.remote["COUNT"].write(value)
        yield eventually(lambda: seen and seen[-1].binary == 7)
        self.assertEqual([v.binary for v in seen], [3, 4, 5, 6, 7])
        self.assertEqual(" ".join(v.ascii for v in seen), "3 4 5 6 7")
        self.assertIsInstance(seen[0], KeywordValue)
        sequences = [v.sequence for v in seen]
        self.assertEqual(sequences, list(range(sequences[0], sequences[0] + 5)))

    @defer.inlineCallbacks
    def test_monitorSeesDispatcherSideChanges(self):
        """Values set on the dispatcher reach a monitor through the broadcast channel."""
        seen = []
        subscription = yield self.remote["COUNT"].monitor(seen.append)
        self.addCleanup(subscription.stop)
        for value in range(10, 20):
            self.count.set(value)
        yield eventually(lambda: seen[-1].binary == 19)
        self.assertEqual([v.binary for v in seen], [3, *range(10, 20)])

    @defer.inlineCallbacks
    def test_twoMonitors(self):
        """Two monitors of one keyword each get every value."""
        first, second = [], []
        for seen in (first, second):
            subscription = yield self.remote["COUNT"].monitor(lambda v, s=seen: s.append(v.binary))
            self.addCleanup(subscription.stop)
        for value in (4, 5, 6):
            self.count.set(value)
        yield eventually(lambda: first[-1] == 6 and second[-1] == 6)
        self.assertEqual(first, [3, 4, 5, 6])
        self.assertEqual(second, [3, 4, 5, 6])

    @defer.inlineCallbacks
    def test_subscriptionStop(self):
        """After Subscription.stop() its callback is not called again; other monitors go on."""
        stopped, running = [], []
        first = yield self.remote["COUNT"].monitor(lambda v: stopped.append(v.binary))
        second = yield self.remote["COUNT"].monitor(lambda v: running.append(v.binary))
        self.addCleanup(second.stop)
        first.stop()
        self.assertFalse(first.active)
        yield self.remote["COUNT"].write(8)
        self.count.set(9)
        yield eventually(lambda: running[-1] == 9)
        self.assertEqual(stopped, [3])
        self.assertTrue(self.remote["COUNT"].monitored)
        second.stop()
        self.assertFalse(self.remote["COUNT"].monitored)

    @defer.inlineCallbacks
    def test_monitorWithoutPrime(self):
        """A monitor with prime=False gets only later changes."""
        seen = []
        subscription = yield self.remote["COUNT"].monitor(lambda v: seen.append(v.binary),
                                                          prime=False)
        self.addCleanup(subscription.stop)
        yield self.remote["COUNT"].write(4)
        yield eventually(lambda: seen)
        self.assertEqual(seen, [4])

    @defer.inlineCallbacks
    def test_unprimedMonitorIgnoresTheAnswerToItsSubscription(self):
        """The dispatcher's answer to a new subscription is no change: prime=False skips it.

        Both with no value at all, and with a value the client has not seen
        (changed since the service was described): only a real change calls back.
        """
        empty = keywords.Integer("EMPTY")
        self.dispatcher.addKeyword(empty)
        client = startClient(self, self.dispatcher.dispatchAddress,
                             self.dispatcher.broadcastAddress)
        remote = yield client.service("demo")
        self.count.set(10)  # the client described COUNT as 3: 10 is news to it
        for name, changeTo in (("EMPTY", 1), ("COUNT", 11)):
            keyword, seen = remote[name], []
            subscription = yield keyword.monitor(lambda v, seen=seen: seen.append(v.binary),
                                                 prime=False)
            self.addCleanup(subscription.stop)
            yield eventually(lambda keyword=keyword: keyword._active)  # the answer arrived
            self.assertEqual(seen, [], name)
            self.dispatcher[name].set(changeTo)
            yield eventually(lambda seen=seen: seen)
            self.assertEqual(seen, [changeTo], name)

    @defer.inlineCallbacks
    def test_waitForMet(self):
        """waitFor fires True once the predicate holds."""
        d = self.remote["COUNT"].waitFor(lambda v: v.binary == 5, 5)
        self.count.set(4)
        self.count.set(5)
        self.assertIs((yield d), True)
        yield turn()  # waitFor may fire before its own subscription is stopped
        self.assertFalse(self.remote["COUNT"].monitored)

    @defer.inlineCallbacks
    def test_waitForAlreadyTrue(self):
        """waitFor fires True at once when the current value already satisfies it."""
        self.assertIs((yield self.remote["COUNT"].waitFor(lambda v: v.binary == 3, 5)), True)

    @defer.inlineCallbacks
    def test_waitForTimeout(self):
        """waitFor fires False when the predicate has not held by the timeout."""
        start = globalReactor.seconds()
        self.assertIs((yield self.remote["COUNT"].waitFor(lambda v: v.binary == 99, 0.2)), False)
        self.assertGreaterEqual(globalReactor.seconds() - start, 0.2)
        self.assertFalse(self.remote["COUNT"].monitored)

    @defer.inlineCallbacks
    def test_waitForWithoutTimeoutCancelled(self):
        """waitFor with no timeout waits until met or cancelled; cancelling stops its monitor."""
        d = self.remote["COUNT"].waitFor(lambda v: v.binary == 99, None)
        yield eventually(lambda: self.remote["COUNT"].monitored)
        self.assertNoResult(d)
        d.cancel()
        yield self.assertFailure(d, defer.CancelledError)
        self.assertFalse(self.remote["COUNT"].monitored)

    @defer.inlineCallbacks
    def test_gapTriggersReread(self):
        """A broadcast whose sequence skips one makes the client re-read the keyword."""
        reads = []
        gappy = keywords.Integer("GAPPY", initial=3, read=lambda: reads.append(1))
        dispatcher, _, remote = yield startPair(self, [gappy], name="gaps")
        seen = []
        subscription = yield remote["GAPPY"].monitor(lambda v: seen.append((v.binary, v.missed)))
        self.addCleanup(subscription.stop)
        readsBefore = len(reads)
        # Two changes the subscriber never hears about (as if dropped)...
        gappy.removeListener(dispatcher._publish)
        gappy.set(4)
        gappy.set(5)
        gappy.addListener(dispatcher._publish)
        # ...then one it does hear, two sequences ahead: the monitor is told it missed two.
        gappy.set(6)
        yield eventually(lambda: len(reads) > readsBefore)
        yield eventually(lambda: seen[-1][0] == 6)
        self.assertEqual(seen, [(3, 0), (6, 2)])

    @defer.inlineCallbacks
    def test_burstReachesEveryMonitorWhole(self):
        """20,000 changes, 5,000 per reactor turn: three monitors get every one.

        One message per change would meet the high-water mark (1,000) within a turn.
        """
        clients = [startClient(self, self.dispatcher.dispatchAddress,
                               self.dispatcher.broadcastAddress) for _ in range(3)]
        seen = [[] for _ in clients]
        # Clients on one reactor share one ZeroMQ context (one I/O thread).
        self.assertEqual(len({id(client._transport._factory) for client in clients}), 1)
        for client, values in zip(clients, seen, strict=True):
            remote = yield client.service("demo")
            subscription = yield remote["COUNT"].monitor(
                lambda v, values=values: values.append((v.binary, v.missed)))
            self.addCleanup(subscription.stop)
        for start in range(10, 20010, 5000):
            for n in range(start, start + 5000):
                self.count.set(n)
            yield turn()
        yield eventually(lambda: all(values[-1][0] == 20009 for values in seen), timeout=20)
        for values in seen:
            self.assertEqual(values, [(3, 0)] + [(n, 0) for n in range(10, 20010)])

    @defer.inlineCallbacks
    def test_gapInjectedDirectly(self):
        """RemoteKeyword._broadcast with a skipped sequence sends a Read to the dispatcher."""
        reads = []
        gappy = keywords.Integer("GAPPY", initial=3, read=lambda: reads.append(1))
        _, _, remote = yield startPair(self, [gappy], name="gaps")
        keyword = remote["GAPPY"]
        latest = keyword.latest
        keyword._broadcast(latest._replace(sequence=latest.sequence + 1, binary=4, ascii="4"))
        self.assertEqual(remote.primary._channel.pending, 0)  # consecutive: no re-read
        keyword._broadcast(latest._replace(sequence=latest.sequence + 3, binary=6, ascii="6"))
        self.assertEqual(remote.primary._channel.pending, 1)  # gap: one Read in flight
        yield eventually(lambda: reads and remote.primary._channel.pending == 0)
        self.assertEqual(len(reads), 1)

    @defer.inlineCallbacks
    def test_batchDeliversNewValuesInOrderAndHealsItsGaps(self):
        """A batch's repeats and old values are skipped; a gap in it re-reads and counts."""
        reads = []
        gappy = keywords.Integer("GAPPY", initial=3, read=lambda: reads.append(1))
        _, _, remote = yield startPair(self, [gappy], name="gaps")
        keyword = remote["GAPPY"]
        seen = []
        subscription = yield keyword.monitor(lambda v: seen.append((v.binary, v.missed)))
        self.addCleanup(subscription.stop)
        latest = keyword.latest
        at = latest.sequence

        def value(offset, binary):
            return latest._replace(sequence=at + offset, binary=binary, ascii=str(binary))

        keyword._broadcastMany([value(1, 4), value(1, 4), value(0, 3), value(4, 7)])
        self.assertEqual(seen, [(3, 0), (4, 0), (7, 2)])
        self.assertEqual(keyword.latest.binary, 7)
        self.assertEqual(remote.primary._channel.pending, 1)  # the gap: one Read in flight
        yield eventually(lambda: reads and remote.primary._channel.pending == 0)

    @defer.inlineCallbacks
    def test_heartbeatAnnouncingNewerSequenceTriggersReread(self):
        """A heartbeat naming a sequence the monitor has not seen makes it re-read."""
        seen = []
        subscription = yield self.remote["COUNT"].monitor(lambda v: seen.append(v.binary))
        self.addCleanup(subscription.stop)
        # The tail of a burst is lost: the update never goes out, but the
        # dispatcher's next heartbeat announces its sequence.
        self.count.removeListener(self.dispatcher._publish)
        self.count.set(4)
        self.count.addListener(self.dispatcher._publish)
        self.dispatcher._changed["COUNT"] = self.count.sequence
        yield eventually(lambda: seen[-1] == 4)
        self.assertEqual(seen, [3, 4])


class DeadlineTests(unittest.TestCase):
    """Every call has a deadline; late replies are dropped."""

    def fakePeerChannel(self, peer, timeout):
        """A RequestChannel to ``peer`` (a FakePeer), closed after the test."""
        transport = Transport(globalReactor)
        self.addCleanup(transport.shutdown)
        channel = RequestChannel(transport, peer.address, "the fake peer", timeout=timeout)
        self.addCleanup(channel.close)
        return channel

    @defer.inlineCallbacks
    def test_silentDispatcherTimesOut(self):
        """A dispatcher that never answers makes service() fail with CauldronTimeout in time."""
        silent = Silent(self)
        client = startClient(self, silent.dispatchAddress, silent.broadcastAddress, timeout=0.3)
        start = globalReactor.seconds()
        error = yield self.assertFailure(client.service("demo"), errors.CauldronTimeout)
        elapsed = globalReactor.seconds() - start
        self.assertIsInstance(error, TimeoutError)
        self.assertGreaterEqual(elapsed, 0.3)
        self.assertLess(elapsed, 0.3 + 1.0)
        self.assertIn(silent.dispatchAddress, str(error))
        self.assertEqual(len(silent.requests), 1)  # sent once, never retried

    @defer.inlineCallbacks
    def test_unreachableDispatcher(self):
        """With nothing listening, service() fails with CauldronTimeout naming the address."""
        address = f"tcp://127.0.0.1:{freePort()}"
        client = startClient(self, address, f"tcp://127.0.0.1:{freePort()}", timeout=0.3)
        error = yield self.assertFailure(client.service("demo"), errors.CauldronTimeout)
        self.assertIn(address, str(error))
        self.assertIn("demo", str(error))

    @defer.inlineCallbacks
    def test_stalledReadTimesOut(self):
        """A read the dispatcher never finishes fails with CauldronTimeout; later requests work."""
        stalled = defer.Deferred()
        slow = keywords.Integer("SLOW", initial=1, read=lambda: stalled)
        fast = keywords.Integer("FAST", initial=2)
        _, _, remote = yield startPair(self, [slow, fast])
        error = yield self.assertFailure(remote["SLOW"].read(timeout=0.2), errors.CauldronTimeout)
        self.assertIsInstance(error, TimeoutError)
        self.assertIn("read SLOW", str(error))
        newer = remote["FAST"].read()
        stalled.callback(None)  # the stale read's reply is now sent, and must be dropped
        self.assertEqual((yield newer), "2")
        self.assertEqual(remote.primary._channel.pending, 0)

    @defer.inlineCallbacks
    def test_lateReplyDropped(self):
        """A reply arriving after its request timed out is dropped, never given to a newer one."""
        peer = FakePeer(self)
        channel = self.fakePeerChannel(peer, 5)
        keep = channel.request(lambda i: Ping(i), "ping")  # keeps the socket open
        early = channel.request(lambda i: Read(i, "TEMP"), "read TEMP", timeout=0.1)
        error = yield self.assertFailure(early, errors.CauldronTimeout)
        self.assertEqual(str(error), "read TEMP: no reply from the fake peer within 0.1 s")
        newer = channel.request(lambda i: Read(i, "TEMP"), "read TEMP")
        yield eventually(lambda: len(peer.requests) == 3)
        (who, ping), (_, old), (_, new) = peer.requests
        self.assertNotEqual(old.id, new.id)
        peer.reply(who, Value(old.id, "TEMP", 1, "late", 1, None, "e"))
        peer.reply(who, Pong(ping.id, "fake", "e"))
        yield keep  # the late reply, sent before this one, has been handled
        self.assertFalse(newer.called)
        self.assertEqual(channel.pending, 1)
        peer.reply(who, Value(new.id, "TEMP", 2, "fresh", 2, None, "e"))
        self.assertEqual((yield newer).ascii, "fresh")
        self.assertEqual(channel.pending, 0)

    @defer.inlineCallbacks
    def test_deadlinesOutOfOrder(self):
        """A shorter deadline sent later expires first; no timer outlives the requests."""
        peer = FakePeer(self)
        channel = self.fakePeerChannel(peer, 5)
        order = []
        slow = channel.request(lambda i: Ping(i), "slow", timeout=0.4)
        fast = channel.request(lambda i: Ping(i), "fast", timeout=0.1)
        slow.addErrback(lambda f: order.append(("slow", f.type)))
        fast.addErrback(lambda f: order.append(("fast", f.type)))
        yield eventually(lambda: len(order) == 2)
        self.assertEqual(order, [("fast", errors.CauldronTimeout),
                                 ("slow", errors.CauldronTimeout)])
        self.assertIsNone(channel._timer)

    @defer.inlineCallbacks
    def test_sequentialRequestsShareOneTimer(self):
        """Requests made one after another keep one timer armed, gone once nothing is due."""
        peer = FakePeer(self)
        channel = self.fakePeerChannel(peer, 0.3)
        timers = set()
        for n in range(5):
            d = channel.request(lambda i: Ping(i), "ping")
            timers.add(channel._timer)
            yield eventually(lambda n=n: len(peer.requests) == n + 1)
            who, ping = peer.requests[-1]
            peer.reply(who, Pong(ping.id, "fake", "e"))
            yield d
            self.assertEqual(channel.pending, 0)
        self.assertEqual(len(timers), 1)
        self.assertTrue(channel._timer.active())
        yield eventually(lambda: channel._timer is None)  # fired with nothing due: not re-armed

    @defer.inlineCallbacks
    def test_convertAndErrorHook(self):
        """``convert`` shapes what the Deferred fires with; ``onError`` may take an error over."""
        peer = FakePeer(self)
        channel = self.fakePeerChannel(peer, 5)
        seen = []

        def takeOver(d, error):
            seen.append(error)
            if isinstance(error, errors.NotOwner):
                d.callback("handled")
                return True
            return False

        shaped = channel.request(lambda i: Ping(i), "ping", convert=lambda pong: pong.service)
        broken = channel.request(lambda i: Ping(i), "ping", convert=lambda pong: 1 / 0)
        refused = channel.request(lambda i: Ping(i), "ping", onError=takeOver)
        failed = channel.request(lambda i: Ping(i), "ping", onError=takeOver)
        yield eventually(lambda: len(peer.requests) == 4)
        (who, a), (_, b), (_, c), (_, e) = peer.requests
        peer.reply(who, Pong(a.id, "fake", "e"))
        peer.reply(who, Pong(b.id, "fake", "e"))
        peer.reply(who, Error(c.id, "NotOwner", "not me"))
        peer.reply(who, Error(e.id, "BadValue", "no"))
        self.assertEqual((yield shaped), "fake")
        yield self.assertFailure(broken, ZeroDivisionError)
        self.assertEqual((yield refused), "handled")
        yield self.assertFailure(failed, errors.BadValue)
        self.assertEqual([type(error) for error in seen], [errors.NotOwner, errors.BadValue])

    @defer.inlineCallbacks
    def test_answeredDeadlinesForgotten(self):
        """Deadlines of answered requests do not pile up while others stay in flight."""
        peer = FakePeer(self)
        channel = self.fakePeerChannel(peer, 5)
        held = channel.request(lambda i: Ping(i), "held")  # never answered
        yield eventually(lambda: peer.requests)
        heldId = peer.requests[0][1].id

        def answer(identity, frames):
            request = codec.decode(frames)
            if request.id != heldId:
                peer.reply(identity, Pong(request.id, "fake", "e"))

        peer.router._onMessage = answer
        for _ in range(30):
            yield defer.gatherResults(
                [channel.request(lambda i: Ping(i), "ping") for _ in range(100)]
            )
        self.assertEqual(channel.pending, 1)
        self.assertLessEqual(len(channel._deadlines), 4 * channel.pending + 1024)
        self.assertNoResult(held)
        held.addErrback(lambda f: f.trap(defer.CancelledError))  # closed at cleanup

    @defer.inlineCallbacks
    def test_malformedReplyCounted(self):
        """A reply that does not decode is counted and leaves the request pending."""
        peer = FakePeer(self)
        channel = self.fakePeerChannel(peer, 5)
        pending = channel.request(lambda i: Ping(i), "ping")
        yield eventually(lambda: peer.requests)
        who, ping = peer.requests[0]
        peer.router.sendTo(who, [b"garbage"])
        peer.reply(who, Pong(ping.id, "fake", "e"))
        yield pending
        self.assertEqual(channel.malformed, 1)

    @defer.inlineCallbacks
    def test_errorReplyIsTyped(self):
        """An Error reply naming a cauldron error class fails the request with that class."""
        peer = FakePeer(self)
        channel = self.fakePeerChannel(peer, 5)
        typed = channel.request(lambda i: Ping(i), "ping")
        hostile = channel.request(lambda i: Ping(i), "ping")
        yield eventually(lambda: len(peer.requests) == 2)
        (who, first), (_, second) = peer.requests
        peer.reply(who, Error(first.id, "ReadOnly", "nope"))
        peer.reply(who, Error(second.id, "SystemExit", "not for you"))
        error = yield self.assertFailure(typed, errors.ReadOnly)
        self.assertEqual(str(error), "nope")
        error = yield self.assertFailure(hostile, errors.CauldronError)
        self.assertIs(type(error), errors.CauldronError)

    @defer.inlineCallbacks
    def test_stopServiceCancelsAndCloses(self):
        """stopService cancels pending calls, closes the sockets, and later calls fail cleanly."""
        stalled = defer.Deferred()
        slow = keywords.Integer("SLOW", initial=1, read=lambda: stalled)
        dispatcher, client, remote = yield startPair(self, [slow])
        pending = remote["SLOW"].read()
        yield eventually(lambda: remote.primary._channel.pending == 1)
        readers = set(globalReactor.getReaders())
        yield client.stopService()
        yield self.assertFailure(pending, defer.CancelledError)
        self.assertEqual(remote.primary._channel.pending, 0)
        self.assertTrue(remote.primary._feed.closed)
        self.assertIsNone(remote.primary._channel._dealer)
        self.assertIsNone(client._transport)
        self.assertFalse(any(r in readers for r in globalReactor.getReaders()
                             if getattr(r, "factory", 1) is None))
        yield self.assertFailure(remote["SLOW"].read(), errors.ServiceUnavailable)
        yield self.assertFailure(client.service("demo"), errors.ServiceUnavailable)
        stalled.callback(None)

    @defer.inlineCallbacks
    def test_stopServiceWhileConnecting(self):
        """stopService cancels a service() still waiting for its describe answer."""
        silent = Silent(self)
        client = startClient(self, silent.dispatchAddress, silent.broadcastAddress, timeout=5)
        connecting = client.service("demo")
        yield eventually(lambda: silent.requests)
        yield client.stopService()
        yield self.assertFailure(connecting, defer.CancelledError)

    @defer.inlineCallbacks
    def test_unknownService(self):
        """A client asking for "other" from a dispatcher serving "demo" gets UnknownService."""
        dispatcher = yield startDispatcher(self, [keywords.Integer("COUNT", initial=1)])
        client = startClient(self, dispatcher.dispatchAddress, dispatcher.broadcastAddress)
        error = yield self.assertFailure(client.service("other"), errors.UnknownService)
        self.assertIn("'other'", str(error))
        self.assertIn("'demo'", str(error))
        # the client stays usable for the right name
        remote = yield client.service("demo")
        self.assertEqual(remote.keywords(), ["COUNT"])

    @defer.inlineCallbacks
    def test_clientNotRunning(self):
        """service() on a client that is not running fails with ServiceUnavailable."""
        client = ClientService(clientConfigFor("tcp://127.0.0.1:1", "tcp://127.0.0.1:2"),
                               reactor=globalReactor)
        yield self.assertFailure(client.service("demo"), errors.ServiceUnavailable)


class LivenessTests(unittest.TestCase):
    """Missed heartbeats, restarts and re-priming."""

    @defer.inlineCallbacks
    def test_deadDispatcherReportedThenReprimed(self):
        """A dead dispatcher is reported in 3 heartbeats; back on its ports, monitors re-prime."""
        first = yield startDispatcher(
            self, [keywords.Integer("COUNT", initial=3)], heartbeatInterval=HEARTBEAT
        )
        dispatchPort = portOf(first.dispatchAddress)
        broadcastPort = portOf(first.broadcastAddress)
        client = startClient(self, first.dispatchAddress, first.broadcastAddress, timeout=2)
        remote = yield client.service("demo")
        states = []
        remote.addStateCallback(lambda r: states.append(r.connected))
        yield eventually(lambda: remote.heartbeatInterval == HEARTBEAT)
        seen = []
        subscription = yield remote["COUNT"].monitor(seen.append)
        self.addCleanup(subscription.stop)

        stopped = globalReactor.seconds()
        yield first.stopService()
        yield eventually(lambda: not remote.connected, timeout=5)
        elapsed = globalReactor.seconds() - stopped
        self.assertEqual(states, [False])
        # L x HB (+ 0.5 s of slack for timer granularity, as in reliability.md R1)
        self.assertLessEqual(elapsed, LIVENESS * HEARTBEAT + 0.5)
        # A request for a dispatcher known to be silent fails at once, not at its timeout.
        asked = globalReactor.seconds()
        error = yield self.assertFailure(remote["COUNT"].read(timeout=5),
                                         errors.ServiceUnavailable)
        self.assertLess(globalReactor.seconds() - asked, 1.0)
        self.assertIn("not answering", str(error))

        second = yield startDispatcher(
            self, [keywords.Integer("COUNT", initial=42)], heartbeatInterval=HEARTBEAT,
            dispatchPort=dispatchPort, broadcastPort=broadcastPort,
        )
        self.assertNotEqual(second.epoch, first.epoch)
        yield eventually(lambda: seen[-1].binary == 42, timeout=5)
        self.assertEqual([v.binary for v in seen], [3, 42])
        self.assertEqual(seen[-1].epoch, second.epoch)
        self.assertTrue(remote.connected)
        self.assertEqual(states, [False, True])
        self.assertEqual(remote.epoch, second.epoch)
        # changes keep flowing from the new dispatcher
        second["COUNT"].set(43)
        yield eventually(lambda: seen[-1].binary == 43)
        self.assertEqual((yield remote["COUNT"].read(binary=True)), 43)

    @defer.inlineCallbacks
    def test_liveDispatcherStaysConnected(self):
        """A dispatcher that keeps heartbeating is never reported disconnected."""
        dispatcher, client, remote = yield startPair(
            self, [keywords.Integer("COUNT", initial=1)], heartbeatInterval=0.02
        )
        states = []
        remote.addStateCallback(lambda r: states.append(r.connected))
        yield eventually(lambda: remote.heartbeatInterval == 0.02)
        beats = []
        listener = Transport(globalReactor)
        self.addCleanup(listener.shutdown)
        sub = listener.subscriber(beats.append)
        sub.subscribe(codec.HEARTBEAT_TOPIC)
        sub.connect(dispatcher.broadcastAddress)
        yield eventually(lambda: len(beats) >= 5 * LIVENESS)
        self.assertEqual(states, [])
        self.assertTrue(remote.connected)

    @defer.inlineCallbacks
    def test_pendingRequestsFailWhenDisconnected(self):
        """Requests pending when a dispatcher is declared dead fail with ServiceUnavailable."""
        stalled = defer.Deferred()
        dispatcher, client, remote = yield startPair(
            self, [keywords.Integer("SLOW", initial=1, read=lambda: stalled)],
            heartbeatInterval=HEARTBEAT, timeout=10,
        )
        yield eventually(lambda: remote.heartbeatInterval == HEARTBEAT)
        pending = remote["SLOW"].read()
        yield eventually(lambda: remote.primary._channel.pending == 1)
        yield dispatcher.stopService()
        error = yield self.assertFailure(pending, errors.ServiceUnavailable)
        self.assertIn("stopped answering", str(error))
        self.assertFalse(remote.connected)
        stalled.callback(None)

    @defer.inlineCallbacks
    def test_watchdogFollowsHeartbeatInterval(self):
        """The liveness check follows the announced interval and ignores nonsense intervals."""
        dispatcher, client, remote = yield startPair(
            self, [keywords.Integer("COUNT", initial=1)], heartbeatInterval=HEARTBEAT
        )
        yield eventually(lambda: remote.heartbeatInterval == HEARTBEAT)
        limit = LIVENESS * HEARTBEAT
        primary = remote.primary
        yield eventually(lambda: primary._watchdog.getTime() - primary._lastHeard <= limit)
        for nonsense in (float("nan"), float("inf"), 0.0, -1.0):
            beat = Heartbeat("demo", remote.epoch, 0.0, nonsense, {})
            remote.primary.broadcastReceived(beat)
            self.assertEqual(remote.heartbeatInterval, HEARTBEAT)
            self.assertLessEqual(primary._watchdog.getTime() - primary._lastHeard, limit)
        self.assertTrue(remote.connected)
