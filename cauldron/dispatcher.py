"""The dispatcher: owns a service's keywords and serves them over ZeroMQ.

A :class:`DispatcherService` answers commands on its dispatch socket (a
ROUTER: replies go back to the socket identity that asked) and publishes
every value change, plus a heartbeat, on its broadcast socket (an XPUB, which
also answers each new subscription with the keyword's current value).

Writes run check -> prewrite -> write -> postwrite exactly once and are
answered after they complete; any hook may return a Deferred.  Writes to one
keyword are queued in arrival order, while other keywords keep answering.

A request is never started after its deadline (the client has given up by
then), so a write its caller was told had failed never takes effect later,
however long the network held it.  A dispatcher that learns from the router
that another dispatcher now owns its service stops serving at once (it is
*fenced*).

A service may span several dispatchers, each with its own *dispatcher name*
(the service name by default) and keywords; the router holds one lease per
dispatcher name and refuses a keyword to a second dispatcher of the service.

Keywords made with ``persist=True`` keep their values across restarts in a
state file (:mod:`cauldron.statefile`): restored at start, saved on change.
"""

import fnmatch
import os
import time
import uuid
from collections import deque

from twisted.application import service
from twisted.internet import defer, task
from twisted.logger import Logger, LogLevel
from twisted.python.failure import Failure

from cauldron import config as _config
from cauldron.errors import (
    BadValue,
    CauldronError,
    CauldronTimeout,
    ConfigError,
    HookError,
    NotOwner,
    PermissionDenied,
    ProtocolError,
    ReadOnly,
    ServiceUnavailable,
    UnknownKeyword,
    UnknownService,
    WriteOnly,
)
from cauldron.keywords import Basic
from cauldron.protocol import codec
from cauldron.protocol.messages import (
    Batch,
    Describe,
    Description,
    Error,
    Heartbeat,
    KeywordList,
    ListKeywords,
    Ping,
    Pong,
    Read,
    Started,
    Update,
    UpdateEntry,
    Updates,
    Value,
    Write,
)
from cauldron.serving import (
    NO_REPLY,
    Outcome,
    RateLimitedCounter,
    RateLimitedLog,
    answer,
    answerMessage,
)
from cauldron.statefile import StateFile, defaultStatePath
from cauldron.transport import Curve, Transport, bindAddress

__all__ = [
    "DispatcherService",
    "describeWithValue",
    "STOPPED",
    "STARTING",
    "SERVING",
    "FENCED",
]

log = Logger()
#: one event per accepted write: who wrote what (feed it to the site's log system)
audit = Logger(namespace="cauldron.audit")
_AUDIT_FORMAT = "{service}.{keyword} written by {who} ({claimed}): {before} -> {after}"

#: writes one keyword may have waiting behind a slow one before we refuse more
MAX_QUEUED_WRITES = 100
#: seconds between two answers to subscriptions of one keyword (floods coalesce)
WELCOME_INTERVAL = 0.01
#: the most bytes of replies one Batch reply holds (a message holds 1 MiB)
BATCH_REPLY_BYTES = 512 * 1024
#: the most (estimated) bytes of values one broadcast batch holds: a burst
#: of 20,000 small changes takes ~70 messages, and the ~2,000 messages a
#: stalled subscriber may hold (see tests/test_floods.py) stay small
BATCH_BYTES = 16 * 1024

#: the states of a dispatcher (:attr:`DispatcherService.state`)
STOPPED = "stopped"
STARTING = "starting"
SERVING = "serving"
#: another dispatcher owns the service now: this one stopped serving it
FENCED = "fenced"


def readable(keyword):
    """``(binary, ascii)`` as clients may see it: nothing for a write-only keyword."""
    if keyword.writeonly:
        return None, ""
    return keyword.value, keyword.ascii


def describeWithValue(keyword):
    """A keyword's metadata plus its current value, as sent by ``describe``."""
    info = keyword.describe()
    binary, ascii = readable(keyword)
    if keyword.writeonly:
        info["initial"] = None  # as secret as the value itself
    info.update(
        binary=binary,
        ascii=ascii,
        sequence=keyword.sequence,
        timestamp=keyword.timestamp,
    )
    return info


