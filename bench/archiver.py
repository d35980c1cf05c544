#!/usr/bin/env python
"""The archiver end to end: a dispatcher publishing at a steady rate, the archiver storing.

    python bench/archiver.py [--rate 5000] [--seconds 20] [--db URL ...]

A dispatcher process (direct mode, no router) sets ``--keywords`` integer
keywords in turn, ``--rate`` changes a second in all, for ``--seconds``.
This process runs an :class:`~cauldron.archive.ArchiverService` storing
them into SQLite (a temporary file) and PostgreSQL (a throwaway server from
``tests/pgserver.py``), or into each ``--db URL``.  One line per database:

    NAME stored=<n>/s rate=<offered>/s delivery=<stored / published> gaps=<n> lag=<s>

``stored`` is values stored per second over the run; ``delivery`` is the
share of published values stored as values (the rest must be inside gap
rows); ``lag`` is how long after the last change it was stored.
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
for path in (ROOT, os.path.join(ROOT, "tests")):
    if path not in sys.path:
        sys.path.insert(0, path)

TICK = 0.01


def roleDispatcher(opts):
    """Serve ``bench`` and, once told on stdin, publish at the rate asked."""
    from twisted.internet import reactor, task, threads

    from cauldron import config, keywords
    from cauldron.dispatcher import DispatcherService

    cfg = config.Config.fromMapping({
        "zmq": {"host": "127.0.0.1", "dispatch-port": 0, "broadcast-port": 0},
        "zmq-router": {"enable": "no"}})
    names = ["K%03d" % i for i in range(opts.keywords)]
    dispatcher = DispatcherService("bench", cfg, [keywords.Integer(n, initial=0) for n in names],
                                   reactor=reactor)
    perTick = max(1, int(opts.rate * TICK))
    state = {"n": 0, "end": None}

    def publish():
        for _ in range(perTick):
            state["n"] += 1
            dispatcher[names[state["n"] % len(names)]].set(state["n"])
        if time.monotonic() >= state["end"]:
            loop.stop()
            print(json.dumps({"published": state["n"], "at": time.time()}), flush=True)

    loop = task.LoopingCall(publish)

    def go(_):
        state["end"] = time.monotonic() + opts.seconds
        loop.start(TICK)

    def ready(addresses):
        print(json.dumps({"addresses": addresses}), flush=True)
        # Serve (the archiver describes and subscribes) until it says it monitors.
        threads.deferToThread(sys.stdin.readline).addCallback(go)

    dispatcher.startService()
    dispatcher.whenReady().addCallback(ready)
    reactor.run()


def measure(opts, db):
    from twisted.internet import defer, reactor, task, threads

    from cauldron import config
    from cauldron.archive import ArchiverService, history
    from cauldron.transport import portOf

    child = subprocess.Popen([sys.executable, __file__, "--role", "dispatcher", "--rate",
                              str(opts.rate), "--seconds", str(opts.seconds), "--keywords",
                              str(opts.keywords)], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                             text=True)
    try:
        dispatch, broadcast = json.loads(child.stdout.readline())["addresses"]
        cfg = config.Config.fromMapping({
            "zmq": {"host": "127.0.0.1", "dispatch-port": portOf(dispatch),
                    "broadcast-port": portOf(broadcast)},
            "zmq-router": {"enable": "no"}})
        archiver = ArchiverService(cfg, db=db, services=["bench"], reactor=reactor,
                                   discoveryInterval=0.1)

        @defer.inlineCallbacks
        def run():
            archiver.startService()
            yield archiver.whenReady()
            while len(archiver._watched) < opts.keywords:
                yield task.deferLater(reactor, 0.05, lambda: None)
            before = archiver.stored
            child.stdin.write("go\n")
            child.stdin.flush()
            started = time.time()
            done = yield threads.deferToThread(child.stdout.readline)
            published = json.loads(done)
            while archiver._buffer or archiver._inFlight:
                yield task.deferLater(reactor, 0.01, lambda: None)
            stored = time.time()
            yield archiver.stopService()
            return published, archiver.stored - before, started, stored

        result = {}

        def finish(value):
            result["value"] = value
            reactor.stop()

        reactor.callWhenRunning(lambda: run().addBoth(finish))
        reactor.run()
        published, count, started, stored = result["value"]
        records = history(db, "bench", ["K%03d" % i for i in range(opts.keywords)])
        values = sum(1 for r in records if r.kind == "value" and r.binary)
        gaps = sum(1 for r in records if r.kind == "gap")
        return {"stored": values / (stored - started), "delivery": values / published["published"],
                "gaps": gaps, "lag": stored - published["at"], "rows": count}
    finally:
        child.kill()
        child.wait()


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rate", type=int, default=5000)
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--keywords", type=int, default=50)
    parser.add_argument("--db", action="append", help="database URL (default: SQLite and "
                                                      "a throwaway PostgreSQL)")
    parser.add_argument("--role", help=argparse.SUPPRESS)
    opts = parser.parse_args()
    if opts.role == "dispatcher":
        return roleDispatcher(opts)
    targets = []
    server = None
    folder = tempfile.mkdtemp(prefix="cauldron-bench-")
    if opts.db:
        targets = [(db.split(":", 1)[0], db) for db in opts.db]
    else:
        targets.append(("sqlite", "sqlite:///" + os.path.join(folder, "archive.sqlite")))
        import pgserver

        if not pgserver.unavailable():
            server = pgserver.PostgresServer()
            server.start()
            targets.append(("postgresql", server.createDatabase()))
    print("# rate %d/s over %d keywords for %g s" % (opts.rate, opts.keywords, opts.seconds))
    try:
        for name, db in targets:
            # Each database in a process of its own: a reactor runs once per process.
            out = subprocess.run([sys.executable, "-c", "import sys, json; sys.path[:0] = %r; "
                                  "import archiver as a; import argparse; "
                                  "print(json.dumps(a.measure(argparse.Namespace(**%r), %r)))"
                                  % ([os.path.dirname(__file__), ROOT, os.path.join(ROOT, "tests")],
                                     vars(opts), db)],
                                 capture_output=True, text=True, check=True)
            r = json.loads(out.stdout.strip().splitlines()[-1])
            print("%s stored=%.0f/s rate=%d/s delivery=%.3f gaps=%d lag=%.2fs"
                  % (name, r["stored"], opts.rate, r["delivery"], r["gaps"], r["lag"]),
                  flush=True)
    finally:
        if server is not None:
            server.destroy()


if __name__ == "__main__":
    main()
