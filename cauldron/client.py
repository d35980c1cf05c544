"""The Deferred client: find services, then read, write and monitor keywords.

A :class:`ClientService` is a Twisted service; add it to your application or
start it yourself.  ``client.service("demo")`` fires with a
:class:`RemoteService` whose keywords (:class:`RemoteKeyword`) know their
type and metadata from the dispatcher's ``describe`` answer.

Every request has a deadline.  Monitors never show a stale value: a monitor
is primed by the dispatcher's answer to its subscription (the current
value, which also proves the subscription is live), then receives every
newer change in order; a gap in the per-keyword sequence numbers, a
heartbeat announcing a newer sequence or a lost heartbeat triggers a
re-read.  A dispatcher silent for three heartbeats is reported disconnected;
when it is heard again its monitors are primed again.

A service may span several dispatchers, each owning some of its keywords
(:class:`RemoteDispatcher`): every request goes straight to the keyword's
own dispatcher, and one dispatcher's silence makes only its own keywords
fail fast.  Dispatchers that join a service later are found within
:data:`DISCOVERY_INTERVAL` seconds.
"""

import getpass
import math
import os
import socket
import time
from collections import deque, namedtuple
from functools import partial

from twisted.application import service
from twisted.internet import defer, task
from twisted.logger import Logger, LogLevel
from twisted.python.failure import Failure

from cauldron import config as _config
from cauldron import keywords as _keywords
from cauldron.errors import (
    BadValue,
    CauldronError,
    ConfigError,
    NotOwner,
    ServiceUnavailable,
    UnknownKeyword,
    UnknownService,
)
from cauldron.feeds import joinFeed
from cauldron.protocol import codec
from cauldron.protocol.messages import (
    Describe,
    Description,
    Heartbeat,
    ListKeywords,
    Read,
    Update,
    Updates,
    Write,
    checkValue,
)
from cauldron.requests import RequestChannel
from cauldron.routerlink import WILDCARD_HOSTS, Where
from cauldron.serving import RateLimitedCounter, RateLimitedLog
from cauldron.transport import Curve, Transport, bindAddress

__all__ = ["ClientService", "RemoteService", "RemoteDispatcher", "RemoteKeyword", "KeywordValue",
           "Subscription"]

log = Logger()

#: missed heartbeats after which a dispatcher is reported disconnected
LIVENESS = 3
DEFAULT_HEARTBEAT = 1.0
#: keywords per describe request when a service is too large for one answer
DESCRIBE_CHUNK = 16
#: the liveness check never runs more often than this (a hostile interval of 0)
MIN_CHECK_PERIOD = 0.01
#: clock readings of a dispatcher kept to bound the offset between the clocks
CLOCK_SAMPLES = 8
#: seconds between two questions to the router while it still names a refusing owner
RELOCATE_RETRY = 0.05
#: seconds between two questions to the router for dispatchers that joined a service
DISCOVERY_INTERVAL = 2.0

KeywordValue = namedtuple("KeywordValue", "name binary ascii sequence timestamp epoch missed",
                          defaults=(0,))
KeywordValue.__doc__ = """One value of a keyword, as the dispatcher published it.

``missed`` (monitor callbacks only) counts the values of this run of the
dispatcher that the monitor did not get between the previous one and this
one: 0 unless the subscriber stalled and the broadcast socket dropped some.
"""


class ClientService(service.Service):
    """Talks to dispatchers (found directly or through the router).

    :param config: a path, a loaded :class:`cauldron.config.Config` or None.
    :param timeout: default deadline of every request, in seconds.
    :param shareConnections: hear each dispatcher's broadcasts on the
        reactor's shared connection (see :mod:`cauldron.feeds`); False gives
        this client connections of its own.  Secure clients never share.
    """

    def __init__(self, config=None, reactor=None, timeout=5.0, shareConnections=True):
        if reactor is None:
            from twisted.internet import reactor
        self.config = _config.load(config)
        self.reactor = reactor
        self.timeout = timeout
        self.shareConnections = shareConnections
        self._transport = None
        self._services = {}
        self._connecting = {}
        self._loading = set()
        self._locator = None
        #: what writes say of who sends them, for the dispatcher's record
        self.origin = _origin()

    def startService(self):
        """Open the transport; a ConfigError (and nothing started) on a key problem."""
        curve = Curve.fromConfig(self.config)  # fails closed, before anything runs
        super().startService()
        # Clients bind nothing: a thousand of them share one ZeroMQ context.
        self._transport = Transport(self.reactor, curve=curve, shared=True)
        if self.config.get("zmq-router", "enable"):
            from cauldron.routerlink import Locator

            # Calls to the router use [zmq-router] timeout, as the seed says.
            self._locator = Locator(self.config, self._transport)

    def stopService(self):
        super().stopService()
        for waiters in list(self._connecting.values()):
            for waiter in waiters:
                waiter.cancel()
        for remote in list(self._services.values()) + list(self._loading):
            remote.close()
        self._services.clear()
        if self._locator is not None:
            self._locator.close()
            self._locator = None
        if self._transport is not None:
            self._transport.shutdown()
            self._transport = None
        return defer.succeed(None)

    def service(self, name):
        """A Deferred firing with the :class:`RemoteService` called ``name``."""
        if self._transport is None:
            return defer.fail(ServiceUnavailable("the client service is not running"))
        name = name.lower()
        if name in self._services:
            return defer.succeed(self._services[name])
        mine = defer.Deferred()
        if name in self._connecting:
            self._connecting[name].append(mine)
            return mine
        self._connecting[name] = [mine]
        pending = self._locate(name)
        pending.addCallback(self._connectService, name)
        pending.addBoth(self._connected, name)
        return mine

    def _locate(self, name):
        """A list of :class:`~cauldron.routerlink.Where`: each dispatcher of service ``name``."""
        if self._locator is not None:
            return self._locator.locate(name)
        protocol, host = self.config.get("zmq", "protocol"), self.config.get("zmq", "host")
        if host in WILDCARD_HOSTS:
            host = "localhost"  # a dispatcher bound on every interface answers here too
        return defer.maybeDeferred(lambda: [Where(
            bindAddress(protocol, host, self.config.get("zmq", "dispatch-port")),
            bindAddress(protocol, host, self.config.get("zmq", "broadcast-port")),
            "",
            self._directKey(name),
            name,
        )])

    def _directKey(self, name):
        """Without a router, a dispatcher's key is ``dispatcher-keys/SERVICE.key`` (secure mode)."""
        curve = self._transport.curve
        if curve is None:
            return None
        key = curve.dispatcherKey(name)
        if key is None:
            raise ConfigError(f"{self.config.source}: [security] dispatcher-keys: no key named "
                              f"{name!r}, and without a router a client needs the public key "
                              "of the service's dispatcher")
        return key

    def _connectService(self, wheres, name):
        remote = RemoteService(self, name, wheres)
        self._loading.add(remote)
        d = remote.load()
        d.addErrback(_closeAndFail, remote)

        def loaded(result):
            self._loading.discard(remote)
            return result

        return d.addBoth(loaded)

    def _connected(self, result, name):
        """Hand the outcome to every caller waiting for this service (each has its own Deferred)."""
        waiters = self._connecting.pop(name, [])
        if isinstance(result, RemoteService):
            if self.running:
                self._services[name] = result
            else:
                result.close()
                result = Failure(ServiceUnavailable("the client service stopped"))
        for waiter in waiters:
            if isinstance(result, Failure):
                waiter.errback(result)
            else:
                waiter.callback(result)


