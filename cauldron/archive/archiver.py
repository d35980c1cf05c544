"""The archiver: every change of every matching keyword, stored in a database.

An :class:`ArchiverService` is an ordinary client (a
:class:`~cauldron.client.ClientService`): it asks the router which services
exist (new ones are picked up as they register), monitors each keyword
that matches, and stores every value it receives through an
:class:`~cauldron.archive.store.AsyncStore`, in batches, in a worker thread.

No update is silently lost:

* a value the monitor missed (``KeywordValue.missed``: the broadcast
  socket dropped some for a stalled subscriber) is recorded as a *gap* row
  before the value after it; the monitor's healing re-read is stored too;
* so are the first values of a restarted dispatcher's new run published
  before the monitor heard it (its first value has a sequence above 1);
* while the database is down, records wait in a buffer bounded in bytes and
  the batch that failed is tried again; records that had to be dropped from
  a full buffer are counted, logged, and recorded as one gap row per
  keyword when the database is back.
"""

import collections
import fnmatch
import time

from twisted.application import service
from twisted.internet import defer, task
from twisted.logger import Logger

from cauldron import config as _config
from cauldron.archive.store import ArchiveError, AsyncStore, Record, openStore
from cauldron.errors import CauldronError, ConfigError
from cauldron.serving import Outcome, RateLimitedLog

__all__ = ["ArchiverService", "matches"]

log = Logger()

#: records per transaction at most
BATCH = 1000
#: seconds between flushes of a partial batch
FLUSH_INTERVAL = 0.2
#: seconds between two questions to the router for new services and keywords
DISCOVERY_INTERVAL = 2.0
#: seconds between two attempts at a database that refused a batch
RETRY_INTERVAL = 1.0
#: bytes of records waiting for the database at most (an estimate per record)
BUFFER_BYTES = 64 * 1024 * 1024
#: what one record costs in memory besides its values' text (measured roughly)
RECORD_OVERHEAD = 400
#: seconds a stop waits for the last batch to be stored
STOP_TIMEOUT = 5.0


def matches(patterns, service, keyword):
    """Whether ``service.keyword`` matches a pattern (``TEMP*``, ``demo.*``); all if none."""
    if not patterns:
        return True
    full = f"{service}.{keyword}".upper()
    return any(fnmatch.fnmatchcase(full if "." in p else keyword.upper(), p.upper())
               for p in patterns)


def _cost(record):
    """Estimated bytes a buffered record holds."""
    return RECORD_OVERHEAD + 2 * len(record.ascii)


