"""Tests of the ``cauldron`` command and ``twistd cauldron-dispatcher``, run as a user would.

A dispatcher runs in a ``twistd -n`` subprocess with the router disabled and
ephemeral ports; the ports it bound are read from its log, and the client
configuration points at them.  Commands run as ``python -m cauldron`` so the
tests do not depend on PATH.  Every subprocess is killed at cleanup.
"""

import io
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time

import pytest
from helpers import randomLeaseStart
from processes import DEADLINE, TWISTD, Process, cauldron, environment, freePorts
from twisted.internet import defer
from twisted.trial.unittest import TestCase

from cauldron import cli
from cauldron.config import Config
from cauldron.errors import ReadOnly, UnknownKeyword, UnknownService
from cauldron.keywordfile import loadKeywords
from cauldron.transport import portOf

READY = re.compile(
    r"cauldron-dispatcher: serving '(?P<name>[^']*)': "
    r"dispatch tcp://[^:]+:(?P<dispatch>\d+), broadcast tcp://[^:]+:(?P<broadcast>\d+)"
)

KEYWORDS = """
[TEMP]
type = "double"
units = "K"
initial = 20.0
range = [0.0, 400.0]
description = "Detector temperature"

[MODE]
type = "enumerated"
enumerators = ["OFF", "ON", "STANDBY"]
initial = "OFF"
description = "Controller mode"

[STATUS]
type = "string"
initial = "booting"
description = "One line of status"

[COUNTER]
type = "integer"
initial = 0

[SERIAL]
type = "string"
initial = "SN-1"
readonly = true
description = "Serial number"

[GAINS]
type = "double array"
initial = [1.0, 2.0]

[UNSET]
type = "double"
description = "Never given a value"
"""


def writeConfig(path, dispatchPort, broadcastPort):
    path.write_text(
        "[zmq]\nhost = 127.0.0.1\ndispatch-port = %d\nbroadcast-port = %d\n"
        "[zmq-router]\nenable = no\n" % (dispatchPort, broadcastPort)
    )
    return str(path)


def twistd(*args):
    """twistd -n cauldron-dispatcher ARGS, without a pid file."""
    return [*TWISTD, "-n", "--pidfile=", "cauldron-dispatcher", *args]


class Dispatcher:
    """A running twistd dispatcher and a client configuration reaching it."""

    def __init__(self, tmp_path, name="demo"):
        self.tmp = tmp_path
        keywords = tmp_path / "keywords.toml"
        keywords.write_text(KEYWORDS)
        serverConfig = writeConfig(tmp_path / "server.ini", 0, 0)
        self.process = Process(
            twistd("-c", serverConfig, "-s", name, "-k", str(keywords),
                   "--heartbeat", "0.5"),
            cwd=str(tmp_path),
        )
        ready = self.process.waitForLine(READY)
        self.ports = int(ready.group("dispatch")), int(ready.group("broadcast"))
        self.config = writeConfig(tmp_path / "client.ini", *self.ports)
        self.serverConfig = serverConfig
        self.keywords = str(keywords)

    def run(self, command, *args, timeout=DEADLINE):
        return cauldron(command, "-c", self.config, *args, timeout=timeout, cwd=str(self.tmp))

    def waitUntilServing(self):
        """Poll ``cauldron show`` until it succeeds, with a deadline."""
        end = time.monotonic() + DEADLINE
        while True:
            result = self.run("show", "-s", "demo", "TEMP", "--timeout", "2")
            if result.returncode == 0:
                return
            if time.monotonic() > end or self.process.popen.poll() is not None:
                raise AssertionError(
                    "dispatcher not answering: %r\n%s" % (result, self.process.text())
                )


@pytest.fixture(scope="module")
def dispatcher(tmp_path_factory):
    """One dispatcher for the module (tests use distinct keywords where they write)."""
    tmp = tmp_path_factory.mktemp("dispatcher")
    started = None
    try:
        started = Dispatcher(tmp)
        started.waitUntilServing()
        yield started
    finally:
        if started is not None:
            started.process.kill()


def assertOneLineError(result, *fragments):
    """Exit 1, nothing on stdout, one ``cauldron: ...`` line on stderr holding fragments."""
    assert result.returncode == 1, result
    assert result.stdout == "", result
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("cauldron: "), result.stderr
    assert "Traceback" not in result.stderr
    for fragment in fragments:
        assert fragment in lines[0], (fragment, lines[0])


