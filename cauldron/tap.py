"""twistd plugin options and service makers.

``twistd -n cauldron-dispatcher -c CONFIG -s SERVICE [-d DISPNAME] -k KEYWORDS.toml
[--state PATH]`` serves the keywords of a TOML file (``-d`` names this
dispatcher within a service spread over several; the service name by
default; ``--state`` is the file keeping the persisted keywords' values).
Everything that can be checked before the reactor runs (configuration,
keyword file) is checked in ``postOptions``, so a bad file is a usage error:
one line on stderr (see :class:`OneLineUsage`) and exit status 1.

A failure to start (an address in use, say) only shows once the reactor
runs; :class:`DispatcherRunner` turns it into one log line, a stopped reactor
and a non-zero exit status, which twistd has no API for.  So does a
dispatcher *fenced* while it runs (another dispatcher took its service over):
it exits with :data:`FENCED_STATUS`.
"""

import atexit
import math
import os
import sys

from twisted.application import service
from twisted.logger import Logger
from twisted.python import usage

from cauldron import config as _config
from cauldron.errors import CauldronError

__all__ = [
    "OneLineUsage",
    "RouterOptions",
    "DispatcherOptions",
    "DispatcherRunner",
    "RouterRunner",
    "makeRouterService",
    "makeDispatcherService",
]

log = Logger()

#: exit status of twistd when the dispatcher could not start
START_FAILED_STATUS = 1
#: exit status of twistd when another dispatcher took the service over
FENCED_STATUS = 3


#: exit status of twistd when its cauldron options are bad
USAGE_STATUS = 1


class OneLineUsage:
    """Mixin for the Options of a twistd plugin: a usage error is one line on stderr.

    twistd answers a :class:`usage.UsageError` from a plugin's options by
    printing its whole usage text on stdout, then the message.  Under twistd
    (the options have a ``parent``: twistd's own) this writes
    ``twistd PLUGIN: MESSAGE`` to stderr instead and exits with
    :data:`USAGE_STATUS`.  Used alone (tests, ``Cauldron-router-zmq``), the
    UsageError propagates as usual.  ``--version`` prints cauldron's version.
    """

    def parseOptions(self, options=None):
        try:
            super().parseOptions(options)
        except usage.UsageError as e:
            parent = getattr(self, "parent", None)
            if parent is None:
                raise
            name = getattr(parent, "subCommand", None) or type(self).__name__
            sys.stderr.write("twistd %s: %s\n" % (name, " ".join(str(e).split())))
            sys.stderr.flush()
            sys.exit(USAGE_STATUS)

    def opt_version(self):
        """Print cauldron's version and exit."""
        from cauldron import __version__

        print("cauldron %s" % (__version__,))
        sys.exit(0)


class RouterOptions(OneLineUsage, usage.Options):
    """Options of ``twistd cauldron-router`` and ``Cauldron-router-zmq``."""

    synopsis = "[-c CONFIG] [-v ...]"
    optParameters = [
        ["config", "c", None, "Configuration file (default: $CAULDRON_CONFIG, else built-in)."],
    ]

    loadedConfig = None

    def __init__(self):
        usage.Options.__init__(self)
        self["verbose"] = None  # None: [zmq-router] verbose decides

    def opt_verbose(self):
        """Increase verbosity (up to three times; overrides [zmq-router] verbose)."""
        self["verbose"] = min((self["verbose"] or 0) + 1, 3)

    opt_v = opt_verbose

    def postOptions(self):
        """A bad configuration is a usage error, reported before anything runs."""
        try:
            self.loadedConfig = _config.load(self["config"])
        except CauldronError as e:
            raise usage.UsageError(str(e)) from None