class ArchiverService(service.Service):
    """Monitor keywords and store their values.

    :param db: a store URL (see :func:`cauldron.archive.store.openStore`).
    :param services: service names to archive, or None for every service
        the router knows (the default; without a router, name them).
    :param keywords: patterns (``TEMP``, ``T*``, ``demo.*``) a keyword must
        match, as ``KEYWORD`` or ``service.KEYWORD``; empty: every keyword.
    :param keep: seconds of history to keep (older rows are deleted in the
        background), or None to keep everything.
    """

    name = "cauldron-archiver"

    def __init__(self, config=None, db=None, services=None, keywords=(), keep=None,
                 reactor=None, bufferBytes=BUFFER_BYTES, batch=BATCH,
                 discoveryInterval=DISCOVERY_INTERVAL, retryInterval=RETRY_INTERVAL,
                 timeout=5.0, clock=time.time):
        if reactor is None:
            from twisted.internet import reactor
        from cauldron.archive import DEFAULT_DB

        self.config = _config.load(config)
        self.reactor = reactor
        self.db = db or DEFAULT_DB
        self.services = None if services is None else [s.lower() for s in services]
        self.patterns = list(keywords)
        self.keep = keep
        self.bufferBytes = bufferBytes
        self.batch = batch
        self.discoveryInterval = discoveryInterval
        self.retryInterval = retryInterval
        self.timeout = timeout
        self._clock = clock
        if self.services is None and not self.config.get("zmq-router", "enable"):
            raise ConfigError(f"{self.config.source}: without a router ([zmq-router] enable "
                              "= no) the archiver cannot list services: name them")
        #: records stored, dropped from a full buffer, and gap rows written
        self.stored = 0
        self.dropped = 0
        self.gaps = 0
        self.store = None
        self.client = None
        self._buffer = collections.deque()
        self._bufferUsed = 0
        self._lost = {}  # (service, dispatcher, keyword, epoch) -> [first sequence, count, stamp]
        self._inFlight = None
        self._retry = None
        self._databaseDown = False
        self._remotes = {}
        self._connecting = set()
        self._watched = set()
        self._epochs = {}  # (service, keyword) -> the run of the last value stored
        self._loops = []
        self._warnings = RateLimitedLog(reactor, burst=3)
        self._ready = Outcome()

    # -- lifecycle

    def startService(self):
        """Open the database (schema created or migrated), then start archiving.

        A bad URL or a database that refuses the schema raises at once
        (synchronously for the URL): nothing half-started is left behind.
        """
        from cauldron.archive import prepareDefault
        from cauldron.client import ClientService

        prepareDefault(self.db)
        self.store = AsyncStore(openStore(self.db), self.reactor)
        super().startService()
        self.client = ClientService(self.config, reactor=self.reactor, timeout=self.timeout)
        d = self.store.start()
        d.addCallback(self._storeReady)
        d.addErrback(self._failedToStart)
        d.addCallback(lambda _: self)
        d.addBoth(self._ready.set)

    def whenReady(self):
        """Fires once archiving (the database open), or fails with why it could not start."""
        return self._ready.whenKnown()

    def _storeReady(self, _):
        log.info("archiver storing into {db}", db=self.store.store.url)
        self.client.startService()
        self._loop(self._discover, self.discoveryInterval, now=True)
        self._loop(self._flush, FLUSH_INTERVAL)
        if self.keep is not None:
            self._loop(self._expire, min(self.keep / 10, 3600.0), now=True)

    def _failedToStart(self, failure):
        """Nothing runs: the store's thread is stopped, the client never started."""
        store, self.store = self.store, None
        d = store.stop()
        d.addBoth(lambda _: failure)
        return d

    def _loop(self, function, interval, now=False):
        loop = task.LoopingCall(function)
        loop.clock = self.reactor
        self._loops.append(loop)
        loop.start(interval, now=now).addErrback(
            lambda f: log.failure("archiver loop {f} failed", f, f=function.__name__))

    @defer.inlineCallbacks
    def stopService(self):
        """Store what is buffered (waiting at most STOP_TIMEOUT), then close everything."""
        super().stopService()
        for loop in self._loops:
            if loop.running:
                loop.stop()
        self._loops = []
        if self._retry is not None and self._retry.active():
            self._retry.cancel()
        if self.client is not None and self.client.running:
            yield self.client.stopService()
        if self.store is None:  # it never started
            self._warnings.stop()
            return
        deadline = self.reactor.seconds() + STOP_TIMEOUT
        while (self._buffer or self._inFlight) and not self._databaseDown \
                and self.reactor.seconds() < deadline:
            if self._inFlight is None:
                self._flush()
            if self._inFlight is not None:
                yield self._inFlight
        if self._buffer:
            log.warn("archiver stopped with {n} records not stored", n=len(self._buffer))
        if self.store is not None:
            yield self.store.stop()
        self._warnings.stop()

    # -- which keywords

    @defer.inlineCallbacks
    def _discover(self):
        """Follow every matching service, and monitor its matching keywords."""
        try:
            names = self.services if self.services is not None else (yield self._listed())
        except CauldronError as e:
            self._warnings("archiver: cannot list services: {why}", why=e)
            return
        except defer.CancelledError:
            return  # stopping
        for name in names:
            remote = self._remotes.get(name)
            if remote is not None:
                self._watchKeywords(remote)
            elif name not in self._connecting:
                self._connect(name)

    @defer.inlineCallbacks
    def _listed(self):
        from cauldron.protocol.messages import ListServices

        reply = yield self.client._locator.request(lambda i: ListServices(i), "list services")
        return sorted({entry.service for entry in reply.services})

    def _connect(self, name):
        self._connecting.add(name)
        d = self.client.service(name)

        def connected(remote):
            self._remotes[name] = remote
            self._watchKeywords(remote)

        def failed(failure):
            if failure.check(defer.CancelledError):
                return  # stopping
            failure.trap(CauldronError)
            self._warnings("archiver: service {name}: {why}", name=name,
                           why=failure.getErrorMessage())

        d.addCallbacks(connected, failed)
        d.addBoth(lambda _: self._connecting.discard(name))
        d.addErrback(lambda f: log.failure("archiver: following {name} failed", f, name=name))

    def _watchKeywords(self, remote):
        for name in remote.keywords():
            key = (remote.name, name)
            if key in self._watched or not matches(self.patterns, remote.name, name):
                continue
            keyword = remote[name]
            if keyword.info.get("writeonly"):
                continue  # nothing to see
            self._watched.add(key)
            d = keyword.monitor(lambda value, kw=keyword: self._received(kw, value))
            d.addErrback(self._watchFailed, key)

    def _watchFailed(self, failure, key):
        """Not monitored this time (its dispatcher is down, say): try at the next discovery."""
        self._watched.discard(key)
        if failure.check(defer.CancelledError):
            return  # stopping
        failure.trap(CauldronError)
        self._warnings("archiver: cannot monitor {s}.{k}: {why}", s=key[0], k=key[1],
                       why=failure.getErrorMessage())

    # -- records

    def _received(self, keyword, value):
        service, dispatcher = keyword.service.name, keyword.dispatcher.name
        missed, first = value.missed, value.sequence - value.missed
        previous = self._epochs.get((service, value.name))
        self._epochs[(service, value.name)] = value.epoch
        if previous is not None and previous != value.epoch and value.sequence > 1:
            # A restarted dispatcher published before we heard its new run.
            missed, first = value.sequence - 1, 1
        if missed:
            self._append(Record(service, value.name, value.epoch, first,
                                value.timestamp or self._clock(), kind="gap",
                                missed=missed, dispatcher=dispatcher))
        self._append(Record(service, value.name, value.epoch, value.sequence,
                            value.timestamp or self._clock(), value.binary, value.ascii,
                            dispatcher=dispatcher))
        if len(self._buffer) >= self.batch and self._inFlight is None \
                and not self._databaseDown:
            self._flush()

    def _append(self, record):
        self._buffer.append(record)
        self._bufferUsed += _cost(record)
        while self._bufferUsed > self.bufferBytes and len(self._buffer) > 1:
            self._drop(self._buffer.popleft())

    def _drop(self, record):
        """A full buffer loses its oldest record: counted, logged, a gap row later."""
        self._bufferUsed -= _cost(record)
        if record.kind == "gap":
            count = record.missed or 1  # already counted (or never received): only moved
        else:
            count = 1
            self.dropped += 1
        key = (record.service, record.dispatcher, record.keyword, record.epoch)
        lost = self._lost.get(key)
        if lost is None:
            self._lost[key] = [record.sequence, count, record.timestamp]
        else:
            lost[0] = min(lost[0], record.sequence)
            lost[1] += count
            lost[2] = min(lost[2], record.timestamp)
        self._warnings("archiver: buffer full ({mib} MiB) while the database is down: "
                       "dropping the oldest records ({n} so far)",
                       mib=self.bufferBytes // (1024 * 1024), n=self.dropped)

    def _lostGaps(self):
        """One gap row per keyword that lost records to a full buffer."""
        lost, self._lost = self._lost, {}
        return [Record(service, keyword, epoch, first, stamp, kind="gap", missed=count,
                       dispatcher=dispatcher)
                for (service, dispatcher, keyword, epoch), (first, count, stamp) in lost.items()]

    # -- storing

    def _flush(self):
        """Store up to one batch, unless one is in flight."""
        if self._inFlight is not None or not (self._buffer or self._lost) \
                or self.store is None:
            return
        if self._retry is not None and self._retry.active():
            return
        batch = self._lostGaps()
        while self._buffer and len(batch) < self.batch:
            record = self._buffer.popleft()
            self._bufferUsed -= _cost(record)
            batch.append(record)
        d = self._inFlight = self.store.insert(batch)
        d.addCallbacks(self._stored, self._notStored, (batch,), None, (batch,))

    def _stored(self, _, batch):
        self._inFlight = None
        self.stored += len(batch)
        self.gaps += sum(1 for record in batch if record.kind == "gap")
        if self._databaseDown:
            self._databaseDown = False
            log.info("archiver: the database answers again ({n} records dropped meanwhile)",
                     n=self.dropped)
        if len(self._buffer) >= self.batch:
            self.reactor.callLater(0, self._flush)

    def _notStored(self, failure, batch):
        """The database refused: the batch goes back first, and is tried again later."""
        self._inFlight = None
        failure.trap(ArchiveError)
        if not self._databaseDown:
            log.warn("archiver: the database is down ({why}); buffering up to {mib} MiB",
                     why=failure.getErrorMessage(), mib=self.bufferBytes // (1024 * 1024))
            self._databaseDown = True
        for record in reversed(batch):
            self._buffer.appendleft(record)
            self._bufferUsed += _cost(record)
        while self._bufferUsed > self.bufferBytes and len(self._buffer) > 1:
            self._drop(self._buffer.popleft())
        if self.running:
            self._retry = self.reactor.callLater(self.retryInterval, self._retried)

    def _retried(self):
        self._retry = None
        self._flush()

    # -- retention

    def _expire(self):
        """Delete what is older than ``keep``; fires with how many (None if the store failed)."""
        d = self.store.deleteOlderThan(self._clock() - self.keep)
        d.addCallback(self._expired)
        d.addErrback(lambda f: f.trap(ArchiveError) and None)
        return d

    def _expired(self, count):
        if count:
            log.info("archiver: deleted {n} records older than {keep:g} s", n=count,
                     keep=self.keep)
        return count
