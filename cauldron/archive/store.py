"""Where the archive keeps keyword history: one schema, in SQLite or PostgreSQL.

:func:`openStore` turns a database URL into a :class:`Store`, a blocking
object used from one thread at a time; :class:`AsyncStore` runs a store's
calls in a worker thread of its own and answers with Deferreds, so the
reactor never waits for the database.

URLs:

* ``sqlite:///PATH``: a SQLite file, ``PATH`` relative to the working
  directory; ``sqlite:////var/lib/cauldron/archive.db`` (four slashes) is an
  absolute path, as in SQLAlchemy.  The file's directory must exist.  The
  file is opened in WAL mode with ``synchronous=NORMAL`` (a power cut may
  lose the last transactions, never corrupt the file) and waits up to
  ``busy_timeout`` for another writer's lock.
* ``postgresql://USER:PASSWORD@HOST:PORT/DATABASE`` (``postgres://`` too, and
  libpq's other forms such as ``postgresql:///DATABASE?host=/run/postgresql``),
  with the driver from the ``postgres`` extra:
  ``pip install 'cauldron[postgres]'``.

Schema (version 1; both databases; the SQL that makes it is
:data:`SCHEMA_SQLITE` and :data:`SCHEMA_POSTGRESQL`)::

    schema_version   version integer            -- one row: 1

    keyword_values   one row per stored update, or per gap
      id           integer primary key (SQLite) / bigint identity (PostgreSQL)
      stamp        double precision  the dispatcher's timestamp, Unix seconds (UTC)
      sequence     bigint     per keyword and run; for a gap, the first missing
      missed       bigint     for a gap: values lost (0: unknown); 0 for a value
      num          double precision  bool (0/1), int, float values; NULL otherwise
                                     (and for a float NaN in SQLite)
      service      text       lower case
      dispatcher   text       the dispatcher's name in the service ('' = the service's)
      keyword      text       upper case
      epoch        text       the dispatcher run that published it ('' if unknown)
      kind         text       'value' or 'gap'
      value_type   text       'null' 'bool' 'int' 'float' 'str' or 'json'
      text_value   text       str values; the exact digits of an int beyond 2**53
                              (num then holds it rounded); JSON with NaN/Infinity
      json         text (SQLite) / json (PostgreSQL)  lists and other values
      ascii        text       the formatted value

    index keyword_values_lookup  (service, keyword, stamp)   -- the only index

Time is the ``stamp`` double in both databases: one column and one index
serve both, and a PostgreSQL query shows it as a time with
``to_timestamp(stamp)``.  A generated ``timestamptz`` column would cost
every row 8 more bytes for what that expression gives.

There is no index on ``stamp`` alone.  Every query the store makes names
the service and keyword, so the lookup index serves it, and with no other
index to choose, PostgreSQL's planner cannot take a backward scan of all
recent rows for the latest value of a keyword that has been quiet for a
week.  Retention deletes keyword by keyword through the same index (it
finds the (service, keyword) pairs by seeking in it, one step per pair).
Each update thus costs one index entry, not two: measured by
``bench/archive.py`` (doubles, 50 keywords), 113 bytes per update in
SQLite and 227 in PostgreSQL, table and index together.

Lists go to PostgreSQL's ``json`` type, not ``jsonb``: ``jsonb`` keeps
numbers as ``numeric`` and gives ``1e+300`` back as an integer, which would
change a double array's values; ``json`` keeps the text as written.

Text is stored as it is, except a text that starts with ``"`` or holds a
NUL character (which PostgreSQL text cannot hold) or an unpaired surrogate:
such a text is stored as its JSON string literal (starting with ``"``), and
read back as the text it stands for.  A string value ``a`` is thus found
with ``text_value = 'a'``.

:meth:`Store.insert` stores whatever records it is given (it stores, it does
not judge): a timestamp that is not a finite number is stored as 0.0, and
sequence and missed counts are clipped to 64 bits.  It raises
:class:`~cauldron.errors.ArchiveError` only when the database fails.

Common questions, in SQL (either database)::

    -- TEMP of service demo over an hour
    SELECT stamp, num, ascii FROM keyword_values
     WHERE service = 'demo' AND keyword = 'TEMP'
       AND stamp BETWEEN 1767225600 AND 1767229200 ORDER BY stamp;
    -- its value at an instant
    SELECT num, ascii FROM keyword_values
     WHERE service = 'demo' AND keyword = 'TEMP' AND kind = 'value'
       AND stamp <= 1767225600 ORDER BY stamp DESC LIMIT 1;
    -- where values were lost
    SELECT service, keyword, stamp, epoch, sequence, missed
      FROM keyword_values WHERE kind = 'gap';
"""

