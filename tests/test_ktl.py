"""Tests for cauldron.ktl, the blocking KTL-style facade, against a real dispatcher.

ktl runs Twisted's global reactor in a crochet thread, and a reactor runs
once per process; the trial-based test modules spin that same reactor
themselves.  So these tests always run in a child pytest process (this
file, with ``CAULDRON_KTL_TESTS=child``); in the parent each test is a
proxy reporting the child's outcome for it.  The dispatcher under test runs
inside ktl's own reactor (started through crochet), in direct mode on
ephemeral ports.
"""

import queue
import socket
import subprocess
import sys
import textwrap
import threading
import time

import ktlchild
import pytest

CHILD = ktlchild.CHILD
ROOT = ktlchild.ROOT
WAIT = 10  # seconds: generous bound on anything that should happen promptly
# crochet 2.1.1 calls threading.Event.isSet(), deprecated since Python 3.10
pytestmark = pytest.mark.filterwarnings("ignore:isSet.*:DeprecationWarning")

if CHILD:
    import crochet
    from twisted.internet import defer
    from twisted.logger import globalLogPublisher

    from cauldron import config, errors, expressions, keywords, ktl
    from cauldron.dispatcher import DispatcherService
    from cauldron.protocol import codec
    from cauldron.transport import portOf


# -- the dispatcher under test (child only) -------------------------------------


def directConfig(dispatchPort=0, broadcastPort=0):
    return config.Config.fromMapping({
        "zmq": {"host": "127.0.0.1", "dispatch-port": dispatchPort,
                "broadcast-port": broadcastPort},
        "zmq-router": {"enable": "no"},
    })


class Hooks:
    """Dispatcher-side hooks the tests synchronise on (no sleeps)."""

    def __init__(self):
        self.tempReads = 0
        self.tempPrimed = threading.Event()  # a read or a new subscription reached TEMP
        self.countReads = 0
        self.slowWrites = []  # Deferreds of SLOW writes, released by the test
        self.slowCalled = threading.Event()
        self.hung = []  # Deferreds of HANG reads: the dispatcher never answers them
        self.dispatcher = None  # the DispatcherService, once started

    def hangPreread(self):
        d = defer.Deferred()
        self.hung.append(d)
        return d

    def tempPreread(self):
        self.tempReads += 1
        self.tempPrimed.set()

    def countPreread(self):
        self.countReads += 1

    def slowWrite(self, value):
        d = defer.Deferred()
        self.slowWrites.append(d)
        self.slowCalled.set()
        return d


def demoKeywords(hooks):
    strings = [keywords.String(f"S{i}", initial="") for i in range(6)]
    return strings + [
        keywords.Double("TEMP", initial=3, units="K", preread=hooks.tempPreread),
        keywords.Enumerated("MODE", enumerators=["OFF", "ON"], initial="OFF"),
        keywords.String("MSG", initial="hello"),
        keywords.Boolean("FLAG", initial=True),
        keywords.Integer("COUNT", initial=0, preread=hooks.countPreread),
        keywords.DoubleArray("DA", initial=[1.5, -2.0]),
        keywords.Integer("RO", readonly=True, initial=1),
        keywords.Integer("WO", writeonly=True),
        keywords.Integer("SLOW", initial=0, write=hooks.slowWrite),
        # reads hang, and a new subscription is not answered (see demo())
        keywords.Integer("HANG", initial=0, preread=hooks.hangPreread),
    ]


@pytest.fixture(scope="module")
def demo():
    """``(config, hooks)``: a dispatcher in ktl's reactor, stopped at the end."""
    crochet.setup()
    hooks = Hooks()

    @crochet.wait_for(WAIT)
    def start():
        from twisted.internet import reactor

        dispatcher = DispatcherService("demo", directConfig(), demoKeywords(hooks),
                                       reactor=reactor, heartbeatInterval=0.5)
        answerSubscription = dispatcher._subscribed

        def subscribed(topic):
            # A new TEMP subscription is answered with the current value:
            # that primes a monitor as a priming read would.
            if topic == codec.topicFor("HANG"):
                return  # never answered: the client falls back to a read, which hangs
            answerSubscription(topic)
            if topic == codec.topicFor("TEMP"):
                hooks.tempPrimed.set()

        dispatcher._subscribed = subscribed
        hooks.dispatcher = dispatcher
        dispatcher.startService()
        return dispatcher.whenReady().addCallback(lambda addresses: (dispatcher, addresses))

    dispatcher, (dispatch, broadcast) = start()
    yield directConfig(portOf(dispatch), portOf(broadcast)), hooks
    ktl.shutdown()
    crochet.wait_for(WAIT)(lambda: releaseHung(hooks))()
    crochet.wait_for(WAIT)(dispatcher.stopService)()


