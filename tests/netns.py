"""Hosts of our own for multi-host fault tests: Linux network namespaces on a bridge.

A :class:`Network` builds one namespace per host, each joined to a private
bridge by a veth pair and given an address on a private /24, with loopback
up.  Processes run inside a host through ``ip netns exec`` with the checkout
on PYTHONPATH (``processes.environment()``).

A host is **cut off** by a ``blackhole`` qdisc on both ends of its veth
pair: everything it sends and everything sent to it is dropped, and the
senders are told the packet went out.  Connections are neither reset nor
refused; TCP retransmits into the void and delivers when the cut heals,
exactly as across a failed switch.  The blackhole qdisc is built into every
kernel with traffic control (no module such as netem is needed), and unlike
detaching the veth from the bridge it leaves no path through the root
namespace's routing.

Everything is named ``cmh<pid in hex>-...`` after the run that made it.
:meth:`Network.teardown` (also run at exit for networks still up) kills the
processes, then removes veths, bridge and namespaces; :func:`removeLeftovers`
removes what runs that died without tearing down left behind, and never
touches the names of a run still alive.
"""

import atexit
import contextlib
import ctypes
import os
import queue
import re
import shutil
import signal
import subprocess
import threading
import time

from processes import DEADLINE, Process, environment

__all__ = [
    "Network",
    "HostProcess",
    "TimeLimit",
    "timeLimit",
    "unavailable",
    "removeLeftovers",
    "PREFIX",
]

#: every name we create starts with this, then our pid in hex and a dash
PREFIX = "cmh"
_NAMED = re.compile(r"^%s([0-9a-f]+)-" % PREFIX)
#: the tag of this run's names
TAG = "%s%x" % (PREFIX, os.getpid())
#: seconds an ``ip``/``tc`` command may take
COMMAND_TIMEOUT = 20.0

_PR_SET_PDEATHSIG = 1
try:
    _prctl = ctypes.CDLL(None, use_errno=True).prctl
except (OSError, AttributeError):  # not Linux: unavailable() says so anyway
    _prctl = None


def _childSetup():
    """In the child (a ``preexec_fn``): default SIGINT, and die with the test run.

    A run killed with SIGKILL cannot clean up; its hosts' processes at least
    go with it (the signal survives ``ip netns exec``'s exec).
    """
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    if _prctl is not None:
        _prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)


class CommandFailed(Exception):
    """An ``ip`` or ``tc`` command failed (its stderr is the message)."""


def command(*argv, check=True):
    """Run an ``ip``/``tc`` command; its stdout.  CommandFailed if it fails and ``check``."""
    result = subprocess.run(argv, stdin=subprocess.DEVNULL, capture_output=True, text=True,
                            timeout=COMMAND_TIMEOUT)
    if check and result.returncode != 0:
        raise CommandFailed("%s: %s" % (" ".join(argv), result.stderr.strip()))
    return result.stdout


# -- can we? ---------------------------------------------------------------------


def unavailable():
    """Why namespaces cannot be used here (one line), or None if they can.

    Probes everything a Network needs inside a scratch namespace, so a
    failure leaves nothing in the root namespace.
    """
    if not hasattr(os, "geteuid") or os.geteuid() != 0:
        return "multi-host tests need root (network namespaces)"
    for tool in ("ip", "tc"):
        if shutil.which(tool) is None:
            return "multi-host tests need %r (iproute2)" % (tool,)
    probe = "%s-probe" % (TAG,)
    try:
        command("ip", "netns", "add", probe)
    except (CommandFailed, OSError, subprocess.SubprocessError) as e:
        return "cannot create network namespaces: %s" % (e,)
    try:
        command("ip", "-n", probe, "link", "add", "pb", "type", "bridge")
        command("ip", "-n", probe, "link", "add", "pv", "type", "veth", "peer", "name", "pp")
        command("ip", "-n", probe, "link", "set", "pv", "master", "pb")
        command("tc", "-n", probe, "qdisc", "add", "dev", "pv", "root", "blackhole")
    except (CommandFailed, OSError, subprocess.SubprocessError) as e:
        return "cannot build a network in a namespace: %s" % (e,)
    finally:
        command("ip", "netns", "del", probe, check=False)
    return None


# -- leftovers -----------------------------------------------------------------


def _alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _ours(name):
    """The pid of the run that made ``name``, or None if it is not one of our names."""
    match = _NAMED.match(name)
    return int(match.group(1), 16) if match else None