import dataclasses
import json
import math
import numbers
import os
import re
import sqlite3
import urllib.parse

from twisted.internet import defer
from twisted.internet.threads import deferToThreadPool
from twisted.logger import Logger
from twisted.python.threadpool import ThreadPool

from cauldron.errors import ArchiveError, ConfigError

__all__ = [
    "Record",
    "Store",
    "SQLiteStore",
    "PostgresStore",
    "AsyncStore",
    "ArchiveError",
    "openStore",
    "maskUrl",
    "SCHEMA_VERSION",
    "SCHEMA_SQLITE",
    "SCHEMA_POSTGRESQL",
]

#: the schema version this code writes and reads
SCHEMA_VERSION = 1

#: SQLite's schema (version 1)
SCHEMA_SQLITE = """\
CREATE TABLE IF NOT EXISTS schema_version (version integer NOT NULL);
CREATE TABLE IF NOT EXISTS keyword_values (
    id          integer PRIMARY KEY,
    stamp       double precision NOT NULL,
    sequence    bigint NOT NULL,
    missed      bigint NOT NULL DEFAULT 0,
    num         double precision,
    service     text NOT NULL,
    dispatcher  text NOT NULL DEFAULT '',
    keyword     text NOT NULL,
    epoch       text NOT NULL,
    kind        text NOT NULL DEFAULT 'value',
    value_type  text NOT NULL,
    text_value  text,
    json        text,
    ascii       text NOT NULL DEFAULT ''
);
CREATE INDEX IF NOT EXISTS keyword_values_lookup ON keyword_values (service, keyword, stamp);
"""

#: PostgreSQL's schema (version 1): SQLite's, but for the types of id and json
SCHEMA_POSTGRESQL = (
    SCHEMA_SQLITE
    .replace("id          integer PRIMARY KEY",
             "id          bigint GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY")
    .replace("json        text", "json        json")
)

_VERSION_TABLE = "CREATE TABLE IF NOT EXISTS schema_version (version integer NOT NULL)"

#: the stored columns, in the order :func:`_row` gives them
_COLUMNS = ("stamp", "sequence", "missed", "num", "service", "dispatcher", "keyword",
            "epoch", "kind", "value_type", "text_value", "json", "ascii")
#: what queries select, in the order :func:`_record` takes them
_SELECTED = ("service, keyword, epoch, sequence, stamp, value_type, num, text_value, json, "
             "ascii, kind, missed, dispatcher")
_ORDER = "stamp, epoch, sequence, id"

#: the PostgreSQL advisory lock held while the schema is made ("cauld")
_SCHEMA_LOCK = 0x636175_6C64
_INT64_MIN, _INT64_MAX = -(2**63), 2**63 - 1
#: integers a double holds exactly
_EXACT = 2**53

_ACCEPTED = ("use sqlite:///PATH (relative; sqlite:////PATH for an absolute path) or "
             "postgresql://USER:PASSWORD@HOST:PORT/DATABASE")
_NEEDS_EXTRA = "postgresql:// needs the postgres extra: pip install 'cauldron[postgres]'"


@dataclasses.dataclass(frozen=True, slots=True)
class Record:
    """One stored update of a keyword, or one gap (values known to be lost).

    :ivar service: the service name, lower case.
    :ivar keyword: the keyword name, upper case.
    :ivar epoch: the dispatcher run that published it ("" for a gap whose
        run is unknown).
    :ivar sequence: the per-keyword, per-run sequence number; for a gap, the
        first sequence number missing.
    :ivar timestamp: the dispatcher's timestamp, seconds since the Unix
        epoch (UTC).
    :ivar binary: the value: None, bool, int, float, str, or a list of those.
    :ivar ascii: the formatted value.
    :ivar kind: ``"value"`` or ``"gap"``.
    :ivar missed: for a gap, how many values were lost (0: unknown).
    :ivar dispatcher: the dispatcher's name within the service ("": the
        service's own name).
    """

    service: str
    keyword: str
    epoch: str
    sequence: int
    timestamp: float
    binary: object = None
    ascii: str = ""
    kind: str = "value"
    missed: int = 0
    dispatcher: str = ""


