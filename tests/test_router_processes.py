"""The router, dispatchers and the ``cauldron`` command as real, separate processes.

Every router and dispatcher runs in its own process (``twistd -n`` or
``Cauldron-router-zmq``), every command as ``python -m cauldron``; each test
picks a free router port and a random lease range, all on 127.0.0.1.  Nothing
sleeps blindly: a test polls a condition (a log line, ``cauldron services``'s
output) until a deadline.  Every process a test starts, including a router a
dispatcher spawned, is ended at cleanup.
"""

import configparser
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time

import pytest
from helpers import randomLeaseStart
from processes import DEADLINE, TWISTD, Process, cauldron, environment, freePorts

#: what the issue allows for expiry and repopulation
HEAL_DEADLINE = 20.0
HEARTBEAT = "0.2"
#: twistd in the foreground, without a pid file
FOREGROUND = [*TWISTD, "-n", "--pidfile="]
ROUTER_MAIN = [sys.executable, "-c", "from cauldron.cli import routerMain; routerMain()"]
LISTENING = re.compile(r"router listening at (?P<address>tcp://127\.0\.0\.1:\d+)")
READY = re.compile(
    r"cauldron-dispatcher: serving '(?P<name>[^']*)': "
    r"dispatch tcp://[^:]+:(?P<dispatch>\d+), broadcast tcp://[^:]+:(?P<broadcast>\d+)"
)
#: one line of ``cauldron services``: one per dispatcher of each service
SERVICE_LINE = re.compile(
    r"^(?P<name>\S+)\s+(?P<dispatcher>\S+)\s+(?P<host>\S+)\s+(?P<dispatch>\d+)\s+"
    r"(?P<broadcast>\d+)\s+(?P<age>\d+\.\ds)\s+(?P<keywords>\d+) keywords?$"
)


# -- helpers ---------------------------------------------------------------------


def _bindable(port):
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


def leaseRange(width=40):
    """``(first, last)``: a random range below the ephemeral ports whose first pair is free."""
    for _ in range(100):
        first = randomLeaseStart(width)
        if _bindable(first) and _bindable(first + 1):
            return first, first + width
    raise AssertionError("no free port pair found below the ephemeral ports")


class Setup:
    """One test's configuration file, keyword files and router address."""

    def __init__(self, tmp_path, width=40, allowSpawn=False, process="thread", **router):
        self.tmp = tmp_path
        self.port = freePorts(1)[0]
        self.first, self.last = leaseRange(width)
        self.address = "tcp://127.0.0.1:%d" % self.port
        values = {
            "host": "127.0.0.1", "port": self.port, "first-port": self.first,
            "last-port": self.last, "allow-spawn": "yes" if allowSpawn else "no",
            "process": process,
        }
        values.update(router)
        self.config = self.writeConfig("cauldron.ini", values)

    def writeConfig(self, name, routerValues):
        path = self.tmp / name
        lines = ["[zmq]", "host = 127.0.0.1", "[zmq-router]"]
        lines += ["%s = %s" % item for item in routerValues.items()]
        path.write_text("\n".join(lines) + "\n")
        return str(path)

    def keywords(self, value=20.0):
        """A keyword file whose TEMP starts at ``value``."""
        path = self.tmp / ("keywords-%s.toml" % value)
        path.write_text('[TEMP]\ntype = "double"\ninitial = %r\n' % (value,))
        return str(path)


def parseServices(stdout):
    """``{name: (dispatchPort, broadcastPort)}`` from ``cauldron services`` output.

    The services of these tests have one dispatcher each, named after them,
    serving the one keyword of :meth:`Setup.keywords`.
    """
    listed = {}
    for line in stdout.splitlines():
        match = SERVICE_LINE.match(line)
        assert match, "bad services line %r in:\n%s" % (line, stdout)
        assert match.group("host") == "127.0.0.1", line
        assert match.group("dispatcher") == match.group("name"), line
        assert match.group("keywords") == "1", line
        listed[match.group("name")] = (int(match.group("dispatch")),
                                       int(match.group("broadcast")))
    return listed


def poll(attempt, check, deadline=DEADLINE, what="condition"):
    """Call ``attempt()`` until ``check(result)`` is true; the result; fails at the deadline."""
    end = time.monotonic() + deadline
    while True:
        result = attempt()
        if check(result):
            return result
        if time.monotonic() > end:
            raise AssertionError("%s not reached within %g s; last: %r" % (what, deadline, result))
        time.sleep(0.1)  # between attempts of a polled condition, not a wait for it


