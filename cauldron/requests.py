"""Requests with deadlines over one DEALER socket.

Used by clients talking to dispatchers and to the router, and by dispatchers
talking to the router.  Every request gets a fresh id and a fresh Deferred;
it fires with the reply message (or what the request's ``convert`` makes
of it), fails with the error the peer reported
(rebuilt as the matching :mod:`cauldron.errors` class), or fails with a
timeout error when no reply arrives in time.  A reply arriving after that is
dropped, never handed to a newer request.  A request too large for the wire
fails at once with BadValue and never reaches the socket: the peer would
drop the whole connection, and every other request in flight with it.
"""

import heapq
import itertools

from twisted.internet.defer import Deferred
from twisted.logger import Logger

from cauldron.errors import (
    BadValue,
    CauldronTimeout,
    ProtocolError,
    ServiceUnavailable,
    errorFromName,
)
from cauldron.protocol import codec
from cauldron.protocol.messages import Batch, Error, Started
from cauldron.transport import QueueFull

__all__ = ["RequestChannel", "MAX_PENDING"]

MAX_PENDING = 10000
#: the most bytes of requests one Batch holds (a message holds 1 MiB)
BATCH_BYTES = 256 * 1024
#: the most requests one Batch holds.  A turn's requests go out in several
#: Batches rather than one: the peer starts on the first while the rest are
#: made, and its replies come back in as many parts (64 reads in flight: 0.46
#: of raw pyzmq in one Batch per turn, 0.82-0.90 in Batches of 32; 16 and 48
#: did worse)
BATCH_REQUESTS = 32

log = Logger()


