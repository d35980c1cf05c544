"""Tests for cauldron.dispatcher over real sockets: commands, hooks, errors, broadcasts."""

import random

from helpers import eventually, startDispatcher, startPair, turn
from twisted.internet import defer
from twisted.internet import reactor as globalReactor
from twisted.logger import capturedLogs, formatEvent
from twisted.trial import unittest

from cauldron import dispatcher as dispatcher_module
from cauldron import errors, keywords
from cauldron.dispatcher import DispatcherService
from cauldron.errors import ProtocolError
from cauldron.protocol import codec
from cauldron.protocol.messages import (
    Batch,
    Describe,
    Description,
    Heartbeat,
    KeywordList,
    ListKeywords,
    Locate,
    Ping,
    Pong,
    Read,
    Started,
    Update,
    Updates,
    Value,
    Write,
)
from cauldron.transport import QueueFull, Transport

SERVED = (Read, Write, Describe, ListKeywords, Ping, Batch)


class Listener:
    """A raw subscriber on a dispatcher's broadcast socket, decoding what arrives."""

    def __init__(self, testCase, dispatcher, topics):
        self.transport = Transport(globalReactor)
        testCase.addCleanup(self.transport.shutdown)
        self.messages = []
        self.socket = self.transport.subscriber(self._received)
        # Subscriptions travel in order: once a heartbeat arrives, every
        # topic subscribed before the heartbeat topic is in place too.
        for topic in topics:
            self.socket.subscribe(topic)
        self.socket.subscribe(codec.HEARTBEAT_TOPIC)
        self.socket.connect(dispatcher.broadcastAddress)

    def _received(self, frames):
        self.messages.append(codec.decodeBroadcast(frames))

    def updates(self, keyword=None):
        """Every value broadcast, in order (a batch's values as Updates of their own)."""
        values = []
        for m in self.messages:
            if isinstance(m, Updates):
                values.extend(Update(m.service, m.keyword, e.binary, e.ascii, e.sequence,
                                     e.timestamp, m.epoch) for e in m.entries)
            elif isinstance(m, Update):
                values.append(m)
        return [u for u in values if keyword is None or u.keyword == keyword]

    def batches(self):
        return [m for m in self.messages if isinstance(m, Updates)]

    def heartbeats(self):
        return [m for m in self.messages if isinstance(m, Heartbeat)]

    def ready(self):
        """Fires once a heartbeat arrived (so every subscription is active).

        What arrived before (the current values sent to new subscriptions)
        is cleared, so tests see only what they cause.
        """
        d = eventually(lambda: self.heartbeats())
        d.addCallback(lambda _: self.messages.clear())
        return d


class Recording(keywords.Double):
    """A keyword whose every hook, as a subclass method, records its call."""

    def __init__(self, name, **kwargs):
        super().__init__(name, **kwargs)
        self.calls = []

    def check(self, value):
        self.calls.append(("check", value))
        return super().check(value)

    def prewrite(self, value):
        self.calls.append(("prewrite", value))
        return value * 2

    def write(self, value):
        self.calls.append(("write", value))

    def postwrite(self, value):
        self.calls.append(("postwrite", value))
        return super().postwrite(value)

    def preread(self):
        self.calls.append(("preread",))

    def read(self):
        self.calls.append(("read",))
        return 42.0

    def postread(self, value):
        self.calls.append(("postread", value))
        return super().postread(value)


