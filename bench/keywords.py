#!/usr/bin/env python
"""Keyword throughput of cauldron against raw pyzmq, measured in the same run.

    python bench/keywords.py [--quick] [--rounds N] [--profile DIR]

Every measurement runs a fresh server process and a fresh client process on
127.0.0.1 (this same script, in a ``--role`` mode).  Cauldron's dispatcher
runs in direct mode (no router).  Each round runs, per scenario, cauldron and
then raw pyzmq doing the same shape of work (the order flips every round);
the ratio cauldron / raw is computed within the round and the median over
rounds is printed, one line per scenario:

    NAME cauldron=<n>/s raw=<n>/s ratio=<r>

Scenarios:

* ``read``: sequential ``kw.read()`` of a Double keyword, each awaited, vs a
  raw REQ -> ROUTER echo of a 50 byte single-frame payload;
* ``write``: sequential ``kw.write(v)`` with a new value each time (each
  write completes and is broadcast) vs the same raw echo;
* ``read-64``: reads with 64 in flight vs raw DEALER -> ROUTER with 64 in
  flight;
* ``read-p99``: the 99th percentile of sequential read latency (µs), vs
  the raw REQ echo's; the ratio is raw ÷ cauldron;
* ``fanout-20``: 20 monitors of COUNT (20 clients in one process, each
  with connections of its own, ``shareConnections=False``) while
  the dispatcher sets it 1..20,000 as fast as it can (``--batch`` per reactor
  turn, no pacing); value = updates per second per monitor (median), plus
  ``delivery=``, the smallest share of the 20,000 a monitor got (must be
  1.000).  Raw: one PUB, 20 SUB sockets (unlimited high-water marks).
* ``clients-1000``: 1,000 more ``ClientService`` objects in one process
  (sharing one broadcast connection, as plain clients do), each
  monitoring TICK (set by the dispatcher 10 times a second); printed
  as ``clients-1000 threads=<n> kib-per-client=<n> p99=<ms> updates=<n>``:
  the process's threads, its memory growth per client, and the 99th
  percentile of the delay from the dispatcher's timestamp to a callback,
  over 3 s.  No raw counterpart.
* ``broadcast``: the dispatcher calls ``COUNT.set(i)`` for i in range(N) as
  fast as it can, in batches yielding to the reactor, while the client
  monitors COUNT; no update may be lost.  The PUB high-water mark is 1000,
  so the producer is paced by a window: at most ``--window`` updates not yet
  acknowledged by the client, which writes the highest value seen to the ACK
  keyword every ``--ack-every`` updates.  (ZeroMQ reports reads to the writer
  only every HWM/2 messages, so a window near the HWM loses updates: 900
  did, 400 does not.)  Raw: PUB -> SUB of single-frame messages of the same
  size, unlimited high-water marks, a sequence number checked for gaps.
  Slow joiners are handled in both by warm-up messages sent every 1 ms until
  the subscriber confirms on a side channel.

The same scenarios in secure mode (``[security] curve = yes``, keys made
for the run, the dispatcher admitting the client's key through its ZAP
handler) are ``read-curve``, ``read-64-curve`` and ``broadcast-curve``,
compared with the same plain raw pyzmq.  When a scenario ran both ways, a
last line gives what secure mode keeps of plain-mode throughput:

    curve-keeps read=<r> read-64=<r> broadcast=<r>

Per-round details go to stderr; stdout has a ``#`` header and the lines above.
"""

import argparse
import json
import os
import select
import signal
import statistics
import struct
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

PLAIN_SCENARIOS = ("read", "write", "read-64", "read-p99", "broadcast", "fanout-20")
CURVE_SUFFIX = "-curve"
SCENARIOS = PLAIN_SCENARIOS + tuple(
    s + CURVE_SUFFIX for s in ("read", "read-64", "broadcast")) + ("clients-1000",)
RAW_KIND = {"read": "seq", "write": "seq", "read-64": "pipe", "read-p99": "seq-p99",
            "broadcast": "pubsub", "fanout-20": "fanout"}
#: monitors (subscribers) of the fanout scenario
FANOUT = 20
#: how often the dispatcher sets TICK, and how many clients monitor it (clients-1000)
TICK_HZ = 10
IDLE_CLIENTS = 1000
#: how long clients-1000 collects latencies once every client is monitoring
IDLE_SECONDS = 3.0
DEPTH = 64

#: operation counts; every loop also stops at ``budget`` seconds
PRESETS = {
    "quick": dict(rounds=1, seq=4000, rawSeq=10000, pipe=15000, rawPipe=100000,
                  bcast=50000, rawBcast=500000, fanout=20000, warm=300, budget=3.0),
    "full": dict(rounds=3, seq=10000, rawSeq=20000, pipe=50000, rawPipe=100000,
                 bcast=100000, rawBcast=1000000, fanout=20000, warm=1000, budget=10.0),
}

# Raw messages are single frames (the cheapest raw pyzmq can do, as in the
# notes' anchors); their sizes match cauldron's: a read request and its reply
# are 16 and 58 bytes over two frames, an Update 70 bytes over three.
ECHO_PAYLOAD = b"x" * 50
BCAST_TOPIC = b"KCOUNT\x00"
BCAST_PAD = b"y" * (70 - len(BCAST_TOPIC) - 8)
WARM_TOPIC = b"W\x00"


