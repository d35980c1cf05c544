"""Peers that flood a bound socket, then reset, while its reactor is busy.

libzmq 4.3 stops reading a connection whose queue is at the high-water
mark.  If that connection is then reset, libzmq marks it broken but keeps
it until the queue drains; a ZMTP PING timer firing meanwhile aborts the
whole process (``Assertion failed: !_io_error``).  Any peer could so kill
a dispatcher or a router: flood, reset, and wait for a busy moment (our
own cutting of a flooding subscriber did the same).  Bound sockets
therefore send no PINGs (:meth:`cauldron.transport.sockets._Connection.bind`).

Each case runs ``stalledserver.py`` in its own process, since the failure
is an abort.
"""

import socket
import struct
import subprocess
import sys

from processes import DEADLINE, REPO, environment
from test_floods import zmtpFrame, zmtpPeer

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


def survives(kind, socketType, frames):
    server = subprocess.Popen(
        [sys.executable, f"{REPO}/tests/stalledserver.py", kind], env=environment(),
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    try:
        port = int(server.stdout.readline())
        peers = [zmtpPeer(port, socketType) for _ in range(PEERS)]
        for peer in peers:
            flood(peer, frames)
        for peer in peers:
            reset(peer)
        server.stdin.write("reset\n")
        server.stdin.flush()
        out, err = server.communicate(timeout=DEADLINE)
    finally:
        if server.poll() is None:
            server.kill()
            server.communicate()
    assert server.returncode == 0 and out == "alive\n", (server.returncode, out, err[-2000:])


def test_routerSurvivesFloodsThenResets():
    """Requests past the high-water mark, then a reset: the ROUTER's process lives on."""
    request = [zmtpFrame(b"CLD2", more=True), zmtpFrame(b"x" * 32)]
    survives("router", b"DEALER", request * 100)


def test_publisherSurvivesSubscriptionFloodsThenResets():
    """Subscriptions past the high-water mark (of 1), then a reset: the XPUB's process lives on."""
    subscriptions = [zmtpFrame(b"\x01K%07d\x00" % i) for i in range(100)]
    survives("publisher", b"XSUB", subscriptions)
