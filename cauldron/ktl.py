"""Blocking, KTL-style keyword access for plain scripts and threads.

``ktl.read("demo", "TEMP")``, ``svc = ktl.Service("demo")``,
``svc["TEMP"].write(5)``, ``ktl.waitFor("$demo.TEMP > 30", timeout=60)``:
no reactor in sight.  Underneath is the Deferred client
(:class:`cauldron.client.ClientService`) running on Twisted's reactor in a
background thread started by `crochet <https://crochet.readthedocs.io>`_ on
first use.  There is one shared ``ClientService`` per configuration; the
configuration is the ``config=`` argument (a path or a
:class:`cauldron.config.Config`), else ``$CAULDRON_CONFIG``, else defaults.

Threads
    Every function here may be called from any thread except the reactor
    thread.  A program that runs the reactor itself (``twistd``) must call
    ``crochet.no_setup()`` first, and should rather use the Deferred client.
    Keyword callbacks (:meth:`Keyword.callback`) and callables given to
    :meth:`Keyword.waitFor` **run in the reactor thread**: keep them short
    and never call a blocking method from them (that raises RuntimeError; use
    ``write(..., wait=False)``, which is allowed there).

Deadlines
    Every blocking call has one: ``timeout`` if given, else the client's
    default (:data:`DEFAULT_TIMEOUT`).  Expiry raises
    :class:`cauldron.errors.CauldronTimeout`, a :class:`TimeoutError`.  The
    exception is ``waitFor`` (and ``wait`` on a value): as in KTL, a
    ``timeout`` of None there waits for ever.

Errors
    The :mod:`cauldron.errors` classes, unchanged: an unknown keyword is a
    :class:`KeyError`, a rejected value a :class:`ValueError`.

Exit
    Clients are stopped in the reactor's ``before shutdown`` trigger, which
    crochet fires when the main thread ends (``atexit`` would run too late:
    only after crochet's reactor thread is gone).  A call still blocked then
    (say in a daemon thread) is released: ``waitFor``, ``wait`` and
    :meth:`Sequence.wait` return False; other calls raise
    :class:`cauldron.errors.ServiceUnavailable`, except in a daemon thread
    once the main thread has ended, where they never return (the interpreter
    is about to end that thread anyway) rather than print a traceback.
"""

import collections
import collections.abc
import itertools
import operator
import runpy
import sys
import threading
import types
import weakref

import crochet
from twisted.internet import defer, task
from twisted.logger import (
    FilteringLogObserver,
    Logger,
    LogLevel,
    PredicateResult,
    globalLogPublisher,
    textFileLogObserver,
)
from twisted.python import threadable
from twisted.python.failure import Failure

from cauldron import config as _config
from cauldron import expressions
from cauldron import keywords as _keywords
from cauldron.client import ClientService
from cauldron.errors import CauldronError, CauldronTimeout, KeywordError, ServiceUnavailable

__all__ = [
    "DEFAULT_TIMEOUT",
    "Expression",
    "Keyword",
    "NoValue",
    "Sequence",
    "Service",
    "TimeoutException",
    "Unsupported",
    "cache",
    "callback",
    "configure",
    "convert",
    "heartbeat",
    "install",
    "ktlError",
    "monitor",
    "read",
    "runScript",
    "shutdown",
    "subscribe",
    "wait",
    "waitFor",
    "waitfor",
    "write",
]

#: where the docs list every KTL Python name and what cauldron does with it
COMING_FROM_KTL = '"Coming from KTL" in docs/ktl.rst'


# -- KTL's exception names: cauldron's own classes, so both catch the same errors

#: KTL Python's base error: every error cauldron raises on purpose
ktlError = CauldronError
#: KTL Python's timeout: a :class:`TimeoutError` and a :data:`ktlError` too
TimeoutException = CauldronTimeout


class NoValue(KeywordError, ValueError):
    """``kw["ascii"]`` (or ``"binary"``) of a keyword no value has reached yet.

    A :data:`ktlError`, as in KTL Python: read() or monitor() first.
    """


class Unsupported(AttributeError):
    """A KTL Python name cauldron does not provide; the message says why and where to look."""


#: ``ktl.Exceptions``, for ``from ktl.Exceptions import ktlError``
Exceptions = types.ModuleType("ktl.Exceptions", "KTL Python's exception names.")
Exceptions.ktlError = ktlError
Exceptions.TimeoutException = TimeoutException
Exceptions.NoValue = NoValue

_log = Logger()

#: default deadline (seconds) of every request of the shared clients
DEFAULT_TIMEOUT = 5.0
#: how much longer than the client's own deadline a thread waits, so the
#: client's typed error (not a bare crochet timeout) reaches the caller
GRACE = 1.0
#: bound on stopping the clients at exit or in :func:`shutdown`
SHUTDOWN_TIMEOUT = 2.0

_lock = threading.Lock()
_services = {}  # (name, Config) -> Service; guarded by _lock
_clients = {}  # Config -> ClientService; reactor thread only
# Bumped (reactor thread) whenever the shared clients stop: a Service whose
# connection is of an older generation is closed and connects again.
_generation = 0

# Calls handed to the reactor and not answered yet; released with
# _ReactorGone when the reactor stops.  Guarded by _callLock.
_callLock = threading.Lock()
_pending = set()
_reactorGone = False
_setupDone = False  # guarded by _callLock
_exiting = False  # the main thread has ended: the interpreter is exiting


# -- running things in the reactor thread ------------------------------------


def _reactor():
    from twisted.internet import reactor

    return reactor


class _ReactorGone(Exception):
    """Internal: the reactor stopped before the call was answered."""


class _Call:
    """A function run in the reactor thread and its outcome, for another thread.

    The outcome (a value or a Failure) lands in a slot guarded by a
    :class:`threading.Event`, filled by a callback added in the reactor
    thread.  Unlike a crochet ``EventualResult``, a failure nobody looked at
    is never printed: it is logged at *info* level, once, when the call is
    garbage collected (a dropped ``wait=False`` handle), and not at all when
    we cancelled the call ourselves (a deadline passed).
    """

    def __init__(self, what):
        self.what = what
        self._done = threading.Event()
        self._value = None
        self._failure = None
        self._retrieved = False
        self._cancelled = False
        self._deferred = None

    def _run(self, fn, args, kwargs):
        """Reactor thread: start ``fn``; its outcome fills the slot."""
        if self._done.is_set():  # the reactor stopped before we got here
            return
        d = defer.maybeDeferred(fn, *args, **kwargs)
        self._deferred = d
        d.addBoth(self._fill)
        if self._cancelled:
            d.cancel()

    def _fill(self, result):
        """Reactor thread: keep the outcome; a failure is consumed (never logged here)."""
        with _callLock:
            _pending.discard(self)
        if not self._done.is_set():
            if isinstance(result, Failure):
                result.cleanFailure()  # no frames kept alive
                self._failure = result
            else:
                self._value = result
            self._done.set()
        return None

    def cancel(self):
        """Any thread: give up on the call (a deadline passed); its failure is expected."""
        self._cancelled = True
        if threadable.isInIOThread():
            self._cancelInReactor()
        else:
            _reactor().callFromThread(self._cancelInReactor)

    def _cancelInReactor(self):
        # Also when called: it may be waiting on a chained Deferred, which
        # cancel() then cancels (otherwise it does nothing).
        if self._deferred is not None:
            self._deferred.cancel()

    def stopped(self):
        """Whether the reactor stopped before the call was answered."""
        return self._failure is not None and self._failure.check(_ReactorGone) is not None

    def outcome(self):
        """The value, or raise the failure (the call must be done)."""
        self._retrieved = True
        if self._failure is not None:
            self._failure.raiseException()
        return self._value

    def __del__(self):
        failure = self._failure
        if failure is None or self._retrieved or self._cancelled or self.stopped():
            return
        try:
            _log.info("{what} failed, and nobody waited for it: {why}",
                     what=self.what, why=failure.getErrorMessage())
        except Exception:  # interpreter shutdown: nothing sensible left to do
            pass


