"""Promises that must hold under faults, in one process on real sockets.

A request is never started after its deadline, whatever the two clocks say;
a dispatcher that is not the owner the router named refuses requests; one
whose service the router gave to another is fenced; a dispatcher restarted
after a crash takes its lease over at once, and one facing a live holder
says so once and gives up.  (Real processes, kill -9 and SIGSTOP:
``test_fault_processes.py``; several hosts: ``test_multihost.py``.)
"""

import os
import time

from helpers import (
    HOST,
    FakePeer,
    directConfig,
    eventually,
    freePort,
    startDispatcher,
    startPair,
    turn,
)
from test_router import HEARTBEAT, RouterTestCase
from twisted.internet import defer, task
from twisted.internet import reactor as globalReactor
from twisted.logger import LogLevel, capturedLogs, formatEvent
from twisted.trial import unittest

from cauldron import errors, keywords
from cauldron.client import ClientService, Subscription
from cauldron.dispatcher import FENCED, SERVING, DispatcherService
from cauldron.protocol import codec
from cauldron.protocol.messages import Batch, Ping, Pong, Read, Value, Write
from cauldron.requests import BATCH_REQUESTS, RequestChannel
from cauldron.serving import RateLimitedLog
from cauldron.transport import Transport, portOf


def slowKeyword(name, calls):
    """An integer whose write hook records its value and finishes when the test says."""
    pending = []

    def write(value):
        calls.append(value)
        d = defer.Deferred()
        pending.append(d)
        return d

    keyword = keywords.Integer(name, initial=0, write=write)
    return keyword, pending


def skewedClock(seconds):
    """A wall clock ``seconds`` ahead of ours (behind when negative)."""
    return lambda: time.time() + seconds


def rawChannel(testCase, address, timeout=1.0):
    transport = Transport(globalReactor)
    testCase.addCleanup(transport.shutdown)
    channel = RequestChannel(transport, address, "the dispatcher", timeout)
    testCase.addCleanup(channel.close)
    return channel


class DeadlineTests(unittest.TestCase):
    """A request is never started after its deadline, so a failed write never lands later."""

    @defer.inlineCallbacks
    def test_lateWriteNeverRuns(self):
        """A write arriving after its deadline is not run, not answered, and counted."""
        calls = []
        keyword = keywords.Integer("POS", initial=0, write=calls.append)
        dispatcher = yield startDispatcher(self, [keyword])
        channel = rawChannel(self, dispatcher.dispatchAddress, timeout=0.3)
        stale = channel.request(lambda i: Write(i, "POS", 5, "demo", time.time() - 1), "write")
        yield self.assertFailure(stale, errors.CauldronTimeout)
        fresh = yield channel.request(lambda i: Write(i, "POS", 6, "demo", time.time() + 5),
                                      "write")
        self.assertEqual((calls, fresh.binary, dispatcher.expired.count), ([6], 6, 1))

    @defer.inlineCallbacks
    def test_queuedWriteExpiresUnderSkewedClocks(self):
        """A write left waiting past its deadline never runs, however the clocks differ.

        The dispatcher's clock is a minute behind the client's: a deadline
        sent on the client's clock would look a minute away to it.
        """
        for skew in (-60.0, 60.0):
            calls = []
            keyword, pending = slowKeyword("POS", calls)
            dispatcher, client, remote = yield startPair(
                self, [keyword], name=f"skew{int(skew) + 100}", wallClock=skewedClock(skew))
            first = remote["POS"].write(1, timeout=5)
            yield eventually(lambda p=pending: p)
            second = remote["POS"].write(2, timeout=0.3)
            error = yield self.assertFailure(second, errors.CauldronTimeout)
            self.assertFalse(error.started)
            pending[0].callback(None)
            self.assertEqual((yield first), "1")
            self.assertEqual((yield remote["POS"].read()), "1")
            self.assertEqual(calls, [1])
            self.assertEqual(dispatcher.expired.count, 1)

    @defer.inlineCallbacks
    def test_readsAndWritesWorkWithSkewedClocks(self):
        """Clocks a minute apart either way cost nothing: deadlines are converted."""
        for skew in (-60.0, 60.0):
            keyword = keywords.Integer("POS", initial=0)
            dispatcher, client, remote = yield startPair(
                self, [keyword], name=f"ok{int(skew) + 100}", wallClock=skewedClock(skew))
            self.assertEqual((yield remote["POS"].write(7, timeout=1)), "7")
            self.assertEqual((yield remote["POS"].read(timeout=1)), "7")
            self.assertEqual(dispatcher.expired.count, 0)

    @defer.inlineCallbacks
    def test_timeoutSaysWhetherTheWriteStarted(self):
        """A slow write that started may complete: its timeout says so; a queued one did not."""
        calls = []
        keyword, pending = slowKeyword("POS", calls)
        dispatcher, client, remote = yield startPair(self, [keyword])
        running = remote["POS"].write(1, timeout=0.3)
        queued = remote["POS"].write(2, timeout=0.3)
        error = yield self.assertFailure(running, errors.CauldronTimeout)
        self.assertTrue(error.started)
        self.assertIn("may still complete", str(error))
        error = yield self.assertFailure(queued, errors.CauldronTimeout)
        self.assertFalse(error.started)
        pending[0].callback(None)
        yield eventually(lambda: "POS" not in dispatcher._writeQueues)
        self.assertEqual(calls, [1])