class RequestChannel:
    """Request/reply with one peer address, on the reactor of ``transport``.

    :param peer: a short description of the peer for error messages, e.g.
        ``"service 'demo' at tcp://host:6511"``.
    :param onTimeout: builds the exception for a request that timed out,
        from the request's description and the timeout; defaults to
        :class:`CauldronTimeout`.
    :param serverKey: the peer's CURVE public key (secure mode only).
    :param batched: whether the peer takes :class:`Batch` messages (a
        dispatcher does): requests made while others are in flight then
        go together at the end of the reactor turn.
    """

    def __init__(self, transport, address, peer, timeout, onTimeout=None, serverKey=None,
                 batched=False):
        self.address = address
        self.serverKey = serverKey
        self.batched = batched
        self._outbox = []  # (id, payload) of requests waiting for the end of the turn
        self._outboxBytes = 0
        self._flushing = None  # the DelayedCall sending them
        self.peer = peer
        self.timeout = timeout
        self.malformed = 0
        self._transport = transport
        self._reactor = transport.reactor
        self._onTimeout = onTimeout or self._defaultTimeoutError
        self._ids = itertools.count(1)
        self._pending = {}  # id -> [Deferred, deadline, what, timeout, started, convert, onError]
        self._deadlines = []  # heap of (deadline, id), stale entries included
        self._timer = None  # one DelayedCall, at the earliest deadline
        self._timerAt = None
        self._dealer = None
        self._connect()

    def _connect(self):
        self._dealer = self._transport.dealer(self._received, self.serverKey)
        self._dealer.connect(self.address)

    def _defaultTimeoutError(self, what, timeout, started=False):
        if started:
            return CauldronTimeout(
                f"{what}: {self.peer} started it but did not finish within {timeout:g} s; "
                "it may still complete", started=True,
            )
        return CauldronTimeout(f"{what}: no reply from {self.peer} within {timeout:g} s")

    @property
    def pending(self):
        """How many requests await a reply."""
        return len(self._pending)

    def request(self, makeMessage, what, timeout=None, convert=None, onError=None):
        """Send ``makeMessage(id)``; a Deferred firing with the reply message.

        :param what: describes the request in error messages (``"read TEMP"``).
        :param convert: if given, the Deferred fires with ``convert(reply)``
            instead, with no callback of ours left on it for its caller's
            chain to run through.
        :param onError: if given, ``onError(d, error)`` sees each error reply
            first; it returns True when it takes care of ``d`` itself (a
            request sent again elsewhere, say).
        """
        timeout = self.timeout if timeout is None else timeout
        if self._dealer is None:
            raise ServiceUnavailable(f"{what}: the connection to {self.peer} is closed")
        if len(self._pending) >= MAX_PENDING:
            raise ServiceUnavailable(f"{what}: {MAX_PENDING} requests already wait for {self.peer}")
        requestId = next(self._ids)
        try:
            payload = codec.encodePayload(makeMessage(requestId))
        except (ValueError, TypeError, OverflowError) as e:
            # e.g. an int beyond 64 bits or text that is not valid Unicode
            raise BadValue(f"{what}: cannot send that value: {e}") from None
        if len(payload) > codec.MAX_MESSAGE_SIZE:
            raise BadValue(f"{what}: the request would take {len(payload)} bytes, "
                           f"more than the {codec.MAX_MESSAGE_SIZE} a message may hold")
        if self.batched and self._pending and len(payload) <= BATCH_BYTES:
            self._enqueue(requestId, payload)
        else:
            try:
                self._dealer.send([codec.VERSION, payload])
            except QueueFull:
                raise ServiceUnavailable(
                    f"{what}: too many requests queued for {self.peer}") from None
        d = Deferred(canceller=lambda d: self._forget(requestId))
        deadline = self._reactor.seconds() + timeout
        self._pending[requestId] = [d, deadline, what, timeout, False, convert, onError]
        heapq.heappush(self._deadlines, (deadline, requestId))
        if self._timer is None or deadline < self._timerAt:
            self._scheduleExpiry(deadline)
        return d

    # -- batches: requests made while others are in flight go together

    def _enqueue(self, requestId, payload):
        if len(self._outbox) >= BATCH_REQUESTS or self._outboxBytes + len(payload) > BATCH_BYTES:
            self._flush()
        self._outbox.append((requestId, payload))
        self._outboxBytes += len(payload)
        if self._flushing is None:
            self._flushing = self._reactor.callLater(0, self._flush)

    def _flush(self):
        """Send the requests waiting: one Batch (or the request alone, if only one)."""
        if self._flushing is not None and self._flushing.active():
            self._flushing.cancel()
        self._flushing = None
        # A request given up on (cancelled, failed) since it was made is not sent.
        outbox = [(i, payload) for i, payload in self._outbox if i in self._pending]
        self._outbox, self._outboxBytes = [], 0
        if not outbox or self._dealer is None:
            return
        if len(outbox) == 1:
            frames = [codec.VERSION, outbox[0][1]]
        else:
            frames = codec.encode(Batch([payload for _, payload in outbox]))
        try:
            self._dealer.send(frames)
        except QueueFull:
            # Never sent: they fail now, and can never take effect later.
            for requestId, _ in outbox:
                entry = self._pending.pop(requestId, None)
                if entry is not None:
                    entry[0].errback(ServiceUnavailable(
                        f"{entry[2]}: too many requests queued for {self.peer}"))

    def _dropOutbox(self):
        """Forget the requests not sent yet (their callers are told otherwise)."""
        if self._flushing is not None and self._flushing.active():
            self._flushing.cancel()
        self._flushing = None
        self._outbox, self._outboxBytes = [], 0

    # -- deadlines: one timer for the earliest, not one DelayedCall per request
    #
    # The timer stays armed when the last reply arrives: requests made one
    # after another (each deadline later than the last) then share one timer,
    # instead of scheduling and cancelling a DelayedCall each.  When it fires
    # with nothing due, it moves to the earliest deadline left, if any.

    def _scheduleExpiry(self, deadline):
        delay = max(0.0, deadline - self._reactor.seconds())
        if self._timer is None:
            self._timer = self._reactor.callLater(delay, self._expire)
        else:
            self._timer.reset(delay)
        self._timerAt = deadline

    def _stopExpiry(self):
        if self._timer is not None:
            if self._timer.active():
                self._timer.cancel()
            self._timer = None
        self._deadlines = []

    def _expire(self):
        self._timer = None
        now = self._reactor.seconds()
        expired = []
        while self._deadlines and self._deadlines[0][0] <= now:
            _, requestId = heapq.heappop(self._deadlines)
            entry = self._pending.pop(requestId, None)
            if entry is not None:
                expired.append(entry)
        if self._deadlines:
            self._scheduleExpiry(self._deadlines[0][0])
        if expired and not self._pending:
            # Nothing else is in flight: drop what ZeroMQ still queues for a
            # peer that may be gone.  Before the errbacks, so a request they
            # make goes out on the new socket.
            self.reset()
        for d, _, what, timeout, started, _, _ in expired:
            d.errback(self._timeoutError(what, timeout, started))

    def _timeoutError(self, what, timeout, started):
        if started:
            return self._defaultTimeoutError(what, timeout, started=True)
        return self._onTimeout(what, timeout)

    def _forget(self, requestId):
        self._pending.pop(requestId, None)
        if not self._pending:
            self._deadlines = []

    def _received(self, frames):
        try:
            message = codec.decode(frames)
        except ProtocolError:
            self.malformed += 1
            return
        if isinstance(message, Batch):
            for payload in message.payloads:
                try:
                    self._answered(codec.decodeBatched(payload))
                except ProtocolError:
                    self.malformed += 1
            return
        self._answered(message)

    def _answered(self, message):
        """A reply (or Started) to one of our requests; anything else is dropped."""
        requestId = getattr(message, "id", None)
        if isinstance(message, Started):
            entry = self._pending.get(requestId)
            if entry is not None:
                entry[4] = True
            return
        entry = self._pending.pop(requestId, None)
        if entry is None:
            return  # late or unsolicited: never hand it to a newer request
        if not self._pending:
            self._deadlines = []  # the timer stays: see _scheduleExpiry
        elif len(self._deadlines) > 4 * len(self._pending) + 1024:
            # Answered requests leave their deadlines behind: drop them.
            self._deadlines = [(entry[1], i) for i, entry in self._pending.items()]
            heapq.heapify(self._deadlines)
        d, convert, onError = entry[0], entry[5], entry[6]
        if isinstance(message, Error):
            error = errorFromName(message.error, message.message, message.detail)
            if onError is None or not onError(d, error):
                d.errback(error)
        elif convert is None:
            d.callback(message)
        else:
            try:
                result = convert(message)
            except Exception:
                d.errback()
            else:
                d.callback(result)

    def reset(self):
        """Reopen the socket, discarding requests ZeroMQ (or the next Batch) still queues."""
        self._dropOutbox()
        if self._dealer is not None and not self._transport.closed:
            self._transport.close(self._dealer, discard=True)
            self._connect()

    def failAll(self, error, reconnect=False):
        """Fail every pending request with ``error`` (e.g. the peer died).

        With ``reconnect``, the socket is reopened first, discarding what
        ZeroMQ still queues for the peer; requests that the errbacks make go
        out on the new socket.
        """
        pending, self._pending = self._pending, {}
        self._stopExpiry()
        self._dropOutbox()
        if reconnect:
            self.reset()
        for entry in pending.values():
            entry[0].errback(error)

    def close(self, error=None):
        """Fail what is pending (cancelled by default) and close the socket."""
        pending, self._pending = self._pending, {}
        self._stopExpiry()
        self._dropOutbox()
        for entry in pending.values():
            if error is None:
                entry[0].cancel()
            else:
                entry[0].errback(error)
        if self._dealer is not None:
            self._transport.close(self._dealer)
            self._dealer = None
