"""Tests for cauldron.tap and the twistd plugins: options, service tree, discovery.

Running twistd for real: one-line usage errors and --version here
(TwistdOneLineErrorTests); address in use in tests/test_cli.py.
"""

import importlib
import io
import os
import shutil
import subprocess
import sys
import tempfile

from processes import DEADLINE, TWISTD, environment
from twisted.application.service import IService, IServiceMaker, MultiService, Service
from twisted.internet import defer
from twisted.internet.testing import MemoryReactorClock
from twisted.logger import capturedLogs, formatEvent
from twisted.plugin import IPlugin, getPlugins
from twisted.python import usage
from twisted.trial.unittest import SynchronousTestCase
from zope.interface.verify import verifyObject

from cauldron import keywords
from cauldron.config import Config
from cauldron.errors import LeaseConflict
from cauldron.tap import (
    FENCED_STATUS,
    DispatcherOptions,
    DispatcherRunner,
    RouterOptions,
    makeDispatcherService,
)

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
KEYWORDS = """
[TEMP]
type = "double"
units = "K"
initial = 20.0

[MODE]
type = "enum"
enumerators = ["OFF", "ON"]
"""


def writeFile(testCase, text, name):
    """A file in a fresh temporary directory removed after the test.

    Not trial's mktemp(): under pytest it would create folders in the checkout.
    """
    folder = tempfile.mkdtemp(prefix="cauldron-test-")
    testCase.addCleanup(shutil.rmtree, folder, True)
    path = os.path.join(folder, name)
    with open(path, "w", encoding="utf-8") as f:
        f.write(text)
    return path


class DispatcherOptionsTests(SynchronousTestCase):
    """``twistd cauldron-dispatcher`` options."""

    def setUp(self):
        self.keywordFile = writeFile(self, KEYWORDS, "demo.toml")
        self.patch(os, "environ", {k: v for k, v in os.environ.items() if k != "CAULDRON_CONFIG"})

    def parse(self, *argv):
        options = DispatcherOptions()
        options.parseOptions(list(argv))
        return options

    def test_defaults(self):
        """Only -s and -k are needed; the config defaults and the heartbeat is 1 s."""
        options = self.parse("-s", "demo", "-k", self.keywordFile)
        self.assertEqual(options["service"], "demo")
        self.assertEqual(options["keywords"], self.keywordFile)
        self.assertIsNone(options["config"])
        self.assertEqual(options["heartbeat"], 1.0)
        self.assertIsInstance(options.loadedConfig, Config)
        self.assertEqual([kw.name for kw in options.keywordObjects], ["TEMP", "MODE"])

    def test_longOptions(self):
        """Long forms and --heartbeat are accepted; the config file is loaded."""
        config = writeFile(self, "[zmq-router]\nenable = no\n", "c.ini")
        options = self.parse(
            "--config", config, "--service", "demo", "--keywords", self.keywordFile,
            "--heartbeat", "0.25",
        )
        self.assertEqual(options["heartbeat"], 0.25)
        self.assertFalse(options.loadedConfig.get("zmq-router", "enable"))

    def test_serviceRequired(self):
        """Without -s the options fail with a UsageError naming it."""
        error = self.assertRaises(usage.UsageError, self.parse, "-k", self.keywordFile)
        self.assertIn("--service", str(error))

    def test_keywordsRequired(self):
        """Without -k the options fail with a UsageError naming it."""
        error = self.assertRaises(usage.UsageError, self.parse, "-s", "demo")
        self.assertIn("--keywords", str(error))

    def test_badServiceName(self):
        """A service name with spaces is refused."""
        self.assertRaises(usage.UsageError, self.parse, "-s", "my demo", "-k", self.keywordFile)

    def test_dispatcherName(self):
        """-d/--dispatcher names the dispatcher within its service; none by default."""
        self.assertIsNone(self.parse("-s", "demo", "-k", self.keywordFile)["dispatcher"])
        options = self.parse("-s", "deimot", "-d", " Motors ", "-k", self.keywordFile)
        self.assertEqual(options["dispatcher"], "Motors")
        options = self.parse("--service", "deimot", "--dispatcher", "temps",
                             "--keywords", self.keywordFile)
        self.assertEqual(options["dispatcher"], "temps")
        self.assertIn("-d DISPNAME", DispatcherOptions.synopsis)
        self.assertIn("--dispatcher", str(DispatcherOptions()))

    def test_badDispatcherName(self):
        """A dispatcher name with spaces, or none at all, is refused, naming the option."""
        for bad in ("my motors", "", "  "):
            error = self.assertRaises(usage.UsageError, self.parse, "-s", "demo", "-d", bad,
                                      "-k", self.keywordFile)
            self.assertIn("--dispatcher", str(error))

    def test_permissionsNeedSecureMode(self):
        """writers/readers in plain mode are refused before anything runs, naming them."""
        guarded = writeFile(self, '[TEMP]\ntype = "double"\nwriters = ["ops"]\n', "g.toml")
        error = self.assertRaises(usage.UsageError, self.parse, "-s", "demo", "-k", guarded)
        self.assertIn("writers/readers (TEMP) need secure mode", str(error))

    def test_state(self):
        """--state names the state file; none by default (the dispatcher's default path)."""
        self.assertIsNone(self.parse("-s", "demo", "-k", self.keywordFile)["state"])
        options = self.parse("-s", "demo", "-k", self.keywordFile, "--state", "/var/x.sqlite")
        self.assertEqual(options["state"], "/var/x.sqlite")
        self.assertIn("--state PATH", DispatcherOptions.synopsis)
        self.assertIn("XDG_STATE_HOME", str(DispatcherOptions()))

    def test_emptyState(self):
        """An empty --state is refused, naming the option."""
        error = self.assertRaises(usage.UsageError, self.parse, "-s", "demo",
                                  "-k", self.keywordFile, "--state", " ")
        self.assertIn("--state", str(error))

    def test_badHeartbeat(self):
        """The heartbeat must be a positive number of seconds, at most 60."""
        for value in ("0", "-1", "fast", "nan", "inf", "60.5"):
            self.assertRaises(
                usage.UsageError,
                self.parse, "-s", "demo", "-k", self.keywordFile, "--heartbeat", value,
            )

    def test_badKeywordFile(self):
        """A bad keyword file is a UsageError naming file, keyword and field."""
        bad = writeFile(self, '[TEMP]\ntype = "double"\nrange = [1]\n', "bad.toml")
        error = self.assertRaises(usage.UsageError, self.parse, "-s", "demo", "-k", bad)
        self.assertEqual(str(error), "%s: [TEMP] range: expected [min, max], got [1]" % bad)

    def test_missingKeywordFile(self):
        """A missing keyword file is a UsageError naming it."""
        error = self.assertRaises(
            usage.UsageError, self.parse, "-s", "demo", "-k", "/nonexistent/k.toml"
        )
        self.assertIn("/nonexistent/k.toml", str(error))

    def test_badConfig(self):
        """A bad configuration file is a UsageError naming section and key."""
        config = writeFile(self, "[zmq]\ndispatch-port = lots\n", "c.ini")
        error = self.assertRaises(
            usage.UsageError, self.parse, "-c", config, "-s", "demo", "-k", self.keywordFile
        )
        self.assertIn("[zmq] dispatch-port", str(error))

    def test_routerOptionsUnchanged(self):
        """The router options still parse -c and -v."""
        options = RouterOptions()
        options.parseOptions(["-v", "-v"])
        self.assertEqual(options["verbose"], 2)


