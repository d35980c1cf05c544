"""A cauldron socket whose reactor stalls while its peers reset: run by test_resets.

    python tests/stalledserver.py router|publisher
    python tests/stalledserver.py subscriber PORT

A router or publisher binds and prints its port; a subscriber connects to
the test's publisher on PORT.  Then it waits for a line on stdin: by then
the test's peers have flooded it and reset their connections.  It holds
its reactor (reading nothing) for STALL_SECONDS, as a busy process would,
reads what is left and, bound, checks that a new peer is still heard.  It
prints ``alive`` if it got that far: libzmq 4.3 aborted such a process
(``Assertion failed: !_io_error``) when its sockets sent ZMTP heartbeats.
"""

import sys
import time

import zmq
from twisted.internet import reactor

from cauldron.transport import Transport

DEADLINE = 30.0
#: twice the heartbeat interval (1 s) the sockets had: a heartbeat would fall due
STALL_SECONDS = 2.0
TOPIC = b"H\x00"


def drain(connection):
    """Read until libzmq holds nothing more for us."""
    for _ in range(10_000):
        if not connection.socket.get(zmq.EVENTS) & zmq.POLLIN:
            return
        connection.doRead()


def stillHears(connection, heard, peer):
    """Read until ``heard()``: a new peer gets through after the resets."""
    end = time.monotonic() + DEADLINE
    while not heard():
        if time.monotonic() > end:
            raise SystemExit("the socket no longer hears new peers")
        if connection.socket.poll(100):
            connection.doRead()
    peer.close(0)


def bound(transport, kind):
    """A router or publisher bound on an ephemeral port; (connection, check)."""
    received = []
    if kind == "router":
        connection = transport.router(lambda peer, frames: received.append(frames))
    else:
        connection = transport.publisher()
    address = connection.bind("tcp://127.0.0.1:*")
    print(address.rsplit(":", 1)[1], flush=True)

    def check():
        peer = zmq.Context.instance().socket(zmq.DEALER if kind == "router" else zmq.SUB)
        peer.connect(address)
        if kind == "router":
            received.clear()
            peer.send_multipart([b"CLD2", b"hello"])
            stillHears(connection, lambda: received, peer)
        else:
            peer.subscribe(TOPIC)
            stillHears(connection, lambda: connection.heard(TOPIC), peer)

    return connection, check


def connected(transport, port):
    """A subscriber to everything the test's publisher on ``port`` sends; (connection, check)."""
    connection = transport.subscriber(lambda frames: None)
    connection.subscribe(b"")
    connection.connect(f"tcp://127.0.0.1:{port}")
    return connection, lambda: None


def main(kind, *args):
    transport = Transport(reactor)
    if kind == "subscriber":
        connection, check = connected(transport, int(args[0]))
    else:
        connection, check = bound(transport, kind)
    sys.stdin.readline()
    time.sleep(STALL_SECONDS)  # the stall under test: the reactor is busy
    drain(connection)
    check()
    transport.shutdown()
    print("alive", flush=True)


if __name__ == "__main__":
    main(*sys.argv[1:])