def _origin():
    """This process, as it describes itself to dispatchers (unverified, for their logs)."""
    try:
        user = getpass.getuser()
    except Exception:  # no name for the uid (a container, say)
        user = str(os.getuid())
    return {"host": socket.gethostname(), "user": user, "pid": os.getpid()}


def _checkPeriod(interval):
    """How often to check liveness: every heartbeat, within sane bounds."""
    return min(max(interval, MIN_CHECK_PERIOD), DEFAULT_HEARTBEAT)


def _closeAndFail(failure, remote):
    remote.close()
    return failure


class RemoteService:
    """A service as seen from a client: its keywords, from every dispatcher serving them.

    A service may span several dispatchers (each owns some of its keywords);
    requests for a keyword go straight to the dispatcher owning it, and each
    dispatcher's liveness is followed on its own (:attr:`dispatchers`).

    :ivar name: the service's name.
    """

    def __init__(self, client, name, wheres, wallClock=time.time):
        self.name = name
        self._client = client
        self._reactor = client.reactor
        self._wallClock = wallClock
        self._transport = client._transport
        self._keywords = {}
        self._dispatchers = {}
        self._stateCallbacks = []
        self._notices = RateLimitedLog(client.reactor, burst=5)
        self._closed = False
        self._discovering = None
        self._discovery = None
        for where in wheres:
            self._addDispatcher(where)

    def _addDispatcher(self, where):
        dispatcher = RemoteDispatcher(self, where)
        self._dispatchers[dispatcher.name] = dispatcher
        for name in where.keywords:
            if name not in self._keywords:
                self._keywords[name] = RemoteKeyword(dispatcher, {"name": name})
        return dispatcher

    # -- setup and teardown

    def load(self):
        """Describe every dispatcher's keywords; fires with self once known.

        A dispatcher that does not answer does not keep the others' keywords
        from use: its keywords (named by the router) fail fast until it is
        heard again and described.  Only when none answers does loading fail.
        """
        dispatchers = list(self._dispatchers.values())
        d = defer.DeferredList([dispatcher.load() for dispatcher in dispatchers],
                               consumeErrors=True)
        d.addCallback(self._loaded, dispatchers)
        return d

    def _loaded(self, results, dispatchers):
        failures = [result for ok, result in results if not ok]
        if len(failures) == len(results):
            return failures[0]
        for dispatcher, (ok, failure) in zip(dispatchers, results, strict=True):
            if not ok:
                dispatcher._loadFailed(failure)
        self._scheduleDiscovery()
        return self

    def close(self):
        """Stop monitoring, cancel pending requests, close the sockets."""
        if self._closed:
            return
        self._closed = True
        if self._discovery is not None and self._discovery.active():
            self._discovery.cancel()
        if self._discovering is not None:
            self._discovering.cancel()
        for keyword in self._keywords.values():
            keyword._close()
        for dispatcher in self._dispatchers.values():
            dispatcher._close()
        self._notices.stop()

    # -- dispatchers

    @property
    def dispatchers(self):
        """The :class:`RemoteDispatcher` of each dispatcher serving the service, by name."""
        return dict(self._dispatchers)

    @property
    def primary(self):
        """The dispatcher named after the service, else the first by name.

        The one a single-dispatcher service has; :attr:`epoch`, :attr:`owner`
        and the addresses are its.
        """
        dispatcher = self._dispatchers.get(self.name)
        if dispatcher is None:
            dispatcher = self._dispatchers[min(self._dispatchers)]
        return dispatcher

    @property
    def connected(self):
        """True while every dispatcher of the service is heard (see :attr:`lost`)."""
        return all(d.connected for d in self._dispatchers.values())

    @property
    def lost(self):
        """The names of the dispatchers that missed their heartbeats, sorted."""
        return sorted(name for name, d in self._dispatchers.items() if not d.connected)

    @property
    def epoch(self):
        return self.primary.epoch

    @property
    def owner(self):
        return self.primary.owner

    @property
    def heartbeatInterval(self):
        return self.primary.heartbeatInterval

    @property
    def dispatchAddress(self):
        return self.primary.dispatchAddress

    @property
    def broadcastAddress(self):
        return self.primary.broadcastAddress

    @property
    def serverKey(self):
        return self.primary.serverKey

    def request(self, makeMessage, what, timeout=None, convert=None):
        """Send a request to the primary dispatcher (see :meth:`RemoteDispatcher.request`)."""
        return self.primary.request(makeMessage, what, timeout, convert)

    def _scheduleDiscovery(self):
        """Ask the router, now and then, whether another dispatcher joined the service."""
        if self._client._locator is None or self._closed:
            return
        self._discovery = self._reactor.callLater(DISCOVERY_INTERVAL, self._discover)

    def _discover(self):
        self._discovery = None
        if self._closed:
            return
        d = self._discovering = self._client._locator.locate(self.name)
        d.addCallback(self._discovered)
        d.addErrback(lambda f: f.trap(CauldronError, defer.CancelledError) and None)
        d.addErrback(lambda f: log.failure("looking for dispatchers of {name} failed", f,
                                           name=self.name))

        def done(_):
            self._discovering = None
            self._scheduleDiscovery()

        d.addBoth(done)

    def _discovered(self, wheres):
        """New dispatchers are described and their keywords added; moved ones followed."""
        for where in wheres:
            dispatcher = self._dispatchers.get(where.dispatcher)
            if dispatcher is None:
                dispatcher = self._addDispatcher(where)
                self._notices("service {name}: dispatcher {d} joined with {n} keywords",
                              level=LogLevel.info, name=self.name, d=dispatcher.name,
                              n=len(where.keywords))
                dispatcher.load().addErrback(dispatcher._loadFailed)
            else:
                dispatcher._moveTo(where)
                if not set(where.keywords) <= set(dispatcher.keywords()):
                    dispatcher.load().addErrback(dispatcher._loadFailed)

    def _described(self, dispatcher, infos):
        """Keywords a dispatcher described: new ones added, known ones updated."""
        for info in infos:
            keyword = self._keywords.get(info["name"])
            if keyword is None:
                self._keywords[info["name"]] = RemoteKeyword(dispatcher, info)
            else:
                keyword._redescribed(dispatcher, info)

    # -- keywords

    def keywords(self):
        """The names of every keyword the service serves, sorted."""
        return sorted(self._keywords)

    def __getitem__(self, name):
        try:
            return self._keywords[name.upper()]
        except KeyError:
            raise UnknownKeyword(
                f"service {self.name!r} has no keyword {name.upper()!r}"
            ) from None

    def __contains__(self, name):
        return name.upper() in self._keywords

    def __iter__(self):
        return iter(self[name] for name in self.keywords())

    def describe(self, names=None):
        """Fresh metadata and values: a Deferred firing with a list of dicts.

        Each dict names its keyword's dispatcher (``"dispatcher"``).  Keywords
        of a dispatcher that does not answer make the whole call fail.
        """
        if names is None:
            wanted = {dispatcher: None for dispatcher in self._dispatchers.values()}
            order = None  # every keyword described, by name
        else:
            order = list(dict.fromkeys(self[n].name for n in names))  # each once
            wanted = {}
            for name in order:
                wanted.setdefault(self[name].dispatcher, []).append(name)
        d = defer.gatherResults([dispatcher.describe(these) for dispatcher, these in
                                 wanted.items()], consumeErrors=True)
        d.addErrback(lambda f: f.value.subFailure)

        def merged(parts):
            infos = {info["name"]: info for part in parts for info in part}
            return [infos[name] for name in (order or sorted(infos)) if name in infos]

        return d.addCallback(merged)

    # -- liveness

    def addStateCallback(self, callback):
        """Call ``callback(remoteService)`` whenever a dispatcher is lost or heard again.

        :attr:`connected` and :attr:`lost` say which dispatchers are heard.
        """
        self._stateCallbacks.append(callback)

    def removeStateCallback(self, callback):
        if callback in self._stateCallbacks:
            self._stateCallbacks.remove(callback)

    def _stateChanged(self):
        for callback in list(self._stateCallbacks):
            try:
                callback(self)
            except Exception:
                log.failure("state callback {cb!r} failed", cb=callback)