def maskUrl(url):
    """``url`` with its password (in the user part or a ``password=`` option) shown as ``***``."""
    url = re.sub(r"^([A-Za-z][A-Za-z0-9+.-]*://[^/?#@:]*:)[^/?#@]*@", r"\1***@", url)
    return re.sub(r"([?&]password=)[^&#]*", r"\1***", url)


def _password(url):
    """The password a URL holds, or None (to keep it out of messages)."""
    try:
        parts = urllib.parse.urlsplit(url)
        if parts.password:
            return parts.password
        return urllib.parse.parse_qs(parts.query).get("password", [None])[-1]
    except ValueError:
        return None


def openStore(url):
    """The store a database URL names (not connected yet: call :meth:`Store.setUp`).

    ``sqlite:///PATH`` (relative; ``sqlite:////PATH`` is absolute) or
    ``postgresql://USER:PASSWORD@HOST:PORT/DATABASE`` (also ``postgres://``
    and libpq's ``?host=/socket/directory`` form).

    :raises ConfigError: naming the URL (password masked) when it is none of
        these, the SQLite file's directory does not exist, or the PostgreSQL
        driver is not installed.
    """
    if not isinstance(url, str):
        raise ConfigError("archive database %r: not a database URL; %s" % (url, _ACCEPTED))
    masked = maskUrl(url)
    scheme = url.split(":", 1)[0].lower() if ":" in url else ""
    if scheme == "sqlite":
        return SQLiteStore(_sqlitePath(url, masked), url=url)
    if scheme in ("postgresql", "postgres") and url[len(scheme):].startswith("://"):
        return PostgresStore(url)
    raise ConfigError("archive database %s: not a database URL; %s" % (masked, _ACCEPTED))


def _sqlitePath(url, masked):
    """The absolute path a ``sqlite:///`` URL names; ConfigError if it names none usable."""
    prefix = "sqlite:///"
    if not url.lower().startswith(prefix) or len(url) == len(prefix):
        raise ConfigError("archive database %s: a SQLite URL has three slashes and a path; %s"
                          % (masked, _ACCEPTED))
    path = url[len(prefix):]
    if "?" in path:
        raise ConfigError("archive database %s: a SQLite URL takes no options" % (masked,))
    if path == ":memory:":
        raise ConfigError("archive database %s: an archive in memory is lost at exit; "
                          "name a file" % (masked,))
    path = os.path.abspath(path)
    if os.path.isdir(path):
        raise ConfigError("archive database %s: %s is a directory, not a file" % (masked, path))
    directory = os.path.dirname(path)
    if not os.path.isdir(directory):
        raise ConfigError("archive database %s: directory %s does not exist"
                          % (masked, directory))
    return path


# -- values in columns -------------------------------------------------------------


def _encodeText(text):
    """``text`` as stored: itself, or its JSON literal if it starts with ``"``, holds NUL, or
    an unpaired surrogate."""
    if text.isascii():
        if "\x00" not in text and not text.startswith('"'):
            return text
    elif not text.startswith('"') and "\x00" not in text:
        try:
            text.encode("utf-8")
            return text
        except UnicodeEncodeError:
            pass
    return json.dumps(text)


def _decodeText(text):
    """The text a stored text stands for (see :func:`_encodeText`)."""
    if text.startswith('"'):
        return json.loads(text)
    return text


def _anyText(value):
    return _encodeText(value if type(value) is str else str(value))


def _encodeValue(value):
    """``(value_type, num, text_value, json)`` for a binary value."""
    kind = type(value)
    if value is None:
        return "null", None, None, None
    if kind is float:
        return "float", value, None, None
    if kind is bool:
        return "bool", 1.0 if value else 0.0, None, None
    if kind is int:
        if -_EXACT <= value <= _EXACT:
            return "int", value, None, None
        try:
            rounded = float(value)
        except OverflowError:
            rounded = None
        return "int", rounded, str(value), None
    if kind is str:
        return "str", None, _encodeText(value), None
    # subclasses and other number types (an IntEnum, numpy's) are stored as the base type
    for base, abstract in ((bool, bool), (int, numbers.Integral), (float, numbers.Real),
                           (str, str)):
        if isinstance(value, abstract):
            return _encodeValue(base(value))
    try:
        text = json.dumps(value, allow_nan=False, separators=(",", ":"), default=str)
    except ValueError:  # NaN or an infinity inside: not JSON, but Python's json reads it
        return "json", None, json.dumps(value, separators=(",", ":"), default=str), None
    return "json", None, None, text


