"""Running things in the reactor thread for other threads, and the shared clients.

The plumbing under every blocking call of :mod:`cauldron.ktl`: crochet's
reactor thread, :class:`_Call` (a function run there and its outcome),
deadlines, the shared :class:`~cauldron.client.ClientService` of each
configuration, and :class:`Sequence`, the handle of a call not waited for.

The globals re-bound here (``_generation``, ``_reactorGone``,
``_setupDone``, ``_exiting``) are read through this module
(``_calls._generation``), never copied by ``from ... import``.
"""

import itertools
import threading

import crochet
from twisted.internet import defer
from twisted.logger import Logger
from twisted.python import threadable
from twisted.python.failure import Failure

from cauldron.client import ClientService
from cauldron.errors import CauldronTimeout, ServiceUnavailable

_log = Logger(namespace="cauldron.ktl")  # one log namespace for all of cauldron.ktl

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


#: the reactor every ktl call runs on, chosen once by _setup()
_theReactor = None


def _reactor():
    """The reactor ktl runs on (every caller comes after _setup(), through _start())."""
    return _theReactor


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


def _setup(reactor=None):
    """Start crochet's reactor thread (once) and hook its shutdown.

    ``reactor`` defaults, as the services' ``reactor=None`` does, to
    Twisted's global reactor: the only one crochet can run in a thread.
    """
    global _setupDone, _theReactor
    crochet.setup()
    with _callLock:
        if _setupDone:
            return
        if reactor is None:
            from twisted.internet import reactor
        _theReactor = reactor
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