class RemoteDispatcher:
    """One dispatcher of a remote service: its sockets, its run and its liveness.

    :ivar name: the dispatcher's name within its service (the service's name
        unless the service spans several dispatchers).
    :ivar connected: False while the dispatcher misses its heartbeats.
    :ivar epoch: identifies the dispatcher's current run; a restart changes it.
    :ivar owner: the run the router named (requests carry it; "" without a router).
    :ivar host: the host the router names for it ("" without a router).
    """

    def __init__(self, remote, where):
        self.service = remote
        self.name = where.dispatcher or remote.name
        self.host = where.host
        self.dispatchAddress = where.dispatchAddress
        self.broadcastAddress = where.broadcastAddress
        self.owner = where.owner
        #: the dispatcher's CURVE public key (secure mode)
        self.serverKey = where.serverKey
        self.connected = False
        self.epoch = None
        self.heartbeatInterval = DEFAULT_HEARTBEAT
        self.described = False
        client = remote._client
        self._client = client
        self._reactor = client.reactor
        self._wallClock = remote._wallClock
        self._staleEpochs = deque(maxlen=16)  # recent runs whose late messages we drop
        self._lastBeat = None
        self._clockOffsets = deque(maxlen=CLOCK_SAMPLES)
        self._clockAhead = None  # the smallest of them: how far ours may be ahead
        self._clockEpoch = None
        self.malformed = RateLimitedCounter(f"malformed broadcasts from {self}", client.reactor)
        self._notices = remote._notices
        self._lastHeard = self._reactor.seconds()
        self._closed = False
        self._lost = False
        self._relocating = None
        self._loadWaiters = []
        self._watchdog = None
        self._transport = remote._transport
        self._channel = self._newChannel()
        self._feed = self._joinFeed()

    def __str__(self):
        if self.name == self.service.name:
            return f"service {self.name!r}"
        return f"service {self.service.name!r} (dispatcher {self.name!r})"

    def __repr__(self):
        return f"<RemoteDispatcher {self.service.name}/{self.name} at {self.dispatchAddress}>"

    def _joinFeed(self):
        return joinFeed(self, self._transport, self.broadcastAddress, self.serverKey,
                        self._client.shareConnections)

    def _newChannel(self):
        return RequestChannel(
            self._transport, self.dispatchAddress, f"{self} at {self.dispatchAddress}",
            self._client.timeout, serverKey=self.serverKey, batched=True,
        )

    def keywords(self):
        """The names of the keywords this dispatcher serves, sorted."""
        return sorted(name for name, kw in self.service._keywords.items()
                      if kw.dispatcher is self)

    def _keywordObjects(self):
        return [kw for kw in self.service._keywords.values() if kw.dispatcher is self]

    # -- setup and teardown

    def load(self):
        """Describe every keyword; fires with self once known (one describe at a time)."""
        waiter = defer.Deferred()
        self._loadWaiters.append(waiter)
        if len(self._loadWaiters) == 1:
            d = self.describe(None)
            d.addCallback(self._described)
            d.addBoth(self._loadDone)
        return waiter

    def _loadDone(self, result):
        waiters, self._loadWaiters = self._loadWaiters, []
        for waiter in waiters:
            if isinstance(result, Failure):
                waiter.errback(result)
            else:
                waiter.callback(result)

    def describe(self, names):
        """The dispatcher's answer to ``describe`` (in parts if too large for one)."""
        d = self.request(lambda i, dl, o: Describe(i, names, self.service.name, dl, o),
                         "describe")
        if names is None:
            d.addErrback(self._describeInParts)
        d.addCallback(self._checkDescription)
        d.addCallback(self._tagged)
        return d

    def _tagged(self, description):
        """The description's keyword dicts, each naming this dispatcher."""
        for info in description.keywords:
            info["dispatcher"] = self.name
        return description.keywords

    @defer.inlineCallbacks
    def _describeInParts(self, failure):
        """A service too large to describe in one message is described in parts."""
        failure.trap(BadValue)
        listing = yield self.request(
            lambda i, dl, o: ListKeywords(i, self.service.name, dl, o), "list")
        if not listing.names:
            return failure
        keywords = []
        for start in range(0, len(listing.names), DESCRIBE_CHUNK):
            names = listing.names[start:start + DESCRIBE_CHUNK]
            part = yield self.request(
                lambda i, dl, o, n=names: Describe(i, n, self.service.name, dl, o), "describe")
            keywords.extend(part.keywords)
        return Description(part.id, part.service, part.epoch, keywords, part.heartbeat, part.now)

    def _checkDescription(self, description):
        if description.service != self.service.name:
            raise UnknownService(
                f"no service {self.service.name!r} at {self.dispatchAddress} "
                f"(the dispatcher there serves {description.service!r})"
            )
        self._noteEpoch(description.epoch)
        self._noteClock(description.epoch, description.now)
        self._setHeartbeatInterval(description.heartbeat)
        return description

    def _described(self, infos):
        self.service._described(self, infos)
        self.described = True
        self._heard()
        self._scheduleWatchdog()
        return self

    def _loadFailed(self, failure):
        """Not described: its keywords wait, failing fast, until it is heard again."""
        if failure.check(CauldronError):
            self._notices("{d} could not be described: {why}", level=LogLevel.info, d=self,
                          why=failure.getErrorMessage())
        elif not failure.check(defer.CancelledError):
            log.failure("describing {d} failed", failure, d=self)
        self._lost = not self.described
        self._scheduleWatchdog()

    def _close(self):
        self._closed = True
        self._cancelWatchdog()
        if self._relocating is not None:
            self._relocating.cancel()
        self._channel.close()
        self._feed.leave(self)
        self.malformed.stop()

    # -- requests

    def request(self, makeMessage, what, timeout=None, convert=None):
        """Send a request to the dispatcher; a Deferred with the reply message.

        ``makeMessage(id, deadline, owner)`` builds the request: ``deadline``
        is when the dispatcher must no longer start it, on the dispatcher's
        clock; ``owner`` is the dispatcher run the router named.  A refusal
        by a dispatcher that is not that owner sends the request again to
        the one the router names now, within the same deadline.  While the
        dispatcher is lost (silent for three heartbeats) requests fail at once.
        With ``convert``, the Deferred fires with ``convert(reply)`` instead.
        """
        timeout = self._client.timeout if timeout is None else timeout
        if self._closed:
            return defer.fail(ServiceUnavailable(f"{self}: connection closed"))
        if self._lost:
            return defer.fail(ServiceUnavailable(
                f"{self} at {self.dispatchAddress}: {what}: the dispatcher is not answering "
                f"(silent for {LIVENESS} heartbeats)"))
        owner = self.owner
        deadline = self._deadline(timeout)
        onError = None
        if self._client._locator is not None:
            giveUpAt = self._reactor.seconds() + timeout
            onError = partial(self._refused, makeMessage, what, convert, owner, giveUpAt)
        try:
            return self._channel.request(lambda i: makeMessage(i, deadline, owner),
                                         f"{self.service.name}: {what}", timeout,
                                         convert, onError)
        except Exception:
            return defer.fail()

    def _refused(self, makeMessage, what, convert, owner, giveUpAt, d, error):
        """An error reply: a NotOwner one is sent again (see :meth:`_notOwner`)."""
        if not isinstance(error, NotOwner):
            return False
        retried = self._notOwner(error, makeMessage, what, convert, owner, giveUpAt)
        retried.addBoth(_handOn, d)
        return True

    @defer.inlineCallbacks
    def _notOwner(self, error, makeMessage, what, convert, refused, giveUpAt):
        """The dispatcher that answered is not the router's owner: ask, then send again.

        The refused request never ran there, so sending it again is safe,
        writes included.  While the router still names the refused owner (a
        takeover being registered), ask again shortly, until the deadline.
        """
        while self.owner == refused:
            if self._closed:
                raise error
            try:
                where = yield self._locate()
            except CauldronError:
                raise error from None
            if where is None:
                raise error
            if where.owner != refused or where[:2] != (self.dispatchAddress,
                                                       self.broadcastAddress):
                self._moveTo(where)
                break
            left = giveUpAt - self._reactor.seconds()
            if left <= RELOCATE_RETRY:
                raise error
            yield task.deferLater(self._reactor, RELOCATE_RETRY, lambda: None)
        left = giveUpAt - self._reactor.seconds()
        if left <= 0:
            raise error
        result = yield self.request(makeMessage, what, left, convert)
        return result

    def _locate(self):
        """Fires with this dispatcher's current Where from the router, or None."""
        d = self._client._locator.locate(self.service.name)
        d.addCallback(lambda wheres: next(
            (w for w in wheres if (w.dispatcher or self.service.name) == self.name), None))
        return d

    # -- clocks: deadlines on the dispatcher's clock

    def _noteClock(self, epoch, dispatcherNow):
        """Bound how far our clock is ahead of the dispatcher's, from one of its readings.

        ``ours - theirs`` read on arrival exceeds the true offset by the
        transit time, so the smallest recent sample is a safe upper bound:
        a deadline converted with it is never later than ours.
        """
        if not dispatcherNow:
            return
        if epoch != self._clockEpoch:  # another run, perhaps on another host
            self._clockOffsets.clear()
            self._clockEpoch = epoch
        self._clockOffsets.append(self._wallClock() - dispatcherNow)
        self._clockAhead = min(self._clockOffsets)  # asked by every request

    def _deadline(self, timeout):
        """When, on the dispatcher's clock, it must no longer start a request of ours.

        0 (none) until the dispatcher's clock has been read once: only the
        first ``describe`` goes without, and it changes nothing.
        """
        if self._clockAhead is None:
            return 0.0
        return self._wallClock() + timeout - self._clockAhead

    # -- liveness

    def broadcastReceived(self, message):
        """A heartbeat, or an update of a keyword monitored here (from our feed)."""
        if message.service != self.service.name or message.epoch in self._staleEpochs:
            return
        self._noteEpoch(message.epoch)
        self._heard()  # any broadcast shows the dispatcher is alive
        if isinstance(message, Heartbeat):
            self._noteClock(message.epoch, message.timestamp)
            self._setHeartbeatInterval(message.interval)
            self._checkBeat(message)
            return
        keyword = self.service._keywords.get(message.keyword)
        if keyword is None or keyword.dispatcher is not self:
            return
        if isinstance(message, Update):
            keyword._broadcast(KeywordValue(
                message.keyword, message.binary, message.ascii,
                message.sequence, message.timestamp, message.epoch,
            ), message.welcome)
        elif isinstance(message, Updates):
            name, epoch = message.keyword, message.epoch
            keyword._broadcastMany([
                KeywordValue(name, e.binary, e.ascii, e.sequence, e.timestamp, epoch)
                for e in message.entries
            ])

    def _noteEpoch(self, epoch):
        if epoch == self.epoch:
            return
        restarted = self.epoch is not None
        if restarted:
            self._staleEpochs.append(self.epoch)
        self.epoch = epoch
        self._lastBeat = None
        if restarted:
            self._notices("{d} restarted (epoch {epoch})", level=LogLevel.info,
                          d=self, epoch=epoch)
            self._relocate()  # learn the new run's owner identity before it refuses us
            self._reprime()

    def _setHeartbeatInterval(self, interval):
        """Follow the dispatcher's heartbeat interval (the watchdog follows at its next run)."""
        if interval == self.heartbeatInterval or not math.isfinite(interval) or interval <= 0:
            return  # unchanged, or nonsense that would break the liveness check
        self.heartbeatInterval = interval

    def _heard(self):
        self._lastHeard = self._reactor.seconds()
        if self.connected:
            return
        if not self.described:
            # Lost before it was ever described: describe it now that it answers.
            if not self._loadWaiters:
                self._lost = False
                self.load().addErrback(self._loadFailed)
            return
        wasKnown = self.epoch is not None
        self._lost = False
        self._setConnected(True)
        if wasKnown:
            self._reprime()
        self._scheduleWatchdog()

    def _scheduleWatchdog(self):
        """One timer, due when the dispatcher will have been silent for LIVENESS beats.

        It is not moved by every message (that would cost a timer operation
        per update); when it fires early it sets itself again.  While the
        dispatcher is disconnected it fires every heartbeat to ask the router
        where it is.
        """
        if self._closed:
            return
        if self.connected:
            due = self._lastHeard + self._silenceLimit() - self._reactor.seconds()
        else:
            due = _checkPeriod(self.heartbeatInterval)
        delay = max(due, MIN_CHECK_PERIOD)
        if self._watchdog is not None and self._watchdog.active():
            self._watchdog.reset(delay)
        else:
            self._watchdog = self._reactor.callLater(delay, self._checkLiveness)

    def _cancelWatchdog(self):
        if self._watchdog is not None and self._watchdog.active():
            self._watchdog.cancel()
        self._watchdog = None

    def _silenceLimit(self):
        return LIVENESS * self.heartbeatInterval

    def _checkLiveness(self):
        self._watchdog = None
        if self._closed:
            return
        if self.connected and self._silent():
            # Heartbeats may wait unread because this process was busy: read
            # them before calling the dispatcher dead.
            self._feed.read()
        if self.connected and self._silent():
            names = self.keywords()
            self._notices("{d} missed {n} heartbeats: disconnected ({k} keywords unavailable)",
                          d=self, n=LIVENESS, k=len(names))
            self._lost = True
            self._setConnected(False)
            self._channel.failAll(ServiceUnavailable(
                f"{self} at {self.dispatchAddress} stopped answering; "
                "the outcome of requests in flight is unknown"
            ), reconnect=True)
        if not self.connected:
            self._relocate()
        self._scheduleWatchdog()

    def _silent(self):
        return self._reactor.seconds() - self._lastHeard >= self._silenceLimit()

    def _relocate(self):
        """Ask the router where the dispatcher is now (it may have moved, or restarted)."""
        if self._client._locator is None or self._relocating is not None or self._closed:
            return
        d = self._relocating = self._locate()
        d.addCallback(lambda where: where is not None and self._moveTo(where))
        # Not registered again yet, or no router: ask again next time.
        d.addErrback(lambda f: f.trap(CauldronError, defer.CancelledError) and None)
        d.addErrback(lambda f: log.failure("relocating {d} failed", f, d=self))

        def done(_):
            self._relocating = None

        d.addBoth(done)

    def _moveTo(self, where):
        """Follow the router: a new owner, and new addresses if they changed."""
        if self._closed:
            return
        self.owner = where.owner
        self.host = where.host or self.host
        if (where.dispatchAddress, where.broadcastAddress, where.serverKey) == (
                self.dispatchAddress, self.broadcastAddress, self.serverKey):
            return
        self._notices("{d} moved to {addresses}", level=LogLevel.info, d=self,
                      addresses=(where.dispatchAddress, where.broadcastAddress))
        self.dispatchAddress, self.broadcastAddress = where.dispatchAddress, where.broadcastAddress
        self.serverKey = where.serverKey
        self._lost = False  # a new place: requests go there until it too falls silent
        self._channel.close(ServiceUnavailable(f"{self} moved"))
        self._channel = self._newChannel()
        self._feed.leave(self)
        self._feed = self._joinFeed()
        for keyword in self._keywordObjects():
            if keyword._subscribed:
                keyword._listen()

    def _setConnected(self, connected):
        self.connected = connected
        self.service._stateChanged()

    def _reprime(self):
        for keyword in self._keywordObjects():
            if keyword.monitored:
                keyword._refresh()

    def _checkBeat(self, beat):
        """Re-read monitored keywords whose latest change we may have missed."""
        missedBeat = self._lastBeat is not None and beat.count > self._lastBeat + 1
        self._lastBeat = beat.count
        if missedBeat:
            self._reprime()  # the lost heartbeat may have named changes we lost too
            return
        for name, sequence in beat.sequences.items():
            keyword = self.service._keywords.get(name)
            if keyword is not None and keyword.dispatcher is self and keyword.monitored \
                    and keyword.isBehind(sequence):
                keyword._refresh()