def namespaces():
    """Names of every named network namespace."""
    return [line.split()[0] for line in command("ip", "netns", "list").splitlines()
            if line.strip()]


def links():
    """Names of every link in the root namespace (without the ``@peer`` part)."""
    names = []
    for line in command("ip", "-o", "link", "show").splitlines():
        fields = line.split(":", 2)
        if len(fields) >= 2:
            names.append(fields[1].strip().split("@", 1)[0])
    return names


def killNamespace(namespace):
    """SIGKILL every process in ``namespace`` (children our processes left, say)."""
    for pid in command("ip", "netns", "pids", namespace, check=False).split():
        try:
            os.kill(int(pid), signal.SIGKILL)
        except (ProcessLookupError, ValueError):
            pass


def removeLeftovers():
    """Remove namespaces and links of earlier runs that died; names of live runs stay."""
    def dead(name):
        pid = _ours(name)
        return pid is not None and pid != os.getpid() and not _alive(pid)

    staleNamespaces = [ns for ns in namespaces() if dead(ns)]
    for ns in staleNamespaces:
        killNamespace(ns)
    for link in links():
        if dead(link):
            command("ip", "link", "del", link, check=False)
    for ns in staleNamespaces:
        command("ip", "netns", "del", ns, check=False)


# -- processes inside a host --------------------------------------------------------


class HostProcess(Process):
    """A :class:`processes.Process` run inside a host, optionally fed on stdin.

    :ivar host: the host's name.
    :ivar endedAt: ``time.monotonic()`` when its output ended (it exited), or None.
    :ivar times: when each line of ``output`` was read (``time.monotonic()``).
    """

    def __init__(self, host, argv, cwd, env=None, stdin=False):
        # As Process.__init__, plus stdin and a parent-death signal.
        self.host = host
        self.argv = argv
        self.started = time.monotonic()
        self.endedAt = None
        self.popen = subprocess.Popen(
            argv, cwd=cwd, env=environment() if env is None else env,
            stdin=subprocess.PIPE if stdin else subprocess.DEVNULL,
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
            preexec_fn=_childSetup,
        )
        self.pid = self.popen.pid
        self.lines = queue.Queue()
        self.output = []
        self.times = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self):
        try:
            for line in self.popen.stdout:
                self.times.append(time.monotonic())
                self.output.append(line)
                self.lines.put(line)
        finally:
            self.endedAt = time.monotonic()
            self.lines.put(None)

    def linesAt(self, pattern):
        """``[(time read, line)]`` of every output line so far matching ``pattern``."""
        seen = list(zip(self.times, self.output, strict=False))  # the reader may be mid-line
        return [(at, line.rstrip("\n")) for at, line in seen if pattern.search(line)]

    def send(self, line):
        """Write one line to its stdin."""
        self.popen.stdin.write(line + "\n")
        self.popen.stdin.flush()

    def running(self):
        return self.popen.poll() is None

    def kill(self):
        if self.popen.stdin is not None:
            try:
                self.popen.stdin.close()
            except OSError:
                pass
        super().kill()


# -- time limits -------------------------------------------------------------------


class TimeLimit(BaseException):
    """A test ran past its time limit (a BaseException: no ``except Exception`` hides it)."""


@contextlib.contextmanager
def timeLimit(seconds, what="the test"):
    """Raise :class:`TimeLimit` in the main thread if the block runs past ``seconds``.

    Blocking waits (a queue, a subprocess) are interrupted too.  The alarm is
    off again when the block ends, so cleanup after it is never cut short.
    """

    def expired(signum, frame):
        raise TimeLimit("%s ran past its limit of %g s" % (what, seconds))

    previous = signal.signal(signal.SIGALRM, expired)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


# -- the network ----------------------------------------------------------------------


_live = set()


def _tearDownAtExit():
    for network in list(_live):
        network.teardown()


atexit.register(_tearDownAtExit)


