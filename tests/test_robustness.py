"""Regression tests for robustness fixes: wrong services, lost heartbeats, floods, hangs, leaks."""

import subprocess
import sys

from helpers import (
    eventually,
    startClient,
    startDispatcher,
    startPair,
)
from test_router import routedConfig
from twisted.internet import defer
from twisted.internet import reactor as globalReactor
from twisted.trial import unittest

from cauldron import errors, keywords
from cauldron.client import ClientService
from cauldron.dispatcher import MAX_QUEUED_WRITES, DispatcherService
from cauldron.protocol import codec
from cauldron.protocol.messages import Heartbeat, Read
from cauldron.requests import RequestChannel
from cauldron.router import RouterService
from cauldron.transport import Transport, portOf

HEARTBEAT = 0.1
#: long enough that no real heartbeat arrives while a test injects its own
QUIET_HEARTBEAT = 30.0


class RawText(keywords.String):
    """A String whose ascii form is its stored value as is, so tests can plant bad values."""

    @property
    def ascii(self):
        return "" if self.value is None else self.value


def counting(counts, name, result=None):
    """A hook that counts its calls in ``counts[name]`` and returns ``result``."""
    counts.setdefault(name, 0)

    def hook(*args):
        counts[name] += 1
        return result

    return hook


def rawListener(testCase, address, topics):
    """A SUB socket on ``address`` subscribed to ``topics``; returns the list of frames it gets."""
    received = []
    transport = Transport(globalReactor)
    testCase.addCleanup(transport.shutdown)
    subscriber = transport.subscriber(received.append)
    for topic in topics:
        subscriber.subscribe(topic)
    subscriber.connect(address)
    return received


class ServiceIdentityTests(unittest.TestCase):
    """Requests name their service, and describe carries the heartbeat interval."""

    @defer.inlineCallbacks
    def test_requestForAnotherServiceRefused(self):
        """A write meant for alpha reaching beta on alpha's old ports fails with UnknownService."""
        alpha = yield startDispatcher(self, [keywords.Integer("POWER", initial=0)], name="alpha")
        dispatchAddress, broadcastAddress = alpha.dispatchAddress, alpha.broadcastAddress
        client = startClient(self, dispatchAddress, broadcastAddress)
        remote = yield client.service("alpha")
        yield alpha.stopService()
        beta = yield startDispatcher(
            self, [keywords.Integer("POWER", initial=0)], name="beta",
            dispatchPort=portOf(dispatchAddress), broadcastPort=portOf(broadcastAddress),
        )
        self.assertEqual(beta.dispatchAddress, dispatchAddress)
        error = yield self.assertFailure(remote["POWER"].write(1, timeout=3),
                                         errors.UnknownService)
        self.assertIn("'beta'", str(error))
        self.assertIn("'alpha'", str(error))
        self.assertEqual(beta["POWER"].value, 0)

    @defer.inlineCallbacks
    def test_describeCarriesHeartbeatInterval(self):
        """A freshly loaded service knows the dispatcher's heartbeat interval before any beat."""
        _, _, remote = yield startPair(self, [keywords.Integer("N", initial=1)],
                                       heartbeatInterval=5)
        self.assertEqual(remote.heartbeatInterval, 5)


class HeartbeatGapTests(unittest.TestCase):
    """A heartbeat lost between two others makes monitored keywords re-read."""

    @defer.inlineCallbacks
    def setUp(self):
        self.reads = {}
        self.dispatcher, self.client, self.remote = yield startPair(self, [
            keywords.Integer("MON", initial=1, preread=counting(self.reads, "MON")),
            keywords.Integer("OTHER", initial=2, preread=counting(self.reads, "OTHER")),
        ], heartbeatInterval=QUIET_HEARTBEAT)
        subscription = yield self.remote["MON"].monitor(lambda value: None)
        self.addCleanup(subscription.stop)

    def beat(self, count):
        beat = Heartbeat(self.remote.name, self.remote.epoch, 0.0, QUIET_HEARTBEAT, {}, count)
        self.remote.primary.broadcastReceived(beat)

    @defer.inlineCallbacks
    def test_missedHeartbeatRereads(self):
        """Counts 7 then 9 re-read the monitored keyword only; consecutive counts do not."""
        before = dict(self.reads)
        self.beat(7)
        self.assertEqual(self.remote.primary._channel.pending, 0)
        self.beat(9)
        self.assertEqual(self.remote.primary._channel.pending, 1)  # one re-read, of MON
        yield eventually(lambda: self.reads["MON"] > before["MON"]
                         and self.remote.primary._channel.pending == 0)
        self.assertEqual(self.reads, {"MON": before["MON"] + 1, "OTHER": before["OTHER"]})
        self.beat(10)
        self.beat(11)
        self.assertEqual(self.remote.primary._channel.pending, 0)
        self.assertIsNone(self.remote["MON"]._refreshing)


