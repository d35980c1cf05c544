"""The archiver, in one process on real sockets and a real SQLite file (issue 14).

A router, dispatchers and an :class:`ArchiverService` storing into SQLite;
the records are read back through :mod:`cauldron.archive`'s own API.
PostgreSQL and the database outage: ``test_archive_outage.py``; the
commands as a user runs them: ``test_archive_processes.py``.
"""

import os
import shutil
import tempfile

from twisted.internet import defer, task
from twisted.internet import reactor as globalReactor
from twisted.logger import capturedLogs, formatEvent

from cauldron import keywords
from cauldron.archive import history, valueAt
from cauldron.archive.archiver import ArchiverService, matches
from cauldron.archive.store import ArchiveError
from cauldron.client import KeywordValue
from cauldron.errors import ConfigError
from tests.helpers import directConfig, eventually
from tests.test_router import HEARTBEAT, RouterTestCase


class ArchiverTestCase(RouterTestCase):
    """Starts an archiver (stopped at cleanup) storing into a fresh SQLite file."""

    def setUp(self):
        folder = tempfile.mkdtemp(prefix="cauldron-archive-")  # not trial's mktemp: in the checkout
        self.addCleanup(shutil.rmtree, folder, ignore_errors=True)
        self.db = "sqlite:///" + os.path.join(folder, "archive.sqlite")

    @defer.inlineCallbacks
    def startArchiver(self, cfg, **kwargs):
        kwargs.setdefault("discoveryInterval", 0.1)
        archiver = ArchiverService(cfg, db=self.db, reactor=globalReactor, **kwargs)
        archiver.startService()
        self.addCleanup(lambda: archiver.running and archiver.stopService())
        yield archiver.whenReady()
        return archiver

    @defer.inlineCallbacks
    def startService(self, cfg, name, *kws, dispatcher=None):
        service = self.makeService(cfg, name, *kws, dispatcher=dispatcher)
        service.startService()
        yield service.whenReady()
        return service

    def makeService(self, cfg, name, *kws, dispatcher=None):
        from cauldron.dispatcher import DispatcherService

        service = DispatcherService(name, cfg, kws, reactor=globalReactor,
                                    heartbeatInterval=HEARTBEAT, dispatcher=dispatcher)
        self.addCleanup(lambda: service.running and service.stopService())
        return service

    def stored(self, service, *names):
        return history(self.db, service, list(names))

    def values(self, service, name):
        return [r.ascii for r in self.stored(service, name) if r.kind == "value"]


