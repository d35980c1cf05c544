"""Peers that flood a socket, then reset, while its reactor is busy.

libzmq 4.3 stops reading a connection whose queue is at the high-water
mark.  If that connection is then reset, libzmq marks it broken but keeps
it until the queue drains; a ZMTP heartbeat timer firing meanwhile aborts
the whole process (``Assertion failed: !_io_error``).  Any peer could so
kill a dispatcher or a router: flood, reset, and wait for a busy moment
(our own cutting of a flooding subscriber did the same).  A client stalled
with a full queue died when its dispatcher's connection was reset.  So no
socket sends ZMTP heartbeats (:mod:`cauldron.transport.sockets`).

Each case runs ``stalledserver.py`` in its own process, since the failure
is an abort.
"""

import socket
import struct
import subprocess
import sys

from processes import DEADLINE, REPO, environment
from test_floods import receiveExactly, zmtpFrame, zmtpPeer

PEERS = 10
#: most bytes a peer sends before its sends must block (the server stopped reading)
MAX_FLOOD_BYTES = 64 * 1024 * 1024


def flood(peer, frames):
    """Send ``frames`` again and again until the server stops reading this connection."""
    peer.setblocking(False)
    chunk = b"".join(frames)
    sent = 0
    while sent < MAX_FLOOD_BYTES:
        try:
            sent += peer.send(chunk)
        except BlockingIOError:
            return  # both kernel buffers are full: libzmq has stopped reading
    raise AssertionError(f"the server read {sent} bytes without stopping")


def reset(peer):
    """Close with an RST, not a FIN: the connection errs at once on the server."""
    peer.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    peer.close()


def stalled(*args):
    """``stalledserver.py`` with ``args``, in its own process."""
    return subprocess.Popen(
        [sys.executable, f"{REPO}/tests/stalledserver.py", *args], env=environment(),
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )


def resetWhileStalled(process, peers, frames):
    """Flood ``peers`` with ``frames``, reset them, then let ``process`` stall; it must live."""
    try:
        for peer in peers:
            flood(peer, frames)
        for peer in peers:
            reset(peer)
        process.stdin.write("reset\n")
        process.stdin.flush()
        out, err = process.communicate(timeout=DEADLINE)
    finally:
        for peer in peers:
            peer.close()  # reset already, unless a flood failed
        stop(process)
    assert process.returncode == 0 and out == "alive\n", (process.returncode, out, err[-2000:])


def stop(process):
    """Kill ``process`` if it still runs, and reap it."""
    if process.poll() is None:
        process.kill()
        process.communicate()


def survives(kind, socketType, frames):
    server = stalled(kind)
    try:
        port = int(server.stdout.readline())
        peers = [zmtpPeer(port, socketType) for _ in range(PEERS)]
    except BaseException:
        stop(server)
        raise
    resetWhileStalled(server, peers, frames)


def zmtpServe(listener, socketType):
    """The next connection to ``listener``, once it has done a ZMTP 3.0 NULL handshake."""
    listener.settimeout(DEADLINE)
    peer, _ = listener.accept()
    peer.settimeout(DEADLINE)
    peer.sendall(b"\xff" + b"\x00" * 8 + b"\x7f\x03\x00" + b"NULL".ljust(20, b"\x00")
                 + b"\x00" * 32)
    receiveExactly(peer, 64)
    ready = b"\x05READY\x0bSocket-Type" + struct.pack(">I", len(socketType)) + socketType
    peer.sendall(b"\x04" + bytes([len(ready)]) + ready)
    return peer


def test_routerSurvivesFloodsThenResets():
    """Requests past the high-water mark, then a reset: the ROUTER's process lives on."""
    request = [zmtpFrame(b"CLD2", more=True), zmtpFrame(b"x" * 32)]
    survives("router", b"DEALER", request * 100)


def test_publisherSurvivesSubscriptionFloodsThenResets():
    """Subscriptions past the high-water mark (of 1), then a reset: the XPUB's process lives on."""
    subscriptions = [zmtpFrame(b"\x01K%07d\x00" % i) for i in range(100)]
    survives("publisher", b"XSUB", subscriptions)


def test_subscriberSurvivesItsPublishersFloodThenReset():
    """A subscriber's queue filled while its reactor was busy, then a reset: it lives on."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        client = stalled("subscriber", str(listener.getsockname()[1]))
        try:
            publisher = zmtpServe(listener, b"PUB")
        except BaseException:
            stop(client)
            raise
        resetWhileStalled(client, [publisher], [zmtpFrame(b"K" + b"x" * 31)] * 100)