def spawnedRouters(configPath):
    """Pids of live ``routerMain`` processes started for the router of ``configPath``.

    A dispatcher starts them with a config file of its own, named after the
    router's port (``cauldron-router-PORT-*.ini``).
    """
    port = configparser.ConfigParser()
    port.read(configPath)
    marker = "cauldron-router-%s-" % (port["zmq-router"]["port"],)
    pids = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open("/proc/%s/cmdline" % entry, "rb") as f:
                argv = f.read().decode(errors="replace").split("\0")
            with open("/proc/%s/stat" % entry) as f:
                state = f.read().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if (state != "Z" and any(marker in a for a in argv)
                and any("routerMain" in a for a in argv)):
            pids.append(int(entry))
    return pids


class Processes:
    """Starts the processes of one test and ends them all at cleanup."""

    def __init__(self, setup):
        self.setup = setup
        self.started = []

    def start(self, argv):
        process = Process(argv, cwd=str(self.setup.tmp))
        self.started.append(process)
        return process

    def twistdRouter(self, config=None, *extra):
        return self.start([*FOREGROUND, "cauldron-router", "-c", config or self.setup.config,
                           *extra])

    def router(self, config=None):
        """A twistd router, once it listens."""
        process = self.twistdRouter(config)
        process.waitForLine(LISTENING)
        return process

    def twistdDispatcher(self, name, value=20.0, config=None):
        return self.start([*FOREGROUND, "cauldron-dispatcher", "-c", config or self.setup.config,
                           "-s", name, "-k", self.setup.keywords(value),
                           "--heartbeat", HEARTBEAT])

    def dispatcher(self, name, value=20.0, config=None):
        """A twistd dispatcher, once it serves; ``(process, (dispatchPort, broadcastPort))``."""
        process = self.twistdDispatcher(name, value, config)
        ready = process.waitForLine(READY)
        assert ready.group("name") == name
        return process, (int(ready.group("dispatch")), int(ready.group("broadcast")))

    def cleanup(self):
        for process in self.started:
            process.kill()
        for pid in spawnedRouters(self.setup.config):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        # A router started as a process logs to the temporary folder.
        port = configparser.ConfigParser()
        port.read(self.setup.config)
        log = os.path.join(tempfile.gettempdir(),
                           "cauldron-router-%s.log" % (port["zmq-router"]["port"],))
        if os.path.exists(log):
            os.unlink(log)


@pytest.fixture
def setup(tmp_path):
    return Setup(tmp_path)


@pytest.fixture
def processes(setup):
    started = Processes(setup)
    try:
        yield started
    finally:
        started.cleanup()


def services(setup, timeout=2):
    return cauldron("services", "-c", setup.config, "--timeout", str(timeout))


def show(setup, name, timeout=2):
    return cauldron("show", "-c", setup.config, "--timeout", str(timeout), "-s", name, "TEMP")


def listedServices(setup):
    """What the router lists (the command must succeed)."""
    result = services(setup)
    assert result.returncode == 0 and result.stderr == "", result
    return parseServices(result.stdout)


def waitForListing(setup, check, deadline=DEADLINE, what="listing"):
    """Poll ``cauldron services`` until its parsed listing satisfies ``check``."""
    def attempt():
        result = services(setup)
        if result.returncode != 0:
            return None
        return parseServices(result.stdout)

    return poll(attempt, lambda listed: listed is not None and check(listed), deadline, what)


def assertShows(setup, name, value):
    result = show(setup, name)
    assert (result.returncode, result.stdout, result.stderr) == (
        0, "TEMP = %s\n" % value, ""), result


def assertOneLineError(result, *fragments):
    """Exit 1, nothing on stdout, one ``cauldron: ...`` line on stderr holding fragments."""
    assert result.returncode == 1, result
    assert result.stdout == "", result
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("cauldron: "), result.stderr
    for fragment in fragments:
        assert fragment in lines[0], (fragment, lines[0])


def assertStoppedBySigterm(process):
    """twistd ends on SIGTERM: it re-raises the signal after its cleanup, so -SIGTERM (or 0)."""
    assert process.wait(10) in (0, -signal.SIGTERM), process.text()
    assert "Server Shut Down." in process.text(), process.text()
    assert "Traceback" not in process.text(), process.text()


def inRange(setup, ports):
    return all(setup.first <= port < setup.last for port in ports)


# -- 1. Cauldron-router-zmq ---------------------------------------------------------