class StopTests(unittest.TestCase):
    """What a run started ends with it."""

    @defer.inlineCallbacks
    def test_queuedWritesNeverReachHardwareAfterStop(self):
        """Writes waiting behind a slow one fail at stop; their hooks never run."""
        calls = []
        keyword, pending = slowKeyword("POS", calls)
        dispatcher, client, remote = yield startPair(self, [keyword], timeout=5)
        writes = [remote["POS"].write(n) for n in (1, 2, 3, 4)]
        for d in writes:
            d.addErrback(lambda f: f.trap(errors.CauldronError, defer.CancelledError))
        yield eventually(lambda: len(dispatcher._writeQueues.get("POS", ())) == 4)
        yield dispatcher.stopService()
        pending[0].callback(None)
        yield turn()
        self.assertEqual(calls, [1])
        self.assertEqual(dispatcher._writeQueues, {})


class OwnerTests(RouterTestCase):
    """Requests carry the owner the router named; any other dispatcher refuses them."""

    @defer.inlineCallbacks
    def test_wrongOwnerRefused(self):
        """A request naming another run of the service fails with NotOwner and does not run."""
        calls = []
        dispatcher = yield startDispatcher(
            self, [keywords.Integer("POS", initial=0, write=calls.append)])
        channel = rawChannel(self, dispatcher.dispatchAddress)
        d = channel.request(lambda i: Write(i, "POS", 3, "demo", 0.0, "someone-else"), "write")
        yield self.assertFailure(d, errors.NotOwner)
        reply = yield channel.request(
            lambda i: Write(i, "POS", 4, "demo", 0.0, dispatcher.epoch), "write")
        self.assertEqual((reply.binary, calls), (4, [4]))

    @defer.inlineCallbacks
    def test_requestsNameTheirService(self):
        """A request naming no service, or another one, is refused (UnknownService)."""
        dispatcher = yield startDispatcher(self, [keywords.Integer("POS", initial=0)])
        channel = rawChannel(self, dispatcher.dispatchAddress)
        for service in ("", "other"):
            d = channel.request(lambda i, s=service: Read(i, "POS", s), "read")
            yield self.assertFailure(d, errors.UnknownService)

    @defer.inlineCallbacks
    def test_restartedDispatcherFollowed(self):
        """After a restart (a new run, same ports) the client asks the router and carries on."""
        router, cfg = self.routerAndConfig()
        dispatcher = yield self.startDispatcher(cfg, value=1.0)
        client = self.startClient(cfg)
        remote = yield client.service("demo")
        before = remote.owner
        self.assertEqual(before, dispatcher.epoch)
        yield dispatcher.stopService()
        dispatcher.startService()
        yield dispatcher.whenReady()
        self.assertEqual((yield remote["TEMP"].write(2.5)), "2.5")
        self.assertEqual(remote.owner, dispatcher.epoch)
        self.assertNotEqual(remote.owner, before)


