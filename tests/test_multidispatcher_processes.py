"""A service spanning two dispatchers, driven by the real commands (issue 13).

Service ``deimot`` is served by dispatcher ``detector`` (TEMP, EXPTIME) and
dispatcher ``motors`` (POS, SPEED), each a ``twistd -n cauldron-dispatcher
-s deimot -d NAME`` process with its own lease, all on 127.0.0.1 with a
twistd router.  Nothing sleeps blindly: tests wait for output lines, or poll
a command's answer until a deadline.
"""

import re
import signal
import sys

import pytest
from processes import DEADLINE, Process, cauldron
from test_router_processes import (
    FOREGROUND,
    HEARTBEAT,
    READY,
    Processes,
    Setup,
    assertOneLineError,
)

KEYWORDS = {
    "detector": '[TEMP]\ntype = "double"\ninitial = 20.5\n'
                '[EXPTIME]\ntype = "integer"\ninitial = 30\n',
    "motors": '[POS]\ntype = "double"\ninitial = 1.25\n'
              '[SPEED]\ntype = "integer"\ninitial = 4\nrange = [0, 10]\n',
    "rogue": '[TEMP]\ntype = "double"\ninitial = -1.0\n',
}
SERVICES_LINE = re.compile(
    r"^(?P<service>\S+)\s+(?P<dispatcher>\S+)\s+(?P<host>\S+)\s+(?P<dispatch>\d+)\s+"
    r"(?P<broadcast>\d+)\s+(?P<age>\d+\.\ds)\s+(?P<count>\d+) keywords?$"
)


class Split(Processes):
    """The processes of one test: a router and dispatchers of ``deimot``."""

    def keywordFile(self, dispatcher):
        path = self.setup.tmp / ("%s.toml" % dispatcher)
        path.write_text(KEYWORDS[dispatcher])
        return str(path)

    def twistdPart(self, dispatcher):
        return self.start([*FOREGROUND, "cauldron-dispatcher", "-c", self.setup.config,
                           "-s", "deimot", "-d", dispatcher, "-k", self.keywordFile(dispatcher),
                           "--heartbeat", HEARTBEAT])

    def part(self, dispatcher):
        """A twistd dispatcher of deimot, once it serves."""
        process = self.twistdPart(dispatcher)
        process.waitForLine(READY)
        return process

    def command(self, *args):
        return self.start([sys.executable, "-m", "cauldron", *args])


@pytest.fixture
def setup(tmp_path):
    return Setup(tmp_path)


@pytest.fixture
def split(setup):
    started = Split(setup)
    try:
        started.router()
        yield started
    finally:
        started.cleanup()


def run(setup, *args, timeout=2):
    return cauldron(args[0], "-c", setup.config, "--timeout", str(timeout), *args[1:])


def listing(setup):
    """``{(service, dispatcher): keyword count}`` from ``cauldron services``."""
    result = run(setup, "services")
    assert result.returncode == 0 and result.stderr == "", result
    listed = {}
    for line in result.stdout.splitlines():
        match = SERVICES_LINE.match(line)
        assert match, "bad services line %r in:\n%s" % (line, result.stdout)
        listed[(match.group("service"), match.group("dispatcher"))] = int(match.group("count"))
    return listed


def assertOk(result, stdout):
    assert (result.returncode, result.stdout, result.stderr) == (0, stdout, ""), result


def test_oneServiceTwoDispatchers(setup, split):
    """Listed per dispatcher, described with owners, used across both in one command."""
    split.part("detector")
    split.part("motors")
    assert listing(setup) == {("deimot", "detector"): 2, ("deimot", "motors"): 2}

    described = run(setup, "describe", "-s", "deimot")
    assert described.returncode == 0, described
    owners = {line.split()[0]: line.split()[1] for line in described.stdout.splitlines()}
    assert owners == {"EXPTIME": "detector", "POS": "motors", "SPEED": "motors",
                      "TEMP": "detector"}, described.stdout

    assertOk(run(setup, "show", "-s", "deimot", "POS", "TEMP"), "POS = 1.25\nTEMP = 20.5\n")
    assertOk(run(setup, "modify", "-s", "deimot", "SPEED=7", "EXPTIME=60"),
             "SPEED = 7\nEXPTIME = 60\n")
    assertOk(run(setup, "show", "-s", "deimot", "EXPTIME", "SPEED"), "EXPTIME = 60\nSPEED = 7\n")
    # The dispatcher's own check, in its own words, through the service name.
    refused = run(setup, "modify", "-s", "deimot", "SPEED=11")
    assertOneLineError(refused, "SPEED")