class DispatcherService(service.Service):
    """Serve the keywords of service ``name``.

    :param dispatcher: this dispatcher's name within the service (default:
        the service name), for a service spread over several dispatchers;
        names are case-insensitive, kept lower-case as ``dispatcherName``.
    :param keywords: keyword objects (:mod:`cauldron.keywords`) to serve.
    :param setup: ``setup(dispatcher)`` called once at construction to create
        and add more keywords (see :meth:`addKeyword`).
    :param config: a path, a loaded :class:`cauldron.config.Config` or None.
    :param reactor: the reactor to run on (defaults to the global one).
    :param heartbeatInterval: seconds between heartbeats on the broadcast
        channel and lease renewals with the router.
    :param wallClock: seconds since the epoch, for request deadlines and
        timestamps (``time.time`` unless a test replaces it).
    :param writers: key names or glob patterns allowed to write the keywords
        that name none of their own (``keyword.writers``); None allows every
        key the dispatcher lets in.  Secure mode only.
    :param readers: the same for reads, describes and monitors.
    :param statePath: the SQLite file keeping the values of the keywords that
        persist (``keyword.persist``); by default
        :func:`cauldron.statefile.defaultStatePath`
        (``$XDG_STATE_HOME/cauldron/SERVICE.sqlite``).  Not touched at all
        when no keyword persists.

    :ivar state: :data:`STOPPED`, :data:`STARTING`, :data:`SERVING` or
        :data:`FENCED`; see also :meth:`whenFenced`.
    :ivar stateFile: the run's :class:`cauldron.statefile.StateFile`, or None
        (no keyword persists, or the service is stopped).
    """

    def __init__(
        self, name, config=None, keywords=(), setup=None, reactor=None, heartbeatInterval=1.0,
        wallClock=time.time, writers=None, readers=None, *, dispatcher=None, statePath=None,
    ):
        if reactor is None:
            from twisted.internet import reactor
        self.name = name.lower()
        if dispatcher is not None and (
                not isinstance(dispatcher, str) or not dispatcher
                or any(c.isspace() for c in dispatcher)):
            raise ConfigError(f"service {self.name!r}: bad dispatcher name {dispatcher!r}: "
                              "a dispatcher name is a non-empty word without spaces")
        #: the dispatcher's name within its service (the service name by default)
        self.dispatcherName = self.name if dispatcher is None else dispatcher.lower()
        self.config = _config.load(config)
        self.reactor = reactor
        self.heartbeatInterval = heartbeatInterval
        self.epoch = _newEpoch()
        self.state = STOPPED
        #: why the dispatcher was fenced (a LeaseConflict naming the new owner), or None
        self.fenced = None
        self.dispatchAddress = None
        self.broadcastAddress = None
        self._wallClock = wallClock
        self.writers = None if writers is None else tuple(writers)
        self.readers = None if readers is None else tuple(readers)
        #: the state file given, or None for the default (see :meth:`stateFilePath`)
        self.statePath = None if statePath is None else os.fspath(statePath)
        self.stateFile = None
        self.malformed = RateLimitedCounter("malformed messages", reactor)
        self.expired = RateLimitedCounter(
            "requests that arrived after their deadline (the client had given up)", reactor,
            level=LogLevel.info,
        )
        self._droppedReplies = RateLimitedCounter(
            "replies to clients that had left", reactor, level=LogLevel.debug)
        self._hookFailures = RateLimitedLog(reactor, burst=5)
        self._run = 0
        self._starting = None
        self._fencedWaiters = []
        self._keywords = {}
        self._periods = {}
        self._writeQueues = {}
        self._periodicReads = set()
        self._welcomes = {}
        self._lastWelcome = {}
        self._beats = 0
        self._changed = {}
        self._outbox = {}  # keyword name -> [UpdateEntry] made this reactor turn
        self._topics = {}  # keyword name -> its broadcast topic
        self._audits = []  # the audit records of the writes accepted this turn
        self._flushing = None  # the DelayedCall broadcasting and logging them, if any
        self._flushAfterRead = False  # or the requests being read do, once answered
        self._transport = None
        self._router = None
        self._routerSocket = None
        self._publisher = None
        self._heartbeat = None
        self._ready = Outcome()
        for keyword in keywords:
            self.addKeyword(keyword)
        if setup is not None:
            setup(self)

    # -- keywords

    def addKeyword(self, keyword):
        """Serve ``keyword``; a second keyword of the same name is an error."""
        if keyword.name in self._keywords:
            raise BadValue(f"{self.name}: duplicate keyword {keyword.name}")
        if keyword.service is not None and keyword.service is not self:
            raise BadValue(f"{keyword.name} already belongs to service {keyword.service.name}")
        self._keywords[keyword.name] = keyword
        keyword.service = self
        keyword.addListener(self._publish)
        if keyword.periodSeconds is not None:
            self.schedulePeriod(keyword, keyword.periodSeconds)
        return keyword

    def __getitem__(self, name):
        try:
            return self._keywords[name.upper()]
        except KeyError:
            raise UnknownKeyword(f"service {self.name!r} has no keyword {name.upper()!r}") from None

    def __contains__(self, name):
        return name.upper() in self._keywords

    def __iter__(self):
        return iter(self._keywords[name] for name in self.keywords())

    def keywords(self):
        """The names of every keyword served, sorted."""
        return sorted(self._keywords)

    @property
    def label(self):
        """``service/dispatcher`` for log lines, or the service alone when named alike."""
        if self.dispatcherName == self.name:
            return self.name
        return f"{self.name}/{self.dispatcherName}"

    def schedulePeriod(self, keyword, seconds):
        """Run ``keyword``'s read path every ``seconds`` while the service runs."""
        old = self._periods.pop(keyword.name, None)
        if old is not None and old.running:
            old.stop()
        loop = task.LoopingCall(self._periodicRead, keyword)
        loop.clock = self.reactor
        loop.interval = seconds
        self._periods[keyword.name] = loop
        if self.running:
            loop.start(seconds, now=True)

    def _periodicRead(self, keyword):
        # Never hand a Deferred back to LoopingCall: a slow read must not stop
        # the loop, and a failed one must not end it.  A read still running
        # (slow hardware) makes us skip this tick rather than pile up.
        if keyword.name in self._periodicReads:
            return
        d = self._readPath(keyword)
        if d.called:
            d.addErrback(self._periodicReadFailed, keyword)
            return
        self._periodicReads.add(keyword.name)
        d.addErrback(self._periodicReadFailed, keyword)
        d.addBoth(lambda _: self._periodicReads.discard(keyword.name))

    def _periodicReadFailed(self, failure, keyword):
        log.failure("periodic read of {kw} failed", failure, kw=keyword.name)

    # -- lifecycle

    def whenReady(self):
        """A Deferred firing with ``(dispatchAddress, broadcastAddress)`` once
        serving, or failing with the reason the service could not start."""
        return self._ready.whenKnown()

    def whenFenced(self):
        """A Deferred firing with a :class:`~cauldron.errors.LeaseConflict` if
        another dispatcher takes the service over (it names the new owner in
        ``detail``); by then this one has stopped serving."""
        if self.fenced is not None:
            return defer.succeed(self.fenced)
        d = defer.Deferred()
        self._fencedWaiters.append(d)
        return d

    def startService(self):
        super().startService()
        # Every run is a new epoch: clients re-prime, and the router tells
        # this run's lease from the previous run's (whose release may still
        # be on its way).
        self._run += 1
        self.epoch = _newEpoch()
        self.state = STARTING
        self.fenced = None
        self._ready.reset()
        curve, problem = self._keys()
        self._transport = Transport(self.reactor, curve=curve)
        if problem is None:
            problem = self._openStateFile()
        for keyword in self._keywords.values():
            try:
                if not keyword.persist:
                    keyword.begin()
                elif self.stateFile is not None:
                    self.stateFile.begin(keyword)
                # else: the state file failed and nothing is served; a later
                # start may still restore the keyword
            except (CauldronError, ValueError) as e:
                log.error("{kw}: bad initial value: {e}", kw=keyword.name, e=e)
        problem = problem or self._unenforceablePermissions()
        if problem is not None:
            d = defer.fail(problem)
        elif self.config.get("zmq-router", "enable"):
            from cauldron.routerlink import RouterLink

            self._router = RouterLink(self, self._transport, self.reactor)
            d = self._router.start()
        else:
            d = defer.maybeDeferred(self._bindDirect)
        self._starting = d
        run = self._run
        d.addCallbacks(self._started, self._failedToStart, (run,), None, (run,))

    def stateFilePath(self):
        """The state file this dispatcher uses: ``statePath``, else the default for its names."""
        if self.statePath is not None:
            return self.statePath
        return defaultStatePath(self.name, self.dispatcherName)

    def _openStateFile(self):
        """Open the run's state file if a keyword persists; the ConfigError if it cannot be."""
        persisted = [kw.name for kw in self._keywords.values() if kw.persist]
        if not persisted:
            return None
        try:
            stateFile = StateFile(self.stateFilePath(), self.name, self.dispatcherName,
                                  self.reactor)
            stored = stateFile.open(
                persisted, forget=[kw.name for kw in self._keywords.values() if not kw.persist])
        except ConfigError as e:
            return e
        self.stateFile = stateFile
        log.info("dispatcher {name} keeps {n} persisted keywords in {path} ({stored} stored)",
                 name=self.label, n=len(persisted), path=stateFile.path, stored=len(stored))
        return None

    def _keys(self):
        """``(curve, None)``; ``(None, ConfigError)`` on a key problem, and then nothing binds.

        Secure mode fails closed: never a fall-back to plain text.
        """
        try:
            return Curve.fromConfig(self.config), None
        except ConfigError as e:
            return None, e

    def _unenforceablePermissions(self):
        """A ConfigError if writers/readers are set but cannot be checked (no secure mode).

        Without keys the dispatcher cannot tell who asks: a permission that
        cannot be enforced must not look enforced.
        """
        if self.config.get("security", "curve"):
            return None
        named = [f"{self.name}.{kw.name}" for kw in self._keywords.values()
                 if kw.writers is not None or kw.readers is not None]
        if self.writers is not None or self.readers is not None:
            named.insert(0, f"service {self.name}")
        if not named:
            return None
        return ConfigError(
            f"{', '.join(named[:3])}{' ...' if len(named) > 3 else ''}: writers/readers need "
            "secure mode ([security] curve = yes): without keys nobody can be told apart"
        )

    def _bindDirect(self):
        protocol = self.config.get("zmq", "protocol")
        host = self.config.get("zmq", "host")
        return self.bind(
            bindAddress(protocol, host, self.config.get("zmq", "dispatch-port")),
            bindAddress(protocol, host, self.config.get("zmq", "broadcast-port")),
        )

    def bind(self, dispatchAddress, broadcastAddress):
        """Bind both sockets; raises :class:`cauldron.transport.AddressInUse`.

        Used by the router link, which may retry with other ports.
        """
        router = self._transport.router(self._received, self._requestsAnswered)
        try:
            dispatch = router.bind(dispatchAddress)
            publisher = self._transport.publisher(self._subscribed, isTopic=self._isTopic)
            try:
                broadcast = publisher.bind(broadcastAddress)
            except Exception:
                self._transport.close(publisher)
                raise
        except Exception:
            self._transport.close(router)
            raise
        self._routerSocket, self._publisher = router, publisher
        self.dispatchAddress, self.broadcastAddress = dispatch, broadcast
        return dispatch, broadcast

    def _started(self, addresses, run):
        if run != self._run:
            return  # a previous run's start, overtaken by a stop
        self._starting = None
        self.state = SERVING
        self._heartbeat = task.LoopingCall(self._beat)
        self._heartbeat.clock = self.reactor
        self._heartbeat.start(self.heartbeatInterval, now=True)
        for loop in self._periods.values():
            if not loop.running:
                loop.start(loop.interval, now=True)
        log.info(
            "dispatcher {name} serving {n} keywords: dispatch {dispatch}, broadcast {broadcast}",
            name=self.label, n=len(self._keywords),
            dispatch=addresses[0], broadcast=addresses[1],
        )
        self._ready.set(addresses)

    def _failedToStart(self, failure, run):
        if run != self._run:
            return None  # a previous run's outcome: the stop that ended it answered already
        self._starting = None
        self.state = STOPPED  # it gave up: nothing about it may look alive
        log.error("dispatcher {name} could not start: {why}", name=self.label,
                  why=failure.getErrorMessage())
        self._ready.set(failure.value)
        return None

    def stopService(self):
        super().stopService()
        self._run += 1  # whatever the ending run still has in flight is ignored
        if self._starting is not None:
            starting, self._starting = self._starting, None
            starting.cancel()
        if not self._ready.known:
            self._ready.set(ServiceUnavailable(f"dispatcher {self.label} stopped while starting"))
        self.state = STOPPED
        self._stopServing(ServiceUnavailable(
            f"dispatcher {self.label} stopped before this write started"))
        for welcome in self._welcomes.values():
            welcome.cancel()
        self._welcomes.clear()
        for counter in (self.malformed, self.expired, self._droppedReplies, self._hookFailures):
            counter.stop()
        # What this run opened is closed even if the service starts again
        # before the router answered our release.
        transport, self._transport = self._transport, None
        self._publisher = self._routerSocket = None
        stateFile, self.stateFile = self.stateFile, None
        saved = defer.succeed(None) if stateFile is None else stateFile.stop()
        d = defer.succeed(None)
        if self._router is not None:
            d = self._router.stop()
            self._router = None
        d.addBoth(lambda _: transport is not None and transport.shutdown())
        d.addBoth(lambda result: saved.addCallback(lambda _: result))  # the last values saved
        self.dispatchAddress = self.broadcastAddress = None
        return d

    def _stopServing(self, error, flush=True):
        """Stop heartbeats and periodic reads; writes not yet started fail with ``error``.

        A write whose hooks are running completes (hardware cannot be
        un-moved), but nothing queued behind it ever reaches the hardware.
        Changes not yet broadcast go out now (``flush``) or never.
        """
        if flush:
            self._flush()
        else:
            self._takeOutbox()  # dropped: a fenced dispatcher broadcasts nothing more
            self._logAudits()  # but the writes it accepted are on record
        for loop in self._periods.values():
            if loop.running:
                loop.stop()
        if self._heartbeat is not None and self._heartbeat.running:
            self._heartbeat.stop()
        self._heartbeat = None
        queues, self._writeQueues = self._writeQueues, {}
        for queue in queues.values():
            waiting = list(queue)[1:]  # the first is running
            while len(queue) > 1:
                queue.pop()
            for entry in waiting:
                entry.finished.errback(error)

    def fence(self, conflict):
        """Another dispatcher took our dispatcher name or a keyword of ours: stop serving at once.

        Called by the router link when the router names another owner.  The
        sockets close, so clients still talking to this dispatcher get no
        answers and ask the router again; :meth:`whenFenced` waiters learn
        who took over.
        """
        if self.state != SERVING:
            return
        self.state = FENCED
        self.fenced = conflict
        detail = conflict.detail
        if detail.get("keyword"):
            what = (f"keyword {self.name.upper()}.{detail['keyword']} is now served by "
                    f"dispatcher {detail.get('dispatcher', '?')!r}")
        elif self.dispatcherName != self.name:
            what = (f"dispatcher name {self.dispatcherName!r} of service {self.name!r} is now "
                    "held by another dispatcher")
        else:
            what = f"service {self.name!r} is now served by another dispatcher"
        log.critical(
            "dispatcher {name} fenced: {what} on host {host} (ports {dispatch}/{broadcast}); "
            "stopped serving it",
            name=self.label, what=what, host=detail.get("host", "?"),
            dispatch=detail.get("dispatchPort", "?"), broadcast=detail.get("broadcastPort", "?"),
        )
        self._stopServing(ServiceUnavailable(
            f"dispatcher {self.label} lost its service to another dispatcher"), flush=False)
        if self.stateFile is not None:
            self.stateFile.discard()  # the new owner's values are the ones to keep
        for socket in (self._routerSocket, self._publisher):
            if socket is not None:
                self._transport.close(socket, discard=True)
        self._routerSocket = self._publisher = None
        waiters, self._fencedWaiters = self._fencedWaiters, []
        for d in waiters:
            d.callback(conflict)

    # -- broadcasting

    def _publish(self, keyword):
        """Broadcast a change at the end of this reactor turn, with any others made in it.

        Every change is sent (none is conflated): a burst of changes of one
        keyword goes out as a few :class:`Updates` batches, so the broadcast
        socket's high-water mark counts batches, not changes.  A change of a
        keyword no connection subscribes to would reach nobody: it is not
        made into a message at all.
        """
        self._changed[keyword.name] = keyword.sequence
        if keyword.persist and self.stateFile is not None:
            self.stateFile.changed(keyword)
        if self._publisher is None or keyword.writeonly:
            return
        if not self._publisher.heard(self._topicOf(keyword.name)):
            return  # nobody subscribed: a subscriber's welcome will bring the value
        entry = UpdateEntry(keyword.value, keyword.ascii, keyword.sequence, keyword.timestamp)
        self._outbox.setdefault(keyword.name, []).append(entry)
        self._flushSoon()

    def _topicOf(self, name):
        topic = self._topics.get(name)
        if topic is None:
            topic = self._topics[name] = codec.topicFor(name)
        return topic

    def _flushSoon(self):
        """Broadcast and log at the end of this reactor turn, after its replies went out.

        Changes made by requests are flushed once the requests read in this
        turn are answered; others (a timer's, a slow write's) by a call
        scheduled for the end of the turn.
        """
        if self._flushing is not None or self._flushAfterRead:
            return
        router = self._routerSocket
        if router is not None and router.reading:
            self._flushAfterRead = True
        else:
            self._flushing = self.reactor.callLater(0, self._flush)

    def _requestsAnswered(self):
        """The requests read in this turn are answered: what they changed goes out."""
        if self._flushAfterRead:
            self._flush()

    def _flush(self):
        """Broadcast every change still waiting, keyword by keyword, in order; log the writes."""
        for name, entries in self._takeOutbox().items():
            self._sendEntries(name, entries)
        self._logAudits()

    def _takeOutbox(self):
        """The changes waiting to be broadcast, which no longer wait (no timer left)."""
        if self._flushing is not None and self._flushing.active():
            self._flushing.cancel()
        self._flushing = None
        self._flushAfterRead = False
        outbox, self._outbox = self._outbox, {}
        return outbox

    def _flushKeyword(self, name):
        """Broadcast the changes of one keyword still waiting (before its welcome)."""
        entries = self._outbox.pop(name, None)
        if entries:
            self._sendEntries(name, entries)

    def _sendEntries(self, name, entries):
        for batch in _batches(entries):
            if len(batch) == 1:
                entry = batch[0]
                self._sendMessage(name, Update(self.name, name, entry.binary, entry.ascii,
                                               entry.sequence, entry.timestamp, self.epoch))
            elif not self._sendMessage(name, Updates(self.name, name, self.epoch, batch)):
                for entry in batch:  # one bad value must not take the others with it
                    self._sendEntries(name, [entry])

    def _sendMessage(self, name, message):
        """Send one broadcast; False (and a log line) if it cannot be encoded."""
        if self._publisher is None:
            return True
        frames, problem = _encoded(codec.encodeBroadcast, message)
        if frames is None:
            log.error("{kw}: cannot broadcast: {problem}", kw=name, problem=problem)
            return False
        self._publisher.send(frames)
        return True

    def _send(self, keyword, welcome=False):
        """Broadcast a keyword's current value now (a welcome, after what it waited behind)."""
        if self._publisher is None or keyword.writeonly:
            return
        self._flushKeyword(keyword.name)
        self._sendMessage(keyword.name, Update(
            self.name, keyword.name, keyword.value, keyword.ascii,
            keyword.sequence, keyword.timestamp, self.epoch, welcome,
        ))

    def _isTopic(self, topic, subscriber):
        """Whether subscribing to ``topic`` can ever bring ``subscriber`` (a key name) anything."""
        if topic == codec.HEARTBEAT_TOPIC:
            return True
        name = codec.keywordOfTopic(topic)
        keyword = self._keywords.get(name) if name else None
        return keyword is not None and not keyword.writeonly \
            and self._mayRead(keyword, subscriber)

    def _subscribed(self, topic):
        """A subscriber's subscription is live: send it the keyword's current value.

        Answers to a flood of subscriptions to one keyword are coalesced:
        at most one every WELCOME_INTERVAL, reaching every subscriber.
        """
        name = codec.keywordOfTopic(topic)
        keyword = self._keywords.get(name) if name else None
        if keyword is None or keyword.writeonly or name in self._welcomes:
            return
        now = self.reactor.seconds()
        delay = self._lastWelcome.get(name, now - WELCOME_INTERVAL) + WELCOME_INTERVAL - now
        if delay <= 0:
            self._welcome(keyword, now)
        else:
            self._welcomes[name] = self.reactor.callLater(delay, self._welcomeLater, keyword)

    def _welcomeLater(self, keyword):
        del self._welcomes[keyword.name]
        self._welcome(keyword, self.reactor.seconds())

    def _welcome(self, keyword, now):
        self._lastWelcome[keyword.name] = now
        self._send(keyword, welcome=True)

    def _beat(self):
        self._flush()  # a heartbeat never announces a change not yet broadcast
        changed, self._changed = self._changed, {}
        self._beats += 1
        if self._publisher is not None:
            beat = Heartbeat(
                self.name, self.epoch, self._wallClock(), self.heartbeatInterval, changed,
                self._beats,
            )
            self._publisher.send(codec.encodeBroadcast(beat))
        if self._router is not None:
            self._router.beat()

    def broadcast(self):
        """Publish every keyword's current value again (e.g. after a restart)."""
        for keyword in self._keywords.values():
            if keyword.value is not None:
                self._publish(keyword)

    # -- serving requests

    def _received(self, peer, frames):
        reply = answer(frames, self._handlers, self, peer, self.malformed)
        if isinstance(reply, defer.Deferred):
            reply.addCallback(self._replyLater, peer)
            reply.addErrback(self._replyFailed)
        elif reply is not None:
            self._reply(peer, reply)

    def _replyLater(self, message, identity):
        if message is not NO_REPLY:
            self._reply(identity, message)

    def _replyFailed(self, failure):
        self._hookFailures("replying failed: {log_failure}", level=LogLevel.error,
                           log_failure=failure)

    def _reply(self, identity, message):
        router = self._routerSocket
        if router is None or router.closed:
            return
        frames, problem = _encoded(codec.encode, message)
        if frames is None:
            frames = codec.encode(Error(message.id, "BadValue", f"cannot answer: {problem}"))
        if not router.sendTo(identity, frames):
            self._droppedReplies(type(message).__name__)

    def _encodedReply(self, message):
        """One reply's payload for a Batch (an Error if the reply cannot be encoded)."""
        payload, problem = _encoded(codec.encodePayload, message)
        if payload is None:
            payload = codec.encodePayload(
                Error(message.id, "BadValue", f"cannot answer: {problem}"))
        return payload

    def _valueReply(self, requestId, keyword):
        binary, ascii = readable(keyword)
        return Value(
            requestId, keyword.name, binary, ascii, keyword.sequence, keyword.timestamp,
            self.epoch,
        )

    def _keyword(self, request):
        """The keyword a request names, checking it was meant for this service."""
        self._checkService(request)
        return self[request.keyword]

    def _late(self, request):
        """Whether the request's client has given up on it (its deadline passed)."""
        if request.deadline and self._wallClock() >= request.deadline:
            self.expired(f"{type(request).__name__} {getattr(request, 'keyword', '')}".strip())
            return True
        return False

    def _mayRead(self, keyword, key):
        """Whether the client key named ``key`` may read, describe and monitor ``keyword``.

        ``key`` may be the requesting peer (a :class:`~cauldron.transport.Peer`):
        its key's name is then asked for only if the keyword names readers
        (asking libzmq for it costs a failed call in plain mode).
        """
        patterns = keyword.readers if keyword.readers is not None else self.readers
        return patterns is None or _permitted(patterns, _keyName(key))

    def _mayWrite(self, keyword, key):
        patterns = keyword.writers if keyword.writers is not None else self.writers
        return patterns is None or _permitted(patterns, _keyName(key))

    def _handleRead(self, request, peer):
        if self._late(request):
            return NO_REPLY
        keyword = self._keyword(request)
        if keyword.writeonly:
            raise WriteOnly(f"{self.name}.{keyword.name} is write-only")
        if not self._mayRead(keyword, peer):
            raise _denied(self.name, keyword, "read")
        if not _plainRead(keyword):
            done = _runHooks(keyword, READ_PATH)
            if isinstance(done, defer.Deferred):
                return done.addCallback(lambda _: self._valueReply(request.id, keyword))
        return self._valueReply(request.id, keyword)

    def _handleWrite(self, request, peer):
        if self._late(request):
            return NO_REPLY
        keyword = self._keyword(request)
        if keyword.readonly:
            raise ReadOnly(f"{self.name}.{keyword.name} is read-only")
        if not self._mayWrite(keyword, peer):
            raise _denied(self.name, keyword, "write")
        binary = keyword.toBinary(request.value)
        write = _QueuedWrite(request, peer, binary)
        queue = self._writeQueues.get(keyword.name)
        if queue is None:
            write.before = keyword.ascii
            done = _runHooks(keyword, WRITE_PATH, binary)
            if not isinstance(done, defer.Deferred):
                self._audit(write, keyword)
                return self._valueReply(request.id, keyword)
            # A slow write: later writes to this keyword wait for it, in order.
            self._notifyStarted(write)
            write.finished = defer.Deferred()
            queue = self._writeQueues[keyword.name] = deque([write])
            done.addBoth(self._writeFinished, keyword, queue)
        elif len(queue) > MAX_QUEUED_WRITES:
            raise ServiceUnavailable(
                f"{self.name}.{keyword.name}: {len(queue) - 1} writes already wait "
                "for a slow write to finish"
            )
        else:
            write.finished = defer.Deferred()
            queue.append(write)
        return write.finished.addCallback(lambda _: self._valueReply(request.id, keyword))

    def _notifyStarted(self, write):
        """Tell a slow write's client that it runs, so a timeout reports it may complete."""
        self._reply(write.peer, Started(write.request.id))

    def _writeFinished(self, result, keyword, queue):
        """The oldest queued write ended: answer it, then run the next ones.

        Answering first keeps replies in arrival order, each with the value
        its own write left.  Nothing more starts once the queue is no longer
        the service's (the run stopped, or the dispatcher was fenced), and a
        write whose deadline passed while it waited is refused, never run.
        """
        ended = queue.popleft()
        if isinstance(result, Failure):
            ended.finished.errback(result)
        else:
            self._audit(ended, keyword)
            ended.finished.callback(None)
        while queue and self._writeQueues.get(keyword.name) is queue:
            write = queue[0]
            if self._late(write.request):
                queue.popleft()
                write.finished.errback(CauldronTimeout(
                    f"{self.name}.{keyword.name}: the write waited past its deadline "
                    "and was not started"))
                continue
            write.before = keyword.ascii
            try:
                done = _runHooks(keyword, WRITE_PATH, write.binary)
            except Exception as e:
                queue.popleft()
                write.finished.errback(e)
                continue
            if isinstance(done, defer.Deferred):
                self._notifyStarted(write)
                done.addBoth(self._writeFinished, keyword, queue)
                return None
            queue.popleft()
            self._audit(write, keyword)
            write.finished.callback(None)
        if self._writeQueues.get(keyword.name) is queue:
            del self._writeQueues[keyword.name]
        return None

    def _handleDescribe(self, request, peer):
        if self._late(request):
            return NO_REPLY
        self._checkService(request)
        if request.keywords is None:
            names = self.keywords()
        else:
            names = list(dict.fromkeys(self[name].name for name in request.keywords))
        keywords = [self._described(self._keywords[name], peer) for name in names]
        return Description(request.id, self.name, self.epoch, keywords, self.heartbeatInterval,
                           self._wallClock())

    def _described(self, keyword, peer):
        info = describeWithValue(keyword)
        if not self._mayRead(keyword, peer):
            info.update(binary=None, ascii="", initial=None)  # its metadata only
        return info

    def _audit(self, write, keyword):
        """Record an accepted write, logged at the end of the turn (after its reply)."""
        after = keyword.ascii if not keyword.writeonly else None
        if self._publisher is None:  # stopped (a slow write finished late): no turn to end
            self._logAudit(write, keyword, after)
            return
        self._audits.append((write, keyword, after))
        self._flushSoon()

    def _logAudits(self):
        audits, self._audits = self._audits, []
        for write, keyword, after in audits:
            self._logAudit(write, keyword, after)

    def _logAudit(self, write, keyword, after):
        """Log an accepted write: who (key name, address, what the client says), what."""
        peer, origin = write.peer, _origin(write.request.origin)
        before = write.before
        if keyword.writeonly:
            before = after = "(write-only: not recorded)"
        secure = self._transport is not None and self._transport.secure
        # Only a secure peer has a key: asking libzmq in plain mode fails, slowly.
        key = getattr(peer, "userId", "") if secure else ""
        address = getattr(peer, "address", "")
        _emitAudit({
            "service": self.name, "keyword": keyword.name,
            "who": key or address or "a local client", "key": key or None, "address": address,
            "claimed": " ".join(f"{k}={v}" for k, v in origin.items()) or "no origin given",
            "origin": origin, "before": _shown(before), "after": _shown(after),
            "old": before, "new": after,
        })

    def _handleList(self, request, peer):
        if self._late(request):
            return NO_REPLY
        self._checkService(request)
        return KeywordList(request.id, self.name, self.keywords())

    def _checkService(self, request):
        if not request.service or request.service.lower() != self.name:
            raise UnknownService(
                f"the dispatcher at {self.dispatchAddress} serves {self.name!r}, "
                f"not {request.service!r}"
            )
        if request.owner and request.owner != self.epoch:
            raise NotOwner(
                f"the dispatcher at {self.dispatchAddress} is not the run of {self.name!r} "
                "the router named: ask the router again"
            )

    def _handlePing(self, request, peer):
        return Pong(request.id, self.name, self.epoch)

    def _handleBatch(self, batch, peer):
        """Answer each request of a Batch: those answered at once in one Batch, others later."""
        ready, size = [], 0
        for payload in batch.payloads:
            try:
                request = codec.decodeBatched(payload)
            except ProtocolError as e:
                self.malformed(str(e))
                continue
            reply = answerMessage(request, self._handlers, self, peer, self.malformed)
            if isinstance(reply, defer.Deferred):
                reply.addCallback(self._replyLater, peer)
                reply.addErrback(self._replyFailed)
            elif reply is not None:
                encoded = self._encodedReply(reply)
                if len(encoded) > BATCH_REPLY_BYTES:
                    self._reply(peer, reply)  # a large value travels on its own
                    continue
                if size + len(encoded) > BATCH_REPLY_BYTES:
                    self._reply(peer, Batch(ready))  # a Batch must fit in one message too
                    ready, size = [], 0
                ready.append(encoded)
                size += len(encoded)
        if not ready:
            return NO_REPLY
        return Batch(ready)

    _handlers = {
        Read: _handleRead,
        Write: _handleWrite,
        Describe: _handleDescribe,
        ListKeywords: _handleList,
        Ping: _handlePing,
        Batch: _handleBatch,
    }

    def _readPath(self, keyword):
        """preread -> read -> postread, as a Deferred (for periodic reads)."""
        return defer.maybeDeferred(_runHooks, keyword, READ_PATH)


