"""txZMQ connections with safe defaults, on an injected reactor.

txZMQ's defaults are unsafe for a long-running control system (see
``notes/reliability.md``): unlimited high-water marks, no cap on the messages
handled per reactor callback, replies routed by client-chosen ids, the global
reactor used behind the caller's back.  Every socket made here has:

* a high-water mark of :data:`HIGH_WATER_MARK` messages each way;
* a maximum inbound message size (:data:`MAX_MESSAGE_BYTES`): a larger message
  disconnects its sender;
* a linger of :data:`LINGER_MS` so closing never blocks for long;
* at most :data:`READ_BATCH` messages handled per reactor read callback before
  yielding, so a flood cannot starve timers (heartbeats);
* every scheduled call made on the reactor given to :class:`Transport`;
* on TCP, kernel keepalive and a bound on unacknowledged data
  (:data:`TCP_KEEPALIVE_IDLE_S`, :data:`TCP_MAXRT_MS`) and on connection
  attempts (:data:`CONNECT_TIMEOUT_MS`), so a connection to a cut-off peer
  is dropped within seconds and reconnected within a second or two of a
  heal, instead of waiting for the kernel's retransmission backoff.

No socket sends ZMTP heartbeats.  libzmq 4.3 aborts the process
(``Assertion failed: !_io_error``) when a connection's heartbeat timer fires
after the connection was reset while its input was stopped at the
high-water mark: any peer could kill a dispatcher or a router by flooding,
then resetting, and a client stalled with a full queue died when its
connection was reset (its dispatcher's host rebooting, say;
``tests/test_resets.py``).  The kernel's
keepalive probes are no libzmq timer.  They cannot tell a frozen
(SIGSTOPped) peer, whose kernel still answers; a client's watch of its
dispatcher's heartbeats does.

ROUTER sockets report the peer identity with each message and send replies
to it; the identity is ZeroMQ's, never a value the peer chose.  Publishers
(XPUB) take far less from their peers: see
:mod:`cauldron.transport.publisher`.

In secure mode (:meth:`_Connection.useCurve`, keys from
:mod:`cauldron.transport.curve`) a socket becomes a CURVE server when it
binds and a CURVE client when it connects, its options set just before, as
libzmq applies security options only to later binds and connects.  A server
names the ZAP domain and enforces it, so without an authenticator nothing
passes.
"""

import itertools
import os
import struct

import zmq
from twisted.logger import Logger
from txzmq import ZmqConnection

from cauldron.errors import ConfigError

__all__ = [
    "HIGH_WATER_MARK",
    "MAX_MESSAGE_BYTES",
    "LINGER_MS",
    "READ_BATCH",
    "ZAP_DOMAIN",
    "AddressInUse",
    "Peer",
    "QueueFull",
    "bindAddress",
    "portOf",
]

HIGH_WATER_MARK = 1000
MAX_MESSAGE_BYTES = 1024 * 1024 + 4096
LINGER_MS = 100
READ_BATCH = 256
MAX_FRAMES = 8
SAFETY_POLL_SECONDS = 0.5
HANDSHAKE_MS = 5000
RECONNECT_MS = 100
RECONNECT_MAX_MS = 1000
#: kernel TCP keepalive: after a second idle, a probe every second; a
#: connection whose probes go unanswered is dropped after two of them, or
#: (Linux, as TCP_USER_TIMEOUT is set) once TCP_MAXRT_MS has passed
TCP_KEEPALIVE_IDLE_S = 1
TCP_KEEPALIVE_INTERVAL_S = 1
TCP_KEEPALIVE_PROBES = 2
#: a TCP connection whose sent data stays unacknowledged this long is dropped
#: (TCP_USER_TIMEOUT), so the kernel gives up retransmitting stale requests
TCP_MAXRT_MS = 5000
#: a connection attempt unanswered this long is retried (a pending SYN would
#: otherwise wait for the kernel's backoff, seconds after a partition heals)
CONNECT_TIMEOUT_MS = 1000
#: the ZAP domain of every secure server socket (the authenticator checks it)
ZAP_DOMAIN = b"cauldron"

log = Logger()