def emit(obj):
    sys.stdout.write(json.dumps(obj) + "\n")
    sys.stdout.flush()


def note(text):
    sys.stderr.write(text + "\n")
    sys.stderr.flush()


# ---------------------------------------------------------------- children


def cpuTimes(pid=None):
    """CPU seconds used so far by this process, or by process ``pid`` (Linux)."""
    if pid is None:
        t = os.times()
        return t.user + t.system
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return float("nan")


class CpuMeter:
    """CPU used by this process and by the server process over a timed loop."""

    def __init__(self, serverPid):
        self.serverPid = serverPid
        self.start = (cpuTimes(), cpuTimes(serverPid))

    def result(self, ops):
        client = cpuTimes() - self.start[0]
        server = cpuTimes(self.serverPid) - self.start[1]
        ops = max(ops, 1)
        return dict(clientCpuUs=round(client / ops * 1e6, 1),
                    serverCpuUs=round(server / ops * 1e6, 1))


def childSetup(opts):
    """Hard timeout for a child: SIGALRM's default action ends the process."""
    signal.alarm(max(1, int(opts.deadline)))


def startTwistedLogging():
    from twisted.logger import (
        FilteringLogObserver,
        LogLevel,
        LogLevelFilterPredicate,
        globalLogBeginner,
        textFileLogObserver,
    )

    observer = FilteringLogObserver(
        textFileLogObserver(sys.stderr),
        [LogLevelFilterPredicate(defaultLogLevel=LogLevel.warn)],
    )
    globalLogBeginner.beginLoggingTo([observer], redirectStandardIO=False)


def runProfiled(opts, fn):
    if not opts.profile:
        return fn()
    import cProfile

    profiler = cProfile.Profile()
    profiler.enable()
    try:
        return fn()
    finally:
        profiler.disable()
        profiler.dump_stats(opts.profile)


def roleDispatcher(opts):
    """Serve TEMP (Double), COUNT, WARMUP, BURST and ACK until SIGTERM."""
    from twisted.internet import reactor, task

    from cauldron import config, keywords
    from cauldron.dispatcher import DispatcherService

    startTwistedLogging()
    state = dict(acked=0, next=0, total=0, waiting=False, warm=None, warmValue=0)
    count = keywords.Integer("COUNT")

    def warmStep():
        state["warmValue"] -= 1
        count.set(state["warmValue"])

    def startWarmup(value):
        if state["warm"] is None:
            state["warm"] = task.LoopingCall(warmStep)
            state["warm"].clock = reactor
            state["warm"].start(0.001)

    def startBurst(value):
        if state["warm"] is not None and state["warm"].running:
            state["warm"].stop()
        state.update(total=int(value), next=0, acked=0, waiting=False)
        reactor.callLater(0, produce)

    def produce():
        limit = min(state["total"], state["acked"] + opts.window, state["next"] + opts.batch)
        i = state["next"]
        while i < limit:
            count.set(i)
            i += 1
        state["next"] = i
        if i >= state["total"]:
            return
        if i < state["acked"] + opts.window:
            reactor.callLater(0, produce)
        else:
            state["waiting"] = True

    def acknowledged(keyword):
        state["acked"] = max(state["acked"], keyword.value or 0)
        if state["waiting"] and state["next"] < state["acked"] + opts.window:
            state["waiting"] = False
            reactor.callLater(0, produce)

    ack = keywords.Integer("ACK", initial=0)
    ack.addListener(acknowledged)

    tick = keywords.Integer("TICK", initial=0)

    def ticking():
        tick.set((tick.value or 0) + 1)

    ticker = task.LoopingCall(ticking)
    ticker.clock = reactor
    reactor.callWhenRunning(ticker.start, 1 / TICK_HZ)

    def startFanout(value):
        """Set COUNT to 1..value as fast as the reactor allows, ``--batch`` per turn."""
        state.update(total=int(value), next=1)
        reactor.callLater(0, fanout)

    def fanout():
        last = min(state["total"], state["next"] + opts.batch - 1)
        for i in range(state["next"], last + 1):
            count.set(i)
        state["next"] = last + 1
        if last < state["total"]:
            reactor.callLater(0, fanout)

    served = [
        keywords.Double("TEMP", initial=0.0, units="K"),
        count,
        keywords.Integer("WARMUP", initial=0, write=startWarmup),
        keywords.Integer("BURST", initial=0, write=startBurst),
        keywords.Integer("FANOUT", initial=0, write=startFanout),
        tick,
        ack,
    ]
    cfg = config.Config.fromMapping({
        "zmq": {"host": "127.0.0.1", "dispatch-port": 0, "broadcast-port": 0},
        "zmq-router": {"enable": "no"},
        **securitySection(opts, "bench"),
    })
    dispatcher = DispatcherService("bench", cfg, served, reactor=reactor)

    def ready(addresses):
        emit({"dispatch": addresses[0], "broadcast": addresses[1], "pid": os.getpid()})

    def failed(failure):
        emit({"error": failure.getErrorMessage()})
        reactor.stop()

    reactor.callWhenRunning(dispatcher.startService)
    dispatcher.whenReady().addCallbacks(ready, failed)
    reactor.addSystemEventTrigger("before", "shutdown", dispatcher.stopService)
    runProfiled(opts, reactor.run)