def _setup():
    """Start crochet's reactor thread (once) and hook its shutdown."""
    global _setupDone
    crochet.setup()
    with _callLock:
        if _setupDone:
            return
        _setupDone = True
    # Registered after crochet's own hook, so it runs first (they run in
    # reverse order): the flag is set before the reactor is told to stop.
    register = getattr(threading, "_register_atexit", None)
    if register is not None:
        try:
            register(_markExiting)
        except RuntimeError:  # already shutting down
            _markExiting()
    _reactor().callFromThread(_addTriggers)


def _markExiting():
    global _exiting
    _exiting = True


def _addTriggers():
    # In this order: pending calls learn that the reactor is stopping before
    # the clients are stopped (which would fail them with other errors).
    reactor = _reactor()
    reactor.addSystemEventTrigger("before", "shutdown", _releasePending)
    reactor.addSystemEventTrigger("before", "shutdown", _stopClients)


def _releasePending():
    """Reactor thread, at shutdown: answer every pending call with _ReactorGone."""
    global _reactorGone
    with _callLock:
        _reactorGone = True
        calls = list(_pending)
        _pending.clear()
    for call in calls:
        call._fill(Failure(_ReactorGone("the reactor stopped")))


def _start(what, fn, *args, **kwargs):
    """Run ``fn`` (which may return a Deferred) in the reactor thread: a _Call."""
    _setup()
    call = _Call(what)
    with _callLock:
        gone = _reactorGone
        if not gone:
            _pending.add(call)
    if gone:
        call._fill(Failure(_ReactorGone("the reactor stopped")))
    elif threadable.isInIOThread():
        call._run(fn, args, kwargs)
    else:
        _reactor().callFromThread(call._run, fn, args, kwargs)
    return call


def _notInReactor(what):
    if threadable.isInIOThread():
        raise RuntimeError(
            f"{what} blocks, and this is the reactor thread (a ktl callback?): "
            "it would deadlock; use write(..., wait=False) or the Deferred API"
        )


def _reactorStopped(what):
    """Raise ServiceUnavailable; in a daemon thread at interpreter exit, never return.

    A daemon thread is ended by the exiting interpreter anyway; parking it
    spares the user a traceback ("Exception in thread ...") printed at exit.
    """
    if _exiting and threading.current_thread().daemon:
        threading.Event().wait()
    raise ServiceUnavailable(f"{what}: the reactor stopped (interpreter exiting?)")


def _wait(call, deadline, what, stoppedResult=None):
    """The outcome of ``call``, waiting at most ``deadline`` + GRACE (None: for ever).

    If the reactor stopped first: ``stoppedResult`` when given (waitFor gives
    False), else see :func:`_reactorStopped`.
    """
    _notInReactor(what)
    limit = None if deadline is None else deadline + GRACE
    if not call._done.wait(limit):
        call.cancel()  # its CancelledError is consumed: nothing is logged
        raise CauldronTimeout(f"{what}: no answer within {limit:g} s")
    if call.stopped():
        if stoppedResult is not None:
            return stoppedResult
        _reactorStopped(what)
    return call.outcome()


def _block(deadline, what, fn, *args, **kwargs):
    """Run ``fn`` (which may return a Deferred) in the reactor and wait for it."""
    _notInReactor(what)
    return _wait(_start(what, fn, *args, **kwargs), deadline, what)


def _clientFor(cfg):
    """The shared, started ClientService for ``cfg`` (reactor thread)."""
    client = _clients.get(cfg)
    if client is None:
        reactor = _reactor()
        client = ClientService(cfg, reactor=reactor, timeout=DEFAULT_TIMEOUT)
        client.startService()
        _clients[cfg] = client
    return client


def _stopClients():
    """Stop every shared client, bounded by SHUTDOWN_TIMEOUT (reactor thread).

    The Service objects stay cached: the ones users hold connect again on
    their next call, as a new ``Service(name)`` does.
    """
    global _generation
    _generation += 1
    with _lock:
        services = list(_services.values())
    for service in services:
        service._clientStopped()
    clients = list(_clients.values())
    _clients.clear()
    stops = [defer.maybeDeferred(c.stopService) for c in clients if c.running]
    d = defer.DeferredList(stops, consumeErrors=True)
    d.addTimeout(SHUTDOWN_TIMEOUT, _reactor())
    d.addErrback(lambda f: _log.warn("stopping ktl clients: {why}", why=f.getErrorMessage()))
    return d


def shutdown():
    """Stop the shared clients now; later calls connect again.  Safe to call twice.

    Monitors stop, and calls still waiting fail with ServiceUnavailable.  The
    Service and Keyword objects stay valid (with their callbacks): their next
    call connects again.
    """
    if not _clients:
        return
    _block(SHUTDOWN_TIMEOUT, "ktl.shutdown", _stopClients)


def _connect(name, cfg, limit):
    """Reactor thread: a Deferred firing with ``(RemoteService, request timeout)``."""
    client = _clientFor(cfg)
    d = client.service(name)

    def expired(result, _timeout):
        raise CauldronTimeout(f"service {name!r}: no answer within {limit:g} s")

    d.addTimeout(limit, _reactor(), onTimeoutCancel=expired)
    return d.addCallback(lambda remote: (remote, client.timeout, _generation))


def _connectDeadline(cfg, requestTimeout):
    # Locating through the router and describing are two round trips.
    extra = cfg.timeoutSeconds() if cfg.get("zmq-router", "enable") else 0.0
    return requestTimeout + extra


def _isNewer(value, than, epoch):
    """Same order as the client: a new epoch wins, else a higher sequence."""
    if value is None:
        return False
    if than is None:
        return True
    if value.epoch != than.epoch:
        return value.epoch == epoch
    return value.sequence > than.sequence


# -- the process-wide configuration, and running unmodified KTL scripts ----------

_configured = None  # the Config configure() set; guarded by _lock


def configure(config=None):
    """Set the configuration of every later call that is given none; returns it.

    ``config`` is a path, a :class:`cauldron.config.Config`, or None for
    ``$CAULDRON_CONFIG`` (else the defaults), read now.  A call given its
    own ``config=`` uses that one, for that call only.
    """
    global _configured
    cfg = _config.load(config)
    with _lock:
        _configured = cfg
    return cfg


