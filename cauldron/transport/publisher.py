"""The broadcast socket: an XPUB that applies only the subscriptions it serves.

A dispatcher publishes updates and heartbeats here, and answers each new
subscription with the keyword's current value (:class:`PublisherConnection`);
it asks :meth:`~PublisherConnection.heard` first, so a change nobody
subscribes to is never made into a message.
A subscriber can do more than subscribe, so everything it may send is
bounded here (issue 8): libzmq keeps every subscription a peer sends,
applied or not, in a trie until the connection ends, and walks that whole
trie whenever any connection ends.  See the class docstring for how.
"""

import os
import socket as stdsocket

import zmq
from twisted.logger import Logger

from cauldron.transport.sockets import READ_BATCH, _Connection, _SocketMonitor, portOf

__all__ = ["PublisherConnection", "MAX_SUBSCRIPTION_BYTES", "MAX_REFUSED_TOPICS"]

#: The largest subscription message a publisher takes (1 byte + topic).
#: Topics are b"K" + a keyword name of at most 128 UTF-8 bytes
#: (cauldron.keywords.MAX_NAME_BYTES) + b"\0", or b"H\0".  libzmq drops a
#: connection sending a larger message in its I/O thread, storing none of it.
MAX_SUBSCRIPTION_BYTES = 256
#: Subscription messages libzmq takes in per publisher connection each time it
#: looks (and it takes them out of the connection's queue into a queue of its
#: own, which has no bound): one keeps a flood in step with what we read.
SUBSCRIPTION_HIGH_WATER_MARK = 1
#: Bytes of a publisher connection's kernel receive buffer (Linux makes it at
#: least 2304).  What libzmq has read of a connection when we cut it still
#: reaches the subscription trie: this bounds that to ~2 KiB per connection.
#: Subscribers send only subscriptions; thousands still take but a few round
#: trips, and publishing is not slowed.
SUBSCRIPTION_RECEIVE_BUFFER = 1024
#: Refused subscriptions (to topics the publisher does not serve) one
#: connection may hold before it is cut: a client may hold a few to keywords
#: a restarted dispatcher no longer serves.
MAX_REFUSED_TOPICS = 64
MAX_REFUSED_BYTES = 8 * 1024
#: the same over all the connections of one publisher
MAX_REFUSED_TOPICS_TOTAL = 1024
MAX_REFUSED_BYTES_TOTAL = 64 * 1024
#: seconds between two log lines about a publisher's misbehaving peers
PROBLEM_LOG_SECONDS = 1.0

log = Logger()

_EVENTS = int(zmq.EVENTS)
_RCVMORE = int(zmq.RCVMORE)
_RECV = int(zmq.NOBLOCK)
_POLLIN = int(zmq.POLLIN)
_OPENED = int(zmq.EVENT_ACCEPTED | zmq.EVENT_CONNECTED)
_CLOSED = int(zmq.EVENT_DISCONNECTED | zmq.EVENT_CLOSED)
_MONITOR_EVENTS = _OPENED | _CLOSED
class _ProblemLog:
    """Counts what peers did wrong, by kind, and logs it at most once per PROBLEM_LOG_SECONDS.

    A flood of bad input costs a counter increment per message, never a log
    line each; what a burst leaves unreported is reported one interval later.
    """

    def __init__(self, what, reactor):
        self.what = what
        self._reactor = reactor
        self._counts = {}
        self._latest = None
        self._lastLog = None
        self._flush = None

    def __call__(self, kind, reason):
        self._counts[kind] = self._counts.get(kind, 0) + 1
        self._latest = reason
        now = self._reactor.seconds()
        if self._lastLog is None or now - self._lastLog >= PROBLEM_LOG_SECONDS:
            self._report()
        elif self._flush is None:
            self._flush = self._reactor.callLater(
                self._lastLog + PROBLEM_LOG_SECONDS - now, self._report)

    def _report(self):
        if self._flush is not None and self._flush.active():
            self._flush.cancel()
        self._flush = None
        self._lastLog = self._reactor.seconds()
        counts, self._counts = self._counts, {}
        log.warn(
            "{what}: {summary} (latest: {reason})",
            what=self.what, reason=self._latest, problems=counts,
            summary=", ".join(f"{n} {kind}" for kind, n in sorted(counts.items())),
        )

    def stop(self):
        """Cancel the pending report (the socket is closing)."""
        if self._flush is not None and self._flush.active():
            self._flush.cancel()
        self._flush = None


