"""Tests for cauldron.archive.store, each against SQLite (a file) and PostgreSQL (a real server).

PostgreSQL comes from :mod:`pgserver` (Debian's server binaries, a private
port and data directory); where it cannot be had those cases skip with a
one-line reason.  The AsyncStore tests are trial TestCases on the global
reactor, one class per database.
"""

import math
import os
import random
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import textwrap
import threading

import pgserver
import pytest
from pgserver import postgresServer, postgresUrl, privatePostgresServer  # noqa: F401 (fixtures)
from processes import DEADLINE, environment
from twisted.internet import defer
from twisted.internet import reactor as globalReactor
from twisted.trial import unittest

from cauldron.archive.store import (
    SCHEMA_VERSION,
    AsyncStore,
    PostgresStore,
    Record,
    SQLiteStore,
    maskUrl,
    openStore,
)
from cauldron.errors import ArchiveError, CauldronError, ConfigError

BACKENDS = ["sqlite", "postgresql"]
#: seconds a SQLite store waits for a lock in these tests
SHORT_BUSY = 0.1


def rawRows(url, sql, parameters=()):
    """Run SQL on a database through a connection of the test's own; the rows, if any."""
    if url.startswith("sqlite:///"):
        connection = sqlite3.connect(os.path.abspath(url[len("sqlite:///"):]),
                                     isolation_level=None)
        try:
            cursor = connection.execute(sql, parameters)
            return cursor.fetchall() if cursor.description else []
        finally:
            connection.close()
    import psycopg

    with psycopg.connect(url, autocommit=True) as connection:
        cursor = connection.execute(sql.replace("?", "%s"), parameters)
        return cursor.fetchall() if cursor.description else []


@pytest.fixture(params=BACKENDS)
def url(request, tmp_path):
    """A fresh, empty database of each kind."""
    if request.param == "sqlite":
        return "sqlite:///%s" % (tmp_path / "archive.db",)
    return request.getfixturevalue("postgresUrl")


@pytest.fixture
def store(url):
    """A set-up store on a fresh database, closed after."""
    opened = openStore(url)
    opened.setUp()
    yield opened
    opened.close()


def value(keyword, sequence, timestamp, binary=None, epoch="e1", service="demo", **kwargs):
    """A value record, its ascii made from the value unless given."""
    kwargs.setdefault("ascii", "" if binary is None else str(binary))
    return Record(service, keyword, epoch, sequence, timestamp, binary, **kwargs)


def gap(keyword, sequence, timestamp, missed=0, epoch="e1", service="demo"):
    return Record(service, keyword, epoch, sequence, timestamp, kind="gap", missed=missed)


def sameRecord(a, b):
    """Records equal, NaN equal to NaN, and every value of the same type."""
    def same(x, y):
        if type(x) is not type(y):
            return False
        if isinstance(x, float) and math.isnan(x):
            return math.isnan(y)
        if isinstance(x, list):
            return len(x) == len(y) and all(same(i, j) for i, j in zip(x, y, strict=True))
        return x == y
    return all(same(getattr(a, f), getattr(b, f)) for f in Record.__slots__)


# -- openStore and URLs ------------------------------------------------------------


def test_sqliteRelativePath(tmp_path, monkeypatch):
    """sqlite:///NAME is relative to the working directory; the URL is kept as given."""
    monkeypatch.chdir(tmp_path)
    opened = openStore("sqlite:///archive.db")
    assert isinstance(opened, SQLiteStore)
    assert opened.path == str(tmp_path / "archive.db")
    assert opened.url == "sqlite:///archive.db"


def test_sqliteAbsolutePath(tmp_path):
    """sqlite:////PATH (four slashes) is an absolute path."""
    opened = openStore("sqlite:///%s" % (tmp_path / "a.db",))
    assert opened.path == str(tmp_path / "a.db")
    opened.setUp()
    opened.close()
    assert (tmp_path / "a.db").exists()


def test_sqliteMissingDirectory(tmp_path):
    """A SQLite file in a directory that does not exist is a ConfigError naming both."""
    url = "sqlite:///%s" % (tmp_path / "nope" / "a.db",)
    with pytest.raises(ConfigError) as caught:
        openStore(url)
    assert url in str(caught.value)
    assert "directory %s does not exist" % (tmp_path / "nope",) in str(caught.value)