class FencingTests(RouterTestCase):
    """A dispatcher whose service the router gave to another stops serving it."""

    @defer.inlineCallbacks
    def partitionAndReplace(self, router, cfg, old, value=1.0):
        """Cut ``old`` off the router until its lease expires; another takes the service.

        Fires with the new owner.  ``old`` goes on serving whoever reaches
        it, as a dispatcher cut off from the router does.
        """
        old._heartbeat.stop()
        yield eventually(lambda: old._router._renewing is None)
        router.leases.expire(router._now() + router.leaseTTL)
        new = yield self.startDispatcher(cfg, value=value)
        return new

    def heal(self, old):
        """``old`` reaches the router again: its next heartbeat renews, or learns."""
        old._heartbeat.start(HEARTBEAT)

    @defer.inlineCallbacks
    def test_fencedWhenAnotherOwnsTheService(self):
        """The old owner learns at its next renewal, closes, names the new owner, once."""
        router, cfg = self.routerAndConfig()
        old = yield self.startDispatcher(cfg, value=1.0)
        client = self.startClient(cfg)
        remote = yield client.service("demo")
        self.assertEqual((yield remote["TEMP"].read()), "1.0")
        new = yield self.partitionAndReplace(router, cfg, old, value=2.0)
        with capturedLogs() as events:
            self.heal(old)
            conflict = yield old.whenFenced()
        self.assertEqual(old.state, FENCED)
        self.assertEqual(new.state, SERVING)
        self.assertEqual(conflict.detail["dispatchPort"], portOf(new.dispatchAddress))
        self.assertEqual(conflict.detail["host"], HOST)
        lines = [formatEvent(e) for e in events if e["log_level"] == LogLevel.critical]
        self.assertEqual(len(lines), 1)
        self.assertIn("now served by another dispatcher on host 127.0.0.1", lines[0])
        self.assertIsNone(old._routerSocket)
        # The client, cut from the old owner, follows the router to the new one.
        yield eventually(lambda: remote.owner == new.epoch, timeout=5)
        self.assertEqual((yield remote["TEMP"].read()), "2.0")

    @defer.inlineCallbacks
    def test_fencedOwnerStopsCleanly(self):
        """A fenced dispatcher stops without releasing the new owner's lease."""
        router, cfg = self.routerAndConfig()
        old = yield self.startDispatcher(cfg)
        new = yield self.partitionAndReplace(router, cfg, old)
        self.heal(old)
        yield old.whenFenced()
        yield old.stopService()
        self.assertEqual(router.leases.locate("demo", router._now()).instance, new.epoch)