# Plain ints: OR-ing pyzmq's flag enums on every frame costs more than the send.
_SEND_LAST = int(zmq.NOBLOCK)
_SEND_MORE = int(zmq.NOBLOCK | zmq.SNDMORE)
_EVENTS = int(zmq.EVENTS)
_RECV = int(zmq.NOBLOCK)
_POLLIN = int(zmq.POLLIN)
# pyzmq's Socket.send is a layer in Python (for draft sockets' routing_id
# and group) over the compiled send, which costs a third as much per frame;
# receiving and asking for events, the compiled methods save a lookup.
_send = zmq.backend.Socket.send
_recv = zmq.backend.Socket.recv
_get = zmq.backend.Socket.get
_HANDSHAKE_FAILED = int(
    zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL
    | zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL
    | zmq.EVENT_HANDSHAKE_FAILED_AUTH
)
_PROTOCOL_ERRORS = {
    int(getattr(zmq, name)): name[len("PROTOCOL_ERROR_"):].lower().replace("_", " ")
    for name in dir(zmq) if name.startswith("PROTOCOL_ERROR_")
}
_monitorIds = itertools.count()


class QueueFull(Exception):
    """The peer's queue is at its high-water mark (or there is no peer yet)."""


class AddressInUse(Exception):
    """Binding failed because the address is taken on this host."""

    def __init__(self, address):
        super().__init__(f"address already in use: {address}")
        self.address = address


def bindAddress(protocol, host, port):
    """A ZeroMQ address to bind; port 0 asks the OS for an ephemeral port."""
    if protocol == "ipc":
        return f"ipc://{host}-{port}" if port else "ipc://*"
    return f"tcp://{host}:{port or '*'}"


def _ipcPath(address):
    """The file of an ``ipc://PATH`` address; None for other transports and ``ipc://*``."""
    if not address.startswith("ipc://"):
        return None
    path = address[len("ipc://"):]
    return None if path in ("", "*") or path.startswith("@") else path


def _makeIpcFolder(folder):
    """Create the folder of ipc files (mode 0700) if it is missing; refuse an unsafe one."""
    if not folder or os.path.isdir(folder):
        return
    try:
        os.makedirs(folder, mode=0o700, exist_ok=True)
    except OSError as e:
        raise ConfigError(f"{folder}: cannot create the folder of ipc files: "
                          f"{e.strerror}") from None


def portOf(address):
    """The TCP port of a ``tcp://host:port`` address (0 for other transports)."""
    if not address.startswith("tcp://"):
        return 0
    return int(address.rsplit(":", 1)[1])