class MakeServiceTests(SynchronousTestCase):
    """makeDispatcherService builds a runner holding the dispatcher."""

    def setUp(self):
        self.keywordFile = writeFile(self, KEYWORDS, "demo.toml")
        self.patch(os, "environ", {k: v for k, v in os.environ.items() if k != "CAULDRON_CONFIG"})

    def test_tree(self):
        """One DispatcherService, configured from the options, inside a MultiService."""
        from cauldron.dispatcher import DispatcherService

        options = DispatcherOptions()
        options.parseOptions(["-s", "Demo", "-k", self.keywordFile, "--heartbeat", "2"])
        reactor = MemoryReactorClock()
        top = makeDispatcherService(options, reactor=reactor)
        self.assertTrue(verifyObject(IService, top))
        self.assertIsInstance(top, MultiService)
        [child] = list(top)
        self.assertIsInstance(child, DispatcherService)
        self.assertIs(top.dispatcher, child)
        self.assertEqual(child.name, "demo")
        self.assertEqual(child.keywords(), ["MODE", "TEMP"])
        self.assertEqual(child.heartbeatInterval, 2.0)
        self.assertIs(child.config, options.loadedConfig)
        self.assertIsInstance(child["temp"], keywords.Double)
        self.assertFalse(top.running)
        self.assertEqual(child.dispatcherName, "demo")
        self.assertIsNone(child.statePath)

    def test_treeWithState(self):
        """--state reaches the DispatcherService as its state path."""
        options = DispatcherOptions()
        options.parseOptions(["-s", "demo", "-k", self.keywordFile, "--state", "/tmp/s.sqlite"])
        top = makeDispatcherService(options, reactor=MemoryReactorClock())
        self.assertEqual(top.dispatcher.statePath, "/tmp/s.sqlite")
        self.assertEqual(top.dispatcher.stateFilePath(), "/tmp/s.sqlite")

    def test_treeWithDispatcherName(self):
        """-d reaches the DispatcherService as its dispatcher name."""
        options = DispatcherOptions()
        options.parseOptions(["-s", "Deimot", "-d", "Motors", "-k", self.keywordFile])
        top = makeDispatcherService(options, reactor=MemoryReactorClock())
        self.assertEqual((top.dispatcher.name, top.dispatcher.dispatcherName),
                         ("deimot", "motors"))