def test_sqliteDirectoryIsNoFile(tmp_path):
    """A SQLite URL naming a directory is a ConfigError."""
    with pytest.raises(ConfigError, match="is a directory"):
        openStore("sqlite:///%s" % (tmp_path,))


@pytest.mark.parametrize("url", ["sqlite://", "sqlite://a.db", "sqlite:///", "sqlite:///:memory:",
                                 "sqlite:///a.db?mode=ro"])
def test_badSqliteUrls(url):
    """SQLite URLs without a file path, in memory or with options are ConfigErrors naming them."""
    with pytest.raises(ConfigError) as caught:
        openStore(url)
    assert url in str(caught.value)


@pytest.mark.parametrize("url", ["mysql://root:hunter2@db/archive", "archive.db", "", "http://x"])
def test_unknownUrls(url):
    """Anything but sqlite and postgresql is a ConfigError naming the URL (masked) and the forms."""
    with pytest.raises(ConfigError) as caught:
        openStore(url)
    message = str(caught.value)
    assert "hunter2" not in message
    assert maskUrl(url) in message
    assert "sqlite:///PATH" in message and "postgresql://" in message


def test_notAString():
    """A URL that is not a string is a ConfigError."""
    with pytest.raises(ConfigError, match="not a database URL"):
        openStore(None)


@pytest.mark.parametrize("url, masked", [
    ("postgresql://arch:s3cret@db.example:5433/archive",
     "postgresql://arch:***@db.example:5433/archive"),
    ("postgres://arch:s3cret@db/archive", "postgres://arch:***@db/archive"),
    ("postgresql://arch@db/archive", "postgresql://arch@db/archive"),
    ("postgresql:///archive?host=/run/postgresql&password=s3cret&user=x",
     "postgresql:///archive?host=/run/postgresql&password=***&user=x"),
    ("sqlite:////var/lib/a.db", "sqlite:////var/lib/a.db"),
])
def test_maskUrl(url, masked):
    """Passwords are masked in the user part and in a password= option; nothing else changes."""
    assert maskUrl(url) == masked


def test_postgresUrlForms():
    """postgresql://, postgres:// and the ?host= socket form all make PostgresStores, masked."""
    pytest.importorskip("psycopg")
    for url in ("postgresql://a:pw@localhost:5432/db", "postgres://a:pw@localhost/db",
                "postgresql:///db?host=/tmp/sockets&password=pw"):
        opened = openStore(url)
        assert isinstance(opened, PostgresStore)
        assert "pw" not in opened.url and "***" in opened.url


def test_postgresBadUrl():
    """A postgresql URL libpq cannot parse is a ConfigError naming it, password masked."""
    pytest.importorskip("psycopg")
    with pytest.raises(ConfigError) as caught:
        openStore("postgresql://a:pw@host/db?nosuchoption=1")
    assert "postgresql://a:***@host/db" in str(caught.value)
    assert ":pw@" not in str(caught.value)


def test_postgresWithoutDriver(monkeypatch):
    """Without psycopg, postgresql:// is a ConfigError saying which extra to install."""
    monkeypatch.setitem(sys.modules, "psycopg", None)
    with pytest.raises(ConfigError) as caught:
        openStore("postgresql://a:pw@localhost/db")
    assert str(caught.value) == (
        "archive database postgresql://a:***@localhost/db: "
        "postgresql:// needs the postgres extra: pip install 'cauldron[postgres]'")


def test_archiveErrorIsACauldronError():
    """ArchiveError belongs to the one tree of cauldron errors."""
    assert issubclass(ArchiveError, CauldronError)
    assert "ArchiveError" in __import__("cauldron.errors").errors.__all__


# -- schema ------------------------------------------------------------------------


def test_setUpCreatesSchema(store, url):
    """setUp makes the table, its indexes and one schema_version row."""
    assert rawRows(url, "SELECT version FROM schema_version") == [(SCHEMA_VERSION,)]
    assert rawRows(url, "SELECT count(*) FROM keyword_values") == [(0,)]
    if url.startswith("sqlite"):
        indexes = rawRows(url, "SELECT name FROM sqlite_master WHERE type = 'index' "
                               "AND tbl_name = 'keyword_values'")
        assert rawRows(url, "PRAGMA journal_mode") == [("wal",)]
    else:
        indexes = rawRows(url, "SELECT indexname FROM pg_indexes "
                               "WHERE tablename = 'keyword_values'")
    names = {name for (name,) in indexes}
    assert "keyword_values_lookup" in names