#: The hook pipelines: (hook, called with the value, returns the new value).
READ_PATH = (("preread", False, False), ("read", False, True), ("postread", True, False))
WRITE_PATH = (
    ("check", True, False),
    ("prewrite", True, True),
    ("write", True, False),
    ("postwrite", True, False),
)


def _batches(entries):
    """``entries`` cut into runs of at most about BATCH_BYTES each."""
    batch, size = [], 0
    for entry in entries:
        cost = 2 * len(entry.ascii) + 48  # the binary form is about as long as the ascii
        if batch and size + cost > BATCH_BYTES:
            yield batch
            batch, size = [], 0
        batch.append(entry)
        size += cost
    if batch:
        yield batch


def _plainRead(keyword):
    """Whether reading ``keyword`` runs only the default hooks, which change nothing.

    Then its read path need not run at all: the hot path of a plain read.
    """
    cls, own = type(keyword), keyword.__dict__
    return (cls.preread is Basic.preread and cls.read is Basic.read
            and cls.postread is Basic.postread and "preread" not in own
            and "read" not in own and "postread" not in own)


def _runHooks(keyword, path, value=None, start=0):
    """Run the hooks of ``path`` in order, each at most once.

    Synchronous hooks run inline (the common case costs no Deferred); from the
    first hook that returns a Deferred on, the rest are chained to it and
    that Deferred is returned.  Errors are raised (or fail the Deferred) as
    typed :mod:`cauldron.errors` exceptions.
    """
    for index in range(start, len(path)):
        name, takesValue, givesValue = path[index]
        hook = getattr(keyword, name)
        try:
            result = hook(value) if takesValue else hook()
        except Exception as e:
            raise _typedError(e, keyword, name) from None
        if isinstance(result, defer.Deferred):
            result.addErrback(_typedHookError, keyword, name)
            return result.addCallback(_resumeHooks, keyword, path, index, givesValue, value)
        if givesValue:
            value = result
    return None


