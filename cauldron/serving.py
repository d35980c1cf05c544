"""What the dispatcher and the router share when answering requests."""

from twisted.internet.defer import Deferred
from twisted.logger import Logger

from cauldron.errors import CauldronError, ProtocolError
from cauldron.protocol import codec
from cauldron.protocol.messages import Error

__all__ = ["RateLimitedCounter", "errorReply", "answer"]

log = Logger()

MALFORMED_LOG_INTERVAL = 1.0


def errorReply(requestId, error, unexpected="HookError"):
    """The :class:`Error` message for an exception raised while serving a request.

    ``unexpected`` names the class reported for an exception that is neither
    a cauldron error nor a bad value (a dispatcher hook's bug, say).
    """
    if isinstance(error, CauldronError):
        return Error(requestId, type(error).__name__, str(error))
    if isinstance(error, (ValueError, TypeError)):
        return Error(requestId, "BadValue", str(error))
    return Error(requestId, unexpected, f"{type(error).__name__}: {error}")


def answer(frames, handlers, server, malformed, unexpected="HookError"):
    """The reply to one request: a message, a Deferred firing with one, or None.

    ``handlers`` maps request classes to ``handler(server, request)``.  Frames
    that are no message at all are counted in ``malformed`` and get no reply
    (there is no id to answer); a message nobody handles here gets a
    ProtocolError reply; whatever a handler raises becomes an error reply.
    """
    try:
        request = codec.decode(frames)
    except ProtocolError as e:
        malformed(str(e))
        return None
    handler = handlers.get(type(request))
    if handler is None:
        kind = type(request).__name__
        malformed(f"unexpected {kind}")
        return Error(getattr(request, "id", 0), "ProtocolError", f"{kind} is not answered here")
    try:
        result = handler(server, request)
    except Exception as e:
        return errorReply(request.id, e, unexpected)
    if isinstance(result, Deferred):
        return result.addErrback(lambda f: errorReply(request.id, f.value, unexpected))
    return result


class RateLimitedCounter:
    """Counts bad input and logs at most once per interval, so floods cost nothing."""

    def __init__(self, what, clock):
        self.what = what
        self.count = 0
        self._clock = clock
        self._lastLog = None
        self._sinceLog = 0

    def __call__(self, reason):
        self.count += 1
        self._sinceLog += 1
        now = self._clock.seconds()
        if self._lastLog is None or now - self._lastLog >= MALFORMED_LOG_INTERVAL:
            log.warn(
                "ignored {n} {what} (latest: {reason}); {total} in all",
                n=self._sinceLog, what=self.what, reason=reason, total=self.count,
            )
            self._lastLog = now
            self._sinceLog = 0