def releaseHung(hooks):
    """Reactor thread: answer the HANG reads at last."""
    while hooks.hung:
        d = hooks.hung.pop()
        if not d.called:
            d.callback(None)


@pytest.fixture
def cfg(demo):
    return demo[0]


@pytest.fixture
def hooks(demo):
    return demo[1]


@pytest.fixture
def svc(cfg):
    return ktl.Service("demo", config=cfg)


@pytest.fixture
def loggedFailures():
    """Twisted log events carrying a failure, collected while the test runs."""
    events = []

    def observe(event):
        if event.get("log_failure") is not None:
            events.append(event)

    globalLogPublisher.addObserver(observe)
    yield events
    globalLogPublisher.removeObserver(observe)


def setAtTheDispatcher(hooks, name, value):
    """Change a value at the dispatcher (a client keyword not monitored never hears of it)."""
    crochet.wait_for(WAIT)(lambda: hooks.dispatcher[name].set(value))()


def until(predicate, what="condition"):
    """Wait for another thread's doing, with a deadline (polled: there is no event to wait on)."""
    deadline = time.monotonic() + WAIT
    while not predicate():
        assert time.monotonic() < deadline, f"{what}: not reached in time"
        threading.Event().wait(0.01)


def pendingCall(part):
    """Whether a ktl call whose description contains ``part`` waits in the reactor."""
    return any(part in call.what for call in list(ktl._calls._pending))


def unreachableConfig():
    """Direct-mode ports where nothing listens."""
    ports = []
    for _ in range(2):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            ports.append(s.getsockname()[1])
    return directConfig(*ports)


# -- services --------------------------------------------------------------------


def test_service_is_cached_and_lists_keywords(svc, cfg):
    assert svc.name == "demo"
    assert ktl.Service("DEMO", cfg) is svc
    assert ktl.cache("demo", config=cfg) is svc
    assert svc.keywords() == sorted(svc.keywords())
    assert {"TEMP", "MODE", "RO", "WO", "DA"} <= set(svc.keywords())
    assert svc["temp"] is svc["TEMP"] is ktl.cache("demo", "Temp", config=cfg)
    assert "temp" in svc and svc.has_keyword("MODE") and svc.has_key("msg")
    assert "NOPE" not in svc and not svc.has_keyword(3)
    ktl.Service("demo", cfg, populate=True)
    assert svc.populated() == svc.keywords()


def test_unknown_keyword_is_a_key_error(svc, cfg):
    with pytest.raises(KeyError, match="NOPE"):
        svc["nope"]
    with pytest.raises(errors.UnknownKeyword):
        ktl.read("demo", "NOPE", config=cfg)


def test_names_must_be_strings(cfg):
    with pytest.raises(TypeError):
        ktl.read(1, "TEMP", config=cfg)
    with pytest.raises(TypeError):
        ktl.read("demo", None, config=cfg)
    with pytest.raises(TypeError):
        ktl.write(b"demo", "TEMP", 1, config=cfg)
    with pytest.raises(TypeError):
        ktl.Service(None)


# -- reads and writes ----------------------------------------------------------------


def test_read_ascii_binary_both(svc, cfg):
    temp = svc["TEMP"]
    temp.write(4)
    assert temp.read() == "4.0"
    assert temp.read(binary=True) == 4.0 and isinstance(temp.read(binary=True), float)
    assert temp.read(both=True) == (4.0, "4.0")
    assert svc.read("TEMP", binary=True) == 4.0
    assert ktl.read("demo", "TEMP", both=True, config=cfg) == (4.0, "4.0")
    svc["MODE"].write("OFF")
    assert svc["MODE"].read(both=True) == (0, "OFF")
    assert svc["FLAG"].read(binary=True) is True
    assert svc["DA"].read(binary=True) == [1.5, -2.0]


def test_write_waits_and_returns_the_new_ascii_value(svc, cfg):
    assert svc["TEMP"].write(12) == "12.0"
    assert svc["TEMP"]["binary"] == 12.0  # the reply updated the keyword
    assert ktl.write("demo", "MODE", 1, config=cfg) == "ON"
    assert svc.write("MSG", "a: b") == "a: b"


def test_write_without_waiting_returns_a_sequence(svc, hooks):
    temp = svc["TEMP"]
    sequence = temp.write(13, wait=False)
    assert isinstance(sequence, ktl.Sequence)
    assert temp.wait(sequence=sequence, timeout=WAIT) is True
    assert temp.read(binary=True) == 13.0
    assert sequence.result() == "13.0"


