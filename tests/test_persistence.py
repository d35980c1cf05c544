"""Persistent keywords (cauldron.statefile): real SQLite files, real sockets, real processes.

Every test keeps its state files in a fresh temporary directory and waits on
conditions with deadlines (never a bare sleep).  The last two tests run
``twistd cauldron-dispatcher`` and kill it with SIGKILL, as a crash would.
"""

import json
import os
import random
import re
import shutil
import signal
import sqlite3
import stat
import sys
import tempfile
import time

from helpers import directConfig, eventually, startClient, turn
from processes import DEADLINE, TWISTD, Process, cauldron, freePorts
from twisted.internet import defer
from twisted.internet import reactor as globalReactor
from twisted.logger import LogLevel, capturedLogs, formatEvent
from twisted.trial import unittest

from cauldron import keywords
from cauldron.dispatcher import DispatcherService
from cauldron.errors import ConfigError, LeaseConflict
from cauldron.keywordfile import keywordsFromMapping
from cauldron.statefile import (
    FLUSH_INTERVAL,
    SCHEMA_VERSION,
    TABLE,
    StateFile,
    defaultStatePath,
)


def temporaryFolder(testCase):
    """A fresh directory removed after the test (not trial's mktemp, which uses the checkout)."""
    folder = tempfile.mkdtemp(prefix="cauldron-state-")
    testCase.addCleanup(shutil.rmtree, folder, True)
    return folder


def storedRows(path):
    """``{(service, dispatcher, keyword): (type, value, ascii)}``, read through a read-only link."""
    connection = sqlite3.connect("file:%s?mode=ro" % (path,), uri=True)
    try:
        return {
            (service, dispatcher, keyword): (typeName, json.loads(value), ascii)
            for service, dispatcher, keyword, typeName, value, ascii in connection.execute(
                "SELECT service, dispatcher, keyword, type, value, ascii FROM %s" % TABLE)
        }
    finally:
        connection.close()


def storedValue(path, keyword="TEMP", service="demo", dispatcher="demo"):
    """The value the file holds for one keyword, or None (no file, no row, or busy)."""
    if not os.path.exists(path):
        return None
    try:
        row = storedRows(path).get((service, dispatcher, keyword))
    except (sqlite3.Error, ValueError):  # busy, or a value that is no JSON
        return None
    return None if row is None else row[1]


def temp(initial=20.0, persist=True, **kwargs):
    kwargs.setdefault("range", (0.0, 400.0))
    return keywords.Double("TEMP", initial=initial, persist=persist, **kwargs)


def mode(persist=False):
    return keywords.Enumerated("MODE", enumerators=["OFF", "ON"], initial="OFF", persist=persist)


class StateTestCase(unittest.TestCase):
    """Starts dispatchers on the global reactor with a state file in a temporary folder."""

    def setUp(self):
        self.folder = temporaryFolder(self)
        self.path = os.path.join(self.folder, "state", "demo.sqlite")

    def dispatcher(self, kws, name="demo", **kwargs):
        kwargs.setdefault("statePath", self.path)
        service = DispatcherService(name, directConfig(), kws, reactor=globalReactor,
                                    heartbeatInterval=5.0, **kwargs)
        self.addCleanup(lambda: service.running and service.stopService())
        return service

    @defer.inlineCallbacks
    def started(self, kws, **kwargs):
        """A serving dispatcher for ``kws``."""
        service = self.dispatcher(kws, **kwargs)
        service.startService()
        yield service.whenReady()
        return service

    def stateFile(self, service="demo", dispatcher="demo", **kwargs):
        """A StateFile used directly, stopped at cleanup."""
        stateFile = StateFile(self.path, service, dispatcher, globalReactor, **kwargs)
        self.addCleanup(stateFile.stop)
        return stateFile

    def lockFile(self):
        """Take the file's write lock from another connection; returns the release function."""
        connection = sqlite3.connect(self.path, isolation_level=None)
        connection.execute("BEGIN IMMEDIATE")

        def release():
            if released:
                return
            released.append(True)
            connection.execute("ROLLBACK")
            connection.close()

        released = []

        self.addCleanup(release)
        return release