class CommandTests(unittest.TestCase):
    """The five commands, answered over the dispatch socket."""

    @defer.inlineCallbacks
    def setUp(self):
        self.temp = keywords.Double("TEMP", initial=3.5, units="K", description="cold head")
        self.mode = keywords.Enumerated("MODE", enumerators=["OFF", "ON"], initial="OFF")
        self.dispatcher, self.client, self.remote = yield startPair(
            self, [self.temp, self.mode]
        )

    @defer.inlineCallbacks
    def test_read(self):
        """A read answers the keyword's current binary and ascii values with its sequence."""
        reply = yield self.remote.request(lambda i, *_: Read(i, "TEMP", "demo"), "read")
        self.assertIsInstance(reply, Value)
        self.assertEqual((reply.keyword, reply.binary, reply.ascii), ("TEMP", 3.5, "3.5"))
        self.assertEqual(reply.sequence, self.temp.sequence)
        self.assertEqual(reply.epoch, self.dispatcher.epoch)

    @defer.inlineCallbacks
    def test_readIsCaseInsensitive(self):
        """A read of a lower-case name answers the upper-case keyword."""
        reply = yield self.remote.request(lambda i, *_: Read(i, "temp", "demo"), "read")
        self.assertEqual(reply.keyword, "TEMP")

    @defer.inlineCallbacks
    def test_write(self):
        """A write stores the converted value and answers it once done."""
        reply = yield self.remote.request(lambda i, *_: Write(i, "MODE", "on", "demo"), "write")
        self.assertEqual((reply.binary, reply.ascii), (1, "ON"))
        self.assertEqual(self.mode.value, 1)
        reply = yield self.remote.request(lambda i, *_: Write(i, "TEMP", "7.25", "demo"), "write")
        self.assertEqual(reply.binary, 7.25)
        self.assertEqual(self.temp.value, 7.25)

    @defer.inlineCallbacks
    def test_describe(self):
        """describe answers every keyword's metadata and current value, or those asked for."""
        reply = yield self.remote.request(lambda i, *_: Describe(i, None, "demo"), "describe")
        self.assertIsInstance(reply, Description)
        self.assertEqual((reply.service, reply.epoch), ("demo", self.dispatcher.epoch))
        byName = {info["name"]: info for info in reply.keywords}
        self.assertEqual(sorted(byName), ["MODE", "TEMP"])
        self.assertEqual(byName["TEMP"]["units"], "K")
        self.assertEqual(byName["TEMP"]["description"], "cold head")
        self.assertEqual(byName["TEMP"]["type"], "double")
        self.assertEqual(byName["TEMP"]["binary"], 3.5)
        self.assertEqual(byName["MODE"]["enumerators"], {"0": "OFF", "1": "ON"})
        self.assertEqual(byName["MODE"]["ascii"], "OFF")
        reply = yield self.remote.request(lambda i, *_: Describe(i, ["mode"], "demo"), "describe")
        self.assertEqual([info["name"] for info in reply.keywords], ["MODE"])

    @defer.inlineCallbacks
    def test_list(self):
        """list answers the sorted names of every keyword served."""
        reply = yield self.remote.request(lambda i, *_: ListKeywords(i, "demo"), "list")
        self.assertIsInstance(reply, KeywordList)
        self.assertEqual((reply.service, reply.names), ("demo", ["MODE", "TEMP"]))

    @defer.inlineCallbacks
    def test_ping(self):
        """ping answers pong with the service name and the dispatcher's epoch."""
        reply = yield self.remote.request(lambda i, *_: Ping(i), "ping")
        self.assertEqual(reply, Pong(reply.id, "demo", self.dispatcher.epoch))

    @defer.inlineCallbacks
    def test_notADispatcherRequest(self):
        """A request a dispatcher does not serve is answered with a ProtocolError and counted."""
        before = self.dispatcher.malformed.count
        d = self.remote.request(lambda i, *_: Locate(i, "demo"), "locate")
        yield self.assertFailure(d, ProtocolError)
        self.assertEqual(self.dispatcher.malformed.count, before + 1)


