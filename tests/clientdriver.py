"""A long-lived client process that tests steer: ``python clientdriver.py CONFIG DIR [SERVICE]``.

It connects to the service (``demo`` unless named), monitors its ``TEMP``
keyword and prints, one line each, with ``time.monotonic()`` (system-wide on
Linux, so a test can compare it with its own clock):

* ``STATE connected|disconnected T`` when the dispatcher's liveness changes;
* ``VALUE ascii epoch T`` for each monitored value;
* ``READY`` once monitoring.

Then it runs the commands the test writes to ``DIR/cmd-1``, ``DIR/cmd-2``...
(one file per command, written whole then renamed into place):
``write KW VALUE TIMEOUT`` prints ``WROTE ascii`` or ``FAILED Class started=...``;
``read KW`` prints ``READ ascii`` or ``FAILED Class``; ``quit`` ends it.
"""

import os
import sys
import time

from twisted.internet import defer, task

from cauldron.client import ClientService
from cauldron.errors import CauldronError

POLL = 0.01


def say(*words):
    print(*words, flush=True)


@defer.inlineCallbacks
def nextCommand(reactor, folder, number):
    path = os.path.join(folder, f"cmd-{number}")
    while not os.path.exists(path):
        yield task.deferLater(reactor, POLL, lambda: None)
    with open(path) as f:
        return f.read().split()


@defer.inlineCallbacks
def run(remote, command):
    verb, keyword = command[0], command[1]
    try:
        if verb == "write":
            ascii = yield remote[keyword].write(command[2], timeout=float(command[3]))
            say("WROTE", ascii)
        else:
            ascii = yield remote[keyword].read()
            say("READ", ascii)
    except CauldronError as e:
        say("FAILED", type(e).__name__, f"started={getattr(e, 'started', None)}", str(e))


@defer.inlineCallbacks
def main(reactor, config, folder, name="demo"):
    client = ClientService(config, reactor=reactor, timeout=2)
    client.startService()
    remote = yield client.service(name)
    remote.addStateCallback(lambda r: say(
        "STATE", "connected" if r.connected else "disconnected", time.monotonic()))
    yield remote["TEMP"].monitor(lambda v: say("VALUE", v.ascii, v.epoch, time.monotonic()))
    say("READY")
    number = 1
    while True:
        command = yield nextCommand(reactor, folder, number)
        number += 1
        if command[0] == "quit":
            break
        yield run(remote, command)
    yield client.stopService()


if __name__ == "__main__":
    task.react(main, sys.argv[1:])