def _configFor(config):
    """The configuration a call uses: its own, else the process-wide one."""
    if config is not None:
        return _config.load(config)
    with _lock:
        configured = _configured
    return configured if configured is not None else _config.load(None)


def install():
    """Make ``import ktl`` (and ``ktl.Exceptions``) give this module; returns it.

    For programs and scripts written for KTL Python: call it before they
    import ``ktl``.
    """
    module = sys.modules[__name__]
    sys.modules["ktl"] = module
    sys.modules["ktl.Exceptions"] = Exceptions
    return module


def runScript(path, argv=(), config=None):
    """Run a KTL Python script unmodified: ``import ktl`` gives this module.

    ``config``, if given, becomes the process-wide configuration (see
    :func:`configure`); the script sees ``sys.argv`` as ``[path, *argv]``
    and runs as ``__main__``.  Behind ``cauldron ktl run``.
    """
    if config is not None:
        configure(config)
    install()
    sys.argv = [path, *argv]
    runpy.run_path(path, run_name="__main__")


# -- services ------------------------------------------------------------------


class Service:
    """A KTL service; ``Service(name)`` returns the one cached per (name, config).

    Connecting (the first time) asks the dispatcher for every keyword's
    description, within ``timeout`` seconds (default: the client's deadline).
    After :func:`shutdown` the same object is returned, connected again.
    """

    def __new__(cls, name, config=None, populate=False, timeout=None):
        if not isinstance(name, str):
            raise TypeError(f"a service name must be a str, not {type(name).__name__}")
        cfg = _configFor(config)
        key = (name.lower(), cfg)
        limit = timeout if timeout is not None else _connectDeadline(cfg, DEFAULT_TIMEOUT)
        with _lock:
            service = _services.get(key)
        if service is None:
            connection = _block(
                limit, f"service {name.lower()!r}", _connect, name.lower(), cfg, limit
            )
            service = object.__new__(cls)
            service._setup(connection, cfg)
            with _lock:
                service = _services.setdefault(key, service)
        else:
            service._ensureConnected(limit)
        if populate:
            service.populate()
        return service

    def __init__(self, name, config=None, populate=False, timeout=None):
        """Everything happens in ``__new__`` (the instance may be a cached one)."""

    def _setup(self, connection, cfg):
        remote, self.timeout, self._generation = connection
        self.name = remote.name
        self.config = cfg
        self._remote = remote
        self._reconnecting = []  # reactor thread: Deferreds waiting for a new connection
        self._keywords = {}
        self._clones = weakref.WeakValueDictionary()  # id -> Keyword.clone() copy
        self._heartbeats = {}  # keyword name -> period (s); see heartbeat()
        self._keywordLock = threading.Lock()

    # -- the connection, renewed after ktl.shutdown()

    def _stale(self):
        """Whether :func:`shutdown` closed the connection since it was made."""
        return self._generation != _generation

    def _ensureConnected(self, limit=None):
        """Connect again now if :func:`shutdown` closed us.

        Not in the reactor thread, where it would block: there the next
        operation connects again itself.
        """
        if self._stale() and not threadable.isInIOThread():
            limit = _connectDeadline(self.config, self.timeout) if limit is None else limit
            _block(limit, f"service {self.name!r}", self._connected, limit)

    def _connected(self, limit):
        """Reactor thread: a Deferred firing with the open RemoteService.

        One connection attempt serves every caller that needs it meanwhile.
        """
        if not self._stale():
            return defer.succeed(self._remote)
        waiter = defer.Deferred()
        self._reconnecting.append(waiter)
        if len(self._reconnecting) == 1:
            _connect(self.name, self.config, limit).addBoth(self._reconnected)
        return waiter

    def _reconnected(self, result):
        waiters, self._reconnecting = self._reconnecting, []
        if not isinstance(result, Failure):
            self._remote, self.timeout, self._generation = result
            result = self._remote
        for waiter in waiters:
            if waiter.called:  # its caller gave up (cancelled)
                continue
            if isinstance(result, Failure):
                waiter.errback(result)
            else:
                waiter.callback(result)

    def _clientStopped(self):
        """Reactor thread, from _stopClients: the monitors ended with the client."""
        with self._keywordLock:
            keywords = list(self._keywords.values()) + list(self._clones.values())
        for keyword in keywords:
            keyword._monitorToken = None
            keyword._subscription = None

    def __repr__(self):
        return f"<ktl.Service {self.name}>"

    def keywords(self):
        """Every keyword name the service serves, sorted."""
        return self._remote.keywords()

    list = keywords

    def monitored(self):
        """Sorted names of the keywords monitored through this Service."""
        with self._keywordLock:
            keywords = list(self._keywords.values())
        return sorted(kw.name for kw in keywords if kw["monitored"])

    def populated(self):
        """Sorted names of the Keyword objects created so far."""
        with self._keywordLock:
            return sorted(self._keywords)

    def populate(self):
        """Create the Keyword object of every keyword."""
        for name in self.keywords():
            self[name]

    def __getitem__(self, name):
        """The :class:`Keyword` (of its type's class) called ``name``, or a KeyError."""
        if isinstance(name, Keyword):
            name = name.name
        if not isinstance(name, str):
            raise TypeError(f"a keyword name must be a str, not {type(name).__name__}")
        name = name.upper()
        with self._keywordLock:
            keyword = self._keywords.get(name)
            if keyword is None:
                # The remote keyword table is fixed once the service is loaded.
                remote = self._remote[name]  # UnknownKeyword is a KeyError
                keyword = Keyword.classFor(remote.type)(self, remote)
                self._keywords[name] = keyword
        return keyword

    def isAlive(self):
        """True while the service is heard (KTL's ``isAlive``).

        False once the dispatcher missed three of its own heartbeats (or
        :func:`shutdown` closed the connection), or once a keyword named by
        :meth:`heartbeat` went a whole period without a new value; True
        again when they are heard.  No round trip: it reads what the
        reactor thread noted.
        """
        if self._stale() or not self._remote.connected:
            return False
        with self._keywordLock:
            heartbeats = [(self._keywords[name], period)
                          for name, period in self._heartbeats.items()]
        now = _reactor().seconds()
        return all(kw._heardWithin(period, now) for kw, period in heartbeats)

    def heartbeat(self, keyword, period=5.0):
        """Name ``keyword`` (a name or a Keyword) a heartbeat: a value at least every ``period`` s.

        The keyword is monitored from now on; while it goes a period without
        a new value, :meth:`isAlive` is False.  (The dispatcher's own
        heartbeat is always watched too: cauldron needs no heartbeat
        keyword to notice a dead dispatcher.)
        """
        if isinstance(period, bool) or not isinstance(period, (int, float)) or period <= 0:
            raise ValueError(f"a heartbeat period must be a positive number of seconds, "
                             f"not {period!r}")
        kw = self[keyword]
        kw.monitor()
        with self._keywordLock:
            self._heartbeats[kw.name] = float(period)

    def has_keyword(self, name):
        """Whether the service serves ``name`` (a case-insensitive name, or a Keyword)."""
        if isinstance(name, Keyword):
            return name.service is self and name.name in self._remote
        return isinstance(name, str) and name in self._remote

    has_key = has_keyword
    __contains__ = has_keyword

    def __iter__(self):
        return iter([self[name] for name in self.keywords()])

    def read(self, keyword, *args, **kwargs):
        """``self[keyword].read(...)``."""
        return self[keyword].read(*args, **kwargs)

    def write(self, keyword, value, *args, **kwargs):
        """``self[keyword].write(value, ...)``."""
        return self[keyword].write(value, *args, **kwargs)

    def waitFor(self, expression, timeout=None, case=False):
        """:func:`waitFor` with this Service's configuration."""
        if not isinstance(expression, str):
            raise TypeError(f"expression must be a str, not {type(expression).__name__}")
        return _waitForExpression(expression, timeout, case, self.config)

    waitfor = waitFor

    def shutdown(self):
        """Stop monitoring this service's keywords (the shared client stays)."""
        with self._keywordLock:
            keywords = list(self._keywords.values())
        for keyword in keywords:
            keyword.monitor(start=False)


