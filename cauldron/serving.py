"""What the services share: answering requests, rate-limited logs, outcomes waited for."""

from twisted.internet.defer import Deferred
from twisted.logger import Logger, LogLevel
from twisted.python.failure import Failure

from cauldron.errors import CauldronError, ProtocolError
from cauldron.protocol import codec
from cauldron.protocol.messages import Error

__all__ = ["RateLimitedLog", "RateLimitedCounter", "errorReply", "answer", "answerMessage",
           "NO_REPLY", "Outcome"]

log = Logger()

#: seconds over which a rate-limited log may write its burst of lines
LOG_INTERVAL = 1.0

#: what a handler returns (or a Deferred fires with) when a request gets no reply
NO_REPLY = object()


def errorReply(requestId, error, unexpected="HookError"):
    """The :class:`Error` message for an exception raised while serving a request.

    ``unexpected`` names the class reported for an exception that is neither
    a cauldron error nor a bad value (a dispatcher hook's bug, say).
    """
    if isinstance(error, CauldronError):
        return Error(requestId, type(error).__name__, str(error), _wireDetail(error.detail))
    if isinstance(error, (ValueError, TypeError)):
        return Error(requestId, "BadValue", str(error))
    return Error(requestId, unexpected, f"{type(error).__name__}: {error}")


def _wireDetail(detail):
    """The part of an error's detail that can travel: plain values only."""
    return {
        str(key): value for key, value in detail.items()
        if value is None or isinstance(value, (str, int, float, bool))
    }


def answer(frames, handlers, server, peer, malformed, unexpected="HookError"):
    """The reply to one request: a message, a Deferred firing with one, or None.

    ``handlers`` maps request classes to ``handler(server, request, peer)``,
    where ``peer`` is the sender's socket identity.  Frames that are no
    message at all are counted in ``malformed`` and get no reply (there is no
    id to answer); a message nobody handles here gets a ProtocolError reply;
    whatever a handler raises becomes an error reply.  A handler returning
    :data:`NO_REPLY` sends nothing (None is returned).
    """
    try:
        request = codec.decode(frames)
    except ProtocolError as e:
        malformed(str(e))
        return None
    return answerMessage(request, handlers, server, peer, malformed, unexpected)


def answerMessage(request, handlers, server, peer, malformed, unexpected="HookError"):
    """As :func:`answer`, for a request already decoded (one of a :class:`Batch`, say)."""
    handler = handlers.get(type(request))
    if handler is None:
        kind = type(request).__name__
        malformed(f"unexpected {kind}")
        return Error(getattr(request, "id", 0), "ProtocolError", f"{kind} is not answered here")
    try:
        result = handler(server, request, peer)
    except Exception as e:
        return errorReply(request.id, e, unexpected)
    if isinstance(result, Deferred):
        return result.addErrback(lambda f: errorReply(request.id, f.value, unexpected))
    return None if result is NO_REPLY else result


class RateLimitedLog:
    """Logs an event a remote peer can cause at will, at a bounded rate.

    At most ``burst`` lines per ``interval``; the events beyond are counted,
    and one line per interval reports how many were left out, so a flood
    costs a few lines a second however fast it comes.  Call :meth:`stop`
    when the owner stops (it cancels the pending report).
    """

    def __init__(self, clock, burst=1, interval=LOG_INTERVAL, logger=log):
        self.count = 0
        self.suppressed = 0
        self._clock = clock
        self._burst = burst
        self._interval = interval
        self._log = logger
        self._windowStart = None
        self._inWindow = 0
        self._report = None
        self._lastSuppressed = None

    def __call__(self, fmt, level=LogLevel.warn, **kwargs):
        """Log ``fmt`` (a twisted.logger format) unless this interval's burst is spent."""
        self.count += 1
        now = self._clock.seconds()
        if self._windowStart is None or now - self._windowStart >= self._interval:
            self._windowStart, self._inWindow = now, 0
        if self._inWindow < self._burst:
            self._inWindow += 1
            self._log.emit(level, fmt, **kwargs)
            return True
        self.suppressed += 1
        self._lastSuppressed = (fmt, level, kwargs)
        if self._report is None:
            delay = max(0.0, self._windowStart + self._interval - now)
            self._report = self._clock.callLater(delay, self._reportSuppressed)
        return False

    def _reportSuppressed(self):
        self._report = None
        if not self.suppressed:
            return
        fmt, level, kwargs = self._lastSuppressed
        count, self.suppressed = self.suppressed, 0
        self._windowStart, self._inWindow = self._clock.seconds(), 1
        self._log.emit(level, fmt + " ({suppressedCount} more like this in {interval:g} s)",
                       suppressedCount=count, interval=self._interval, **kwargs)

    def stop(self):
        """Report what is still counted, now, and cancel the pending report."""
        if self._report is not None:
            if self._report.active():
                self._report.cancel()
            self._report = None
            self._reportSuppressed()


class RateLimitedCounter:
    """Counts bad input and logs at most once per interval, so floods cost nothing."""

    def __init__(self, what, clock, level=LogLevel.warn):
        self.what = what
        self.count = 0
        self._level = level
        self._log = RateLimitedLog(clock)

    def __call__(self, reason):
        self.count += 1
        self._log("ignored {what} (latest: {reason}); {total} in all", level=self._level,
                  what=self.what, reason=reason, total=self.count)

    def stop(self):
        self._log.stop()


class Outcome:
    """A result many wait for (a start's): each waiter gets a Deferred of its own.

    ``set`` a value, or an exception or Failure to fail the waiters with;
    ``reset`` forgets it (a restart) but keeps who waits.
    """

    _UNKNOWN = object()

    def __init__(self):
        self._result = self._UNKNOWN
        self._waiters = []

    @property
    def known(self):
        return self._result is not self._UNKNOWN

    def whenKnown(self):
        d = Deferred()
        if self.known:
            self._fire(d)
        else:
            self._waiters.append(d)
        return d

    def set(self, result):
        self._result = result
        waiters, self._waiters = self._waiters, []
        for d in waiters:
            self._fire(d)

    def reset(self):
        self._result = self._UNKNOWN

    def _fire(self, d):
        if isinstance(self._result, (Exception, Failure)):
            d.errback(self._result)
        else:
            d.callback(self._result)