class LocalApiTests(unittest.TestCase):
    """The dispatcher's keyword table, without sockets."""

    def test_getItemIsCaseInsensitive(self):
        """service["temp"] finds TEMP, and `in` ignores case too."""
        temp = keywords.Double("TEMP")
        service = DispatcherService("demo", None, [temp], reactor=globalReactor)
        self.assertIs(service["temp"], temp)
        self.assertIs(service["TeMp"], temp)
        self.assertIn("temp", service)
        self.assertEqual(service.keywords(), ["TEMP"])
        self.assertEqual(list(service), [temp])

    def test_unknownKeyword(self):
        """An unknown name raises UnknownKeyword, which is also a KeyError."""
        service = DispatcherService("demo", None, [keywords.Double("TEMP")], reactor=globalReactor)
        error = self.assertRaises(errors.UnknownKeyword, service.__getitem__, "nope")
        self.assertIsInstance(error, KeyError)
        self.assertEqual(str(error), "service 'demo' has no keyword 'NOPE'")
        self.assertNotIn("nope", service)

    def test_duplicateKeywordRejected(self):
        """Two keywords of the same name (in any case) cannot be served together."""
        self.assertRaises(
            errors.BadValue, DispatcherService, "demo", None,
            [keywords.Double("TEMP"), keywords.Integer("temp")], reactor=globalReactor,
        )
        service = DispatcherService("demo", None, [keywords.Double("TEMP")], reactor=globalReactor)
        self.assertRaises(errors.BadValue, service.addKeyword, keywords.String("Temp"))

    def test_keywordOfAnotherService(self):
        """A keyword already served by one dispatcher cannot join another."""
        temp = keywords.Double("TEMP")
        DispatcherService("one", None, [temp], reactor=globalReactor)
        self.assertRaises(
            errors.BadValue, DispatcherService, "two", None, [temp], reactor=globalReactor
        )

    def test_dispatcherName(self):
        """A dispatcher is named within its service: the service name unless told otherwise."""
        plain = DispatcherService("Demo", None, reactor=globalReactor)
        self.assertEqual((plain.name, plain.dispatcherName, plain.label), ("demo", "demo", "demo"))
        part = DispatcherService("DEIMOT", None, reactor=globalReactor, dispatcher="Motors")
        self.assertEqual((part.name, part.dispatcherName, part.label),
                         ("deimot", "motors", "deimot/motors"))
        for bad in ("", "two words", "tab\there", 5):
            error = self.assertRaises(errors.ConfigError, DispatcherService, "demo", None,
                                      reactor=globalReactor, dispatcher=bad)
            self.assertIn(repr(bad), str(error))

    def test_setupCallable(self):
        """setup(dispatcher) runs at construction and can add keywords."""
        service = DispatcherService(
            "demo", None, setup=lambda d: d.addKeyword(keywords.Integer("COUNT")),
            reactor=globalReactor,
        )
        self.assertEqual(service.keywords(), ["COUNT"])


