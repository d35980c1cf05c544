#!/usr/bin/env python
"""Instructions per keyword operation, cauldron against raw pyzmq, counted by valgrind.

    python bench/instructions.py [--only read write read-64] [--ops 3000]

Rates on a shared VM swing by a tenth from one run to the next; the
instructions a process executes per operation do not (two runs agree within
about 1%).  So a change to a hot path is best judged by this count, and
its effect on rates by ``keywords.py`` over several rounds.  Run it alone:
under other load a reply is more often already waiting when a process
looks for one, which spares it a reactor turn (a client's read counted
94k instead of 121k while another measurement ran).

Each measurement runs ``keywords.py``'s own server and client roles, one of
them under ``valgrind --tool=cachegrind``, twice: with ``--ops`` operations
more in the second run than in the first.  The difference in instructions,
divided by that number, is the cost of one operation in that process, all
its threads counted (libzmq's I/O thread too), start-up and warm-up left
out.  The kernel's work (system calls, TCP) is not counted.  Output, one
line per scenario and side:

    NAME SIDE cauldron=<k> raw=<k> ratio=<cauldron / raw>   (thousands per operation)

``read``, ``write`` and ``read-64`` are ``keywords.py``'s scenarios; raw pyzmq
does the same echo for reads and writes.  Needs valgrind (``apt-get install
valgrind``); about 20 s a measurement.
"""

import argparse
import json
import os
import re
import shutil
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
KEYWORDS = os.path.join(HERE, "keywords.py")
SCENARIOS = ("read", "write", "read-64")
RAW_KIND = {"read": "seq", "write": "seq", "read-64": "pipe"}
BASE_OPS = 1000
WARM = 200
VALGRIND = ["valgrind", "--tool=cachegrind", "--cache-sim=no", "--cachegrind-out-file=/dev/null"]


def roles(impl, scenario, ops):
    """The server's and the client's command lines (the client's without --ports)."""
    script = [sys.executable, KEYWORDS, "--deadline", "600"]
    common = ["--ops", str(ops), "--warm", str(WARM), "--budget", "500"]
    if impl == "raw":
        return ([*script, "--role", "raw-server", "--kind", "echo"],
                [*script, "--role", "raw-client", "--kind", RAW_KIND[scenario], *common])
    return ([*script, "--role", "dispatcher", "--scenario", scenario],
            [*script, "--role", "client", "--scenario", scenario, *common])


def instructions(impl, scenario, side, ops):
    """Instructions the ``side`` process executed over a whole run of ``ops`` operations."""
    serverCmd, clientCmd = roles(impl, scenario, ops)
    server = subprocess.Popen((VALGRIND if side == "server" else []) + serverCmd,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              stdin=subprocess.DEVNULL, text=True)
    try:
        ports = server.stdout.readline()
        if not ports:
            raise RuntimeError(f"{impl} server did not start: {server.stderr.read()[-500:]}")
        client = subprocess.run(
            (VALGRIND if side == "client" else []) + clientCmd + ["--ports", ports.strip()],
            capture_output=True, text=True, stdin=subprocess.DEVNULL, timeout=900)
        result = json.loads(client.stdout.strip().splitlines()[-1])
        if "error" in result:
            raise RuntimeError(f"{impl} {scenario}: {result['error']}")
    finally:
        server.terminate()
        _, serverErr = server.communicate(timeout=60)
    report = client.stderr if side == "client" else serverErr
    found = re.search(r"I\s+refs:\s+([\d,]+)", report)
    if found is None:
        raise RuntimeError(f"valgrind gave no count for the {impl} {side}: {report[-500:]}")
    return int(found.group(1).replace(",", ""))


def perOperation(impl, scenario, side, ops):
    first = instructions(impl, scenario, side, BASE_OPS)
    second = instructions(impl, scenario, side, BASE_OPS + ops)
    return (second - first) / ops


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", nargs="+", choices=SCENARIOS, default=list(SCENARIOS))
    parser.add_argument("--ops", type=int, default=3000,
                        help="operations more in the second run (default 3000)")
    args = parser.parse_args()
    if shutil.which("valgrind") is None:
        sys.exit("instructions.py: valgrind is not installed (apt-get install valgrind)")
    for scenario in args.only:
        for side in ("client", "server"):
            counts = {impl: perOperation(impl, scenario, side, args.ops)
                      for impl in ("cauldron", "raw")}
            print(f"{scenario} {side} cauldron={counts['cauldron'] / 1000:.1f}k "
                  f"raw={counts['raw'] / 1000:.1f}k "
                  f"ratio={counts['cauldron'] / counts['raw']:.2f}", flush=True)


if __name__ == "__main__":
    main()
