"""cauldron across hosts, with the network failing between them.

Each test builds four hosts of its own (:mod:`netns`): ``router`` (.1),
``disp-a`` (.2), ``disp-b`` (.3) and ``client`` (.4) on a private /24, each
with its own configuration file.  The router and the dispatchers run as
``twistd -n`` processes, commands as ``python -m cauldron`` on the client
host, and a long-lived client is this file run as a script (``agent``: a
``cauldron.ktl`` client driven line by line on stdin).  A host is cut off
and healed with :meth:`netns.Network.cut` (packets silently dropped, no
connection reset).  Every wait reads output or polls until a deadline; each
test runs under a time limit and ends every process and namespace it made.
The figures measured are printed at the end (``pytest -s``).

Run alone, as CI's slow step: ``python -m pytest tests/test_multihost.py``.
"""

import itertools
import queue
import re
import sys
import time
from collections import namedtuple

import netns
import pytest
from processes import DEADLINE, TWISTD

#: a slow module: CI runs it as its own step (``python -m pytest -m slow``)
pytestmark = pytest.mark.slow

HOSTS = ["router", "disp-a", "disp-b", "client"]
SUBNET = "10.213.7"
ROUTER_PORT = 6510
FIRST_PORT, LAST_PORT = 6600, 6640
#: dispatchers' heartbeat (and lease renewal) interval, seconds
HEARTBEAT = 1.0
#: no test may run longer than this
TEST_LIMIT = 90.0
FOREGROUND = [*TWISTD, "-n", "--pidfile="]
KEYWORDS = """\
[POS]
type = "integer"
initial = 0

[TEMP]
type = "double"
initial = 20.0
"""

LISTENING = re.compile(r"router listening at tcp://")
READY = re.compile(
    r"cauldron-dispatcher: serving '(?P<name>[^']*)': "
    r"dispatch tcp://(?P<host>[^:]+):(?P<dispatch>\d+), "
    r"broadcast tcp://[^:]+:(?P<broadcast>\d+)"
)
STOPPED_ANSWERING = re.compile(r"cauldron: service 'demo' stopped answering")
ANSWERS_AGAIN = re.compile(r"cauldron: service 'demo' answers again")
SERVICE_LINE = re.compile(
    r"^(?P<name>\S+)\s+(?P<dispatcher>\S+)\s+(?P<host>\S+)\s+(?P<dispatch>\d+)\s+"
    r"(?P<broadcast>\d+)\s+\S+\s+\d+ keywords?$"
)
#: keyword files of the two dispatchers of service ``deimot`` (one on each host)
SPLIT_KEYWORDS = {
    "motors": '[POS]\ntype = "integer"\ninitial = 0\n',
    "detector": '[TEMP]\ntype = "double"\ninitial = 20.0\n',
}
OTHER_OWNER = "now served by another dispatcher"

#: (what, seconds) measured by the tests, printed at the end of the module
FIGURES = []


def monitorValue(name, value=r"\S*"):
    """A ``cauldron monitor`` output line giving ``name`` the value ``value``."""
    return re.compile(r"^\d\d:\d\d:\d\d\.\d\d\d %s = (?P<value>%s)$" % (name, value))


def figure(what, seconds):
    FIGURES.append((what, seconds))
    print("multihost: %s: %.2f s" % (what, seconds))


if __name__ != "__main__":  # as a script this file is the agent, not a test module
    _REASON = netns.unavailable()
    if _REASON:
        pytest.skip(_REASON, allow_module_level=True)


# -- the hosts -------------------------------------------------------------------


