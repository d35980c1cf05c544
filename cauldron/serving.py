"""What the dispatcher and the router share when answering requests."""

from twisted.logger import Logger

from cauldron.errors import CauldronError
from cauldron.protocol.messages import Error

__all__ = ["RateLimitedCounter", "errorReply"]

log = Logger()

MALFORMED_LOG_INTERVAL = 1.0


def errorReply(requestId, error):
    """The :class:`Error` message for an exception raised while serving a request."""
    if isinstance(error, CauldronError):
        return Error(requestId, type(error).__name__, str(error))
    if isinstance(error, (ValueError, TypeError)):
        return Error(requestId, "BadValue", str(error))
    return Error(requestId, "HookError", f"{type(error).__name__}: {error}")


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