class HookTests(unittest.TestCase):
    """The write and read pipelines, with hooks as methods and as callables."""

    @defer.inlineCallbacks
    def test_subclassHooks(self):
        """Subclass hooks run check, prewrite, write, postwrite; then preread, read, postread."""
        kw = Recording("REC", initial=1.0)
        _, _, remote = yield startPair(self, [kw])
        kw.calls.clear()
        ascii = yield remote["REC"].write(5)
        self.assertEqual(ascii, "10.0")  # prewrite doubled it
        self.assertEqual(kw.calls, [
            ("check", 5.0), ("prewrite", 5.0), ("write", 10.0), ("postwrite", 10.0),
            ("check", 10.0),  # postwrite's set() checks again
        ])
        kw.calls.clear()
        value = yield remote["REC"].read(binary=True)
        self.assertEqual(value, 42.0)
        self.assertEqual(kw.calls[:3], [("preread",), ("read",), ("postread", 42.0)])

    @defer.inlineCallbacks
    def test_constructorHooks(self):
        """Hooks given to the constructor as callables run in pipeline order, without self."""
        calls = []

        def hook(name, result=None):
            def run(*args):
                calls.append((name, *args))
                return args[0] if result == "value" else result
            return run

        kw = keywords.Integer(
            "CALLED", initial=1,
            check=hook("check"), prewrite=hook("prewrite", "value"),
            write=hook("write"), preread=hook("preread"), read=lambda: calls.append(("read",)) or 9,
        )
        _, _, remote = yield startPair(self, [kw])
        calls.clear()
        yield remote["CALLED"].write(4)
        self.assertEqual(calls[:3], [("check", 4), ("prewrite", 4), ("write", 4)])
        self.assertEqual(kw.value, 4)  # the default postwrite published it
        calls.clear()
        value = yield remote["CALLED"].read(binary=True)
        self.assertEqual(value, 9)
        self.assertEqual(calls[:2], [("preread",), ("read",)])

    @defer.inlineCallbacks
    def test_postHooksAsCallables(self):
        """postwrite and postread given as callables replace the publishing defaults."""
        seen = []
        kw = keywords.Integer(
            "POST", initial=1,
            postwrite=lambda v: seen.append(("postwrite", v)),
            postread=lambda v: seen.append(("postread", v)),
        )
        _, _, remote = yield startPair(self, [kw])
        yield remote["POST"].write(3)
        yield remote["POST"].read()
        self.assertEqual(seen, [("postwrite", 3), ("postread", 1)])
        self.assertEqual(kw.value, 1)  # nothing published the write

    @defer.inlineCallbacks
    def test_deferredWriteHookDelaysReply(self):
        """A write hook returning a Deferred holds the reply until that Deferred fires."""
        pending = []
        kw = keywords.Integer("SLOW", initial=0, write=lambda v: pending.append(defer.Deferred())
                              or pending[-1])
        _, _, remote = yield startPair(self, [kw])
        written = remote["SLOW"].write(5)
        yield eventually(lambda: pending)
        other = yield remote["SLOW"].read()  # the service keeps answering meanwhile
        self.assertEqual(other, "0")
        self.assertFalse(written.called)
        self.assertEqual(kw.value, 0)
        pending[0].callback(None)
        self.assertEqual((yield written), "5")
        self.assertEqual(kw.value, 5)

    @defer.inlineCallbacks
    def test_writesRunOnceInArrivalOrder(self):
        """Five writes to one keyword run one at a time, each hook once, completing in order."""
        calls, pending, inFlight = [], [], []

        def slowWrite(value):
            calls.append(value)
            inFlight.append(value)
            d = defer.Deferred()
            d.addCallback(lambda _: inFlight.remove(value))
            pending.append(d)
            return d

        slow = keywords.Integer("SLOW", initial=0, write=slowWrite)
        other = keywords.String("OTHER", initial="free")
        _, _, remote = yield startPair(self, [slow, other])
        completed = []
        writes = []
        for value in range(1, 6):
            d = remote["SLOW"].write(value)
            d.addCallback(completed.append)
            writes.append(d)
        for index in range(5):
            yield eventually(
                lambda index=index: len(pending) == index + 1 and len(completed) == index
            )
            if index == 0:
                # another keyword answers while SLOW's writes are queued
                self.assertEqual((yield remote["OTHER"].read()), "free")
            self.assertEqual(len(inFlight), 1)  # one write at a time
            self.assertEqual(completed, [str(v) for v in range(1, index + 1)])
            pending[index].callback(None)
        yield defer.gatherResults(writes)
        self.assertEqual(calls, [1, 2, 3, 4, 5])
        self.assertEqual(completed, ["1", "2", "3", "4", "5"])
        self.assertEqual(slow.value, 5)

    @defer.inlineCallbacks
    def test_period(self):
        """period() runs the read path repeatedly, publishing what the read hook returns."""
        reads = []
        kw = keywords.Integer("TICK", initial=0, read=lambda: reads.append(1) or len(reads))
        kw.period(0.02)
        dispatcher, _, remote = yield startPair(self, [kw])
        seen = []
        yield remote["TICK"].monitor(lambda v: seen.append(v.binary))
        yield eventually(lambda: len(reads) >= 5 and seen and seen[-1] >= 5)
        self.assertEqual(seen, sorted(seen))
        # a period set while serving replaces the old one
        kw.period(0.01)
        count = len(reads)
        yield eventually(lambda: len(reads) >= count + 5)

    @defer.inlineCallbacks
    def test_periodSurvivesFailingRead(self):
        """A periodic read whose hook fails is logged and the period goes on."""
        reads = []

        def read():
            reads.append(1)
            if len(reads) == 1:
                raise RuntimeError("sensor hiccup")
            return len(reads)

        kw = keywords.Integer("FLAKY", initial=0, read=read)
        kw.period(0.02)
        yield startDispatcher(self, [kw])
        yield eventually(lambda: len(reads) >= 3)
        self.assertEqual(kw.value, len(reads))
        self.flushLoggedErrors(RuntimeError, errors.HookError)


