"""One tree of exceptions for everything cauldron raises.

Every error a dispatcher or router reports travels over the wire as the name
of one of these classes plus its message, and is raised again on the client
side as the same class (see :func:`errorFromName`).  Keep it one tree: callers
catch :class:`CauldronError` to catch everything cauldron means to raise.
"""

__all__ = [
    "CauldronError",
    "ConfigError",
    "KeywordError",
    "UnknownKeyword",
    "BadValue",
    "ReadOnly",
    "WriteOnly",
    "HookError",
    "PermissionDenied",
    "ServiceError",
    "UnknownService",
    "ServiceUnavailable",
    "RouterUnavailable",
    "CauldronTimeout",
    "ProtocolError",
    "LeaseError",
    "LeaseConflict",
    "NotOwner",
    "ArchiveError",
    "errorFromName",
]


class CauldronError(Exception):
    """The root of every error cauldron raises on purpose.

    :ivar detail: facts a program may act on (a lease holder's host and
        ports, say), as plain values; they travel with the error.
    """

    def __init__(self, *args, detail=None):
        super().__init__(*args)
        self.detail = dict(detail or {})


class ConfigError(CauldronError):
    """A configuration file or value is invalid (names file, section, key, value)."""


class KeywordError(CauldronError):
    """Something is wrong with a keyword or a value given to it."""


class UnknownKeyword(KeywordError, KeyError):
    """The service has no keyword of that name.

    Also a :class:`KeyError`, as KTL users expect ``svc["NOPE"]`` to raise one.
    """

    def __str__(self):
        # KeyError quotes its argument; keep the message readable instead.
        return Exception.__str__(self)


class BadValue(KeywordError, ValueError):
    """A value was rejected: wrong type, unparsable, or out of range."""


class ReadOnly(KeywordError, ValueError):
    """A write was attempted on a read-only keyword.

    Also a :class:`ValueError`, which KTL code catches for a refused write.
    """


class WriteOnly(KeywordError, ValueError):
    """A read was attempted on a write-only keyword (also a :class:`ValueError`)."""


class HookError(KeywordError):
    """A dispatcher hook (check, write, read...) raised an unexpected error."""


class PermissionDenied(KeywordError):
    """The client's key may not write (or read) that keyword.

    ``detail["keyword"]`` names the keyword.  Only in secure mode, where the
    dispatcher knows which key a request comes from.
    """


class ServiceError(CauldronError):
    """Something is wrong with a service as a whole."""


class UnknownService(ServiceError):
    """No dispatcher is registered for that service name."""


class ServiceUnavailable(ServiceError):
    """The service is known but its dispatcher does not answer (or stopped)."""


class NotOwner(ServiceError):
    """The dispatcher that answered is not the one the router named.

    A client sends the owner identity the router gave it with every request;
    a dispatcher that is not that owner (restarted, or replaced by another)
    refuses the request without running it, and the client asks the router
    again.
    """


class RouterUnavailable(ServiceError):
    """The router did not answer at its configured address."""


class CauldronTimeout(CauldronError, TimeoutError):
    """A request got no answer before its deadline.

    Also the builtin :class:`TimeoutError`, so KTL-style code can catch that.
    A dispatcher never starts a request after its deadline; ``started`` is
    True when the dispatcher said it had started the request (a slow write
    still running, which may yet complete), False otherwise.
    """

    def __init__(self, *args, started=False, **kwargs):
        super().__init__(*args, **kwargs)
        self.started = started


class ProtocolError(CauldronError):
    """A message could not be decoded or broke the wire protocol."""


class LeaseError(CauldronError):
    """The router could not lease ports (for example: all ports are in use)."""


class LeaseConflict(LeaseError):
    """Another dispatcher holds the lease asked for, or a keyword it claims.

    ``detail`` names the holder: ``service``, ``dispatcher`` (its name
    within the service), ``instance``, ``host``, ``dispatchPort``,
    ``broadcastPort``, ``protocol``, ``age`` (seconds since it last renewed),
    ``expiresIn`` and ``ttl``; and ``keyword`` when the conflict is over a
    keyword another dispatcher of the service serves.
    """


class ArchiveError(CauldronError):
    """The keyword archive's database failed: unreachable, locked, full, or refusing.

    The message is one line naming the database by its URL, password masked.
    A store that raised it reconnects on its next call, so a caller may keep
    what it meant to store and try again later.
    """


def _allErrors():
    stack, found = [CauldronError], {}
    while stack:
        cls = stack.pop()
        found[cls.__name__] = cls
        stack.extend(cls.__subclasses__())
    return found


def errorFromName(name, message, detail=None):
    """Rebuild an error received over the wire.

    An unknown or non-cauldron class name becomes a plain :class:`CauldronError`,
    so a peer can never make us instantiate an arbitrary class.
    """
    cls = _allErrors().get(name, CauldronError)
    return cls(message, detail=detail)
