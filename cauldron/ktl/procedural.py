"""KTL Python's procedural calls: ``ktl.read("demo", "TEMP")`` and the others."""

from cauldron import expressions
from cauldron.ktl._calls import _lock, _services
from cauldron.ktl.service import Service
from cauldron.ktl.waiting import _waitForExpression

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
