"""Running programs and scripts written for KTL Python, and KTL Python's logging hook."""

import runpy
import sys

from twisted.logger import (
    FilteringLogObserver,
    Logger,
    LogLevel,
    PredicateResult,
    globalLogPublisher,
    textFileLogObserver,
)

from cauldron.ktl.service import configure


def install():
    """Make ``import ktl`` (and ``ktl.Exceptions``) give :mod:`cauldron.ktl`; returns it.

    For programs and scripts written for KTL Python: call it before they
    import ``ktl``.
    """
    module = sys.modules["cauldron.ktl"]  # the package, not this module
    sys.modules["ktl"] = module
    sys.modules["ktl.Exceptions"] = module.Exceptions
    return module


def runScript(path, argv=(), config=None):
    """Run a KTL Python script unmodified: ``import ktl`` gives :mod:`cauldron.ktl`.

    ``config``, if given, becomes the process-wide configuration (see
    :func:`configure`); the script sees ``sys.argv`` as ``[path, *argv]``
    and runs as ``__main__``.  Behind ``cauldron ktl run``.
    """
    if config is not None:
        configure(config)
    install()
    sys.argv = [path, *argv]
    runpy.run_path(path, run_name="__main__")


# -- KTL Python's logging hook ----------------------------------------------------

#: log levels of :func:`loglevel` and :func:`log`, as KTL Python names them
LOG_DEBUG, LOG_INFO, LOG_WARNING, LOG_ERROR = (
    LogLevel.debug, LogLevel.info, LogLevel.warn, LogLevel.error)
_ktlLog = Logger(namespace="ktl")
_logLevel = [LOG_INFO]  # what logger() writes, from this level up
_logObservers = []


def logger(file):
    """Write cauldron's log lines (and :func:`log`'s) to the open text ``file``.

    Only lines at the :func:`loglevel` or above; call again to change the
    file, or with None to stop.  Through :mod:`twisted.logger`, so they
    also reach any other observer.
    """
    for observer in _logObservers:
        globalLogPublisher.removeObserver(observer)
    _logObservers.clear()
    if file is None:
        return
    observer = FilteringLogObserver(
        textFileLogObserver(file),
        [lambda event: PredicateResult.yes if event.get("log_level", LogLevel.info) >= _logLevel[0]
         else PredicateResult.no],
    )
    _logObservers.append(observer)
    globalLogPublisher.addObserver(observer)


def loglevel(level=None):
    """The level :func:`logger` writes from; set it with ``level`` (e.g. ``ktl.LOG_DEBUG``)."""
    if level is not None:
        _checkLevel(level)
        _logLevel[0] = level
    return _logLevel[0]


def log(level, message):
    """Log ``message`` at ``level`` (``ktl.LOG_INFO`` ...), in the ``ktl`` log namespace."""
    _checkLevel(level)
    _ktlLog.emit(level, "{text}", text=str(message))


def _checkLevel(level):
    if level not in tuple(LogLevel.iterconstants()):
        raise ValueError(f"{level!r} is no log level (use ktl.LOG_DEBUG ... ktl.LOG_ERROR)")