class ArchiverTests(ArchiverTestCase):

    @defer.inlineCallbacks
    def test_everyChangeStoredInOrder(self):
        """Each value a dispatcher publishes is one record, in sequence, with its metadata."""
        router, cfg = self.routerAndConfig()
        demo = yield self.startService(cfg, "demo", keywords.Integer("COUNT", initial=0),
                                       keywords.String("NAME", initial="x"))
        archiver = yield self.startArchiver(cfg)
        yield eventually(lambda: len(self.values("demo", "COUNT")) == 1)
        for n in range(1, 501):
            demo["COUNT"].set(n)
        demo["NAME"].set("a, \"quoted\"\nline")
        yield eventually(lambda: self.values("demo", "COUNT")[-1:] == ["500"], timeout=10)
        records = self.stored("demo", "COUNT")
        self.assertEqual([r.binary for r in records], list(range(501)))
        self.assertEqual([r.sequence for r in records], list(range(1, 502)))
        self.assertEqual({(r.epoch, r.kind, r.dispatcher) for r in records},
                         {(demo.epoch, "value", "demo")})
        stamps = [r.timestamp for r in records]
        self.assertEqual(stamps, sorted(stamps))
        yield eventually(lambda: self.values("demo", "NAME")[-1:] == ["a, \"quoted\"\nline"])
        self.assertEqual(archiver.dropped, 0)

    @defer.inlineCallbacks
    def test_newServicesAndKeywordsPickedUp(self):
        """A service that registers later, and a dispatcher joining a service, are archived."""
        router, cfg = self.routerAndConfig()
        yield self.startArchiver(cfg)
        yield self.startService(cfg, "late", keywords.Double("TEMP", initial=1.5))
        yield eventually(lambda: self.values("late", "TEMP") == ["1.5"], timeout=5)
        yield self.startService(cfg, "late", keywords.Double("POS", initial=2.5),
                                dispatcher="motors")
        yield eventually(lambda: self.values("late", "POS") == ["2.5"], timeout=10)
        self.assertEqual(self.stored("late", "POS")[0].dispatcher, "motors")

    @defer.inlineCallbacks
    def test_patternsAndServicesChooseWhatIsStored(self):
        router, cfg = self.routerAndConfig()
        yield self.startService(cfg, "one", keywords.Integer("TEMP1", initial=1),
                                keywords.Integer("POS", initial=2),
                                keywords.String("TEMPKEY", writeonly=True))
        yield self.startService(cfg, "two", keywords.Integer("TEMP2", initial=3))
        archiver = yield self.startArchiver(cfg, services=["one", "two"],
                                            keywords=["TEMP*", "two.*"])
        yield eventually(lambda: self.values("one", "TEMP1") == ["1"]
                         and self.values("two", "TEMP2") == ["3"])
        self.assertEqual(self.stored("one", "POS"), [])
        self.assertEqual(archiver._watched, {("one", "TEMP1"), ("two", "TEMP2")})

    def test_matches(self):
        self.assertTrue(matches([], "demo", "TEMP"))
        self.assertTrue(matches(["temp"], "demo", "TEMP"))
        self.assertTrue(matches(["demo.T*"], "demo", "TEMP"))
        self.assertFalse(matches(["other.*"], "demo", "TEMP"))
        self.assertFalse(matches(["T?"], "demo", "TEMP"))

    @defer.inlineCallbacks
    def test_restartArchivedWithoutConfusion(self):
        """A dispatcher restart (new epoch, sequences from 1 again) keeps both runs apart."""
        router, cfg = self.routerAndConfig()
        demo = yield self.startService(cfg, "demo", keywords.Integer("POS", initial=0))
        yield self.startArchiver(cfg)
        yield eventually(lambda: self.values("demo", "POS") == ["0"])
        demo["POS"].set(1)
        yield eventually(lambda: self.values("demo", "POS") == ["0", "1"])
        first = demo.epoch
        yield demo.stopService()
        demo.startService()
        yield demo.whenReady()
        demo["POS"].set(7)
        yield eventually(lambda: self.values("demo", "POS")[-1:] == ["7"], timeout=10)
        records = self.stored("demo", "POS")
        runs = [(r.epoch, r.sequence, r.ascii) for r in records if r.kind == "value"]
        self.assertEqual(runs[:2], [(first, 1, "0"), (first, 2, "1")])
        second = [r for r in records if r.epoch == demo.epoch]
        self.assertEqual(second[-1].ascii, "7")
        # Every value of the new run is stored, or inside the gap row opening it (the
        # ones published before the archiver's monitor heard the new run).
        values = [r for r in second if r.kind == "value"]
        gaps = [r for r in second if r.kind == "gap"]
        self.assertEqual(sum(g.missed for g in gaps) + len(values), second[-1].sequence)
        self.assertTrue(all(g.sequence == 1 for g in gaps))
        self.assertNotIn("gap", [r.kind for r in records if r.epoch == first])
        now = records[-1].timestamp
        self.assertEqual(valueAt(self.db, "demo", ["pos"], now)["POS"].ascii, "7")
        self.assertEqual(valueAt(self.db, "demo", ["POS"], records[1].timestamp)["POS"].ascii,
                         "1")

    @defer.inlineCallbacks
    def test_missedValuesRecordedAsAGap(self):
        """A monitor that learns values were skipped makes a gap row before the value."""
        router, cfg = self.routerAndConfig()
        demo = yield self.startService(cfg, "demo", keywords.Integer("POS", initial=0))
        archiver = yield self.startArchiver(cfg)
        yield eventually(lambda: self.values("demo", "POS") == ["0"])
        keyword = archiver._remotes["demo"]["POS"]
        # What a stalled subscriber's monitor delivers after the socket dropped 3 values.
        archiver._received(keyword, KeywordValue("POS", 5, "5", 5, 1000.0, demo.epoch, 3))
        yield eventually(lambda: "5" in self.values("demo", "POS"))
        gap, value = [r for r in self.stored("demo", "POS") if r.sequence >= 2]
        self.assertEqual((gap.kind, gap.sequence, gap.missed), ("gap", 2, 3))
        self.assertEqual((value.kind, value.sequence), ("value", 5))
        # Counted when the reactor hears of the commit, a moment after it is visible.
        yield eventually(lambda: archiver.gaps == 1)

    @defer.inlineCallbacks
    def test_fullBufferDropsOldestAndRecordsTheGap(self):
        """With the store refusing, a full buffer drops the oldest; one gap row says so."""
        router, cfg = self.routerAndConfig()
        demo = yield self.startService(cfg, "demo", keywords.Integer("POS", initial=0))
        archiver = yield self.startArchiver(cfg, bufferBytes=50 * 400, retryInterval=0.05)
        yield eventually(lambda: self.values("demo", "POS") == ["0"])
        insert = archiver.store.insert
        refusing = []

        def down(records):
            refusing.append(len(records))
            return defer.fail(ArchiveError("the database is down (test)"))

        archiver.store.insert = down
        with capturedLogs() as events:
            for n in range(1, 201):
                demo["POS"].set(n)
            yield eventually(lambda: archiver.dropped >= 150 and refusing)
            archiver.store.insert = insert
            yield eventually(lambda: self.values("demo", "POS")[-1:] == ["200"], timeout=5)
            yield eventually(lambda: not archiver._databaseDown)  # "answers again" logged
        records = self.stored("demo", "POS")
        gaps = [r for r in records if r.kind == "gap"]
        kept = [r.sequence for r in records if r.kind == "value"]
        self.assertEqual(len(gaps), 1)
        self.assertEqual(gaps[0].missed, archiver.dropped)
        self.assertEqual(len(kept) - 1 + archiver.dropped, 200)  # every value accounted for
        self.assertEqual(gaps[0].sequence, 2)  # the oldest went first
        lines = [formatEvent(e) for e in events]
        self.assertTrue(any("the database is down" in line for line in lines), lines)
        self.assertTrue(any("answers again" in line for line in lines), lines)

    @defer.inlineCallbacks
    def test_stopStoresWhatIsBuffered(self):
        """A stop waits for the buffered records to be stored (the database being slow)."""
        router, cfg = self.routerAndConfig()
        demo = yield self.startService(cfg, "demo", keywords.Integer("POS", initial=0))
        archiver = yield self.startArchiver(cfg)
        yield eventually(lambda: self.values("demo", "POS") == ["0"])
        insert = archiver.store.insert
        archiver.store.insert = lambda records: task.deferLater(
            globalReactor, 0.3, insert, records)  # a slow database
        for n in range(1, 3001):
            demo["POS"].set(n)
        # Every change received, most of it still waiting for the slow database.
        yield eventually(lambda: any(r.binary == 3000 for r in archiver._buffer), timeout=10)
        yield archiver.stopService()
        records = self.stored("demo", "POS")
        values = [r for r in records if r.kind == "value"]
        self.assertEqual(values[-1].ascii, "3000")
        self.assertEqual(len(values) + sum(r.missed for r in records if r.kind == "gap"), 3001)

    @defer.inlineCallbacks
    def test_retentionDeletesOldRecords(self):
        router, cfg = self.routerAndConfig()
        yield self.startService(cfg, "demo", keywords.Integer("POS", initial=0))
        clock = [1_000_000.0]
        archiver = yield self.startArchiver(cfg, keep=3600.0, clock=lambda: clock[0])
        yield eventually(lambda: self.values("demo", "POS") == ["0"])
        clock[0] = 4_000_000_000.0  # far past the hour every record was made in
        deleted = yield archiver._expire()
        self.assertEqual(deleted, 1)
        self.assertEqual(self.stored("demo", "POS"), [])

    def test_withoutRouterServicesMustBeNamed(self):
        self.assertRaises(ConfigError, ArchiverService, directConfig(), db=self.db,
                          reactor=globalReactor)

    @defer.inlineCallbacks
    def test_badDatabaseFailsTheStart(self):
        router, cfg = self.routerAndConfig()
        archiver = ArchiverService(cfg, db="sqlite:///no/such/dir/archive.sqlite",
                                   reactor=globalReactor)
        try:
            archiver.startService()
        except ConfigError:
            return  # refused before anything started: as good
        self.addCleanup(lambda: archiver.running and archiver.stopService())
        yield self.assertFailure(archiver.whenReady(), ConfigError)


class PostgresArchiverTests(ArchiverTestCase):
    """The same archiver storing into a real PostgreSQL server (Debian's package)."""

    def setUp(self):
        from pgserver import freshDatabase

        self.db = freshDatabase(self)

    test_everyChangeStoredInOrder = ArchiverTests.test_everyChangeStoredInOrder
    test_restartArchivedWithoutConfusion = ArchiverTests.test_restartArchivedWithoutConfusion
    test_missedValuesRecordedAsAGap = ArchiverTests.test_missedValuesRecordedAsAGap
