"""``twistd -n cauldron-archiver -c CONFIG --db URL [--services a,b | all] ...``.

The other options: ``--keywords PATTERN...`` and ``--keep 90d``.

Everything that can be checked before the reactor runs (configuration,
database URL, durations) is checked in ``postOptions``: a bad value is one
usage error.  A database that cannot be opened once the reactor runs ends
the process with one critical line and exit status 1.
"""

from twisted.application import service
from twisted.python import usage

from cauldron import config as _config
from cauldron.errors import CauldronError
from cauldron.tap import OneLineUsage

__all__ = ["ArchiverOptions", "ArchiverRunner", "makeArchiverService"]


class ArchiverOptions(OneLineUsage, usage.Options):
    """Options of ``twistd cauldron-archiver``."""

    synopsis = "[-c CONFIG] [--db URL] [--services NAME,... | all] [--keywords PATTERN ...] " \
               "[--keep DURATION]"
    optParameters = [
        ["config", "c", None, "Configuration file (default: $CAULDRON_CONFIG, else built-in)."],
        ["db", None, None, "Where to store: sqlite:///PATH or postgresql://USER@HOST/DB "
                           "(default: the SQLite file in cauldron.archive.DEFAULT_DB)."],
        ["services", None, "all", "Comma-separated service names, or 'all' (every service "
                                  "the router knows, new ones included)."],
        ["keep", None, None, "Delete records older than this (e.g. 90d, 12h); default: keep all."],
    ]

    loadedConfig = None

    def __init__(self):
        usage.Options.__init__(self)
        self["keywords"] = []

    def opt_keywords(self, patterns):
        """Keyword patterns (KW, T*, svc.*), comma-separated or repeated; default: all."""
        self["keywords"].extend(p.strip() for p in patterns.split(",") if p.strip())

    def postOptions(self):
        from cauldron.archive import DEFAULT_DB, prepareDefault
        from cauldron.archive.store import openStore
        from cauldron.archive.times import parseDuration

        try:
            self.loadedConfig = _config.load(self["config"])
            prepareDefault(self["db"] or DEFAULT_DB)
            openStore(self["db"] or DEFAULT_DB).close()  # the URL's form, before anything runs
        except CauldronError as e:
            raise usage.UsageError(str(e)) from None
        if self["keep"] is not None:
            try:
                self["keep"] = parseDuration(self["keep"])
            except ValueError as e:
                raise usage.UsageError("--keep: %s" % (e,)) from None
        names = [n.strip() for n in self["services"].split(",") if n.strip()]
        if not names:
            raise usage.UsageError("--services: name services, or 'all'")
        self["services"] = None if names == ["all"] else names
        if self["services"] is None and not self.loadedConfig.get("zmq-router", "enable"):
            raise usage.UsageError("--services all needs the router ([zmq-router] enable = "
                                   "yes in %s): name the services" % (self.loadedConfig.source,))


class ArchiverRunner(service.MultiService):
    """Runs the archiver under twistd; a database it cannot open ends the process."""

    def __init__(self, archiver, reactor=None, exitWith=None):
        from cauldron.tap import _exitAfterTwistd

        service.MultiService.__init__(self)
        self.archiver = archiver
        archiver.setServiceParent(self)
        self._reactor = reactor
        self._exitWith = exitWith or _exitAfterTwistd

    def startService(self):
        service.MultiService.startService(self)
        self.archiver.whenReady().addErrback(self._failed)

    def _failed(self, failure):
        from cauldron.tap import _abortStart

        _abortStart(self._reactor, self._exitWith,
                    "cauldron-archiver: cannot start: %s" % (failure.getErrorMessage(),))


def makeArchiverService(options, reactor=None):
    """Build the archiver (wrapped in an :class:`ArchiverRunner`)."""
    from cauldron.archive.archiver import ArchiverService

    archiver = ArchiverService(
        options.loadedConfig, db=options["db"], services=options["services"],
        keywords=options["keywords"], keep=options["keep"], reactor=reactor,
    )
    return ArchiverRunner(archiver, reactor=reactor)