class RestoreTests(StateTestCase):
    """Values saved by one run are what the next run begins with."""

    @defer.inlineCallbacks
    def test_restoredByTheNextRun(self):
        """A value set, then a stop: a new dispatcher begins with it as sequence 1, not initial."""
        first = yield self.started([temp(), mode()])
        first["TEMP"].set(42.5)
        first["MODE"].set("ON")
        yield first.stopService()
        self.assertEqual(storedValue(self.path), 42.5)

        again = yield self.started([temp(), mode()])
        self.assertEqual((again["TEMP"].value, again["TEMP"].sequence), (42.5, 1))
        self.assertEqual(again["MODE"].ascii, "OFF")  # not persisted: initial again
        client = startClient(self, again.dispatchAddress, again.broadcastAddress)
        remote = yield client.service("demo")
        ascii = yield remote["TEMP"].read()
        self.assertEqual(ascii, "42.5")

    @defer.inlineCallbacks
    def test_restartOfTheSameObject(self):
        """Stopped and started again, the same dispatcher keeps its value (saved as well)."""
        service = yield self.started([temp()])
        service["TEMP"].set(7.0)
        yield service.stopService()
        service.startService()
        yield service.whenReady()
        self.assertEqual(service["TEMP"].value, 7.0)
        self.assertEqual(storedValue(self.path), 7.0)

    @defer.inlineCallbacks
    def test_everyTypeRoundTrips(self):
        """Every type comes back exactly: text, booleans, big integers, enumerators, masks..."""
        def made():
            return [
                keywords.String("NOTE", persist=True),
                keywords.Boolean("LAMP", persist=True),
                keywords.Integer("COUNT", range=(None, 2**62), persist=True),
                keywords.Enumerated("MODE", enumerators=["OFF", "ON"], persist=True),
                keywords.Mask("FLAGS", bits=["A", "B", "C"], persist=True),
                keywords.IntegerArray("ROIS", persist=True),
                keywords.DoubleArray("GAINS", persist=True),
            ]

        values = {"NOTE": "ünïcode, \"quotes\"\nand a newline", "LAMP": True,
                  "COUNT": 2**61 + 1, "MODE": 1, "FLAGS": 5, "ROIS": [1, -2, 3],
                  "GAINS": [0.1, 1e-300, 2.5]}
        first = yield self.started(made())
        for name, value in values.items():
            first[name].set(value)
        yield first.stopService()
        again = yield self.started(made())
        self.assertEqual({name: again[name].value for name in values}, values)
        self.assertEqual(again["FLAGS"].ascii, "A, C")

    @defer.inlineCallbacks
    def test_keywordFileField(self):
        """``persist = true`` in a keyword file makes the keyword persist."""
        def made():
            return keywordsFromMapping({
                "TEMP": {"type": "double", "initial": 1.0, "persist": True},
                "MODE": {"type": "int", "initial": 1},
            })

        first = yield self.started(made())
        first["TEMP"].set(2.0)
        first["MODE"].set(2)
        yield first.stopService()
        again = yield self.started(made())
        self.assertEqual((again["TEMP"].value, again["MODE"].value), (2.0, 1))

    @defer.inlineCallbacks
    def test_noStoredValueBeginsWithInitial(self):
        """A first run publishes initial (and saves it); a keyword with neither stays unset."""
        service = yield self.started([temp(initial=3.0), keywords.Double("X", persist=True)])
        self.assertEqual((service["TEMP"].value, service["X"].value), (3.0, None))
        yield eventually(lambda: storedValue(self.path) == 3.0)
        self.assertNotIn(("demo", "demo", "X"), storedRows(self.path))

    @defer.inlineCallbacks
    def test_restoredValueIsNotWrittenAgain(self):
        """Beginning from the stored value writes nothing: the file already holds it."""
        first = yield self.started([temp()])
        first["TEMP"].set(5.0)
        yield first.stopService()
        again = yield self.started([temp()])
        for _ in range(3):
            yield turn()
        self.assertEqual((again.stateFile.transactions, again.stateFile.pending), (0, []))

    @defer.inlineCallbacks
    def test_valueSetBeforeStartWins(self):
        """A value set before the start is kept over the stored one, and saved."""
        first = yield self.started([temp()])
        first["TEMP"].set(5.0)
        yield first.stopService()
        kw = temp()
        kw.set(9.0)
        again = yield self.started([kw])
        self.assertEqual(again["TEMP"].value, 9.0)
        yield eventually(lambda: storedValue(self.path) == 9.0)


