"""Keywords: :class:`Keyword`, its class for each KTL type, and its history."""

import collections
import collections.abc
import operator
import threading

from twisted.internet import task

from cauldron import keywords as _keywords
from cauldron.errors import CauldronTimeout
from cauldron.ktl._calls import Sequence, _block, _log, _notInReactor, _reactor, _start, _wait
from cauldron.ktl.exceptions import (
    _UNSUPPORTED_KEYWORD,
    NoValue,
    Unsupported,
    _unsupportedMessage,
)
from cauldron.ktl.waiting import _waitFor, _waitForExpression


def _isNewer(value, than, epoch):
    """Same order as the client: a new epoch wins, else a higher sequence."""
    if value is None:
        return False
    if than is None:
        return True
    if value.epoch != than.epoch:
        return value.epoch == epoch
    return value.sequence > than.sequence


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
                if not _isNewer(latest, self._delivered, self._remote.dispatcher.epoch):
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
                lambda value: _isNewer(value, baseline, remote.dispatcher.epoch), left
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