class _Connection(ZmqConnection):
    """A txZMQ connection with bounded memory, bounded read batches and no global reactor."""

    highWaterMark = HIGH_WATER_MARK
    reconnectInterval = RECONNECT_MS
    reconnectIntervalMax = RECONNECT_MAX_MS

    #: frames a message may have; the rest of a longer one is dropped
    maxFrames = MAX_FRAMES

    def __init__(self, factory, onMessage):
        # txZMQ's constructor registers the reader and calls doRead(): our
        # state must exist before it runs (txZMQ #79).
        self._onMessage = onMessage
        self._monitor = None  # the _SocketMonitor reading this socket's events, if any
        self._monitoring = False
        self._reading = False
        self._curve = None
        self._serverKey = None
        self._refusals = None
        self._role = None
        self._ipcFiles = []  # (path, st_dev, st_ino) of each ipc file this socket bound
        self.malformed = 0
        self.closed = False
        super().__init__(factory)
        self.socket.set(zmq.MAXMSGSIZE, MAX_MESSAGE_BYTES)
        self.socket.set(zmq.TCP_KEEPALIVE, 1)
        self.socket.set(zmq.TCP_KEEPALIVE_IDLE, TCP_KEEPALIVE_IDLE_S)
        self.socket.set(zmq.TCP_KEEPALIVE_INTVL, TCP_KEEPALIVE_INTERVAL_S)
        self.socket.set(zmq.TCP_KEEPALIVE_CNT, TCP_KEEPALIVE_PROBES)
        self.socket.set(zmq.TCP_MAXRT, TCP_MAXRT_MS)
        self.socket.set(zmq.CONNECT_TIMEOUT, CONNECT_TIMEOUT_MS)
        self.socket.set(zmq.HANDSHAKE_IVL, HANDSHAKE_MS)
        self._configure(self.socket)

    def _configure(self, socket):
        """Socket-type specific options, set before any bind or connect."""

    def _monitorWith(self, kind, events, monitorClass):
        """Have libzmq report ``events`` of this socket to a ``monitorClass`` it reads."""
        address = f"inproc://cauldron-{kind}-monitor-{next(_monitorIds)}"
        self.socket.monitor(address, events)
        self._monitoring = True
        self._monitor = monitorClass(self.factory, self)
        self._monitor.connect(address)

    def _stopMonitoring(self):
        if self._monitoring and not self.closed:
            self._monitoring = False
            self.socket.disable_monitor()

    def _closeMonitor(self):
        """Stop the reports, then close the monitor's socket (the order libzmq needs)."""
        self._stopMonitoring()
        monitor, self._monitor = self._monitor, None
        if monitor is not None:
            monitor.shutdown()

    def useCurve(self, curve, serverKey=None, refusals=None):
        """Secure this socket with ``curve``'s key pair (before any bind or connect).

        Binding then makes it a CURVE server; connecting makes it a CURVE
        client of the server whose public key is ``serverKey``, and fails
        without one.  ``refusals(kind, reason)`` hears of peers turned away.
        """
        if self._role is not None:
            raise RuntimeError(f"{self!r} is bound or connected already: too late to secure")
        self._curve = curve
        self._serverKey = serverKey
        self._refusals = refusals

    @property
    def secure(self):
        """Whether this socket speaks CURVE (see :meth:`useCurve`)."""
        return self._curve is not None

    def _secure(self, role):
        """Set the CURVE options of ``role`` ("server", "client") before the first bind/connect."""
        if self._curve is None or self._role == role:
            return
        if self._role is not None:
            raise RuntimeError(f"{self!r} is a CURVE {self._role}: it cannot also be a {role}")
        if role == "server":
            _serverOptions(self.socket, self._curve)
        else:
            _clientOptions(self.socket, self._curve, self._serverKey)
        self._role = role

    def bind(self, address):
        """Bind, and return the address actually bound (ephemeral ports resolved).

        An ipc file's folder is made (mode 0700) if missing; an ipc file
        someone listens on is :class:`AddressInUse` (libzmq would silently
        take it over); the file is removed when this socket shuts down.
        """
        self._secure("server")
        path = _ipcPath(address)
        if path is not None:
            _makeIpcFolder(os.path.dirname(path))
            from cauldron.transport.probe import addressFree

            if not addressFree(address):
                raise AddressInUse(address)
        try:
            self.socket.bind(address)
        except zmq.ZMQError as e:
            if e.errno == zmq.EADDRINUSE:
                raise AddressInUse(address) from None
            raise
        bound = self.socket.get(zmq.LAST_ENDPOINT).decode("ascii")
        path = _ipcPath(bound)
        if path is not None:
            try:
                info = os.stat(path)
                self._ipcFiles.append((path, info.st_dev, info.st_ino))
            except OSError:
                pass
        return bound

    def _removeIpcFiles(self):
        """Unlink the ipc files this socket bound, unless another socket took the name since."""
        files, self._ipcFiles = self._ipcFiles, []
        for path, device, inode in files:
            try:
                info = os.stat(path)
                if (info.st_dev, info.st_ino) == (device, inode):
                    os.unlink(path)
            except OSError:
                pass

    def connect(self, address):
        self._secure("client")
        self.socket.connect(address)

    def doRead(self):
        """Handle at most READ_BATCH messages, then yield to the reactor."""
        if self.read_scheduled is not None:
            if self.read_scheduled.active():
                self.read_scheduled.cancel()
            self.read_scheduled = None
        self._reading = True
        try:
            self._readBatch()
        finally:
            self._reading = False
        self._batchEnded()

    @property
    def reading(self):
        """Whether this socket's messages are being handled now (see ``onBatchEnd``)."""
        return self._reading

    def _batchEnded(self):
        """The messages of one read are handled (a ROUTER may say so)."""

    def readWaiting(self):
        """Read what libzmq holds now, if anything (a poll that may find nothing)."""
        if not self.closed and _get(self.socket, _EVENTS) & _POLLIN:
            self.doRead()

    def _readBatch(self):
        # The reactor calls doRead when ZMQ_FD signals news from libzmq, and a
        # receive that finds no message takes that news in itself: no
        # ZMQ_EVENTS is asked first.  ZMQ_FD is edge-triggered: asking
        # ZMQ_EVENTS after each message re-arms it and tells whether more
        # wait (far cheaper than the EAGAIN exception of an empty receive).
        socket = self.socket
        for _ in range(READ_BATCH):
            if self.closed:
                return
            try:
                frames = self._receiveMessage(socket)
            except zmq.Again:
                return  # the news was not a message
            except zmq.ZMQError as e:
                log.error("receive failed on {conn!r}: {error}", conn=self, error=e)
                return
            self._deliver(frames)
            if self.closed:
                return
            try:
                if not _get(socket, _EVENTS) & _POLLIN:
                    return
            except zmq.ZMQError as e:
                log.error("receive failed on {conn!r}: {error}", conn=self, error=e)
                return
        self._scheduleRead()

    def _receiveMessage(self, socket):
        """The frames of the next message; None if it had too many (dropped).

        Frames are received as zmq Frames: asking a Frame whether more
        follow costs far less than asking the socket (ZMQ_RCVMORE).
        """
        frame = _recv(socket, _RECV, False)
        frames = [self._first(frame)]
        while frame.more:
            if len(frames) == self.maxFrames:
                return self._discardRest(socket)
            frame = _recv(socket, _RECV, False)
            frames.append(frame.bytes)
        return frames

    def _first(self, frame):
        """The first frame of a message (a ROUTER keeps its source with it)."""
        return frame.bytes

    def _discardRest(self, socket):
        """Drop the rest of a message with too many frames (ours have at most four)."""
        while _recv(socket, _RECV, False).more:
            pass
        self.malformed += 1
        return None

    def _deliver(self, frames):
        if frames is None:
            return
        try:
            self._onMessage(frames)
        except Exception:
            log.failure("unhandled error handling a message on {conn!r}", conn=self)

    def _scheduleRead(self):
        if self.read_scheduled is None and not self.closed:
            self.read_scheduled = self.factory.reactor.callLater(0, self.doRead)

    def send(self, frames):
        """Send without blocking; :class:`QueueFull` when the peer's queue is full."""
        self._sendFrames(frames)
        # ZMQ_FD is edge-triggered and a send may consume the edge: look once
        # (unless a read loop is running: it looks before it returns).
        if not self._reading and _get(self.socket, _EVENTS) & _POLLIN:
            self._scheduleRead()

    def _sendFrames(self, frames):
        socket = self.socket
        try:
            for frame in frames[:-1]:
                _send(socket, frame, _SEND_MORE)
            _send(socket, frames[-1], _SEND_LAST)
        except zmq.Again:
            raise QueueFull(repr(self)) from None

    def shutdown(self):
        if self.closed:
            return
        self.closed = True
        super().shutdown()
        self._removeIpcFiles()

    def connectionLost(self, reason):
        if not self.closed and self.factory is not None:
            self.factory.reactor.removeReader(self)

    def logPrefix(self):
        return type(self).__name__

    def __repr__(self):
        return f"<{type(self).__name__} {self.endpoints or ''}>"


