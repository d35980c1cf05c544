"""One ZeroMQ context for a service, and the sockets it makes.

:class:`Transport` is what the services above use: it makes the sockets of
:mod:`cauldron.transport.sockets` and :mod:`cauldron.transport.publisher`,
polls them from the reactor given, and closes them all at once.
"""

import zmq
from twisted.logger import Logger
from txzmq import ZmqFactory

from cauldron.transport.publisher import PublisherConnection
from cauldron.transport.sockets import (
    LINGER_MS,
    SAFETY_POLL_SECONDS,
    DealerConnection,
    RouterConnection,
    SubscriberConnection,
)

__all__ = ["Transport"]

log = Logger()


class Transport:
    """Makes sockets for one service and closes them all at :meth:`shutdown`.

    One ZeroMQ context per Transport, on the reactor given; its sockets are
    polled by the reactor, with a slow safety poll against lost edges.
    """

    def __init__(self, reactor):
        self.reactor = reactor
        self._factory = ZmqFactory()
        self._factory.reactor = reactor
        self._factory.lingerPeriod = LINGER_MS
        self._poll = reactor.callLater(SAFETY_POLL_SECONDS, self._safetyPoll)

    def _safetyPoll(self):
        self._poll = self.reactor.callLater(SAFETY_POLL_SECONDS, self._safetyPoll)
        for connection in list(self._factory.connections):
            try:
                connection.doRead()
            except Exception:
                log.failure("safety poll of {conn!r} failed", conn=connection)

    def router(self, onMessage):
        return RouterConnection(self._factory, onMessage)

    def dealer(self, onMessage):
        return DealerConnection(self._factory, onMessage)

    def publisher(self, onSubscribe=None, isTopic=None):
        """An XPUB applying the subscriptions ``isTopic`` accepts (all, if None)."""
        return PublisherConnection(self._factory, onSubscribe, isTopic)

    def subscriber(self, onMessage):
        return SubscriberConnection(self._factory, onMessage)

    @property
    def closed(self):
        """True once :meth:`shutdown` ran: no socket can be made any more."""
        return self._factory is None

    def close(self, connection, discard=False):
        """Close one socket now (others stay open).

        With ``discard``, messages still queued for sending are dropped at
        once instead of lingering.
        """
        if discard and not connection.closed:
            connection.socket.set(zmq.LINGER, 0)
        connection.shutdown()

    def shutdown(self):
        """Close every socket and the context; safe to call twice."""
        if self._factory is None:
            return
        if self._poll.active():
            self._poll.cancel()
        for connection in list(self._factory.connections):
            connection.shutdown()
        self._factory.connections = set()
        self._factory.context.term()
        self._factory = None