class Cluster:
    """One test's hosts, their configuration files and the cauldron processes on them."""

    def __init__(self, network, tmp):
        self.network = network
        self.tmp = tmp
        self.keywords = tmp / "keywords.toml"
        self.keywords.write_text(KEYWORDS)
        self.configs = {host: self._writeConfig(host) for host in HOSTS}
        self._dirs = itertools.count(1)

    def ip(self, host):
        return self.network.ip(host)

    def _writeConfig(self, host):
        path = self.tmp / ("%s.ini" % (host,))
        path.write_text(
            "[zmq]\nhost = %s\n"
            "[zmq-router]\nhost = %s\nport = %d\nfirst-port = %d\nlast-port = %d\n"
            "allow-spawn = no\n"
            % (self.ip(host), self.ip("router"), ROUTER_PORT, FIRST_PORT, LAST_PORT)
        )
        return str(path)

    def directConfig(self, host, ports):
        """A router-less config reaching the dispatcher on ``host`` at ``ports`` directly."""
        path = self.tmp / ("%s-direct.ini" % (host,))
        path.write_text(
            "[zmq]\nhost = %s\ndispatch-port = %d\nbroadcast-port = %d\n"
            "[zmq-router]\nenable = no\n" % (self.ip(host), *ports)
        )
        return str(path)

    def workdir(self, name):
        """A fresh working directory for one process (twistd writes files there)."""
        path = self.tmp / ("%s-%d" % (name, next(self._dirs)))
        path.mkdir()
        return path

    # -- processes

    def startRouter(self):
        """The router on its host, once it listens."""
        router = self.network.start(
            "router", [*FOREGROUND, "cauldron-router", "-c", self.configs["router"]],
            cwd=self.workdir("router"))
        router.waitForLine(LISTENING)
        return router

    def startDispatcher(self, host, service="demo", dispatcher=None):
        """A dispatcher of ``service`` on ``host`` once it serves; ``(process, ports)``.

        ``dispatcher`` names one of the two dispatchers of ``deimot``
        (:data:`SPLIT_KEYWORDS`) instead of serving every demo keyword.
        """
        keywords, named, shown = str(self.keywords), [], service
        if dispatcher is not None:
            path = self.tmp / ("%s.toml" % (dispatcher,))
            path.write_text(SPLIT_KEYWORDS[dispatcher])
            keywords, named, shown = str(path), ["-d", dispatcher], service + "/" + dispatcher
        dispatcher = self.network.start(
            host, [*FOREGROUND, "cauldron-dispatcher", "-c", self.configs[host], "-s", service,
                   *named, "-k", keywords, "--heartbeat", str(HEARTBEAT)],
            cwd=self.workdir(host))
        ready = dispatcher.waitForLine(READY)
        assert (ready.group("name"), ready.group("host")) == (shown, self.ip(host)), \
            dispatcher.text()
        return dispatcher, (int(ready.group("dispatch")), int(ready.group("broadcast")))

    def cauldron(self, host, command, *args, config=None, timeout=2.0):
        """``cauldron COMMAND -c CONFIG --timeout T ARGS`` on ``host``; the CompletedProcess."""
        return self.network.run(
            host, [sys.executable, "-m", "cauldron", command, "-c", config or self.configs[host],
                   "--timeout", str(timeout), *args],
            cwd=self.tmp)

    def startMonitor(self, host, *keywords, service="demo"):
        """``cauldron monitor -s SERVICE KW...`` on ``host`` (stderr merged: liveness lines)."""
        return self.network.start(
            host, [sys.executable, "-m", "cauldron", "monitor", "-c", self.configs[host],
                   "-s", service, *keywords],
            cwd=self.workdir("monitor"))

    def startAgent(self, host, service="demo", config=None):
        """A long-lived ktl client on ``host`` (this file as a script), fed on stdin."""
        process = self.network.start(
            host, [sys.executable, __file__, "agent", config or self.configs[host], service],
            cwd=self.workdir("agent"), stdin=True)
        return Agent(process)

    # -- asking

    def show(self, *keywords, host="client", config=None, timeout=2.0, service="demo"):
        return self.cauldron(host, "show", "-s", service, *keywords, config=config,
                             timeout=timeout)

    def modify(self, *assignments, host="client", config=None, timeout=2.0, service="demo"):
        return self.cauldron(host, "modify", "-s", service, *assignments, config=config,
                             timeout=timeout)

    def services(self):
        """``{name: (host, dispatchPort, broadcastPort)}`` from the client host, or None.

        ``name`` is the service's, or ``service/dispatcher`` for a dispatcher
        not named after its service.
        """
        result = self.cauldron("client", "services")
        if result.returncode != 0:
            return None
        listed = {}
        for line in result.stdout.splitlines():
            match = SERVICE_LINE.match(line)
            assert match, "bad services line %r in:\n%s" % (line, result.stdout)
            name = match.group("name")
            if match.group("dispatcher") != name:
                name += "/" + match.group("dispatcher")
            listed[name] = (match.group("host"), int(match.group("dispatch")),
                            int(match.group("broadcast")))
        return listed

    def waitForListing(self, check, deadline=DEADLINE, what="listing"):
        """Poll ``services`` until ``check(listing)``; the listing."""
        return poll(self.services, lambda listed: listed is not None and check(listed),
                    deadline, what)

    def cut(self, host):
        """Cut ``host`` off; the time it happened."""
        self.network.cut(host)
        return time.monotonic()

    def heal(self, host):
        """Heal ``host``; the time it happened."""
        self.network.heal(host)
        return time.monotonic()


