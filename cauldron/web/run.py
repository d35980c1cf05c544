"""``cauldron web``: the web view in the foreground until Ctrl-C."""

from twisted.internet import defer

from cauldron.errors import CauldronError

__all__ = ["runWeb"]


async def runWeb(reactor, config=None, listen="127.0.0.1:8080", readOnly=False, archive=None,
                 printer=print):
    """Serve the web view until the reactor stops (or the call is cancelled).

    The coroutine never returns normally: run it under ``task.react`` (wrap
    it with ``defer.Deferred.fromCoroutine``); Ctrl-C stops the reactor, and
    the web view stops cleanly before it.

    :param reactor: the running reactor.
    :param config: a path, a loaded :class:`cauldron.config.Config` or None (``-c``).
    :param listen: ``HOST:PORT`` (``--listen``).
    :param readOnly: refuse writes (``--read-only``).
    :param archive: a database URL for history (``--archive``), or None.
    :param printer: called with one line, the page's address, once listening.
    :raises cauldron.errors.CauldronError: a bad config or listen address
        (ConfigError, before anything runs), or an address it cannot listen
        on (one line saying why).
    """
    from cauldron.web.server import WebService

    web = WebService(config, listen=listen, readOnly=readOnly, reactor=reactor, archive=archive)
    web.startService()

    def stop():
        if web.running:
            return web.stopService()
        return None

    trigger = reactor.addSystemEventTrigger("before", "shutdown", stop)
    try:
        try:
            await web.whenListening()
        except CauldronError:
            raise
        except Exception as e:
            raise CauldronError("cannot listen on %s:%d: %s" % (web.host, web.port, e)) from None
        printer("cauldron web: serving http://%s:%d/ (Ctrl-C to stop)" % (web.host, web.port))
        await defer.Deferred()  # serve until Ctrl-C
    finally:
        try:
            reactor.removeSystemEventTrigger(trigger)
        except (ValueError, KeyError, TypeError):
            pass
        await defer.maybeDeferred(stop)
