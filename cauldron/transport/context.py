"""One ZeroMQ context for a service, and the sockets it makes.

:class:`Transport` is what the services above use: it makes the sockets of
:mod:`cauldron.transport.sockets` and :mod:`cauldron.transport.publisher`,
polls them from the reactor given, and closes them all at once.

Given a :class:`~cauldron.transport.curve.Curve`, every socket it makes is
secure: servers (a bound ROUTER, the publisher) admit only the keys the
Transport's ZAP handler allows, and clients (DEALER, SUB) must name the
public key of the server they talk to.
"""

import zmq
from twisted.logger import Logger
from txzmq import ZmqFactory

from cauldron.errors import ConfigError
from cauldron.transport.curve import Refusals, ZapHandler, isValidKey
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

#: the largest message a secure publisher takes: a subscription, or the
#: CURVE handshake before it (its INITIATE command is ~270 bytes); libzmq
#: applies the limit to encrypted frames, and the publisher still refuses
#: topics over MAX_SUBSCRIPTION_BYTES itself
SECURE_SUBSCRIPTION_BYTES = 512
#: a CURVE connection queues one message of its own before the first
#: subscription: at a mark of 1 (the plain publisher's), none ever arrives
SECURE_SUBSCRIPTION_HIGH_WATER_MARK = 2


class Transport:
    """Makes sockets for one service and closes them all at :meth:`shutdown`.

    One ZeroMQ context per Transport, on the reactor given; its sockets are
    polled by the reactor, with a slow safety poll against lost edges.

    With ``curve`` (a :class:`~cauldron.transport.curve.Curve`), secure
    mode: the Transport answers ZAP for its context (:attr:`authenticator`),
    counts whom it turned away (:attr:`refusals`), and makes only CURVE
    sockets.  Without, plain sockets exactly as ever.
    """

    def __init__(self, reactor, curve=None):
        self.reactor = reactor
        self.curve = curve
        #: the ZAP handler admitting ``curve.allowed`` (None in plain mode)
        self.authenticator = None
        #: whom secure sockets turned away, by kind (None in plain mode)
        self.refusals = None
        self._factory = ZmqFactory()
        self._factory.reactor = reactor
        self._factory.lingerPeriod = LINGER_MS
        if curve is not None:
            # Bound before any server socket: none may handshake without it.
            self.refusals = Refusals(reactor)
            self.authenticator = ZapHandler(self._factory, curve.allowed, self.refusals)
        self._poll = reactor.callLater(SAFETY_POLL_SECONDS, self._safetyPoll)

    def _safetyPoll(self):
        self._poll = self.reactor.callLater(SAFETY_POLL_SECONDS, self._safetyPoll)
        for connection in list(self._factory.connections):
            try:
                connection.doRead()
            except Exception:
                log.failure("safety poll of {conn!r} failed", conn=connection)

    @property
    def secure(self):
        """Whether this Transport makes CURVE sockets only."""
        return self.curve is not None

    def router(self, onMessage):
        """A ROUTER; in secure mode a CURVE server once bound."""
        return self._secured(RouterConnection(self._factory, onMessage))

    def dealer(self, onMessage, serverKey=None):
        """A DEALER; in secure mode a CURVE client of the server with public key ``serverKey``."""
        serverKey = self._serverKey(serverKey, "dealer")
        return self._secured(DealerConnection(self._factory, onMessage), serverKey)

    def publisher(self, onSubscribe=None, isTopic=None):
        """An XPUB applying the subscriptions ``isTopic`` accepts (all, if None).

        In secure mode a CURVE server.
        """
        connection = PublisherConnection(self._factory, onSubscribe, isTopic)
        if self.curve is not None:
            connection.socket.set(zmq.MAXMSGSIZE, SECURE_SUBSCRIPTION_BYTES)
            connection.socket.set(zmq.RCVHWM, SECURE_SUBSCRIPTION_HIGH_WATER_MARK)
        return self._secured(connection)

    def subscriber(self, onMessage, serverKey=None):
        """A SUB; in secure mode a CURVE client of the publisher with public key ``serverKey``."""
        serverKey = self._serverKey(serverKey, "subscriber")
        return self._secured(SubscriberConnection(self._factory, onMessage), serverKey)

    def _serverKey(self, serverKey, what):
        """Fail closed: a secure client socket must know whom it talks to (Z85 bytes)."""
        if self.curve is None:
            return None
        if isinstance(serverKey, str):
            serverKey = serverKey.encode("ascii", "replace")
        if not serverKey:
            raise ConfigError(f"secure mode: a {what} needs the public key of its server")
        if not isValidKey(serverKey):
            raise ConfigError(f"secure mode: {serverKey[:48]!r} is not a server public key"
                              " (40 Z85 characters)")
        return serverKey

    def _secured(self, connection, serverKey=None):
        if self.curve is not None:
            connection.useCurve(self.curve, serverKey, self.refusals)
        return connection

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
        if self.refusals is not None:
            self.refusals.stop()
        for connection in list(self._factory.connections):
            connection.shutdown()
        self._factory.connections = set()
        self._factory.context.term()
        self._factory = None