def _decodeValue(valueType, num, textValue, jsonText):
    if valueType == "float":
        return math.nan if num is None else float(num)
    if valueType == "int":
        return int(textValue) if textValue is not None else int(num)
    if valueType == "bool":
        return bool(num)
    if valueType == "str":
        return _decodeText(textValue)
    if valueType == "json":
        return json.loads(jsonText if jsonText is not None else textValue)
    return None


def _int64(value):
    value = int(value)
    return _INT64_MIN if value < _INT64_MIN else _INT64_MAX if value > _INT64_MAX else value


def _stamp(value):
    try:
        value = float(value)
    except (TypeError, ValueError):
        return 0.0
    return value if math.isfinite(value) else 0.0


def _row(record):
    """A record's column values, in :data:`_COLUMNS` order."""
    valueType, num, textValue, jsonText = _encodeValue(record.binary)
    return (
        _stamp(record.timestamp),
        _int64(record.sequence),
        _int64(record.missed),
        num,
        _anyText(record.service).lower(),
        _anyText(record.dispatcher),
        _anyText(record.keyword).upper(),
        _anyText(record.epoch),
        "gap" if record.kind == "gap" else "value",
        valueType,
        textValue,
        jsonText,
        _anyText(record.ascii),
    )


def _record(row):
    """The record a selected row (:data:`_SELECTED` order) stands for."""
    (service, keyword, epoch, sequence, stamp, valueType, num, textValue, jsonText,
     ascii, kind, missed, dispatcher) = row
    return Record(
        _decodeText(service), _decodeText(keyword), _decodeText(epoch), sequence, stamp,
        _decodeValue(valueType, num, textValue, jsonText), _decodeText(ascii), kind, missed,
        _decodeText(dispatcher),
    )


def _oneLine(error):
    """A driver error's message on one line."""
    text = " ".join(str(error).split())
    return text or type(error).__name__


# -- stores ------------------------------------------------------------------------