def test_setUpIsIdempotent(store, url):
    """setUp twice, and a second store on the existing database, keep schema and data."""
    store.insert([value("TEMP", 1, 10.0, 1.5)])
    store.setUp()
    again = openStore(url)
    again.setUp()
    again.setUp()
    assert again.query("demo", ["TEMP"]) == [value("TEMP", 1, 10.0, 1.5)]
    assert rawRows(url, "SELECT version FROM schema_version") == [(SCHEMA_VERSION,)]
    again.close()


def test_setUpBesideOtherTables(url):
    """A database that already holds other tables gets the schema beside them."""
    rawRows(url, "CREATE TABLE unrelated (x integer)")
    opened = openStore(url)
    opened.setUp()
    opened.insert([value("TEMP", 1, 10.0, 1.5)])
    assert len(opened.query("demo", ["TEMP"])) == 1
    assert rawRows(url, "SELECT count(*) FROM unrelated") == [(0,)]
    opened.close()


def test_newerSchemaRefused(store, url):
    """A schema newer than this code knows is an ArchiveError naming URL and versions."""
    rawRows(url, "UPDATE schema_version SET version = 99")
    newer = openStore(url)
    with pytest.raises(ArchiveError) as caught:
        newer.setUp()
    message = str(caught.value)
    assert "schema version 99" in message and "(%d)" % (SCHEMA_VERSION,) in message
    assert maskUrl(url) in message
    newer.close()


def test_callsSetUpThemselves(url):
    """A store's first call connects and makes the schema, setUp or not."""
    opened = openStore(url)
    assert opened.query("demo", ["TEMP"]) == []
    opened.insert([value("TEMP", 1, 10.0, 2.0)])
    assert len(opened.query("demo", ["TEMP"])) == 1
    opened.close()


# -- values ------------------------------------------------------------------------

VALUES = [
    None, True, False, 0, 1, -7, 2**53, 2**53 + 1, -(2**63), 2**64 + 3, 10**400,
    0.0, -0.0, 1.5, -2.25e-300, 1e300, 1e16, math.inf, -math.inf, math.nan,
    "", "plain", 'starts with "a quote"', '"', "NUL \x00 inside", "\x00", "tab\tnewline\n",
    "ünïcødé ✓ 🚀", "lone \ud800 surrogate", "\\u0000 as text", "ends \\",
    [], [1, 2, 3], [1.0, 2.5, -0.0], [1e300, 1e16], [True, None, "x", 1, 1.5],
    ["NUL\x00", "🚀"], [math.nan, math.inf], {"a": [1, 2]},
]


def test_everyValueTypeRoundTrips(store):
    """Each kind of binary value (and any text) comes back equal and of the same type."""
    records = [value("K%d" % i, i, 1000.0 + i, v, ascii=repr(v)) for i, v in enumerate(VALUES)]
    store.insert(records)
    got = store.query("demo", ["K%d" % i for i in range(len(VALUES))])
    assert len(got) == len(records)
    for want, have in zip(records, got, strict=True):
        assert sameRecord(want, have), (want, have)


def test_textFieldsKeepAnyCharacter(store):
    """Names, epoch, dispatcher and ascii holding NUL, quotes or non-ASCII come back as given."""
    record = Record("demo", "TEXT", 'ep"\x00ch', 3, 5.0, "v", ascii='"\x00 ✓',
                    dispatcher="dïsp\x00")
    store.insert([record])
    assert store.query("demo", ["TEXT"]) == [record]


def test_gapsRoundTrip(store):
    """Gap rows come back with their kind, first missing sequence and count."""
    records = [value("TEMP", 1, 10.0, 1.0), gap("TEMP", 2, 11.0, missed=3),
               value("TEMP", 5, 12.0, 2.0), gap("TEMP", 0, 13.0, epoch="")]
    store.insert(records)
    assert store.query("demo", ["TEMP"]) == records


def test_stringsStoredAsText(store, url):
    """A plain string value is stored as itself, for SQL that looks for it."""
    store.insert([value("MODE", 1, 10.0, "ON")])
    rows = rawRows(url, "SELECT value_type, text_value, num, ascii, kind FROM keyword_values")
    assert rows == [("str", "ON", None, "ON", "value")]


