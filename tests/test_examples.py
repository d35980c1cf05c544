"""The embedding examples in docs/examples/, run as a user would: in subprocesses.

``dispatcher.tac`` runs under ``twistd -n -y`` in direct mode (no router) on
ports that were free a moment ago; once its log says it serves, the two
client examples run against it with the same ``CAULDRON_CONFIG``.  Every
subprocess is killed at cleanup.
"""

import os
import queue
import re
import signal
import socket
import subprocess
import sys
import threading
import time

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
EXAMPLES = os.path.join(REPO, "docs", "examples")
#: how long anything may take before a test gives up (never a bare sleep)
DEADLINE = 30.0
#: ``twistd`` from this interpreter (``python -m twisted`` is ``twist``, which has no ``-y``)
TWISTD = [
    sys.executable,
    "-c",
    "import sys; from twisted.scripts.twistd import run; sys.argv[0] = 'twistd'; run()",
]
READY = re.compile(r"dispatcher example serving \d+ keywords: dispatch (\S+), broadcast (\S+)")


def freePorts(n=2):
    """Ports free right now: bound together (so distinct) on 127.0.0.1, then closed."""
    sockets = [socket.socket() for _ in range(n)]
    try:
        for s in sockets:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


def environment(configPath):
    """This checkout importable, the example configuration in CAULDRON_CONFIG."""
    env = dict(os.environ)
    env["CAULDRON_CONFIG"] = configPath
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [REPO, env.get("PYTHONPATH")]))
    env["PYTHONUNBUFFERED"] = "1"
    return env


def _resetSigint():
    # A shell running us in the background may ignore SIGINT; children inherit that.
    signal.signal(signal.SIGINT, signal.SIG_DFL)


class Dispatcher:
    """``twistd -n -y dispatcher.tac``, its output drained by a thread."""

    def __init__(self, cwd, env):
        self.popen = subprocess.Popen(
            [*TWISTD, "-n", "--pidfile=", "-y", os.path.join(EXAMPLES, "dispatcher.tac")],
            cwd=cwd, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT, text=True, preexec_fn=_resetSigint,
        )
        self.lines = queue.Queue()
        self.output = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self):
        for line in self.popen.stdout:
            self.output.append(line)
            self.lines.put(line)
        self.lines.put(None)

    def waitUntilServing(self):
        """The bound addresses, once the log says so; fails at the deadline or on exit."""
        end = time.monotonic() + DEADLINE
        while True:
            left = end - time.monotonic()
            if left <= 0:
                raise AssertionError("dispatcher.tac not serving:\n" + "".join(self.output))
            try:
                line = self.lines.get(timeout=left)
            except queue.Empty:
                continue
            if line is None:
                raise AssertionError("dispatcher.tac exited %s:\n%s"
                                     % (self.popen.wait(DEADLINE), "".join(self.output)))
            match = READY.search(line)
            if match:
                return match.groups()

    def kill(self):
        if self.popen.poll() is None:
            self.popen.kill()
        self.popen.wait(DEADLINE)
        self._reader.join(DEADLINE)
        self.popen.stdout.close()


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
    env = environment(str(configPath))
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
        timeout=DEADLINE, preexec_fn=_resetSigint,
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
