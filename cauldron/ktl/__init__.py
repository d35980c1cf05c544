"""Blocking, KTL-style keyword access for plain scripts and threads.

``ktl.read("demo", "TEMP")``, ``svc = ktl.Service("demo")``,
``svc["TEMP"].write(5)``, ``ktl.waitFor("$demo.TEMP > 30", timeout=60)``:
no reactor in sight.  Underneath is the Deferred client
(:class:`cauldron.client.ClientService`) running on Twisted's reactor in a
background thread started by `crochet <https://crochet.readthedocs.io>`_ on
first use.  There is one shared ``ClientService`` per configuration; the
configuration is the ``config=`` argument (a path or a
:class:`cauldron.config.Config`), else the one :func:`configure` set, else
``$CAULDRON_CONFIG``, else defaults.  Scripts written for KTL Python run
unchanged (``cauldron ktl run``, or :func:`install`); "Coming from KTL" in
the docs lists every KTL Python name and what happens to it here.

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
    The :mod:`cauldron.errors` classes, under KTL's names too: every one is
    a :data:`ktlError`, a timeout a :data:`TimeoutException`; an unknown
    keyword is a :class:`KeyError`, a rejected value (or a write to a
    read-only keyword) a :class:`ValueError`.

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

# The parts of cauldron.ktl: _calls (the reactor thread, the shared clients),
# exceptions (ktl.Exceptions), keyword, service, waiting (waitFor),
# procedural (ktl.read ...) and compat (install, runScript, logging).  Their
# public names are importable from here; __all__ names the main ones.
from cauldron.errors import (  # noqa: F401
    CauldronError,
    CauldronTimeout,
    KeywordError,
    ServiceUnavailable,
)
from cauldron.ktl import _calls, exceptions
from cauldron.ktl._calls import (  # noqa: F401
    GRACE,
    SHUTDOWN_TIMEOUT,
    Sequence,
    shutdown,
)
from cauldron.ktl.compat import (  # noqa: F401
    LOG_DEBUG,
    LOG_ERROR,
    LOG_INFO,
    LOG_WARNING,
    install,
    log,
    logger,
    loglevel,
    runScript,
)
from cauldron.ktl.exceptions import (  # noqa: F401
    _UNSUPPORTED,
    COMING_FROM_KTL,
    NoValue,
    Unsupported,
    _unsupportedMessage,
)
from cauldron.ktl.keyword import (  # noqa: F401
    DEFAULT_HISTORY,
    Boolean,
    Double,
    DoubleArray,
    Enumerated,
    History,
    HistorySlice,
    Integer,
    IntegerArray,
    Keyword,
    Mask,
    String,
)
from cauldron.ktl.procedural import (  # noqa: F401
    Expression,
    cache,
    callback,
    close,
    convert,
    heartbeat,
    listen,
    monitor,
    purge,
    read,
    subscribe,
    version,
    wait,
    waitFor,
    waitfor,
    write,
)
from cauldron.ktl.service import Service, configure

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

# Restated with their #: comments, which the API docs read from this file.
#: default deadline (seconds) of every request of the shared clients
DEFAULT_TIMEOUT = _calls.DEFAULT_TIMEOUT
#: KTL Python's base error: every error cauldron raises on purpose
ktlError = exceptions.ktlError
#: KTL Python's timeout: a :class:`TimeoutError` and a :data:`ktlError` too
TimeoutException = exceptions.TimeoutException

#: ``ktl.Exceptions``, for ``from ktl.Exceptions import ktlError``
Exceptions = exceptions


def __getattr__(name):
    if name in _UNSUPPORTED:
        raise Unsupported(_unsupportedMessage(name, _UNSUPPORTED[name]))
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