def test_wait_on_a_sequence_times_out_then_completes(svc, hooks):
    slow = svc["SLOW"]
    hooks.slowCalled.clear()
    sequence = slow.write(5, wait=False)
    assert slow.wait(sequence=sequence, timeout=0.05) is False
    assert hooks.slowCalled.wait(WAIT)  # the dispatcher holds the write in its hook
    assert slow.wait(sequence=sequence, timeout=0.05) is False
    crochet.wait_for(WAIT)(lambda: hooks.slowWrites[-1].callback(None))()
    assert slow.wait(sequence=sequence, timeout=WAIT) is True
    assert slow["binary"] == 5


def test_errors_of_an_unwaited_write_are_raised_by_wait(svc):
    sequence = svc["TEMP"].write("abc", wait=False)
    with pytest.raises(ValueError):
        svc["TEMP"].wait(sequence=sequence, timeout=WAIT)


def test_bad_value_read_only_write_only(svc):
    with pytest.raises(ValueError) as info:
        svc["TEMP"].write("abc")
    assert isinstance(info.value, errors.BadValue)
    with pytest.raises(errors.ReadOnly):
        svc["RO"].write(3)
    with pytest.raises(errors.WriteOnly):
        svc["WO"].read()
    svc["WO"].write(3)


def test_timeout_against_an_unreachable_address():
    started = time.monotonic()
    with pytest.raises(TimeoutError) as info:
        ktl.read("demo", "TEMP", config=unreachableConfig(), timeout=1)
    assert isinstance(info.value, errors.CauldronTimeout)
    assert 0.9 < time.monotonic() - started < 1 + ktl._calls.GRACE + 1


# -- dictionary keys ------------------------------------------------------------------


def test_dictionary_keys(svc):
    temp, mode = svc["TEMP"], svc["MODE"]
    temp.write(7)
    assert temp["ascii"] == "7.0" and temp["binary"] == 7.0
    assert temp["name"] == "TEMP"
    assert temp["service"] == "demo"
    assert temp["units"] == "K"
    assert temp["type"] == "KTL_DOUBLE"
    assert mode["type"] == "KTL_ENUM"
    assert svc["DA"]["type"] == "KTL_DOUBLE_ARRAY"
    assert svc["MSG"]["type"] == "KTL_STRING"
    assert svc["FLAG"]["type"] == "KTL_BOOLEAN"
    assert svc["COUNT"]["type"] == "KTL_INT"
    timestamp = temp["timestamp"]
    assert isinstance(timestamp, float) and abs(timestamp - time.time()) < 60
    assert temp["populated"] is True
    assert temp["reads"] and temp["writes"] and temp["broadcasts"]
    assert svc["RO"]["reads"] and not svc["RO"]["writes"]
    assert not svc["WO"]["reads"] and svc["WO"]["writes"] and not svc["WO"]["broadcasts"]
    assert mode["enumerators"] == mode["keys"] == ["OFF", "ON"]
    assert mode["units"] is None
    with pytest.raises(ValueError):
        temp["enumerators"]
    with pytest.raises(KeyError):
        temp["bogus"]
    mode.write("ON")
    assert mode["ascii"] == "ON" and mode["binary"] == 1


def test_timestamps_have_sub_second_resolution(svc):
    stamps = set()
    for value in range(5):
        svc["TEMP"].write(100 + value)
        stamps.add(svc["TEMP"]["timestamp"])
    assert len(stamps) == 5


# -- monitoring and callbacks ------------------------------------------------------------


def test_monitor_primes_callbacks_with_the_current_value(svc):
    count = svc["COUNT"]
    count.write(41)
    seen = queue.Queue()
    count.callback(lambda kw: seen.put(kw["binary"]))  # a lambda: held strongly
    count.monitor()
    try:
        assert count["monitored"] is True
        assert seen.get(timeout=WAIT) == 41
        threading.Thread(target=lambda: ktl.write("demo", "COUNT", 42,
                                                  config=svc.config)).start()
        assert seen.get(timeout=WAIT) == 42
    finally:
        count.monitor(start=False)
        count.callback(count._callbacks[0], remove=True)
    assert count["monitored"] is False


def test_monitor_stop_does_not_read(svc, hooks):
    count = svc["COUNT"]
    count.monitor()
    reads = hooks.countReads
    count.monitor(start=False)
    assert hooks.countReads == reads
    assert count["monitored"] is False