def routerScripts():
    """How to run Cauldron-router-zmq: always via routerMain, and the console script if any."""
    scripts = [ROUTER_MAIN]
    script = shutil.which("Cauldron-router-zmq") or shutil.which(
        "Cauldron-router-zmq", path=os.path.dirname(sys.executable))
    if script:
        scripts.append([script])
    return scripts


def test_routerScriptServes(setup, processes):
    """``Cauldron-router-zmq -c CONFIG -vvv`` serves an empty list and ends with SIGTERM, exit 0."""
    for script in routerScripts():
        router = processes.start([*script, "-c", setup.config, "-vvv"])
        assert router.waitForLine(LISTENING).group("address") == setup.address
        result = services(setup)
        assert (result.returncode, result.stdout, result.stderr) == (0, "", ""), result
        router.waitForLine(re.compile(r"request ListServices"))  # -vvv logs every request
        stopping = time.monotonic()
        router.signal(signal.SIGTERM)
        assert router.wait(10) == 0, router.text()
        assert time.monotonic() - stopping < 5
        assert "Traceback" not in router.text(), router.text()


# -- 2. two dispatchers ---------------------------------------------------------------


def test_twoDispatchersThroughRouter(setup, processes):
    """Two twistd dispatchers register with a twistd router: both reachable and listed in range."""
    processes.router()
    _, demoPorts = processes.dispatcher("demo", 1.5)
    _, otherPorts = processes.dispatcher("other", 2.5)
    assert inRange(setup, demoPorts + otherPorts) and len(set(demoPorts + otherPorts)) == 4
    assertShows(setup, "demo", "1.5")
    assertShows(setup, "other", "2.5")
    result = services(setup)
    assert result.returncode == 0, result
    assert parseServices(result.stdout) == {"demo": demoPorts, "other": otherPorts}
    assert [line.split()[0] for line in result.stdout.splitlines()] == ["demo", "other"]


# -- 3. a killed dispatcher ------------------------------------------------------------


def test_killedDispatcherExpiresAndPortsReused(tmp_path):
    """A SIGKILLed dispatcher leaves the listing within 20 s and its only pair goes to the next."""
    setup = Setup(tmp_path, width=2)
    processes = Processes(setup)
    try:
        processes.router()
        dead, ports = processes.dispatcher("dead")
        assert ports == (setup.first, setup.first + 1)
        assert listedServices(setup) == {"dead": ports}
        dead.signal(signal.SIGKILL)
        dead.wait()
        killed = time.monotonic()
        waitForListing(setup, lambda listed: listed == {}, HEAL_DEADLINE, "expiry of 'dead'")
        assert time.monotonic() - killed < HEAL_DEADLINE
        _, freshPorts = processes.dispatcher("fresh", 3.5)
        assert freshPorts == ports
        assert listedServices(setup) == {"fresh": ports}
        assertShows(setup, "fresh", "3.5")
    finally:
        processes.cleanup()


# -- 4. a killed router ---------------------------------------------------------------


def test_killedRouterRestartedIsRepopulated(setup, processes):
    """A router SIGKILLed and restarted lists the live dispatchers' same ports within 20 s."""
    router = processes.router()
    _, demoPorts = processes.dispatcher("demo", 1.5)
    _, otherPorts = processes.dispatcher("other", 2.5)
    router.signal(signal.SIGKILL)
    router.wait()
    assert services(setup, timeout=1).returncode == 1
    restarted = time.monotonic()
    processes.router()
    waitForListing(setup, lambda listed: len(listed) == 2, HEAL_DEADLINE, "repopulation")
    assert time.monotonic() - restarted < HEAL_DEADLINE
    assert listedServices(setup) == {"demo": demoPorts, "other": otherPorts}
    assertShows(setup, "demo", "1.5")
    assertShows(setup, "other", "2.5")


# -- 5. a restarted dispatcher ----------------------------------------------------------


def test_restartedDispatcherReachableWithItsPorts(setup, processes):
    """A dispatcher stopped with SIGTERM and started again is reachable on its previous ports."""
    processes.router()
    one, onePorts = processes.dispatcher("one")
    demo, demoPorts = processes.dispatcher("demo", 1.5)
    assert onePorts < demoPorts
    for process in (one, demo):  # the lowest free pair is now one's, not demo's
        process.signal(signal.SIGTERM)
        assertStoppedBySigterm(process)
    waitForListing(setup, lambda listed: listed == {}, HEAL_DEADLINE, "release")
    _, again = processes.dispatcher("demo", 4.5)
    assert again == demoPorts
    assertShows(setup, "demo", "4.5")
    assert listedServices(setup) == {"demo": demoPorts}


# -- 6. allow-spawn = yes ----------------------------------------------------------------