# -- against a running dispatcher --------------------------------------------


def test_show(dispatcher):
    """show prints KW = VALUE per keyword, in the order asked, names upper-cased."""
    result = dispatcher.run("show", "-s", "demo", "temp", "MODE", "serial")
    assert result.returncode == 0, result
    assert result.stdout == "TEMP = 20.0\nMODE = OFF\nSERIAL = SN-1\n"
    assert result.stderr == ""


def test_showBinary(dispatcher):
    """show --binary prints native values: enumerator numbers, arrays as lists."""
    result = dispatcher.run("show", "-s", "demo", "--binary", "MODE", "GAINS", "TEMP")
    assert result.returncode == 0, result
    assert result.stdout == "MODE = 0\nGAINS = [1.0, 2.0]\nTEMP = 20.0\n"


def test_showNoValue(dispatcher):
    """A keyword that never had a value shows as empty in both forms, never as 'None'."""
    for argv in (["UNSET"], ["--binary", "UNSET"]):
        result = dispatcher.run("show", "-s", "demo", *argv)
        assert (result.returncode, result.stdout) == (0, "UNSET = \n"), result


def test_modifyRoundTrip(dispatcher):
    """A value with a colon, spaces and '=' round-trips through modify and show."""
    result = dispatcher.run("modify", "-s", "demo", "STATUS=ready: all good")
    assert result.returncode == 0, result
    assert result.stdout == "STATUS = ready: all good\n"
    result = dispatcher.run("show", "-s", "demo", "STATUS")
    assert (result.returncode, result.stdout) == (0, "STATUS = ready: all good\n")
    result = dispatcher.run("modify", "-s", "demo", "status=a=b  c")
    assert (result.returncode, result.stdout) == (0, "STATUS = a=b  c\n")
    result = dispatcher.run("modify", "-s", "demo", "STATUS=ready: all good")
    assert result.returncode == 0, result


def test_modifyInOrder(dispatcher):
    """Several writes run in order, each printed with the dispatcher's new value."""
    result = dispatcher.run("modify", "-s", "demo", "MODE=on", "TEMP=42", "MODE=2")
    assert result.returncode == 0, result
    assert result.stdout == "MODE = ON\nTEMP = 42.0\nMODE = STANDBY\n"
    result = dispatcher.run("show", "-s", "demo", "MODE", "TEMP")
    assert result.stdout == "MODE = STANDBY\nTEMP = 42.0\n"


def test_monitorCount(dispatcher):
    """monitor prints the current value first, then each change, and stops after --count."""
    monitor = Process(
        [sys.executable, "-m", "cauldron", "monitor", "-c", dispatcher.config, "-s", "demo",
         "COUNTER", "--count", "3"],
        cwd=str(dispatcher.tmp),
    )
    try:
        line = re.compile(r"^(\d\d:\d\d:\d\d\.\d\d\d) COUNTER = (\S*)$")
        first = monitor.waitForLine(line)
        start = int(first.group(2))
        for value in (start + 1, start + 2):
            result = dispatcher.run("modify", "-s", "demo", "COUNTER=%d" % value)
            assert result.returncode == 0, result
        assert monitor.wait() == 0, monitor.text()
        lines = monitor.text().splitlines()
        assert [line.split(" ", 1)[1] for line in lines] == [
            "COUNTER = %d" % v for v in (start, start + 1, start + 2)
        ], lines
        assert all(re.match(r"^\d\d:\d\d:\d\d\.\d\d\d ", x) for x in lines)
    finally:
        monitor.kill()


def test_monitorInterrupt(dispatcher):
    """Ctrl-C ends a monitor cleanly: exit 0, no traceback, nothing on stderr."""
    monitor = Process(
        [sys.executable, "-m", "cauldron", "monitor", "-c", dispatcher.config, "-s", "demo",
         "SERIAL"],
        cwd=str(dispatcher.tmp),
    )
    try:
        monitor.waitForLine(re.compile(r"SERIAL = SN-1$"))
        monitor.popen.send_signal(signal.SIGINT)
        assert monitor.wait() == 0, monitor.text()
        assert monitor.text().splitlines()[-1].endswith("SERIAL = SN-1"), monitor.text()
        assert "Traceback" not in monitor.text()
    finally:
        monitor.kill()