def baseScenario(scenario):
    """The plain scenario a secure one repeats (``read-curve`` -> ``read``)."""
    return scenario.removesuffix(CURVE_SUFFIX)


def makeKeys(directory):
    """Key pairs for the dispatcher (``bench``) and the client, as ``cauldron keys`` makes them."""
    import shutil

    from cauldron.transport.curve import generateCertificate

    private = os.path.join(directory, "private")
    for name, allowed in (("bench", "dispatchers"), ("client", "clients")):
        public, _ = generateCertificate(private, name)
        os.makedirs(os.path.join(directory, allowed), mode=0o755, exist_ok=True)
        shutil.copy(public, os.path.join(directory, allowed, name + ".key"))
    return directory


def securitySection(opts, name):
    """``[security]`` for process ``name`` with the run's keys, in a secure scenario."""
    if not opts.keys:
        return {}
    return {"security": {
        "curve": "yes",
        "secret-key": os.path.join(opts.keys, "private", name + ".key_secret"),
        "client-keys": os.path.join(opts.keys, "clients"),
        "dispatcher-keys": os.path.join(opts.keys, "dispatchers"),
    }}


def sequential(op, count, budget, perf=time.perf_counter, latencies=None):
    """Run ``op()`` (a Deferred) ``count`` times, one at a time.

    Fires with ``(completed, seconds)``; stops early after ``budget`` s.
    With ``latencies`` (a list), each operation's seconds are appended.
    """
    from twisted.internet import defer

    done = defer.Deferred()
    state = [0, 0.0]
    start = perf()
    deadline = start + budget

    def step(_):
        now = perf()
        if latencies is not None and state[0]:
            latencies.append(now - state[1])
        n = state[0]
        if n >= count or now > deadline:
            done.callback((n, now - start))
            return
        state[0], state[1] = n + 1, now
        op().addCallbacks(step, failed)

    def failed(failure):
        if not done.called:
            done.errback(failure)

    step(None)
    return done


def pipelined(op, count, depth, budget, perf=time.perf_counter):
    """Keep ``depth`` of ``op()`` in flight until ``count`` completed (or the budget)."""
    from twisted.internet import defer

    done = defer.Deferred()
    state = dict(issued=0, completed=0, stopped=False)
    start = perf()
    deadline = start + budget

    def issue():
        state["issued"] += 1
        op().addCallbacks(completed, failed)

    def completed(_):
        state["completed"] += 1
        if not state["stopped"] and perf() > deadline:
            state["stopped"] = True
        if not state["stopped"] and state["issued"] < count:
            issue()
        elif state["completed"] == state["issued"] and not done.called:
            done.callback((state["completed"], perf() - start))

    def failed(failure):
        if not done.called:
            done.errback(failure)

    for _ in range(min(depth, count)):
        issue()
    return done


def roleClient(opts):
    from twisted.internet import defer, reactor
    from twisted.python.failure import Failure

    from cauldron import config
    from cauldron.client import ClientService

    startTwistedLogging()
    ports = json.loads(opts.ports)
    cfg = config.Config.fromMapping({
        "zmq": {
            "host": "127.0.0.1",
            "dispatch-port": int(ports["dispatch"].rsplit(":", 1)[1]),
            "broadcast-port": int(ports["broadcast"].rsplit(":", 1)[1]),
        },
        "zmq-router": {"enable": "no"},
        **securitySection(opts, "client"),
    })
    client = ClientService(cfg, reactor=reactor, timeout=30)
    result = {}

    @defer.inlineCallbacks
    def main():
        client.startService()
        svc = yield client.service("bench")
        scenario = baseScenario(opts.scenario)
        if scenario == "clients-1000":
            result.update((yield idleClients(cfg)))
            return
        if scenario == "fanout-20":
            result.update((yield fanoutClient(opts, cfg, svc, ports["pid"])))
            return
        if scenario == "broadcast":
            result.update((yield broadcastClient(opts, svc, ports["pid"])))
            return
        temp = svc["TEMP"]
        op = temp.read
        if scenario == "write":
            values = iter(range(1, 1 << 40))

            def op():
                return temp.write(next(values) * 0.5)
        if scenario == "read-64":
            yield pipelined(op, opts.warm * 4, DEPTH, opts.budget)
            meter = CpuMeter(ports["pid"])
            n, seconds = yield pipelined(op, opts.ops, DEPTH, opts.budget)
        elif scenario == "read-p99":
            yield sequential(op, opts.warm, opts.budget)
            meter = CpuMeter(ports["pid"])
            latencies = []
            n, seconds = yield sequential(op, opts.ops, opts.budget, latencies=latencies)
            result.update(p99us=percentile99(latencies) * 1e6)
        else:
            yield sequential(op, opts.warm, opts.budget)
            meter = CpuMeter(ports["pid"])
            n, seconds = yield sequential(op, opts.ops, opts.budget)
        result.update(ops=n, seconds=seconds, rate=n / seconds, **meter.result(n))

    def finish(outcome):
        if isinstance(outcome, Failure):
            result["error"] = f"{outcome.type.__name__}: {outcome.getErrorMessage()}"
        d = client.stopService()
        d.addBoth(lambda _: reactor.stop())

    reactor.callWhenRunning(lambda: main().addBoth(finish))
    runProfiled(opts, reactor.run)
    emit(result)


