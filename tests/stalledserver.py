"""A bound cauldron socket whose reactor stalls while its peers reset: run by test_resets.

    python tests/stalledserver.py router|publisher

Prints the bound port, then waits for a line on stdin: the test's peers
have flooded it and reset their connections by then.  It then holds its
reactor (reading nothing) for two ZMTP heartbeat intervals, as a busy
dispatcher would, reads what is left, checks that a new peer is still
heard, and prints ``alive``.  libzmq 4.3 aborted such a process with
``Assertion failed: !_io_error`` when a bound socket sent ZMTP PINGs.
"""

import sys
import time

import zmq
from twisted.internet import reactor

from cauldron.transport import Transport
from cauldron.transport.sockets import ZMTP_HEARTBEAT_MS

DEADLINE = 30.0
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


def main(kind):
    transport = Transport(reactor)
    received = []
    if kind == "router":
        connection = transport.router(lambda peer, frames: received.append(frames))
    else:
        connection = transport.publisher()
    address = connection.bind("tcp://127.0.0.1:*")
    print(address.rsplit(":", 1)[1], flush=True)
    sys.stdin.readline()
    time.sleep(2 * ZMTP_HEARTBEAT_MS / 1000)  # the stall under test: the reactor is busy
    drain(connection)
    peer = zmq.Context.instance().socket(zmq.DEALER if kind == "router" else zmq.SUB)
    peer.connect(address)
    if kind == "router":
        received.clear()
        peer.send_multipart([b"CLD2", b"hello"])
        stillHears(connection, lambda: received, peer)
    else:
        peer.subscribe(TOPIC)
        stillHears(connection, lambda: connection.heard(TOPIC), peer)
    transport.shutdown()
    print("alive", flush=True)


if __name__ == "__main__":
    main(sys.argv[1])