def test_describe(dispatcher):
    """describe prints one aligned line per keyword with type, value, units, limits, flags."""
    result = dispatcher.run("describe", "-s", "demo", "TEMP", "MODE", "SERIAL")
    assert result.returncode == 0, result
    lines = result.stdout.splitlines()
    assert len(lines) == 3, result.stdout
    temp, mode, serial = (line.split() for line in lines)
    assert temp[:2] == ["TEMP", "double"] and "K" in temp and "range" in temp
    assert "0.0..400.0" in temp and "Detector temperature" in lines[0]
    assert mode[:2] == ["MODE", "enumerated"] and "enum" in mode
    assert "0=OFF,1=ON,2=STANDBY" in mode
    assert serial[:3] == ["SERIAL", "string", "SN-1"] and "readonly" in serial
    # aligned: the type column starts at the same offset on every line
    assert len({line.index(word) for line, word in zip(lines, ["double", "enumerated",
                                                               "string"], strict=True)}) == 1


def test_describeAll(dispatcher):
    """describe without keywords lists every keyword, sorted."""
    result = dispatcher.run("describe", "-s", "demo")
    assert result.returncode == 0, result
    names = [line.split()[0] for line in result.stdout.splitlines()]
    assert names == ["COUNTER", "GAINS", "MODE", "SERIAL", "STATUS", "TEMP", "UNSET"]


def test_unknownKeyword(dispatcher):
    """An unknown keyword is one line on stderr naming it, exit 1, nothing printed."""
    result = dispatcher.run("show", "-s", "demo", "TEMP", "NOPE")
    assertOneLineError(result, "NOPE")
    assertOneLineError(dispatcher.run("modify", "-s", "demo", "NOPE=1"), "NOPE")


def test_badValue(dispatcher):
    """A rejected value is one line naming the keyword and why; nothing is written."""
    result = dispatcher.run("modify", "-s", "demo", "TEMP=999")
    assertOneLineError(result, "TEMP", "999")
    assertOneLineError(dispatcher.run("modify", "-s", "demo", "MODE=DIM"), "MODE", "DIM")


def test_notFiniteInteger(dispatcher):
    """1e999 into an integer is "not a finite number", the value shown once."""
    result = dispatcher.run("modify", "-s", "demo", "COUNTER=1e999")
    assertOneLineError(result, "COUNTER: '1e999' is not a finite number")
    assert result.stderr.count("1e999") == 1, result.stderr


def test_readOnly(dispatcher):
    """Writing a read-only keyword is one line naming it."""
    result = dispatcher.run("modify", "-s", "demo", "SERIAL=SN-2")
    assertOneLineError(result, "SERIAL", "read-only")
    assert dispatcher.run("show", "-s", "demo", "SERIAL").stdout == "SERIAL = SN-1\n"


def test_unknownService(dispatcher):
    """Asking the dispatcher for a service it does not serve names both."""
    result = dispatcher.run("show", "-s", "other", "TEMP")
    assertOneLineError(result, "other")


def test_dispatcherAlreadyServing(dispatcher, tmp_path):
    """A second twistd on the same ports exits non-zero with one clear line."""
    config = writeConfig(tmp_path / "same.ini", *dispatcher.ports)
    second = Process(twistd("-c", config, "-s", "demo", "-k", dispatcher.keywords),
                     cwd=str(tmp_path))
    try:
        assert second.wait() != 0, second.text()
        assert "cannot serve 'demo'" in second.text()
        assert "Traceback" not in second.text()
    finally:
        second.kill()


# -- without a dispatcher ----------------------------------------------------


def test_unreachable(tmp_path):
    """show against a stopped dispatcher with --timeout 2 fails in under 6 s."""
    config = writeConfig(tmp_path / "nobody.ini", *freePorts())
    start = time.monotonic()
    result = cauldron("show", "-c", config, "-s", "demo", "TEMP", "--timeout", "2", timeout=20)
    elapsed = time.monotonic() - start
    assertOneLineError(result, "127.0.0.1")
    assert elapsed < 6, elapsed


