"""The ``cauldron`` command: show, modify, monitor, describe, services, history, web, demo, keys.

``main`` parses arguments and runs :func:`runCommand` under
``twisted.internet.task.react``; :func:`runCommand` (the seam tests call
in-process) takes the reactor and the parsed arguments and returns a Deferred
firing with the exit status.

Exit statuses: 0 success; 1 any cauldron error (one line on stderr, never a
traceback); 2 bad usage (argparse's convention); 130 a command other than
``monitor``, ``demo`` or ``web`` interrupted by Ctrl-C.
"""

import argparse
import json
import math
import sys
import time
import warnings

from twisted.internet import defer, task
from twisted.python.failure import Failure

from cauldron import __version__
from cauldron import config as _config
from cauldron.errors import CauldronError, CauldronTimeout

__all__ = ["main", "routerMain", "makeParser", "parseArgs", "runCommand", "parseAssignments"]

#: seconds allowed beyond ``--timeout`` before we give up on the client ourselves
GRACE = 1.0
#: seconds allowed for the client to close its sockets at the end
STOP_TIMEOUT = 2.0

EXIT_OK = 0
EXIT_ERROR = 1
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130


# -- arguments -----------------------------------------------------------------


def _timeout(text):
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError("not a number of seconds: %r" % (text,)) from None
    if not math.isfinite(value) or value <= 0:
        raise argparse.ArgumentTypeError("not a positive number of seconds: %r" % (text,))
    return value


def _count(text):
    try:
        value = int(text, 10)
    except ValueError:
        raise argparse.ArgumentTypeError("not a whole number: %r" % (text,)) from None
    if value <= 0:
        raise argparse.ArgumentTypeError("not a positive number: %r" % (text,))
    return value


def parseAssignments(tokens):
    """``["KW=VALUE", ...]`` to ``[(KW, VALUE), ...]``; the first ``=`` splits.

    Raises ValueError naming the first token without a keyword and ``=``.
    """
    pairs = []
    for token in tokens:
        name, sep, value = token.partition("=")
        if not sep or not name.strip():
            raise ValueError("expected KEYWORD=VALUE, got %r" % (token,))
        pairs.append((name.strip(), value))
    return pairs


def makeParser():
    """The argument parser of ``cauldron``."""
    # -c and --timeout go before the command or after it (after wins).  The
    # defaults live on the main parser only: a subcommand copies every value
    # it holds over the main parser's, so its own must be SUPPRESS (absent).
    common = argparse.ArgumentParser(add_help=False)
    _addGlobalOptions(common, default=argparse.SUPPRESS)
    withService = argparse.ArgumentParser(add_help=False, parents=[common])
    withService.add_argument("-s", "--service", required=True, help="service name")

    parser = argparse.ArgumentParser(
        prog="cauldron", description="Read, write, monitor and describe cauldron keywords."
    )
    parser.add_argument("--version", action="version", version="cauldron %s" % (__version__,))
    _addGlobalOptions(parser)
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    commands.required = True

    show = commands.add_parser(
        "show", parents=[withService], help="print KW = VALUE for each keyword"
    )
    show.add_argument("--binary", action="store_true", help="print binary (native) values")
    show.add_argument("keywords", nargs="+", metavar="KW")

    modify = commands.add_parser(
        "modify", parents=[withService], help="write KW=VALUE in order, waiting for each"
    )
    modify.add_argument("assignments", nargs="+", metavar="KW=VALUE")

    monitor = commands.add_parser(
        "monitor", parents=[withService],
        help="print the current value of each keyword, then every change",
    )
    monitor.add_argument("--count", type=_count, metavar="N", help="stop after N lines")
    monitor.add_argument("keywords", nargs="+", metavar="KW")

    describe = commands.add_parser(
        "describe", parents=[withService], help="print keyword metadata and values"
    )
    describe.add_argument("keywords", nargs="*", metavar="KW")

    commands.add_parser("services", parents=[common],
                        help="list each dispatcher of each service the router knows")
    commands.add_parser("demo", parents=[common], help="run a router and a demo dispatcher")
    _addHistoryParser(commands, withService)
    web = commands.add_parser(
        "web", parents=[common], help="serve a live web view of every service",
        description="Serve the web view: every service, every keyword live, writes from "
                    "the page (see docs/web.rst).  Binds this host only unless told otherwise.",
    )
    web.add_argument("--listen", metavar="HOST:PORT", default="127.0.0.1:8080",
                     help="address to serve on (default: 127.0.0.1:8080)")
    web.add_argument("--read-only", action="store_true",
                     help="no writes: no write widgets, and writes are refused")
    web.add_argument("--archive", metavar="URL",
                     help="cauldron-archiver's database, for keyword history in the page")
    _addKeysParser(commands, common)
    _addKtlParser(commands)
    return parser