def test_removed_callbacks_are_not_called_and_preferred_come_first(svc):
    msg = svc["MSG"]
    order, done = [], queue.Queue()

    def removed(kw):
        order.append("removed")

    msg.callback(lambda kw: (order.append("last"), done.put(kw["ascii"])))
    msg.callback(removed)
    msg.callback(lambda kw: order.append("first"), preferred=True)
    msg.callback(removed, remove=True)
    msg.monitor()
    try:
        assert done.get(timeout=WAIT) is not None
        assert order == ["first", "last"]
        msg.write("changed")
        assert done.get(timeout=WAIT) == "changed"
        assert "removed" not in order
    finally:
        msg.monitor(start=False)
        for callback in list(msg._callbacks):
            msg.callback(callback, remove=True)


def test_a_failing_callback_is_logged_and_others_still_run(svc, loggedFailures):
    flag = svc["FLAG"]
    got = queue.Queue()

    def broken(kw):
        raise RuntimeError("boom")

    flag.callback(broken, preferred=True)
    flag.callback(lambda kw: got.put(kw["binary"]))
    try:
        flag.monitor()
        first = got.get(timeout=WAIT)
        flag.write(not first)
        assert got.get(timeout=WAIT) is (not first)
    finally:
        flag.monitor(start=False)
        for callback in list(flag._callbacks):
            flag.callback(callback, remove=True)
    boom = [e for e in loggedFailures if isinstance(e["log_failure"].value, RuntimeError)]
    assert len(boom) >= 2


def test_callbacks_run_in_the_reactor_thread_and_may_not_block(svc):
    msg = svc["MSG"]
    outcome = queue.Queue()

    def callback(kw):
        try:
            kw.read()
        except RuntimeError as e:
            outcome.put(("blocked", str(e), threading.current_thread().name))
        # a write that does not wait is fine here
        outcome.put(("sent", kw.write("from callback", wait=False)))
        msg.callback(callback, remove=True)

    msg.write("before")
    msg.callback(callback)
    msg.monitor()
    try:
        kind, message, thread = outcome.get(timeout=WAIT)
        assert kind == "blocked" and "reactor thread" in message
        assert thread == "CrochetReactor"
        kind, sequence = outcome.get(timeout=WAIT)
        assert msg.wait(sequence=sequence, timeout=WAIT) is True
        assert msg.read() == "from callback"
    finally:
        msg.monitor(start=False)


def test_monitor_from_a_callback_raises_before_starting_anything(svc):
    msg, target = svc["MSG"], svc["S5"]
    target.monitor(start=False)
    outcome = queue.Queue()

    def callback(kw):
        msg.callback(callback, remove=True)
        try:
            target.monitor()
        except RuntimeError as e:
            outcome.put(("raised", str(e), target["monitored"]))
        else:
            outcome.put(("returned", None, target["monitored"]))
        # wait=False is allowed here, and starts the subscription
        outcome.put(("sequence", target.monitor(wait=False), None))

    msg.callback(callback)
    msg.monitor()
    try:
        kind, message, monitored = outcome.get(timeout=WAIT)
        assert (kind, monitored) == ("raised", False)
        assert "reactor thread" in message
        kind, sequence, _ = outcome.get(timeout=WAIT)
        assert sequence.wait(WAIT) is True
        assert target["monitored"] is True
    finally:
        msg.monitor(start=False)
        target.monitor(start=False)


def test_monitor_started_in_a_callback_is_not_left_running(svc):
    target = svc["S4"]
    target.monitor(start=False)
    done = threading.Event()

    def callback(kw):
        svc["MSG"].callback(callback, remove=True)
        try:
            target.monitor()
        except RuntimeError:
            pass
        done.set()

    svc["MSG"].callback(callback)
    svc["MSG"].monitor()
    try:
        assert done.wait(WAIT)
        svc["TEMP"].read()  # a round trip through the reactor: anything queued has run
        assert target["monitored"] is False
        assert target._subscription is None
    finally:
        svc["MSG"].monitor(start=False)


# -- waitFor ----------------------------------------------------------------------------


def test_wait_for_becomes_true_when_another_thread_writes(svc, cfg, hooks):
    svc["TEMP"].write(3)
    hooks.tempPrimed.clear()

    def writer():
        # Write once waitFor has primed (its priming read hit the dispatcher).
        if hooks.tempPrimed.wait(WAIT):
            ktl.write("demo", "TEMP", 33, config=cfg)

    thread = threading.Thread(target=writer)
    thread.start()
    started = time.monotonic()
    assert ktl.waitFor("$demo.TEMP > 30", timeout=WAIT, config=cfg) is True
    assert time.monotonic() - started < WAIT
    thread.join(WAIT)
    assert svc["TEMP"]["binary"] == 33.0