def test_spawnedRouterProcessOutlivesDispatcher(tmp_path):
    """allow-spawn with process = process starts a router process that outlives the dispatcher."""
    setup = Setup(tmp_path, allowSpawn=True, process="process")
    processes = Processes(setup)
    try:
        assert spawnedRouters(setup.config) == []
        dispatcher, ports = processes.dispatcher("demo", 1.5)
        assert inRange(setup, ports)
        routers = spawnedRouters(setup.config)
        assert len(routers) == 1 and routers[0] != dispatcher.pid, routers
        assert listedServices(setup) == {"demo": ports}
        assertShows(setup, "demo", "1.5")
        dispatcher.signal(signal.SIGTERM)
        assertStoppedBySigterm(dispatcher)
        waitForListing(setup, lambda listed: listed == {}, what="release by the stopped dispatcher")
        assert spawnedRouters(setup.config) == routers
        os.kill(routers[0], signal.SIGTERM)
        poll(lambda: spawnedRouters(setup.config), lambda pids: pids == [],
             what="end of the spawned router")
    finally:
        processes.cleanup()


def test_spawnedRouterThread(tmp_path):
    """allow-spawn with process = thread runs the router inside the dispatcher process."""
    setup = Setup(tmp_path, allowSpawn=True, process="thread")
    processes = Processes(setup)
    try:
        dispatcher, ports = processes.dispatcher("demo", 1.5)
        assert inRange(setup, ports)
        assert spawnedRouters(setup.config) == []
        assertShows(setup, "demo", "1.5")
        assert listedServices(setup) == {"demo": ports}
        dispatcher.signal(signal.SIGTERM)
        assertStoppedBySigterm(dispatcher)
        assertOneLineError(services(setup, timeout=1), setup.address)  # it went with it
    finally:
        processes.cleanup()


# -- 7. allow-spawn = no -----------------------------------------------------------------


def test_noRouterNoSpawnDispatcherExits(setup, processes):
    """With allow-spawn = no and no router, twistd cauldron-dispatcher exits non-zero naming it."""
    started = time.monotonic()
    dispatcher = processes.twistdDispatcher("demo")
    status = dispatcher.wait(15)
    assert status != 0, dispatcher.text()
    assert time.monotonic() - started < 6
    failures = [line for line in dispatcher.text().splitlines() if "cannot serve 'demo'" in line]
    assert len(failures) == 1 and setup.address in failures[0], dispatcher.text()
    assert "Traceback" not in dispatcher.text()


# -- 8. commands without a router ----------------------------------------------------------


def test_commandsWithoutRouter(setup):
    """show --timeout 2 and services with no router fail in time with one line naming it."""
    for args in (["show", "-s", "demo", "TEMP"], ["services"]):
        started = time.monotonic()
        result = cauldron(*args, "-c", setup.config, "--timeout", "2", timeout=20)
        elapsed = time.monotonic() - started
        assertOneLineError(result, setup.address)
        assert elapsed < 6, (args, elapsed)


# -- 9. a bad configuration ----------------------------------------------------------------


def test_badConfigValue(setup):
    """``port = sixty`` makes both twistd cauldron-router and Cauldron-router-zmq exit non-zero."""
    bad = setup.writeConfig("bad.ini", {"host": "127.0.0.1", "port": "sixty"})
    for argv in [[*FOREGROUND, "cauldron-router", "-c", bad]] + [
            [*script, "-c", bad] for script in routerScripts()]:
        result = subprocess.run(argv, env=environment(), stdin=subprocess.DEVNULL,
                                capture_output=True, text=True, timeout=DEADLINE,
                                cwd=str(setup.tmp))
        output = result.stdout + result.stderr
        assert result.returncode != 0, result
        assert "[zmq-router] port = 'sixty'" in output, output
        assert "Traceback" not in output, output


# -- 10. two routers on one address ----------------------------------------------------------


def test_secondRouterOnSameAddress(setup, processes):
    """A second router on a taken address exits non-zero with one clear line; the first serves."""
    processes.router()
    for argv in [[*FOREGROUND, "cauldron-router", "-c", setup.config]] + [
            [*script, "-c", setup.config] for script in routerScripts()]:
        second = processes.start(argv)
        assert second.wait(15) != 0, second.text()
        lines = [line for line in second.text().splitlines() if "cannot start" in line]
        assert len(lines) == 1 and setup.address in lines[0], second.text()
        assert "Traceback" not in second.text(), second.text()
    result = services(setup)
    assert (result.returncode, result.stdout) == (0, ""), result
