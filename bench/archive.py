#!/usr/bin/env python
"""Archive insert throughput: cauldron's AsyncStore against the bare database driver.

    python bench/archive.py [--quick] [--rounds N] [--updates N] [--db URL ...]

Each round stores ``--updates`` synthetic updates (doubles, spread over
``--keywords`` keywords, one epoch) into a fresh database twice:

* ``cauldron``: through :class:`cauldron.archive.store.AsyncStore` as the
  archiver does: a :class:`Record` made per update on the reactor thread,
  batches of up to ``--batch`` records, each batch one transaction in the
  store's worker thread, the next batch handed over while one is being
  stored (two in flight at most);
* ``raw``: the driver alone, on the same schema: ``sqlite3`` ``executemany``
  or psycopg ``COPY`` of plain tuples, one transaction per batch, in one
  thread.

Per database, one line on stdout (medians over rounds; the order of the two
flips every round; the ratio is taken within each round):

    NAME cauldron=<n>/s raw=<n>/s ratio=<r> bytes-per-update=<n>

``bytes-per-update`` is :meth:`Store.stats` ``bytes`` (table and index;
SQLite's write-ahead log not counted) over the records stored.

Databases: a SQLite file in a temporary directory, and a throwaway
PostgreSQL server started from Debian's binaries by ``tests/pgserver.py``
with its default settings (fsync and synchronous commit on), unless
``--db URL`` names the databases to use instead (each round then empties
``keyword_values`` first: do not point it at an archive you keep).
Per-round details go to stderr; stdout has a ``#`` header and the lines.
"""

import argparse
import os
import sqlite3
import statistics
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
for path in (ROOT, os.path.join(ROOT, "tests")):
    if path not in sys.path:
        sys.path.insert(0, path)

from twisted.internet import defer, task  # noqa: E402

from cauldron.archive import store as archive  # noqa: E402

EPOCH = "1a2b-0123456789ab"
START = 1767225600.0


def note(text):
    print(text, file=sys.stderr, flush=True)


def versions():
    text = "Python %s, SQLite %s" % (sys.version.split()[0], sqlite3.sqlite_version)
    try:
        import psycopg
    except ImportError:
        return text + ", no psycopg"
    libpq = psycopg.pq.version()
    return text + ", psycopg %s (libpq %d.%d)" % (psycopg.__version__, libpq // 10000,
                                                   libpq % 10000)


# -- the two ways of storing ---------------------------------------------------


@defer.inlineCallbacks
def viaCauldron(reactor, url, updates, keywords, batch):
    """Store the updates through an AsyncStore; (seconds, stats)."""
    store = archive.AsyncStore(archive.openStore(url), reactor)
    yield store.start()
    names = ["KW%02d" % (k,) for k in range(keywords)]
    inFlight = []
    started = time.perf_counter()
    records = []
    for i in range(updates):
        k = i % keywords
        v = i * 0.001
        records.append(archive.Record("bench", names[k], EPOCH, i // keywords + 1,
                                      START + i * 1e-4, v, "%.3f" % (v,)))
        if len(records) == batch:
            if len(inFlight) == 2:
                yield inFlight.pop(0)
            inFlight.append(store.insert(records))
            records = []
    if records:
        inFlight.append(store.insert(records))
    yield defer.gatherResults(inFlight)
    elapsed = time.perf_counter() - started
    stats = yield store.stats()
    yield store.stop()
    return elapsed, stats


def rawRows(updates, keywords, batch):
    """The same updates as plain tuples of the stored columns, batch by batch."""
    names = ["KW%02d" % (k,) for k in range(keywords)]
    rows = []
    for i in range(updates):
        v = i * 0.001
        rows.append((START + i * 1e-4, i // keywords + 1, 0, v, "bench", "", names[i % keywords],
                     EPOCH, "value", "float", None, None, "%.3f" % (v,)))
        if len(rows) == batch:
            yield rows
            rows = []
    if rows:
        yield rows


def viaDriver(url, updates, keywords, batch):
    """Store the updates with the bare driver; seconds."""
    columns = ", ".join(archive._COLUMNS)
    if url.startswith("sqlite"):
        connection = sqlite3.connect(archive.openStore(url).path, isolation_level=None)
        connection.execute("PRAGMA journal_mode = WAL")
        connection.execute("PRAGMA synchronous = NORMAL")
        sql = "INSERT INTO keyword_values (%s) VALUES (%s)" % (
            columns, ", ".join("?" * len(archive._COLUMNS)))
        started = time.perf_counter()
        for rows in rawRows(updates, keywords, batch):
            connection.execute("BEGIN IMMEDIATE")
            connection.executemany(sql, rows)
            connection.execute("COMMIT")
        elapsed = time.perf_counter() - started
        connection.close()
        return elapsed
    import psycopg

    with psycopg.connect(url, autocommit=True) as connection:
        sql = "COPY keyword_values (%s) FROM STDIN" % (columns,)
        started = time.perf_counter()
        for rows in rawRows(updates, keywords, batch):
            with connection.transaction(), connection.cursor().copy(sql) as copy:
                for row in rows:
                    copy.write_row(row)
        return time.perf_counter() - started