def _serverOptions(socket, curve):
    """A CURVE server with this process's key pair, admitting only whom ZAP admits."""
    socket.set(zmq.CURVE_SERVER, 1)
    socket.set(zmq.CURVE_SECRETKEY, curve.secretKey)
    socket.set(zmq.ZAP_DOMAIN, ZAP_DOMAIN)
    # Without it libzmq skips ZAP when no handler is bound: any key passes.
    socket.set(zmq.ZAP_ENFORCE_DOMAIN, 1)


def _clientOptions(socket, curve, serverKey):
    """A CURVE client with this process's key pair, talking only to ``serverKey``."""
    if serverKey is None:
        raise ConfigError("secure mode: no public key of the server to connect to")
    socket.set(zmq.CURVE_SERVERKEY, serverKey)
    socket.set(zmq.CURVE_PUBLICKEY, curve.publicKey)
    socket.set(zmq.CURVE_SECRETKEY, curve.secretKey)


class _SocketMonitor(_Connection):
    """The PAIR end of a socket's monitor: the events libzmq reports, read by the reactor.

    libzmq's I/O thread sends the events blocking, holding a lock its socket
    needs to stop monitoring or to close: the queue is unbounded, and
    monitoring stops before this end closes, whichever is closed first.
    """

    socketType = zmq.PAIR
    highWaterMark = 0

    def __init__(self, factory, owner):
        self._owner = owner
        super().__init__(factory, self._event)

    def _event(self, frames):
        """One ``[event, endpoint]`` report; anything else is ignored."""
        if len(frames) == 2 and len(frames[0]) == 6:
            event, value = struct.unpack("=Hi", frames[0])
            self._report(event, value, frames[1])

    def _report(self, event, value, endpoint):
        """Subclasses hand the event to their owner."""

    def shutdown(self):
        if not self.closed:
            self._owner._stopMonitoring()
        super().shutdown()


class _HandshakeMonitor(_SocketMonitor):
    """A secure server socket's monitor: counts failed handshakes."""

    def _report(self, event, value, endpoint):
        if event & _HANDSHAKE_FAILED:
            self._owner._handshakeFailed(event, value, endpoint)


def _failure(event, value):
    """Why a handshake failed, in words."""
    if event & zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL:
        return "protocol error: " + _PROTOCOL_ERRORS.get(value, f"{value:#x}")
    if event & zmq.EVENT_HANDSHAKE_FAILED_AUTH:
        return f"refused by the authenticator ({value})"
    return "failed: " + (zmq.strerror(value) if value > 0 else "no detail")