def test_wait_for_false_at_the_timeout(svc, cfg):
    svc["TEMP"].write(3)
    started = time.monotonic()
    assert ktl.waitFor("$demo.TEMP > 1e9", timeout=0.3, config=cfg) is False
    assert 0.3 <= time.monotonic() - started < 0.3 + ktl._calls.GRACE


def test_wait_for_compound_and_string_operands(svc, cfg):
    svc["MODE"].write("ON")
    svc["TEMP"].write(2)
    assert ktl.waitFor('$demo.MODE == "ON" and $demo.TEMP < 5', timeout=WAIT, config=cfg)
    assert ktl.waitFor('$demo.MODE == "on" and $demo.MODE == 1', timeout=WAIT, config=cfg)
    assert not ktl.waitFor('$demo.MODE == "on"', timeout=0.2, case=True, config=cfg)
    assert not ktl.waitFor('$demo.MODE == "OFF" or $demo.TEMP > 5', timeout=0.2, config=cfg)


def test_an_empty_wait_for_expression_is_a_value_error(svc, cfg):
    # "" used to become "$demo.TEMP" (a truth test) and hold at once
    for text in ["", "   ", "\t\n"]:
        with pytest.raises(ValueError, match="empty"):
            svc["TEMP"].waitFor(text, timeout=WAIT)
        with pytest.raises(ValueError, match="empty"):
            ktl.waitFor(text, timeout=WAIT, config=cfg)


def test_keyword_wait_for_forms(svc):
    temp = svc["TEMP"]
    temp.write(8)
    assert temp.waitFor("> 7", timeout=WAIT) is True
    assert temp.waitFor("$demo.TEMP == 8", timeout=WAIT) is True
    assert temp.waitFor(lambda kw: kw["binary"] == 8.0, timeout=WAIT) is True
    assert temp.waitFor("< 0", timeout=0.1) is False
    assert temp.wait(operator=">=", value=8, timeout=WAIT) is True
    assert svc["MODE"].wait(operator="in", value=("ON", "OFF"), timeout=WAIT) is True


def test_keyword_wait_for_the_next_value(svc, cfg, hooks):
    temp = svc["TEMP"]
    temp.write(9)
    setAtTheDispatcher(hooks, "TEMP", 9.5)  # the cached 9.0 is stale: no change to wait for
    hooks.tempPrimed.clear()

    def writer():
        if hooks.tempPrimed.wait(WAIT):  # wait() has primed: this value is the next
            ktl.write("demo", "TEMP", 10, config=cfg)

    thread = threading.Thread(target=writer)
    thread.start()
    assert temp.wait(timeout=WAIT) is True
    assert temp["binary"] == 10.0  # the writer's change, not the one before the call
    thread.join(WAIT)


def test_keyword_wait_is_false_when_nothing_changes_after_the_call(svc, hooks):
    """wait() waits for a change after the call; the stale cached value of an
    unmonitored keyword used to make the first fresh value count as one."""
    s3 = svc["S3"]
    s3.write("seen")  # cached by the client
    setAtTheDispatcher(hooks, "S3", "changed before the call")
    started = time.monotonic()
    assert s3.wait(timeout=0.3) is False
    assert time.monotonic() - started >= 0.3
    assert s3["ascii"] == "changed before the call"


def test_keyword_wait_on_a_monitored_keyword(svc, hooks):
    """A monitored keyword's cached value is current: a change after the call is seen."""
    s1 = svc["S1"]
    s1.monitor()
    try:
        assert s1.wait(timeout=0.2) is False
        outcome = queue.Queue()
        thread = threading.Thread(target=lambda: outcome.put(s1.wait(timeout=WAIT)))
        thread.start()
        until(lambda: pendingCall("demo.S1"), "wait() started")
        setAtTheDispatcher(hooks, "S1", f"changed at {time.monotonic()}")
        assert outcome.get(timeout=WAIT) is True
        thread.join(WAIT)
    finally:
        s1.monitor(start=False)


