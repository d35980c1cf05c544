"""KTL compatibility (issue 11): cauldron.ktl driven the way KTL Python scripts drive ``ktl``.

The reference is KTL Python's documented behaviour (its object-oriented,
procedural and expressions pages); docs/ktl.rst "Coming from KTL" lists
every name and where cauldron differs.  Like test_ktl.py, these tests run
in a child pytest process (ktl owns the reactor there; see ktlchild.py),
against a dispatcher in ktl's own reactor, on ephemeral ports.
"""

import importlib
import os
import queue
import subprocess
import sys
import threading
import time

import ktlchild
import pytest

CHILD = ktlchild.CHILD
ROOT = ktlchild.ROOT
WAIT = 10  # seconds: generous bound on anything that should happen promptly
#: heartbeat keyword: the dispatcher sets HB this often while beating
BEAT = 0.05
#: the period a client allows the heartbeat keyword
HEARTBEAT_PERIOD = 0.5
pytestmark = pytest.mark.filterwarnings("ignore:isSet.*:DeprecationWarning")

if CHILD:
    import crochet
    from twisted.internet import task

    from cauldron import config, keywords, ktl
    from cauldron.dispatcher import DispatcherService
    from cauldron.transport import portOf


# -- the dispatcher under test (child only) -------------------------------------

#: keyword -> (a value to write, its ascii, its binary) for every type
TYPED = {
    "B": ("true", "1", True),
    "I": (42, "42", 42),
    "D": (2.5, "2.5", 2.5),
    "E": ("standby", "STANDBY", 2),
    "M": ("A,C", "A, C", 5),
    "S": ("hello world", "hello world", "hello world"),
    "BASIC": ("x y", "x y", "x y"),
    "IA": ([1, 2, 3], "1 2 3", [1, 2, 3]),
    "DA": ([1.5, -2.0], "1.5 -2.0", [1.5, -2.0]),
}
KTL_TYPES = {"B": "KTL_BOOLEAN", "I": "KTL_INT", "D": "KTL_DOUBLE", "E": "KTL_ENUM",
             "M": "KTL_MASK", "S": "KTL_STRING", "BASIC": "KTL_STRING",
             "IA": "KTL_INT_ARRAY", "DA": "KTL_DOUBLE_ARRAY"}


def directConfig(dispatchPort=0, broadcastPort=0):
    return config.Config.fromMapping({
        "zmq": {"host": "127.0.0.1", "dispatch-port": dispatchPort,
                "broadcast-port": broadcastPort},
        "zmq-router": {"enable": "no"},
    })


def demoKeywords():
    return [
        keywords.Boolean("B", initial=False),
        keywords.Integer("I", initial=0, range=[-100, 100]),
        keywords.Double("D", initial=0.0, units="K", description="cold head"),
        keywords.Enumerated("E", enumerators=["OFF", "ON", "STANDBY"], initial="OFF"),
        keywords.Mask("M", bits=["A", "B", "C"], initial=0),
        keywords.String("S", initial=""),
        keywords.Basic("BASIC", initial=""),
        keywords.IntegerArray("IA", initial=[0]),
        keywords.DoubleArray("DA", initial=[0.0]),
        keywords.Integer("RO", readonly=True, initial=1),
        keywords.Integer("HB", initial=0),
        keywords.Integer("COUNT", initial=0),
        keywords.String("MODE", initial="STANDBY"),
        *[keywords.Integer(f"V{i}", initial=i) for i in range(8)],
        *[keywords.Integer(f"EMPTY{i}") for i in range(4)],
    ]


class Dispatcher:
    """The dispatcher in ktl's reactor, and what the tests do to it there."""

    def __init__(self):
        self.service = None
        self.beating = None

    def set(self, name, value):
        crochet.wait_for(WAIT)(lambda: self.service[name].set(value))()

    def beat(self, on):
        """Start or stop setting HB every BEAT seconds (the heartbeat keyword)."""

        @crochet.wait_for(WAIT)
        def switch():
            from twisted.internet import reactor

            if on and self.beating is None:
                hb = self.service["HB"]
                self.beating = task.LoopingCall(lambda: hb.set((hb.value or 0) + 1))
                self.beating.clock = reactor
                self.beating.start(BEAT)
            elif not on and self.beating is not None:
                self.beating.stop()
                self.beating = None

        switch()


