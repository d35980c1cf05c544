"""twistd plugins: ``cauldron-router``, ``-dispatcher``, ``-archiver`` and ``-web``.

Twisted imports every plugin module to list them, so this one imports only
Twisted's interfaces; cauldron itself loads when a plugin is actually used.
"""

import importlib

from twisted.application.service import IServiceMaker
from twisted.plugin import IPlugin
from zope.interface import implementer


@implementer(IServiceMaker, IPlugin)
class _LazyServiceMaker:
    """An IServiceMaker naming its options class and factory by dotted path."""

    def __init__(self, tapname, description, module, optionsName, makerName):
        self.tapname = tapname
        self.description = description
        self._module = module
        self._optionsName = optionsName
        self._makerName = makerName

    def _get(self, name):
        return getattr(importlib.import_module(self._module), name)

    @property
    def options(self):
        return self._get(self._optionsName)

    def makeService(self, options):
        return self._get(self._makerName)(options)


cauldronRouter = _LazyServiceMaker(
    "cauldron-router",
    "Cauldron ZeroMQ router: the address book of services.",
    "cauldron.tap",
    "RouterOptions",
    "makeRouterService",
)

cauldronDispatcher = _LazyServiceMaker(
    "cauldron-dispatcher",
    "Cauldron dispatcher: serves the keywords of a TOML file.",
    "cauldron.tap",
    "DispatcherOptions",
    "makeDispatcherService",
)

cauldronArchiver = _LazyServiceMaker(
    "cauldron-archiver",
    "Cauldron archiver: stores every keyword change in SQLite or PostgreSQL.",
    "cauldron.archive.tap",
    "ArchiverOptions",
    "makeArchiverService",
)

cauldronWeb = _LazyServiceMaker(
    "cauldron-web",
    "Cauldron web view: live pages of every service, with writes.",
    "cauldron.web.tap",
    "WebOptions",
    "makeWebService",
)