def test_numbersStoredInNum(store, url):
    """bool, int and float values are in num, for SQL that computes with them."""
    store.insert([value("A", 1, 1.0, True), value("B", 1, 2.0, 42), value("C", 1, 3.0, 2.5)])
    rows = rawRows(url, "SELECT keyword, value_type, num FROM keyword_values ORDER BY stamp")
    assert rows == [("A", "bool", 1.0), ("B", "int", 42.0), ("C", "float", 2.5)]


def test_namesAreCaseInsensitive(store):
    """Service and keyword names are stored lower/upper case and found in any case."""
    store.insert([Record("Demo", "temp", "e1", 1, 10.0, 1.0, "1.0")])
    (found,) = store.query("DEMO", ["Temp"])
    assert (found.service, found.keyword) == ("demo", "TEMP")
    assert list(store.at("dEmO", ["tEmP"], 20.0)) == ["TEMP"]
    assert store.query("demo", "temp") == [found]


def test_unrepresentableFieldsStoredAnyway(store):
    """A batch is never refused for its content: odd timestamps become 0.0, counts are clipped."""
    store.insert([
        Record("demo", "A", "e1", 2**70, math.nan, 1.0, "1", missed=-(2**70)),
        Record("demo", "B", "e1", 1, None, 2.0, "2"),
        Record("demo", "C", "e1", 1, math.inf, 3.0, "3"),
    ])
    a, b, c = (store.query("demo", [name])[0] for name in "ABC")
    assert (a.timestamp, a.sequence, a.missed) == (0.0, 2**63 - 1, -(2**63))
    assert b.timestamp == 0.0 and c.timestamp == 0.0


# -- queries -----------------------------------------------------------------------


def test_timeBoundsInclusive(store):
    """since <= timestamp <= until, either bound open when None."""
    store.insert([value("TEMP", i, float(i), float(i)) for i in range(10)])
    stamps = lambda **kw: [r.timestamp for r in store.query("demo", ["TEMP"], **kw)]  # noqa: E731
    assert stamps(since=3.0, until=6.0) == [3.0, 4.0, 5.0, 6.0]
    assert stamps(since=3.5, until=5.5) == [4.0, 5.0]
    assert stamps(since=8.0) == [8.0, 9.0]
    assert stamps(until=1.0) == [0.0, 1.0]
    assert stamps() == [float(i) for i in range(10)]
    assert stamps(since=6.0, until=3.0) == []


def test_orderedByTimestampEpochSequence(store):
    """Records come back ordered by (timestamp, epoch, sequence), whatever the insert order."""
    records = [
        value("TEMP", 2, 5.0, 1.0, epoch="a"), value("TEMP", 1, 5.0, 1.0, epoch="b"),
        value("TEMP", 1, 5.0, 1.0, epoch="a"), value("TEMP", 9, 1.0, 1.0, epoch="z"),
        gap("TEMP", 3, 5.0, epoch="a"), value("MODE", 1, 3.0, "x", epoch="a"),
        value("MODE", 4, 7.0, "y", epoch="a"),
    ]
    shuffled = list(records)
    random.Random(4).shuffle(shuffled)
    store.insert(shuffled)
    got = store.query("demo", ["TEMP", "MODE"])
    assert [(r.timestamp, r.epoch, r.sequence) for r in got] == sorted(
        (r.timestamp, r.epoch, r.sequence) for r in records)


def test_queryLimit(store):
    """limit keeps the first records in order."""
    store.insert([value("TEMP", i, float(i), 1.0) for i in range(10)])
    assert [r.sequence for r in store.query("demo", ["TEMP"], since=2.0, limit=3)] == [2, 3, 4]
    assert store.query("demo", ["TEMP"], limit=0) == []


def test_queryOnlyThatServiceAndKeywords(store):
    """Other services and other keywords are not returned; no keywords, no records."""
    store.insert([value("TEMP", 1, 1.0, 1.0), value("TEMP", 1, 1.0, 1.0, service="other"),
                  value("MODE", 1, 1.0, "x")])
    assert [(r.service, r.keyword) for r in store.query("demo", ["TEMP"])] == [("demo", "TEMP")]
    assert store.query("demo", ["NOPE"]) == []
    assert store.query("demo", []) == []