class _Peer:
    """A connection to a publisher, known by its file descriptor while libzmq says it is open."""

    __slots__ = ("fd", "refused", "refusedBytes", "cut", "topics")

    def __init__(self, fd):
        self.fd = fd
        self.refused = set()  # topics refused that libzmq keeps until the connection ends
        self.refusedBytes = 0
        self.cut = False
        self.topics = set()  # topics its subscriptions to were applied


class _MonitorConnection(_SocketMonitor):
    """A publisher's monitor: its connections opening and closing (one event each)."""

    def _report(self, event, value, endpoint):
        self._owner._monitorEvent(event, value)

    def drain(self):
        """Handle the events queued now (a bounded number, should they keep coming)."""
        for _ in range(64):
            if self.closed or not self.socket.getsockopt(_EVENTS) & _POLLIN:
                return
            self._readBatch()


class PublisherConnection(_Connection):
    """A publisher that hears subscriptions (an XPUB socket in manual mode).

    A subscription is applied only if ``isTopic(topic, subscriber)`` accepts
    it (any is, when isTopic is None; ``subscriber`` is the name of the
    subscriber's key in secure mode, else ""); then ``onSubscribe(topic)`` is called so the
    publisher can send the topic's current value at once: the subscriber then
    knows its subscription is live and has the latest value (ZeroMQ's
    slow-joiner problem).  Sending drops, never blocks, when a subscriber is
    at its high-water mark.

    libzmq keeps every subscription a peer sends, applied or not, in a trie
    until the connection ends, and walks that whole trie whenever any
    connection ends.  So what a peer may send is bounded: libzmq drops a
    connection sending a subscription over MAX_SUBSCRIPTION_BYTES, and we cut
    one holding too many refused subscriptions (MAX_REFUSED_*) or sending
    anything but subscriptions.  A connection is known by the file
    descriptor libzmq reports with each message; a socket monitor tells when
    connections open and close.  Peers without one (inproc; ipc is never
    cut) are refused but cannot be cut, and with isTopic None nothing is
    refused: both are for trusted peers.
    """

    socketType = zmq.XPUB

    def __init__(self, factory, onSubscribe=None, isTopic=None):
        self._onSubscribe = onSubscribe or _ignore
        self._isTopic = isTopic or _anyTopic
        self._peers = {}  # fd -> _Peer, for the connections libzmq reported open
        self._refusedTopics = 0
        self._refusedBytes = 0
        self._subscribers = {}  # topic -> connections its subscriptions were applied for
        self._untracked = 0  # subscriptions applied for peers known by no descriptor
        self._boundPorts = set()
        self._connectedPorts = set()
        self._inMessage = False
        self._tainted = False
        #: subscriptions refused, and connections cut, so far
        self.refused = 0
        self.cuts = 0
        self._problems = _ProblemLog("broadcast socket", factory.reactor)
        super().__init__(factory, None)
        self._monitorWith("publisher", _MONITOR_EVENTS, _MonitorConnection)

    def _configure(self, socket):
        socket.set(zmq.XPUB_MANUAL, 1)
        socket.set(zmq.MAXMSGSIZE, MAX_SUBSCRIPTION_BYTES)
        socket.set(zmq.RCVHWM, SUBSCRIPTION_HIGH_WATER_MARK)
        socket.set(zmq.RCVBUF, SUBSCRIPTION_RECEIVE_BUFFER)

    def bind(self, address):
        bound = super().bind(address)
        self._boundPorts.add(portOf(bound))
        return bound

    def connect(self, address):
        super().connect(address)
        self._connectedPorts.add(portOf(address))

    def send(self, frames):
        """Publish; never blocks and never raises for slow subscribers."""
        self._sendFrames(frames)

    def heard(self, topic):
        """Whether a connection is subscribed to ``topic``: if not, a message on it reaches nobody.

        Counted from the subscriptions applied and the connections that
        ended; a subscription from a peer known by no file descriptor
        (inproc) makes every topic count as heard from then on.
        """
        return topic in self._subscribers or self._untracked > 0

    # -- reading subscriptions

    def _readBatch(self):
        """Like the base class, but frame by frame, each with its source.

        Every frame counts against READ_BATCH, so a message of many frames
        is dropped over several reactor callbacks.  libzmq takes in more
        subscriptions each time it looks at its queues (every ZMQ_EVENTS,
        and every hundred receives): looking once per batch keeps what a
        flood of connections gets in ahead of us to what we read.
        """
        socket = self.socket
        try:
            if not socket.getsockopt(_EVENTS) & _POLLIN:
                self._caughtUp()
                return
            for _ in range(READ_BATCH):
                if self.closed:
                    return
                frame = socket.recv(_RECV, copy=False)
                self._handle(frame, socket.getsockopt(_RCVMORE))
        except zmq.Again:
            self._caughtUp()
            return
        except zmq.ZMQError as e:
            log.error("receive failed on {conn!r}: {error}", conn=self, error=e)
            return
        self._scheduleRead()

    def _caughtUp(self):
        """libzmq's queues are empty: it pairs subscriptions with connections right again."""
        self._tainted = False

    def _handle(self, frame, more):
        try:
            if self._inMessage or more:
                if not self._inMessage:
                    self._malformed(frame, "a message of several frames")
                self._inMessage = more
            else:
                self._received(frame)
        except Exception:
            log.failure("unhandled error handling a subscription on {conn!r}", conn=self)

    def _received(self, frame):
        data = frame.bytes
        kind, topic = data[:1], data[1:]
        if kind == b"\x01":
            self._subscribe(frame, topic)
        elif kind == b"\x00":
            self._unsubscribe(frame, topic)
        else:
            self._malformed(frame, "a message that is no subscription")

    def _peerOf(self, frame):
        """The open connection ``frame`` came from; None if unknown.

        None for libzmq's own unsubscriptions of a connection that ended,
        for peers without a file descriptor (inproc), and for messages of a
        connection libzmq already reported closed.
        """
        fd = _sourceOf(frame)
        if fd < 0:
            return None
        peer = self._peers.get(fd)
        if peer is None or peer.cut:
            # libzmq reports a connection before its first message: a new
            # connection may have this descriptor now.
            self._drainMonitor()
            peer = self._peers.get(fd)
        return peer

    def _subscribe(self, frame, topic):
        if not self._accepts(topic, frame):
            self._refuse(self._peerOf(frame), topic)
        elif self._tainted:
            self._resubscribe(self._peerOf(frame), topic)
        else:
            # In manual mode this applies to the connection of the message
            # received last: it must happen before receiving another.
            self.socket.set(zmq.SUBSCRIBE, topic)
            self._countSubscription(frame, topic)
            self._onSubscribe(topic)

    def _unsubscribe(self, frame, topic):
        # Refused topics stay counted against a connection until it ends:
        # subscribing and unsubscribing again and again gets it cut.
        if not self._accepts(topic, frame):
            return
        if not self._tainted:
            self.socket.set(zmq.UNSUBSCRIBE, topic)
            self._uncountSubscription(self._peerOf(frame), topic)
            return
        peer = self._peerOf(frame)
        if peer is not None:  # None: libzmq's own, for a connection that ended
            self._resubscribe(peer, topic)

    # -- who hears what (see heard)

    def _countSubscription(self, frame, topic):
        peer = self._peerOf(frame)
        if peer is not None:
            if topic not in peer.topics:
                peer.topics.add(topic)
                self._subscribers[topic] = self._subscribers.get(topic, 0) + 1
        elif _sourceOf(frame) < 0:  # inproc: no descriptor to know the peer by
            self._untracked += 1
        # else its connection ended already, and the subscription with it

    def _uncountSubscription(self, peer, topic):
        """An unsubscription applied; one a peer never subscribed counts for nothing.

        libzmq's own, for a connection that ended (peer None), are counted
        when its end is reported (see _forget).
        """
        if peer is not None and topic in peer.topics:
            peer.topics.discard(topic)
            self._uncount(topic)

    def _uncount(self, topic):
        left = self._subscribers[topic] - 1
        if left:
            self._subscribers[topic] = left
        else:
            del self._subscribers[topic]

    def _resubscribe(self, peer, topic):
        """Make a peer send its subscriptions again: we cannot apply this one.

        libzmq pairs each subscription it queues for us with its connection
        through a second queue, to which other messages add nothing: once we
        have read one of those, the queues are out of step until both are
        empty, and applying a subscription could subscribe another connection.
        A subscriber cut loose reconnects and subscribes again.
        """
        if peer is None:
            self.refused += 1
            self._problems("refused subscriptions", f"{topic[:40]!r} among malformed messages")
        else:
            self._cut(peer, f"(un)subscribed to {topic[:40]!r} among malformed messages")

    def _accepts(self, topic, frame):
        if len(topic) >= MAX_SUBSCRIPTION_BYTES:  # inproc peers are not held to MAXMSGSIZE
            return False
        try:
            return bool(self._isTopic(topic, _userId(frame)))
        except Exception as e:
            self._problems("failed topic checks", f"{topic[:40]!r}: {e!r}")
            return False

    def _refuse(self, peer, topic):
        self.refused += 1
        self._problems("refused subscriptions", f"unknown topic {topic[:40]!r}")
        if peer is None or peer.cut or topic in peer.refused:
            return
        peer.refused.add(topic)
        self._hold(peer, 1, len(topic))
        if len(peer.refused) > MAX_REFUSED_TOPICS or peer.refusedBytes > MAX_REFUSED_BYTES:
            self._cut(peer, f"holds over {MAX_REFUSED_TOPICS} refused subscriptions"
                            f" or {MAX_REFUSED_BYTES} bytes of them")
        while (self._refusedTopics > MAX_REFUSED_TOPICS_TOTAL
               or self._refusedBytes > MAX_REFUSED_BYTES_TOTAL):
            greediest = max(self._peers.values(), key=lambda p: p.refusedBytes, default=None)
            if greediest is None or not greediest.refused:
                break
            self._cut(greediest, "holds the most refused subscriptions, and all hold too many")

    def _hold(self, peer, topics, size):
        peer.refusedBytes += size
        self._refusedTopics += topics
        self._refusedBytes += size

    def _malformed(self, frame, what):
        # A message that is no subscription puts libzmq's queues out of step.
        self._tainted = True
        self.malformed += 1
        self._problems("malformed messages", what)
        peer = self._peerOf(frame)
        if peer is not None:
            self._cut(peer, f"sent {what}")

    # -- connections

    def _cut(self, peer, reason):
        """Close a peer's connection: libzmq drops all it holds for it."""
        if peer.cut:
            return
        peer.cut = True
        self._release(peer)
        self.cuts += 1
        self._problems("connections cut", reason)
        self._hangUp(peer)

    def _release(self, peer):
        self._hold(peer, -len(peer.refused), -peer.refusedBytes)
        peer.refused = set()

    def _hangUp(self, peer):
        """Shut down the TCP connection under libzmq, which then ends it as a lost one.

        Only if it is still the connection libzmq reported open with that
        descriptor: the number may belong to another socket by now.
        """
        try:
            fd = os.dup(peer.fd)
        except OSError:
            return
        try:
            connection = stdsocket.socket(fileno=fd)
        except OSError:
            os.close(fd)
            return
        with connection:
            # libzmq reports a connection closed before it closes its
            # descriptor: not reported closed now, our duplicate is that
            # connection's socket even if the number is reused later.
            self._drainMonitor()
            if self._peers.get(peer.fd) is peer and self._isOurs(connection):
                try:
                    connection.shutdown(stdsocket.SHUT_RDWR)
                except OSError:
                    pass

    def _isOurs(self, connection):
        """Whether a TCP connection could be this socket's (by its ports)."""
        if connection.family not in (stdsocket.AF_INET, stdsocket.AF_INET6):
            return False
        try:
            local, remote = connection.getsockname()[1], connection.getpeername()[1]
        except OSError:
            return False
        return local in self._boundPorts or remote in self._connectedPorts

    def _drainMonitor(self):
        if self._monitor is not None:
            self._monitor.drain()

    def _monitorEvent(self, event, fd):
        """A connection opened or closed (libzmq reports its file descriptor)."""
        if event & _OPENED:
            self._forget(fd)  # a stale entry: the close was not reported
            self._peers[fd] = _Peer(fd)
        elif event & _CLOSED:
            self._forget(fd)

    def _forget(self, fd):
        peer = self._peers.pop(fd, None)
        if peer is not None:
            self._release(peer)
            for topic in peer.topics:  # libzmq dropped its subscriptions with it
                self._uncount(topic)

    def shutdown(self):
        if self.closed:
            return
        self._closeMonitor()
        self._peers.clear()
        self._problems.stop()
        super().shutdown()


def _ignore(topic):
    return None


def _sourceOf(frame):
    """The file descriptor of the connection a message came from; -1 if none (inproc)."""
    try:
        return frame.get(zmq.SRCFD)
    except zmq.ZMQError:
        return -1


def _userId(frame):
    """The name the authenticator gave the sender's key; "" in plain mode."""
    try:
        return frame.get("User-Id") or ""
    except (zmq.ZMQError, UnicodeDecodeError):
        return ""


def _anyTopic(topic, subscriber):
    return True