class Network:
    """Hosts on one bridge: ``Network(["router", "disp-a"], "10.213.7")``.

    Host ``i`` (from 0) has address ``SUBNET.(i + 1)``, namespace
    ``cmh<pid>-<n>-<host>`` (``n`` counts the networks of this run) and the
    veth pair ``cmh<pid>-<n>v<i>`` (on the bridge, in the root namespace) /
    ``eth0`` (in the host).  Use as a context manager,
    or call :meth:`create` and :meth:`teardown` (idempotent).
    """

    _count = 0

    def __init__(self, hosts, subnet="10.213.7"):
        Network._count += 1
        self.tag = "%s-%d" % (TAG, Network._count)  # one run may build several networks
        self.hosts = list(hosts)
        self.subnet = subnet
        self.bridge = "%sb" % (self.tag,)
        self.processes = []
        self.cutOff = set()
        self._created = []  # ("link" | "netns", name), in creation order

    def __enter__(self):
        self.create()
        return self

    def __exit__(self, *exc):
        self.teardown()
        return False

    # -- names

    def _index(self, host):
        try:
            return self.hosts.index(host)
        except ValueError:
            raise KeyError("no host %r in %s" % (host, self.hosts)) from None

    def ip(self, host):
        """The host's address."""
        return "%s.%d" % (self.subnet, self._index(host) + 1)

    def namespace(self, host):
        return "%s-%s" % (self.tag, self.hosts[self._index(host)])

    def veth(self, host):
        """The host's veth end on the bridge (root namespace)."""
        return "%sv%d" % (self.tag, self._index(host))

    # -- building and tearing down

    def create(self):
        """Build bridge, namespaces and links; torn down again if any step fails."""
        _live.add(self)
        try:
            command("ip", "link", "add", self.bridge, "type", "bridge")
            self._created.append(("link", self.bridge))
            command("ip", "link", "set", self.bridge, "up")
            for host in self.hosts:
                ns, veth = self.namespace(host), self.veth(host)
                command("ip", "netns", "add", ns)
                self._created.append(("netns", ns))
                command("ip", "link", "add", veth, "type", "veth", "peer", "name", "eth0",
                        "netns", ns)
                self._created.append(("link", veth))
                command("ip", "link", "set", veth, "master", self.bridge, "up")
                command("ip", "-n", ns, "addr", "add", "%s/24" % self.ip(host), "dev", "eth0")
                command("ip", "-n", ns, "link", "set", "eth0", "up")
                command("ip", "-n", ns, "link", "set", "lo", "up")
        except BaseException:
            self.teardown()
            raise
        return self

    def teardown(self):
        """Kill every process, then delete links, bridge and namespaces (never raises)."""
        for process in self.processes:
            try:
                process.kill()
            except Exception:
                pass
        self.processes = []
        for kind, name in reversed(self._created):
            if kind == "netns":
                killNamespace(name)
        # Deleting our veth end deletes its peer at once; a namespace's own
        # cleanup is asynchronous, so links go first, explicitly.
        for kind, name in reversed(self._created):
            if kind == "link":
                command("ip", "link", "del", name, check=False)
        for kind, name in reversed(self._created):
            if kind == "netns":
                command("ip", "netns", "del", name, check=False)
        self._created = []
        self.cutOff.clear()
        _live.discard(self)

    # -- faults

    def cut(self, host):
        """Cut ``host`` off from every other host: packets silently dropped both ways."""
        command("tc", "qdisc", "replace", "dev", self.veth(host), "root", "blackhole")
        command("tc", "-n", self.namespace(host), "qdisc", "replace", "dev", "eth0", "root",
                "blackhole")
        self.cutOff.add(host)

    def heal(self, host):
        """Undo :meth:`cut`: packets flow again (TCP delivers what it was retransmitting)."""
        command("tc", "-n", self.namespace(host), "qdisc", "del", "dev", "eth0", "root",
                check=False)
        command("tc", "qdisc", "del", "dev", self.veth(host), "root", check=False)
        self.cutOff.discard(host)

    # -- running things on a host

    def execArgv(self, host, argv):
        return ["ip", "netns", "exec", self.namespace(host), *argv]

    def start(self, host, argv, cwd, env=None, stdin=False):
        """A :class:`HostProcess` running ``argv`` on ``host``; killed at teardown."""
        process = HostProcess(host, self.execArgv(host, argv), cwd=str(cwd), env=env,
                              stdin=stdin)
        self.processes.append(process)
        return process

    def run(self, host, argv, cwd, env=None, timeout=DEADLINE):
        """Run ``argv`` on ``host`` to completion; the CompletedProcess (stdout, stderr apart)."""
        return subprocess.run(
            self.execArgv(host, argv), cwd=str(cwd),
            env=environment() if env is None else env,
            stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=timeout,
            preexec_fn=_childSetup,
        )