class Store:
    """A keyword archive in a database: blocking calls, from one thread at a time.

    Each call connects first if the store is not connected (at the first call,
    or after a failure): a store that raised :class:`ArchiveError` because
    the database went away works again once it is back.  Every call that
    fails in the database raises :class:`ArchiveError` naming :attr:`url`.

    :ivar url: the database URL, password masked (for messages).
    """

    #: the placeholder of the driver's parameter style
    _placeholder = "?"

    def __init__(self, url):
        self.url = maskUrl(url)
        self._password = _password(url)
        self._connection = None

    # the database's own part

    def _connect(self):
        """A new connection to the database (driver errors pass through)."""
        raise NotImplementedError

    def _driverErrors(self):
        """The exception classes the driver raises for database failures."""
        raise NotImplementedError

    def _createSchema(self, connection):
        """Create the schema from nothing, in the transaction the caller holds."""
        raise NotImplementedError

    def _write(self, connection):
        """A context manager: one write transaction on ``connection``."""
        raise NotImplementedError

    def _insertRows(self, connection, rows):
        raise NotImplementedError

    def _stats(self, connection):
        raise NotImplementedError

    # the common part

    def _sql(self, text):
        return text if self._placeholder == "?" else text.replace("?", self._placeholder)

    def _fail(self, error):
        """Forget the connection (the next call reconnects); the ArchiveError to raise."""
        self._discard()
        message = _oneLine(error)
        if self._password:
            message = message.replace(self._password, "***")
        return ArchiveError("archive database %s: %s" % (self.url, message))

    def _discard(self):
        connection, self._connection = self._connection, None
        if connection is not None:
            try:
                connection.close()
            except Exception:
                pass  # it is being thrown away

    def _run(self, work, *args):
        """``work(connection, *args)`` on a connection with the schema in place."""
        errors = self._driverErrors()
        try:
            if self._connection is None:
                connection = self._connect()
                try:
                    self._ensureSchema(connection)
                except BaseException:
                    connection.close()
                    raise
                self._connection = connection
            return work(self._connection, *args)
        except errors as e:
            raise self._fail(e) from e

    def _ensureSchema(self, connection):
        """Create or migrate the schema if it is not this code's version."""
        if self._existingVersion(connection) == SCHEMA_VERSION:
            return
        with self._write(connection):
            self._lockSchema(connection)
            cursor = connection.cursor()
            cursor.execute(_VERSION_TABLE)
            cursor.execute("SELECT max(version) FROM schema_version")
            version = cursor.fetchone()[0] or 0
            if version > SCHEMA_VERSION:
                raise ArchiveError(
                    "archive database %s: schema version %d is newer than this cauldron's (%d); "
                    "upgrade cauldron" % (self.url, version, SCHEMA_VERSION))
            if version < 1:
                self._createSchema(connection)
                cursor.execute("DELETE FROM schema_version")
                cursor.execute(self._sql("INSERT INTO schema_version (version) VALUES (?)"),
                               (SCHEMA_VERSION,))
            # migrations from version n to n+1 will go here, in order

    def _lockSchema(self, connection):
        """Within the write transaction: keep other stores from changing the schema too."""

    def _existingVersion(self, connection):
        """The schema version, read without taking a write lock (0 if there is none)."""
        raise NotImplementedError

    # the API

    def setUp(self):
        """Connect, and create or migrate the schema (a second call changes nothing)."""
        self._run(lambda connection: None)

    def insert(self, records):
        """Store ``records`` (:class:`Record`), all in one transaction."""
        rows = [_row(record) for record in records]
        if rows:
            self._run(self._insertRows, rows)

    def query(self, service, keywords, since=None, until=None, limit=None):
        """The records of ``keywords`` of ``service`` with ``since <= timestamp <= until``.

        Gaps included; ordered by (timestamp, epoch, sequence); names in any
        case; ``None`` leaves a bound open; ``limit`` keeps the first ones.
        """
        if isinstance(keywords, str):
            keywords = [keywords]
        names = [_encodeText(keyword.upper()) for keyword in keywords]
        if not names:
            return []
        sql = ["SELECT %s FROM keyword_values WHERE service = ? AND keyword IN (%s)"
               % (_SELECTED, ", ".join("?" * len(names)))]
        parameters = [_encodeText(service.lower()), *names]
        if since is not None:
            sql.append("AND stamp >= ?")
            parameters.append(float(since))
        if until is not None:
            sql.append("AND stamp <= ?")
            parameters.append(float(until))
        sql.append("ORDER BY %s" % (_ORDER,))
        if limit is not None:
            sql.append("LIMIT ?")
            parameters.append(max(0, int(limit)))
        return self._run(self._select, " ".join(sql), parameters)

    def _select(self, connection, sql, parameters):
        cursor = connection.cursor()
        cursor.execute(self._sql(sql), parameters)
        return [_record(row) for row in cursor.fetchall()]

    def at(self, service, keywords, when):
        """Each keyword's latest value record with ``timestamp <= when`` (None if none).

        Gaps are passed over.  Keys are the keyword names, upper case.
        """
        sql = ("SELECT %s FROM keyword_values WHERE service = ? AND keyword = ? "
               "AND kind = 'value' AND stamp <= ? "
               "ORDER BY stamp DESC, epoch DESC, sequence DESC, id DESC LIMIT 1" % (_SELECTED,))
        if isinstance(keywords, str):
            keywords = [keywords]
        found = {}
        service = _encodeText(service.lower())
        for keyword in keywords:
            name = keyword.upper()
            rows = self._run(self._select, sql, (service, _encodeText(name), float(when)))
            found[name] = rows[0] if rows else None
        return found

    def deleteOlderThan(self, cutoff, limit=None):
        """Delete the records with ``timestamp < cutoff``; how many were deleted.

        ``limit`` deletes at most that many, so a caller can delete a long
        history in short transactions.  One transaction per call.
        """
        return self._run(self._delete, float(cutoff), None if limit is None else int(limit))

    def _delete(self, connection, cutoff, limit):
        everything = self._sql("DELETE FROM keyword_values "
                               "WHERE service = ? AND keyword = ? AND stamp < ?")
        some = self._sql(self._deleteSomeSql)
        total = 0
        with self._write(connection):
            cursor = connection.cursor()
            for service, keyword in self._pairs(connection):
                if limit is None:
                    cursor.execute(everything, (service, keyword, cutoff))
                elif total >= limit:
                    break
                else:
                    cursor.execute(some, (service, keyword, cutoff, limit - total))
                total += cursor.rowcount
        return total

    #: deletes at most a number of a keyword's old records
    _deleteSomeSql = ("DELETE FROM keyword_values WHERE id IN (SELECT id FROM keyword_values "
                      "WHERE service = ? AND keyword = ? AND stamp < ? LIMIT ?)")

    def _pairs(self, connection):
        """Every stored (service, keyword), in order: one seek in the lookup index each."""
        cursor = connection.cursor()
        cursor.execute("SELECT service, keyword FROM keyword_values "
                       "ORDER BY service, keyword LIMIT 1")
        following = self._sql("SELECT service, keyword FROM keyword_values "
                              "WHERE (service, keyword) > (?, ?) "
                              "ORDER BY service, keyword LIMIT 1")
        row = cursor.fetchone()
        while row is not None:
            yield row
            cursor.execute(following, tuple(row))
            row = cursor.fetchone()

    def stats(self):
        """``{"records": n, "bytes": size}``.

        ``bytes`` is the size of the archive's data with its index: the
        SQLite database's pages (SQLite adds ``walBytes``, the write-ahead
        log's file, a few MiB at most), PostgreSQL's table with its indexes
        and TOAST.  Counting reads every index entry: not for every second.
        """
        return self._run(self._stats)

    def _count(self, connection):
        cursor = connection.cursor()
        cursor.execute("SELECT count(*) FROM keyword_values")
        return {"records": cursor.fetchone()[0]}

    def close(self):
        """Disconnect (a later call connects again)."""
        self._discard()

    def __repr__(self):
        return "<%s %s>" % (type(self).__name__, self.url)


