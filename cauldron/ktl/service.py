"""Services: :class:`Service`, and the process-wide configuration."""

import threading
import weakref

from twisted.internet import defer
from twisted.python import threadable
from twisted.python.failure import Failure

from cauldron import config as _config
from cauldron.ktl import _calls
from cauldron.ktl._calls import (
    DEFAULT_TIMEOUT,
    _block,
    _connect,
    _connectDeadline,
    _lock,
    _reactor,
    _services,
)
from cauldron.ktl.keyword import Keyword
from cauldron.ktl.waiting import _waitForExpression

# -- the process-wide configuration ----------------------------------------------

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
        return self._generation != _calls._generation

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
        """Reactor thread, from _stopClients: monitors and polls end with the client."""
        with self._keywordLock:
            keywords = list(self._keywords.values()) + list(self._clones.values())
        for keyword in keywords:
            keyword._monitorToken = None
            keyword._subscription = None
            keyword._pollInReactor(None)  # a poll would connect again at once

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

        False once a dispatcher of the service missed three of its heartbeats (or
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