def test_missingConfig(tmp_path):
    """A missing configuration file is one line naming it."""
    result = cauldron("show", "-c", str(tmp_path / "nope.ini"), "-s", "demo", "TEMP")
    assertOneLineError(result, "nope.ini")


def test_configNotIni(tmp_path):
    """A TOML file given to -c is one line naming the file, before any network."""
    toml = tmp_path / "cauldron.toml"
    toml.write_text('title = "mine"\n[zmq]\nhost = "127.0.0.1"\n')
    result = cauldron("show", "-c", str(toml), "-s", "demo", "TEMP")
    assertOneLineError(result, "cauldron.toml: not an INI file: line 1")


def test_unsafeIpcDir(tmp_path):
    """An ipc-dir others may write to is one line naming file, key and value."""
    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o777)
    config = tmp_path / "ipc.ini"
    config.write_text("[zmq]\nprotocol = ipc\nipc-dir = %s\n" % shared)
    result = cauldron("-c", str(config), "show", "-s", "demo", "TEMP")
    assertOneLineError(result, "%s: [zmq] ipc-dir = '%s': is writable by others" % (config, shared))


def test_badKeywordFile(tmp_path):
    """twistd with a bad keyword file exits non-zero naming the keyword and the field."""
    bad = tmp_path / "bad.toml"
    bad.write_text('[TEMP]\ntype = "double"\nrange = [1]\n')
    config = writeConfig(tmp_path / "c.ini", 0, 0)
    result = subprocess.run(
        twistd("-c", config, "-s", "demo", "-k", str(bad)),
        cwd=str(tmp_path), env=environment(), capture_output=True, text=True,
        timeout=DEADLINE, stdin=subprocess.DEVNULL,
    )
    assert result.returncode != 0, result
    output = result.stdout + result.stderr
    assert "bad.toml: [TEMP] range: expected [min, max], got [1]" in output, output


@pytest.mark.parametrize(
    "argv",
    [
        [],
        ["show", "TEMP"],
        ["show", "-s", "demo"],
        ["modify", "-s", "demo", "TEMP"],
        ["modify", "-s", "demo", "=3"],
        ["monitor", "-s", "demo", "TEMP", "--count", "0"],
        ["show", "-s", "demo", "TEMP", "--timeout", "soon"],
        ["frobnicate"],
    ],
)
def test_usageErrors(argv):
    """Bad usage exits 2 (argparse's convention) with a message on stderr."""
    result = cauldron(*argv)
    assert result.returncode == 2, result
    assert result.stderr and "Traceback" not in result.stderr


def test_demo(tmp_path):
    """cauldron demo serves a router and the demo service until Ctrl-C (then exit 0)."""
    routerPort = freePorts(1)[0]
    first = randomLeaseStart()
    config = tmp_path / "demo.ini"
    config.write_text(
        "[zmq]\nhost = 127.0.0.1\n"
        "[zmq-router]\nhost = 127.0.0.1\nport = %d\nfirst-port = %d\nlast-port = %d\n"
        % (routerPort, first, first + 40)
    )
    demo = Process([sys.executable, "-m", "cauldron", "demo", "-c", str(config)],
                   cwd=str(tmp_path))
    try:
        demo.waitForLine(re.compile(r"Stop with Ctrl-C"))
        assert "cauldron describe -c %s -s demo" % (config,) in demo.text()
        described = cauldron("describe", "-c", str(config), "-s", "demo", cwd=str(tmp_path))
        assert described.returncode == 0, described
        names = [line.split()[0] for line in described.stdout.splitlines()]
        assert {"TEMP", "MODE", "FILTER", "COUNT"} <= set(names), described.stdout
        listed = cauldron("services", "-c", str(config), cwd=str(tmp_path))
        assert listed.stdout.split()[0] == "demo", listed
        demo.popen.send_signal(signal.SIGINT)
        assert demo.wait() == 0, demo.text()
        assert "Traceback" not in demo.text()
    finally:
        demo.kill()