class _SQLiteWrite:
    """One SQLite write transaction: ``BEGIN IMMEDIATE`` (the write lock at once) ... COMMIT."""

    def __init__(self, connection):
        self._connection = connection

    def __enter__(self):
        self._connection.execute("BEGIN IMMEDIATE")

    def __exit__(self, kind, value, traceback):
        if kind is None:
            self._connection.execute("COMMIT")
        elif self._connection.in_transaction:
            self._connection.execute("ROLLBACK")


class SQLiteStore(Store):
    """The archive in a SQLite file (WAL mode, ``synchronous=NORMAL``).

    :param path: the file (made if missing; its directory must exist).
    :param url: the URL it was named by, for messages (default: built from
        ``path``).
    :param busyTimeout: seconds a call waits for another writer's lock
        before it fails.
    """

    def __init__(self, path, url=None, busyTimeout=5.0):
        super().__init__(url or "sqlite:///" + path)
        self.path = path
        self.busyTimeout = busyTimeout

    def _driverErrors(self):
        return (sqlite3.Error,)

    def _connect(self):
        # Autocommit mode: transactions are begun and ended here, explicitly.
        connection = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False,
                                     timeout=self.busyTimeout)
        try:
            connection.execute("PRAGMA busy_timeout = %d" % (int(self.busyTimeout * 1000),))
            mode = connection.execute("PRAGMA journal_mode = WAL").fetchone()[0]
            if mode.lower() != "wal":
                raise sqlite3.OperationalError("cannot use write-ahead logging (journal mode %s)"
                                               % (mode,))
            connection.execute("PRAGMA synchronous = NORMAL")
        except BaseException:
            connection.close()
            raise
        return connection

    def _write(self, connection):
        return _SQLiteWrite(connection)

    def _existingVersion(self, connection):
        found = connection.execute(
            "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'schema_version'"
        ).fetchone()
        if not found:
            return 0
        (version,) = connection.execute("SELECT max(version) FROM schema_version").fetchone()
        return version or 0

    def _createSchema(self, connection):
        for statement in SCHEMA_SQLITE.split(";"):
            if statement.strip():
                connection.execute(statement)

    _insertSql = "INSERT INTO keyword_values (%s) VALUES (%s)" % (
        ", ".join(_COLUMNS), ", ".join("?" * len(_COLUMNS)))

    def _insertRows(self, connection, rows):
        with self._write(connection):
            connection.executemany(self._insertSql, rows)

    def _stats(self, connection):
        found = self._count(connection)
        (pages,) = connection.execute("PRAGMA page_count").fetchone()
        (pageSize,) = connection.execute("PRAGMA page_size").fetchone()
        found["bytes"] = pages * pageSize
        try:
            found["walBytes"] = os.path.getsize(self.path + "-wal")
        except OSError:
            found["walBytes"] = 0
        return found