def _resumeHooks(result, keyword, path, index, givesValue, value):
    """Continue a pipeline after the hook at ``index`` returned a Deferred."""
    return _runHooks(keyword, path, result if givesValue else value, index + 1)


def _typedHookError(failure, keyword, name):
    raise _typedError(failure.value, keyword, name)


def _typedError(error, keyword, name):
    """The cauldron error a client sees for an exception raised by a hook."""
    if isinstance(error, CauldronError):
        return error
    if isinstance(error, (ValueError, TypeError)):
        return BadValue(f"{keyword.name}: {error}")
    _logHookFailure(Failure(error), keyword, name)
    return HookError(f"{keyword.name}: {name} failed: {type(error).__name__}: {error}")


def _logHookFailure(failure, keyword, name):
    """Log a hook's bug with its traceback, at a bounded rate (clients can repeat it)."""
    service = keyword.service
    limited = getattr(service, "_hookFailures", None)
    if limited is None:
        log.failure("{kw}: {hook} hook failed", failure, kw=keyword.name, hook=name)
    else:
        limited("{kw}: {hook} hook failed", level=LogLevel.critical, log_failure=failure,
                kw=keyword.name, hook=name)


def _keyName(peer):
    """The name of the peer's key (secure mode), else ""; a name given is itself."""
    if isinstance(peer, str):
        return peer
    return getattr(peer, "userId", "")


