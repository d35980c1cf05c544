"""Server-sent event streams with a bound on what a slow browser may hold.

One :class:`EventStream` per open page: a long-lived ``text/event-stream``
response.  It is a push producer registered on its request, so the HTTP
channel pauses it when the socket's buffer fills (a browser that does not
read); events sent meanwhile wait in the stream's own queue, and once that
queue holds more than its bound the stream is dropped.  The browser's
``EventSource`` then reconnects and starts again from a fresh snapshot, so
nothing is lost but the time in between.
"""

import json

from twisted.internet.interfaces import IPushProducer
from twisted.logger import Logger
from zope.interface import implementer

__all__ = ["EventStream", "StreamSet", "encodeEvent"]

log = Logger()


def encodeEvent(event, data):
    """One server-sent event: ``event:`` line, one ``data:`` line of JSON, blank line."""
    payload = json.dumps(data, separators=(",", ":"), allow_nan=False, default=str)
    return b"event: %s\ndata: %s\n\n" % (event.encode("ascii"), payload.encode("utf-8"))


@implementer(IPushProducer)
class EventStream:
    """One browser's event stream.

    :param request: the open :class:`twisted.web.server.Request`.
    :param maxPending: bytes that may wait while the socket is full before
        the stream is dropped.
    :param onClose: called with this stream once it ends, for any reason.
    """

    def __init__(self, request, maxPending, onClose):
        self.request = request
        self.maxPending = maxPending
        self.paused = False
        self.closed = False
        self.dropped = False
        self._pending = []
        self._pendingBytes = 0
        self._onClose = onClose
        request.setHeader(b"content-type", b"text/event-stream; charset=utf-8")
        request.setHeader(b"cache-control", b"no-store")
        request.setHeader(b"x-accel-buffering", b"no")
        request.registerProducer(self, True)
        request.notifyFinish().addBoth(self._finished)
        # Tell EventSource how soon to come back after a drop.
        request.write(b"retry: 1000\n\n")

    @property
    def pendingBytes(self):
        """Bytes queued while the socket is full (not counting the socket's own buffer)."""
        return self._pendingBytes

    def send(self, event, data):
        """Send one event now, or queue it while paused; drop the stream beyond the bound."""
        self.sendRaw(encodeEvent(event, data))

    def sendRaw(self, chunk):
        if self.closed:
            return
        if not self.paused:
            self.request.write(chunk)
            return
        self._pending.append(chunk)
        self._pendingBytes += len(chunk)
        if self._pendingBytes > self.maxPending:
            log.info("dropping a slow event stream ({n} bytes waiting)", n=self._pendingBytes)
            self.dropped = True
            self.close(abort=True)

    def close(self, abort=False):
        """End the stream; ``abort`` also drops the connection at once (what is buffered too)."""
        if self.closed:
            return
        self.closed = True
        self._pending, self._pendingBytes = [], 0
        transport = self.request.channel.transport if self.request.channel else None
        if abort and transport is not None:
            transport.abortConnection()
        else:
            self.request.unregisterProducer()
            self.request.finish()

    # -- IPushProducer: the channel calls these as its socket fills and drains

    def pauseProducing(self):
        self.paused = True

    def resumeProducing(self):
        self.paused = False
        pending, self._pending, self._pendingBytes = self._pending, [], 0
        for chunk in pending:
            if self.closed or self.paused:
                self._pending.append(chunk)
                self._pendingBytes += len(chunk)
            else:
                self.request.write(chunk)

    def stopProducing(self):
        self._finished(None)

    def _finished(self, _):
        if self.closed and self._onClose is None:
            return
        self.closed = True
        self._pending, self._pendingBytes = [], 0
        onClose, self._onClose = self._onClose, None
        if onClose is not None:
            onClose(self)


class StreamSet:
    """The open streams of one topic (the services list, or one service)."""

    def __init__(self):
        self.streams = set()

    def __len__(self):
        return len(self.streams)

    def add(self, stream):
        self.streams.add(stream)

    def discard(self, stream):
        self.streams.discard(stream)

    def send(self, event, data):
        """The same event to every stream, encoded once."""
        chunk = encodeEvent(event, data)
        for stream in list(self.streams):
            stream.sendRaw(chunk)

    def closeAll(self, abort=True):
        """End every stream (dropping its connection, by default: the server is stopping)."""
        for stream in list(self.streams):
            stream.close(abort=abort)