def test_atLatestValue(store):
    """at() gives each keyword's latest value at or before the time, gaps passed over."""
    store.insert([
        value("TEMP", 1, 10.0, 1.0), value("TEMP", 2, 20.0, 2.0), gap("TEMP", 3, 25.0, missed=1),
        value("MODE", 1, 15.0, "ON"),
    ])
    assert store.at("demo", ["TEMP", "MODE", "NOPE"], 20.0) == {
        "TEMP": value("TEMP", 2, 20.0, 2.0), "MODE": value("MODE", 1, 15.0, "ON"), "NOPE": None}
    assert store.at("demo", ["TEMP"], 19.999)["TEMP"].binary == 1.0
    assert store.at("demo", ["TEMP"], 30.0)["TEMP"].binary == 2.0
    assert store.at("demo", ["TEMP", "MODE"], 9.0) == {"TEMP": None, "MODE": None}


def test_deleteOlderThan(store):
    """Records (values and gaps) with timestamp < cutoff are deleted; the count returned."""
    store.insert([value("TEMP", i, float(i), 1.0) for i in range(10)] + [gap("TEMP", 99, 2.5)])
    assert store.deleteOlderThan(5.0) == 6
    assert [r.timestamp for r in store.query("demo", ["TEMP"])] == [5.0, 6.0, 7.0, 8.0, 9.0]
    assert store.deleteOlderThan(5.0) == 0


def test_deleteOlderThanEveryKeyword(store):
    """Old records of every service and keyword go; newer ones stay."""
    store.insert([value(keyword, i, float(i), 1.0, service=service)
                  for service in ("a", "b", "c") for keyword in ("X", "Y")
                  for i in range(4)])
    assert store.deleteOlderThan(2.0) == 12
    for service in ("a", "b", "c"):
        assert [r.timestamp for r in store.query(service, ["X", "Y"])] == [2.0, 2.0, 3.0, 3.0]


def test_deleteOlderThanLimit(store):
    """limit deletes at most that many per call, across keywords."""
    store.insert([value(keyword, i, float(i), 1.0) for keyword in ("TEMP", "MODE", "POS")
                  for i in range(10)])
    assert store.deleteOlderThan(8.0, limit=5) == 5
    assert store.deleteOlderThan(8.0, limit=10) == 10
    assert store.deleteOlderThan(8.0, limit=100) == 9
    assert store.deleteOlderThan(8.0, limit=5) == 0
    assert len(store.query("demo", ["TEMP", "MODE", "POS"])) == 6


def test_stats(store):
    """stats() counts records and sizes the data."""
    empty = store.stats()
    assert empty["records"] == 0
    store.insert([value("TEMP", i, 100.0 + i, float(i)) for i in range(1000)])
    full = store.stats()
    assert full["records"] == 1000
    assert full["bytes"] > empty["bytes"] > 0


def test_insertIsOneTransaction(store, url):
    """If the database refuses one record of a batch, none of the batch is stored."""
    if url.startswith("sqlite"):
        rawRows(url, "CREATE TRIGGER boom BEFORE INSERT ON keyword_values "
                     "WHEN NEW.keyword = 'BOOM' BEGIN SELECT RAISE(ABORT, 'boom'); END")
    else:
        rawRows(url, "CREATE FUNCTION boom() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN "
                     "IF NEW.keyword = 'BOOM' THEN RAISE EXCEPTION 'boom'; END IF; "
                     "RETURN NEW; END $$")
        rawRows(url, "CREATE TRIGGER boom BEFORE INSERT ON keyword_values "
                     "FOR EACH ROW EXECUTE FUNCTION boom()")
    with pytest.raises(ArchiveError, match="boom"):
        store.insert([value("TEMP", 1, 1.0, 1.0), value("TEMP", 2, 2.0, 2.0),
                      value("BOOM", 1, 3.0, 1.0), value("TEMP", 3, 4.0, 3.0)])
    assert store.query("demo", ["TEMP", "BOOM"]) == []
    store.insert([value("TEMP", 1, 1.0, 1.0)])
    assert len(store.query("demo", ["TEMP"])) == 1


# -- a day, and a restart ----------------------------------------------------------

DAY = 86400
START = 1767225600.0  # 2026-01-01T00:00:00Z


def dayRecords():
    """A day of 1 Hz updates of TEMP (float) and COUNT (int), in time order."""
    for second in range(DAY):
        stamp = START + second
        yield value("TEMP", second + 1, stamp, 20.0 + second / DAY, epoch="run")
        yield value("COUNT", second + 1, stamp + 0.5, second, epoch="run")