class ClientLifecycleTests(unittest.TestCase):
    """waitFor and monitor at the edges: unprimed timeouts and a stopped client."""

    @defer.inlineCallbacks
    def test_waitForTimesOutBeforePriming(self):
        """waitFor whose timeout comes before the monitor is primed fires False, logging nothing."""
        dispatcher, _, remote = yield startPair(self, [keywords.Integer("N", initial=1)],
                                                timeout=5)
        yield dispatcher.stopService()
        result = yield remote["N"].waitFor(lambda value: value.binary == 5, 0.2)
        self.assertIs(result, False)
        self.assertFalse(remote["N"].monitored)

    @defer.inlineCallbacks
    def test_monitorAfterClientStopped(self):
        """monitor() on a stopped client gives a failed Deferred (ServiceUnavailable)."""
        _, client, remote = yield startPair(self, [keywords.Integer("N", initial=1)])
        yield client.stopService()
        d = remote["N"].monitor(lambda value: None)
        self.assertIsInstance(d, defer.Deferred)
        yield self.assertFailure(d, errors.ServiceUnavailable)

    @defer.inlineCallbacks
    def test_pendingWaitForFailsWhenClientStops(self):
        """A waitFor without timeout pending when the client stops fails with ServiceUnavailable."""
        _, client, remote = yield startPair(self, [keywords.Integer("N", initial=1)])
        keyword = remote["N"]
        d = keyword.waitFor(lambda value: value.binary == 99, None)
        yield eventually(lambda: keyword._active and keyword._subscriptions
                         and not keyword._subscriptions[0]._priming)
        self.assertNoResult(d)
        yield client.stopService()
        self.assertTrue(d.called)
        yield self.assertFailure(d, errors.ServiceUnavailable)

    @defer.inlineCallbacks
    def test_unprimedWaitForFailsWhenClientStops(self):
        """A waitFor still waiting for its subscription fails with ServiceUnavailable at stop."""
        dispatcher, client, remote = yield startPair(self, [keywords.Integer("N", initial=1)])
        yield dispatcher.stopService()  # nobody will answer the subscription now
        d = remote["N"].waitFor(lambda value: value.binary == 99, None)
        self.assertNoResult(d)
        yield client.stopService()
        yield self.assertFailure(d, errors.ServiceUnavailable)

    @defer.inlineCallbacks
    def test_slowWriteAnsweredWithItsOwnValue(self):
        """Writes queued behind a slow one are answered in order, each with its own value."""
        gate = defer.Deferred()
        calls = []

        def write(value):
            calls.append(value)
            return gate if len(calls) == 1 else None

        _, _, remote = yield startPair(self, [keywords.Integer("N", initial=0, write=write)],
                                       timeout=5)
        answers = []
        pending = [remote["N"].write(v).addCallback(answers.append) for v in (1, 2, 3)]
        yield eventually(lambda: calls)
        gate.callback(None)
        yield defer.gatherResults(pending)
        self.assertEqual(answers, ["1", "2", "3"])

    @defer.inlineCallbacks
    def test_hugeIntegerFailsLater(self):
        """write(2**70) returns a failed Deferred (BadValue), not a synchronous exception."""
        _, _, remote = yield startPair(self, [keywords.Integer("N", initial=1)])
        d = remote["N"].write(2**70)
        self.assertIsInstance(d, defer.Deferred)
        yield self.assertFailure(d, errors.BadValue)
        self.assertEqual(remote.primary._channel.pending, 0)