def test_configWarningIsOneLine(tmp_path):
    """An unknown config key is one plain warning line, then the command goes on."""
    dispatchPort, broadcastPort = freePorts(2)
    config = tmp_path / "warn.ini"
    config.write_text(
        "[zmq]\nhost = 127.0.0.1\ndispatch-port = %d\nbroadcast-port = %d\nbogus = 1\n"
        "[zmq-router]\nenable = no\n" % (dispatchPort, broadcastPort)
    )
    result = cauldron("show", "-c", str(config), "--timeout", "1", "-s", "demo", "X")
    assert result.returncode == 1, result
    lines = result.stderr.splitlines()
    assert lines[0] == "cauldron: warning: %s: [zmq] bogus: unknown key, ignored" % (config,)
    assert len(lines) == 2 and lines[1].startswith("cauldron: "), result.stderr


def test_help():
    """--help lists every command and exits 0."""
    result = cauldron("--help")
    assert result.returncode == 0
    for command in ("show", "modify", "monitor", "describe", "services", "demo"):
        assert command in result.stdout


# -- in-process: the parser and the formatting --------------------------------


def test_parseAssignments():
    """The first '=' splits; values keep any characters, including '=' and spaces."""
    assert cli.parseAssignments(["A=1", "b= x = y ", "C="]) == [
        ("A", "1"), ("b", " x = y "), ("C", ""),
    ]
    with pytest.raises(ValueError):
        cli.parseAssignments(["A"])
    with pytest.raises(ValueError):
        cli.parseAssignments(["=1"])


def test_parserDefaults():
    """Every network command takes -c and --timeout (default 5 s)."""
    parser = cli.makeParser()
    args = parser.parse_args(["show", "-s", "demo", "A"])
    assert (args.config, args.timeout, args.binary) == (None, 5.0, False)
    args = parser.parse_args(["monitor", "-c", "x.ini", "--timeout", "2", "-s", "d", "A"])
    assert (args.config, args.timeout, args.count) == ("x.ini", 2.0, None)


def test_globalOptionsBeforeTheCommand():
    """-c and --timeout may come before the command; given after it too, after wins."""
    parser = cli.makeParser()
    args = parser.parse_args(["-c", "x.ini", "--timeout", "2", "show", "-s", "d", "A"])
    assert (args.config, args.timeout) == ("x.ini", 2.0)
    args = parser.parse_args(["-c", "x.ini", "--timeout", "2",
                              "show", "-c", "y.ini", "--timeout", "3", "-s", "d", "A"])
    assert (args.config, args.timeout) == ("y.ini", 3.0)
    args = parser.parse_args(["--config", "x.ini", "services"])
    assert (args.config, args.timeout) == ("x.ini", 5.0)
    args = parser.parse_args(["-c", "x.ini", "ktl", "run", "s.py"])
    assert args.config == "x.ini"
    args = parser.parse_args(["ktl", "run", "-c", "k.ini", "s.py"])
    assert args.config == "k.ini"


def test_globalOptionsAgainstADispatcher(dispatcher):
    """cauldron -c FILE show ... and cauldron --timeout 2 -c FILE show ... work."""
    result = cauldron("-c", dispatcher.config, "show", "-s", "demo", "SERIAL")
    assert (result.returncode, result.stdout, result.stderr) == (0, "SERIAL = SN-1\n", "")
    result = cauldron("--timeout", "2", "-c", dispatcher.config, "show", "-s", "demo", "SERIAL")
    assert (result.returncode, result.stdout, result.stderr) == (0, "SERIAL = SN-1\n", "")


def test_globalBadTimeout():
    """A bad --timeout before the command is a usage error (exit 2)."""
    result = cauldron("--timeout", "soon", "show", "-s", "demo", "TEMP")
    assert result.returncode == 2 and "soon" in result.stderr, result


def test_version():
    """cauldron --version prints cauldron X.Y.Z."""
    from cauldron import __version__

    result = cauldron("--version")
    assert (result.returncode, result.stdout, result.stderr) == (
        0, "cauldron %s\n" % (__version__,), "")