class FakeDispatcher(Service):
    """Stands in for a DispatcherService: whenReady gives a chosen result."""

    def __init__(self, result):
        self.name = self.label = "demo"
        self._result = result
        self.fencedBy = defer.Deferred()

    def whenReady(self):
        if isinstance(self._result, Exception):
            return defer.fail(self._result)
        return defer.succeed(self._result)

    def whenFenced(self):
        return self.fencedBy


class FakeReactor:
    """Records callWhenRunning hooks and stop() calls; runs hooks on request."""

    def __init__(self):
        self.hooks = []
        self.stops = 0

    def callWhenRunning(self, f, *args, **kwargs):
        self.hooks.append((f, args, kwargs))

    def stop(self):
        self.stops += 1

    def runHooks(self):
        hooks, self.hooks = self.hooks, []
        for f, args, kwargs in hooks:
            f(*args, **kwargs)


class RunnerTests(SynchronousTestCase):
    """DispatcherRunner: a failed start stops the reactor and sets the exit status."""

    def test_failedStart(self):
        """A start failure is logged as one line, stops the reactor and asks for status 1."""
        reactor = FakeReactor()
        statuses = []
        runner = DispatcherRunner(
            FakeDispatcher(OSError("address already in use: tcp://127.0.0.1:1")),
            reactor=reactor,
            exitWith=statuses.append,
        )
        with capturedLogs() as events:
            runner.startService()
        self.assertEqual(statuses, [1])
        self.assertIsNotNone(runner.failure)
        messages = [formatEvent(e) for e in events if e.get("log_namespace") == "cauldron.tap"]
        self.assertEqual(
            messages,
            ["cauldron-dispatcher: cannot serve 'demo': address already in use: "
             "tcp://127.0.0.1:1"],
        )
        # twistd starts services before the reactor runs: the stop waits for it.
        self.assertEqual(reactor.stops, 0)
        reactor.runHooks()
        self.assertEqual(reactor.stops, 1)

    def test_started(self):
        """A successful start logs the addresses and leaves the reactor alone."""
        reactor = FakeReactor()
        statuses = []
        runner = DispatcherRunner(
            FakeDispatcher(("tcp://127.0.0.1:1", "tcp://127.0.0.1:2")),
            reactor=reactor,
            exitWith=statuses.append,
        )
        with capturedLogs() as events:
            runner.startService()
        self.assertEqual(statuses, [])
        self.assertIsNone(runner.failure)
        text = " ".join(formatEvent(e) for e in events)
        self.assertIn("dispatch tcp://127.0.0.1:1, broadcast tcp://127.0.0.1:2", text)
        self.assertEqual((reactor.hooks, reactor.stops), ([], 0))


    def test_fenced(self):
        """A dispatcher fenced while serving stops the reactor and asks for status 3."""
        reactor = FakeReactor()
        statuses = []
        dispatcher = FakeDispatcher(("tcp://127.0.0.1:1", "tcp://127.0.0.1:2"))
        runner = DispatcherRunner(dispatcher, reactor=reactor, exitWith=statuses.append)
        runner.startService()
        self.assertEqual((statuses, reactor.stops), ([], 0))
        dispatcher.fencedBy.callback(LeaseConflict("taken over", detail={"host": "b"}))
        self.assertEqual((statuses, reactor.stops), ([FENCED_STATUS], 1))