class RemoteKeyword:
    """A keyword of a remote service.

    :ivar info: the keyword's metadata from ``describe``.
    :ivar latest: the newest :class:`KeywordValue` seen, or None.
    :ivar dispatcher: the :class:`RemoteDispatcher` that serves it.
    """

    def __init__(self, dispatcher, info):
        self.dispatcher = dispatcher
        self.service = dispatcher.service
        self.name = info["name"]
        self._readWhat = f"read {self.name}"
        self._writeWhat = f"write {self.name}"
        self.latest = None
        self._subscriptions = []
        self._subscribed = False
        self._active = False
        self._activation = []
        self._refreshing = None  # the re-read in flight, if any
        self._refreshAgain = False
        self._describedAs(info)

    def _describedAs(self, info):
        self.info = info
        try:
            self.type = _keywords.fromDescription(info)
        except CauldronError:
            self.type = _keywords.Basic(self.name)
        if info.get("sequence"):
            self._accept(KeywordValue(
                self.name, info.get("binary"), info.get("ascii", ""),
                info["sequence"], info.get("timestamp"), self.dispatcher.epoch,
            ))

    def _redescribed(self, dispatcher, info):
        """New metadata, perhaps from another dispatcher now serving the keyword."""
        if dispatcher is not self.dispatcher:
            if self._subscribed:
                self.dispatcher._feed.unsubscribe(codec.topicFor(self.name), self.dispatcher)
            self.dispatcher = dispatcher
            self.latest = None
            if self._subscribed:
                self._listen()
        self._describedAs(info)

    def __repr__(self):
        return f"<RemoteKeyword {self.service.name}.{self.name}>"

    @property
    def connected(self):
        """Whether the keyword's dispatcher is heard (see :attr:`RemoteService.lost`)."""
        return self.dispatcher.connected

    @property
    def monitored(self):
        return bool(self._subscriptions)

    # -- read and write

    def read(self, binary=False, both=False, timeout=None):
        """A Deferred with the current value: ascii, binary, or ``(binary, ascii)``."""
        convert = self._repliedBoth if both else (
            self._repliedBinary if binary else self._repliedAscii)
        return self.dispatcher.request(self._readMessage, self._readWhat, timeout, convert)

    def _read(self, timeout=None):
        return self.dispatcher.request(self._readMessage, self._readWhat, timeout,
                                       self._replied)

    def _readMessage(self, requestId, deadline, owner):
        return Read(requestId, self.name, self.service.name, deadline, owner)

    def _repliedAscii(self, reply):
        return self._replied(reply).ascii

    def _repliedBinary(self, reply):
        return self._replied(reply).binary

    def _repliedBoth(self, reply):
        value = self._replied(reply)
        return (value.binary, value.ascii)

    def write(self, value, timeout=None):
        """Write ``value``; fires with the new ascii value once the dispatcher completed it.

        A write that may have run is never sent again.  The dispatcher never
        starts it after its deadline, so once the caller is told it failed it
        cannot take effect later.  A :class:`~cauldron.errors.CauldronTimeout`
        whose ``started`` is True means the dispatcher had begun a slow write,
        which may still complete; otherwise the write did not start after
        the deadline (it ran only if it finished before, its reply lost).
        """
        if isinstance(value, tuple):
            value = list(value)
        try:
            checkValue(value)
        except ValueError:
            return defer.fail(BadValue(f"{self.name}: cannot send {value!r}"))
        origin = self.service._client.origin
        return self.dispatcher.request(
            lambda i, deadline, owner: Write(i, self.name, value, self.service.name, deadline,
                                             owner, origin),
            self._writeWhat, timeout, self._repliedAscii,
        )

    def _replied(self, reply):
        value = self._valueOf(reply)
        self._accept(value)
        return value

    @staticmethod
    def _valueOf(reply):
        return KeywordValue(
            reply.keyword, reply.binary, reply.ascii, reply.sequence, reply.timestamp, reply.epoch
        )

    # -- ordering

    def _isNewer(self, value, than):
        if than is None:
            return True
        if value.epoch != than.epoch:
            return value.epoch == self.dispatcher.epoch
        return value.sequence > than.sequence

    def isBehind(self, sequence):
        """True if the dispatcher announced a sequence we have not seen."""
        return self.latest is None or sequence > self.latest.sequence

    def _accept(self, value, welcome=False):
        if not self._isNewer(value, self.latest):
            return False
        self.latest = value
        if self._subscriptions:
            for subscription in list(self._subscriptions):
                subscription._offer(value, welcome)
        return True

    def _broadcast(self, value, welcome=False):
        gap = (
            self.latest is not None
            and value.epoch == self.latest.epoch
            and value.sequence > self.latest.sequence + 1
        )
        self._accept(value, welcome)
        if not self._active:
            self._activated()
        if gap:
            self._refresh()

    def _broadcastMany(self, values):
        """A batch of broadcast values, oldest first: :meth:`_broadcast` each, in one pass.

        The hot path of a burst: what is new is found first, then handed to
        each monitor at once.
        """
        latest, current, gap = self.latest, self.dispatcher.epoch, False
        accepted = []
        for value in values:
            if latest is not None:
                if value.epoch == latest.epoch:
                    if value.sequence <= latest.sequence:
                        continue
                    gap = gap or value.sequence > latest.sequence + 1
                elif value.epoch != current:
                    continue
            latest = value
            accepted.append(value)
        if accepted:
            self.latest = latest
            for subscription in list(self._subscriptions):
                subscription._offerMany(accepted)
        if not self._active:
            self._activated()
        if gap:
            self._refresh()

    def _activated(self):
        """The first broadcast arrived: the subscription is live at the dispatcher."""
        self._active = True
        waiters, self._activation = self._activation, []
        for d, timer in waiters:
            timer.cancel()
            d.callback(self.latest)

    def _whenActive(self):
        """Fires with the current value once the subscription is live.

        The dispatcher answers every new subscription with the keyword's
        current value; should that be lost, a read after the client's
        timeout takes its place.
        """
        d = defer.Deferred(canceller=self._dropActivation)
        timer = self.service._reactor.callLater(
            self.service._client.timeout, self._activationLate, d
        )
        self._activation.append((d, timer))
        return d

    def _dropActivation(self, d):
        for waiter, timer in self._activation:
            if waiter is d and timer.active():
                timer.cancel()
        self._activation = [(w, t) for w, t in self._activation if w is not d]

    def _activationLate(self, d):
        self._dropActivation(d)
        self._read().chainDeferred(d)

    def _cancelActivation(self, error=None):
        """Give up waiting for the subscription: cancel, or fail with ``error``."""
        waiters, self._activation = self._activation, []
        for d, timer in waiters:
            if timer.active():
                timer.cancel()
            if error is None:
                d.cancel()
            else:
                d.errback(error)

    def _refresh(self):
        """Re-read after a gap, a restart or a reconnection (errors are only logged).

        At most one re-read is in flight: a lossy link must not add load just
        when the dispatcher is busiest.  A request for another while one runs
        makes one more run after it, so the newest value is always fetched.
        """
        if self._refreshing is not None:
            self._refreshAgain = True
            return
        self._refreshAgain = False
        self._refreshing = d = self._read()
        d.addErrback(lambda f: self.service._notices(
            "re-reading {kw} failed: {why}", level=LogLevel.info, kw=self,
            why=f.getErrorMessage()))
        d.addBoth(self._refreshed)

    def _refreshed(self, _):
        self._refreshing = None
        if self._refreshAgain and self.monitored and not self.service._closed:
            self._refresh()

    def _close(self):
        """The service was closed: end monitors, telling waiters why."""
        error = ServiceUnavailable(f"service {self.service.name!r}: the client stopped")
        self._cancelActivation(error)  # unprimed monitors fail with it
        for subscription in list(self._subscriptions):
            subscription._end(error)

    # -- monitoring

    def monitor(self, callback, prime=True):
        """Call ``callback(KeywordValue)`` for the current value, then every change.

        Fires with a :class:`Subscription` (``.stop()`` ends it) once primed.
        """
        if self.service._closed:
            return defer.fail(ServiceUnavailable(
                f"service {self.service.name!r}: connection closed"))
        subscription = Subscription(self, callback, prime)
        self._subscriptions.append(subscription)
        if not self._subscribed:
            self._subscribed = True
            self._listen()
        if not prime:
            return defer.succeed(subscription)
        d = self._read() if self._active else self._whenActive()
        d.addCallbacks(subscription._primed, subscription._failed)
        return d

    def _unsubscribe(self, subscription):
        if subscription in self._subscriptions:
            self._subscriptions.remove(subscription)
        if not self._subscriptions and self._subscribed:
            self._subscribed = False
            self._active = False
            self._cancelActivation()
            self.dispatcher._feed.unsubscribe(codec.topicFor(self.name), self.dispatcher)

    def _listen(self):
        """Subscribe to the keyword's broadcasts: active once the first arrives.

        The dispatcher answers a new subscription with the current value.  On
        a shared feed that hears the keyword already, no answer comes: a read
        takes its place.
        """
        self._active = False
        if self.dispatcher._feed.subscribe(codec.topicFor(self.name), self.dispatcher):
            d = self.dispatcher.request(self._readMessage, self._readWhat, None, self._welcomed)
            d.addErrback(lambda f: self.service._notices(
                "reading {kw} for its new monitor failed: {why}", level=LogLevel.info,
                kw=self, why=f.getErrorMessage()))

    def _welcomed(self, reply):
        """The current value, read in place of the answer to a subscription."""
        self._accept(self._valueOf(reply), welcome=True)
        if self._subscribed and not self._active:
            self._activated()

    def waitFor(self, predicate, timeout):
        """Fires True once ``predicate(KeywordValue)`` holds, False after ``timeout`` s.

        ``timeout=None`` waits for ever (KTL semantics); cancel the Deferred to stop.
        """
        holder = {}

        def release():
            timer = holder.get("timer")
            if timer is not None and timer.active():
                timer.cancel()
            if "subscription" in holder:
                holder["subscription"].stop()
            elif "priming" in holder and not holder["priming"].called:
                holder["priming"].cancel()  # stops the subscription it would give

        result = defer.Deferred(canceller=lambda d: release())

        def finish(outcome):
            if holder.get("done") or result.called:
                return
            # Releasing may cancel the priming, which calls finish again: ignored.
            holder["done"] = True
            release()
            if isinstance(outcome, Exception):
                result.errback(outcome)
            else:
                result.callback(outcome)

        def check(value):
            try:
                if predicate(value):
                    finish(True)
            except Exception as e:
                finish(e)

        if timeout is not None:
            holder["timer"] = self.service._reactor.callLater(timeout, finish, False)
        d = holder["priming"] = self.monitor(check, prime=True)

        def subscribed(subscription):
            holder["subscription"] = subscription
            subscription.onEnd = finish
            if result.called:
                subscription.stop()

        d.addCallbacks(subscribed, lambda f: finish(f.value))
        return result


