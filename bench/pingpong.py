#!/usr/bin/env python
"""How close can a Twisted reactor come to blocking pyzmq on one request at a time?

    python bench/pingpong.py [--rounds 5] [--ops 6000]

A ceiling for ``read`` and ``write`` in ``keywords.py``: the same echo
ping-pong (one 50-byte message out, the same back, DEALER -> ROUTER over
TCP on 127.0.0.1, client and server in two processes) done four ways, both
ends alike, runs interleaved:

* ``raw``: blocking pyzmq (``send``; ``recv``), as ``keywords.py``'s raw side;
* ``epoll``: non-blocking pyzmq in a bare ``select.epoll`` loop on ``ZMQ_FD``;
* ``twisted``: the least a Twisted reader can do: an ``IReadDescriptor`` on
  ``ZMQ_FD`` added to the epoll reactor, nothing else;
* ``transport``: cauldron's own sockets (:class:`cauldron.transport.Transport`).

Output, medians over rounds: ``NAME rate=<n>/s ratio=<to raw> cpu-us=<client
CPU µs per round trip>``, then the hypervisor's steal time as
``keywords.py`` reports it.  Whatever cauldron adds on top of ``transport``
is its keyword layer; what ``twisted`` loses to ``epoll`` is the reactor's.
"""

import argparse
import json
import os
import resource
import select
import statistics
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

KINDS = ("raw", "epoll", "twisted", "transport")
PAYLOAD = b"CLD2" + b"x" * 46
WARM = 500


def cpuSeconds():
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


class Meter:
    """Times the round trips after the first WARM, then prints one JSON line."""

    def __init__(self, ops):
        self.ops = ops
        self.done = 0

    def tick(self):
        """Count one round trip; True when all are done (and the result printed)."""
        self.done += 1
        if self.done == WARM:
            self.start, self.cpu = time.perf_counter(), cpuSeconds()
        if self.done < self.ops:
            return False
        n = self.ops - WARM
        print(json.dumps({"rate": n / (time.perf_counter() - self.start),
                          "cpuUs": (cpuSeconds() - self.cpu) / n * 1e6}), flush=True)
        return True


def zmqSocket(address=None):
    import zmq

    context = zmq.Context.instance()
    if address is None:
        socket = context.socket(zmq.ROUTER)
        socket.bind("tcp://127.0.0.1:*")
        print(socket.get(zmq.LAST_ENDPOINT).decode(), flush=True)
    else:
        socket = context.socket(zmq.DEALER)
        socket.connect(address)
    socket.linger = 0
    return socket


def runRaw(address, meter):
    socket = zmqSocket(address)
    if address is None:
        while True:
            socket.send_multipart(socket.recv_multipart())
    while True:
        socket.send(PAYLOAD)
        socket.recv()
        if meter.tick():
            return


def drain(socket, handle):
    """Handle every message ZMQ_FD's edge announced (EVENTS re-arms the edge)."""
    import zmq

    while socket.get(zmq.EVENTS) & zmq.POLLIN:
        if handle(socket.recv_multipart(zmq.NOBLOCK)):
            return True
    return False


def echoOrNext(socket, meter):
    import zmq

    def handle(frames):
        if meter is None:
            socket.send_multipart(frames, zmq.NOBLOCK)
            return False
        if meter.tick():
            return True
        socket.send(PAYLOAD, zmq.NOBLOCK)
        return False

    return handle


def runEpoll(address, meter):
    import zmq

    socket = zmqSocket(address)
    poller = select.epoll()
    poller.register(socket.get(zmq.FD), select.EPOLLIN)
    handle = echoOrNext(socket, meter)
    if meter is not None:
        socket.send(PAYLOAD)
    while not drain(socket, handle):
        poller.poll()


def runTwisted(address, meter):
    import zmq
    from twisted.internet import reactor
    from twisted.internet.interfaces import IReadDescriptor
    from zope.interface import implementer

    socket = zmqSocket(address)
    handle = echoOrNext(socket, meter)

    @implementer(IReadDescriptor)
    class Reader:
        def fileno(self):
            return socket.get(zmq.FD)

        def logPrefix(self):
            return "pingpong"

        def connectionLost(self, reason):
            pass

        def doRead(self):
            if drain(socket, handle):
                reactor.stop()

    reader = Reader()
    reactor.addReader(reader)
    if meter is not None:
        reactor.callWhenRunning(lambda: (socket.send(PAYLOAD), reader.doRead()))
    reactor.run()


def runTransport(address, meter):
    from twisted.internet import reactor

    from cauldron.transport import Transport

    transport = Transport(reactor, shared=address is not None)
    if address is None:
        router = transport.router(lambda peer, frames: router.sendTo(peer, frames))
        print(router.bind("tcp://127.0.0.1:*"), flush=True)
        reactor.run()
        return

    def replied(frames):
        if meter.tick():
            reactor.stop()
        else:
            dealer.send([PAYLOAD])

    dealer = transport.dealer(replied)
    dealer.connect(address)
    reactor.callWhenRunning(dealer.send, [PAYLOAD])
    reactor.run()


RUNNERS = {"raw": runRaw, "epoll": runEpoll, "twisted": runTwisted, "transport": runTransport}


def child(kind, address, ops):
    """A server (no address) or a client of one, ``kind`` at both ends."""
    RUNNERS[kind](address, None if address is None else Meter(ops))


def measure(kind, ops):
    script = os.path.abspath(__file__)
    server = subprocess.Popen([sys.executable, script, "--role", kind],
                              stdout=subprocess.PIPE, stdin=subprocess.DEVNULL)
    try:
        address = server.stdout.readline().decode().strip()
        out = subprocess.run([sys.executable, script, "--role", kind, "--address", address,
                              "--ops", str(ops)], stdout=subprocess.PIPE, timeout=120,
                             check=True, stdin=subprocess.DEVNULL).stdout
        return json.loads(out)
    finally:
        server.kill()
        server.wait()
        server.stdout.close()


def parent(rounds, ops):
    from keywords import cpuTicks, stealShare  # this folder's benchmark

    before = cpuTicks()
    results = {kind: [] for kind in KINDS}
    ratios = {kind: [] for kind in KINDS}
    for _ in range(rounds):
        got = {kind: measure(kind, ops) for kind in KINDS}
        for kind in KINDS:
            results[kind].append(got[kind])
            ratios[kind].append(got[kind]["rate"] / got["raw"]["rate"])
    for kind in KINDS:
        rate = statistics.median(r["rate"] for r in results[kind])
        cpu = statistics.median(r["cpuUs"] for r in results[kind])
        print(f"{kind} rate={rate:.0f}/s ratio={statistics.median(ratios[kind]):.3f} "
              f"cpu-us={cpu:.1f}", flush=True)
    stolen = stealShare(before, cpuTicks())
    if stolen is not None:
        print(f"# steal {stolen:.1%} (see keywords.py)", flush=True)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--ops", type=int, default=6000, help="round trips per client")
    parser.add_argument("--role", choices=KINDS, help=argparse.SUPPRESS)
    parser.add_argument("--address", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.role:
        child(args.role, args.address, args.ops)
    else:
        parent(args.rounds, args.ops)


if __name__ == "__main__":
    main()