class RefusedValueTests(StateTestCase):
    """A stored value the keyword no longer accepts: one log line, then initial."""

    @defer.inlineCallbacks
    def refused(self, stored, changed, why):
        """Store ``stored`` with TEMP as temp(); begin with ``changed``; check the log line."""
        first = yield self.started([temp()])
        first["TEMP"].set(stored)
        yield first.stopService()
        with capturedLogs() as events:
            again = yield self.started([changed])
        self.assertEqual((again["TEMP"].value, again["TEMP"].sequence),
                         (changed.initial, 1 if changed.initial is not None else 0))
        lines = [formatEvent(e) for e in events if "refused" in formatEvent(e)]
        self.assertEqual(len(lines), 1, lines)
        [event] = [e for e in events if "refused" in formatEvent(e)]
        self.assertEqual(event["log_level"], LogLevel.warn)
        self.assertIn("demo.TEMP", lines[0])
        self.assertIn(self.path, lines[0])
        self.assertIn(repr(float(stored)), lines[0])
        self.assertIn(why, lines[0])
        return again

    @defer.inlineCallbacks
    def test_rangeNarrowed(self):
        """350 stored, the range now ends at 300: initial, and the reason says so."""
        again = yield self.refused(350.0, temp(range=(0.0, 300.0)),
                                   "above the maximum 300.0")
        yield eventually(lambda: storedValue(self.path) == 20.0)  # the file follows
        self.assertEqual(again["TEMP"].ascii, "20.0")

    @defer.inlineCallbacks
    def test_typeChanged(self):
        """A double stored, the keyword now an integer: 2.5 is refused."""
        yield self.refused(2.5, keywords.Integer("TEMP", initial=1, persist=True),
                           "2.5 is not an integer")

    @defer.inlineCallbacks
    def test_checkHookRefuses(self):
        """The keyword's own check hook refuses a stored value, as it would a write."""
        def check(value):
            if value > 100:
                raise ValueError("too warm for this detector")

        yield self.refused(150.0, temp(check=check), "too warm for this detector")

    @defer.inlineCallbacks
    def test_refusedWithoutInitial(self):
        """No initial value to fall back on: the keyword starts without a value."""
        yield self.refused(350.0, keywords.Double("TEMP", range=(0, 300), persist=True),
                           "starting from no value")

    @defer.inlineCallbacks
    def test_unreadableValue(self):
        """A row whose value is not JSON (edited by hand) is refused like any other."""
        first = yield self.started([temp()])
        first["TEMP"].set(5.0)
        yield first.stopService()
        connection = sqlite3.connect(self.path)
        connection.execute("UPDATE %s SET value = '{5.0'" % TABLE)
        connection.commit()
        connection.close()
        with capturedLogs() as events:
            again = yield self.started([temp()])
        self.assertEqual(again["TEMP"].value, 20.0)
        [line] = [formatEvent(e) for e in events if "refused" in formatEvent(e)]
        self.assertIn("{5.0, is refused: it is not JSON", line)
        yield eventually(lambda: storedValue(self.path) == 20.0)

    @defer.inlineCallbacks
    def test_typeChangedValueStillAccepted(self):
        """An integer stored, the keyword now a double: 5 is still a fine value (5.0)."""
        first = yield self.started([keywords.Integer("TEMP", initial=1, persist=True)])
        first["TEMP"].set(5)
        yield first.stopService()
        again = yield self.started([temp()])
        self.assertEqual(again["TEMP"].value, 5.0)
        yield eventually(lambda: storedRows(self.path)[("demo", "demo", "TEMP")][0] == "double")

    @defer.inlineCallbacks
    def test_writeOnlyValueNotLogged(self):
        """A write-only keyword's refused value stays out of the log line."""
        def secret(**kwargs):
            return keywords.String("TOKEN", writeonly=True, persist=True, **kwargs)

        def check(value):
            if value != "x":
                raise ValueError("%r is not allowed" % value)

        first = yield self.started([secret()])
        first["TOKEN"].set("hunter2")
        yield first.stopService()
        with capturedLogs() as events:
            again = yield self.started([secret(initial="x", check=check)])
        self.assertEqual(again["TOKEN"].value, "x")
        [line] = [formatEvent(e) for e in events if "refused" in formatEvent(e)]
        self.assertNotIn("hunter2", line)
        self.assertIn("demo.TOKEN", line)

    @defer.inlineCallbacks
    def test_hardwareHooksNotRun(self):
        """Restoring runs no write hook (nothing reaches the hardware at start)."""
        first = yield self.started([temp()])
        first["TEMP"].set(11.0)
        yield first.stopService()
        calls = []
        kw = temp(prewrite=calls.append, write=calls.append,
                  postwrite=calls.append)
        again = yield self.started([kw])
        self.assertEqual((again["TEMP"].value, calls), (11.0, []))