@pytest.fixture(scope="module")
def demo():
    """``(config, Dispatcher)``: a dispatcher in ktl's reactor, stopped at the end."""
    crochet.setup()
    dispatcher = Dispatcher()

    @crochet.wait_for(WAIT)
    def start():
        from twisted.internet import reactor

        dispatcher.service = DispatcherService("demo", directConfig(), demoKeywords(),
                                               reactor=reactor, heartbeatInterval=0.5)
        dispatcher.service.startService()
        return dispatcher.service.whenReady()

    dispatch, broadcast = start()
    yield directConfig(portOf(dispatch), portOf(broadcast)), dispatcher
    dispatcher.beat(False)
    ktl.shutdown()
    crochet.wait_for(WAIT)(dispatcher.service.stopService)()


@pytest.fixture
def cfg(demo):
    return demo[0]


@pytest.fixture
def dispatcher(demo):
    return demo[1]


@pytest.fixture
def svc(cfg):
    return ktl.Service("demo", config=cfg)


def until(predicate, what="condition"):
    """Wait for another thread's doing, with a deadline (polled: no event to wait on)."""
    deadline = time.monotonic() + WAIT
    while not predicate():
        assert time.monotonic() < deadline, f"{what}: not reached in time"
        threading.Event().wait(0.01)


def collector(kw):
    """A callback putting ``kw["ascii"]`` on a queue, and the queue."""
    seen = queue.Queue()
    kw.callback(lambda keyword: seen.put(keyword["ascii"]))
    return seen


def nothingOn(seen, within=0.3):
    """No callback within ``within`` s (the absence of an event can only be waited out)."""
    try:
        value = seen.get(timeout=within)
    except queue.Empty:
        return True
    raise AssertionError(f"unexpected callback with {value!r}")


# -- 1. priming: callbacks fire on real values only ------------------------------------


def test_unprimed_monitor_of_a_keyword_without_value_waits_for_a_real_one(svc, dispatcher):
    kw = svc["EMPTY0"]
    seen = collector(kw)
    kw.monitor(prime=False)
    until(lambda: kw._remote._active, "the subscription is live")
    assert nothingOn(seen)
    assert kw["populated"] is True  # the dispatcher's answer told it "no value", sequence 0
    dispatcher.set("EMPTY0", 5)
    assert seen.get(timeout=WAIT) == "5"
    kw.monitor(start=False)


def test_unprimed_monitor_of_a_keyword_with_a_value_waits_for_a_change(svc, dispatcher):
    kw = svc["V1"]
    seen = collector(kw)
    dispatcher.set("V1", 11)  # news to the client, which described V1 as 1
    kw.subscribe(prime=False)
    until(lambda: kw._remote._active, "the subscription is live")
    assert nothingOn(seen)
    dispatcher.set("V1", 12)
    assert seen.get(timeout=WAIT) == "12"
    kw.subscribe(start=False)


def test_primed_monitor_calls_back_with_the_current_value(svc, dispatcher):
    kw = svc["V2"]
    seen = collector(kw)
    kw.monitor()
    assert seen.get(timeout=WAIT) == "2"
    dispatcher.set("V2", 22)
    assert seen.get(timeout=WAIT) == "22"
    kw.monitor(start=False)


def test_no_value_yet_is_a_ktl_error_not_none(svc):
    kw = svc["EMPTY1"]
    assert kw["populated"] is False
    for key in ("ascii", "binary"):
        with pytest.raises(ktl.ktlError):
            kw[key]
        with pytest.raises(ktl.NoValue):
            kw[key]


# -- 2. typed keywords ---------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(TYPED))
def test_every_type_has_its_class_type_name_and_values(svc, name):
    written, ascii, binary = TYPED[name]
    kw = svc[name]
    cls = ktl.Keyword.types[KTL_TYPES[name]]
    assert type(kw) is cls and isinstance(kw, ktl.Keyword)
    assert kw["type"] == kw.KTL_TYPE == KTL_TYPES[name]
    assert kw.write(written) == ascii
    assert (kw["ascii"], kw["binary"]) == (ascii, binary)
    assert kw.read(both=True) == (binary, ascii)
    assert kw.cast(written) == binary


def test_type_aliases_and_shared_conversion_rules():
    types = ktl.Keyword.types
    assert types["KTL_FLOAT"] is types["KTL_DOUBLE"] is ktl.Keyword.Double
    assert types["KTL_ENUMM"] is types["KTL_MASK"] is ktl.Keyword.Mask
    assert types["KTL_FLOAT_ARRAY"] is types["KTL_DOUBLE_ARRAY"]
    assert types["KTL_INT64"] is types["KTL_INT"]
    assert ktl.Keyword.Double.KTL_ALIASES == ("KTL_FLOAT",)
    # One hierarchy: the dispatcher's type classes are the conversion rules.
    assert ktl.Keyword.Double.keywordType is keywords.Double
    assert ktl.Keyword.Boolean.keywordType is keywords.Boolean