def test_describeFormatting():
    """describe rows: quoted values with spaces, limits, flags, aligned columns."""
    rows = [
        cli._describeRow({
            "name": "STATUS", "type": "string", "ascii": "ready: all good", "units": "",
            "range": None, "readonly": True, "description": "Status",
        }),
        cli._describeRow({
            "name": "MODE", "type": "enumerated", "ascii": "OFF",
            "enumerators": {"10": "B", "2": "A"}, "description": "",
        }),
        cli._describeRow({
            "name": "CMD", "type": "double array", "ascii": "", "writeonly": True,
            "range": [0, 1], "units": "V",
        }),
    ]
    lines = cli._columns(rows)
    assert lines[0].split() == ["STATUS", "string", '"ready:', 'all', 'good"', "-", "-",
                                "readonly", "Status"]
    assert lines[1].split() == ["MODE", "enumerated", "OFF", "-", "enum", "2=A,10=B", "-"]
    assert lines[2].split() == ["CMD", "double-array", "-", "V", "range", "0..1", "writeonly"]
    offsets = {line.index(kind) for line, kind in
               zip(lines, ["string", "enumerated", "double-array"], strict=True)}
    assert offsets == {len("STATUS  ")}
    assert all(line == line.rstrip() for line in lines)


def test_clock():
    """Monitor times are local HH:MM:SS.mmm."""
    stamp = time.mktime((2024, 1, 2, 3, 4, 5, 0, 0, -1)) + 0.0678
    assert cli._clock(stamp) == "03:04:05.067"
    assert re.match(r"^\d\d:\d\d:\d\d\.\d\d\d$", cli._clock(None))


def test_printerFlushes():
    """Each line is flushed at once, so a pipe sees monitor output live."""

    class Stream(io.StringIO):
        flushes = 0

        def flush(self):
            self.flushes += 1

    stream = Stream()
    cli._Printer(stream).line("A = 1")
    assert (stream.getvalue(), stream.flushes) == ("A = 1\n", 1)


# -- in-process: the runCommand seam over real sockets -------------------------


class RunCommandTests(TestCase):
    """runCommand runs a parsed command on a given reactor, writing to a given stream."""

    @defer.inlineCallbacks
    def setUp(self):
        from twisted.internet import reactor

        from cauldron.dispatcher import DispatcherService

        self.reactor = reactor
        folder = tempfile.mkdtemp(prefix="cauldron-test-")  # not mktemp(): it writes in cwd
        self.addCleanup(shutil.rmtree, folder, True)
        keywordFile = os.path.join(folder, "keywords.toml")
        with open(keywordFile, "w", encoding="utf-8") as f:
            f.write(KEYWORDS)

        serverConfig = Config.fromMapping({
            "zmq": {"host": "127.0.0.1", "dispatch-port": 0, "broadcast-port": 0},
            "zmq-router": {"enable": "no"},
        })
        self.dispatcher = DispatcherService(
            "demo", config=serverConfig, keywords=loadKeywords(keywordFile),
            reactor=reactor,
        )
        self.dispatcher.startService()
        self.addCleanup(self.dispatcher.stopService)
        dispatch, broadcast = yield self.dispatcher.whenReady()
        self.config = serverConfig.replace("zmq", "dispatch-port", portOf(dispatch)).replace(
            "zmq", "broadcast-port", portOf(broadcast)
        )

    def command(self, *argv):
        args = cli.parseArgs(list(argv))
        args.config = self.config  # anywhere a path is accepted, a Config is too
        out = io.StringIO()
        d = cli.runCommand(self.reactor, args, out=out)
        d.addCallback(lambda status: (status, out.getvalue()))
        return d

    @defer.inlineCallbacks
    def test_modifyThenShow(self):
        """modify then show through the seam: status 0 and the printed lines."""
        result = yield self.command("modify", "-s", "demo", "STATUS=ready: all good", "MODE=ON")
        self.assertEqual(result, (0, "STATUS = ready: all good\nMODE = ON\n"))
        result = yield self.command("show", "-s", "demo", "STATUS", "MODE")
        self.assertEqual(result, (0, "STATUS = ready: all good\nMODE = ON\n"))
        self.assertEqual(self.dispatcher["MODE"].value, 1)

    @defer.inlineCallbacks
    def test_errorsFailTheDeferred(self):
        """A cauldron error fails the Deferred with the typed error (main prints it)."""
        with self.assertRaises(UnknownKeyword):
            yield self.command("show", "-s", "demo", "NOPE")
        with self.assertRaises(ReadOnly):
            yield self.command("modify", "-s", "demo", "SERIAL=x")
        with self.assertRaises(UnknownService):
            yield self.command("show", "-s", "other", "TEMP")