class SavingTests(StateTestCase):
    """Changes are batched, written off the reactor, and never lost by a failed write."""

    @defer.inlineCallbacks
    def test_burstIsOneTransaction(self):
        """A thousand changes of three keywords in one turn: one transaction of three rows."""
        service = yield self.started([temp(range=(0, 1000)), keywords.Integer("A", persist=True),
                                      keywords.Integer("B", persist=True)])
        yield eventually(lambda: service.stateFile.transactions == 1)  # the initial value
        for i in range(1000):
            for name in ("TEMP", "A", "B"):
                service[name].set(i)
        yield eventually(lambda: service.stateFile.transactions == 2)
        self.assertEqual(service.stateFile.rowsWritten, 1 + 3)
        rows = storedRows(self.path)
        self.assertEqual({k[2]: v[1] for k, v in rows.items()},
                         {"TEMP": 999.0, "A": 999, "B": 999})
        self.assertEqual(rows[("demo", "demo", "TEMP")], ("double", 999.0, "999.0"))

    @defer.inlineCallbacks
    def test_writesAtMostEveryInterval(self):
        """Changes spread over many turns are written in far fewer transactions than changes."""
        service = yield self.started([temp()])
        yield eventually(lambda: service.stateFile.transactions == 1)
        started = globalReactor.seconds()
        for i in range(60):
            service["TEMP"].set(float(i))
            yield turn()
        yield eventually(lambda: storedValue(self.path) == 59.0)
        elapsed = globalReactor.seconds() - started
        written = service.stateFile.transactions - 1
        # One write at the first change, then at most one per interval.
        self.assertLessEqual(written, 2 + elapsed / FLUSH_INTERVAL)
        self.assertLess(written, 60)

    @defer.inlineCallbacks
    def test_nonPersistedKeywordsTouchNothing(self):
        """No keyword persists: no file, no directory, even with a state path given."""
        service = yield self.started([temp(persist=False), mode()])
        service["TEMP"].set(1.0)
        yield service.stopService()
        self.assertIsNone(service.stateFile)
        self.assertFalse(os.path.exists(os.path.dirname(self.path)))

    @defer.inlineCallbacks
    def test_onlyPersistedKeywordsStored(self):
        """Beside a persisted keyword, the others' changes never reach the file."""
        service = yield self.started([temp(), mode()])
        service["MODE"].set("ON")
        service["TEMP"].set(8.0)
        yield service.stopService()
        self.assertEqual(list(storedRows(self.path)), [("demo", "demo", "TEMP")])

    @defer.inlineCallbacks
    def test_persistTurnedOffForgets(self):
        """A keyword served without persist loses its stored row at the next start."""
        first = yield self.started([temp(), mode(persist=True)])
        first["TEMP"].set(8.0)
        yield first.stopService()
        again = yield self.started([temp(persist=False), mode(persist=True)])
        self.assertEqual(again["TEMP"].value, 20.0)
        self.assertEqual(list(storedRows(self.path)), [("demo", "demo", "MODE")])

    @defer.inlineCallbacks
    def test_stopWritesWhatIsPending(self):
        """A change made just before the stop is in the file once the stop has fired."""
        service = yield self.started([temp()])
        service["TEMP"].set(1.0)
        service["TEMP"].set(2.0)
        yield service.stopService()
        self.assertEqual(storedValue(self.path), 2.0)
        self.assertFalse(service.running)

    @defer.inlineCallbacks
    def test_writesRunOffTheReactor(self):
        """A write stuck on the file's lock leaves the reactor answering requests meanwhile."""
        service = yield self.started([temp()])
        yield eventually(lambda: service.stateFile.transactions == 1)
        client = startClient(self, service.dispatchAddress, service.broadcastAddress)
        remote = yield client.service("demo")
        release = self.lockFile()
        service["TEMP"].set(30.0)
        yield eventually(lambda: service.stateFile.writing)
        for value in (31.0, 32.0, 33.0):  # round trips through the reactor, while it writes
            ascii = yield remote["TEMP"].write(value)
            self.assertEqual(ascii, repr(value))
        self.assertTrue(service.stateFile.writing)
        self.assertEqual(service.stateFile.transactions, 1)
        release()
        yield eventually(lambda: storedValue(self.path) == 33.0 and not service.stateFile.writing)
        self.assertEqual(service.stateFile.transactions, 3)  # 30, then 31-33 in one
        self.assertEqual(service.stateFile.failures, 0)

    @defer.inlineCallbacks
    def test_failedWriteKeepsValues(self):
        """A write that fails is logged; its values stay pending and a later flush saves them."""
        kw = temp()
        stateFile = self.stateFile(busyTimeout=0.05)
        stateFile.open(["TEMP"])
        release = self.lockFile()
        with capturedLogs() as events:
            kw.addListener(stateFile.changed)
            kw.set(50.0)
            yield eventually(lambda: stateFile.failures >= 1)
            kw.set(51.0)  # replaces the failed value
            self.assertEqual(stateFile.pending, ["TEMP"])
            release()
            # Stored, and the reactor has taken the writer thread's answer (and logged).
            yield eventually(lambda: storedValue(self.path) == 51.0 and not stateFile.writing)
        errors = [formatEvent(e) for e in events if e["log_level"] == LogLevel.error]
        self.assertTrue(errors)
        self.assertIn(self.path, errors[0])
        self.assertIn("retried", errors[0])
        self.assertLessEqual(len(errors), 2)  # rate-limited: the attempts are many more
        self.assertEqual(stateFile.pending, [])
        self.assertEqual([formatEvent(e) for e in events if "saving again" in formatEvent(e)],
                         ["state file %s: saving again after %d failed attempts"
                          % (self.path, stateFile.failures)])

    @defer.inlineCallbacks
    def test_stopIsBounded(self):
        """A write that cannot finish does not hold the stop beyond its timeout."""
        kw = temp()
        stateFile = self.stateFile()
        stateFile.open(["TEMP"])
        kw.addListener(stateFile.changed)
        release = self.lockFile()
        kw.set(60.0)
        yield eventually(lambda: stateFile.writing)
        with capturedLogs() as events:
            yield stateFile.stop(timeout=0.2)
        self.assertTrue(stateFile.writing)
        [line] = [formatEvent(e) for e in events if e["log_level"] == LogLevel.error]
        self.assertIn("still writing after 0.2 s", line)
        release()
        yield eventually(lambda: not stateFile.writing)
        yield stateFile.stop()  # now it closes the file and ends the thread
        self.assertEqual(storedValue(self.path), 60.0)

    @defer.inlineCallbacks
    def test_fencedDispatcherSavesNothingMore(self):
        """Once fenced, a dispatcher's changes are not saved: the new owner's values count."""
        service = yield self.started([temp()])
        yield eventually(lambda: service.stateFile.transactions == 1)
        service["TEMP"].set(70.0)  # pending when the fence comes
        service.fence(LeaseConflict("taken over", detail={"host": "elsewhere"}))
        service["TEMP"].set(71.0)
        yield service.stopService()
        self.assertEqual(storedValue(self.path), 20.0)

    @defer.inlineCallbacks
    def test_twoDispatchersShareAFile(self):
        """Two dispatchers of one service keep their rows apart in one file."""
        motors = yield self.started([temp()], dispatcher="motors")
        detector = yield self.started([temp(initial=5.0)], dispatcher="detector")
        motors["TEMP"].set(1.5)
        detector["TEMP"].set(2.5)
        yield motors.stopService()
        yield detector.stopService()
        self.assertEqual(storedValue(self.path, dispatcher="motors"), 1.5)
        self.assertEqual(storedValue(self.path, dispatcher="detector"), 2.5)
        again = yield self.started([temp()], dispatcher="detector")
        self.assertEqual(again["TEMP"].value, 2.5)


