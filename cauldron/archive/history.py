"""Reading the archive back, for scripts, notebooks and ``cauldron history``.

Blocking calls (no reactor needed): each opens the store, asks, and closes it.
Times are Unix seconds, :class:`datetime.datetime` objects, or what an
operator types (``1h`` ago, ``2026-12-02T03:00`` local time).
"""

import csv
import datetime
import io
import json
import os
import time

from cauldron.archive.store import SQLiteStore, openStore
from cauldron.archive.times import isoTime, localTime, parseInstant
from cauldron.errors import ConfigError

__all__ = ["history", "valueAt", "formatRecords", "instant"]


def instant(when, now=None):
    """Unix seconds for ``when`` (seconds, a datetime, or text such as ``1h`` or ISO 8601)."""
    if when is None:
        return None
    if isinstance(when, datetime.datetime):
        return (when if when.tzinfo else when.astimezone()).timestamp()
    if isinstance(when, (int, float)) and not isinstance(when, bool):
        return float(when)
    return parseInstant(when, time.time() if now is None else now)


def _openForReading(db):
    """The store of an existing archive: reading never makes an empty one."""
    from cauldron.archive import DEFAULT_DB

    if db == DEFAULT_DB and not os.path.exists(DEFAULT_DB[len("sqlite:///"):]):
        raise ConfigError(f"no archive at {DEFAULT_DB}: start cauldron-archiver "
                          "(see docs/archive.rst), or name the archive with --db")
    store = openStore(db)
    if isinstance(store, SQLiteStore) and not os.path.exists(store.path):
        raise ConfigError(f"archive database {store.url}: no such file {store.path}")
    return store


def history(db, service, keywords, since=None, until=None, limit=None):
    """Every stored record of ``service``'s ``keywords`` in time order (gaps included).

    :returns: a list of :class:`~cauldron.archive.store.Record`.
    """
    store = _openForReading(db)
    try:
        store.setUp()
        return store.query(service.lower(), [k.upper() for k in keywords],
                           instant(since), instant(until), limit)
    finally:
        store.close()


def valueAt(db, service, keywords, when):
    """Each keyword's value at ``when``: ``{KEYWORD: Record or None}``."""
    store = _openForReading(db)
    try:
        store.setUp()
        return store.at(service.lower(), [k.upper() for k in keywords], instant(when))
    finally:
        store.close()


def _shown(record):
    if record.kind == "gap":
        count = f"{record.missed} values" if record.missed else "values"
        return f"(gap: {count} not archived from sequence {record.sequence})"
    return record.ascii


def formatRecords(records, form="table"):
    """The text ``cauldron history`` prints: ``table``, ``csv`` or ``json``."""
    if form == "table":
        return "".join(f"{localTime(r.timestamp)}  {r.keyword}  {_shown(r)}\n" for r in records)
    if form == "csv":
        out = io.StringIO()
        writer = csv.writer(out, lineterminator="\n")
        writer.writerow(["time", "unix", "service", "keyword", "value", "kind", "missed",
                         "epoch", "sequence", "dispatcher"])
        for r in records:
            writer.writerow([isoTime(r.timestamp), repr(r.timestamp), r.service, r.keyword,
                             r.ascii, r.kind, r.missed, r.epoch, r.sequence,
                             r.dispatcher or r.service])
        return out.getvalue()
    if form == "json":
        rows = [{"time": isoTime(r.timestamp), "unix": r.timestamp, "service": r.service,
                 "keyword": r.keyword, "value": r.binary, "ascii": r.ascii, "kind": r.kind,
                 "missed": r.missed, "epoch": r.epoch, "sequence": r.sequence,
                 "dispatcher": r.dispatcher or r.service} for r in records]
        return json.dumps(rows, indent=1) + "\n"
    raise ValueError(f"unknown format {form!r}: use table, csv or json")