def test_integer_keywords_refuse_a_fraction(svc):
    """A deliberate difference: KTL truncates 2.5 to 2; cauldron refuses it."""
    kw = svc["I"]
    kw.write(7)
    with pytest.raises(ValueError):
        kw.cast(2.5)
    with pytest.raises(ValueError):
        kw.write(2.5)
    with pytest.raises(ValueError):
        kw.write(2.5, binary=True)
    assert kw.read() == "7"


def test_binary_writes_and_ktl_dictionary_keys(svc):
    e, i, d = svc["E"], svc["I"], svc["D"]
    assert e.write(1, binary=True) == "ON"
    assert e["enumerators"] == ["OFF", "ON", "STANDBY"]
    assert i["range"] == {"binary": {"minimum": -100, "maximum": 100},
                          "ascii": {"minimum": "-100", "maximum": "100"}}
    assert (d["units"], d["help"], d["service"], d["name"]) == ("K", "cold head", "demo", "D")
    with pytest.raises(ValueError):
        d["enumerators"]
    assert d["error"] is None
    with pytest.raises(ValueError):
        i.write(1000)
    assert isinstance(i["error"], ktl.ktlError)
    i.write(3)
    assert i["error"] is None


def test_keywords_compute_and_compare_as_their_values(svc):
    i, d = svc["I"], svc["D"]
    i.write(4)
    d.write(1.5)
    assert i == 4 and i != 5 and i > 3 and i - d == 2.5 and 10 - i == 6
    assert abs(-i) == 4 and float(i) == 4.0 and i * 2 == 8
    assert {i: "a keyword is one object"}[i]  # hashable whatever its value


# -- 3. history, clone, poll, propagate -------------------------------------------------


def test_history_keeps_the_newest_values_with_their_times(svc, dispatcher):
    kw = svc["COUNT"]
    assert kw.history.length == 16  # unless told otherwise
    kw.history.length = 3
    seen = collector(kw)
    kw.monitor()
    for n in range(1, 6):
        dispatcher.set("COUNT", n)
    until(lambda: kw.history and kw.history[-1].ascii == "5", "the last value recorded")
    kw.monitor(start=False)
    assert len(kw.history) == 3 and kw["history"] is kw.history
    assert [entry["binary"] for entry in kw.history] == [3, 4, 5]
    newest = kw.history[-1]
    assert (newest.binary, newest["ascii"]) == (5, "5")
    assert abs(newest.time - time.time()) < 60
    assert not seen.empty()
    with pytest.raises(ValueError):
        kw.history.length = 0


def test_clone_is_an_independent_keyword(svc, dispatcher):
    kw = svc["V3"]
    twin = kw.clone()
    assert twin is not kw and type(twin) is type(kw) and twin.full_name == kw.full_name
    assert svc["V3"] is kw  # the service still hands out the original
    mine, theirs = collector(kw), collector(twin)
    twin.monitor()
    assert theirs.get(timeout=WAIT) == "3"
    dispatcher.set("V3", 33)
    assert theirs.get(timeout=WAIT) == "33"
    assert kw["monitored"] is False and twin["monitored"] is True
    assert nothingOn(mine)
    twin.monitor(start=False)


def test_poll_reads_periodically_until_stopped(svc, dispatcher):
    kw = svc["V4"]
    seen = collector(kw)
    kw.poll(0.05)
    assert seen.get(timeout=WAIT) == "4"
    dispatcher.set("V4", 44)  # not monitored: only a poll's read can see it
    until(lambda: kw.history and kw.history[-1].binary == 44, "polled")
    kw.poll(start=False)
    while not seen.empty():
        seen.get()
    dispatcher.set("V4", 45)
    assert nothingOn(seen) and kw["binary"] == 44  # four periods: polling has stopped
    with pytest.raises(ValueError):
        kw.poll(0)


def test_shutdown_stops_polling(svc):
    """ktl.shutdown() ends polls as it ends monitors: no read connects again by itself."""
    kw = svc["V4"]
    kw.poll(0.05)
    assert kw._poll is not None and kw._poll.running
    ktl.shutdown()
    assert kw._poll is None
    assert kw.read() == "45"  # a call of the user's own connects again


def test_propagate_calls_every_callback_now(svc):
    kw = svc["V5"]
    kw.read()
    seen = collector(kw)
    kw.propagate()
    assert seen.get(timeout=WAIT) == "5"


