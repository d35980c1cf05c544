"""Broadcast feeds: one SUB socket per dispatcher, shared by a reactor's clients.

Every plain client on a reactor that listens to the same broadcast address
shares one :class:`BroadcastFeed`: one connection, one copy of each
broadcast on the wire, decoded once and handed to each listener.  A
thousand clients monitoring one keyword then hold one subscriber
connection, not a thousand (``bench/keywords.py --only clients-1000``:
about 55 KiB per idle client instead of 124).  Secure clients have feeds
of their own: a client's key decides what the dispatcher lets it hear, so
one client must never hear through another's connection.  So do clients
made with ``shareConnections=False``.

A listener (a dispatcher as one client sees it) hears every heartbeat and
the updates of the topics it subscribed to.  Subscriptions are counted: the
socket subscribes to a topic for its first listener and unsubscribes after
its last.  A listener subscribing to a topic the feed already hears gets no
answer from the dispatcher (ZeroMQ subscribes once per socket);
:meth:`BroadcastFeed.subscribe` says so, and the listener asks for the
current value itself.
"""

from twisted.logger import Logger

from cauldron.errors import ProtocolError
from cauldron.protocol import codec
from cauldron.transport import Transport

__all__ = ["BroadcastFeed", "joinFeed"]

log = Logger()

#: reactor -> _FeedPool: the shared feeds of each reactor
_pools = {}


def joinFeed(listener, transport, address, serverKey=None, shared=True):
    """The feed of ``address`` for ``listener``, joined.

    It is the reactor's shared feed when ``transport`` is plain and
    ``shared``; otherwise a feed of the listener's own, made by
    ``transport`` (a secure one has the server's key, ``serverKey``).
    """
    if shared and not transport.secure:
        pool = _pools.get(transport.reactor)
        if pool is None:
            pool = _pools[transport.reactor] = _FeedPool(transport.reactor)
        feed = pool.feed(address)
    else:
        feed = BroadcastFeed(transport, address, serverKey)
    feed.join(listener)
    return feed


class BroadcastFeed:
    """One SUB socket to one publisher, heard by any number of listeners.

    A listener has ``broadcastReceived(message)`` for each heartbeat and each
    update of its topics, and ``malformed(reason)`` for a broadcast on them
    that does not decode.  The feed closes its socket when its last
    listener leaves.
    """

    def __init__(self, transport, address, serverKey=None, onEmpty=None):
        self.address = address
        self._transport = transport
        self._onEmpty = onEmpty
        self._listeners = {}  # insertion-ordered set: every listener hears heartbeats
        self._routes = {}  # topic -> the listeners subscribed to it (ordered set)
        self._live = set()  # topics a broadcast arrived on since the socket subscribed
        self._socket = transport.subscriber(self._received, serverKey)
        self._socket.connect(address)
        self._socket.subscribe(codec.HEARTBEAT_TOPIC)

    @property
    def closed(self):
        """True once the last listener left (the socket is closed)."""
        return self._socket.closed

    @property
    def listeners(self):
        """How many listeners the feed has."""
        return len(self._listeners)

    def join(self, listener):
        self._listeners[listener] = None

    def leave(self, listener):
        """Forget ``listener`` and its subscriptions; the last one out closes the socket."""
        self._listeners.pop(listener, None)
        for topic in [t for t, listeners in self._routes.items() if listener in listeners]:
            self.unsubscribe(topic, listener)
        if not self._listeners and not self.closed:
            self._transport.close(self._socket)
            if self._onEmpty is not None:
                self._onEmpty(self)

    def subscribe(self, topic, listener):
        """Route ``topic`` to ``listener``; True if the feed hears it already.

        Then the dispatcher sends no answer to this subscription: the socket
        was subscribed before.
        """
        listeners = self._routes.get(topic)
        if listeners is None:
            listeners = self._routes[topic] = {}
            self._socket.subscribe(topic)
        listeners[listener] = None
        return topic in self._live

    def unsubscribe(self, topic, listener):
        listeners = self._routes.get(topic)
        if listeners is None or listener not in listeners:
            return
        del listeners[listener]
        if not listeners:
            del self._routes[topic]
            self._live.discard(topic)
            self._socket.unsubscribe(topic)

    def read(self):
        """Read what the socket holds now (before calling a dispatcher silent)."""
        self._socket.readWaiting()

    def _received(self, frames):
        topic = frames[0] if frames else None
        if topic == codec.HEARTBEAT_TOPIC:
            listeners = self._listeners
        else:
            listeners = self._routes.get(topic)
            if not listeners:
                return  # a topic nobody here listens to any more
        try:
            message = codec.decodeBroadcast(frames)
        except ProtocolError as e:
            for listener in list(listeners):
                listener.malformed(str(e))
            return
        if listeners is not self._listeners:
            self._live.add(topic)
        for listener in list(listeners):
            if listener not in listeners:
                continue  # it left while an earlier listener took this broadcast
            try:
                listener.broadcastReceived(message)
            except Exception:
                log.failure("{listener} failed to take a broadcast", listener=listener)


class _FeedPool:
    """The shared feeds of one reactor, on a plain Transport of their own.

    They outlive any one client: the pool's Transport (on the reactor's
    shared ZeroMQ context) shuts down with the last feed.
    """

    def __init__(self, reactor):
        self.reactor = reactor
        self._transport = Transport(reactor, shared=True)
        self._feeds = {}  # address -> BroadcastFeed

    def feed(self, address):
        feed = self._feeds.get(address)
        if feed is None:
            feed = self._feeds[address] = BroadcastFeed(
                self._transport, address, onEmpty=self._emptied)
        return feed

    def _emptied(self, feed):
        if self._feeds.get(feed.address) is feed:
            del self._feeds[feed.address]
        if not self._feeds:
            del _pools[self.reactor]
            self._transport.shutdown()
