"""Persistent keywords: values kept across restarts in a local SQLite state file.

A keyword made with ``persist=True`` (``persist = true`` in a keyword file)
keeps its value across restarts of its dispatcher.  When such a dispatcher
starts, it opens one :class:`StateFile`: each persisted keyword begins from
the value the file holds for it (see :meth:`StateFile.begin`), or from its
``initial`` value when there is none or the keyword no longer accepts it.
From then on, every change of a persisted keyword is saved.

Saving costs the reactor almost nothing and never waits on the disk:

* a change only replaces the keyword's *pending* value in memory;
* a flush, at most every :data:`FLUSH_INTERVAL` seconds (a DelayedCall on the
  dispatcher's reactor), writes every pending value in **one** transaction,
  in a thread of the file's own one-thread pool; one write at a time, and the
  values arriving meanwhile go in the next;
* a write that fails is logged (at a bounded rate) and its values stay
  pending, to be written by a later flush, unless a newer value replaced them.

The file is in WAL mode with ``synchronous = FULL``: a transaction is on disk
when it commits, and one cut short by a crash is rolled back when the file is
next opened.  A ``kill -9`` at any moment therefore loses at most the changes
of the last flush interval plus the write in progress, and never damages the
file; so does a power cut, on a disk that honours fsync.

The file holds one table, ``keyword_state``, keyed by (service, dispatcher
name, keyword): the value as JSON (the binary value), its ascii form, the
keyword's type and the time the keyword took the value.  Dispatchers of
several services may share one file.

This module does I/O (files, threads): it belongs to the service layer, beside
:mod:`cauldron.dispatcher`, which drives it.
"""

import collections
import functools
import json
import os
import sqlite3
import threading

from twisted.internet import defer, threads
from twisted.logger import Logger, LogLevel
from twisted.python.threadpool import ThreadPool

from cauldron.errors import ConfigError
from cauldron.serving import RateLimitedLog

__all__ = [
    "StateFile",
    "StoredValue",
    "defaultStatePath",
    "FLUSH_INTERVAL",
    "STOP_TIMEOUT",
    "SCHEMA_VERSION",
    "TABLE",
]

log = Logger()

#: the shortest time between the starts of two writes, in seconds: at most
#: this much (plus the write in progress) is lost when the process is killed
FLUSH_INTERVAL = 0.1
#: after failed writes, the next try waits twice as long each time, up to this
MAX_RETRY_DELAY = 2.0
#: how long stopping waits for the last write before giving up on it, in seconds
STOP_TIMEOUT = 5.0
#: how long a write waits for another process holding the file's write lock
BUSY_TIMEOUT = 5.0
#: seconds over which failed writes are logged once (and the rest counted)
ERROR_LOG_INTERVAL = 10.0
#: the schema this module writes (``PRAGMA user_version`` of the file)
SCHEMA_VERSION = 1
#: the table holding the values
TABLE = "keyword_state"

_CREATE = """
CREATE TABLE IF NOT EXISTS keyword_state (
    service    TEXT NOT NULL,
    dispatcher TEXT NOT NULL,
    keyword    TEXT NOT NULL,
    type       TEXT NOT NULL,
    value      TEXT NOT NULL,
    ascii      TEXT NOT NULL,
    timestamp  REAL,
    PRIMARY KEY (service, dispatcher, keyword)
) WITHOUT ROWID
"""
_SAVE = ("INSERT OR REPLACE INTO keyword_state "
         "(service, dispatcher, keyword, type, value, ascii, timestamp) "
         "VALUES (?, ?, ?, ?, ?, ?, ?)")
_LOAD = ("SELECT keyword, type, value, ascii, timestamp FROM keyword_state "
         "WHERE service = ? AND dispatcher = ?")
_FORGET = "DELETE FROM keyword_state WHERE service = ? AND dispatcher = ? AND keyword = ?"

#: the value of a keyword as the file holds it: ``json`` is the binary value
#: as JSON text, ``timestamp`` when the keyword took it (seconds since the epoch)
StoredValue = collections.namedtuple("StoredValue", "json ascii timestamp type")