class TakeoverTests(RouterTestCase):
    """A restarted dispatcher proves its predecessor dead, or says who holds the service."""

    def ghost(self, router, host, ttl, ports=None):
        """A lease held by a dispatcher that is not running here."""
        now = router._now()
        if ports is None:
            return router.leases.lease("demo", host, "ghost", now, ttl=ttl)
        return router.leases.register("demo", host, "ghost", *ports, now, ttl=ttl)

    @defer.inlineCallbacks
    def test_restartAfterCrashTakesOverAtOnce(self):
        """The dead predecessor's lease (same host, ports free) is taken over without waiting."""
        router, cfg = self.routerAndConfig()
        first = cfg.get("zmq-router", "first-port")
        self.ghost(router, HOST, ttl=30.0, ports=(first, first + 1))
        started = globalReactor.seconds()
        dispatcher = yield self.startDispatcher(cfg)
        self.assertLess(globalReactor.seconds() - started, 1.0)
        self.assertEqual(portOf(dispatcher.dispatchAddress), first)
        self.assertEqual(router.leases.locate("demo", router._now()).instance, dispatcher.epoch)

    @defer.inlineCallbacks
    def test_waitsAsLongAsTheLeaseLives(self):
        """A holder on another host is waited out for as long as its lease really lives.

        Its ttl (4 s) is longer than the 3 s plus two heartbeats a dispatcher
        once allowed, whatever its own heartbeat.
        """
        router, cfg = self.routerAndConfig()
        self.ghost(router, "elsewhere", ttl=4.0)
        started = globalReactor.seconds()
        dispatcher = yield self.startDispatcher(cfg)
        self.assertGreaterEqual(globalReactor.seconds() - started, 3.9)
        self.assertEqual(dispatcher.state, SERVING)

    @defer.inlineCallbacks
    def test_liveHolderOneHonestLine(self):
        """A holder that keeps renewing gets one line, then a clear failure to start."""
        router, cfg = self.routerAndConfig()
        ghost = self.ghost(router, "elsewhere", ttl=0.6)
        renewing = task.LoopingCall(
            lambda: router.leases.renew("demo", "ghost", router._now(), ghost.secret))
        renewing.clock = globalReactor
        renewing.start(0.1)
        self.addCleanup(renewing.stop)
        dispatcher = DispatcherService("demo", cfg, [keywords.Integer("POS")],
                                       reactor=globalReactor, heartbeatInterval=HEARTBEAT)
        with capturedLogs() as events:
            dispatcher.startService()
            self.addCleanup(dispatcher.stopService)
            error = yield self.assertFailure(dispatcher.whenReady(), errors.LeaseConflict)
        self.assertIn("keeps renewing", str(error))
        self.assertEqual(error.detail["host"], "elsewhere")
        self.assertEqual((dispatcher.state, dispatcher.dispatchAddress), ("stopped", None))
        lines = [formatEvent(e) for e in events if "holds it" in formatEvent(e)]
        self.assertEqual(len(lines), 1)
        self.assertIn("a live dispatcher holds it (host elsewhere", lines[0])

    @defer.inlineCallbacks
    def test_restartWhileWaitingSeesOnlyItsOwnOutcome(self):
        """A stop while waiting for a rival's lease ends that wait; the next run is clean."""
        router, cfg = self.routerAndConfig()
        self.ghost(router, "elsewhere", ttl=30.0)
        dispatcher = DispatcherService("demo", cfg, [keywords.Integer("POS")],
                                       reactor=globalReactor, heartbeatInterval=HEARTBEAT)
        with capturedLogs() as events:
            dispatcher.startService()
            firstRun = dispatcher.whenReady()
            yield eventually(lambda: any("holds it" in formatEvent(e) for e in events))
        yield dispatcher.stopService()
        yield self.assertFailure(firstRun, errors.ServiceUnavailable)
        router.leases.release("demo", "ghost", router._now())
        dispatcher.startService()
        self.addCleanup(dispatcher.stopService)
        yield dispatcher.whenReady()
        # The first run's retry timer would have fired within CONFLICT_POLL.
        yield task.deferLater(globalReactor, 0.5, lambda: None)
        self.assertEqual(dispatcher.state, SERVING)
        self.assertIsInstance((yield dispatcher.whenReady()), tuple)


