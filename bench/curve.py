#!/usr/bin/env python
"""What secure mode (CURVE) costs at the transport level, and how ZAP is best answered.

    python bench/curve.py [--quick]

Everything runs in this process on 127.0.0.1: cauldron's Transports on one
reactor, raw pyzmq in threads doing the same shape of work, in the same run.
One line per figure on stdout (a ``#`` header first):

* ``handshake``: a fresh DEALER connects to a ROUTER and sends one request;
  milliseconds until the echo comes back (median and 95th percentile), for
  plain, CURVE with cauldron's reactor ZAP handler, and CURVE with pyzmq's
  ThreadAuthenticator on the same context; and raw pyzmq plain and CURVE;
* ``handshake-burst``: N DEALERs connect at once; handshakes per second
  until every one has its echo, per ZAP handler (median over rounds, the
  order of the two flipping each round; N stays below the listen backlog);
* ``zap-request``: reactor time cauldron's ZAP handler takes per handshake;
* ``echo``: ROUTER/DEALER echo of a 50-byte frame, 64 in flight, messages
  per second, plain and CURVE (cauldron and raw), with the CURVE/plain ratio
  (medians over rounds, the order flipping each round);
* ``pubsub``: a publisher sends 70-byte frames in bursts of 200, each burst
  once the subscriber has had the previous one (none dropped at the
  high-water mark); messages per second, plain and CURVE, cauldron and raw;
* ``shutdown``: seconds for Transport.shutdown() with the reactor ZAP
  handler, with a ThreadAuthenticator stopped first, and with one still
  running (that one in a subprocess, cut at a deadline: it hangs).

Absolute rates depend on machine load: compare ratios from the same run.
"""

import argparse
import os
import statistics
import subprocess
import sys
import threading
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

import zmq  # noqa: E402
from twisted.internet import defer, task  # noqa: E402
from zmq.auth.thread import ThreadAuthenticator  # noqa: E402
from zmq.utils import z85  # noqa: E402

from cauldron.transport import Curve, Transport  # noqa: E402
from cauldron.transport.sockets import ZAP_DOMAIN  # noqa: E402

HOST = "tcp://127.0.0.1:*"
PRESETS = {
    # burst stays under the listen backlog (100): beyond, SYNs wait a second
    "full": dict(handshakes=300, burst=80, rounds=5, echo=60000, pubsub=200000),
    "quick": dict(handshakes=60, burst=50, rounds=3, echo=10000, pubsub=30000),
}


def makeCurve(name, allowed=()):
    public, secret = zmq.curve_keypair()
    keys = {curve.name: (curve.publicKey, curve.name + ".key") for curve in allowed}
    return Curve(name, public, secret, clientKeys=keys)


class NamedAuthenticator(ThreadAuthenticator):
    """pyzmq's authenticator giving key names as User-Id, like cauldron's."""

    def __init__(self, context, allowed):
        super().__init__(context)
        self._names = dict(allowed)

    def curve_user_id(self, client_public_key):
        return self._names[z85.encode(client_public_key)]


def startThreadAuthenticator(transport, allowed):
    """Replace a secure Transport's reactor ZAP handler by pyzmq's ThreadAuthenticator."""
    transport.authenticator.stop()
    # libzmq frees a closed socket's inproc address a moment later.
    deadline = time.monotonic() + 5
    while True:
        auth = NamedAuthenticator(transport._factory.context, allowed)
        try:
            auth.start()
            break
        except zmq.ZMQError:
            if auth.zap_socket is not None:
                auth.zap_socket.close(0)
            if time.monotonic() > deadline:
                raise
            time.sleep(0.001)
    auth.certs[ZAP_DOMAIN.decode()] = {key: True for key in allowed}
    return auth


def wait(reactor, predicate, timeout=30.0):
    """Poll ``predicate`` each reactor turn until true."""
    deadline = time.monotonic() + timeout

    async def loop():
        while not predicate():
            if time.monotonic() > deadline:
                raise RuntimeError("benchmark stalled")
            await task.deferLater(reactor, 0, lambda: None)

    return defer.ensureDeferred(loop())