def test_wait_given_up_by_its_caller_leaves_no_monitor(svc, cfg, monkeypatch):
    """The caller's deadline passing before the reactor's timer (a stalled reactor,
    here a negative grace) cancels the wait, and that stops its monitors."""
    s2 = svc["S2"]
    s2.write("now")
    monkeypatch.setattr(ktl._calls, "GRACE", -0.3)  # the caller gives up 0.3 s before the timer
    waits = [
        lambda: ktl.waitFor("$demo.S2 == 'never'", timeout=0.5, config=cfg),
        lambda: s2.waitFor(lambda kw: False, timeout=0.5),
        lambda: s2.wait(operator="==", value="never", timeout=0.5),
        lambda: s2.wait(timeout=0.5),
    ]
    for wait in waits:
        with pytest.raises(errors.CauldronTimeout):
            wait()
        crochet.wait_for(WAIT)(lambda: None)()  # the cancellation has run in the reactor
        assert not s2._remote.monitored, waits.index(wait)


def test_shutdown_releases_a_blocked_wait_for(svc, cfg):
    """A waitFor blocked in another thread fails when ktl.shutdown() stops its client
    (it used to go on waiting on monitors that had ended: for ever, without a timeout)."""
    outcome = queue.Queue()

    def waiter():
        try:
            outcome.put(ktl.waitFor("$demo.S0 == 'never'", timeout=3 * WAIT, config=cfg))
        except Exception as e:  # reported below
            outcome.put(e)

    thread = threading.Thread(target=waiter)
    thread.start()

    def primed():
        remote = svc["S0"]._remote  # (bound anew if the service connected again)
        return pendingCall("waitFor") and remote.monitored and remote._active

    until(primed, "waitFor primed")
    ktl.shutdown()
    result = outcome.get(timeout=WAIT)
    thread.join(WAIT)
    assert isinstance(result, errors.ServiceUnavailable), result


def test_wait_for_rejects_unsafe_expressions_before_any_io(cfg):
    for text in ["__import__('os').system('true')", "$demo.TEMP.__class__",
                 "[c for c in 'x']", "$demo.TEMP > open()"]:
        with pytest.raises(ValueError):
            ktl.waitFor(text, timeout=1, config=cfg)
    with pytest.raises(ValueError):
        ktl.waitFor("$demo.TEMP > 1 and (lambda: 1)", timeout=1, config=cfg)


def test_wait_for_refuses_an_expression_over_budget_before_any_io():
    """The reported expression (34 s and 1.46 GB in the reactor thread) is refused
    at once: here no dispatcher listens, so any I/O would end in a timeout instead."""
    started = time.monotonic()
    with pytest.raises(expressions.BudgetExceeded, match="repetition too long"):
        ktl.waitFor("$demo.TEMP in (((1,)*10000,)*10000,)*10000", timeout=WAIT,
                    config=unreachableConfig())
    assert time.monotonic() - started < ktl.DEFAULT_TIMEOUT


def test_wait_for_an_unknown_keyword_is_a_key_error(cfg):
    with pytest.raises(KeyError):
        ktl.waitFor("$demo.NOPE > 1", timeout=1, config=cfg)


# -- threads ------------------------------------------------------------------------------