# -- asynchronous handles -------------------------------------------------------


class Sequence:
    """The handle of an operation started with ``wait=False``.

    ``wait(timeout)`` is True once it completed (re-raising its error if it
    failed), False if ``timeout`` passed first, or if the reactor stopped
    (interpreter exit) before it completed.  The operation keeps its own
    deadline, so ``wait(None)`` always ends.

    Dropping the handle is fine (fire and forget): nothing is printed, even
    if the operation fails; a failure nobody waited for is logged at *info*
    level through :mod:`twisted.logger`.
    """

    _ids = itertools.count(1)

    def __init__(self, call, what):
        self.id = next(self._ids)
        self.what = what
        self._call = call

    def __repr__(self):
        return f"<ktl.Sequence {self.id}: {self.what}>"

    def wait(self, timeout=None):
        _notInReactor(f"waiting for {self.what}")
        if not self._call._done.wait(timeout) or self._call.stopped():
            return False
        self._call.outcome()  # re-raises a failure
        return True

    def result(self, timeout=None):
        """The operation's result (e.g. the new ascii value of a write)."""
        if not self.wait(timeout):
            if self._call.stopped():
                _reactorStopped(self.what)
            raise CauldronTimeout(f"{self.what}: not complete within {timeout:g} s")
        return self._call.outcome()


# -- keywords -------------------------------------------------------------------

#: values a keyword's :attr:`Keyword.history` keeps unless told otherwise
DEFAULT_HISTORY = 16


class HistorySlice(collections.namedtuple("HistorySlice", "time binary ascii")):
    """One value a keyword received: ``.time``, ``.binary``, ``.ascii``, or ``slice["ascii"]``."""

    __slots__ = ()

    def __getitem__(self, key):
        if isinstance(key, str):
            if key not in self._fields:
                raise KeyError(key)
            return getattr(self, key)
        return super().__getitem__(key)


class History(collections.abc.Sequence):
    """The newest values of a keyword, oldest first (``kw.history[-1]`` is the newest).

    Bounded: :attr:`length` values (settable; :data:`DEFAULT_HISTORY`).
    Filled from the reactor thread, read from any: indexing and iterating
    work on a copy.
    """

    def __init__(self, length=DEFAULT_HISTORY):
        self._lock = threading.Lock()
        self._slices = collections.deque(maxlen=self._checkLength(length))

    @staticmethod
    def _checkLength(length):
        if isinstance(length, bool) or not isinstance(length, int) or length < 1:
            raise ValueError(f"a history length must be a positive integer, not {length!r}")
        return length

    @property
    def length(self):
        return self._slices.maxlen

    @length.setter
    def length(self, length):
        with self._lock:
            self._slices = collections.deque(self._slices, maxlen=self._checkLength(length))

    def _append(self, value):
        with self._lock:
            self._slices.append(HistorySlice(value.timestamp, value.binary, value.ascii))

    def _copy(self):
        with self._lock:
            return list(self._slices)

    def __getitem__(self, index):
        return self._copy()[index]

    def __len__(self):
        return len(self._slices)

    def __iter__(self):
        return iter(self._copy())

    def __repr__(self):
        return f"<ktl.History of {len(self)} (at most {self.length})>"