def _addGlobalOptions(parser, default=None):
    """-c/--config and --timeout; ``default`` SUPPRESS keeps an absent one absent."""
    parser.add_argument(
        "-c", "--config", metavar="CONFIG", default=default,
        help="configuration file (default: $CAULDRON_CONFIG, else built-in)",
    )
    parser.add_argument(
        "--timeout", metavar="SECONDS", type=_timeout,
        default=5.0 if default is None else default,
        help="deadline of each request (default: 5)",
    )


def _addKtlParser(commands):
    ktl = commands.add_parser("ktl", help="run scripts written for KTL Python")
    actions = ktl.add_subparsers(dest="ktlCommand", metavar="ACTION")
    actions.required = True
    run = actions.add_parser(
        "run", help="run SCRIPT unmodified, its 'import ktl' giving cauldron.ktl",
        description="Run a script written for KTL Python: its 'import ktl' gives "
                    "cauldron.ktl, with the configuration of -c (else $CAULDRON_CONFIG).",
    )
    run.add_argument(
        "-c", "--config", metavar="CONFIG", default=argparse.SUPPRESS,
        help="configuration file (default: $CAULDRON_CONFIG, else built-in)",
    )
    run.add_argument("script", metavar="SCRIPT")
    run.add_argument("arguments", nargs=argparse.REMAINDER, metavar="ARGS",
                     help="the script's own arguments")


def _instantArg(text):
    from cauldron.archive.times import parseInstant

    try:
        return parseInstant(text, time.time())
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def _addHistoryParser(commands, withService):
    history = commands.add_parser(
        "history", parents=[withService],
        help="print the archived values of keywords (see cauldron-archiver)",
        description="Print what cauldron-archiver stored for each keyword, in time order "
                    "(local time), or with --at each keyword's value at one instant.",
    )
    history.add_argument("--db", metavar="URL",
                         help="the archive: sqlite:///PATH or postgresql://... "
                              "(default: the archiver's default SQLite file)")
    history.add_argument("--since", type=_instantArg, metavar="TIME",
                         help="from TIME: a duration ago (1h, 30m, 7d) or a date and time "
                              "(2026-12-02T03:00, local unless a zone is given)")
    history.add_argument("--until", type=_instantArg, metavar="TIME", help="up to TIME")
    history.add_argument("--at", type=_instantArg, metavar="TIME",
                         help="print each keyword's value at TIME instead")
    history.add_argument("--format", choices=["table", "csv", "json"], default="table",
                         help="output format (default: table)")
    history.add_argument("keywords", nargs="+", metavar="KW")


def _addKeysParser(commands, common):
    keys = commands.add_parser("keys", help="make and list CURVE key pairs (secure mode)")
    actions = keys.add_subparsers(dest="keysCommand", metavar="ACTION")
    actions.required = True
    generate = actions.add_parser(
        "generate", parents=[common],
        help="write DIR/NAME.key (public) and DIR/NAME.key_secret (secret, mode 0600)",
    )
    generate.add_argument("name", metavar="NAME")
    generate.add_argument("--dir", default=".", metavar="DIR",
                          help="where to write them (default: here; made 0700 if missing)")
    listing = actions.add_parser(
        "list", parents=[common], help="print NAME  PUBLICKEY for each key in DIR"
    )
    listing.add_argument("dir", metavar="DIR")


def parseArgs(argv):
    """Parsed arguments; bad usage exits 2 with argparse's message."""
    parser = makeParser()
    args = parser.parse_args(argv)
    if args.command == "modify":
        try:
            args.assignments = parseAssignments(args.assignments)
        except ValueError as e:
            parser.exit(EXIT_USAGE, "cauldron modify: error: %s\n" % (e,))
    return args


# -- the seam ------------------------------------------------------------------