def test_concurrent_reads_and_writes_from_threads(svc, cfg):
    failures = []
    services = []

    def work(index):
        try:
            services.append(ktl.Service("demo", cfg))
            name = f"S{index}"
            for round in range(15):
                value = f"thread {index} round {round}"
                assert ktl.write("demo", name, value, config=cfg) == value
                assert svc[name].read() == value
                assert isinstance(svc["TEMP"].read(binary=True), float)
        except Exception as e:  # reported below, with the thread's index
            failures.append((index, repr(e)))

    threads = [threading.Thread(target=work, args=(i,)) for i in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(WAIT * 3)
    assert not any(thread.is_alive() for thread in threads)
    assert failures == []
    assert all(s is svc for s in services)


def test_is_alive_follows_the_heartbeats():
    """isAlive() turns False when the dispatcher stops, True when it serves again."""

    def startAlive(dispatchPort=0, broadcastPort=0):
        @crochet.wait_for(WAIT)
        def start():
            from twisted.internet import reactor

            dispatcher = DispatcherService(
                "alive", directConfig(dispatchPort, broadcastPort),
                [keywords.Integer("N", initial=1)], reactor=reactor, heartbeatInterval=0.1)
            dispatcher.startService()
            return dispatcher.whenReady().addCallback(lambda addresses: (dispatcher, addresses))

        return start()

    first, (dispatch, broadcast) = startAlive()
    cfg = directConfig(portOf(dispatch), portOf(broadcast))
    svc = ktl.Service("alive", cfg)
    try:
        assert svc.isAlive() and svc["N"].isAlive()
        crochet.wait_for(WAIT)(first.stopService)()
        until(lambda: not svc.isAlive())
        assert not svc["N"].isAlive()
        second, _ = startAlive(portOf(dispatch), portOf(broadcast))
        try:
            until(svc.isAlive)
        finally:
            crochet.wait_for(WAIT)(second.stopService)()
    finally:
        svc.shutdown()


def test_shutdown_then_use_again(cfg):
    """Objects held across ktl.shutdown() stay valid: their next call connects again.

    Monitors end with the client; callbacks stay registered.
    """
    before = ktl.Service("demo", cfg)
    temp, count, msg = before["TEMP"], before["COUNT"], before["MSG"]
    seen = queue.Queue()
    count.callback(seen.put)
    try:
        count.monitor()
        assert seen.get(timeout=WAIT) is count
        ktl.shutdown()
        ktl.shutdown()
        assert count["monitored"] is False
        assert not before.isAlive() and not temp.isAlive()
        assert temp.read(binary=True) == temp["binary"]  # connects again
        assert before.isAlive() and temp.isAlive()
        assert ktl.Service("demo", cfg) is before and before["TEMP"] is temp
        ktl.shutdown()
        assert ktl.read("demo", "TEMP", config=cfg) == temp["ascii"]
        ktl.shutdown()
        assert msg.wait(sequence=msg.write("again", wait=False), timeout=WAIT) is True
        ktl.shutdown()
        count.monitor()
        assert count["monitored"] is True
        count.write(count.read(binary=True) + 1)
        until(lambda: seen.qsize() >= 2, "callbacks after monitoring again")
        ktl.shutdown()
        assert ktl.waitFor("$demo.MSG == 'again'", timeout=WAIT, config=cfg) is True
        ktl.shutdown()
        assert msg.waitFor("== 'again'", timeout=WAIT) is True
        ktl.shutdown()
        assert msg.wait(timeout=0.05) is False
    finally:
        count.monitor(start=False)
        count.callback(seen.put, remove=True)


# -- interpreter exit -----------------------------------------------------------------------


def test_interpreter_exit_is_clean_and_quick(cfg, svc):
    svc["TEMP"].write(3)
    z = cfg.asDict()["zmq"]
    nowhere = unreachableConfig().asDict()["zmq"]
    unused = nowhere["dispatch-port"], nowhere["broadcast-port"]
    script = textwrap.dedent(f"""
        from cauldron import config, ktl
        cfg = config.Config.fromMapping({{
            "zmq": {{"host": "127.0.0.1", "dispatch-port": {z["dispatch-port"]},
                     "broadcast-port": {z["broadcast-port"]}}},
            "zmq-router": {{"enable": "no"}},
        }})
        svc = ktl.Service("demo", cfg)
        temp = svc["TEMP"]
        temp.callback(lambda kw: None)
        temp.monitor()
        assert temp.read(binary=True) == 3.0
        temp.write(3.5)
        assert ktl.waitFor("$demo.TEMP == 3.5", timeout=5, config=cfg)
        nowhere = cfg.replace("zmq", "dispatch-port", {unused[0]})
        nowhere = nowhere.replace("zmq", "broadcast-port", {unused[1]})
        try:  # leaves a connection attempt pending at exit
            ktl.read("demo", "TEMP", config=nowhere, timeout=0.2)
        except TimeoutError:
            print("ok")
    """)
    started = time.monotonic()
    result = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True,
                            text=True, timeout=30)
    elapsed = time.monotonic() - started
    assert (result.returncode, result.stderr, result.stdout) == (0, "", "ok\n")
    assert elapsed < 5


def runScript(cfg, body, timeout=30):
    """Run ``body`` in a fresh interpreter with ``cfg`` (the demo dispatcher) as ``cfg``."""
    z = cfg.asDict()["zmq"]
    script = textwrap.dedent(f"""
        import gc, sys, threading, time
        from cauldron import config, errors, ktl

        def until(predicate, timeout=10):
            # Wait for a condition, with a deadline (polled: it is another thread's).
            deadline = time.monotonic() + timeout
            while not predicate():
                assert time.monotonic() < deadline, "condition not met in time"
                threading.Event().wait(0.01)

        cfg = config.Config.fromMapping({{
            "zmq": {{"host": "127.0.0.1", "dispatch-port": {z["dispatch-port"]},
                     "broadcast-port": {z["broadcast-port"]}}},
            "zmq-router": {{"enable": "no"}},
        }})
    """) + textwrap.dedent(body)
    started = time.monotonic()
    result = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True,
                            text=True, timeout=timeout)
    return result, time.monotonic() - started