def _positiveSeconds(text):
    """A heartbeat interval: a positive number of seconds, at most the router's bound."""
    from cauldron.router import MAX_HEARTBEAT_INTERVAL

    try:
        value = float(text)
    except ValueError:
        raise ValueError("not a number of seconds: %r" % (text,)) from None
    if not math.isfinite(value) or value <= 0:
        raise ValueError("not a positive number of seconds: %r" % (text,))
    if value > MAX_HEARTBEAT_INTERVAL:
        raise ValueError("%r: at most %g seconds" % (text, MAX_HEARTBEAT_INTERVAL))
    return value


class DispatcherOptions(OneLineUsage, usage.Options):
    """Options of ``twistd cauldron-dispatcher``.

    After parsing, ``options.loadedConfig`` and ``options.keywordObjects``
    hold the validated configuration and the keywords to serve.
    """

    synopsis = ("[-c CONFIG] -s SERVICE [-d DISPNAME] -k KEYWORDS.toml [--heartbeat SECONDS] "
                "[--state PATH]")
    optParameters = [
        ["config", "c", None, "Configuration file (default: $CAULDRON_CONFIG, else built-in)."],
        ["service", "s", None, "Name of the service to serve (required)."],
        ["dispatcher", "d", None,
         "Name of this dispatcher within the service (default: the service name)."],
        ["keywords", "k", None, "TOML file defining the keywords (required)."],
        ["state", None, None,
         "SQLite file keeping the values of keywords with persist = true (default: "
         "$XDG_STATE_HOME/cauldron/SERVICE[-DISPNAME].sqlite, $XDG_STATE_HOME being "
         "~/.local/state unless set; untouched when no keyword persists)."],
    ]

    loadedConfig = None
    keywordObjects = None

    def __init__(self):
        usage.Options.__init__(self)
        self["heartbeat"] = 1.0

    def opt_heartbeat(self, text):
        """Seconds between heartbeats and lease renewals [default: 1.0]."""
        # Not a coerced optParameter: twisted would word the error
        # "Parameter type enforcement failed", without the option's name.
        try:
            self["heartbeat"] = _positiveSeconds(text)
        except ValueError as e:
            raise usage.UsageError("--heartbeat: %s" % (e,)) from None

    def postOptions(self):
        """Check everything we can before the reactor runs."""
        # Imported here: twistd lists plugins by importing this module.
        from cauldron.keywordfile import loadKeywords

        for name in ("service", "keywords"):
            if not self[name]:
                raise usage.UsageError("--%s is required" % (name,))
        serviceName = self["service"].strip()
        if not serviceName or any(c.isspace() for c in serviceName):
            raise usage.UsageError("--service: bad service name %r" % (self["service"],))
        self["service"] = serviceName
        if self["dispatcher"] is not None:
            dispatcherName = self["dispatcher"].strip()
            if not dispatcherName or any(c.isspace() for c in dispatcherName):
                raise usage.UsageError(
                    "--dispatcher: bad dispatcher name %r" % (self["dispatcher"],))
            self["dispatcher"] = dispatcherName
        if self["state"] is not None and not self["state"].strip():
            raise usage.UsageError("--state: an empty path")
        try:
            self.loadedConfig = _config.load(self["config"])
            self.keywordObjects = loadKeywords(self["keywords"])
        except CauldronError as e:
            raise usage.UsageError(str(e)) from None
        guarded = [kw.name for kw in self.keywordObjects
                   if kw.writers is not None or kw.readers is not None]
        if guarded and not self.loadedConfig.get("security", "curve"):
            raise usage.UsageError(
                "%s: writers/readers (%s) need secure mode ([security] curve = yes): "
                "without keys nobody can be told apart"
                % (self["keywords"], ", ".join(guarded[:3])))