def runCommand(reactor, args, out=None):
    """Run a parsed command; a Deferred firing with the exit status.

    Cauldron errors fail the Deferred (``main`` prints them); ``out`` is where
    results are written (default: ``sys.stdout``, flushed per line).
    """
    out = sys.stdout if out is None else out
    run = _COMMANDS[args.command]
    return defer.Deferred.fromCoroutine(run(reactor, args, _Printer(out)))


class _Printer:
    """Writes whole lines and flushes each, so pipes see monitor output live."""

    def __init__(self, stream):
        self._stream = stream

    def line(self, text):
        self._stream.write(text + "\n")
        self._stream.flush()


def _deadline(d, reactor, seconds, what):
    """Never wait longer than ``seconds`` for ``d``, whatever the client does."""

    def timedOut(result, timeout):
        raise CauldronTimeout("%s: no answer within %g s" % (what, timeout))

    return d.addTimeout(seconds, reactor, onTimeoutCancel=timedOut)


class _Session:
    """A started client and one remote service; closed on exit, even on Ctrl-C."""

    def __init__(self, reactor, args):
        from cauldron.client import ClientService

        self.reactor = reactor
        self.args = args
        self.client = ClientService(
            config=_config.load(args.config), reactor=reactor, timeout=args.timeout
        )
        self.remote = None
        self._trigger = None

    async def __aenter__(self):
        self.client.startService()
        # Ctrl-C stops the reactor without finishing our coroutine: close then.
        self._trigger = self.reactor.addSystemEventTrigger(
            "before", "shutdown", self._onShutdown
        )
        try:
            self.remote = await _deadline(
                self.client.service(self.args.service),
                self.reactor,
                self.args.timeout + GRACE,
                "service %r" % (self.args.service,),
            )
        except BaseException as e:
            # __aexit__ does not run when __aenter__ fails: close the client here.
            await self.__aexit__(type(e), e, e.__traceback__)
            raise
        return self

    async def __aexit__(self, excType, exc, tb):
        if self._trigger is not None:
            self.reactor.removeSystemEventTrigger(self._trigger)
            self._trigger = None
        if excType is GeneratorExit:
            # The coroutine is being discarded at exit (after Ctrl-C): nothing to wait for.
            return False
        await self._stop()
        return False

    def _onShutdown(self):
        self._trigger = None  # fired triggers cannot be removed
        return self._stop()

    def _stop(self):
        if not self.client.running:
            return defer.succeed(None)
        d = defer.maybeDeferred(self.client.stopService)
        d = _deadline(d, self.reactor, STOP_TIMEOUT, "closing the client")
        d.addErrback(lambda f: None)  # closing is best effort
        return d

    def keyword(self, name):
        """The remote keyword; UnknownKeyword (a CauldronError) if there is none."""
        return self.remote[name]

    def guard(self, d, what):
        """Bound a request by ``--timeout`` plus a grace period."""
        return _deadline(d, self.reactor, self.args.timeout + GRACE, what)


async def _show(reactor, args, printer):
    async with _Session(reactor, args) as session:
        remotes = [session.keyword(name) for name in args.keywords]
        for kw in remotes:
            if args.binary:
                value = await session.guard(
                    kw.read(binary=True, timeout=args.timeout), "read %s" % kw.name
                )
                text = _binaryText(value)
            else:
                text = await session.guard(kw.read(timeout=args.timeout), "read %s" % kw.name)
            printer.line("%s = %s" % (kw.name, text))
    return EXIT_OK


async def _modify(reactor, args, printer):
    async with _Session(reactor, args) as session:
        writes = [(session.keyword(name), value) for name, value in args.assignments]
        for kw, value in writes:
            text = await session.guard(
                kw.write(value, timeout=args.timeout), "write %s" % kw.name
            )
            printer.line("%s = %s" % (kw.name, text))
    return EXIT_OK