class ClientFaultTests(unittest.TestCase):
    """The client's own promises: sizes checked, callbacks stopped, one watchdog."""

    @defer.inlineCallbacks
    def test_oversizedWriteFailsAtOnceAndHarmsNothing(self):
        """A write too large for the wire is BadValue at once; a slow write beside it completes."""
        calls = []
        slow, pending = slowKeyword("SLOW", calls)
        dispatcher, client, remote = yield startPair(
            self, [slow, keywords.String("TEXT", initial="")], timeout=3)
        inFlight = remote["SLOW"].write(5)
        yield eventually(lambda: pending)
        huge = remote["TEXT"].write("x" * 1_100_000)
        self.assertTrue(huge.called)
        error = yield self.assertFailure(huge, errors.BadValue)
        self.assertIn("more than", str(error))
        pending[0].callback(None)
        self.assertEqual((yield inFlight), "5")

    def test_noCallAfterStop(self):
        """A callback that stops its subscription on the first value sees no buffered ones."""
        seen = []

        class Keyword:
            name = "POS"

            def _isNewer(self, value, than):
                return than is None or value > than

            def _unsubscribe(self, subscription):
                pass

        def callback(value):
            seen.append(value)
            subscription.stop()

        subscription = Subscription(Keyword(), callback, prime=True)
        for value in (10, 11, 12):
            subscription._offer(value)
        subscription._primed(9)
        self.assertEqual(seen, [9])

    @defer.inlineCallbacks
    def test_oneWatchdogNoneAfterClose(self):
        """Interval changes never leave two liveness timers, and close leaves none."""
        dispatcher, client, remote = yield startPair(
            self, [keywords.Integer("POS", initial=0)], heartbeatInterval=HEARTBEAT)

        def watchdogs():
            return [c for c in globalReactor.getDelayedCalls()
                    if getattr(c.func, "__self__", None) is remote.primary]

        for interval in (0.2, 0.05, 0.3, HEARTBEAT):
            dispatcher.heartbeatInterval = interval
            yield eventually(lambda i=interval: remote.heartbeatInterval == i)
            self.assertEqual(len(watchdogs()), 1)
        remote.close()
        self.assertEqual(watchdogs(), [])

    @defer.inlineCallbacks
    def test_requestFromAnErrbackOfFailAllGoesOut(self):
        """A request made by an errback of a failed one is sent on the reopened socket."""
        peer = FakePeer(self)
        transport = Transport(globalReactor)
        self.addCleanup(transport.shutdown)
        channel = RequestChannel(transport, peer.address, "the fake peer", timeout=5)
        self.addCleanup(channel.close)
        retried = []
        first = channel.request(lambda i: Ping(i), "first")
        first.addErrback(lambda f: retried.append(channel.request(lambda i: Ping(i), "retry")))
        yield eventually(lambda: len(peer.requests) == 1)
        channel.failAll(errors.ServiceUnavailable("gone"), reconnect=True)
        yield eventually(lambda: len(peer.requests) == 2)
        who, ping = peer.requests[1]
        peer.reply(who, Pong(ping.id, "fake", "e"))
        self.assertEqual((yield retried[0]).id, ping.id)

    @defer.inlineCallbacks
    def test_stopForgetsServicesBeingConnected(self):
        """A client stopped while connecting starts afresh when started again."""
        silent = FakePeer(self)
        client = ClientService(directConfig(portOf(silent.address), freePort()),
                               reactor=globalReactor, timeout=5)
        client.startService()
        first = client.service("demo")
        first.addErrback(lambda f: f.trap(defer.CancelledError, errors.CauldronError))
        yield eventually(lambda: silent.requests)
        yield client.stopService()
        self.assertEqual(client._connecting, {})
        client.startService()
        second = client.service("demo")
        second.addErrback(lambda f: f.trap(defer.CancelledError, errors.CauldronError))
        yield eventually(lambda: len(silent.requests) == 2)  # asked again, not joined the old
        yield client.stopService()


class RateLimitTests(unittest.SynchronousTestCase):
    """Log lines a peer can cause are rate-limited, and what was left out is counted."""

    def test_burstThenCount(self):
        clock = task.Clock()
        with capturedLogs() as events:
            limited = RateLimitedLog(clock, burst=2)
            for n in range(1000):
                limited("dropped {n}", n=n)
            self.assertEqual(len(events), 2)
            clock.advance(1.0)
        self.assertEqual(len(events), 3)
        self.assertIn("998 more like this", formatEvent(events[-1]))
        self.assertEqual(clock.getDelayedCalls(), [])

    def test_stopReportsAndCancels(self):
        clock = task.Clock()
        with capturedLogs() as events:
            limited = RateLimitedLog(clock)
            for _ in range(5):
                limited("dropped")
            limited.stop()
        self.assertEqual(len(events), 2)
        self.assertIn("4 more like this", formatEvent(events[-1]))
        self.assertEqual(clock.getDelayedCalls(), [])