class PostgresStore(Store):
    """The archive in a PostgreSQL database, through psycopg 3.

    Rows go in with ``COPY`` (several times faster than ``executemany``
    here).  The connection asks for TCP keepalives and a 10 s connect timeout
    unless the URL says otherwise, so a database host that vanishes fails
    a call within about half a minute instead of hanging the worker thread.

    :raises ConfigError: if psycopg is not installed or the URL does not parse.
    """

    _placeholder = "%s"
    #: libpq settings used unless the URL sets them
    DEFAULTS = {
        "connect_timeout": "10",
        "keepalives": "1",
        "keepalives_idle": "10",
        "keepalives_interval": "5",
        "keepalives_count": "3",
        "tcp_user_timeout": "30000",
        "application_name": "cauldron-archive",
    }

    def __init__(self, url):
        super().__init__(url)
        try:
            import psycopg
            import psycopg.conninfo
        except ImportError:
            raise ConfigError("archive database %s: %s" % (self.url, _NEEDS_EXTRA)) from None
        self._psycopg = psycopg
        try:
            settings = psycopg.conninfo.conninfo_to_dict(url)
        except psycopg.Error as e:
            message = _oneLine(e)
            if self._password:
                message = message.replace(self._password, "***")
            raise ConfigError("archive database %s: %s; %s" % (self.url, message, _ACCEPTED)
                              ) from None
        self._settings = {**self.DEFAULTS, **settings}

    def _driverErrors(self):
        return (self._psycopg.Error,)

    def _connect(self):
        from psycopg.types.string import TextLoader

        connection = self._psycopg.connect(autocommit=True, **self._settings)
        # json values come back as the text stored, decoded here as SQLite's are
        connection.adapters.register_loader("json", TextLoader)
        return connection

    def _write(self, connection):
        return connection.transaction()

    def _existingVersion(self, connection):
        cursor = connection.cursor()
        cursor.execute("SELECT to_regclass('schema_version') IS NOT NULL")
        if not cursor.fetchone()[0]:
            return 0
        cursor.execute("SELECT max(version) FROM schema_version")
        return cursor.fetchone()[0] or 0

    def _lockSchema(self, connection):
        # two archivers starting together: one makes the schema, the other waits for it
        connection.execute("SELECT pg_advisory_xact_lock(%s)", (_SCHEMA_LOCK,))

    def _createSchema(self, connection):
        cursor = connection.cursor()
        for statement in SCHEMA_POSTGRESQL.split(";"):
            if statement.strip():
                cursor.execute(statement)

    # "IN (SELECT ...)" may be planned as a scan of the whole table; an array of ids is
    # looked up in the primary key
    _deleteSomeSql = ("DELETE FROM keyword_values WHERE id = ANY (ARRAY(SELECT id "
                      "FROM keyword_values WHERE service = ? AND keyword = ? AND stamp < ? "
                      "LIMIT ?))")

    _copySql = "COPY keyword_values (%s) FROM STDIN" % (", ".join(_COLUMNS),)

    def _insertRows(self, connection, rows):
        with connection.transaction():
            cursor = connection.cursor()
            with cursor.copy(self._copySql) as copy:
                for row in rows:
                    copy.write_row(row)

    def _stats(self, connection):
        found = self._count(connection)
        cursor = connection.cursor()
        cursor.execute("SELECT pg_total_relation_size('keyword_values')")
        found["bytes"] = cursor.fetchone()[0]
        return found


# -- the Twisted face --------------------------------------------------------------