def broadcastClient(opts, svc, serverPid):
    """Monitor COUNT while the dispatcher sets it 0..N-1; count what arrives in order."""
    from twisted.internet import defer, reactor, task

    perf = time.perf_counter
    total = opts.ops
    ackKeyword = svc["ACK"]
    warmed = defer.Deferred()
    finished = defer.Deferred()
    st = dict(expected=0, delivered=0, lost=0, lastAck=0, last=None, start=None,
              ackErrors=0, progress=perf())

    def ackFailed(failure):
        st["ackErrors"] += 1

    def onValue(value):
        v = value.binary
        if v is None:
            return
        if v < 0:
            if not warmed.called:
                warmed.callback(None)
            return
        if finished.called or st["start"] is None:
            return
        now = perf()
        if v != st["expected"]:
            st["lost"] += max(0, v - st["expected"])
        st["expected"] = v + 1
        st["delivered"] += 1
        st["last"] = st["progress"] = now
        if v + 1 - st["lastAck"] >= opts.ack_every:
            st["lastAck"] = v + 1
            ackKeyword.write(v + 1).addErrback(ackFailed)
        if v + 1 >= total or now - st["start"] > opts.budget:
            finished.callback(None)

    def watchdog():
        if perf() - st["progress"] > 3.0 and not finished.called:
            finished.callback("stalled")

    @defer.inlineCallbacks
    def run():
        subscription = yield svc["COUNT"].monitor(onValue)
        yield svc["WARMUP"].write(1)
        timer = reactor.callLater(10, lambda: warmed.called or warmed.errback(
            RuntimeError("no warm-up update within 10 s")))
        yield warmed
        if timer.active():
            timer.cancel()
        st["start"] = st["progress"] = perf()
        meter = CpuMeter(serverPid)
        svc["BURST"].write(total)
        loop = task.LoopingCall(watchdog)
        loop.clock = reactor
        loop.start(0.5, now=False)
        outcome = yield finished
        loop.stop()
        subscription.stop()
        seconds = (st["last"] or perf()) - st["start"]
        out = dict(ops=st["delivered"], seconds=seconds, rate=st["delivered"] / seconds,
                   lost=st["lost"], ackErrors=st["ackErrors"], **meter.result(st["delivered"]))
        if outcome == "stalled":
            out["stalled"] = True
        return out

    return run()


def fanoutClient(opts, cfg, svc, serverPid):
    """FANOUT monitors of COUNT (one client each) while the dispatcher sets it 1..N in a burst.

    Each monitor's rate is the values it got over the time to its last; the
    result's rate is their median, ``delivery`` the smallest share of the
    N values a monitor got.
    """
    from twisted.internet import defer, reactor, task

    from cauldron.client import ClientService

    perf = time.perf_counter
    total = opts.ops
    # Connections of their own: FANOUT subscribers, as raw has, not one feed shared.
    clients = [ClientService(cfg, reactor=reactor, timeout=30, shareConnections=False)
               for _ in range(FANOUT)]
    counts = [0] * FANOUT
    lasts = [None] * FANOUT
    done = defer.Deferred()
    st = dict(progress=perf(), finished=0)

    def onValue(index, value):
        if value.binary is None or value.binary < 1:
            return
        counts[index] += 1
        lasts[index] = st["progress"] = perf()
        if value.binary == total:
            st["finished"] += 1
            if st["finished"] == FANOUT and not done.called:
                done.callback(None)

    def watchdog():
        if perf() - st["progress"] > 3.0 and not done.called:
            done.callback("stalled")

    subscriptions = []
    for index, client in enumerate(clients):
        client.startService()
        remote = yield client.service("bench")
        subscriptions.append((yield remote["COUNT"].monitor(
            lambda value, index=index: onValue(index, value))))
    start = st["progress"] = perf()
    meter = CpuMeter(serverPid)
    svc["FANOUT"].write(total)
    loop = task.LoopingCall(watchdog)
    loop.clock = reactor
    loop.start(0.5, now=False)
    outcome = yield done
    loop.stop()
    for subscription in subscriptions:
        subscription.stop()
    yield defer.gatherResults([client.stopService() for client in clients])
    rates = [n / ((last or perf()) - start) for n, last in zip(counts, lasts, strict=True)]
    out = dict(ops=sum(counts), seconds=max(last or perf() for last in lasts) - start,
               rate=statistics.median(rates), delivery=min(counts) / total,
               lost=FANOUT * total - sum(counts), **meter.result(sum(counts)))
    if outcome == "stalled":
        out["stalled"] = True
    return out


def procStatus(field):
    """A number from /proc/self/status (``VmRSS`` in KiB, ``Threads``)."""
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"no {field} in /proc/self/status")


