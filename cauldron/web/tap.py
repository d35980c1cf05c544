"""``twistd -n cauldron-web [-c CONFIG] [--listen HOST:PORT] [--read-only] [--archive URL]``.

Everything that can be checked before the reactor runs (the configuration,
the listen address) is checked in ``postOptions``: a bad value is one usage
error.
"""

from twisted.application import service
from twisted.python import usage

from cauldron import config as _config
from cauldron.errors import CauldronError
from cauldron.tap import OneLineUsage

__all__ = ["WebOptions", "WebRunner", "makeWebService"]


class WebOptions(OneLineUsage, usage.Options):
    """Options of ``twistd cauldron-web``."""

    synopsis = "[-c CONFIG] [--listen HOST:PORT] [--read-only] [--archive URL]"
    optParameters = [
        ["config", "c", None, "Configuration file (default: $CAULDRON_CONFIG, else built-in)."],
        ["listen", "l", "127.0.0.1:8080", "Address to serve on, HOST:PORT (default: "
                                          "127.0.0.1:8080, this host only)."],
        ["archive", None, None, "Database URL of cauldron-archiver, for keyword history "
                                "(sqlite:///PATH or postgresql://...)."],
    ]
    optFlags = [
        ["read-only", None, "No writes: no write widgets, and POSTs are refused (403)."],
    ]

    loadedConfig = None

    def postOptions(self):
        from cauldron.web.server import parseListen

        try:
            self.loadedConfig = _config.load(self["config"])
            parseListen(self["listen"])
        except CauldronError as e:
            raise usage.UsageError(str(e)) from None


class WebRunner(service.MultiService):
    """Runs the web view under twistd; an address it cannot listen on ends the process."""

    def __init__(self, web, reactor=None, exitWith=None):
        from cauldron.tap import _exitAfterTwistd

        service.MultiService.__init__(self)
        self.web = web
        web.setServiceParent(self)
        self._reactor = reactor
        self._exitWith = exitWith or _exitAfterTwistd

    def startService(self):
        service.MultiService.startService(self)
        self.web.whenListening().addErrback(self._failed)

    def _failed(self, failure):
        from cauldron.tap import _abortStart

        _abortStart(self._reactor, self._exitWith,
                    "cauldron-web: cannot listen on %s:%d: %s"
                    % (self.web.host, self.web.port, failure.getErrorMessage()))


def makeWebService(options, reactor=None):
    """The :class:`~cauldron.web.server.WebService` of the options, in a :class:`WebRunner`."""
    from cauldron.web.server import WebService

    config = options.loadedConfig
    if config is None:
        config = _config.load(options["config"])
    web = WebService(config, listen=options["listen"], readOnly=bool(options["read-only"]),
                     reactor=reactor, archive=options["archive"])
    return WebRunner(web, reactor=reactor)
