"""The ZeroMQ context of a reactor, and the sockets a service makes in it.

:class:`Transport` is what the services above use: it makes the sockets of
:mod:`cauldron.transport.sockets` and :mod:`cauldron.transport.publisher`,
polls them from the reactor given, and closes them all at once.  Plain
Transports made with ``shared=True`` (every client's) share one ZeroMQ
context per reactor (one I/O thread): a process with a thousand clients
runs a handful of threads, not two thousand.  Others have a context of
their own: terminating it is what guarantees a server's ports are free when
it stops (a shared context closes sockets in the background), and a secure
context has one ZAP handler, admitting one Transport's keys.

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

#: sockets the shared context may hold (each still needs file descriptors:
#: raise ``ulimit -n`` for thousands of clients)
SHARED_MAX_SOCKETS = 65536
#: reactor -> [ZmqFactory, Transports using it]: the shared plain contexts
_sharedFactories = {}

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

    Its sockets are polled by the reactor given, with a slow safety poll
    against lost edges.  With ``shared`` (for clients, which bind nothing),
    a plain Transport uses the reactor's shared ZeroMQ context; otherwise
    one of its own, terminated at :meth:`shutdown`, so a server's ports are
    free once it returns.

    With ``curve`` (a :class:`~cauldron.transport.curve.Curve`), secure
    mode: the Transport answers ZAP for its context (:attr:`authenticator`),
    counts whom it turned away (:attr:`refusals`), and makes only CURVE
    sockets.  Without, plain sockets exactly as ever.
    """

    def __init__(self, reactor, curve=None, shared=False):
        self.reactor = reactor
        self.curve = curve
        self._shared = shared and curve is None
        #: the ZAP handler admitting ``curve.allowed`` (None in plain mode)
        self.authenticator = None
        #: whom secure sockets turned away, by kind (None in plain mode)
        self.refusals = None
        self._connections = set()  # the sockets made here (the context may be shared)
        self._factory = _sharedFactory(reactor) if self._shared else _Factory(reactor)
        if curve is not None:
            # Bound before any server socket: none may handshake without it.
            self.refusals = Refusals(reactor)
            self.authenticator = ZapHandler(self._factory, curve.allowed, self.refusals)

    @property
    def secure(self):
        """Whether this Transport makes CURVE sockets only."""
        return self.curve is not None

    def router(self, onMessage, onBatchEnd=None):
        """A ROUTER; in secure mode a CURVE server once bound (see RouterConnection)."""
        return self._secured(RouterConnection(self._factory, onMessage, onBatchEnd))

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
        self._connections.add(connection)
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
        self._connections.discard(connection)

    def shutdown(self):
        """Close every socket made here, and the context unless others share it; safe twice."""
        if self._factory is None:
            return
        if self.refusals is not None:
            self.refusals.stop()
        for connection in list(self._connections):
            connection.shutdown()
        self._connections.clear()
        factory, self._factory = self._factory, None
        if self._shared:
            _releaseShared(self.reactor)
        else:
            factory.terminate()


class _Factory(ZmqFactory):
    """A ZeroMQ context on a reactor, with a slow safety poll of all its sockets.

    The poll reads any socket whose edge-triggered readiness was missed
    (see :data:`~cauldron.transport.sockets.SAFETY_POLL_SECONDS`).
    """

    lingerPeriod = LINGER_MS

    def __init__(self, reactor):
        self.reactor = reactor
        super().__init__()
        self._poll = reactor.callLater(SAFETY_POLL_SECONDS, self._safetyPoll)

    def _safetyPoll(self):
        self._poll = self.reactor.callLater(SAFETY_POLL_SECONDS, self._safetyPoll)
        for connection in list(self.connections):
            if connection.socket is None or getattr(connection, "closed", False):
                continue  # shut down by a socket read before it in this same poll
            try:
                connection.readWaiting()
            except Exception:
                log.failure("safety poll of {conn!r} failed", conn=connection)

    def terminate(self):
        """Close every socket left (the ZAP handler, say) and the context."""
        if self._poll.active():
            self._poll.cancel()
        for connection in list(self.connections):
            connection.shutdown()
        self.connections = set()
        self.context.term()


def _sharedFactory(reactor):
    """The plain context of ``reactor``, made by its first Transport."""
    shared = _sharedFactories.get(reactor)
    if shared is None:
        factory = _Factory(reactor)
        # libzmq's default (1,023 sockets) would cap a process at ~500 clients.
        factory.context.set(zmq.MAX_SOCKETS, SHARED_MAX_SOCKETS)
        shared = _sharedFactories[reactor] = [factory, 0]
    shared[1] += 1
    return shared[0]


def _releaseShared(reactor):
    """One Transport fewer on the shared context; the last one terminates it."""
    shared = _sharedFactories[reactor]
    shared[1] -= 1
    if shared[1] == 0:
        del _sharedFactories[reactor]
        shared[0].terminate()
