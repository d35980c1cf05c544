"""cauldron.archive: keyword history kept in SQLite or PostgreSQL.

:class:`ArchiverService` stores every change of the keywords it monitors
(``twistd cauldron-archiver``); :func:`history` and :func:`valueAt` read
them back (``cauldron history``).  See ``docs/archive.rst``.
"""

import os

from cauldron.archive.archiver import ArchiverService
from cauldron.archive.history import formatRecords, history, valueAt
from cauldron.archive.store import ArchiveError, AsyncStore, Record, Store, openStore

__all__ = ["DEFAULT_DB", "ArchiverService", "history", "valueAt", "formatRecords",
           "Record", "Store", "AsyncStore", "openStore", "ArchiveError", "defaultDatabase",
           "prepareDefault"]


def defaultDatabase(environ=os.environ):
    """``sqlite:///$XDG_STATE_HOME/cauldron/archive.sqlite`` (``~/.local/state`` by default)."""
    state = environ.get("XDG_STATE_HOME") or os.path.join(os.path.expanduser("~"),
                                                           ".local", "state")
    return "sqlite:///" + os.path.join(state, "cauldron", "archive.sqlite")


#: where the archiver stores, and ``cauldron history`` reads, without ``--db``
DEFAULT_DB = defaultDatabase()


def prepareDefault(db):
    """Make the default archive's directory (0700) if ``db`` is it: no setup needed."""
    if db == DEFAULT_DB:
        os.makedirs(os.path.dirname(DEFAULT_DB[len("sqlite:///"):]), mode=0o700, exist_ok=True)
