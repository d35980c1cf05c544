"""The embedding examples in docs/examples/, run as a user would: in subprocesses.

``dispatcher.tac`` runs under ``twistd -n -y`` in direct mode (no router) on
ports that were free a moment ago; once its log says it serves, the two
client examples run against it with the same ``CAULDRON_CONFIG``.  Every
subprocess is killed at cleanup.
"""

import os
import re
import subprocess
import sys

import pytest
from processes import DEADLINE, REPO, TWISTD, Process, environment, freePorts, resetSigint

EXAMPLES = os.path.join(REPO, "docs", "examples")
READY = re.compile(r"dispatcher example serving \d+ keywords: dispatch (\S+), broadcast (\S+)")


class Dispatcher(Process):
    """``twistd -n -y dispatcher.tac``, its output drained by a thread."""

    def __init__(self, cwd, env):
        super().__init__(
            [*TWISTD, "-n", "--pidfile=", "-y", os.path.join(EXAMPLES, "dispatcher.tac")],
            cwd, env,
        )

    def waitUntilServing(self):
        """The bound addresses, once the log says so; fails at the deadline or on exit."""
        return self.waitForLine(READY).groups()


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """A running dispatcher.tac and the environment that reaches it."""
    tmp = tmp_path_factory.mktemp("examples")
    dispatchPort, broadcastPort = freePorts()
    configPath = tmp / "cauldron.ini"
    configPath.write_text(
        "[zmq]\nhost = 127.0.0.1\ndispatch-port = %d\nbroadcast-port = %d\n"
        "[zmq-router]\nenable = no\n" % (dispatchPort, broadcastPort)
    )
    env = environment(CAULDRON_CONFIG=str(configPath))
    dispatcher = Dispatcher(str(tmp), env)
    try:
        addresses = dispatcher.waitUntilServing()
        assert addresses == ("tcp://127.0.0.1:%d" % dispatchPort,
                             "tcp://127.0.0.1:%d" % broadcastPort)
        yield env, str(tmp)
    finally:
        dispatcher.kill()


def runExample(served, name):
    env, cwd = served
    return subprocess.run(
        [sys.executable, os.path.join(EXAMPLES, name)],
        cwd=cwd, env=env, stdin=subprocess.DEVNULL, capture_output=True, text=True,
        timeout=DEADLINE, preexec_fn=resetSigint,
    )


def test_clientTwisted(served):
    """The Deferred client monitors, writes (rounded by prewrite), waits and exits 0."""
    result = runExample(served, "client_twisted.py")
    assert result.returncode == 0, result
    lines = result.stdout.splitlines()
    assert re.fullmatch(r"monitor: BRIGHTNESS = \d+\.\d+", lines[0]), lines
    assert "monitor: BRIGHTNESS = 75.0" in lines
    assert "wrote BRIGHTNESS = 75.0" in lines
    assert "waitFor BRIGHTNESS == 75.0: True" in lines
    assert lines[-1] == "wrote LAMP = 1"


def test_blockingScript(served):
    """The ktl script reads, writes (a slow write included), waits and sees an error."""
    result = runExample(served, "blocking_script.py")
    assert result.returncode == 0, result
    lines = result.stdout.splitlines()
    assert re.fullmatch(r"UPTIME = \d+ s", lines[0]), lines
    assert re.fullmatch(r"LAMP = [01]", lines[1]), lines
    assert lines[2:] == [
        "wrote LAMP = 0",
        "wrote BRIGHTNESS = 25.0",
        "waitFor: True",
        "refused: BRIGHTNESS: 500.0 is above the maximum 100.0",
    ]