class Keyword:
    """One keyword of a :class:`Service`; get it with ``service["NAME"]``.

    ``service["NAME"]`` is an instance of the class for the keyword's KTL
    type (``Keyword.types[kw["type"]]``), whose conversions are the
    dispatcher's own (:mod:`cauldron.keywords`).  ``kw["ascii"]``,
    ``kw["binary"]`` and the other dictionary keys answer from the last
    value received (from the connection's description, a read or a
    broadcast) and never do I/O: they are safe in callbacks.  ``ascii`` and
    ``binary`` of a keyword no value has reached raise :class:`NoValue`, as
    in KTL.  Call :meth:`read` or :meth:`monitor` for fresh values.

    A Keyword compares and computes as its binary value (``kw > 3``,
    ``kw - other``), as in KTL; it is always true as a condition.
    """

    #: the cauldron keyword type whose conversion rules this class follows
    keywordType = _keywords.Basic
    #: this class's KTL type name, and other names for it
    KTL_TYPE = _keywords.Basic.ktlType
    KTL_ALIASES = ()
    #: KTL type name (aliases too) -> Keyword class
    types = {}

    def __init__(self, service, remote):
        self.service = service
        self.name = remote.name
        self.full_name = f"{service.name}.{remote.name}"
        self._remote = remote
        self._callbacks = ()  # replaced whole (copy on write) under _callbackLock
        self._callbackLock = threading.Lock()
        #: the newest values received, as KTL's ``history``
        self.history = History()
        self._error = None  # the last failed operation's error, for kw["error"]
        self._heardAt = None  # reactor.seconds() of the newest value received
        # reactor thread only:
        self._monitorToken = None
        self._subscription = None
        self._delivered = None
        self._propagating = False
        self._again = False
        self._poll = None  # the LoopingCall of poll()
        self._polling = None  # its read in flight

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        cls.KTL_TYPE = cls.keywordType.ktlType
        cls.KTL_ALIASES = cls.keywordType.ktlAliases
        for name in (cls.KTL_TYPE, *cls.KTL_ALIASES):
            Keyword.types.setdefault(name, cls)

    @classmethod
    def classFor(cls, keywordType):
        """The Keyword class for a :mod:`cauldron.keywords` type object (by its class)."""
        for base in type(keywordType).__mro__:
            for candidate in Keyword.types.values():
                if candidate.keywordType is base:
                    return candidate
        return Keyword.types[_keywords.Basic.ktlType]

    def __repr__(self):
        return f"<ktl.Keyword {self.full_name}>"

    def _deadline(self, timeout):
        return self.service.timeout if timeout is None else timeout

    def _connected(self, limit):
        """Reactor thread: a Deferred firing with the open RemoteKeyword.

        After :func:`shutdown` the service connects again first.
        """
        return self.service._connected(limit).addCallback(self._bind)

    def _bind(self, remoteService):
        """Reactor thread: follow the service to a new connection; the RemoteKeyword."""
        if self._remote.service is not remoteService:
            # UnknownKeyword (a KeyError) if the dispatcher no longer serves it
            self._remote = remoteService[self.name]
        return self._remote

    # -- dictionary keys

    def __getitem__(self, key):
        latest = self._remote.latest
        info = self._remote.info
        if key in ("ascii", "binary"):
            if latest is None:
                raise NoValue(f"{self.full_name} has no value yet: read() or monitor() first")
            return latest.ascii if key == "ascii" else latest.binary
        if key == "populated":
            return latest is not None
        if key == "timestamp":
            return None if latest is None else latest.timestamp
        simple = {
            "name": lambda: self.name,
            "service": lambda: self.service.name,
            "type": lambda: self.KTL_TYPE,
            "monitored": lambda: self._monitorToken is not None,
            "monitor": lambda: self._monitorToken is not None,
            "units": lambda: None if self._enumerators() else info.get("units", ""),
            "help": lambda: info.get("description", ""),
            "reads": lambda: not info.get("writeonly", False),
            "writes": lambda: not info.get("readonly", False),
            "broadcasts": lambda: not info.get("writeonly", False),
            "history": lambda: self.history,
            "error": lambda: self._error,
            "enumerators": self._enumeratorList,
            "keys": self._enumeratorList,
            "range": self._range,
        }
        if key not in simple:
            raise KeyError(key)
        return simple[key]()

    def _enumerators(self):
        """``{number: name}`` of an enumerated keyword, else None."""
        return getattr(self._remote.type, "enumerators", None)

    def _enumeratorList(self):
        """KTL's enumerators: names indexed by binary value, "" where none is defined."""
        names = self._enumerators()
        if names is None:
            raise ValueError(f"{self.full_name} is a {self.KTL_TYPE}: it has no enumerators")
        top = max(names) + 1 if names and min(names) >= 0 else 0
        return [names.get(number, "") for number in range(top)]

    def _range(self):
        """KTL's range: ``{"binary": {"minimum": .., "maximum": ..}}`` (and the same as ascii)."""
        limits = self._remote.type.range
        if limits is None:
            raise ValueError(f"{self.full_name} is a {self.KTL_TYPE}: it has no range")
        low, high = limits
        convert = self._remote.type.toAscii
        return {
            "binary": {"minimum": low, "maximum": high},
            "ascii": {"minimum": None if low is None else convert(low),
                      "maximum": None if high is None else convert(high)},
        }

    # -- conversion, copies, and KTL's arithmetic on values

    def cast(self, value):
        """``value`` as this keyword's binary value (the dispatcher's rules); BadValue if not."""
        return self._remote.type.toBinary(value)

    def clone(self):
        """A new Keyword for the same keyword: its own callbacks, history and monitor."""
        twin = type(self)(self.service, self._remote)
        with self.service._keywordLock:
            self.service._clones[id(twin)] = twin
        return twin

    def _value(self):
        return self["binary"]

    # -- read and write

    def isAlive(self):
        """True while this keyword's service is heard (see :meth:`Service.isAlive`)."""
        return self.service.isAlive()

    def _heardWithin(self, period, now):
        return self._heardAt is not None and now - self._heardAt < period

    def read(self, binary=False, both=False, wait=True, timeout=None):
        """The current value from the dispatcher: ascii, binary or ``(binary, ascii)``.

        ``wait=False`` returns a :class:`Sequence`; callbacks see the value.
        """
        what = f"read {self.full_name}"
        if not wait:
            return Sequence(_start(what, self._readInReactor, binary, both, timeout), what)
        return _block(self._deadline(timeout), what, self._readInReactor, binary, both, timeout)

    def _readInReactor(self, binary, both, timeout):
        d = self._connected(self._deadline(timeout))
        d.addCallback(lambda remote: remote.read(binary=binary, both=both, timeout=timeout))
        return self._noting(d.addCallback(self._thenPropagate))

    def _thenPropagate(self, result):
        self._propagate()
        return result

    def _noting(self, d):
        """Keep the outcome's error for ``kw["error"]`` (None after a success)."""
        def succeeded(result):
            self._error = None
            return result

        def failed(failure):
            self._error = failure.value
            return failure

        return d.addCallbacks(succeeded, failed)

    def write(self, value, wait=True, binary=False, timeout=None):
        """Write ``value``; returns the new ascii value once the dispatcher completed it.

        ``binary=True`` says ``value`` is a binary value: it is checked here
        first (:meth:`cast`).  Otherwise ascii text or a Python value, as the
        dispatcher parses it.  ``wait=False`` returns a :class:`Sequence` at
        once (allowed in callbacks): pass it to :meth:`wait`.  A write is
        never retried.
        """
        if binary:
            value = self.cast(value)
        what = f"write {self.full_name}"
        if not wait:
            return Sequence(_start(what, self._writeInReactor, value, timeout), what)
        return _block(self._deadline(timeout), what, self._writeInReactor, value, timeout)

    def _writeInReactor(self, value, timeout):
        d = self._connected(self._deadline(timeout))
        return self._noting(d.addCallback(lambda remote: remote.write(value, timeout)))

    def poll(self, period=1.0, start=True):
        """Read every ``period`` s in the background; ``start=False`` stops.

        Callbacks see each new value.  For keywords that do not broadcast;
        :meth:`monitor` is cheaper.  A failed read is noted in
        ``kw["error"]``; polling goes on.
        """
        if start and (isinstance(period, bool) or not isinstance(period, (int, float))
                      or period <= 0):
            raise ValueError(f"a poll period must be a positive number of seconds, not {period!r}")
        _block(self.service.timeout, f"poll {self.full_name}", self._pollInReactor,
               period if start else None)

    def _pollInReactor(self, period):
        if self._poll is not None and self._poll.running:
            self._poll.stop()
        self._poll = None
        if period is None:
            return
        self._poll = task.LoopingCall(self._pollOnce)
        self._poll.clock = _reactor()
        self._poll.start(period, now=True)

    def _pollOnce(self):
        if self._polling is not None:
            return  # the previous read has not finished: skip, never pile up
        d = self._polling = self._readInReactor(False, False, None)
        d.addErrback(lambda failure: None)  # noted in kw["error"]

        def done(_):
            self._polling = None

        d.addBoth(done)

    # -- monitoring and callbacks

    def monitor(self, start=True, prime=True, wait=True):
        """Follow broadcasts (``start=False``: stop, without reading).

        ``prime`` reads the current value first, and callbacks get it even if
        it is not new.  ``wait=False`` returns a :class:`Sequence` (allowed in
        callbacks).  Priming may take up to twice the client's timeout (the
        dispatcher's answer to the new subscription, then a read in its
        place), so this waits that long before giving up itself.
        """
        what = f"monitor {self.full_name}"
        if not start:
            _block(self.service.timeout, what, self._stopMonitor)
            return None
        if wait:
            _notInReactor(what)  # before starting anything
        call = _start(what, self._startMonitor, prime)
        if not wait:
            return Sequence(call, what)
        _wait(call, 2 * self.service.timeout, what)
        return None

    subscribe = monitor

    def _startMonitor(self, prime):
        if self._monitorToken is not None:
            return self._readInReactor(False, False, None) if prime else None
        token = self._monitorToken = object()
        if prime:
            self._delivered = None  # priming hands the current value to callbacks
        d = self._connected(self.service.timeout)
        d.addCallback(lambda remote: remote.monitor(self._onValue, prime=prime))

        def subscribed(subscription):
            if self._monitorToken is token:
                self._subscription = subscription
            else:  # stopped while priming
                subscription.stop()

        def failed(failure):
            if self._monitorToken is token:
                self._monitorToken = None
            return failure

        return d.addCallbacks(subscribed, failed)

    def _stopMonitor(self):
        self._monitorToken = None
        if self._subscription is not None:
            self._subscription.stop()
            self._subscription = None

    def _onValue(self, value):
        self._propagate()

    def callback(self, function, remove=False, preferred=False):
        """Call ``function(keyword)`` on each new value, in the reactor thread.

        Held strongly (a lambda works) until ``remove=True``; ``preferred``
        puts it first.  Its exceptions are logged and never reach other
        callbacks.  Values arrive while monitored, and from reads.
        """
        if not callable(function):
            raise TypeError(f"{function!r} is not callable")
        with self._callbackLock:
            callbacks = [c for c in self._callbacks if c != function]
            if not remove:
                if preferred:
                    callbacks.insert(0, function)
                else:
                    callbacks.append(function)
            self._callbacks = tuple(callbacks)

    def _propagate(self):
        """Reactor thread: a value newer than the last one seen arrived? history, callbacks."""
        if self._propagating:
            self._again = True  # a callback caused an update: loop, do not recurse
            return
        self._propagating = True
        try:
            while True:
                self._again = False
                latest = self._remote.latest
                if not _isNewer(latest, self._delivered, self._remote.service.epoch):
                    return
                self._delivered = latest
                self._heardAt = _reactor().seconds()
                self.history._append(latest)
                self._callAll()
                if not self._again:
                    return
        finally:
            self._propagating = False

    def propagate(self):
        """Call every callback now, with the keyword as it is (KTL's ``propagate``).

        They run in the calling thread.  cauldron calls them itself after a
        read and on every broadcast of a new value (in the reactor thread).
        """
        self._callAll()

    def _callAll(self):
        for function in self._callbacks:
            try:
                function(self)
            except Exception:
                _log.failure("ktl callback {cb!r} of {kw} failed", cb=function, kw=self.full_name)

    # -- waiting

    def wait(self, timeout=None, operator=None, value=None, sequence=None, reset=False,
             case=False, expression=None):
        """Wait for a :class:`Sequence`, a condition, or the next new value.

        * ``sequence=``: True once that operation completed, False at ``timeout``;
        * ``expression=`` (``"> 30"``), or ``operator`` and ``value``
          (``">", 30``): like :meth:`waitFor`;
        * none of them: True once a value newer than the call arrives (the
          next broadcast), False at ``timeout``.  Always as KTL's
          ``reset=True``: a value that arrived before the call never counts.
        """
        del reset  # always reset: see the docstring, and "Coming from KTL" in the docs
        if expression is not None:
            return self.waitFor(expression, timeout=timeout, case=case)
        if sequence is not None:
            if not isinstance(sequence, Sequence):
                raise TypeError(f"sequence must be a ktl.Sequence, not {sequence!r}")
            return sequence.wait(timeout)
        if operator is not None:
            if operator not in ("==", "!=", "<", "<=", ">", ">=", "in", "not in"):
                raise ValueError(f"unknown operator {operator!r}")
            return self.waitFor(f"{operator} {value!r}", timeout=timeout, case=case)
        what = f"wait on {self.full_name}"
        _notInReactor(what)
        self.service._ensureConnected()
        # The cached value is current only while monitored: else it may be
        # stale, and any fresh value would look like a change.
        start = self._remote.latest if self._subscription is not None else None
        call = _start(what, self._waitForChangeInReactor, start, timeout)
        return _wait(call, timeout, what, stoppedResult=False)

    def _waitForChangeInReactor(self, start, timeout):
        """Fire True once a value newer than ``start`` arrives, False at ``timeout``.

        Without ``start``, a read first tells the current value.
        """
        remote = self._bind(self.service._remote)
        reactor = _reactor()
        began = reactor.seconds()

        def waitAfter(baseline):
            left = None if timeout is None else max(0.0, timeout - (reactor.seconds() - began))
            return remote.waitFor(
                lambda value: _isNewer(value, baseline, remote.service.epoch), left
            )

        if start is not None:
            return waitAfter(start)
        readTimeout = None if timeout is None else min(timeout, self.service.timeout)

        def readExpired(failure):
            failure.trap(CauldronTimeout)
            if readTimeout != timeout:  # the client's deadline, not the caller's
                return failure
            return False  # no value at all within the caller's timeout: no change

        d = remote.read(timeout=readTimeout)
        d.addCallbacks(lambda _: waitAfter(remote.latest), readExpired)
        return d

    def waitFor(self, expression, timeout=None, case=False):
        """True once ``expression`` holds, False after ``timeout`` s (None: for ever).

        ``expression`` is text (see :mod:`cauldron.expressions`); text starting
        with an operator is about this keyword (``kw.waitFor("> 30")``).  It may
        also be a callable ``f(keyword) -> bool``, called in the reactor thread.
        """
        if callable(expression):
            return _waitFor([self], lambda: expression(self), timeout,
                            f"waitFor on {self.full_name}")
        if not isinstance(expression, str):
            raise TypeError(f"expression must be a str or a callable, not {expression!r}")
        text = expression.strip()
        if not text:
            raise ValueError(f"empty expression {expression!r} for {self.full_name}")
        if text[:1] in "<>=!" or text.split(None, 1)[:1] in (["in"], ["not"]):
            text = f"${self.service.name}.{self.name} {text}"
        return _waitForExpression(text, timeout, case, self.service.config)

    waitfor = waitFor

    def __getattr__(self, name):
        if name in _UNSUPPORTED_KEYWORD:
            raise Unsupported(_unsupportedMessage(f"Keyword.{name}", _UNSUPPORTED_KEYWORD[name]))
        raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")