Reply = namedtuple("Reply", "ok elapsed text")


class Agent:
    """The test's side of a long-lived client: one request line in, one reply line out."""

    def __init__(self, process):
        self.process = process
        self._ids = itertools.count(1)

    def call(self, *words, deadline=DEADLINE):
        """Send ``ID WORDS...``; the :class:`Reply` (the agent times itself)."""
        ident = next(self._ids)
        self.process.send(" ".join(str(word) for word in (ident, *words)))
        match = self.process.waitForLine(
            re.compile(r"^%d (?P<status>ok|error) (?P<elapsed>\S+) ?(?P<text>.*)$" % ident),
            deadline)
        return Reply(match.group("status") == "ok", float(match.group("elapsed")),
                     match.group("text").rstrip())

    def expect(self, *words, deadline=DEADLINE):
        """:meth:`call`, which must succeed; the reply's text."""
        reply = self.call(*words, deadline=deadline)
        assert reply.ok, "%s: %s\n%s" % (words, reply, self.process.text())
        return reply.text

    def values(self, name):
        """Every value the agent's monitor of ``name`` printed, in order."""
        prefix = "value %s " % (name,)
        return [line[len(prefix):].rstrip("\n") for line in self.process.output
                if line.startswith(prefix)]


def agentMain(configPath, serviceName):
    """The agent: ``ID VERB ARGS`` lines on stdin, ``ID ok|error SECONDS TEXT`` on stdout.

    Verbs: ``connect TIMEOUT``, ``read KW TIMEOUT``, ``write KW VALUE TIMEOUT``,
    ``alive``, ``monitor KW`` (then ``value KW VALUE`` for each new value).
    """
    import threading

    from cauldron import ktl

    lock = threading.Lock()

    def say(text):
        with lock:
            sys.stdout.write(text.replace("\n", " ") + "\n")
            sys.stdout.flush()

    service = None
    for line in sys.stdin:
        words = line.split()
        if len(words) < 2:
            continue
        ident, verb, args = words[0], words[1], words[2:]
        started = time.monotonic()
        try:
            if verb == "connect":
                service = ktl.Service(serviceName, config=configPath, timeout=float(args[0]))
                result = service.name
            elif verb == "read":
                result = service[args[0]].read(timeout=float(args[1]))
            elif verb == "write":
                result = service[args[0]].write(args[1], timeout=float(args[2]))
            elif verb == "alive":
                result = service.isAlive()
            elif verb == "monitor":
                keyword = service[args[0]]
                keyword.callback(lambda kw: say("value %s %s" % (kw.name, kw["ascii"])))
                keyword.monitor()
                result = ""
            else:
                raise ValueError("unknown verb %r" % (verb,))
        except Exception as e:
            say("%s error %.3f %s: %s" % (ident, time.monotonic() - started, type(e).__name__, e))
        else:
            say("%s ok %.3f %s" % (ident, time.monotonic() - started, result))


# -- waiting -----------------------------------------------------------------------


def poll(attempt, check, deadline=DEADLINE, what="condition"):
    """Call ``attempt()`` until ``check(result)``; the result; fails at the deadline."""
    end = time.monotonic() + deadline
    while True:
        result = attempt()
        if check(result):
            return result
        if time.monotonic() > end:
            raise AssertionError("%s not reached within %g s; last: %r" % (what, deadline, result))
        time.sleep(0.1)  # between attempts of a polled condition, not a wait for it