class PluginTests(SynchronousTestCase):
    """The plugins are discoverable by twistd."""

    def setUp(self):
        # importlib: ruff would sort a "twisted.plugins" import as first-party (our folder).
        pluginPackage = importlib.import_module("twisted.plugins")
        plugins = os.path.join(REPO, "twisted", "plugins")
        if plugins not in pluginPackage.__path__:
            # The repository is not installed: find its plugins as PYTHONPATH would.
            pluginPackage.__path__.append(plugins)
            self.addCleanup(pluginPackage.__path__.remove, plugins)

    def plugin(self, tapname):
        for plugin in getPlugins(IServiceMaker):
            if plugin.tapname == tapname:
                return plugin
        self.fail("no %s plugin" % (tapname,))

    def test_dispatcherPlugin(self):
        """cauldron-dispatcher provides IServiceMaker with our options and maker."""
        plugin = self.plugin("cauldron-dispatcher")
        self.assertTrue(verifyObject(IServiceMaker, plugin))
        self.assertTrue(verifyObject(IPlugin, plugin))
        self.assertIs(plugin.options, DispatcherOptions)
        self.assertIn("TOML", plugin.description)

    def test_routerPlugin(self):
        """cauldron-router is discoverable too."""
        plugin = self.plugin("cauldron-router")
        self.assertTrue(verifyObject(IServiceMaker, plugin))
        self.assertIs(plugin.options, RouterOptions)

    def test_pluginMakesService(self):
        """The plugin's makeService goes through makeDispatcherService."""
        plugin = self.plugin("cauldron-dispatcher")
        options = plugin.options()
        options.parseOptions(["-s", "demo", "-k", writeFile(self, KEYWORDS, "k.toml")])
        top = plugin.makeService(options)
        self.assertIsInstance(top, DispatcherRunner)


class TwistdOneLineErrorTests(SynchronousTestCase):
    """Under twistd, a bad option or file is one line on stderr, nothing on stdout."""

    def twistd(self, *args):
        folder = tempfile.mkdtemp(prefix="cauldron-test-")
        self.addCleanup(shutil.rmtree, folder, True)
        return subprocess.run(
            [*TWISTD, "-n", "--pidfile=", *args], cwd=folder, env=environment(),
            capture_output=True, text=True, timeout=DEADLINE, stdin=subprocess.DEVNULL,
        )

    def assertOneLine(self, result, plugin, message):
        self.assertEqual(result.returncode, 1, result)
        self.assertEqual(result.stdout, "", result)
        self.assertEqual(result.stderr, "twistd %s: %s\n" % (plugin, message))

    def test_badKeywordFile(self):
        bad = writeFile(self, '[TEMP]\ntype = "double"\nrange = [1]\n', "bad.toml")
        result = self.twistd("cauldron-dispatcher", "-s", "demo", "-k", bad)
        self.assertOneLine(result, "cauldron-dispatcher",
                           "%s: [TEMP] range: expected [min, max], got [1]" % bad)

    def test_badConfig(self):
        config = writeFile(self, 'title = "toml"\n', "cauldron.toml")
        result = self.twistd("cauldron-dispatcher", "-c", config, "-s", "demo",
                             "-k", writeFile(self, KEYWORDS, "k.toml"))
        self.assertOneLine(
            result, "cauldron-dispatcher",
            "%s: not an INI file: line 1 comes before any [section] header: "
            "'title = \"toml\"'" % config)
        result = self.twistd("cauldron-router", "-c", config)
        self.assertEqual(result.stderr.splitlines()[0][:24], "twistd cauldron-router: ")
        self.assertEqual((result.returncode, result.stdout), (1, ""))

    def test_badOption(self):
        result = self.twistd("cauldron-dispatcher", "--bogus")
        self.assertOneLine(result, "cauldron-dispatcher", "option --bogus not recognized")
        result = self.twistd("cauldron-dispatcher", "-s", "demo")
        self.assertOneLine(result, "cauldron-dispatcher", "--keywords is required")
        result = self.twistd("cauldron-dispatcher", "-s", "demo", "--heartbeat", "fast")
        self.assertOneLine(result, "cauldron-dispatcher",
                           "--heartbeat: not a number of seconds: 'fast'")

    def test_version(self):
        """--version prints cauldron's version, for the dispatcher and the router."""
        from cauldron import __version__

        for plugin in ("cauldron-dispatcher", "cauldron-router"):
            result = self.twistd(plugin, "--version")
            self.assertEqual((result.returncode, result.stdout, result.stderr),
                             (0, "cauldron %s\n" % (__version__,), ""))


class OneLineUsageTests(SynchronousTestCase):
    """Outside twistd (no parent options) a UsageError still propagates."""

    def test_withoutParentRaises(self):
        self.assertRaises(usage.UsageError, DispatcherOptions().parseOptions, ["--bogus"])

    def test_withParentExits(self):
        class Parent:
            subCommand = "cauldron-dispatcher"

        options = DispatcherOptions()
        options.parent = Parent()
        stderr = io.StringIO()
        self.patch(sys, "stderr", stderr)
        error = self.assertRaises(SystemExit, options.parseOptions, ["--bogus"])
        self.assertEqual(error.code, 1)
        self.assertEqual(stderr.getvalue(),
                         "twistd cauldron-dispatcher: option --bogus not recognized\n")