class ErrorTests(unittest.TestCase):
    """Every dispatcher-side failure reaches the client typed, with the dispatcher's message."""

    @defer.inlineCallbacks
    def setUp(self):
        def boom(value):
            raise RuntimeError("boom")

        def picky(value):
            raise ValueError("odd values only")

        def failOnOne(value):
            if value == 1:
                raise RuntimeError("one is unlucky")

        self.temp = keywords.Double("TEMP", initial=1.0)
        self.count = keywords.Integer("COUNT", range=(0, 10), initial=1)
        self.ro = keywords.Integer("RO", readonly=True, initial=1)
        self.wo = keywords.Integer("WO", writeonly=True)
        self.broken = keywords.Integer("BROKEN", write=boom, initial=0)
        self.picky = keywords.Integer("PICKY", check=picky, initial=None)
        self.sometimes = keywords.Integer("SOMETIMES", write=failOnOne, initial=0)
        self.dispatcher, self.client, self.remote = yield startPair(
            self, [self.temp, self.count, self.ro, self.wo, self.broken, self.picky,
                   self.sometimes],
        )

    @defer.inlineCallbacks
    def assertRemoteError(self, d, cls, message):
        error = yield self.assertFailure(d, cls)
        self.assertEqual(str(error), message)
        return error

    @defer.inlineCallbacks
    def test_badValue(self):
        """An unparsable value fails with BadValue and leaves the value unchanged."""
        yield self.assertRemoteError(
            self.remote["TEMP"].write("abc"), errors.BadValue, "TEMP: 'abc' is not a number"
        )
        self.assertEqual(self.temp.value, 1.0)

    @defer.inlineCallbacks
    def test_outOfRange(self):
        """A value outside the range fails with BadValue naming the bound."""
        yield self.assertRemoteError(
            self.remote["COUNT"].write(11), errors.BadValue,
            "COUNT: 11 is above the maximum 10",
        )
        self.assertEqual(self.count.value, 1)

    @defer.inlineCallbacks
    def test_readOnly(self):
        """A write to a read-only keyword fails with ReadOnly."""
        yield self.assertRemoteError(
            self.remote["RO"].write(2), errors.ReadOnly, "demo.RO is read-only"
        )

    @defer.inlineCallbacks
    def test_writeOnly(self):
        """A read of a write-only keyword fails with WriteOnly."""
        yield self.assertRemoteError(
            self.remote["WO"].read(), errors.WriteOnly, "demo.WO is write-only"
        )

    @defer.inlineCallbacks
    def test_unknownKeyword(self):
        """A request for a keyword the dispatcher lacks fails with UnknownKeyword."""
        for message in (lambda i, *_: Read(i, "NOPE", "demo"),
                        lambda i, *_: Write(i, "NOPE", 1, "demo"),
                        lambda i, *_: Describe(i, ["NOPE"], "demo")):
            yield self.assertRemoteError(
                self.remote.request(message, "request"), errors.UnknownKeyword,
                "service 'demo' has no keyword 'NOPE'",
            )

    @defer.inlineCallbacks
    def test_hookRaisingIsHookError(self):
        """A hook raising RuntimeError fails the write with HookError, and the service goes on."""
        yield self.assertRemoteError(
            self.remote["BROKEN"].write(3), errors.HookError,
            "BROKEN: write failed: RuntimeError: boom",
        )
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)
        self.assertEqual(self.broken.value, 0)
        self.assertEqual((yield self.remote["BROKEN"].read()), "0")

    @defer.inlineCallbacks
    def test_hookValueErrorIsBadValue(self):
        """A hook raising ValueError fails the write with BadValue carrying its message."""
        yield self.assertRemoteError(
            self.remote["PICKY"].write(3), errors.BadValue, "PICKY: odd values only"
        )

    @defer.inlineCallbacks
    def test_failedWriteDoesNotBlockTheQueue(self):
        """After a failed write, the next write to the same keyword runs."""
        first = self.remote["SOMETIMES"].write(1)
        second = self.remote["SOMETIMES"].write(2)
        yield self.assertFailure(first, errors.HookError)
        self.assertEqual((yield second), "2")
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)