def waitForLineAt(process, pattern, deadline=DEADLINE):
    """``(match, time it was read)`` of the next output line matching ``pattern``."""
    match = process.waitForLine(pattern, deadline)
    return match, time.monotonic()


def expectNoLine(process, pattern, until):
    """Read ``process``'s output until ``until`` (monotonic); no line may match ``pattern``.

    Also how a test holds a partition for a given time: watching, not sleeping.
    """
    while True:
        left = until - time.monotonic()
        if left <= 0:
            return
        try:
            line = process.lines.get(timeout=left)
        except queue.Empty:
            return
        if line is None:
            process.lines.put(None)
            raise AssertionError("%s exited %s:\n%s" % (process.argv, process.popen.wait(),
                                                       process.text()))
        assert not pattern.search(line), "unexpected %r from %s:\n%s" % (
            line, process.argv, process.text())


def assertAnswers(result, stdout):
    assert (result.returncode, result.stdout, result.stderr) == (0, stdout, ""), result


# -- fixtures --------------------------------------------------------------------------


@pytest.fixture(scope="module", autouse=True)
def figures():
    """Clear what crashed runs left; print the measured figures at the end."""
    netns.removeLeftovers()
    del FIGURES[:]
    yield
    if FIGURES:
        print("\nmultihost figures:")
        for what, seconds in FIGURES:
            print("  %-60s %6.2f s" % (what, seconds))


@pytest.fixture
def cluster(tmp_path):
    """Four fresh hosts for one test, torn down whatever happens; the test is time-limited."""
    with netns.Network(HOSTS, SUBNET) as network:
        with netns.timeLimit(TEST_LIMIT):
            yield Cluster(network, tmp_path)


# -- 0. the harness --------------------------------------------------------------------

TCP_SERVER = """
import socket, sys
server = socket.create_server((sys.argv[1], 7000))
print("listening", flush=True)
peer, _ = server.accept()
while True:
    data = peer.recv(100)
    if not data:
        break
    peer.sendall(data)
"""

TCP_CLIENT = """
import socket, struct, sys
host = sys.argv[1]
def probe():
    try:
        socket.create_connection((host, 7001), timeout=1.0).close()
        return "accepted"
    except ConnectionRefusedError:
        return "refused"
    except socket.timeout:
        return "timeout"
peer = socket.create_connection((host, 7000), timeout=5)
peer.sendall(b"a")
print("connected, echo %r, probe %s" % (peer.recv(10), probe()), flush=True)
sys.stdin.readline()
print("probe %s" % probe(), flush=True)
peer.sendall(b"b")
peer.settimeout(0.2)
reported = 0
while True:
    try:
        data = peer.recv(10)
        break
    except socket.timeout:
        info = peer.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 104)
        retransmitted = struct.unpack_from("I", info, 100)[0]  # tcpi_total_retrans
        if retransmitted > reported:
            reported = retransmitted
            print("retransmitted %d" % retransmitted, flush=True)
print("echo %r" % data, flush=True)
"""


def test_partitionIsSilent(cluster):
    """A cut host drops packets silently: data is retransmitted, never refused, delivered later."""
    server = cluster.network.start("disp-a", [sys.executable, "-c", TCP_SERVER,
                                              cluster.ip("disp-a")], cwd=cluster.tmp)
    server.waitForLine(re.compile("listening"))
    client = cluster.network.start("client", [sys.executable, "-c", TCP_CLIENT,
                                              cluster.ip("disp-a")], cwd=cluster.tmp, stdin=True)
    client.waitForLine(re.compile(r"connected, echo b'a', probe refused"))
    cut = cluster.cut("disp-a")
    client.send("go")
    client.waitForLine(re.compile(r"^probe timeout$"), 5)  # a SYN dropped, never answered
    client.waitForLine(re.compile(r"^retransmitted [1-9]"), 10)
    expectNoLine(client, re.compile(r"echo|Error|Traceback"), cut + 3)
    healed = cluster.heal("disp-a")
    client.waitForLine(re.compile(r"^echo b'b'$"), 20)
    figure("TCP data held by a cut, delivered after the heal", time.monotonic() - healed)
    assert client.wait() == 0, client.text()