# -- 4. wait, sequences, heartbeats ------------------------------------------------------


def test_wait_for_a_write_started_without_waiting(svc):
    kw = svc["V6"]
    sequence = kw.write(66, wait=False)
    assert kw.wait(sequence=sequence, timeout=WAIT) is True
    assert kw.read() == "66"
    assert kw.wait(expression="== 66", timeout=WAIT) is True
    assert kw.waitfor("> 100", timeout=0.2) is False


def test_heartbeat_loss_and_recovery(svc, dispatcher):
    """A heartbeat keyword gone quiet marks the service dead; its return, alive again."""
    for bad in (0, -1, True, "5"):
        with pytest.raises(ValueError):
            svc.heartbeat("HB", bad)
    dispatcher.beat(True)
    svc.heartbeat("HB", HEARTBEAT_PERIOD)
    other = svc["V7"]
    seen = collector(other)
    other.monitor()
    assert seen.get(timeout=WAIT) == "7"
    until(svc.isAlive, "alive while HB beats")
    dispatcher.beat(False)
    until(lambda: not svc.isAlive() and not other.isAlive(), "dead once HB is quiet")
    dispatcher.beat(True)
    until(svc.isAlive, "alive again once HB beats")
    dispatcher.set("V7", 77)  # monitors carried on by themselves
    assert seen.get(timeout=WAIT) == "77"
    other.monitor(start=False)
    dispatcher.beat(False)


# -- 5. the procedural interface, errors, expressions, configuration ---------------------


def test_procedural_calls(cfg, svc, dispatcher):
    assert ktl.cache("demo", config=cfg) is svc
    assert ktl.cache("demo.MODE", config=cfg) is svc["MODE"] is ktl.cache("demo", "mode",
                                                                        config=cfg)
    assert ktl.cache()["demo"] is svc
    assert "MODE" in svc.list() and svc.list() == svc.keywords()
    assert ktl.write("demo", "MODE", "OBSERVING", config=cfg) == "OBSERVING"
    assert ktl.read("demo", "MODE", config=cfg) == "OBSERVING"
    assert ktl.convert("demo", "E", ascii="on", config=cfg) == 1
    assert ktl.convert("demo", "E", binary=2, config=cfg) == "STANDBY"
    with pytest.raises(ValueError):
        ktl.convert("demo", "E", config=cfg)
    calls = queue.Queue()
    ktl.monitor("demo", "MODE", lambda kw, value, data: calls.put((kw.name, value, data)),
                "my data", config=cfg)
    assert calls.get(timeout=WAIT) == ("MODE", "OBSERVING", "my data")
    dispatcher.set("MODE", "STANDBY")
    assert calls.get(timeout=WAIT) == ("MODE", "STANDBY", "my data")
    ktl.monitor("demo", "MODE", start=False, config=cfg)
    assert ktl.waitFor("$demo.MODE == STANDBY", timeout=WAIT, config=cfg) is True
    assert ktl.waitfor("$demo.MODE == OBSERVING", timeout=0.2, config=cfg) is False
    assert svc.waitFor("$demo.MODE == standby", timeout=WAIT) is True
    assert ktl.close("demo") is True and ktl.listen() is None


def test_errors_are_caught_by_their_ktl_names(cfg, svc):
    with pytest.raises(ktl.ktlError):
        svc["RO"].write(2)
    with pytest.raises(ValueError):  # a read-only keyword refuses, as a bad value does
        svc["RO"].write(2)
    with pytest.raises(KeyError):
        svc["NOPE"]
    ktl.install()
    from ktl.Exceptions import ktlError  # as KTL scripts import it

    assert ktlError is ktl.ktlError
    assert issubclass(ktl.TimeoutException, TimeoutError)
    assert issubclass(ktl.TimeoutException, ktl.ktlError)
    with pytest.raises(ktl.TimeoutException):
        ktl.Service("demo", config=directConfig(*freePorts()), timeout=0.3)


def test_expressions_evaluate_and_wait(cfg, dispatcher):
    dispatcher.set("MODE", "STANDBY")
    expression = ktl.Expression("$demo.MODE == STANDBY and $demo.RO < 2", config=cfg)
    assert expression.evaluate() is True
    assert expression.wait(timeout=WAIT) is True
    assert ktl.Expression("$demo.RO > 1", config=cfg).wait(timeout=0.2) is False