def test_dayOfUpdatesQueriedByHour(store):
    """86,400 updates of two keywords, in batches of 1,000: each hour's query is exact."""
    batch = []
    for record in dayRecords():
        batch.append(record)
        if len(batch) == 1000:
            store.insert(batch)
            batch = []
    store.insert(batch)
    assert store.stats()["records"] == 2 * DAY
    for hour in (0, 1, 11, 23):
        since = START + hour * 3600
        got = store.query("demo", ["TEMP", "COUNT"], since=since, until=since + 3600)
        # both ends included: 3601 TEMP (on the second), 3600 COUNT (on the half second),
        # but the last hour's end lies past the day
        temps = [r for r in got if r.keyword == "TEMP"]
        counts = [r for r in got if r.keyword == "COUNT"]
        assert len(temps) == (3601 if hour < 23 else 3600)
        assert len(counts) == 3600
        assert [r.sequence for r in temps] == list(range(hour * 3600 + 1,
                                                         hour * 3600 + 1 + len(temps)))
        assert [r.binary for r in counts] == list(range(hour * 3600, hour * 3600 + 3600))
        assert all(r.binary == 20.0 + (r.sequence - 1) / DAY for r in temps)
        assert [r.timestamp for r in got] == sorted(r.timestamp for r in got)
        assert got[0].timestamp == since and got[-1].timestamp <= since + 3600
    noon = store.at("demo", ["TEMP", "COUNT"], START + 12 * 3600 + 0.25)
    assert noon["TEMP"].sequence == 12 * 3600 + 1
    assert noon["COUNT"].binary == 12 * 3600 - 1


def test_twoEpochsOfOneKeyword(store):
    """A dispatcher restart (new epoch, sequences from 1 again) is kept apart, in time order."""
    first = [value("TEMP", i, 100.0 + i, float(i), epoch="1f2e-aaaaaaaaaaaa") for i in (1, 2, 3)]
    second = [value("TEMP", i, 110.0 + i, 10.0 + i, epoch="2a3b-bbbbbbbbbbbb") for i in (1, 2)]
    # the restart found one value lost before it (the re-read after it is stored too)
    lost = gap("TEMP", 4, 105.0, missed=1, epoch="1f2e-aaaaaaaaaaaa")
    store.insert(second + [lost] + first)
    got = store.query("demo", ["TEMP"])
    assert got == first + [lost] + second
    assert [(r.epoch[:4], r.sequence) for r in got] == [
        ("1f2e", 1), ("1f2e", 2), ("1f2e", 3), ("1f2e", 4), ("2a3b", 1), ("2a3b", 2)]
    assert store.at("demo", ["TEMP"], 109.0)["TEMP"] == first[-1]
    assert store.at("demo", ["TEMP"], 111.0)["TEMP"] == second[0]


# -- outages -----------------------------------------------------------------------


class SQLiteOutage:
    """Another connection holding SQLite's exclusive lock: writers (and, before the file is
    in WAL mode, everyone) wait for it, then fail."""

    def __init__(self, directory):
        self.url = "sqlite:///%s" % (os.path.join(directory, "archive.db"),)
        self._locker = None

    def open(self):
        opened = openStore(self.url)
        opened.busyTimeout = SHORT_BUSY
        return opened

    def takeDown(self):
        self._locker = sqlite3.connect(self.url[len("sqlite:///"):], isolation_level=None)
        self._locker.execute("BEGIN EXCLUSIVE")

    def bringBack(self):
        self._locker.execute("ROLLBACK")
        self._locker.close()
        self._locker = None


class PostgresDatabase:
    """A fresh database on the shared server."""

    def __init__(self, url):
        self.url = url

    def open(self):
        return openStore(self.url)


class PostgresOutage:
    """A PostgreSQL server of the test's own, shut down and started again (same data, port)."""

    def __init__(self, server):
        self.server = server
        self.url = server.createDatabase("archive")

    def open(self):
        return openStore(self.url)

    def takeDown(self):
        self.server.stop("immediate")

    def bringBack(self):
        self.server.start()


@pytest.fixture(params=BACKENDS)
def outage(request, tmp_path):
    """A database of each kind that the test can take away and bring back."""
    if request.param == "sqlite":
        made = SQLiteOutage(tmp_path)
        yield made
        if made._locker is not None:
            made.bringBack()
    else:
        yield PostgresOutage(request.getfixturevalue("privatePostgresServer"))