class RestartTests(unittest.TestCase):
    """A dispatcher started again before its stop finished serves normally."""

    @defer.inlineCallbacks
    def test_restartBeforeStopFinished(self):
        """startService right after stopService (not awaited) serves on the new sockets."""
        cfg = routedConfig(0)
        router = RouterService(cfg, reactor=globalReactor, leaseTTL=3 * HEARTBEAT)
        router.startService()
        self.addCleanup(lambda: router.running and router.stopService())
        cfg = cfg.replace("zmq-router", "port", portOf(router.address))
        dispatcher = DispatcherService("demo", cfg, [keywords.Integer("N", initial=1)],
                                       reactor=globalReactor, heartbeatInterval=HEARTBEAT)
        dispatcher.startService()
        self.addCleanup(lambda: dispatcher.running and dispatcher.stopService())
        yield dispatcher.whenReady()
        firstRun = dispatcher.epoch
        stopping = dispatcher.stopService()
        dispatcher.startService()
        addresses = yield dispatcher.whenReady()
        self.assertEqual(addresses, (dispatcher.dispatchAddress, dispatcher.broadcastAddress))
        yield stopping  # the old run is fully released: nothing of the new one may close
        self.assertIsNotNone(dispatcher._transport)
        self.assertFalse(dispatcher._routerSocket.closed)
        # Each run is its own epoch, so the old run's release, in whatever
        # order it reached the router, cannot drop the new run's lease.
        self.assertNotEqual(dispatcher.epoch, firstRun)
        self.assertEqual(router.leases.locate("demo", router._now()).instance, dispatcher.epoch)
        client = ClientService(cfg, reactor=globalReactor, timeout=2)
        client.startService()
        self.addCleanup(client.stopService)
        remote = yield client.service("demo")
        self.assertEqual((yield remote["N"].read()), "1")


class SlowHookTests(unittest.TestCase):
    """Hooks that never finish do not make the dispatcher pile up work."""

    @defer.inlineCallbacks
    def test_writeQueueCapped(self):
        """Writes queued behind a hung write are refused past MAX_QUEUED_WRITES; the rest finish."""
        gate = defer.Deferred()
        self.addCleanup(lambda: gate.called or gate.callback(None))
        calls = []

        def write(value):
            calls.append(value)
            return gate if len(calls) == 1 else None

        dispatcher, _, remote = yield startPair(
            self, [keywords.Integer("N", initial=0, write=write)], timeout=10
        )
        outcomes = {}
        total = MAX_QUEUED_WRITES + 2
        for value in range(1, total + 1):
            d = remote["N"].write(value, timeout=10)
            d.addBoth(lambda result, value=value: outcomes.__setitem__(value, result))
        yield eventually(lambda: outcomes)
        refused = {value: result for value, result in outcomes.items()
                   if not isinstance(result, str)}
        self.assertTrue(refused)
        for result in refused.values():
            self.assertTrue(result.check(errors.ServiceUnavailable), result)
            self.assertIn("writes already wait", result.getErrorMessage())
        self.assertEqual(calls, [1])
        gate.callback(None)
        yield eventually(lambda: len(outcomes) == total)
        refused = {v for v, r in outcomes.items() if not isinstance(r, str)}
        self.assertEqual(refused, {total})
        self.assertIsInstance(outcomes[1], str)
        self.assertEqual([outcomes[v] for v in range(2, total)], [str(v) for v in range(2, total)])
        self.assertEqual(dispatcher["N"].value, total - 1)
        self.assertNotIn("N", dispatcher._writeQueues)

    @defer.inlineCallbacks
    def test_hungPeriodicReadNotRepeated(self):
        """A periodic read whose hook hangs is not called again while it hangs."""
        gate = defer.Deferred()
        self.addCleanup(lambda: gate.called or gate.callback(None))
        calls = []

        def read():
            calls.append(1)
            return gate

        dispatcher = yield startDispatcher(self, [keywords.Integer("P", initial=1, read=read)])
        ticks = []
        periodicRead = dispatcher._periodicRead

        def counted(keyword):
            ticks.append(1)
            return periodicRead(keyword)

        dispatcher._periodicRead = counted  # the LoopingCall made by period() calls this
        dispatcher["P"].period(0.01)
        yield eventually(lambda: len(ticks) >= 5)
        self.assertEqual(len(calls), 1)
        gate.callback(None)
        yield eventually(lambda: len(calls) >= 2)  # released: the period goes on