def idleClients(cfg):
    """IDLE_CLIENTS more ClientServices, each monitoring TICK: threads, memory, latency."""
    import resource

    from twisted.internet import defer, reactor, task

    from cauldron.client import ClientService

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)  # four descriptors a client
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, min(hard, 16384)), hard))
    rssBefore = procStatus("VmRSS")
    latencies = []
    collecting = [False]

    def onTick(value):
        if collecting[0] and value.timestamp is not None:
            latencies.append(time.time() - value.timestamp)

    clients, subscriptions = [], []
    for _ in range(IDLE_CLIENTS):
        client = ClientService(cfg, reactor=reactor, timeout=30)
        client.startService()
        clients.append(client)
        remote = yield client.service("bench")
        subscriptions.append((yield remote["TICK"].monitor(onTick)))
    threads, rssAfter = procStatus("Threads"), procStatus("VmRSS")
    collecting[0] = True
    yield task.deferLater(reactor, IDLE_SECONDS, lambda: None)
    collecting[0] = False
    for subscription in subscriptions:
        subscription.stop()
    yield defer.gatherResults([client.stopService() for client in clients])
    latencies.sort()
    p99 = latencies[int(0.99 * (len(latencies) - 1))] if latencies else float("nan")
    return dict(ops=len(latencies), seconds=IDLE_SECONDS, rate=len(latencies) / IDLE_SECONDS,
                threads=threads, kibPerClient=round((rssAfter - rssBefore) / IDLE_CLIENTS, 1),
                p99ms=round(p99 * 1000, 2))


def roleRawServer(opts):
    import zmq

    ctx = zmq.Context()
    deadline = time.monotonic() + opts.deadline
    signal.signal(signal.SIGTERM, lambda *a: sys.exit(0))
    try:
        if opts.kind == "echo":
            sock = ctx.socket(zmq.ROUTER)
            sock.linger = 0
            port = sock.bind_to_random_port("tcp://127.0.0.1")
            emit({"port": port, "pid": os.getpid()})
            sock.rcvtimeo = 500
            recv, send = sock.recv_multipart, sock.send_multipart
            while time.monotonic() < deadline:  # frames: identity, payload
                try:
                    frames = recv()
                except zmq.Again:
                    continue
                send(frames)
        else:
            pub = ctx.socket(zmq.PUB)
            pub.linger = 0
            pub.sndhwm = 0
            pubPort = pub.bind_to_random_port("tcp://127.0.0.1")
            rep = ctx.socket(zmq.REP)
            rep.linger = 0
            repPort = rep.bind_to_random_port("tcp://127.0.0.1")
            emit({"pub": pubPort, "rep": repPort, "pid": os.getpid()})
            while time.monotonic() < deadline:
                pub.send(WARM_TOPIC + BCAST_PAD)
                if rep.poll(1):
                    total = int(rep.recv())
                    break
            else:
                return
            rep.send(b"go")
            send, pack = pub.send, struct.pack
            for seq in range(total):
                send(BCAST_TOPIC + pack(">Q", seq) + BCAST_PAD)
            while time.monotonic() < deadline and not rep.poll(200):
                pass
    finally:
        ctx.destroy(linger=0)


def roleRawClient(opts):
    import zmq

    ports = json.loads(opts.ports)
    ctx = zmq.Context()
    perf = time.perf_counter
    result = {}
    try:
        if opts.kind in ("seq", "pipe", "seq-p99"):
            sock = ctx.socket(zmq.DEALER if opts.kind == "pipe" else zmq.REQ)
            sock.linger = 0
            sock.connect(f"tcp://127.0.0.1:{ports['port']}")
            run = rawPipelined if opts.kind == "pipe" else rawSequential
            run(sock, ECHO_PAYLOAD, opts.warm * (4 if opts.kind == "pipe" else 1), opts.budget)
            meter = CpuMeter(ports["pid"])
            latencies = [] if opts.kind == "seq-p99" else None
            extra = {} if latencies is None else dict(latencies=latencies)
            n, seconds = run(sock, ECHO_PAYLOAD, opts.ops, opts.budget, **extra)
            result.update(ops=n, seconds=seconds, rate=n / seconds, **meter.result(n))
            if latencies is not None:
                result.update(p99us=percentile99(latencies) * 1e6)
        elif opts.kind == "fanout":
            result.update(rawFanout(ctx, ports, opts))
        else:
            sub = ctx.socket(zmq.SUB)
            sub.linger = 0
            sub.rcvhwm = 0
            sub.subscribe(b"")
            sub.connect(f"tcp://127.0.0.1:{ports['pub']}")
            req = ctx.socket(zmq.REQ)
            req.linger = 0
            req.connect(f"tcp://127.0.0.1:{ports['rep']}")
            if not sub.poll(10000):
                raise RuntimeError("no warm-up message within 10 s")
            start = perf()
            meter = CpuMeter(ports["pid"])
            req.send(str(opts.ops).encode())
            req.recv()
            expected = delivered = lost = 0
            last = start
            sub.rcvtimeo = 2000
            recv, unpack, skip = sub.recv, struct.unpack_from, len(BCAST_TOPIC)
            while delivered < opts.ops:
                try:
                    message = recv()
                except zmq.Again:
                    result["stalled"] = True
                    break
                if message.startswith(WARM_TOPIC):
                    continue
                seq = unpack(">Q", message, skip)[0]
                if seq != expected:
                    lost += max(0, seq - expected)
                expected = seq + 1
                delivered += 1
                if not delivered & 1023:
                    last = perf()
                    if last - start > opts.budget:
                        break
            last = perf()
            req.send(b"done")
            seconds = last - start
            result.update(ops=delivered, seconds=seconds, rate=delivered / seconds, lost=lost,
                          **meter.result(delivered))
    except Exception as e:
        result["error"] = f"{type(e).__name__}: {e}"
    finally:
        ctx.destroy(linger=0)
    emit(result)