def test_unreachableThenBack(outage):
    """A database gone is an ArchiveError naming it (masked); once back, the next call works."""
    opened = outage.open()
    opened.insert([value("TEMP", 1, 1.0, 1.0)])
    outage.takeDown()
    with pytest.raises(ArchiveError) as caught:
        opened.insert([value("TEMP", 2, 2.0, 2.0)])
    message = str(caught.value)
    assert message.startswith("archive database %s: " % (maskUrl(outage.url),))
    assert "\n" not in message and pgserver.PostgresServer.password not in message
    outage.bringBack()
    opened.insert([value("TEMP", 2, 2.0, 2.0)])
    assert [r.sequence for r in opened.query("demo", ["TEMP"])] == [1, 2]
    opened.close()


def test_unreachableAtSetUp(outage):
    """setUp with the database away is an ArchiveError; setUp again once it is back works."""
    opened = outage.open()
    outage.takeDown()
    with pytest.raises(ArchiveError):
        opened.setUp()
    outage.bringBack()
    opened.setUp()
    opened.insert([value("TEMP", 1, 1.0, 1.0)])
    assert len(opened.query("demo", ["TEMP"])) == 1
    opened.close()


def test_sqliteDirectoryGoneThenBack(tmp_path):
    """A SQLite file whose directory vanished (an unmounted disk) fails, then works once back."""
    directory = tmp_path / "disk"
    directory.mkdir()
    opened = openStore("sqlite:///%s" % (directory / "archive.db",))
    shutil.rmtree(directory)
    with pytest.raises(ArchiveError, match="unable to open database file"):
        opened.setUp()
    directory.mkdir()
    opened.insert([value("TEMP", 1, 1.0, 1.0)])
    assert len(opened.query("demo", ["TEMP"])) == 1
    opened.close()


def test_closeThenUse(store):
    """A closed store connects again on its next call."""
    store.insert([value("TEMP", 1, 1.0, 1.0)])
    store.close()
    store.close()
    assert len(store.query("demo", ["TEMP"])) == 1


# -- AsyncStore --------------------------------------------------------------------


def recordThreads(store):
    """Note the thread each call of ``store`` runs in (the calls still run); the list of idents."""
    threads = []
    for name in ("setUp", "insert", "query", "at", "deleteOlderThan", "stats", "close"):
        method = getattr(store, name)

        def noted(*args, _method=method, **kwargs):
            threads.append(threading.get_ident())
            return _method(*args, **kwargs)
        setattr(store, name, noted)
    return threads