class Subscription:
    """One monitor of one keyword; values reach ``callback`` in sequence order."""

    def __init__(self, keyword, callback, prime):
        self.keyword = keyword
        self.callback = callback
        self.active = True
        #: called with an exception if the subscription ends without stop()
        self.onEnd = None
        self._prime = prime
        self._priming = prime
        self._buffer = []
        self._last = None

    def stop(self):
        """No more callbacks."""
        if self.active:
            self.active = False
            self.keyword._unsubscribe(self)

    def _end(self, error):
        self.stop()
        if self.onEnd is not None:
            self.onEnd(error)

    def _offer(self, value, welcome=False):
        if not self.active:
            return
        if self._priming:
            self._buffer.append(value)
        elif welcome and not self._prime and self._last is None:
            # The answer to a new subscription is the current value, not a
            # change: an unprimed monitor starts from it without a callback.
            self._last = value
        else:
            self._deliver(value)

    def _offerMany(self, values):
        if not self.active:
            return
        if self._priming:
            self._buffer.extend(values)
            return
        for value in values:
            self._deliver(value)

    def _deliver(self, value):
        if not self.active or not self.keyword._isNewer(value, self._last):
            return
        last, self._last = self._last, value
        if last is not None and last.epoch == value.epoch \
                and value.sequence > last.sequence + 1:
            value = value._replace(missed=value.sequence - last.sequence - 1)
        try:
            self.callback(value)
        except Exception:
            log.failure("monitor callback {cb!r} of {kw} failed", cb=self.callback,
                        kw=self.keyword.name)

    def _primed(self, snapshot):
        self._priming = False
        buffered, self._buffer = self._buffer, []
        if self.active:
            self._deliver(snapshot)
            for value in buffered:
                self._deliver(value)
        return self

    def _failed(self, failure):
        self.stop()
        return failure


def _handOn(result, d):
    """Fire ``d`` with ``result`` unless its caller gave up on it (cancelled) already."""
    if not d.called:
        if isinstance(result, Failure):
            d.errback(result)
        else:
            d.callback(result)