def rawFanout(ctx, ports, opts, perf=time.perf_counter):
    """FANOUT raw SUB sockets receiving a burst of N messages; as :func:`fanoutClient` reports."""
    import zmq

    subs = []
    poller = zmq.Poller()
    for _ in range(FANOUT):
        sub = ctx.socket(zmq.SUB)
        sub.linger = 0
        sub.rcvhwm = 0
        sub.subscribe(b"")
        sub.connect(f"tcp://127.0.0.1:{ports['pub']}")
        poller.register(sub, zmq.POLLIN)
        subs.append(sub)
    warm = set()
    deadline = perf() + 10
    while len(warm) < FANOUT:  # every subscriber hears the warm-up: all are connected
        if perf() > deadline:
            raise RuntimeError("not every subscriber got a warm-up message within 10 s")
        for sub, _ in poller.poll(100):
            while True:
                try:
                    sub.recv(zmq.NOBLOCK)
                except zmq.Again:
                    break
            warm.add(sub)
    req = ctx.socket(zmq.REQ)
    req.linger = 0
    req.connect(f"tcp://127.0.0.1:{ports['rep']}")
    counts = dict.fromkeys(subs, 0)
    lasts = dict.fromkeys(subs)
    start = perf()
    meter = CpuMeter(ports["pid"])
    req.send(str(opts.ops).encode())
    req.recv()
    finished, stalled, progress = 0, False, perf()
    while finished < FANOUT:
        ready = poller.poll(100)
        if not ready and perf() - progress > 2:
            stalled = True
            break
        for sub, _ in ready:
            while True:
                try:
                    message = sub.recv(zmq.NOBLOCK)
                except zmq.Again:
                    break
                if message.startswith(WARM_TOPIC):
                    continue
                counts[sub] += 1
                if counts[sub] == opts.ops:
                    finished += 1
            lasts[sub] = progress = perf()
    req.send(b"done")
    rates = [counts[s] / ((lasts[s] or perf()) - start) for s in subs]
    delivered = sum(counts.values())
    out = dict(ops=delivered, seconds=max(last or perf() for last in lasts.values()) - start,
               rate=statistics.median(rates), delivery=min(counts.values()) / opts.ops,
               lost=FANOUT * opts.ops - delivered, **meter.result(delivered))
    if stalled:
        out["stalled"] = True
    return out


def rawSequential(sock, payload, count, budget, perf=time.perf_counter, latencies=None):
    send, recv = sock.send, sock.recv
    start = perf()
    deadline = start + budget
    n = 0
    while n < count:
        began = perf()
        send(payload)
        recv()
        n += 1
        ended = perf()
        if latencies is not None:
            latencies.append(ended - began)
        if ended > deadline:
            break
    return n, perf() - start


def percentile99(values):
    values = sorted(values)
    return values[int(0.99 * (len(values) - 1))] if values else float("nan")


def rawPipelined(sock, payload, count, budget, perf=time.perf_counter):
    send, recv = sock.send, sock.recv
    start = perf()
    deadline = start + budget
    issued = completed = 0
    for _ in range(min(DEPTH, count)):
        send(payload)
        issued += 1
    stop = False
    while completed < issued:
        recv()
        completed += 1
        if not stop and issued < count:
            if not completed & 255 and perf() > deadline:
                stop = True
            else:
                send(payload)
                issued += 1
    return completed, perf() - start


# ---------------------------------------------------------------- parent


class Child:
    """A child process of this script whose stdout carries JSON lines."""

    live = []

    def __init__(self, args, timeout):
        self.timeout = timeout
        self.log = tempfile.TemporaryFile()
        cmd = [sys.executable, os.path.abspath(__file__), *args,
               "--deadline", str(int(timeout) + 1)]
        self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=self.log,
                                     stdin=subprocess.DEVNULL)
        self.buffer = b""
        Child.live.append(self)

    def readJson(self, timeout=None):
        end = time.monotonic() + (self.timeout if timeout is None else timeout)
        fd = self.proc.stdout.fileno()
        while b"\n" not in self.buffer:
            left = end - time.monotonic()
            if left <= 0:
                raise RuntimeError(f"child {self.proc.args[2:5]} timed out")
            ready, _, _ = select.select([fd], [], [], left)
            if ready:
                chunk = os.read(fd, 65536)
                if not chunk:
                    raise RuntimeError(
                        f"child {self.proc.args[2:5]} exited: {self.stderrTail()}")
                self.buffer += chunk
        line, self.buffer = self.buffer.split(b"\n", 1)
        return json.loads(line)

    def stderrTail(self, n=1500):
        self.log.seek(0)
        return self.log.read().decode("utf-8", "replace")[-n:]

    def stop(self):
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc.stdout.close()
        if self in Child.live:
            Child.live.remove(self)

    @classmethod
    def stopAll(cls):
        for child in list(cls.live):
            child.stop()


