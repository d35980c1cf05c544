"""Helpers for tests that run cauldron in subprocesses, as a user would.

Subprocesses import this checkout (not an installed copy), write unbuffered
output that a thread drains, and take SIGINT by default.  Nothing sleeps
blindly: a wait reads output, or polls, until ``DEADLINE``.
"""

import os
import queue
import signal
import socket
import subprocess
import sys
import threading
import time

#: the checkout these tests belong to
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
#: how long anything may take before a test gives up (never a bare sleep)
DEADLINE = 30.0
#: ``twistd`` from this interpreter (``python -m twisted`` is ``twist``, which has no ``-y``)
TWISTD = [
    sys.executable,
    "-c",
    "import sys; from twisted.scripts.twistd import run; sys.argv[0] = 'twistd'; run()",
]


def environment(**overrides):
    """The subprocess environment: this checkout importable, unbuffered output.

    ``CAULDRON_CONFIG`` is removed (no stray config) unless given in ``overrides``,
    which are set last.
    """
    env = dict(os.environ)
    env.pop("CAULDRON_CONFIG", None)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [REPO, env.get("PYTHONPATH")]))
    env["PYTHONUNBUFFERED"] = "1"
    env.update(overrides)
    return env


def resetSigint():
    """Restore default SIGINT handling (a ``preexec_fn``).

    A shell running us in the background may ignore SIGINT; children inherit that.
    """
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def freePorts(n=2):
    """``n`` distinct ports on 127.0.0.1, bound together then closed: free a moment ago."""
    sockets = [socket.socket() for _ in range(n)]
    try:
        for s in sockets:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


class Process:
    """A subprocess whose output is drained by a thread (a full pipe would block it).

    stdout and stderr are merged; ``env`` defaults to ``environment()``.
    """

    def __init__(self, argv, cwd, env=None):
        self.argv = argv
        self.started = time.monotonic()
        self.popen = subprocess.Popen(
            argv, cwd=cwd, env=environment() if env is None else env,
            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
            text=True, preexec_fn=resetSigint,
        )
        self.pid = self.popen.pid
        self.lines = queue.Queue()
        self.output = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self):
        for line in self.popen.stdout:
            self.output.append(line)
            self.lines.put(line)
        self.lines.put(None)

    def waitForLine(self, pattern, deadline=DEADLINE):
        """The first match of ``pattern`` in further output; fails at the deadline or exit."""
        end = time.monotonic() + deadline
        while True:
            left = end - time.monotonic()
            if left <= 0:
                raise AssertionError("no %r in output of %s:\n%s"
                                     % (pattern.pattern, self.argv, self.text()))
            try:
                line = self.lines.get(timeout=left)
            except queue.Empty:
                continue
            if line is None:
                self.lines.put(None)  # later waits fail at once too
                raise AssertionError("%s exited %s without %r:\n%s"
                                     % (self.argv, self.popen.wait(DEADLINE), pattern.pattern,
                                        self.text()))
            match = pattern.search(line)
            if match:
                return match

    def wait(self, timeout=DEADLINE):
        """The exit status, once the process has ended and its output is all read."""
        status = self.popen.wait(timeout=timeout)
        self._reader.join(timeout)
        return status

    def signal(self, signum):
        """Send ``signum`` if the process is still running."""
        if self.popen.poll() is None:
            self.popen.send_signal(signum)

    def text(self):
        """All output so far."""
        return "".join(self.output)

    def kill(self):
        """SIGKILL it if still running, reap it and close its pipe (for cleanup)."""
        if self.popen.poll() is None:
            self.popen.kill()
        self.popen.wait(DEADLINE)
        self._reader.join(DEADLINE)
        self.popen.stdout.close()


def cauldron(*args, timeout=DEADLINE, cwd=None, env=None):
    """Run ``python -m cauldron ARGS``; the CompletedProcess (``env`` defaults as Process's)."""
    return subprocess.run(
        [sys.executable, "-m", "cauldron", *args],
        cwd=cwd,
        env=environment() if env is None else env,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=timeout,
        preexec_fn=resetSigint,
    )