def _permitted(patterns, key):
    """Whether the key name matches a pattern (None: anyone let in may)."""
    if patterns is None:
        return True
    return bool(key) and any(fnmatch.fnmatchcase(key, p) for p in patterns)


def _denied(service, keyword, what):
    return PermissionDenied(f"{service}.{keyword.name}: your key may not {what} it",
                            detail={"keyword": keyword.name})


#: what a client may say of itself, and how much of it is kept
_ORIGIN_FIELDS = ("host", "user", "pid")
_ORIGIN_CHARS = 64


def _origin(claimed):
    """The fields of a client's own account we keep: known ones, short, printable."""
    kept = {}
    for field in _ORIGIN_FIELDS:
        value = claimed.get(field)
        if isinstance(value, (str, int)) and not isinstance(value, bool):
            text = str(value)[:_ORIGIN_CHARS]
            kept[field] = text if text.isprintable() else "".join(
                c for c in text if c.isprintable())
    return kept


def _emitAudit(event):
    """Log one audit event at info level: the event ``audit.info`` would make.

    Logger.info copies its arguments twice and checks the level against a
    freshly sorted list of every level, which cost as much as the rest of a
    write on the dispatcher; the audit's level is always info.
    """
    event.update(log_logger=audit, log_level=LogLevel.info, log_namespace=audit.namespace,
                 log_source=audit.source, log_format=_AUDIT_FORMAT, log_time=time.time())
    audit.observer(event)


def _shown(text, limit=80):
    return repr(text) if len(text) <= limit else repr(text[:limit]) + "..."


class _QueuedWrite:
    """A write waiting for (or running) its turn at a keyword's hooks."""

    __slots__ = ("request", "peer", "binary", "finished", "before")

    def __init__(self, request, peer, binary):
        self.request = request
        self.peer = peer
        self.binary = binary
        self.finished = None  # a Deferred, once it waits (a write done at once needs none)
        self.before = None  # the ascii value when its hooks started


def _encoded(encode, message):
    """``(frames, None)``, or ``(None, why)`` if the message cannot go on the wire."""
    try:
        frames = encode(message)
    except (ValueError, TypeError, OverflowError) as e:
        return None, f"the value cannot be encoded ({e})"
    size = len(frames) if isinstance(frames, bytes) else len(frames[-1])  # a payload, or frames
    if size > codec.MAX_MESSAGE_SIZE:
        return None, f"the answer exceeds {codec.MAX_MESSAGE_SIZE} bytes"
    return frames, None


def _newEpoch():
    """An id for one run of a dispatcher: unique across processes and restarts."""
    return f"{os.getpid():x}-{uuid.uuid4().hex[:12]}"