class FileTests(StateTestCase):
    """The state file: where it is, its modes, its schema, and errors naming it."""

    @defer.inlineCallbacks
    def test_modes(self):
        """A missing directory is made 0700; the file and its WAL companions are 0600."""
        service = yield self.started([temp()])
        yield eventually(lambda: service.stateFile.transactions == 1)
        self.assertEqual(stat.S_IMODE(os.stat(os.path.dirname(self.path)).st_mode), 0o700)
        for suffix in ("", "-wal", "-shm"):
            self.assertEqual(stat.S_IMODE(os.stat(self.path + suffix).st_mode), 0o600, suffix)

    @defer.inlineCallbacks
    def test_schema(self):
        """One table keyed by service, dispatcher and keyword, in WAL mode, schema version 1."""
        service = yield self.started([temp()])
        yield eventually(lambda: service.stateFile.transactions == 1)
        connection = sqlite3.connect("file:%s?mode=ro" % self.path, uri=True)
        self.addCleanup(connection.close)
        self.assertEqual(connection.execute("PRAGMA journal_mode").fetchone()[0], "wal")
        self.assertEqual(connection.execute("PRAGMA user_version").fetchone()[0],
                         SCHEMA_VERSION)
        columns = [row[1] for row in connection.execute("PRAGMA table_info(%s)" % TABLE)]
        self.assertEqual(columns, ["service", "dispatcher", "keyword", "type", "value", "ascii",
                                   "timestamp"])
        [(timestamp,)] = connection.execute("SELECT timestamp FROM %s" % TABLE)
        self.assertEqual(timestamp, service["TEMP"].timestamp)

    @defer.inlineCallbacks
    def assertStartFails(self, *fragments):
        service = self.dispatcher([temp()])
        service.startService()
        error = yield self.assertFailure(service.whenReady(), ConfigError)
        for fragment in (self.path, *fragments):
            self.assertIn(fragment, str(error))
        self.assertIsNone(service["TEMP"].value)  # not begun: a later start may restore it
        self.assertIsNone(service.stateFile)
        return error

    @defer.inlineCallbacks
    def test_corruptFile(self):
        """A file that is no database fails the start with a ConfigError naming it."""
        os.makedirs(os.path.dirname(self.path))
        with open(self.path, "wb") as f:
            f.write(b"this is not a database, " * 400)
        yield self.assertStartFails("not a usable state file")

    @defer.inlineCallbacks
    def test_damagedDatabase(self):
        """A state file whose pages were overwritten fails the start, naming it."""
        service = yield self.started([temp(), keywords.String("NOTE", persist=True)])
        service["NOTE"].set("x" * 20000)  # a few pages of content
        yield service.stopService()
        size = os.path.getsize(self.path)
        with open(self.path, "r+b") as f:
            f.seek(size // 2)
            f.write(b"\xa5" * (size // 2 - 100))
        yield self.assertStartFails()

    @defer.inlineCallbacks
    def test_foreignDatabase(self):
        """An SQLite file of something else is refused, not changed."""
        os.makedirs(os.path.dirname(self.path))
        connection = sqlite3.connect(self.path)
        connection.execute("CREATE TABLE archive (x)")
        connection.commit()
        connection.close()
        yield self.assertStartFails("not a cauldron state file", "archive")

    @defer.inlineCallbacks
    def test_newerSchema(self):
        """A file written by a newer schema is refused rather than misread."""
        os.makedirs(os.path.dirname(self.path))
        connection = sqlite3.connect(self.path)
        connection.execute("PRAGMA user_version = %d" % (SCHEMA_VERSION + 1))
        connection.close()
        yield self.assertStartFails("newer cauldron")

    @defer.inlineCallbacks
    def test_unwritableLocation(self):
        """A directory that cannot be made (a file is in the way) fails the start, naming it."""
        with open(os.path.join(self.folder, "state"), "w") as f:
            f.write("a file where the directory should be")
        yield self.assertStartFails("cannot create the state file's directory")

    @defer.inlineCallbacks
    def test_pathIsADirectory(self):
        """A directory given as the state file is refused."""
        os.makedirs(self.path)
        yield self.assertStartFails("is a directory")

    @defer.inlineCallbacks
    def test_defaultLocation(self):
        """Without a state path the file is $XDG_STATE_HOME/cauldron/SERVICE[-DISPATCHER].sqlite."""
        self.patch(os, "environ", {**os.environ, "XDG_STATE_HOME": self.folder})
        service = self.dispatcher([temp()], statePath=None, dispatcher="Motors")
        self.assertEqual(service.stateFilePath(),
                         os.path.join(self.folder, "cauldron", "demo-motors.sqlite"))
        service.startService()
        yield service.whenReady()
        self.assertEqual(service.stateFile.path, service.stateFilePath())
        yield service.stopService()
        self.assertEqual(storedValue(service.stateFilePath(), dispatcher="motors"), 20.0)

    def test_defaultStatePath(self):
        """The default path follows XDG_STATE_HOME (if absolute), else ~/.local/state."""
        home = {"HOME": "/home/ops"}
        self.assertEqual(defaultStatePath("demo", environ=home),
                         "/home/ops/.local/state/cauldron/demo.sqlite")
        self.assertEqual(defaultStatePath("Demo", "DEMO", environ=home),
                         "/home/ops/.local/state/cauldron/demo.sqlite")
        self.assertEqual(defaultStatePath("deimot", "motors", environ=home),
                         "/home/ops/.local/state/cauldron/deimot-motors.sqlite")
        self.assertEqual(defaultStatePath("demo", environ={**home, "XDG_STATE_HOME": "/var/st"}),
                         "/var/st/cauldron/demo.sqlite")
        self.assertEqual(defaultStatePath("demo", environ={**home, "XDG_STATE_HOME": "rel"}),
                         "/home/ops/.local/state/cauldron/demo.sqlite")
        self.assertEqual(defaultStatePath("a/../b", environ=home),
                         "/home/ops/.local/state/cauldron/a_.._b.sqlite")


# -- across processes: kill -9 ------------------------------------------------------------

READY = re.compile(r"cauldron-dispatcher: serving 'demo'")
KEYWORD_FILE = """
[TEMP]
type = "double"
initial = 20.0
range = [0.0, 10000000.0]
persist = true

[MODE]
type = "enumerated"
enumerators = ["OFF", "ON"]
initial = "OFF"
"""
#: a client writing 1, 2, 3... (from argv[2] + 1) to TEMP as fast as answers come
WRITER = r"""
import sys, time
from twisted.internet import defer, task
from cauldron.client import ClientService

@defer.inlineCallbacks
def main(reactor, config, start):
    client = ClientService(config, reactor=reactor, timeout=2)
    client.startService()
    remote = yield client.service("demo")
    value = int(start)
    while True:
        value += 1
        yield remote["TEMP"].write(value)
        print("WROTE", value, time.monotonic(), flush=True)

task.react(main, sys.argv[1:])
"""
WROTE = re.compile(r"^WROTE (\d+) (\S+)$")
#: a dispatcher whose COUNT keywords all take generation g+1, g+2... in one reactor turn
#: each, every few milliseconds: its writes are large and back to back
CHURNER = r"""
import sys
from twisted.internet import defer, task
from cauldron import keywords
from cauldron.dispatcher import DispatcherService

def main(reactor, config, state, count):
    kws = [keywords.String("K%d" % i, persist=True, initial="0:") for i in range(int(count))]
    dispatcher = DispatcherService("churn", config, kws, reactor=reactor, statePath=state)
    dispatcher.startService()
    generation = [int(kws[0].value.split(":")[0])]
    print("RESTORED", generation[0], len({kw.value for kw in kws}), flush=True)

    def bump():
        generation[0] += 1
        for kw in kws:
            kw.set("%d:%s" % (generation[0], "x" * 200))
        print("GENERATION", generation[0], flush=True)

    loop = task.LoopingCall(bump)
    loop.clock = reactor
    loop.start(0.005)
    return defer.Deferred()

task.react(main, sys.argv[1:])
"""
RESTORED = re.compile(r"^RESTORED (\d+) (\d+)$")
GENERATION = re.compile(r"^GENERATION (\d+)$")
#: the most a kill -9 may lose: changes acknowledged this long before it (seconds);
#: writes start every FLUSH_INTERVAL, so anything near this means a bug, not a slow host
LOSS_BOUND = 1.0


class Site:
    """A direct-mode config, a keyword file and a state file for twistd dispatchers."""

    def __init__(self, folder):
        self.folder = str(folder)
        dispatchPort, broadcastPort = freePorts(2)
        self.config = os.path.join(self.folder, "cauldron.ini")
        with open(self.config, "w") as f:
            f.write("[zmq]\nhost = 127.0.0.1\ndispatch-port = %d\nbroadcast-port = %d\n"
                    "[zmq-router]\nenable = no\n" % (dispatchPort, broadcastPort))
        self.keywords = os.path.join(self.folder, "keywords.toml")
        with open(self.keywords, "w") as f:
            f.write(KEYWORD_FILE)
        self.state = os.path.join(self.folder, "state", "demo.sqlite")
        self.processes = []

    def start(self, argv):
        process = Process(argv, cwd=self.folder)
        self.processes.append(process)
        return process

    def dispatcher(self):
        """A twistd dispatcher serving the keyword file, once it serves."""
        process = self.start([*TWISTD, "-n", "--pidfile=", "cauldron-dispatcher",
                              "-c", self.config, "-s", "demo", "-k", self.keywords,
                              "--state", self.state, "--heartbeat", "0.5"])
        process.waitForLine(READY)
        return process

    def cauldron(self, *args):
        return cauldron(*args[:1], "-c", self.config, "--timeout", "5", *args[1:],
                        cwd=self.folder)

    def waitForStored(self, check, what):
        """Poll the state file (read-only) until ``check(value)``; the value."""
        end = time.monotonic() + DEADLINE
        while True:
            value = storedValue(self.state)
            if value is not None and check(value):
                return value
            if time.monotonic() > end:
                raise AssertionError("the state file never held %s (last: %r)" % (what, value))
            time.sleep(0.02)  # between polls of a condition, not a wait for it

    def integrity(self):
        connection = sqlite3.connect("file:%s?mode=ro" % self.state, uri=True)
        try:
            return connection.execute("PRAGMA integrity_check").fetchall()
        finally:
            connection.close()

    def cleanup(self):
        for process in self.processes:
            process.kill()


def test_killedDispatcherComesBackWithItsValue(tmp_path):
    """``cauldron modify``, kill -9 once the file holds it: the restarted dispatcher shows it."""
    site = Site(tmp_path)
    try:
        dispatcher = site.dispatcher()
        result = site.cauldron("modify", "-s", "demo", "TEMP=42.5", "MODE=ON")
        assert result.returncode == 0, result
        site.waitForStored(lambda value: value == 42.5, "42.5")
        dispatcher.signal(signal.SIGKILL)
        assert dispatcher.wait() == -signal.SIGKILL
        site.dispatcher()
        result = site.cauldron("show", "-s", "demo", "TEMP", "MODE")
        assert (result.returncode, result.stdout, result.stderr) == (
            0, "TEMP = 42.5\nMODE = OFF\n", ""), result
    finally:
        site.cleanup()


def test_killDuringBurstsOfWrites(tmp_path):
    """kill -9 amid a client's stream of writes, three times: the file stays sound, and
    each restart begins with a value that was written, at most a fraction of a second old."""
    site = Site(tmp_path)
    try:
        base = 0
        for attempt in range(3):
            dispatcher = site.dispatcher()
            if attempt:
                result = site.cauldron("show", "-s", "demo", "TEMP")
                assert result.stdout == "TEMP = %r\n" % float(base), (result, base)
            writer = site.start([sys.executable, "-c", WRITER, site.config, str(base)])
            acknowledged = {}
            while len(acknowledged) < 200:
                match = writer.waitForLine(WROTE)
                acknowledged[int(match.group(1))] = float(match.group(2))
            seen = site.waitForStored(lambda value, low=base: value > low, "a value of the burst")
            killed = time.monotonic()
            dispatcher.signal(signal.SIGKILL)
            assert dispatcher.wait() == -signal.SIGKILL
            writer.kill()
            for line in writer.text().splitlines():  # acknowledged before the kill was seen
                match = WROTE.match(line)
                if match:
                    acknowledged[int(match.group(1))] = float(match.group(2))
            assert site.integrity() == [("ok",)]
            stored = storedValue(site.state)
            assert stored == int(stored) and seen <= stored, (seen, stored)
            last = max(acknowledged)
            assert base < stored <= last + 1, (base, stored, last)  # one may be unacknowledged
            if stored <= last:
                lost = killed - acknowledged[int(stored)]
                times = sorted(acknowledged.values())
                print("kill %d: %d writes acknowledged (%.0f/s), stored %d; the kill lost %d "
                      "values acknowledged in its last %.3f s"
                      % (attempt, len(acknowledged), len(times) / (times[-1] - times[0]), stored,
                         last - stored, lost))
                assert lost < LOSS_BOUND, (lost, stored, last)
            base = int(stored)
        site.dispatcher()
        result = site.cauldron("show", "-s", "demo", "TEMP")
        assert result.stdout == "TEMP = %r\n" % float(base), result
    finally:
        site.cleanup()


def test_killAmidLargeWritesKeepsThemWhole(tmp_path):
    """kill -9, four times, of a dispatcher always writing a thousand values per transaction:
    the file stays sound and holds one whole transaction, never part of one."""
    site = Site(tmp_path)
    count = 1000
    try:
        generation = 0
        for _ in range(4):
            churner = site.start([sys.executable, "-c", CHURNER, site.config, site.state,
                                  str(count)])
            restored = churner.waitForLine(RESTORED)
            # Every keyword begins with the same generation: the last whole transaction.
            assert (int(restored.group(1)), int(restored.group(2))) == (generation, 1), (
                restored.group(0), generation)
            target = generation + random.randint(20, 40)
            while int(churner.waitForLine(GENERATION).group(1)) < target:
                pass
            churner.signal(signal.SIGKILL)
            assert churner.wait() == -signal.SIGKILL
            assert site.integrity() == [("ok",)]
            rows = storedRows(site.state)
            generations = {value.split(":")[0] for key, (_, value, _) in rows.items()
                           if key[0] == "churn"}
            assert len(rows) == count and len(generations) == 1, sorted(generations)[:5]
            [stored] = generations
            assert generation <= int(stored) <= target + 1, (generation, stored, target)
            generation = int(stored)
    finally:
        site.cleanup()