def test_configure_sets_the_configuration_of_calls_given_none(cfg, svc):
    ktl.configure(cfg)
    try:
        assert ktl.Service("demo") is svc
        assert ktl.read("demo", "RO") == "1"
        assert ktl.waitFor("$demo.RO == 1", timeout=WAIT) is True
    finally:
        ktl.configure(None)


def test_unsupported_names_say_so_and_where_to_look():
    with pytest.raises(ktl.Unsupported) as caught:
        ktl.ktlc.probe("demo", "MODE")
    assert "ktl.ktlc is not supported by cauldron" in str(caught.value)
    assert "Coming from KTL" in str(caught.value)
    assert not hasattr(ktl, "nonsense")


def test_logging_hook(tmp_path):
    path = tmp_path / "ktl.log"
    with open(path, "w") as file:
        ktl.logger(file)
        ktl.loglevel(ktl.LOG_INFO)
        ktl.log(ktl.LOG_DEBUG, "hidden")
        ktl.log(ktl.LOG_INFO, "shown")
        ktl.logger(None)
    ktl.log(ktl.LOG_INFO, "after")
    text = path.read_text()
    assert "shown" in text and "hidden" not in text and "after" not in text


# -- 6. unmodified KTL scripts -------------------------------------------------------------

SCRIPT = """\
import sys

import ktl
from ktl.Exceptions import ktlError

service = ktl.cache(sys.argv[1])
mode = service["MODE"]
mode.write("READY")
ktl.write(sys.argv[1], "I", 9, wait=True)
print(mode.read(), ktl.read(sys.argv[1], "I", binary=True) + 1, mode["type"])
print(ktl.waitFor("($%s.MODE == READY) and ($%s.I >= 9)" % (sys.argv[1], sys.argv[1]),
                  timeout=10))
try:
    service["NOPE"]
except KeyError:
    print("no such keyword")
"""


def writeConfig(path, cfg):
    zmq = cfg.asDict()["zmq"]
    path.write_text("[zmq]\nhost = 127.0.0.1\ndispatch-port = %d\nbroadcast-port = %d\n"
                    "[zmq-router]\nenable = no\n" % (zmq["dispatch-port"], zmq["broadcast-port"]))
    return str(path)


def runKtl(*args, env=None):
    environment = dict(os.environ, PYTHONPATH=ROOT, **(env or {}))
    environment.pop("CAULDRON_KTL_TESTS", None)
    return subprocess.run([sys.executable, "-m", "cauldron", "ktl", "run", *args],
                          capture_output=True, text=True, timeout=60, env=environment, cwd=ROOT)


def test_an_unmodified_import_ktl_script_runs(cfg, tmp_path):
    script = tmp_path / "legacy.py"
    script.write_text(SCRIPT)
    configPath = writeConfig(tmp_path / "site.ini", cfg)
    result = runKtl("-c", configPath, str(script), "demo")
    assert (result.returncode, result.stderr) == (0, ""), result
    assert result.stdout == "READY 10 KTL_STRING\nTrue\nno such keyword\n"
    # The configuration from the environment, as ktl.Service(name) reads it.
    again = runKtl(str(script), "demo", env={"CAULDRON_CONFIG": configPath})
    assert (again.returncode, again.stdout) == (0, result.stdout), again


def test_a_script_using_an_unsupported_call_gets_one_line(tmp_path):
    script = tmp_path / "lowlevel.py"
    script.write_text("import ktl\nprint('started')\nktl.ktlc.probe('demo', 'MODE')\n")
    result = runKtl(str(script))
    assert result.returncode == 1 and result.stdout == "started\n"
    assert result.stderr == (f"cauldron ktl: {script}: ktl.ktlc is not supported by cauldron: "
                             "it is KTL Python's wrapper of the KTL C library; cauldron speaks "
                             "ZeroMQ and has no C layer (see \"Coming from KTL\" in "
                             "docs/ktl.rst)\n")
    missing = runKtl(str(tmp_path / "nowhere.py"))
    assert (missing.returncode, missing.stderr) == (
        2, f"cauldron ktl: {tmp_path / 'nowhere.py'}: no such script\n")


def test_install_inside_a_program():
    assert ktl.install() is ktl
    imported = importlib.import_module("ktl")  # what a program's "import ktl" gives
    assert imported is ktl and sys.modules["ktl.Exceptions"] is ktl.Exceptions


def freePorts():
    import socket

    ports = []
    for _ in range(2):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            ports.append(s.getsockname()[1])
    return ports


# -- the parent process: run the tests above in a child, one proxy per test ------------------

if not CHILD:
    ktlChild = ktlchild.childFixture(__file__)
    ktlchild.proxyAll(globals())