class Setup:
    """A server Transport with an echoing ROUTER, and a client Transport, in one mode."""

    def __init__(self, reactor, mode):
        self.reactor = reactor
        self.mode = mode
        secure = mode != "plain"
        self.clientCurve = makeCurve("client") if secure else None
        self.serverCurve = makeCurve("server", [self.clientCurve]) if secure else None
        self.server = Transport(reactor, self.serverCurve)
        self.client = Transport(reactor, self.clientCurve)
        self.auth = None
        if mode == "thread":
            self.auth = startThreadAuthenticator(self.server, self.serverCurve.allowed)
        self.zapSeconds = []
        if mode == "reactor":
            self._timeZap(self.server.authenticator)
        self.router = self.server.router(self._echo)
        self.address = self.router.bind(HOST)
        self.serverKey = self.serverCurve.publicKey if secure else None

    def _timeZap(self, handler):
        """Record the reactor time each ZAP request takes."""
        answer = handler._onMessage

        def timed(frames):
            start = time.perf_counter()
            answer(frames)
            self.zapSeconds.append(time.perf_counter() - start)

        handler._onMessage = timed

    def _echo(self, peer, frames):
        self.router.sendTo(peer, frames)

    def dealer(self, onMessage):
        dealer = self.client.dealer(onMessage, serverKey=self.serverKey)
        dealer.connect(self.address)
        return dealer

    def close(self):
        if self.auth is not None:
            self.auth.stop()
        self.client.shutdown()
        self.server.shutdown()


async def handshakes(reactor, mode, count, zapSeconds=None):
    """Milliseconds from connect to the first echo, for ``count`` fresh DEALERs."""
    setup = Setup(reactor, mode)
    times = []
    if zapSeconds is not None:
        setup.zapSeconds = zapSeconds
    try:
        for _ in range(count):
            replies = []
            start = time.perf_counter()
            dealer = setup.dealer(replies.append)
            dealer.send([b"x" * 50])
            await wait(reactor, replies.__len__)
            times.append((time.perf_counter() - start) * 1000)
            setup.client.close(dealer, discard=True)
    finally:
        setup.close()
    return times


async def burst(reactor, mode, count):
    """Handshakes per second when ``count`` DEALERs connect at once."""
    setup = Setup(reactor, mode)
    try:
        replies = []
        start = time.perf_counter()
        dealers = [setup.dealer(replies.append) for _ in range(count)]
        for dealer in dealers:
            dealer.send([b"x"])
        await wait(reactor, lambda: len(replies) >= count)
        return count / (time.perf_counter() - start)
    finally:
        setup.close()


async def echo(reactor, mode, count, depth=64):
    """ROUTER/DEALER echo messages per second, ``depth`` in flight."""
    setup = Setup(reactor, mode)
    try:
        state = {"got": 0, "sent": 0}

        def received(frames):
            state["got"] += 1
            if state["sent"] < count:
                state["sent"] += 1
                dealer.send(frames)

        dealer = setup.dealer(received)
        dealer.send([b"warm"])
        await wait(reactor, lambda: state["got"])
        state["got"] = 0
        start = time.perf_counter()
        for _ in range(depth):
            state["sent"] += 1
            dealer.send([b"x" * 50])
        await wait(reactor, lambda: state["got"] >= state["sent"] >= count)
        return count / (time.perf_counter() - start)
    finally:
        setup.close()


async def pubsub(reactor, mode, count, burstSize=200):
    """Publisher to subscriber messages per second, in bursts the subscriber keeps up with."""
    setup = Setup(reactor, mode)
    try:
        got = [0]
        publisher = setup.server.publisher()
        address = publisher.bind(HOST)
        def received(frames):
            got[0] += 1

        subscriber = setup.client.subscriber(received, serverKey=setup.serverKey)
        subscriber.connect(address)
        subscriber.subscribe(b"K")

        def warm():
            publisher.send([b"Kwarm"])
            return got[0] > 0

        await wait(reactor, warm)
        # The last warm-up messages arrive after the first: count from a quiet moment.
        quiet = time.monotonic() + 0.05
        await wait(reactor, lambda: time.monotonic() > quiet)
        got[0] = 0
        payload = b"K" + b"x" * 69
        start = time.perf_counter()
        sent = 0
        while sent < count:
            for _ in range(burstSize):
                publisher.send([payload])
            sent += burstSize
            # A PUB drops at its high-water mark: wait a while, then go on.
            deadline = time.monotonic() + 1
            await wait(reactor, lambda s=sent, t=deadline: got[0] >= s or time.monotonic() > t)
        return got[0] / (time.perf_counter() - start), sent - got[0]
    finally:
        setup.close()


# -- raw pyzmq, the same work -------------------------------------------------------