def _valueOperator(operation, reflected=False):
    """A Keyword method applying ``operation`` to its binary value, as KTL's keywords do."""

    def method(self, *other):
        other = [o._value() if isinstance(o, Keyword) else o for o in other]
        if reflected:
            return operation(other[0], self._value())
        return operation(self._value(), *other)

    return method


for _name, _operation in [
    ("eq", operator.eq), ("ne", operator.ne), ("lt", operator.lt), ("le", operator.le),
    ("gt", operator.gt), ("ge", operator.ge), ("add", operator.add), ("sub", operator.sub),
    ("mul", operator.mul), ("truediv", operator.truediv), ("floordiv", operator.floordiv),
    ("mod", operator.mod), ("pow", operator.pow), ("and", operator.and_),
    ("or", operator.or_), ("xor", operator.xor),
]:
    setattr(Keyword, f"__{_name}__", _valueOperator(_operation))
    if _name not in ("eq", "ne", "lt", "le", "gt", "ge"):
        setattr(Keyword, f"__r{_name}__", _valueOperator(_operation, reflected=True))
for _name, _operation in [("neg", operator.neg), ("pos", operator.pos), ("abs", abs),
                          ("float", float), ("int", int), ("invert", operator.invert)]:
    setattr(Keyword, f"__{_name}__", _valueOperator(_operation))