class PlainPermissionTests(unittest.TestCase):
    """In plain mode nobody can be told apart, so permissions are refused, not ignored."""

    @defer.inlineCallbacks
    def test_writersWithoutSecureModeRefusedAtStart(self):
        """A dispatcher whose keywords name writers does not start in plain mode."""
        guarded = keywords.Integer("POS", initial=0, writers=["ops"])
        dispatcher = DispatcherService("demo", directConfig(), [guarded], reactor=globalReactor)
        dispatcher.startService()
        self.addCleanup(dispatcher.stopService)
        error = yield self.assertFailure(dispatcher.whenReady(), errors.ConfigError)
        self.assertIn("demo.POS: writers/readers need secure mode", str(error))
        self.assertEqual((dispatcher.state, dispatcher.dispatchAddress), ("stopped", None))


class AuditTests(unittest.TestCase):
    """Every accepted write is one structured event: who, from where, what, before and after."""

    @defer.inlineCallbacks
    def test_writeRecorded(self):
        dispatcher, client, remote = yield startPair(
            self, [keywords.Integer("POS", initial=3),
                   keywords.String("CODE", writeonly=True)])
        with capturedLogs() as events:
            yield remote["POS"].write(4)
            yield remote["CODE"].write("hunter2")
            yield self.assertFailure(remote["POS"].write("x"), errors.BadValue)
        audits = [e for e in events if e.get("log_namespace") == "cauldron.audit"]
        self.assertEqual(len(audits), 2)  # the refused write is not one
        pos, code = audits
        self.assertEqual((pos["service"], pos["keyword"], pos["old"], pos["new"]),
                         ("demo", "POS", "3", "4"))
        self.assertEqual(pos["address"], HOST)
        self.assertEqual(pos["log_level"], LogLevel.info)
        self.assertEqual(pos["origin"]["pid"], str(os.getpid()))
        self.assertIn("demo.POS written by 127.0.0.1 (host=", formatEvent(pos))
        self.assertNotIn("hunter2", formatEvent(code) + repr(code))

    @defer.inlineCallbacks
    def test_writesOfTheTurnAFenceCameStayOnRecord(self):
        """A fence drops the turn's waiting broadcasts, not the record of its accepted writes.

        Audit lines are logged at the end of the turn, after the replies;
        here a call the write's hook made fences the dispatcher just before.
        """
        def fenceSoon(value):
            globalReactor.callLater(0, dispatcher.fence,
                                    errors.LeaseConflict("taken", detail={"host": "elsewhere"}))

        dispatcher, client, remote = yield startPair(
            self, [keywords.Integer("POS", initial=3, write=fenceSoon)])
        with capturedLogs() as events:
            yield remote["POS"].write(4)
            yield eventually(lambda: dispatcher.state == "fenced")
        audits = [(e["keyword"], e["old"], e["new"]) for e in events
                  if e.get("log_namespace") == "cauldron.audit"]
        self.assertEqual(audits, [("POS", "3", "4")])

    @defer.inlineCallbacks
    def test_loggedOnceTheRequestsOfTheTurnAreAnswered(self):
        """A write's audit is logged when its turn's requests are answered, not in a later call."""
        auditsSeenLater = []

        def audits():
            return sum(e.get("log_namespace") == "cauldron.audit" for e in events)

        class Pos(keywords.Integer):
            def write(self, value):
                globalReactor.callLater(0, lambda: auditsSeenLater.append(audits()))

        dispatcher, client, remote = yield startPair(self, [Pos("POS", initial=0)])
        with capturedLogs() as events:
            yield remote["POS"].write(1)
            yield eventually(lambda: auditsSeenLater)
        self.assertEqual(auditsSeenLater, [1])

    @defer.inlineCallbacks
    def test_turnOfWritesLoggedInOrder(self):
        """Pipelined writes answered in one turn are each logged, in order, with their values."""
        dispatcher, client, remote = yield startPair(self, [keywords.Integer("POS", initial=0)])
        with capturedLogs() as events:
            yield defer.gatherResults([remote["POS"].write(n) for n in range(1, 6)])
            yield eventually(lambda: sum(e.get("log_namespace") == "cauldron.audit"
                                         for e in events) == 5)
        audits = [(e["old"], e["new"]) for e in events
                  if e.get("log_namespace") == "cauldron.audit"]
        self.assertEqual(audits, [(str(n - 1), str(n)) for n in range(1, 6)])