class BroadcastTests(unittest.TestCase):
    """Updates and heartbeats on the broadcast socket."""

    @defer.inlineCallbacks
    def test_topicsAreExact(self):
        """A subscriber of KW1 never gets KW10 updates."""
        kw1, kw10 = keywords.Integer("KW1", initial=0), keywords.Integer("KW10", initial=0)
        dispatcher = yield startDispatcher(self, [kw1, kw10], heartbeatInterval=0.02)
        listener = Listener(self, dispatcher, [codec.topicFor("KW1")])
        yield listener.ready()
        kw10.set(5)
        kw1.set(7)
        yield eventually(lambda: listener.updates())
        self.assertEqual([(u.keyword, u.binary) for u in listener.updates()], [("KW1", 7)])

    @defer.inlineCallbacks
    def test_newSubscriptionGetsCurrentValue(self):
        """A new subscription to a keyword is answered with its current value at once."""
        temp = keywords.Integer("TEMP", initial=4)
        empty = keywords.Integer("EMPTY")
        dispatcher = yield startDispatcher(self, [temp, empty], heartbeatInterval=5)
        listener = Listener(self, dispatcher, [codec.topicFor("TEMP"), codec.topicFor("EMPTY")])
        yield eventually(lambda: len(listener.updates()) == 2)
        current = {u.keyword: (u.binary, u.sequence) for u in listener.updates()}
        self.assertEqual(current, {"TEMP": (4, temp.sequence), "EMPTY": (None, 0)})

    @defer.inlineCallbacks
    def test_setBroadcastsOnlyChanges(self):
        """keyword.set() publishes only a changed value, unless forced."""
        temp = keywords.Integer("TEMP", initial=1)
        dispatcher = yield startDispatcher(self, [temp], heartbeatInterval=0.02)
        listener = Listener(self, dispatcher, [codec.topicFor("TEMP")])
        yield listener.ready()
        start = temp.sequence
        self.assertTrue(temp.set(2))
        self.assertFalse(temp.set(2))  # unchanged: not published
        self.assertTrue(temp.set(2, force=True))
        self.assertTrue(temp.set(3))
        yield eventually(lambda: len(listener.updates()) >= 3)
        self.assertEqual(
            [(u.binary, u.sequence) for u in listener.updates()],
            [(2, start + 1), (2, start + 2), (3, start + 3)],
        )
        update = listener.updates()[0]
        self.assertEqual((update.service, update.ascii, update.epoch), ("demo", "2",
                                                                         dispatcher.epoch))

    @defer.inlineCallbacks
    def test_burstTravelsInBatchesAndWhole(self):
        """5,000 changes made in one reactor turn arrive, all, in a few messages in order.

        One message each would overflow the broadcast socket's high-water
        mark (1,000 messages) and lose most of them.
        """
        count = keywords.Integer("COUNT", initial=0)
        dispatcher = yield startDispatcher(self, [count], heartbeatInterval=0.05)
        listener = Listener(self, dispatcher, [codec.topicFor("COUNT")])
        yield listener.ready()
        for n in range(1, 5001):
            count.set(n)
        yield eventually(lambda: listener.updates("COUNT")[-1:]
                         and listener.updates("COUNT")[-1].binary == 5000)
        self.assertEqual([u.binary for u in listener.updates("COUNT")], list(range(1, 5001)))
        self.assertLessEqual(len(listener.batches()), 20)  # of at most 16 KiB: not 5,000
        self.assertTrue(all(sum(2 * len(e.ascii) + 48 for e in b.entries)
                            <= dispatcher_module.BATCH_BYTES for b in listener.batches()))

    @defer.inlineCallbacks
    def test_changesJustBeforeStopStillGoOutButNotAfterFencing(self):
        """stopService broadcasts what waited for the end of the turn; fence drops it."""
        count = keywords.Integer("COUNT", initial=0)
        dispatcher = yield startDispatcher(self, [count], heartbeatInterval=0.05)
        listener = Listener(self, dispatcher, [codec.topicFor("COUNT")])
        yield listener.ready()
        count.set(1)
        count.set(2)
        yield dispatcher.stopService()
        yield eventually(lambda: [u.binary for u in listener.updates("COUNT")] == [1, 2])
        dispatcher.startService()
        yield dispatcher.whenReady()
        count.set(3)
        dispatcher.fence(errors.LeaseConflict("taken", detail={"host": "elsewhere"}))
        self.assertEqual((dispatcher._outbox, dispatcher._flushing), ({}, None))

    @defer.inlineCallbacks
    def test_fencingSaysWhatWasLost(self):
        """The fencing line names the dispatcher, and the keyword another one took."""
        part = yield startDispatcher(self, [keywords.Integer("M1")], name="deimot",
                                     dispatcher="motors")
        named = yield startDispatcher(self, [keywords.Integer("M2")], name="deimot",
                                      dispatcher="other")
        with capturedLogs() as events:
            part.fence(errors.LeaseConflict("taken", detail={
                "host": "h2", "dispatchPort": 1, "broadcastPort": 2, "keyword": "M1",
                "dispatcher": "rival"}))
            named.fence(errors.LeaseConflict("taken", detail={"host": "h3"}))
        lines = [formatEvent(e) for e in events if "fenced" in formatEvent(e)]
        self.assertEqual(lines, [
            "dispatcher deimot/motors fenced: keyword DEIMOT.M1 is now served by dispatcher "
            "'rival' on host h2 (ports 1/2); stopped serving it",
            "dispatcher deimot/other fenced: dispatcher name 'other' of service 'deimot' is "
            "now held by another dispatcher on host h3 (ports ?/?); stopped serving it",
        ])
        self.assertEqual((part.state, named.state), ("fenced", "fenced"))

    @defer.inlineCallbacks
    def test_welcomeNeverOvertakesWaitingChanges(self):
        """A new subscription's answer goes out after the changes made before it."""
        count = keywords.Integer("COUNT", initial=0)
        dispatcher = yield startDispatcher(self, [count], heartbeatInterval=0.05)
        listener = Listener(self, dispatcher, [codec.topicFor("COUNT")])
        yield listener.ready()
        count.set(1)
        count.set(2)
        dispatcher._subscribed(codec.topicFor("COUNT"))  # as if someone subscribed now
        yield eventually(lambda: len(listener.updates("COUNT")) >= 3)
        self.assertEqual([u.binary for u in listener.updates("COUNT")], [1, 2, 2])

    @defer.inlineCallbacks
    def test_heartbeatsCarryChangedSequences(self):
        """Heartbeats come at the configured interval and name the sequences changed since."""
        temp = keywords.Integer("TEMP", initial=1)
        dispatcher = yield startDispatcher(self, [temp], heartbeatInterval=0.05)
        listener = Listener(self, dispatcher, [])
        yield listener.ready()
        temp.set(10)
        temp.set(11)
        yield eventually(lambda: any(b.sequences for b in listener.heartbeats()))
        beats = listener.heartbeats()
        carrying = [b for b in beats if b.sequences]
        self.assertEqual(carrying[-1].sequences, {"TEMP": temp.sequence})
        count = len(beats)
        yield eventually(lambda: len(listener.heartbeats()) >= count + 3)
        beats = listener.heartbeats()
        self.assertTrue(all(b.interval == 0.05 for b in beats))
        self.assertTrue(all(b.service == "demo" and b.epoch == dispatcher.epoch for b in beats))
        self.assertEqual(beats[-1].sequences, {})  # nothing changed since
        stamps = [b.timestamp for b in beats]
        self.assertEqual(stamps, sorted(stamps))

    @defer.inlineCallbacks
    def test_broadcastRepublishes(self):
        """broadcast() publishes every keyword's current value again."""
        a, b = keywords.Integer("A", initial=1), keywords.Integer("B", initial=2)
        dispatcher = yield startDispatcher(self, [a, b], heartbeatInterval=0.02)
        listener = Listener(self, dispatcher, [codec.topicFor("A"), codec.topicFor("B")])
        yield listener.ready()
        dispatcher.broadcast()
        yield eventually(lambda: len(listener.updates()) >= 2)
        self.assertEqual(sorted((u.keyword, u.binary) for u in listener.updates()),
                         [("A", 1), ("B", 2)])