async def _monitor(reactor, args, printer):
    async with _Session(reactor, args) as session:
        remotes = [session.keyword(name) for name in args.keywords]
        done = defer.Deferred()
        printed = [0]
        subscriptions = []

        def show(value):
            if done.called:
                return
            printer.line("%s %s = %s" % (_clock(value.timestamp), value.name, value.ascii))
            printed[0] += 1
            if args.count is not None and printed[0] >= args.count:
                done.callback(None)

        # At 3 a.m. a silent monitor must say why it is silent.
        session.remote.addStateCallback(_livenessReporter(session.remote))
        for kw in remotes:
            subscription = kw.monitor(show, prime=True)
            if isinstance(subscription, defer.Deferred):
                subscription = await session.guard(subscription, "monitor %s" % kw.name)
            subscriptions.append(subscription)
            if done.called:
                break
        try:
            await done  # with no --count, until Ctrl-C stops the reactor
        finally:
            for subscription in subscriptions:
                subscription.stop()
    return EXIT_OK


def _livenessReporter(remote):
    """A state callback saying which dispatcher of the service stopped or resumed answering."""
    shown = {name: d.connected for name, d in remote.dispatchers.items()}

    def report(remote):
        for name, dispatcher in sorted(remote.dispatchers.items()):
            if shown.get(name, True) == dispatcher.connected:
                continue
            shown[name] = dispatcher.connected
            if dispatcher.connected:
                message = "%s answers again" % (dispatcher,)
            else:
                message = "%s stopped answering (no heartbeat for %g s); waiting for it" % (
                    dispatcher, 3 * dispatcher.heartbeatInterval)
            sys.stderr.write("cauldron: %s\n" % (message,))
        sys.stderr.flush()

    return report


async def _describe(reactor, args, printer):
    async with _Session(reactor, args) as session:
        names = [session.keyword(name).name for name in args.keywords] or None
        infos = await session.guard(session.remote.describe(names), "describe")
        rows = [_describeRow(info) for info in infos]
        if len(session.remote.dispatchers) > 1:
            # Which dispatcher answers for each keyword, after its name.
            rows = [row[:1] + [info.get("dispatcher", "?")] + row[1:]
                    for row, info in zip(rows, infos, strict=True)]
        for line in _columns(rows):
            printer.line(line)
    return EXIT_OK


async def _services(reactor, args, printer):
    from cauldron.protocol.messages import ListServices
    from cauldron.routerlink import Locator
    from cauldron.transport import Curve, Transport

    cfg = _config.load(args.config)
    if not cfg.get("zmq-router", "enable"):
        raise CauldronError("no router to ask: [zmq-router] enable = no in %s" % (cfg.source,))
    transport = Transport(reactor, curve=Curve.fromConfig(cfg))
    locator = Locator(cfg, transport, timeout=args.timeout)
    try:
        reply = await locator.request(lambda i: ListServices(i), "list services")
    finally:
        locator.close()
        transport.shutdown()
    rows = [
        (entry.service, entry.dispatcher or entry.service, entry.host, str(entry.dispatchPort),
         str(entry.broadcastPort), "%.1fs" % (entry.age,),
         "%d keyword%s" % (entry.keywords, "" if entry.keywords == 1 else "s"))
        for entry in reply.services
    ]
    for line in _columns(rows):
        printer.line(line)
    return EXIT_OK


async def _demo(reactor, args, printer):
    from cauldron.demo import demoBanner, makeDemoService

    demo = makeDemoService(_config.load(args.config), reactor)
    demo.startService()
    # Ctrl-C stops the reactor: release the lease and close sockets first.
    reactor.addSystemEventTrigger("before", "shutdown", _stopRunning, demo)
    try:
        await _deadline(demo.whenReady(), reactor, args.timeout + GRACE, "starting the demo")
    except BaseException:
        await _stopRunning(demo)
        raise
    printer.line(demoBanner(demo))
    await defer.Deferred()  # serve until Ctrl-C
    return EXIT_OK


async def _keys(reactor, args, printer):
    from cauldron.transport.curve import generateCertificate, listCertificates, readCertificate

    if args.keysCommand == "generate":
        public, secret = generateCertificate(args.dir, args.name)
        printer.line("%s  %s" % (args.name, readCertificate(public)[0].decode()))
        printer.line("wrote %s (public: give it to the peers that must know it)" % (public,))
        printer.line("wrote %s (secret: mode 0600; keep it on the host that uses it)" % (secret,))
        return EXIT_OK
    rows = [[name, key.decode(), "secret" if hasSecret else ""]
            for name, key, hasSecret in listCertificates(args.dir)]
    for line in _columns(rows):
        printer.line(line)
    return EXIT_OK