def rawPair(kinds, secure, highWaterMark=1000):
    """A context with a server socket of kinds[0] bound and a client of kinds[1] to connect."""
    context = zmq.Context()
    auth = None
    server, client = context.socket(kinds[0]), context.socket(kinds[1])
    server.sndhwm = server.rcvhwm = client.sndhwm = client.rcvhwm = highWaterMark
    options = {}
    if secure:
        serverPublic, serverSecret = zmq.curve_keypair()
        clientPublic, clientSecret = zmq.curve_keypair()
        auth = ThreadAuthenticator(context)
        auth.start()
        auth.certs["*"] = {clientPublic: True}
        server.curve_server = True
        server.curve_secretkey = serverSecret
        options = {zmq.CURVE_SERVERKEY: serverPublic, zmq.CURVE_PUBLICKEY: clientPublic,
                   zmq.CURVE_SECRETKEY: clientSecret}
    rawClient(client, options)
    server.linger = 0
    port = server.bind_to_random_port("tcp://127.0.0.1")
    return context, auth, server, client, f"tcp://127.0.0.1:{port}", options


def rawClient(socket, options):
    socket.linger = 0
    for option, value in options.items():
        socket.set(option, value)
    return socket


def rawClose(context, auth, *sockets):
    for socket in sockets:
        socket.close(0)
    if auth is not None:
        auth.stop()
    context.term()


def rawHandshakes(secure, count):
    times = []
    context, auth, server, client, address, options = rawPair((zmq.ROUTER, zmq.DEALER), secure)
    client.close(0)
    stop = threading.Event()
    thread = threading.Thread(target=_rawEcho, args=(server, stop), daemon=True)
    thread.start()
    try:
        for _ in range(count):
            dealer = rawClient(context.socket(zmq.DEALER), options)
            start = time.perf_counter()
            dealer.connect(address)
            dealer.send(b"x" * 50)
            dealer.recv()
            times.append((time.perf_counter() - start) * 1000)
            dealer.close(0)
    finally:
        stop.set()
        thread.join()
        rawClose(context, auth, server)
    return times


def _rawEcho(server, stop):
    poller = zmq.Poller()
    poller.register(server, zmq.POLLIN)
    while not stop.is_set():
        if poller.poll(50):
            while True:
                try:
                    server.send_multipart(server.recv_multipart(zmq.NOBLOCK))
                except zmq.Again:
                    break


def rawEcho(secure, count, depth=64):
    context, auth, server, client, address, _ = rawPair((zmq.ROUTER, zmq.DEALER), secure)
    stop = threading.Event()
    thread = threading.Thread(target=_rawEcho, args=(server, stop), daemon=True)
    thread.start()
    try:
        client.connect(address)
        client.send(b"warm")
        client.recv()
        start = time.perf_counter()
        for _ in range(depth):
            client.send(b"x" * 50)
        sent = depth
        for _ in range(count):
            client.recv()
            if sent < count:
                client.send(b"x" * 50)
                sent += 1
            elif _ + 1 >= sent:
                break
        return count / (time.perf_counter() - start)
    finally:
        stop.set()
        thread.join()
        rawClose(context, auth, server, client)


def rawPubsub(secure, count, burstSize=200):
    # unlimited high-water marks: nothing dropped
    context, auth, server, client, address, _ = rawPair((zmq.PUB, zmq.SUB), secure, 0)
    got = [0]
    stop = threading.Event()

    def receive():
        while not stop.is_set():
            if client.poll(50):
                while True:
                    try:
                        client.recv(zmq.NOBLOCK)
                    except zmq.Again:
                        break
                    got[0] += 1

    try:
        client.subscribe(b"K")
        client.connect(address)
        thread = threading.Thread(target=receive, daemon=True)
        thread.start()
        while not got[0]:
            server.send(b"Kwarm")
            time.sleep(0.001)
        time.sleep(0.05)  # the last warm-up messages arrive after the first
        got[0] = 0
        payload = b"K" + b"x" * 69
        start = time.perf_counter()
        sent = 0
        while sent < count:
            for _ in range(burstSize):
                server.send(payload)
            sent += burstSize
            deadline = time.monotonic() + 1
            while got[0] < sent and time.monotonic() < deadline:
                time.sleep(0)
        return got[0] / (time.perf_counter() - start), sent - got[0]
    finally:
        stop.set()
        thread.join()
        rawClose(context, auth, server, client)


# -- shutdown ---------------------------------------------------------------------