def randomMessages(seed, count):
    """``count`` random multipart messages of 1-5 frames of 0-64 bytes, some versioned."""
    rng = random.Random(seed)
    messages = []
    for _ in range(count):
        frames = [rng.randbytes(rng.randint(0, 64)) for _ in range(rng.randint(1, 5))]
        if rng.random() < 0.5:
            frames[0] = codec.VERSION
        messages.append(frames)
    return messages


def isServed(frames):
    """Whether the dispatcher would serve these frames (else it counts them as malformed)."""
    try:
        return isinstance(codec.decode(frames), SERVED)
    except ProtocolError:
        return False


class HostileInputTests(unittest.TestCase):
    """Random frames on the dispatch socket."""

    @defer.inlineCallbacks
    def test_randomFramesAreCountedAndSurvived(self):
        """3,000 random multipart messages are counted as malformed; a valid read still answers."""
        temp = keywords.Double("TEMP", initial=2.5)
        dispatcher, _, remote = yield startPair(self, [temp])
        messages = randomMessages(1234, 3000)
        expected = sum(1 for frames in messages if not isServed(frames))
        self.assertGreater(expected, 2900)
        transport = Transport(globalReactor)
        self.addCleanup(transport.shutdown)
        raw = transport.dealer(lambda frames: None)
        raw.connect(dispatcher.dispatchAddress)
        before = dispatcher.malformed.count
        for frames in messages:
            while True:
                try:
                    raw.send(frames)
                    break
                except QueueFull:
                    yield turn()  # let the reactor drain the queue
        yield eventually(lambda: dispatcher.malformed.count - before >= expected, timeout=10)
        self.assertEqual(dispatcher.malformed.count - before, expected)
        self.assertEqual((yield remote["TEMP"].read(binary=True)), 2.5)
        self.assertEqual(temp.value, 2.5)