# -- 1. basics across hosts -----------------------------------------------------------


def test_crossHostBasics(cluster):
    """services, show, modify and monitor from the client host reach disp-a's host."""
    cluster.startRouter()
    _, ports = cluster.startDispatcher("disp-a")
    listed = cluster.waitForListing(lambda listed: "demo" in listed)
    assert listed == {"demo": (cluster.ip("disp-a"), *ports)}
    assertAnswers(cluster.show("POS", "TEMP"), "POS = 0\nTEMP = 20.0\n")
    monitor = cluster.startMonitor("client", "POS")
    monitor.waitForLine(monitorValue("POS", "0"))
    assertAnswers(cluster.modify("POS=5"), "POS = 5\n")
    monitor.waitForLine(monitorValue("POS", "5"))
    assertAnswers(cluster.show("POS"), "POS = 5\n")


# -- 2. a dispatcher host cut off --------------------------------------------------------


def test_dispatcherHostCutOff(cluster):
    """A monitor reports disp-a gone within 3.5 s of a 10 s cut, and follows it after the heal."""
    cluster.startRouter()
    _, ports = cluster.startDispatcher("disp-a")
    local = cluster.directConfig("disp-a", ports)
    monitor = cluster.startMonitor("client", "POS")
    monitor.waitForLine(monitorValue("POS", "0"))

    cut = cluster.cut("disp-a")
    _, reported = waitForLineAt(monitor, STOPPED_ANSWERING, 10)
    figure("dispatcher cut off: monitor reports it disconnected", reported - cut)
    # A change the client cannot see until the heal: made on disp-a's own host.
    assertAnswers(cluster.modify("POS=7", host="disp-a", config=local), "POS = 7\n")
    expectNoLine(monitor, monitorValue("POS"), cut + 10)
    healed = cluster.heal("disp-a")

    _, again = waitForLineAt(monitor, ANSWERS_AGAIN, 15)
    _, primed = waitForLineAt(monitor, monitorValue("POS", "7"), 15)
    figure("dispatcher healed: monitor says it answers again", again - healed)
    figure("dispatcher healed: monitor shows the value changed meanwhile", primed - healed)
    # The router let disp-a's lease lapse during the cut; a new client asks the router,
    # so it can reach disp-a once disp-a has registered again.
    cluster.waitForListing(lambda listed: listed.get("demo") == (cluster.ip("disp-a"), *ports),
                           15, "disp-a listed again")
    figure("dispatcher healed: services lists it again", time.monotonic() - healed)
    assertAnswers(cluster.modify("POS=8", timeout=5), "POS = 8\n")
    monitor.waitForLine(monitorValue("POS", "8"), 5)
    assert reported - cut <= 3.5, "disconnection reported %.2f s after the cut" % (reported - cut)


def test_serviceSpanningTwoHosts(cluster):
    """deimot split over disp-a (POS) and disp-b (TEMP): one host cut off spares the other's."""
    cluster.startRouter()
    cluster.startDispatcher("disp-a", "deimot", "motors")
    cluster.startDispatcher("disp-b", "deimot", "detector")
    listed = cluster.waitForListing(lambda listed: len(listed) == 2)
    assert {name: where[0] for name, where in listed.items()} == {
        "deimot/motors": cluster.ip("disp-a"), "deimot/detector": cluster.ip("disp-b")}
    assertAnswers(cluster.show("POS", "TEMP", service="deimot"), "POS = 0\nTEMP = 20.0\n")
    assertAnswers(cluster.modify("POS=3", "TEMP=21.5", service="deimot"),
                  "POS = 3\nTEMP = 21.5\n")
    monitor = cluster.startMonitor("client", "POS", "TEMP", service="deimot")
    monitor.waitForLine(monitorValue("POS", "3"))
    monitor.waitForLine(monitorValue("TEMP", "21.5"))
    agent = cluster.startAgent("client", "deimot")
    agent.expect("connect", 5)
    assert agent.expect("read", "POS", 2) == "3"

    cut = cluster.cut("disp-a")
    monitor.waitForLine(re.compile(
        r"cauldron: service 'deimot' \(dispatcher 'motors'\) stopped answering"), 10)
    figure("one dispatcher of two cut off: monitor names it", time.monotonic() - cut)
    # disp-b's keyword is untouched: written, monitored and read, from the CLI and ktl.
    assertAnswers(cluster.modify("TEMP=22.5", service="deimot"), "TEMP = 22.5\n")
    monitor.waitForLine(monitorValue("TEMP", "22.5"))
    assert agent.expect("read", "TEMP", 2) == "22.5"
    refused = agent.call("read", "POS", 5)
    assert not refused.ok and "motors" in refused.text, refused
    assert refused.elapsed < 1.0, refused  # at once, not at the 5 s timeout

    healed = cluster.heal("disp-a")
    _, again = waitForLineAt(monitor, re.compile(
        r"cauldron: service 'deimot' \(dispatcher 'motors'\) answers again"), 15)
    figure("one dispatcher of two healed: monitor says it answers again", again - healed)
    assert poll(lambda: agent.call("read", "POS", 2), lambda reply: reply.ok, 15,
                "ktl reads POS again").text == "3"
    assert agent.expect("write", "POS", 4, 5) == "4"
    monitor.waitForLine(monitorValue("POS", "4"), 5)