class Peer(bytes):
    """The routing identity of a ROUTER's peer, which also tells who the peer is.

    It is the identity bytes (``sendTo`` takes it), and reads the facts
    libzmq attached to the peer's connection only when asked:

    * ``address``: the peer's numeric IP address ("" for ipc and inproc);
    * ``userId``: the name the authenticator gave the peer's key (secure
      mode), else "".
    """

    def __new__(cls, frame):
        peer = super().__new__(cls, frame.bytes)
        peer._frame = frame
        # Asked at most once each (functools.cached_property takes a lock
        # on every first use, which is every use: a Peer lives one message).
        peer._address = peer._userId = None
        return peer

    @property
    def address(self):
        if self._address is None:
            address = self._property("Peer-Address")
            # ipc: libzmq gives the peer's credentials, "localhost:UID:GID:PID"
            self._address = "" if address.startswith("localhost:") else address
        return self._address

    @property
    def userId(self):
        if self._userId is None:
            self._userId = self._property("User-Id")
        return self._userId

    def _property(self, name):
        try:
            return self._frame.get(name) or ""
        except (zmq.ZMQError, UnicodeDecodeError):
            return ""


class RouterConnection(_Connection):
    """A ROUTER: ``onMessage(peer, frames)``; ``sendTo(peer, frames)``.

    ``onBatchEnd()``, if given, is called each time the reactor's read
    callback has handled the messages it read (while it runs, ``reading``
    is True): work a batch of requests left can be done once, at once,
    instead of in a call scheduled for later.

    ``peer`` is a :class:`Peer`.  A peer cannot take over another's replies
    by claiming its routing identity (ROUTER_HANDOVER is off: a second
    connection with an identity in use is ignored).
    """

    socketType = zmq.ROUTER

    def __init__(self, factory, onMessage, onBatchEnd=None):
        #: handshakes of peers that failed (secure mode: wrong mechanism, key...)
        self.handshakeFailures = 0
        self._onBatchEnd = onBatchEnd
        super().__init__(factory, onMessage)

    def _batchEnded(self):
        if self._onBatchEnd is not None:
            try:
                self._onBatchEnd()
            except Exception:
                log.failure("unhandled error ending a batch on {conn!r}", conn=self)

    def _configure(self, socket):
        socket.set(zmq.ROUTER_MANDATORY, 1)
        socket.set(zmq.ROUTER_HANDOVER, 0)

    def _secure(self, role):
        super()._secure(role)
        if self._role == "server" and self._monitor is None:
            self._startMonitoring()

    def _startMonitoring(self):
        """Hear of failed handshakes: a peer without an allowed key never says more."""
        self._monitorWith("handshake", _HANDSHAKE_FAILED, _HandshakeMonitor)

    def _handshakeFailed(self, event, value, endpoint):
        self.handshakeFailures += 1
        if self._refusals is not None and not event & zmq.EVENT_HANDSHAKE_FAILED_AUTH:
            # Refusals by the authenticator are counted there, with the key.
            where = endpoint.decode("utf-8", "replace")
            self._refusals("failed handshakes", f"{_failure(event, value)} on {where}")

    def shutdown(self):
        if self.closed:
            return
        self._closeMonitor()
        super().shutdown()

    def _first(self, frame):
        return Peer(frame)

    def _deliver(self, frames):
        if frames is None:
            return
        if len(frames) < 2:
            self.malformed += 1
            return
        try:
            self._onMessage(frames[0], frames[1:])
        except Exception:
            log.failure("unhandled error handling a message on {conn!r}", conn=self)

    def sendTo(self, identity, frames):
        """Reply to a peer; returns False when it is gone or its queue is full."""
        try:
            self.send([identity, *frames])
        except QueueFull:
            return False
        except zmq.ZMQError as e:
            if e.errno == zmq.EHOSTUNREACH:
                return False
            raise
        return True


class DealerConnection(_Connection):
    """A DEALER: requests out, replies in, asynchronous and unordered."""

    socketType = zmq.DEALER


class SubscriberConnection(_Connection):
    """A SUB with explicit ``subscribe``/``unsubscribe`` by topic prefix.

    Its send queue (subscriptions only: a few per monitored keyword) has no
    high-water mark: libzmq sends every subscription again after a
    reconnection, and drops those beyond the mark for good.
    """

    socketType = zmq.SUB

    def _configure(self, socket):
        socket.set(zmq.SNDHWM, 0)

    def subscribe(self, topic):
        self.socket.set(zmq.SUBSCRIBE, topic)

    def unsubscribe(self, topic):
        self.socket.set(zmq.UNSUBSCRIBE, topic)