class DispatcherRunner(service.MultiService):
    """Runs one dispatcher under twistd; a failed start ends the process.

    :param dispatcher: the :class:`cauldron.dispatcher.DispatcherService`.
    :param reactor: stopped when the dispatcher fails to start.
    :param exitWith: ``exitWith(status)`` arranges the process exit status;
        the default makes twistd's process exit with it once twistd is done.
    """

    def __init__(self, dispatcher, reactor=None, exitWith=None):
        service.MultiService.__init__(self)
        self.dispatcher = dispatcher
        dispatcher.setServiceParent(self)
        self._reactor = reactor
        self._exitWith = exitWith or _exitAfterTwistd
        #: why the dispatcher could not start (a Failure), or None
        self.failure = None

    def startService(self):
        service.MultiService.startService(self)
        self.dispatcher.whenReady().addCallbacks(self._ready, self._failed)
        self.dispatcher.whenFenced().addCallback(self._fenced)

    def _ready(self, addresses):
        log.info(
            "cauldron-dispatcher: serving {name!r}: dispatch {dispatch}, broadcast {broadcast}",
            name=self.dispatcher.label,
            dispatch=addresses[0],
            broadcast=addresses[1],
        )

    def _fenced(self, conflict):
        """The dispatcher logged who took over; end the process, with a status saying so."""
        self._exitWith(FENCED_STATUS)
        reactor = self._reactor
        if reactor is None:
            from twisted.internet import reactor
        _stopQuietly(reactor)

    def _failed(self, failure):
        self.failure = failure
        _abortStart(
            self._reactor, self._exitWith,
            "cauldron-dispatcher: cannot serve %r: %s"
            % (self.dispatcher.label, failure.getErrorMessage()),
        )


class RouterRunner(service.MultiService):
    """Runs the router under twistd; a router that cannot bind ends the process."""

    def __init__(self, router, reactor=None, exitWith=None):
        service.MultiService.__init__(self)
        self.router = router
        self._reactor = reactor
        self._exitWith = exitWith or _exitAfterTwistd
        self.failure = None

    def startService(self):
        service.MultiService.startService(self)
        try:
            self.router.startService()
        except Exception as e:
            self.failure = e
            _abortStart(self._reactor, self._exitWith,
                        "cauldron-router: cannot start: %s" % (e,))

    def stopService(self):
        service.MultiService.stopService(self)
        if self.router.running:
            self.router.stopService()


def _abortStart(reactor, exitWith, message):
    """Log why a service cannot start, stop the reactor and exit non-zero."""
    log.critical("{line}", line=message)
    exitWith(START_FAILED_STATUS)
    if reactor is None:
        from twisted.internet import reactor
    # startService runs before twistd starts the reactor: stop it once it runs.
    reactor.callWhenRunning(_stopQuietly, reactor)


def _stopQuietly(reactor):
    from twisted.internet.error import ReactorNotRunning

    try:
        reactor.stop()
    except ReactorNotRunning:
        pass


_exitStatus = []


def _exitAfterTwistd(status):
    """Make the process exit with ``status`` after twistd's own cleanup.

    twistd always exits 0 after a normal reactor stop (only signals are
    passed on).  An atexit hook runs after twistd removed its pid file and
    stopped logging; it flushes stdio and ends the process with ``status``.
    """
    if not _exitStatus:
        atexit.register(_exitNow)
    _exitStatus.append(status)


def _exitNow():
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except Exception:
            pass
    os._exit(_exitStatus[-1])


def makeRouterService(options, reactor=None):
    """Build the router service (wrapped in a :class:`RouterRunner`)."""
    from cauldron.router import RouterService

    router = RouterService(options.loadedConfig, reactor=reactor, verbose=options["verbose"])
    return RouterRunner(router, reactor=reactor)


def makeDispatcherService(options, reactor=None):
    """Build the dispatcher service (wrapped in a :class:`DispatcherRunner`)."""
    from cauldron.dispatcher import DispatcherService

    dispatcher = DispatcherService(
        options["service"],
        config=options.loadedConfig,
        keywords=options.keywordObjects,
        reactor=reactor,
        heartbeatInterval=options["heartbeat"],
        dispatcher=options["dispatcher"],
        statePath=options["state"],
    )
    return DispatcherRunner(dispatcher, reactor=reactor)