def test_dropped_wait_false_handles_print_nothing(cfg, svc, hooks):
    result, elapsed = runScript(cfg, """
        from twisted.logger import globalLogPublisher
        unwaited = []
        globalLogPublisher.addObserver(
            lambda e: unwaited.append(e) if "nobody waited" in (e.get("log_format") or "")
            else None)
        svc = ktl.Service("demo", cfg)
        svc["MSG"].write("fire and forget", wait=False)   # succeeds
        svc["RO"].write(5, wait=False)                    # fails: read-only
        svc["TEMP"].write("abc", wait=False)              # fails: bad value
        svc["TEMP"].read(wait=False)
        svc["FLAG"].monitor(wait=False)
        kept = svc["WO"].read(wait=False)                 # fails, and is waited for
        try:
            kept.wait(5)
        except errors.WriteOnly:
            pass
        del kept
        assert svc["MSG"].read() == "fire and forget"
        until(lambda: not ktl._calls._pending)   # every dropped call has its outcome
        until(lambda: gc.collect() is not None and len(unwaited) >= 2)
        print(len(unwaited), sorted(e["what"] for e in unwaited))
    """)
    assert (result.returncode, result.stderr) == (0, "")
    assert result.stdout == "2 ['write demo.RO', 'write demo.TEMP']\n"
    assert elapsed < 10


def test_a_dispatcher_that_does_not_answer_gives_typed_errors_quietly(cfg, svc, hooks):
    # HANG: the dispatcher never answers a read, nor a new subscription.
    result, elapsed = runScript(cfg, """
        ktl._calls.DEFAULT_TIMEOUT = 1.0   # the clients' request deadline
        ktl._calls.GRACE = 0.4             # shorter than that deadline
        svc = ktl.Service("demo", cfg)
        hang = svc["HANG"]
        # Priming waits 1 s for the subscription's answer, then reads for 1 s:
        # monitor() must outwait both (not give up at 1 + GRACE s), so the
        # client's own error is raised.
        started = time.monotonic()
        try:
            hang.monitor()
        except errors.CauldronTimeout as e:
            print("monitor:", "no reply from service" in str(e) or str(e),
                  1.9 < time.monotonic() - started < 4)
        assert not hang["monitored"]
        # ktl's own deadline passing first: the request is cancelled, quietly.
        ktl._calls.GRACE = -0.2
        try:
            hang.read(timeout=0.3)
        except errors.CauldronTimeout as e:
            print("read:", "no answer within" in str(e) or str(e))
        ktl._calls.GRACE = 0.4
        sequence = hang.read(wait=False)
        print("sequence:", sequence.wait(0.05))   # not complete yet
        del sequence
        until(lambda: not ktl._calls._pending)   # every client deadline passed
        gc.collect()
    """)
    try:
        assert (result.returncode, result.stderr) == (0, "")
        assert result.stdout == "monitor: True True\nread: True\nsequence: False\n"
        assert elapsed < 15
    finally:
        crochet.wait_for(WAIT)(lambda: releaseHung(hooks))()


def test_blocked_calls_at_interpreter_exit_print_no_traceback(cfg, svc, hooks):
    result, elapsed = runScript(cfg, """
        svc = ktl.Service("demo", cfg)
        svc["TEMP"].write(3)

        def report(what, fn):
            try:
                print(what, fn(), flush=True)
            except Exception as e:
                print(what, type(e).__name__, flush=True)

        # a non-daemon thread outlives the main thread: it sees False
        worker = threading.Thread(target=report, args=(
            "waitFor", lambda: ktl.waitFor("$demo.TEMP < -1e9", config=cfg)))
        worker.start()
        # daemon threads blocked at exit: nothing may be printed on stderr
        for target in [
            lambda: ktl.waitFor("$demo.TEMP < -1e9", config=cfg),
            lambda: svc["TEMP"].wait(operator="<", value=-1e9),
            lambda: svc["HANG"].read(timeout=60),
            lambda: svc["HANG"].read(wait=False).result(60),
            lambda: svc["HANG"].read(wait=False).wait(60),
            lambda: svc["HANG"].monitor(),
        ]:
            threading.Thread(target=target, daemon=True).start()
        until(lambda: len(ktl._calls._pending) >= 7)   # all seven calls are blocked
        print("main ends", flush=True)
    """)
    try:
        assert (result.returncode, result.stderr) == (0, "")
        assert result.stdout == "main ends\nwaitFor False\n"
        assert elapsed < 10
    finally:
        crochet.wait_for(WAIT)(lambda: releaseHung(hooks))()


# -- the parent process: run the tests above in a child, one proxy per test ------------------

if not CHILD:
    ktlChild = ktlchild.childFixture(__file__)
    ktlchild.proxyAll(globals())