class AsyncStoreMixin:
    """AsyncStore on one kind of database; subclasses say which."""

    #: the tests that take the database away
    outageTests = ("test_failureIsArchiveErrorThenRecovers", "test_startFailsThenStartsAgain")

    def makeDatabase(self, outage):
        """The test's database: an outage object if ``outage``, else anything with ``open()``."""
        raise NotImplementedError

    def setUp(self):
        self.outage = self.makeDatabase(self._testMethodName in self.outageTests)
        self.store = self.outage.open()
        self.threads = recordThreads(self.store)
        self.asyncStore = AsyncStore(self.store, globalReactor)
        self.addCleanup(self.asyncStore.stop)

    @defer.inlineCallbacks
    def test_callsRunInOneWorkerThread(self):
        """Every call runs in the same thread, not the reactor's, and answers with a Deferred."""
        yield self.asyncStore.start()
        yield self.asyncStore.insert([value("TEMP", i, float(i), float(i)) for i in range(5)])
        got = yield self.asyncStore.query("demo", ["TEMP"], since=1.0, until=3.0)
        self.assertEqual([r.sequence for r in got], [1, 2, 3])
        at = yield self.asyncStore.at("demo", ["TEMP"], 2.5)
        self.assertEqual(at["TEMP"].sequence, 2)
        deleted = yield self.asyncStore.deleteOlderThan(2.0)
        self.assertEqual(deleted, 2)
        stats = yield self.asyncStore.stats()
        self.assertEqual(stats["records"], 3)
        yield self.asyncStore.stop()
        self.assertEqual(len(self.threads), 7)
        self.assertEqual(len(set(self.threads)), 1)
        self.assertNotEqual(self.threads[0], threading.get_ident())

    @defer.inlineCallbacks
    def test_callsRunInOrder(self):
        """Calls made together run in the order they were made."""
        yield self.asyncStore.start()
        inserts = [self.asyncStore.insert([value("TEMP", i, float(i), float(i))])
                   for i in range(20)]
        counted = self.asyncStore.query("demo", ["TEMP"])
        yield defer.gatherResults(inserts)
        self.assertEqual(len((yield counted)), 20)

    @defer.inlineCallbacks
    def test_deleteOlderThanInChunks(self):
        """deleteOlderThan deletes a long history chunk by chunk, and says how many in all."""
        self.asyncStore.deleteChunk = 3
        yield self.asyncStore.start()
        yield self.asyncStore.insert([value("TEMP", i, float(i), 1.0) for i in range(10)])
        deleted = yield self.asyncStore.deleteOlderThan(8.0)
        self.assertEqual(deleted, 8)
        self.assertEqual(self.threads.count(self.threads[-1]), len(self.threads))
        self.assertEqual(self.store.query("demo", ["TEMP"])[0].sequence, 8)

    @defer.inlineCallbacks
    def test_failureIsArchiveErrorThenRecovers(self):
        """A database gone fails the Deferred with ArchiveError; the next call once back works."""
        yield self.asyncStore.start()
        self.outage.takeDown()
        try:
            yield self.assertFailure(
                self.asyncStore.insert([value("TEMP", 1, 1.0, 1.0)]), ArchiveError)
        finally:
            self.outage.bringBack()
        yield self.asyncStore.insert([value("TEMP", 1, 1.0, 1.0)])
        got = yield self.asyncStore.query("demo", ["TEMP"])
        self.assertEqual(len(got), 1)

    @defer.inlineCallbacks
    def test_stopTwiceAndCallsAfter(self):
        """stop() is safe twice; calls after it, or a new start, fail with ArchiveError."""
        yield self.asyncStore.start()
        self.assertTrue(self.asyncStore.running)
        first, second = self.asyncStore.stop(), self.asyncStore.stop()
        yield defer.gatherResults([first, second])
        yield self.asyncStore.stop()
        self.assertFalse(self.asyncStore.running)
        yield self.assertFailure(self.asyncStore.insert([]), ArchiveError)
        yield self.assertFailure(self.asyncStore.start(), ArchiveError)
        self.assertEqual(self.threads[-1:], [self.threads[0]])  # close ran in the worker

    @defer.inlineCallbacks
    def test_callBeforeStart(self):
        """A call before start() fails with ArchiveError saying so; stop() needs no start."""
        failure = yield self.assertFailure(self.asyncStore.query("demo", ["TEMP"]), ArchiveError)
        self.assertIn("not started", str(failure))
        yield self.asyncStore.stop()

    @defer.inlineCallbacks
    def test_startFailsThenStartsAgain(self):
        """start() while the database is away fails with ArchiveError; started again, it works."""
        self.outage.takeDown()
        try:
            yield self.assertFailure(self.asyncStore.start(), ArchiveError)
        finally:
            self.outage.bringBack()
        yield self.asyncStore.start()
        yield self.asyncStore.insert([value("TEMP", 1, 1.0, 1.0)])


def test_reactorShutdownStopsStore(tmp_path):
    """A program that ends with its AsyncStore running exits, the insert in flight stored."""
    url = "sqlite:///%s" % (tmp_path / "archive.db",)
    program = textwrap.dedent("""
        import sys
        from twisted.internet import defer, task
        from cauldron.archive.store import AsyncStore, Record, openStore

        @defer.inlineCallbacks
        def main(reactor):
            archive = AsyncStore(openStore(sys.argv[1]), reactor)
            yield archive.start()
            archive.insert([Record("demo", "TEMP", "e1", 1, 1.0, 2.5, "2.5")])
        task.react(main)
    """)
    result = subprocess.run([sys.executable, "-c", program, url], env=environment(),
                            capture_output=True, text=True, timeout=DEADLINE)
    assert result.returncode == 0, result.stderr
    assert [r.binary for r in openStore(url).query("demo", ["TEMP"])] == [2.5]


class SQLiteAsyncStoreTests(AsyncStoreMixin, unittest.TestCase):
    """AsyncStore on a SQLite file."""

    def makeDatabase(self, outage):
        # not trial's mktemp(): under pytest it makes folders in the checkout
        directory = tempfile.mkdtemp(prefix="cauldron-test-")
        self.addCleanup(shutil.rmtree, directory, ignore_errors=True)
        return SQLiteOutage(directory)


class PostgresAsyncStoreTests(AsyncStoreMixin, unittest.TestCase):
    """AsyncStore on a PostgreSQL server of the test's own."""

    def makeDatabase(self, outage):
        if outage:
            return PostgresOutage(pgserver.privateServer(self))
        return PostgresDatabase(pgserver.freshDatabase(self))