def defaultStatePath(service, dispatcher=None, environ=None):
    """Where a dispatcher keeps its persisted keywords unless told otherwise.

    ``$XDG_STATE_HOME/cauldron/SERVICE.sqlite``, or ``SERVICE-DISPATCHER.sqlite``
    when the dispatcher name differs from the service's; ``$XDG_STATE_HOME``
    defaults to ``~/.local/state`` (and is ignored unless absolute, as the XDG
    specification says).  Characters other than letters, digits, ``.``, ``_``
    and ``-`` become ``_`` in the file name; the file keys its rows by service
    and dispatcher name, so two names sharing a file do not mix.
    """
    environ = os.environ if environ is None else environ
    service = service.lower()
    dispatcher = service if dispatcher is None else dispatcher.lower()
    base = environ.get("XDG_STATE_HOME", "")
    if not os.path.isabs(base):
        home = environ.get("HOME") or os.path.expanduser("~")
        if not os.path.isabs(home):
            raise ConfigError(
                "no state file given (--state) and no home directory to put one in "
                "(set HOME or XDG_STATE_HOME)")
        base = os.path.join(home, ".local", "state")
    name = service if dispatcher == service else f"{service}-{dispatcher}"
    name = "".join(c if c.isascii() and (c.isalnum() or c in "._-") else "_" for c in name)
    return os.path.join(base, "cauldron", name + ".sqlite")