class BatchedRequestTests(unittest.TestCase):
    """Requests made while others are in flight go as one Batch, and never after a failure."""

    def channel(self, peer):
        transport = Transport(globalReactor)
        self.addCleanup(transport.shutdown)
        channel = RequestChannel(transport, peer.address, "the peer", 5.0, batched=True)
        self.addCleanup(channel.close, errors.ServiceUnavailable("test over"))
        return channel

    @defer.inlineCallbacks
    def test_requestsMadeMeanwhileGoTogether(self):
        peer = FakePeer(self)
        channel = self.channel(peer)
        first = channel.request(lambda i: Ping(i), "first")
        rest = [channel.request(lambda i: Read(i, "KW", "demo"), "read %d" % n) for n in range(5)]
        yield eventually(lambda: len(peer.requests) == 2)
        (who, ping), (_, batch) = peer.requests
        self.assertIsInstance(ping, Ping)  # nothing in flight: sent at once, alone
        self.assertIsInstance(batch, Batch)
        reads = [codec.decodeBatched(p) for p in batch.payloads]
        self.assertEqual([type(r) for r in reads], [Read] * 5)
        peer.reply(who, Pong(ping.id, "fake", "e"))
        peer.reply(who, Batch([codec.encodePayload(Value(r.id, "KW", 7, "7", 1, None, "e"))
                               for r in reads]))
        self.assertIsInstance((yield first), Pong)
        values = yield defer.gatherResults(rest)
        self.assertEqual([v.binary for v in values], [7] * 5)

    @defer.inlineCallbacks
    def test_aLongTurnGoesInSeveralBatches(self):
        """A turn's requests leave in Batches of BATCH_REQUESTS, so the peer starts on the first."""
        peer = FakePeer(self)
        channel = self.channel(peer)
        first = channel.request(lambda i: Ping(i), "first")
        count = 2 * BATCH_REQUESTS + 3
        rest = [channel.request(lambda i: Read(i, "KW", "demo"), "read %d" % n)
                for n in range(count)]
        yield eventually(lambda: len(peer.requests) == 4)
        batches = [message for _, message in peer.requests[1:]]
        self.assertEqual([len(b.payloads) for b in batches],
                         [BATCH_REQUESTS, BATCH_REQUESTS, 3])
        reads = [codec.decodeBatched(p) for b in batches for p in b.payloads]
        self.assertEqual(len({r.id for r in reads}), count)  # each request once, none lost
        who = peer.requests[0][0]
        peer.reply(who, Pong(peer.requests[0][1].id, "fake", "e"))
        peer.reply(who, Batch([codec.encodePayload(Value(r.id, "KW", 7, "7", 1, None, "e"))
                               for r in reads]))
        yield first
        self.assertEqual(len((yield defer.gatherResults(rest))), count)

    @defer.inlineCallbacks
    def test_requestsFailedBeforeTheBatchWentAreNeverSent(self):
        """A write its caller was told had failed is not sent with the turn's Batch."""
        peer = FakePeer(self)
        channel = self.channel(peer)
        first = channel.request(lambda i: Ping(i), "first")
        first.addErrback(lambda f: f.trap(errors.ServiceUnavailable))
        write = channel.request(lambda i: Write(i, "POS", 3, "demo"), "write POS")
        channel.failAll(errors.ServiceUnavailable("the peer died"))
        yield self.assertFailure(write, errors.ServiceUnavailable)
        ping = channel.request(lambda i: Ping(i), "after")  # nothing in flight: alone
        yield eventually(lambda: len(peer.requests) == 2)
        self.assertEqual([type(m) for _, m in peer.requests], [Ping, Ping])
        who, message = peer.requests[1]
        peer.reply(who, Pong(message.id, "fake", "e"))
        yield ping