# -- 3. the router host cut off ---------------------------------------------------------


def test_routerHostCutOff(cluster):
    """Client and dispatcher talk on while the router is cut off; it lists disp-a again after."""
    cluster.startRouter()
    _, ports = cluster.startDispatcher("disp-a")
    agent = cluster.startAgent("client")
    agent.expect("connect", 5)
    agent.expect("monitor", "POS")
    assert agent.expect("read", "POS", 2) == "0"

    cut = cluster.cut("router")
    assert agent.expect("write", "POS", 3, 2) == "3"
    poll(lambda: agent.process.linesAt(re.compile(r"^value POS 3$")), bool, 5,
         "the monitor sees POS = 3")
    assert cluster.services() is None  # the cut is real: the router is out of reach
    # Long enough for the router to let disp-a's lease expire (three heartbeats).
    while time.monotonic() < cut + 6 * HEARTBEAT:
        assert agent.expect("read", "POS", 2) == "3"
        assert agent.expect("alive") == "True"
        expectNoLine(agent.process, re.compile(r"^value POS (?!3$)"), time.monotonic() + 0.5)
    healed = cluster.heal("router")

    cluster.waitForListing(lambda listed: listed.get("demo") == (cluster.ip("disp-a"), *ports),
                           15, "disp-a listed again")
    listedAfter = time.monotonic() - healed
    figure("router healed: services lists the dispatcher again", listedAfter)
    assert agent.expect("read", "POS", 2) == "3"
    assertAnswers(cluster.show("POS"), "POS = 3\n")
    assert listedAfter <= 5 * HEARTBEAT, "listed again %.2f s after the heal" % (listedAfter,)


# -- 4. the stale write ------------------------------------------------------------------


def test_staleWriteNeverLands(cluster):
    """A write that failed during a cut never takes effect, however long TCP held it."""
    cluster.startRouter()
    cluster.startDispatcher("disp-a")
    agent = cluster.startAgent("client")
    agent.expect("connect", 5)
    agent.expect("monitor", "POS")
    assert agent.expect("read", "POS", 2) == "0"

    cut = cluster.cut("disp-a")
    failed = agent.call("write", "POS", 1, 2)
    assert not failed.ok, failed
    assert failed.text.split(":")[0] in ("CauldronTimeout", "ServiceUnavailable"), failed
    assert failed.elapsed <= 2.5, failed
    # A 10 s cut, as in test 2: TCP's backoff then retransmits the write well after the heal.
    expectNoLine(agent.process, re.compile(r"^value POS"), cut + 10)
    assert agent.expect("alive") == "False"
    healed = cluster.heal("disp-a")

    poll(lambda: agent.expect("alive"), lambda alive: alive == "True", 15, "agent hears disp-a")
    figure("stale write: client hears the dispatcher after the heal", time.monotonic() - healed)
    assert agent.expect("write", "POS", 2, 5) == "2"
    stale = re.compile(r"^value POS 1$")
    while time.monotonic() < healed + 30:
        value = agent.expect("read", "POS", 2)
        landed = [at for at, _ in agent.process.linesAt(stale)]
        if value != "2" and not landed:
            landed = [time.monotonic()]
        assert not landed, "the failed write of POS=1 landed %.1f s after it was sent, " \
            "%.1f s after the heal (POS read: %s)" % (landed[0] - cut, landed[0] - healed, value)
        expectNoLine(agent.process, stale, time.monotonic() + 0.5)
    assert agent.values("POS") == ["0", "2"], agent.values("POS")