def _stopRunning(svc):
    """Stop a service if it still runs (a Deferred either way)."""
    if not svc.running:
        return defer.succeed(None)
    return defer.maybeDeferred(svc.stopService)


async def _history(reactor, args, printer):
    from cauldron.archive import DEFAULT_DB
    from cauldron.archive.history import formatRecords, history, valueAt

    db = args.db or DEFAULT_DB
    keywords = [name.upper() for name in args.keywords]
    if args.at is not None:
        found = valueAt(db, args.service, keywords, args.at)
        records = [found[name] for name in keywords if found.get(name) is not None]
        missing = [name for name in keywords if found.get(name) is None]
        if missing:
            raise CauldronError("%s: no archived value of %s.%s at or before that time"
                                % (db, args.service.lower(), ", ".join(missing)))
    else:
        records = history(db, args.service, keywords, args.since, args.until)
    text = formatRecords(records, args.format)
    if text:
        printer.line(text.rstrip("\n"))
    return EXIT_OK


async def _web(reactor, args, printer):
    from cauldron.web import runWeb

    await runWeb(reactor, config=args.config, listen=args.listen, readOnly=args.read_only,
                 archive=args.archive, printer=printer.line)
    return EXIT_OK


_COMMANDS = {
    "show": _show,
    "modify": _modify,
    "monitor": _monitor,
    "describe": _describe,
    "services": _services,
    "demo": _demo,
    "history": _history,
    "web": _web,
    "keys": _keys,
}


# -- formatting ----------------------------------------------------------------


def _binaryText(value):
    if value is None:
        return ""  # no value, as in the ascii form: never Python's 'None'
    if isinstance(value, (list, tuple)):
        return "[%s]" % ", ".join(_binaryText(v) for v in value)
    return str(value)


def _clock(timestamp):
    """``HH:MM:SS.mmm`` local time of a value (now, if it has no timestamp)."""
    if timestamp is None:
        timestamp = time.time()
    seconds = math.floor(timestamp)
    millis = min(int((timestamp - seconds) * 1000), 999)
    return "%s.%03d" % (time.strftime("%H:%M:%S", time.localtime(seconds)), millis)


def _quoted(text):
    """Text shown as is, or JSON-quoted when empty or holding whitespace."""
    if text is None:
        return "-"
    text = str(text)
    if not text or any(c.isspace() for c in text):
        return json.dumps(text, ensure_ascii=False)
    return text


def _names(mapping):
    items = sorted(((int(k), v) for k, v in mapping.items()), key=lambda item: item[0])
    return ",".join("%d=%s" % item for item in items)


def _describeRow(info):
    """name, type, value, units, limits, flags, description."""
    value = "-" if info.get("writeonly") else _quoted(info.get("ascii"))
    if info.get("enumerators"):
        limits = "enum " + _names(info["enumerators"])
    elif info.get("bits"):
        limits = "bits " + _names(info["bits"])
    elif info.get("range"):
        low, high = info["range"]
        limits = "range %s..%s" % ("" if low is None else low, "" if high is None else high)
    else:
        limits = "-"
    flags = [flag for flag in ("readonly", "writeonly") if info.get(flag)]
    return [
        str(info.get("name", "?")),
        str(info.get("type", "?")).replace(" ", "-"),
        value,
        info.get("units") or "-",
        limits,
        ",".join(flags) or "-",
        info.get("description") or "",
    ]


def _columns(rows):
    """Rows aligned in columns; the last column is left ragged."""
    if not rows:
        return []
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]) - 1)]
    lines = []
    for row in rows:
        cells = [cell.ljust(width) for cell, width in zip(row[:-1], widths, strict=True)]
        cells.append(row[-1])
        lines.append("  ".join(cells).rstrip())
    return lines


# -- entry points --------------------------------------------------------------


def _describeError(failure):
    error = failure.value
    if isinstance(error, CauldronError):
        return str(error) or type(error).__name__
    return "unexpected error: %s: %s" % (type(error).__name__, error)


def _oneLineWarnings(program):
    """Show warnings (an unknown config key...) as one plain line on stderr."""

    def show(message, category, filename, lineno, file=None, line=None):
        sys.stderr.write("%s: warning: %s\n" % (program, message))

    warnings.showwarning = show