class StateFile:
    """The SQLite file keeping the persisted keywords of one dispatcher.

    :param path: the file; created (mode 0600, its directory 0700) if missing.
    :param service: the service name, and ``dispatcher`` the dispatcher's name
        within it: the rows of this dispatcher are keyed by both.
    :param reactor: runs the flush timer and receives the writes' results.
    :param interval: the shortest time between the starts of two writes.
    :param busyTimeout: how long a write waits for another process writing
        the same file before it fails (and is retried later).

    Use: :meth:`open` (synchronous: it reads the stored values and starts the
    writer thread), :meth:`begin` each persisted keyword, :meth:`changed` on
    every change, :meth:`stop` at the end.

    :ivar transactions: write transactions committed.
    :ivar rowsWritten: values those transactions wrote.
    :ivar failures: write attempts that failed (their values were kept).
    """

    def __init__(self, path, service, dispatcher, reactor, interval=FLUSH_INTERVAL,
                 busyTimeout=BUSY_TIMEOUT):
        self.path = os.fspath(path)
        self.service = service
        self.dispatcher = dispatcher
        self.reactor = reactor
        self.interval = interval
        self.busyTimeout = busyTimeout
        self.transactions = 0
        self.rowsWritten = 0
        self.failures = 0
        #: name -> StoredValue read by :meth:`open`
        self.stored = {}
        self._connection = None
        self._pool = None
        self._accepting = False
        self._stopping = False
        self._pending = {}  # name -> (binary, ascii, timestamp, type): the latest change
        self._retry = {}  # name -> (type, binary, ascii, timestamp) a write failed to save
        self._saved = {}  # name -> (type, binary value) as the file holds it
        self._timer = None
        self._writing = None
        self._lastFlush = None
        self._failedInARow = 0
        self._idleWaiters = []
        self._errors = RateLimitedLog(reactor, burst=1, interval=ERROR_LOG_INTERVAL)

    @property
    def writing(self):
        """Whether a write is running in the writer thread now."""
        return self._writing is not None

    @property
    def pending(self):
        """The names of the keywords whose latest value is not in the file yet."""
        return sorted(set(self._pending) | set(self._retry))

    # -- start

    def open(self, persisted, forget=()):
        """Open or create the file, read the values of ``persisted`` keywords, start the writer.

        Rows of the keywords named in ``forget`` (served by this dispatcher
        but no longer persisted) are deleted, so turning ``persist`` off
        forgets the value.  Raises :class:`ConfigError` naming the path when
        the file cannot be created, opened or read, or is no state file.
        """
        connection = self._connect()
        try:
            self.stored = self._load(connection, persisted, forget)
        except sqlite3.Error as e:
            connection.close()
            raise ConfigError(f"{self.path}: not a usable state file: {e}") from None
        except ConfigError:
            connection.close()
            raise
        self._saved = {}
        for name, stored in self.stored.items():
            try:
                self._saved[name] = (stored.type, json.loads(stored.json))
            except ValueError:
                pass  # unreadable: whatever the keyword begins with is written over it
        self._connection = connection
        pool = ThreadPool(1, 1, name=f"cauldron-state-{self.service}-{self.dispatcher}")
        # A write stuck on a dead disk must not keep the process alive at exit.
        pool.threadFactory = functools.partial(threading.Thread, daemon=True)
        pool.start()
        self._pool = pool
        self._accepting = True
        return self.stored

    def _connect(self):
        """A connection to the file, creating it (0600) and its directory (0700) if missing."""
        folder = os.path.dirname(os.path.abspath(self.path))
        try:
            if not os.path.isdir(folder):
                os.makedirs(folder, mode=0o700, exist_ok=True)
        except OSError as e:
            raise ConfigError(f"{self.path}: cannot create the state file's directory "
                              f"{folder}: {e.strerror}") from None
        if os.path.isdir(self.path):
            raise ConfigError(f"{self.path}: is a directory, not a state file")
        try:
            # SQLite gives its -wal and -shm files the database file's mode.
            os.close(os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600))
        except OSError as e:
            raise ConfigError(f"{self.path}: cannot create or write the state file: "
                              f"{e.strerror}") from None
        try:
            return sqlite3.connect(self.path, timeout=self.busyTimeout, isolation_level=None,
                                   check_same_thread=False)
        except sqlite3.Error as e:
            raise ConfigError(f"{self.path}: cannot open the state file: {e}") from None

    def _load(self, connection, persisted, forget):
        mode = connection.execute("PRAGMA journal_mode = WAL").fetchone()[0]
        if mode.lower() != "wal":
            log.warn("state file {path}: WAL mode refused (journal mode {mode}); "
                     "saving still works, more slowly", path=self.path, mode=mode)
        connection.execute("PRAGMA synchronous = FULL")
        problems = [row[0] for row in connection.execute("PRAGMA quick_check")]
        if problems != ["ok"]:
            raise ConfigError(f"{self.path}: damaged state file: {'; '.join(problems[:3])}")
        version = connection.execute("PRAGMA user_version").fetchone()[0]
        tables = {row[0] for row in connection.execute(
            "SELECT name FROM sqlite_master WHERE type = 'table'")}
        if version > SCHEMA_VERSION:
            raise ConfigError(f"{self.path}: written by a newer cauldron (schema version "
                              f"{version}; this one knows {SCHEMA_VERSION})")
        if tables - {TABLE} or (version == SCHEMA_VERSION) != (TABLE in tables):
            raise ConfigError(f"{self.path}: not a cauldron state file (tables: "
                              f"{', '.join(sorted(tables)) or 'none'})")
        key = (self.service, self.dispatcher)
        wanted = set(persisted)
        connection.execute("BEGIN IMMEDIATE")
        try:
            if version == 0:
                connection.execute(_CREATE)
                connection.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
            stored = {}
            for name, typeName, value, ascii, timestamp in connection.execute(_LOAD, key):
                if name in wanted:
                    stored[name] = StoredValue(value, ascii, timestamp, typeName)
            connection.executemany(_FORGET, [(*key, name) for name in forget])
            connection.execute("COMMIT")
        except BaseException:
            _rollBack(connection)
            raise
        return stored

    def begin(self, keyword):
        """Publish ``keyword``'s stored value, or its ``initial`` one if the keyword refuses it.

        The stored value goes through the keyword's own checks, exactly as
        :meth:`~cauldron.keywords.Basic.set` does (conversion, type, range,
        ``check``; no hardware hook runs); a refused one is logged in one
        line naming the keyword, the value and the reason.  A keyword that
        already holds a value (set before the start) keeps it, and that
        value is saved.  Returns True if the stored value was used.
        """
        if keyword.value is not None:
            self.changed(keyword)
            return False
        stored = self.stored.get(keyword.name)
        if stored is not None:
            saved = self._saved.get(keyword.name)  # decoded by open()
            if saved is None:
                why = "it is not JSON"
            else:
                try:
                    keyword.set(saved[1])
                    return True
                except Exception as e:  # BadValue from the type or range; anything check raises
                    why = str(e) or type(e).__name__
                    if keyword.writeonly:  # the reason would show the value
                        why = f"{type(e).__name__} (details not shown: write-only)"
            if keyword.writeonly:  # as secret in the log as anywhere else
                shown, start = "(write-only: not shown)", "its initial value"
            else:
                shown = _shown(stored.json)
                start = (f"the initial value {keyword.toAscii(keyword.initial)!r}"
                         if keyword.initial is not None else "no value")
            log.warn(
                "{service}.{kw}: the value stored in {path}, {value}, is refused: {why}; "
                "starting from {start}",
                service=self.service, kw=keyword.name, path=self.path, value=shown, why=why,
                start=start,
            )
        keyword.begin()
        return False

    # -- saving

    def changed(self, keyword):
        """Remember ``keyword``'s new value; a flush soon writes it (the latest one wins)."""
        if not self._accepting:
            return
        self._pending[keyword.name] = (
            keyword.value, keyword.ascii, keyword.timestamp, keyword.typeName)
        self._schedule()

    def _schedule(self):
        if self._timer is not None or self._writing is not None or self._stopping:
            return
        now = self.reactor.seconds()
        delay = 0.0
        if self._lastFlush is not None:
            delay = max(0.0, self._lastFlush + self.interval - now)
        if self._failedInARow:
            delay = max(delay, min(self.interval * 2 ** self._failedInARow, MAX_RETRY_DELAY))
        self._timer = self.reactor.callLater(delay, self._flush)

    def _rows(self):
        """The values to write now, by name: every pending one the file does not hold yet.

        Each is ``(type, binary, ascii, timestamp)``; the writer thread turns
        the binary value into JSON, so a burst costs the reactor no encoding.
        """
        rows, self._retry = self._retry, {}
        pending, self._pending = self._pending, {}
        for name, (binary, ascii, timestamp, typeName) in pending.items():
            if self._saved.get(name) == (typeName, binary):
                rows.pop(name, None)  # back to what the file holds
                continue
            if isinstance(binary, list):
                binary = list(binary)  # the thread reads it: a copy nobody can change
            rows[name] = (typeName, binary, ascii, timestamp)
        return rows

    def _flush(self):
        """Start writing every pending value in one transaction, in the writer thread."""
        self._timer = None
        if self._writing is not None or self._pool is None:
            return
        rows = self._rows()
        if not rows:
            return
        self._lastFlush = self.reactor.seconds()
        d = threads.deferToThreadPool(self.reactor, self._pool, self._write, rows)
        self._writing = d
        d.addCallbacks(self._written, self._writeFailed, (rows,), None, (rows,))
        d.addBoth(self._writeEnded)

    def _write(self, rows):
        """Runs in the writer thread: one transaction replacing ``rows``.

        Returns the names of values that could not be turned into JSON (a
        keyword's value always can: they are skipped, never retried).
        """
        records, unsaved = [], []
        for name, (typeName, binary, ascii, timestamp) in rows.items():
            try:
                text = json.dumps(binary, ensure_ascii=False, allow_nan=False)
            except (TypeError, ValueError):
                unsaved.append(name)
                continue
            records.append((self.service, self.dispatcher, name, typeName, text, ascii,
                            timestamp))
        connection = self._connection
        connection.execute("BEGIN IMMEDIATE")
        try:
            connection.executemany(_SAVE, records)
            connection.execute("COMMIT")
        except BaseException:
            _rollBack(connection)
            raise
        return unsaved

    def _written(self, unsaved, rows):
        self.transactions += 1
        self.rowsWritten += len(rows) - len(unsaved)
        for name, (typeName, binary, _, _) in rows.items():
            self._saved[name] = (typeName, binary)
        for name in unsaved:
            self._saved.pop(name, None)
            log.error("state file {path}: cannot save {kw}: its value {value} is no JSON",
                      path=self.path, kw=name, value=_shown(repr(rows[name][1])))
        if self._failedInARow:
            log.info("state file {path}: saving again after {n} failed attempts",
                     path=self.path, n=self._failedInARow)
            self._failedInARow = 0

    def _writeFailed(self, failure, rows):
        self.failures += 1
        self._failedInARow += 1
        for name, row in rows.items():
            if name not in self._pending and name not in self._retry:
                self._retry[name] = row  # a newer pending value replaces it
        self._errors(
            "state file {path}: cannot save {n} keyword values ({why}); they stay pending "
            "and are retried", level=LogLevel.error, path=self.path, n=len(rows),
            why=failure.getErrorMessage() or failure.type.__name__,
        )

    def _writeEnded(self, _):
        self._writing = None
        waiters, self._idleWaiters = self._idleWaiters, []
        for waiter in waiters:
            if not waiter.called:
                waiter.callback(None)
        if self._pending or self._retry:
            self._schedule()

    def _whenIdle(self):
        """A Deferred firing when the write in progress has ended."""
        d = defer.Deferred()
        self._idleWaiters.append(d)
        return d

    # -- the end

    def discard(self):
        """Drop what is pending and save nothing more (another dispatcher took over)."""
        self._accepting = False
        self._pending.clear()
        self._retry.clear()
        self._cancelTimer()

    def _cancelTimer(self):
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None

    def stop(self, timeout=STOP_TIMEOUT):
        """Write what is pending, close the file and end the writer thread.

        The Deferred fires once done (it never fails).  If the writes take
        longer than ``timeout`` seconds (a stuck disk), an error is logged
        naming what may be lost, and it fires then, leaving the thread to
        finish or die with the process.
        """
        self._accepting = False
        self._stopping = True
        self._cancelTimer()
        if self._pool is None:
            return defer.succeed(None)
        done = defer.Deferred.fromCoroutine(self._finish())
        done.addTimeout(timeout, self.reactor)
        done.addErrback(self._stopTimedOut, timeout)
        return done

    async def _finish(self):
        if self._writing is not None:
            await self._whenIdle()
        if self._pending or self._retry:
            self._flush()  # the last write: it is not retried
            if self._writing is not None:
                await self._whenIdle()
        if self._retry:
            log.error("state file {path}: the last values of {names} could not be saved",
                      path=self.path, names=", ".join(sorted(self._retry)))
        await threads.deferToThreadPool(self.reactor, self._pool, self._close)
        pool, self._pool = self._pool, None
        pool.stop()  # its one thread is idle: this returns at once
        self._errors.stop()

    def _close(self):
        """Runs in the writer thread: the last connection closes (and checkpoints) the file."""
        connection, self._connection = self._connection, None
        if connection is not None:
            connection.close()

    def _stopTimedOut(self, failure, timeout):
        failure.trap(defer.TimeoutError, defer.CancelledError)
        log.error("state file {path}: still writing after {timeout:g} s; stopped without "
                  "waiting (the values of {names} may be lost)", path=self.path,
                  timeout=timeout, names=", ".join(self.pending) or "the write in progress")
        self._errors.stop()
        return None


def _rollBack(connection):
    """End the transaction in progress, if any (a failed COMMIT may leave it open)."""
    try:
        connection.execute("ROLLBACK")
    except sqlite3.Error:
        pass  # no transaction left to roll back


def _shown(text, limit=80):
    """``text`` cut to about ``limit`` characters for a log line."""
    return text if len(text) <= limit else text[: limit - 1] + "\u2026"