Keyword.__hash__ = object.__hash__  # a Keyword is one object, whatever its value
del _name, _operation


class String(Keyword):
    """A KTL_STRING keyword (cauldron's ``string`` and ``basic``)."""

    keywordType = _keywords.String


class Boolean(Keyword):
    """A KTL_BOOLEAN keyword: binary True/False, ascii ``1``/``0``."""

    keywordType = _keywords.Boolean


class Integer(Keyword):
    """A KTL_INT keyword (also KTL_INT64)."""

    keywordType = _keywords.Integer


class Double(Keyword):
    """A KTL_DOUBLE keyword (also KTL_FLOAT)."""

    keywordType = _keywords.Double


class Enumerated(Keyword):
    """A KTL_ENUM keyword: binary the enumerator's number, ascii its name."""

    keywordType = _keywords.Enumerated


class Mask(Keyword):
    """A KTL_MASK keyword (also KTL_ENUMM): binary an int of bits, ascii their names."""

    keywordType = _keywords.Mask


class IntegerArray(Keyword):
    """A KTL_INT_ARRAY keyword (also KTL_INT64_ARRAY)."""

    keywordType = _keywords.IntegerArray


class DoubleArray(Keyword):
    """A KTL_DOUBLE_ARRAY keyword (also KTL_FLOAT_ARRAY)."""

    keywordType = _keywords.DoubleArray


for _typed in (String, Boolean, Integer, Double, Enumerated, Mask, IntegerArray, DoubleArray):
    setattr(Keyword, _typed.__name__, _typed)  # ktl.Keyword.Double, as KTL emulators have it
del _typed


def _waitForExpression(text, timeout, case, config):
    expression = expressions.parse(text)  # refuses anything over budget, before any I/O
    keywords = [Service(service, config)[name] for service, name in expression.operands]

    def holds():
        values = {(kw.service.name, kw.name): kw._remote.latest for kw in keywords}
        return expression.evaluate(values, case=case)

    return _waitFor(keywords, holds, timeout, f"waitFor({text!r})")


def _waitFor(keywords, predicate, timeout, what):
    _notInReactor(what)
    for service in {id(kw.service): kw.service for kw in keywords}.values():
        service._ensureConnected()
    call = _start(what, _waitForInReactor, keywords, predicate, timeout)
    return _wait(call, timeout, what, stoppedResult=False)


def _waitForInReactor(keywords, predicate, timeout):
    """Monitor every keyword (primed) and fire True once ``predicate()`` holds.

    Cancelling the result (the caller's deadline passed first) stops every
    monitor and the timer, as finishing does.
    """
    done = False
    subscriptions = []
    primings = []
    timer = None

    def release():
        nonlocal done
        done = True
        if timer is not None and timer.active():
            timer.cancel()
        for subscription in subscriptions:
            subscription.stop()
        for priming in primings:
            if not priming.called:
                priming.cancel()  # its subscription stops; finish() ignores the error

    result = defer.Deferred(canceller=lambda d: None if done else release())

    def finish(outcome):
        if done:
            return
        release()
        if isinstance(outcome, Failure):
            result.errback(outcome)
        elif isinstance(outcome, Exception):
            result.errback(Failure(outcome))
        else:
            result.callback(outcome)

    def check(_value=None):
        # Evaluate only once every operand is primed: never on stale values.
        if done or len(subscriptions) < len(remotes):
            return
        if any(remote.latest is None for remote in remotes):
            return
        try:
            holds = predicate()
        except Exception:
            finish(Failure())
            return
        if holds:
            finish(True)

    def subscribed(subscription):
        if done:
            subscription.stop()
            return
        subscriptions.append(subscription)
        subscription.onEnd = finish  # the client stopped (ktl.shutdown): fail, never hang
        check()

    remotes = []
    for kw in keywords:
        remote = kw._bind(kw.service._remote)
        if all(remote is not other for other in remotes):
            remotes.append(remote)
    if timeout is not None:
        timer = _reactor().callLater(timeout, finish, False)
    for remote in remotes:
        if done:  # a monitor failed at once
            break
        d = remote.monitor(check, prime=True)
        primings.append(d)
        d.addCallbacks(subscribed, finish)
    return result


# -- procedural API -------------------------------------------------------------


def _keyword(service, keyword, config, timeout=None):
    if not isinstance(service, str):
        raise TypeError(f"a service name must be a str, not {type(service).__name__}")
    if not isinstance(keyword, str):
        raise TypeError(f"a keyword name must be a str, not {type(keyword).__name__}")
    return Service(service, config, timeout=timeout)[keyword]


def cache(service=None, keyword=None, config=None):
    """The cached Service (``cache("svc")``), or Keyword (``cache("svc", "KW")``, ``"svc.KW"``).

    Always the same object for the same name (and configuration).  With no
    argument, ``{name: Service}`` of every Service cached so far.
    """
    if service is None:
        with _lock:
            return {name: svc for (name, _), svc in _services.items()}
    if not isinstance(service, str):
        raise TypeError(f"a service name must be a str, not {type(service).__name__}")
    if keyword is None and "." in service:
        service, keyword = service.split(".", 1)
    if keyword is None:
        return Service(service, config)
    return _keyword(service, keyword, config)


def purge():
    """Forget every cached Service: the next :func:`cache` or ``Service()`` makes a new one."""
    with _lock:
        _services.clear()


def close(service, *ignored, **alsoIgnored):
    """Deprecated in KTL Python, and does nothing here either; True."""
    return True


def listen(*ignored, **alsoIgnored):
    """Deprecated in KTL Python (background work starts by itself); does nothing."""


def convert(service, keyword, binary=None, ascii=None, config=None):
    """Translate a binary value to its ascii form, or ascii text to the binary value.

    Exactly one of ``binary`` and ``ascii``; by the keyword's own type rules,
    with no round trip.
    """
    if (binary is None) == (ascii is None):
        raise ValueError("convert() takes exactly one of binary= and ascii=")
    kw = _keyword(service, keyword, config)
    keywordType = kw._remote.type
    return keywordType.toAscii(binary) if ascii is None else keywordType.toBinary(ascii)


def read(service, keyword, binary=False, both=False, wait=True, timeout=None, config=None):
    """Read ``service.keyword``; see :meth:`Keyword.read`."""
    return _keyword(service, keyword, config, timeout).read(
        binary=binary, both=both, wait=wait, timeout=timeout
    )