def main(argv=None):
    """Entry point of ``cauldron``; exits with the command's status."""
    _oneLineWarnings("cauldron")
    args = parseArgs(sys.argv[1:] if argv is None else argv)
    if args.command == "ktl":
        raise SystemExit(ktlRun(args))
    state = {"finished": False, "interrupted": False}

    def reactMain(reactor):
        def shuttingDown():
            # Before the command finished, only a signal (Ctrl-C) stops the reactor.
            if not state["finished"]:
                state["interrupted"] = True

        reactor.addSystemEventTrigger("before", "shutdown", shuttingDown)
        d = runCommand(reactor, args)

        def finished(result):
            state["finished"] = True
            if state["interrupted"]:
                return _interruptedStatus(args)
            if isinstance(result, Failure):
                sys.stderr.write("cauldron: %s\n" % (_describeError(result),))
                sys.stderr.flush()
                return EXIT_ERROR
            return result

        d.addBoth(finished)
        d.addCallback(_exitWith)
        return d

    try:
        task.react(reactMain)
    except SystemExit as e:
        if state["interrupted"] and not state["finished"] and not e.code:
            # The reactor stopped with the command still waiting.
            raise SystemExit(_interruptedStatus(args)) from None
        raise


def _interruptedStatus(args):
    """Ctrl-C is how monitor, demo and web end (0); any other command was cut short (130)."""
    if args.command in ("monitor", "demo", "web"):
        return EXIT_OK
    sys.stderr.write("cauldron: interrupted\n")
    sys.stderr.flush()
    return EXIT_INTERRUPTED


def _exitWith(status):
    """How task.react learns an exit status other than 0."""
    if status:
        raise SystemExit(status)
    return None


def ktlRun(args):
    """``cauldron ktl run``: the script's own exit status; 1 with one line for our errors.

    Not under ``task.react``: :mod:`cauldron.ktl` runs the reactor in a
    thread of its own.  The script's exceptions are its own (Python prints
    them), except a cauldron configuration error before it starts and a
    KTL Python call cauldron does not provide (one line naming it).
    """
    import os

    from cauldron import ktl

    if not os.path.isfile(args.script):
        sys.stderr.write("cauldron ktl: %s: no such script\n" % (args.script,))
        return EXIT_USAGE
    try:
        ktl.configure(args.config)
    except CauldronError as e:
        sys.stderr.write("cauldron ktl: %s\n" % (e,))
        return EXIT_ERROR
    try:
        ktl.runScript(args.script, args.arguments)
    except ktl.Unsupported as e:
        sys.stderr.write("cauldron ktl: %s: %s\n" % (args.script, e))
        return EXIT_ERROR
    return EXIT_OK


def routerMain(argv=None):
    """Entry point of ``Cauldron-router-zmq [-c CONFIG] [-v ...]``: run a router.

    Runs until interrupted (Ctrl-C or SIGTERM); exits 1 with one line on
    stderr if the router cannot bind its address, 2 on bad usage.
    """
    from twisted.logger import globalLogBeginner, textFileLogObserver
    from twisted.python import usage

    from cauldron.router import RouterService
    from cauldron.tap import RouterOptions

    _oneLineWarnings("Cauldron-router-zmq")

    class ScriptOptions(RouterOptions):
        synopsis = "Usage: Cauldron-router-zmq [-c CONFIG] [-v ...]"

    options = ScriptOptions()
    try:
        options.parseOptions(sys.argv[1:] if argv is None else argv)
    except usage.UsageError as e:
        sys.stderr.write("Cauldron-router-zmq: %s\n" % (e,))
        raise SystemExit(EXIT_USAGE) from None

    def run(reactor):
        globalLogBeginner.beginLoggingTo([textFileLogObserver(sys.stdout)],
                                         redirectStandardIO=False)
        try:
            router = RouterService(options.loadedConfig, reactor=reactor,
                                   verbose=options["verbose"])
            router.startService()
        except Exception as e:
            sys.stderr.write("Cauldron-router-zmq: cannot start: %s\n" % (e,))
            raise SystemExit(EXIT_ERROR) from None
        reactor.addSystemEventTrigger("before", "shutdown", router.stopService)
        return defer.Deferred()  # serve until the reactor is stopped by a signal

    task.react(run)