async def shutdownTimes(reactor):
    """Seconds to shut a secure Transport down (reactor ZAP; ThreadAuthenticator stopped first)."""
    figures = {}
    for mode in ("reactor", "thread"):
        setup = Setup(reactor, mode)
        replies = []
        dealer = setup.dealer(replies.append)
        dealer.send([b"x"])
        await wait(reactor, replies.__len__)
        start = time.perf_counter()
        setup.close()
        figures[mode] = time.perf_counter() - start
    return figures


HANG = """
import sys, time
sys.path.insert(0, %r)
from twisted.internet import reactor
import bench.curve as b
s = b.Setup(reactor, "thread")
start = time.perf_counter()
s.client.shutdown()
s.server.shutdown()  # the ThreadAuthenticator still runs
print(time.perf_counter() - start)
"""


def hangingShutdown(deadline=5.0):
    """Transport.shutdown() with a ThreadAuthenticator still running, cut at ``deadline``."""
    try:
        result = subprocess.run([sys.executable, "-c", HANG % ROOT], capture_output=True,
                                text=True, timeout=deadline)
    except subprocess.TimeoutExpired:
        return f"> {deadline:g} s (hung, killed)"
    return f"{float(result.stdout.strip() or 'nan'):.3f} s"


# -- main ---------------------------------------------------------------------------


def summary(times):
    ordered = sorted(times)
    p95 = ordered[min(len(ordered) - 1, int(len(ordered) * 0.95))]
    return f"median={statistics.median(ordered):.2f}ms p95={p95:.2f}ms"


def _lost(figure):
    return figure if isinstance(figure, tuple) else (figure, 0)


async def run(reactor, preset):
    print(f"# pyzmq {zmq.__version__}, libzmq {zmq.zmq_version()}, preset {preset}")
    counts = PRESETS[preset]
    zapSeconds = []
    for mode in ("plain", "reactor", "thread"):
        times = await handshakes(reactor, mode, counts["handshakes"], zapSeconds)
        print(f"handshake cauldron-{mode} {summary(times)}")
    print(f"zap-request reactor-time median={statistics.median(zapSeconds) * 1e6:.1f}us "
          f"max={max(zapSeconds) * 1e6:.1f}us n={len(zapSeconds)}")
    for secure in (False, True):
        times = rawHandshakes(secure, counts["handshakes"])
        print(f"handshake raw-{'curve' if secure else 'plain'} {summary(times)}")
    rates = {"reactor": [], "thread": []}
    for round in range(counts["rounds"]):
        for mode in sorted(rates, reverse=bool(round % 2)):
            rates[mode].append(await burst(reactor, mode, counts["burst"]))
    for mode, figures in rates.items():
        print(f"handshake-burst cauldron-{mode} n={counts['burst']} "
              f"median={statistics.median(figures):.0f}/s "
              f"range={min(figures):.0f}-{max(figures):.0f}/s rounds={len(figures)}")
    for name, cauldronBench, rawBench in (("echo", echo, rawEcho), ("pubsub", pubsub, rawPubsub)):
        for label in ("cauldron", "raw"):
            figures = {"plain": [], "curve": []}
            lost = 0
            for round in range(counts["rounds"]):
                for kind in sorted(figures, reverse=bool(round % 2)):
                    if label == "cauldron":
                        mode = "plain" if kind == "plain" else "reactor"
                        figure = await cauldronBench(reactor, mode, counts[name])
                    else:
                        figure = rawBench(kind == "curve", counts[name])
                    rate, missing = _lost(figure)
                    figures[kind].append(rate)
                    lost += missing
            ratios = [c / p for c, p in zip(figures["curve"], figures["plain"], strict=True)]
            print(f"{name} {label} plain={statistics.median(figures['plain']):.0f}/s "
                  f"curve={statistics.median(figures['curve']):.0f}/s "
                  f"curve/plain median={statistics.median(ratios):.2f} "
                  f"range={min(ratios):.2f}-{max(ratios):.2f}"
                  + (f" LOST={lost}" if lost else ""))
    figures = await shutdownTimes(reactor)
    print("shutdown reactor-zap=%.3fs thread-authenticator-stopped-first=%.3fs "
          "thread-authenticator-running=%s"
          % (figures["reactor"], figures["thread"], hangingShutdown()))


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer operations")
    args = parser.parse_args()
    preset = "quick" if args.quick else "full"
    task.react(lambda reactor: defer.ensureDeferred(run(reactor, preset)))


if __name__ == "__main__":
    main()