def write(service, keyword, value, wait=True, binary=False, timeout=None, config=None):
    """Write ``service.keyword``; see :meth:`Keyword.write`."""
    return _keyword(service, keyword, config, timeout).write(
        value, wait=wait, binary=binary, timeout=timeout)


def wait(service, keyword, timeout=None, operator=None, value=None, sequence=None,
         reset=False, case=False, expression=None, config=None):
    """See :meth:`Keyword.wait`."""
    return _keyword(service, keyword, config).wait(
        timeout=timeout, operator=operator, value=value, sequence=sequence, reset=reset,
        case=case, expression=expression,
    )


def monitor(service, keyword, callback=None, data=None, binary=False, start=True, prime=True,
            wait=True, config=None):
    """Monitor ``service.keyword``; with ``callback``, call it on every new value.

    As KTL Python's procedural ``monitor``: ``callback(keyword, value, data)``,
    with the Keyword, its ascii value (binary with ``binary=True``) and the
    ``data`` given here; in the reactor thread, as every callback.  Without
    ``callback``, :meth:`Keyword.monitor`.
    """
    kw = _keyword(service, keyword, config)
    if callback is not None:
        if not callable(callback):
            raise TypeError(f"{callback!r} is not callable")
        key = "binary" if binary else "ascii"
        kw.callback(_ProceduralCallback(callback, data, key))
    return kw.monitor(start=start, prime=prime, wait=wait)


class _ProceduralCallback:
    """``callback(keyword, value, data)`` as a Keyword callback; equal for equal arguments."""

    def __init__(self, function, data, key):
        self._args = (function, data, key)

    def __call__(self, keyword):
        function, data, key = self._args
        function(keyword, keyword[key], data)

    def __eq__(self, other):
        return isinstance(other, _ProceduralCallback) and self._args[0] is other._args[0] \
            and self._args[2] == other._args[2]

    def __hash__(self):
        return hash((id(self._args[0]), self._args[2]))


subscribe = monitor


def callback(service, keyword, function, remove=False, preferred=False, config=None):
    """See :meth:`Keyword.callback`."""
    return _keyword(service, keyword, config).callback(
        function, remove=remove, preferred=preferred
    )


def heartbeat(service, keyword, period=5.0, config=None):
    """Name a heartbeat keyword of ``service``; see :meth:`Service.heartbeat`."""
    if not isinstance(service, str):
        raise TypeError(f"a service name must be a str, not {type(service).__name__}")
    return Service(service, config).heartbeat(keyword, period)


def waitFor(expression, timeout=None, case=False, config=None):
    """True once ``expression`` (e.g. ``'$demo.TEMP > 30'``) holds, False at ``timeout``.

    ``timeout=None`` waits for ever, as in KTL.  Operands are primed (read)
    first, then re-evaluated on every broadcast; see :mod:`cauldron.expressions`
    for which value (binary or ascii) an operand stands for.
    """
    if not isinstance(expression, str):
        raise TypeError(f"expression must be a str, not {type(expression).__name__}")
    return _waitForExpression(expression, timeout, case, config)


waitfor = waitFor


class Expression:
    """A KTL expression (``"$demo.TEMP > 30 and $demo.MODE == ON"``), parsed once.

    :meth:`evaluate` reads its keywords now; :meth:`wait` is :func:`waitFor`.
    """

    def __init__(self, expression, case=False, config=None):
        if not isinstance(expression, str):
            raise TypeError(f"expression must be a str, not {type(expression).__name__}")
        self.expression = expression
        self._parsed = expressions.parse(expression)  # refuses anything over budget
        self._case = case
        self._config = config

    def __repr__(self):
        return f"<ktl.Expression {self.expression!r}>"

    def evaluate(self):
        """Whether it holds now (each keyword read once)."""
        values = {}
        for service, name in self._parsed.operands:
            kw = Service(service, self._config)[name]
            kw.read()
            values[(kw.service.name, kw.name)] = kw._remote.latest
        return self._parsed.evaluate(values, case=self._case)

    def wait(self, timeout=None):
        """True once it holds, False at ``timeout`` (None: for ever)."""
        return _waitForExpression(self.expression, timeout, self._case, self._config)


def version():
    """cauldron's ktl compatibility level, as KTL Python's ``version()`` gives an int."""
    return 3


# -- KTL Python's logging hook ----------------------------------------------------

#: log levels of :func:`loglevel` and :func:`log`, as KTL Python names them
LOG_DEBUG, LOG_INFO, LOG_WARNING, LOG_ERROR = (
    LogLevel.debug, LogLevel.info, LogLevel.warn, LogLevel.error)
_ktlLog = Logger(namespace="ktl")
_logLevel = [LOG_INFO]  # what logger() writes, from this level up
_logObservers = []


def logger(file):
    """Write cauldron's log lines (and :func:`log`'s) to the open text ``file``.

    Only lines at the :func:`loglevel` or above; call again to change the
    file, or with None to stop.  Through :mod:`twisted.logger`, so they
    also reach any other observer.
    """
    for observer in _logObservers:
        globalLogPublisher.removeObserver(observer)
    _logObservers.clear()
    if file is None:
        return
    observer = FilteringLogObserver(
        textFileLogObserver(file),
        [lambda event: PredicateResult.yes if event.get("log_level", LogLevel.info) >= _logLevel[0]
         else PredicateResult.no],
    )
    _logObservers.append(observer)
    globalLogPublisher.addObserver(observer)


def loglevel(level=None):
    """The level :func:`logger` writes from; set it with ``level`` (e.g. ``ktl.LOG_DEBUG``)."""
    if level is not None:
        _checkLevel(level)
        _logLevel[0] = level
    return _logLevel[0]


def log(level, message):
    """Log ``message`` at ``level`` (``ktl.LOG_INFO`` ...), in the ``ktl`` log namespace."""
    _checkLevel(level)
    _ktlLog.emit(level, "{text}", text=str(message))


def _checkLevel(level):
    if level not in tuple(LogLevel.iterconstants()):
        raise ValueError(f"{level!r} is no log level (use ktl.LOG_DEBUG ... ktl.LOG_ERROR)")


# -- KTL Python names cauldron does not provide ------------------------------------

#: module-level KTL Python names with no equivalent here: name -> why
_UNSUPPORTED = {
    "ktlc": "it is KTL Python's wrapper of the KTL C library; cauldron speaks ZeroMQ and "
            "has no C layer",
    "NoHeartbeatsError": "cauldron always watches the dispatcher's own heartbeat, so "
                         "isAlive() never lacks one",
}
#: the same for Keyword attributes
_UNSUPPORTED_KEYWORD = {
    "ktlc": _UNSUPPORTED["ktlc"],
}


def _unsupportedMessage(name, why):
    return f"ktl.{name} is not supported by cauldron: {why} (see {COMING_FROM_KTL})"


def __getattr__(name):
    if name in _UNSUPPORTED:
        raise Unsupported(_unsupportedMessage(name, _UNSUPPORTED[name]))
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