class AsyncStore:
    """A :class:`Store` whose every call runs in one worker thread of its own.

    Calls run one at a time, in the order they were made, never on the
    reactor thread; each returns a Deferred firing with the store's result
    (or failing with its :class:`ArchiveError`).  :meth:`start` before the
    first call, :meth:`stop` after the last; the reactor's shutdown stops a
    store still running.

    :param store: the :class:`Store` to run.
    :param reactor: the reactor to answer on.
    """

    log = Logger()
    #: records :meth:`deleteOlderThan` deletes per transaction
    deleteChunk = 10000

    def __init__(self, store, reactor):
        self.store = store
        self._reactor = reactor
        self._pool = None
        self._shutdownTrigger = None
        self._stopped = None  # the Deferred of the first stop()
        self._stopWaiters = None

    def start(self):
        """Start the worker thread, then :meth:`Store.setUp` in it; fires when set up.

        If setting up fails the thread stays, and ``start()`` may be called again.
        """
        if self._stopped is not None:
            return defer.fail(self._notRunning())
        if self._pool is None:
            self._pool = ThreadPool(1, 1, name="cauldron-archive")
            self._pool.start()
            # "before": the reactor waits for the Deferred of a trigger of that phase
            self._shutdownTrigger = self._reactor.addSystemEventTrigger(
                "before", "shutdown", self._reactorShutdown)
        return self._call(self.store.setUp)

    def _notRunning(self):
        state = "stopped" if self._stopped is not None else "not started"
        return ArchiveError("archive database %s: the store is %s" % (self.store.url, state))

    def _call(self, work, *args, **kwargs):
        if self._pool is None or self._stopped is not None:
            return defer.fail(self._notRunning())
        return deferToThreadPool(self._reactor, self._pool, work, *args, **kwargs)

    def insert(self, records):
        """:meth:`Store.insert` in the worker thread."""
        return self._call(self.store.insert, list(records))

    def query(self, *args, **kwargs):
        """:meth:`Store.query` in the worker thread."""
        return self._call(self.store.query, *args, **kwargs)

    def at(self, *args, **kwargs):
        """:meth:`Store.at` in the worker thread."""
        return self._call(self.store.at, *args, **kwargs)

    def stats(self):
        """:meth:`Store.stats` in the worker thread."""
        return self._call(self.store.stats)

    @defer.inlineCallbacks
    def deleteOlderThan(self, cutoff):
        """:meth:`Store.deleteOlderThan`, in transactions of :attr:`deleteChunk` records.

        Other calls made meanwhile run between the chunks, so a long history
        being deleted holds up inserts for one chunk at a time.  Fires with
        how many were deleted.
        """
        total = 0
        while True:
            deleted = yield self._call(self.store.deleteOlderThan, cutoff, self.deleteChunk)
            total += deleted
            if deleted < self.deleteChunk:
                return total

    def stop(self):
        """Close the store in the worker thread, then end the thread; safe to call twice.

        Calls made before run first; calls made after fail with ArchiveError.
        """
        if self._stopped is None:
            self._stopWaiters = []
            if self._shutdownTrigger is not None:
                self._reactor.removeSystemEventTrigger(self._shutdownTrigger)
                self._shutdownTrigger = None
            self._stopped = self._stop()
            self._stopped.addBoth(self._fireStopWaiters)
        if self._stopWaiters is None:
            return defer.succeed(None)
        waiter = defer.Deferred()
        self._stopWaiters.append(waiter)
        return waiter

    def _stop(self):
        pool = self._pool
        if pool is None:
            return defer.succeed(None)
        d = deferToThreadPool(self._reactor, pool, self.store.close)

        def _ebClose(failure):
            self.log.failure("archive database {url}: closing failed", failure,
                             url=self.store.url)

        def _cbStopPool(_):
            # the queue is empty and the thread idle: this join is immediate
            pool.stop()
        d.addErrback(_ebClose)
        d.addCallback(_cbStopPool)
        return d

    def _fireStopWaiters(self, result):
        waiters, self._stopWaiters = self._stopWaiters, None
        for waiter in waiters:
            waiter.callback(None)

    def _reactorShutdown(self):
        self._shutdownTrigger = None
        return self.stop()

    @property
    def running(self):
        """True between :meth:`start` and :meth:`stop`."""
        return self._pool is not None and self._stopped is None

    def __repr__(self):
        return "<AsyncStore %s%s>" % (self.store.url, "" if self.running else " (not running)")