class BatchTests(unittest.TestCase):
    """Several requests in one Batch: answered one by one, together where they can be."""

    @defer.inlineCallbacks
    def test_batchAnsweredTogetherInOrderSlowOnesAlone(self):
        writes = []
        slow = keywords.Integer("SLOW", initial=0, write=lambda v: writes.append(defer.Deferred())
                                or writes[-1])
        dispatcher = yield startDispatcher(self, [keywords.Double("TEMP", initial=2.5), slow])
        transport = Transport(globalReactor)
        self.addCleanup(transport.shutdown)
        replies = []
        raw = transport.dealer(lambda frames: replies.append(codec.decode(frames)))
        raw.connect(dispatcher.dispatchAddress)
        before = dispatcher.malformed.count
        nested = codec.encodePayload(Batch([codec.encodePayload(Read(9, "TEMP", "demo"))]))
        raw.send(codec.encode(Batch([
            codec.encodePayload(Read(1, "TEMP", "demo")),
            b"junk",
            codec.encodePayload(Write(2, "SLOW", 5, "demo")),
            nested,
            codec.encodePayload(Read(3, "NOPE", "demo")),
        ])))
        yield eventually(lambda: writes and any(isinstance(r, Batch) for r in replies))
        self.assertIn(Started(2), replies)  # the slow write said it started, on its own
        [together] = [r for r in replies if isinstance(r, Batch)]
        answers = [codec.decodeBatched(p) for p in together.payloads]
        self.assertEqual([(type(a).__name__, a.id) for a in answers],
                         [("Value", 1), ("Error", 3)])
        self.assertEqual((answers[0].binary, answers[1].error), (2.5, "UnknownKeyword"))
        self.assertEqual(dispatcher.malformed.count - before, 2)  # the junk, the nested Batch
        writes[0].callback(None)
        yield eventually(lambda: any(isinstance(r, Value) and r.id == 2 for r in replies))
        self.assertEqual(slow.value, 5)
