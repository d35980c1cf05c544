"""The archiver's database stopped for 20 s while updates flow (issue 14).

A real PostgreSQL server of the test's own is stopped and started again;
the dispatcher sets a keyword 100 times a second meanwhile.  Afterwards
every update is either stored or inside a gap row, nothing twice, and the
database is sound.  Slow (about 30 s): CI runs it as its own step.
"""

import pytest
from twisted.internet import defer, task
from twisted.internet import reactor as globalReactor

from cauldron import keywords
from cauldron.archive import history
from tests.helpers import eventually
from tests.test_archiver import ArchiverTestCase

pytestmark = pytest.mark.slow

#: how long the database is down
OUTAGE = 20.0
#: updates a second while it is
RATE = 100


class OutageTests(ArchiverTestCase):

    def setUp(self):
        from pgserver import privateServer

        self.server = privateServer(self)
        self.db = self.server.url()

    @defer.inlineCallbacks
    def outage(self, bufferBytes):
        """Updates flow through an outage; fires with (archiver, stored records, last sequence)."""
        router, cfg = self.routerAndConfig()
        demo = yield self.startService(cfg, "demo", keywords.Integer("COUNT", initial=0))
        archiver = yield self.startArchiver(cfg, bufferBytes=bufferBytes, retryInterval=0.5)
        yield eventually(lambda: self.values("demo", "COUNT") == ["0"])
        counting = task.LoopingCall(lambda: demo["COUNT"].set(demo["COUNT"].value + 1))
        counting.clock = globalReactor
        counting.start(1.0 / RATE)
        self.addCleanup(lambda: counting.running and counting.stop())
        yield task.deferLater(globalReactor, 1.0, lambda: None)  # stored as they come
        self.server.stop()
        yield task.deferLater(globalReactor, OUTAGE, lambda: None)  # the outage itself
        self.server.start()
        yield task.deferLater(globalReactor, 1.0, lambda: None)  # and after it
        counting.stop()
        last = demo["COUNT"].sequence
        yield eventually(lambda: self.values("demo", "COUNT")[-1:] == [str(last - 1)],
                         timeout=30)
        return archiver, history(self.db, "demo", ["COUNT"]), last

    def assertAccounted(self, records, last):
        """Every sequence 1..last is stored once, or inside exactly one gap row."""
        covered = []
        for record in records:
            if record.kind == "gap":
                covered.extend(range(record.sequence, record.sequence + record.missed))
            else:
                covered.append(record.sequence)
        self.assertEqual(sorted(covered), list(range(1, last + 1)))

    @defer.inlineCallbacks
    def test_bufferOutlastsTheOutage(self):
        """A buffer large enough for the outage: everything stored late, no gap."""
        archiver, records, last = yield self.outage(bufferBytes=64 * 1024 * 1024)
        self.assertGreater(last, OUTAGE * RATE * 0.5)
        self.assertEqual([r for r in records if r.kind == "gap"], [])
        self.assertAccounted(records, last)
        self.assertEqual(archiver.dropped, 0)

    @defer.inlineCallbacks
    def test_fullBufferLeavesGapRows(self):
        """A buffer too small for the outage: the oldest dropped, counted, one gap row."""
        archiver, records, last = yield self.outage(bufferBytes=200 * 1024)
        gaps = [r for r in records if r.kind == "gap"]
        self.assertEqual(len(gaps), 1)
        self.assertEqual(gaps[0].missed, archiver.dropped)
        self.assertGreater(archiver.dropped, OUTAGE * RATE * 0.3)
        self.assertAccounted(records, last)