def test_duplicateKeywordRefused(setup, split):
    """A third dispatcher claiming TEMP is refused, naming the keyword and its owner."""
    split.part("detector")
    rogue = split.twistdPart("rogue")
    status = rogue.wait(DEADLINE)
    assert status != 0, rogue.text()
    assert re.search(r"TEMP.*'detector'|'detector'.*TEMP", rogue.text()), rogue.text()
    assert "Traceback" not in rogue.text(), rogue.text()
    assert listing(setup) == {("deimot", "detector"): 2}
    assertOk(run(setup, "show", "-s", "deimot", "TEMP"), "TEMP = 20.5\n")


def test_oneDispatcherDiesTheOtherServes(setup, split):
    """kill -9 of motors: its keywords fail fast, TEMP keeps working; restarted, re-primed."""
    split.part("detector")
    motors = split.part("motors")
    monitor = split.command("monitor", "-c", setup.config, "-s", "deimot", "POS", "TEMP")
    monitor.waitForLine(re.compile(r"POS = 1\.25"))
    monitor.waitForLine(re.compile(r"TEMP = 20\.5"))
    assertOk(run(setup, "modify", "-s", "deimot", "POS=2.5"), "POS = 2.5\n")
    monitor.waitForLine(re.compile(r"POS = 2\.5"))

    motors.signal(signal.SIGKILL)
    monitor.waitForLine(re.compile(
        r"cauldron: service 'deimot' \(dispatcher 'motors'\) stopped answering"))
    # The other dispatcher's keywords are untouched: read, written, monitored.
    assertOk(run(setup, "modify", "-s", "deimot", "TEMP=21.5"), "TEMP = 21.5\n")
    monitor.waitForLine(re.compile(r"TEMP = 21\.5"))
    assertOk(run(setup, "show", "-s", "deimot", "TEMP", "EXPTIME"), "TEMP = 21.5\nEXPTIME = 30\n")
    # The dead dispatcher's keywords fail in one line, without waiting out a timeout.
    dead = run(setup, "show", "-s", "deimot", "POS", timeout=5)
    assertOneLineError(dead, "POS")
    assert "Traceback" not in monitor.text(), monitor.text()

    split.part("motors")
    monitor.waitForLine(re.compile(r"cauldron: service 'deimot' \(dispatcher 'motors'\) "
                                   r"answers again"))
    monitor.waitForLine(re.compile(r"POS = 1\.25"))  # re-primed with the new run's value
    assertOk(run(setup, "modify", "-s", "deimot", "POS=3.5"), "POS = 3.5\n")
    monitor.waitForLine(re.compile(r"POS = 3\.5"))


KTL_SCRIPT = """\
import sys, time
import ktl

deimot = ktl.cache("deimot")
print("KEYWORDS", " ".join(deimot.keywords()), flush=True)
end = time.monotonic() + %(deadline)r
while "POS" not in deimot.keywords():   # the second dispatcher is not started yet
    if time.monotonic() > end:
        sys.exit("POS never appeared")
    time.sleep(0.05)
print("SEEN", " ".join(deimot.keywords()), flush=True)
deimot["POS"].write(7.5)
print("POS", deimot["POS"].read(), flush=True)
deimot["TEMP"].write(19.0)
print("BOTH", ktl.waitFor("$deimot.POS == 7.5 and $deimot.TEMP < 19.5", timeout=5), flush=True)
"""


def test_clientStartedBeforeSecondDispatcher(setup, split):
    """A KTL script running before motors starts sees POS appear and uses both dispatchers."""
    split.part("detector")
    script = setup.tmp / "late.py"
    script.write_text(KTL_SCRIPT % {"deadline": DEADLINE})
    child = Process([sys.executable, "-m", "cauldron", "ktl", "run", "-c", setup.config,
                     str(script)], cwd=str(setup.tmp))
    split.started.append(child)
    child.waitForLine(re.compile(r"^KEYWORDS EXPTIME TEMP$"))
    split.part("motors")
    child.waitForLine(re.compile(r"^SEEN EXPTIME POS SPEED TEMP$"))
    child.waitForLine(re.compile(r"^POS 7\.5$"))
    child.waitForLine(re.compile(r"^BOTH True$"))
    assert child.wait() == 0, child.text()
    # What the script wrote is what anyone reads.
    assertOk(run(setup, "show", "-s", "deimot", "POS", "TEMP"), "POS = 7.5\nTEMP = 19.0\n")