# -- 5. split brain ---------------------------------------------------------------------


def test_splitBrainOldOwnerStops(cluster):
    """disp-a, cut off and replaced by disp-b, stops at once when healed; clients never see it."""
    cluster.startRouter()
    dispA, portsA = cluster.startDispatcher("disp-a")
    assertAnswers(cluster.show("POS"), "POS = 0\n")

    cut = cluster.cut("disp-a")
    cluster.waitForListing(lambda listed: "demo" not in listed, 15, "disp-a's lease expired")
    figure("split brain: router lets the cut dispatcher's lease expire", time.monotonic() - cut)
    dispB, portsB = cluster.startDispatcher("disp-b")
    assert cluster.services() == {"demo": (cluster.ip("disp-b"), *portsB)}
    local = cluster.directConfig("disp-a", portsA)
    assertAnswers(cluster.modify("POS=99", host="disp-a", config=local), "POS = 99\n")
    assertAnswers(cluster.show("POS"), "POS = 0\n")

    healed = cluster.heal("disp-a")
    shown = []
    while time.monotonic() < healed + 6:
        result = cluster.show("POS")
        shown.append((round(time.monotonic() - healed, 1), result.returncode,
                      result.stdout.strip() or result.stderr.strip()))
    fenced = dispA.linesAt(re.compile(OTHER_OWNER))
    if fenced:
        figure("split brain: old owner logs its replacement after the heal",
               fenced[0][0] - healed)
    if dispA.endedAt is not None:
        figure("split brain: old owner exits after the heal", dispA.endedAt - healed)
    assert not [s for s in shown if "POS = 99" in s[2]], shown
    assert len(fenced) == 1, dispA.text()
    assert "critical" in fenced[0][1] and cluster.ip("disp-b") in fenced[0][1], fenced
    assert dispA.endedAt is not None, "disp-a still running 6 s after the heal:\n" + dispA.text()
    assert dispA.wait() != 0, dispA.text()
    assert dispA.endedAt - healed <= 2 * HEARTBEAT, dispA.endedAt - healed
    assert dispB.running(), dispB.text()
    assertAnswers(cluster.show("POS"), "POS = 0\n")


# -- 6. the router killed and restarted ----------------------------------------------------


def test_routerKilledAndRestarted(cluster):
    """After kill -9 and a restart of the router, both dispatchers are listed again within ~4 s."""
    router = cluster.startRouter()
    _, portsA = cluster.startDispatcher("disp-a")
    _, portsB = cluster.startDispatcher("disp-b", "aux")
    expected = {"demo": (cluster.ip("disp-a"), *portsA), "aux": (cluster.ip("disp-b"), *portsB)}
    assert cluster.waitForListing(lambda listed: len(listed) == 2) == expected
    router.kill()
    assert cluster.services() is None
    cluster.startRouter()
    restarted = time.monotonic()
    assert cluster.waitForListing(lambda listed: len(listed) == 2, 15, "both re-registered") \
        == expected
    again = time.monotonic() - restarted
    figure("router restarted: both dispatchers listed again", again)
    assertAnswers(cluster.show("POS"), "POS = 0\n")
    assertAnswers(cluster.cauldron("client", "show", "-s", "aux", "TEMP"), "TEMP = 20.0\n")
    assert again <= 4.0 + 1.0, "re-registered %.2f s after the restart" % (again,)


if __name__ == "__main__":
    if sys.argv[1:2] != ["agent"] or len(sys.argv) != 4:
        sys.exit("usage: %s agent CONFIG SERVICE" % (sys.argv[0],))
    agentMain(*sys.argv[2:])