class LeakTests(unittest.TestCase):
    """Write-only values never leave the dispatcher."""

    @defer.inlineCallbacks
    def test_writeOnlyValueNeverSent(self):
        """Describe, write replies and broadcasts carry nothing of a write-only keyword."""
        dispatcher, _, remote = yield startPair(self, [
            keywords.String("SECRET", writeonly=True, initial="hunter2"),
            keywords.Integer("PUBLIC", initial=1),
        ])
        self.assertEqual((remote["SECRET"].info["binary"], remote["SECRET"].info["ascii"]),
                         (None, ""))
        infos = yield remote.describe(["SECRET"])
        self.assertEqual([(i["binary"], i["ascii"]) for i in infos], [(None, "")])
        frames = rawListener(self, dispatcher.broadcastAddress,
                             [codec.topicFor("SECRET"), codec.topicFor("PUBLIC")])
        yield eventually(lambda: frames)  # PUBLIC's welcome: both subscriptions are live
        self.assertEqual((yield remote["SECRET"].write("s3cret")), "")
        self.assertEqual(dispatcher["SECRET"].value, "s3cret")
        dispatcher["PUBLIC"].set(2)  # published after anything the write published
        yield eventually(lambda: len(frames) == 2)
        self.assertEqual([f[0] for f in frames], [codec.topicFor("PUBLIC")] * 2)
        for message in frames:
            self.assertNotIn(b"s3cret", b"".join(message))
            self.assertNotIn(b"hunter2", b"".join(message))

    @defer.inlineCallbacks
    def test_writeOnlyInitialNotDescribed(self):
        """Describe does not reveal a write-only keyword's initial value either."""
        _, _, remote = yield startPair(
            self, [keywords.String("SECRET", writeonly=True, initial="hunter2")]
        )
        self.assertNotIn("hunter2", repr(remote["SECRET"].info))
        self.assertNotIn("hunter2", repr((yield remote.describe())))


class FloodTests(unittest.TestCase):
    """Floods of re-reads, subscriptions, frames and names cost little."""

    @defer.inlineCallbacks
    def test_rereadsCoalesced(self):
        """Ten re-reads asked in one turn make at most two reads at the dispatcher."""
        reads = {}
        _, _, remote = yield startPair(
            self, [keywords.Integer("K", initial=1, preread=counting(reads, "K"))]
        )
        subscription = yield remote["K"].monitor(lambda value: None)
        self.addCleanup(subscription.stop)
        before = reads["K"]
        for _ in range(10):
            remote["K"]._refresh()
        self.assertEqual(remote.primary._channel.pending, 1)
        yield eventually(lambda: remote["K"]._refreshing is None
                         and remote.primary._channel.pending == 0)
        self.assertIn(reads["K"] - before, (1, 2))

    @defer.inlineCallbacks
    def test_subscriptionFloodCoalesced(self):
        """A hundred subscriptions to one keyword in a row send at most two welcomes."""
        dispatcher = yield startDispatcher(self, [keywords.Double("TEMP", initial=1.0)])
        sends = []
        send = dispatcher._send

        def counted(keyword, welcome=False):
            sends.append(keyword.name)
            return send(keyword, welcome)

        dispatcher._send = counted
        for _ in range(100):
            dispatcher._subscribed(codec.topicFor("TEMP"))
        immediate = len(sends)
        self.assertLessEqual(immediate, 2)
        yield eventually(lambda: not dispatcher._welcomes)
        self.assertGreater(len(sends), immediate)  # the latest subscribers were welcomed
        self.assertLessEqual(len(sends), 2)

    @defer.inlineCallbacks
    def test_tooManyFramesDropped(self):
        """A 20-frame message is dropped by the dispatch socket and reads still work."""
        dispatcher, _, remote = yield startPair(self, [keywords.Integer("N", initial=4)])
        transport = Transport(globalReactor)
        self.addCleanup(transport.shutdown)
        dealer = transport.dealer(lambda frames: None)
        dealer.connect(dispatcher.dispatchAddress)
        frames = codec.encode(Read(1, "N")) + [b"x"] * 18
        self.assertEqual(len(frames), 20)
        dealer.send(frames)
        yield eventually(lambda: dispatcher._routerSocket.malformed >= 1)
        self.assertEqual(dispatcher.malformed.count, 0)  # dropped before decoding
        self.assertEqual((yield remote["N"].read()), "4")
        channel = RequestChannel(transport, dispatcher.dispatchAddress, "demo", 2)
        self.addCleanup(channel.close)
        reply = yield channel.request(lambda i: Read(i, "N", "demo"), "read N")
        self.assertEqual(reply.ascii, "4")

    @defer.inlineCallbacks
    def test_describeDuplicatesOnce(self):
        """describe of one name fifty times answers that keyword once."""
        _, _, remote = yield startPair(self, [keywords.Double("TEMP", initial=1.0)])
        infos = yield remote.describe(["TEMP"] * 50)
        self.assertEqual([info["name"] for info in infos], ["TEMP"])