def profileArgs(args, tag):
    if not args.profile:
        return []
    os.makedirs(args.profile, exist_ok=True)
    return ["--profile", os.path.join(args.profile, f"{tag}.prof")]


def measure(args, preset, scenario, impl, roundNo):
    """One fresh server + one fresh client; the client's result dict."""
    hard = preset["budget"] * 3 + 30
    common = ["--budget", str(preset["budget"]), "--warm", str(preset["warm"])]
    tag = f"r{roundNo}-{scenario}"
    keys = ["--keys", args.keys] if scenario.endswith(CURVE_SUFFIX) else []
    if impl == "cauldron":
        ops = {"read": preset["seq"], "write": preset["seq"], "read-64": preset["pipe"],
               "read-p99": preset["seq"], "broadcast": preset["bcast"],
               "fanout-20": preset["fanout"],
               "clients-1000": IDLE_CLIENTS}[baseScenario(scenario)]
        server = Child(["--role", "dispatcher", "--scenario", scenario, *keys,
                        "--window", str(args.window),
                        "--batch", str(args.batch), *profileArgs(args, tag + "-dispatcher")],
                       hard)
        clientArgs = ["--role", "client", "--scenario", scenario, *keys, "--ops", str(ops),
                      "--ack-every", str(args.ack_every), *common,
                      *profileArgs(args, tag + "-client")]
    else:
        kind = RAW_KIND[baseScenario(scenario)]
        ops = {"seq": preset["rawSeq"], "pipe": preset["rawPipe"], "seq-p99": preset["rawSeq"],
               "pubsub": preset["rawBcast"], "fanout": preset["fanout"]}[kind]
        server = Child(["--role", "raw-server",
                        "--kind", "pub" if kind in ("pubsub", "fanout") else "echo"], hard)
        clientArgs = ["--role", "raw-client", "--kind", kind, "--ops", str(ops), *common]
    client = None
    try:
        ports = server.readJson(30)
        if "error" in ports:
            raise RuntimeError(f"{impl} server failed: {ports['error']}")
        client = Child([*clientArgs, "--ports", json.dumps(ports)], hard)
        result = client.readJson()
        if "error" in result:
            raise RuntimeError(f"{impl} {scenario}: {result['error']}\n{client.stderrTail()}")
        return result
    finally:
        if client is not None:
            client.stop()
        server.stop()


def versions():
    import zmq

    import twisted

    return (f"Python {sys.version.split()[0]}, pyzmq {zmq.__version__} "
            f"(libzmq {zmq.zmq_version()}), Twisted {twisted.__version__}")