# -- databases -----------------------------------------------------------------


class Databases:
    """Fresh databases per round, of each kind benchmarked."""

    def __init__(self, urls):
        self.urls = urls
        self.given = bool(urls)
        self.server = None
        self.tmp = tempfile.mkdtemp(prefix="cauldron-bench-")
        self.made = 0
        self.header = []
        if not urls:
            self.urls = ["sqlite:///%s" % (os.path.join(self.tmp, "archive.db"),)]
            import pgserver

            reason = pgserver.unavailable()
            if reason:
                note("# no PostgreSQL: %s" % (reason,))
                self.header.append("PostgreSQL skipped (%s)" % (reason,))
            else:
                self.server = pgserver.PostgresServer(settings={})
                self.server.start()
                self.urls.append(self.server.url("postgres"))
                version = open(os.path.join(self.server.data, "PG_VERSION")).read().strip()
                self.header.append("PostgreSQL %s (throwaway, default settings)" % (version,))

    def fresh(self, url):
        """A fresh, empty database of the kind ``url`` names, set up with the schema."""
        self.made += 1
        if self.given:
            fresh = url
        elif url.startswith("sqlite"):
            fresh = "sqlite:///%s" % (os.path.join(self.tmp, "archive-%d.db" % (self.made,)),)
        else:
            fresh = self.server.createDatabase()
        store = archive.openStore(fresh)
        store.setUp()
        if self.given:  # a database of the user's: emptied
            store._run(lambda connection: connection.execute("DELETE FROM keyword_values"))
        store.close()
        return fresh

    def close(self):
        if self.server is not None:
            self.server.destroy()
        import shutil

        shutil.rmtree(self.tmp, ignore_errors=True)


def kind(url):
    return "sqlite" if url.startswith("sqlite") else "postgresql"


@defer.inlineCallbacks
def run(reactor, args):
    databases = Databases(args.db)
    try:
        header = [versions(), *databases.header,
                  "%d updates over %d keywords, batches of %d, %d round(s)"
                  % (args.updates, args.keywords, args.batch, args.rounds)]
        print("# " + "; ".join(header), flush=True)
        for url in databases.urls:
            rates = {"cauldron": [], "raw": []}
            ratios, sizes = [], []
            for roundNo in range(1, args.rounds + 1):
                order = ("cauldron", "raw") if roundNo % 2 else ("raw", "cauldron")
                result = {}
                for impl in order:
                    fresh = databases.fresh(url)
                    if impl == "cauldron":
                        elapsed, stats = yield viaCauldron(reactor, fresh, args.updates,
                                                           args.keywords, args.batch)
                        assert stats["records"] == args.updates, stats
                        sizes.append(stats["bytes"] / stats["records"])
                    else:
                        elapsed = viaDriver(fresh, args.updates, args.keywords, args.batch)
                    result[impl] = args.updates / elapsed
                    rates[impl].append(result[impl])
                    note("# round %d %-10s %-8s %9.0f/s  (%.2f s)"
                         % (roundNo, kind(url), impl, result[impl], elapsed))
                ratios.append(result["cauldron"] / result["raw"])
            print("%s cauldron=%.0f/s raw=%.0f/s ratio=%.3f bytes-per-update=%.0f" % (
                kind(url), statistics.median(rates["cauldron"]), statistics.median(rates["raw"]),
                statistics.median(ratios), statistics.median(sizes)), flush=True)
    finally:
        databases.close()


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="1 round of 20,000 updates")
    parser.add_argument("--rounds", type=int, help="rounds (default 3; --quick: 1)")
    parser.add_argument("--updates", type=int, help="updates per run (default 100,000)")
    parser.add_argument("--keywords", type=int, default=50, help="keywords (default 50)")
    parser.add_argument("--batch", type=int, default=1000,
                        help="records per transaction at most (default 1000)")
    parser.add_argument("--db", action="append", metavar="URL",
                        help="a database to use instead of the throwaway ones (repeatable)")
    args = parser.parse_args(argv)
    args.rounds = args.rounds or (1 if args.quick else 3)
    args.updates = args.updates or (20000 if args.quick else 100000)
    task.react(run, (args,))


if __name__ == "__main__":
    main()