class UnsendableAnswerTests(unittest.TestCase):
    """Answers the wire cannot carry become error replies, not silence."""

    @defer.inlineCallbacks
    def test_loneSurrogateValue(self):
        """A read of a value holding a lone surrogate fails with BadValue, not a timeout."""
        text = RawText("TEXT", initial="fine")
        _, _, remote = yield startPair(self, [text], timeout=10)
        text.value = "\ud800"
        start = globalReactor.seconds()
        yield self.assertFailure(remote["TEXT"].read(), errors.BadValue)
        self.assertLess(globalReactor.seconds() - start, 2)

    @defer.inlineCallbacks
    def test_describeTooLarge(self):
        """A describe answer beyond MAX_MESSAGE_SIZE fails with BadValue quickly."""
        texts = [RawText(f"TEXT{i}", initial="fine") for i in range(5)]
        _, _, remote = yield startPair(self, texts, timeout=10)
        for text in texts:
            text.value = "y" * 300_000
        self.assertGreater(5 * 2 * 300_000, codec.MAX_MESSAGE_SIZE)
        start = globalReactor.seconds()
        error = yield self.assertFailure(remote.describe(), errors.BadValue)
        self.assertLess(globalReactor.seconds() - start, 2)
        self.assertIn("exceeds", str(error))
        self.assertEqual((yield remote.describe(["TEXT0"]))[0]["binary"], "y" * 300_000)


class InputFloodTests(unittest.TestCase):
    """A flood of input cannot starve the reactor (reliability.md, L1)."""

    @defer.inlineCallbacks
    def test_floodDoesNotFakeADeadDispatcher(self):
        """200,000 junk messages leave heartbeats on time: no false disconnect, still serving."""
        dispatcher, _, remote = yield startPair(
            self, [keywords.Integer("N", initial=1)], heartbeatInterval=0.1)
        yield eventually(lambda: remote.heartbeatInterval == 0.1)
        verdicts = []
        remote.addStateCallback(lambda r: verdicts.append(r.connected))
        count = 200_000
        flooder = subprocess.Popen(
            [sys.executable, "-c", FLOOD, dispatcher.dispatchAddress, str(count),
             codec.VERSION.decode()],
            stdin=subprocess.PIPE,
        )
        self.addCleanup(flooder.wait, 30)
        self.addCleanup(flooder.stdin.close)  # it keeps its socket open until then
        yield eventually(lambda: dispatcher.malformed.count >= count, timeout=60)
        self.assertEqual(verdicts, [])  # never reported dead while flooded
        self.assertTrue(remote.connected)
        self.assertEqual((yield remote["N"].read()), "1")


#: Sends ``count`` undecodable messages from a plain pyzmq socket, in a process
#: of its own (a thread would hold the GIL the dispatcher's reactor needs),
#: and keeps the socket open until its stdin closes: a socket closed while
#: messages linger drops them when the dispatcher's heartbeat PING arrives.
FLOOD = """
import sys, zmq
address, count, version = sys.argv[1], int(sys.argv[2]), sys.argv[3].encode()
context = zmq.Context()
socket = context.socket(zmq.DEALER)
socket.set(zmq.SNDHWM, 0)
socket.connect(address)
for i in range(count):
    socket.send_multipart([version, b"\\xc1junk%d" % i])
sys.stdin.read()
socket.close(linger=0)
context.term()
"""