def parent(args):
    preset = dict(PRESETS["quick" if args.quick else "full"])
    rounds = args.rounds or preset["rounds"]
    print(f"# {versions()}; {rounds} round(s); ops per loop (cauldron/raw): "
          f"read,write {preset['seq']}/{preset['rawSeq']}, "
          f"read-64 {preset['pipe']}/{preset['rawPipe']} ({DEPTH} in flight), "
          f"broadcast {preset['bcast']}/{preset['rawBcast']} (window {args.window}, "
          f"ack every {args.ack_every}), fanout {preset['fanout']} to {FANOUT} monitors; "
          f"warm-up {preset['warm']}; "
          f"budget {preset['budget']:g} s per loop", flush=True)
    rates = {s: {"cauldron": [], "raw": []} for s in SCENARIOS}
    ratios = {s: [] for s in SCENARIOS}
    lost = {s: 0 for s in SCENARIOS}
    delivery = {s: [] for s in SCENARIOS}  # cauldron's, where the scenario measures it
    scenarios = args.only or SCENARIOS
    idle = []
    cpuBefore = cpuTicks()
    for roundNo in range(1, rounds + 1):
        order = ("cauldron", "raw") if roundNo % 2 else ("raw", "cauldron")
        for scenario in scenarios:
            if scenario == "clients-1000":
                result = measure(args, preset, scenario, "cauldron", roundNo)
                note(f"# round {roundNo} {idleLine([result])}")
                idle.append(result)
                continue
            got = {}
            for impl in order:
                result = measure(args, preset, scenario, impl, roundNo)
                if "p99us" in result:  # a latency: its ratio is raw / cauldron
                    result["rate"] = 1e6 / result["p99us"]
                got[impl] = result["rate"]
                rates[scenario][impl].append(result["rate"])
                lost[scenario] += result.get("lost", 0) if impl == "cauldron" else 0
                if impl == "cauldron" and "delivery" in result:
                    delivery[scenario].append(result["delivery"])
                extra = " ".join(f"{k}={result[k]}" for k in ("lost", "stalled", "ackErrors",
                                                              "delivery")
                                 if result.get(k) is not None and result.get(k) is not False
                                 and result.get(k) != 0)
                note(f"# round {roundNo} {scenario:9} {impl:8} {result['rate']:9.0f}/s "
                     f"({result['ops']} ops in {result['seconds']:.2f} s; CPU us/op client "
                     f"{result.get('clientCpuUs')} server {result.get('serverCpuUs')}) {extra}")
                if result.get("lost") and impl == "raw":
                    note("# WARNING: raw pub/sub lost messages")
            ratios[scenario].append(got["cauldron"] / got["raw"])
    for scenario in scenarios:
        if scenario == "clients-1000":
            print(idleLine(idle), flush=True)
            continue
        if scenario == "read-p99":  # rates are 1e6 / p99 in µs
            ours, raw = (1e6 / statistics.median(rates[scenario][impl])
                         for impl in ("cauldron", "raw"))
            line = (f"{scenario} cauldron={ours:.0f}us raw={raw:.0f}us "
                    f"ratio={statistics.median(ratios[scenario]):.3f}")
            print(line, flush=True)
            continue
        line = (f"{scenario} cauldron={statistics.median(rates[scenario]['cauldron']):.0f}/s "
                f"raw={statistics.median(rates[scenario]['raw']):.0f}/s "
                f"ratio={statistics.median(ratios[scenario]):.3f}")
        if delivery[scenario]:
            line += f" delivery={min(delivery[scenario]):.3f}"
        if lost[scenario]:
            line += f" LOST={lost[scenario]}"
        print(line, flush=True)
    kept = []
    for base in PLAIN_SCENARIOS:
        if base in scenarios and base + CURVE_SUFFIX in scenarios:
            secure = statistics.median(rates[base + CURVE_SUFFIX]["cauldron"])
            kept.append(f"{base}={secure / statistics.median(rates[base]['cauldron']):.3f}")
    if kept:
        print("curve-keeps " + " ".join(kept), flush=True)
    stolen = stealShare(cpuBefore, cpuTicks())
    if stolen is not None:
        print(f"# steal {stolen:.1%}: the share of CPU time the hypervisor gave to others "
              "during the run (above a few per cent, this is no quiet machine)", flush=True)


def cpuTicks():
    """The machine's CPU time counters (the ``cpu`` line of /proc/stat), or None."""
    try:
        with open("/proc/stat") as stat:
            fields = stat.readline().split()
    except OSError:
        return None
    return [int(n) for n in fields[1:]] if fields and fields[0] == "cpu" else None


def stealShare(before, after):
    """Steal time over all CPU time between two :func:`cpuTicks` (None if unknown)."""
    if before is None or after is None or len(before) < 8:
        return None
    spent = [b - a for a, b in zip(before, after, strict=True)]
    total = sum(spent[:8])  # user nice system idle iowait irq softirq steal (guest is in user)
    return spent[7] / total if total else None


def idleLine(results):
    """``clients-1000 threads=.. kib-per-client=.. p99=..ms``: medians over rounds."""
    def median(key):
        return statistics.median(r[key] for r in results)

    return (f"clients-1000 threads={median('threads'):.0f} "
            f"kib-per-client={median('kibPerClient'):.1f} p99={median('p99ms'):.2f}ms "
            f"updates={median('ops'):.0f}")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="1 round, fewer operations")
    parser.add_argument("--rounds", type=int, help="rounds (default 3; --quick: 1)")
    parser.add_argument("--only", nargs="+", choices=SCENARIOS, help="run only these scenarios")
    parser.add_argument("--window", type=int, default=400,
                        help="broadcast: most updates not yet acknowledged (default 400)")
    parser.add_argument("--ack-every", type=int, default=100,
                        help="broadcast: the client acknowledges every N updates")
    parser.add_argument("--batch", type=int, default=500,
                        help="broadcast: most set() calls per reactor turn")
    parser.add_argument("--profile", metavar="DIR",
                        help="cProfile every cauldron process into DIR/*.prof")
    # child modes
    parser.add_argument("--role", choices=["dispatcher", "client", "raw-server", "raw-client"],
                        help=argparse.SUPPRESS)
    parser.add_argument("--scenario", default="", help=argparse.SUPPRESS)
    parser.add_argument("--keys", help=argparse.SUPPRESS)
    parser.add_argument("--kind", help=argparse.SUPPRESS)
    parser.add_argument("--ports", help=argparse.SUPPRESS)
    parser.add_argument("--ops", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--warm", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--budget", type=float, default=10.0, help=argparse.SUPPRESS)
    parser.add_argument("--deadline", type=float, default=120.0, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.role is None:
        if args.window <= args.ack_every:
            parser.error("--window must exceed --ack-every")
        with tempfile.TemporaryDirectory(prefix="cauldron-bench-keys-") as keys:
            args.keys = makeKeys(keys)
            try:
                parent(args)
            finally:
                Child.stopAll()
        return
    childSetup(args)
    {"dispatcher": roleDispatcher, "client": roleClient, "raw-server": roleRawServer,
     "raw-client": roleRawClient}[args.role](args)


if __name__ == "__main__":
    main()
