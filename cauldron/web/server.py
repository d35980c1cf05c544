"""The web view's Twisted service and its HTTP resources.

Pages (HTML shells drawn by ``static/cauldron.js``):

- ``/``: the services page; ``/events`` streams ``services`` events.
- ``/service/NAME``: the service page; ``/service/NAME/events`` streams one
  ``snapshot`` event, then ``value`` and ``state`` events.
- ``POST /service/NAME/write`` with JSON ``{"keyword": K, "value": V}``:
  200 ``{"keyword", "ascii"}`` or 4xx/5xx ``{"error": CLASS, "message": TEXT}``.
- ``/service/NAME/history?keyword=K&since=1h[&until=...]``: archived records
  (when an archive is configured).
- ``/api/services`` and ``/api/service/NAME``: the same snapshots as JSON.
- ``/static/...``: the page's own JavaScript and CSS.

Bounds: :data:`MAX_BODY` bytes per request body (413 beyond),
:data:`MAX_STREAMS` open event streams (503 beyond), :data:`MAX_PENDING`
bytes queued per stream while its browser does not read (then it is dropped).
"""

import html
import json
import os

from twisted.application import service
from twisted.internet import defer, threads
from twisted.internet.endpoints import TCP4ServerEndpoint, TCP6ServerEndpoint
from twisted.logger import Logger
from twisted.web import pages, resource, server, static

from cauldron import config as _config
from cauldron.client import ClientService
from cauldron.errors import (
    BadValue,
    CauldronError,
    CauldronTimeout,
    ConfigError,
    PermissionDenied,
    ReadOnly,
    RouterUnavailable,
    ServiceUnavailable,
    UnknownKeyword,
    UnknownService,
    WriteOnly,
)
from cauldron.serving import Outcome
from cauldron.web.streams import EventStream
from cauldron.web.watch import ServicesWatch, ServiceWatch

__all__ = ["WebService", "parseListen", "MAX_BODY", "MAX_STREAMS", "MAX_PENDING"]

log = Logger()

STATIC = os.path.join(os.path.dirname(os.path.abspath(__file__)), "static")
#: bytes a request body may hold
MAX_BODY = 64 * 1024
#: event streams open at once, all pages together
MAX_STREAMS = 64
#: bytes an event stream may queue while its browser does not read
MAX_PENDING = 256 * 1024
#: seconds between two keep-alive comments on every stream
KEEPALIVE = 15.0

#: HTTP status of each error a write or a page may meet
STATUS = [
    (UnknownService, 404), (UnknownKeyword, 404), (PermissionDenied, 403), (ReadOnly, 409),
    (WriteOnly, 409), (BadValue, 400), (CauldronTimeout, 504), (ServiceUnavailable, 503),
    (RouterUnavailable, 503), (CauldronError, 400),
]


def parseListen(listen):
    """``(host, port)`` from ``HOST:PORT`` (or ``PORT``: 127.0.0.1); ConfigError if bad."""
    host, _, port = listen.rpartition(":")
    host = host.strip("[]") or "127.0.0.1"
    try:
        number = int(port)
    except ValueError:
        raise ConfigError("--listen %r: expected HOST:PORT" % (listen,)) from None
    if not 0 <= number <= 65535:
        raise ConfigError("--listen %r: port out of range" % (listen,))
    return host, number


def _statusOf(error):
    for cls, status in STATUS:
        if isinstance(error, cls):
            return status
    return 500


def _json(request, status, body):
    request.setResponseCode(status)
    request.setHeader(b"content-type", b"application/json; charset=utf-8")
    request.setHeader(b"cache-control", b"no-store")
    return json.dumps(body, allow_nan=False, default=str).encode("utf-8")


def _tooManyStreams(request):
    return _json(request, 503, {"error": "TooManyStreams",
                                "message": "too many open event streams"})


def _error(request, error):
    return _json(request, _statusOf(error),
                 {"error": type(error).__name__, "message": str(error)})


class BoundedRequest(server.Request):
    """A request whose body is not kept beyond :attr:`maxBody` bytes (413 then)."""

    maxBody = MAX_BODY
    tooLarge = False
    _bodyBytes = 0

    def gotLength(self, length):
        if length is not None and length > self.maxBody:
            self.tooLarge = True
            length = 0
        super().gotLength(length)

    def handleContentChunk(self, data):
        if self.tooLarge:
            return
        self._bodyBytes += len(data)
        if self._bodyBytes > self.maxBody:
            self.tooLarge = True
            self.content.seek(0)
            self.content.truncate()
            return
        super().handleContentChunk(data)

    def process(self):
        allowed = getattr(self.channel.site, "allowedHosts", None)
        if allowed is not None and _hostName(self.getHeader(b"host")) not in allowed:
            # A page of another site whose name was made to point here (DNS rebinding).
            self._refuse(421, "WrongHost", "this web view answers only to %s"
                         % (", ".join(sorted(allowed)),))
            return
        if self.tooLarge:
            self._refuse(413, "TooLarge", "a request body may hold at most %d bytes"
                         % (self.maxBody,))
            return
        super().process()

    def _refuse(self, status, error, message):
        self.setResponseCode(status)
        self.setHeader(b"content-type", b"application/json; charset=utf-8")
        self.setHeader(b"connection", b"close")
        self.write(json.dumps({"error": error, "message": message}).encode())
        self.finish()


#: the names a web view bound to a loopback address answers to
LOOPBACK_NAMES = frozenset({"127.0.0.1", "localhost", "::1"})


def _hostName(header):
    """The host name of a ``Host`` header, lower case, without its port."""
    if not header:
        return ""
    host = header.decode("latin-1").strip().lower()
    if host.startswith("["):
        return host[1:].partition("]")[0]
    return host.rpartition(":")[0] if ":" in host else host


def _sameOrigin(request):
    """False if the request names an ``Origin`` other than the page's own host."""
    origin = request.getHeader(b"origin")
    if origin is None:
        return True
    origin = origin.decode("latin-1").strip().lower()
    scheme, _, rest = origin.partition("://")
    host = (request.getHeader(b"host") or b"").decode("latin-1").strip().lower()
    return bool(rest) and rest == host


PAGE = """<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{title}</title>
<link rel="stylesheet" href="/static/cauldron.css">
</head>
<body data-page="{page}" data-service="{service}" data-read-only="{readOnly}">
<header><a href="/">cauldron</a>{crumb}<span id="link" class="link">connecting…</span></header>
<main id="main"></main>
<script src="/static/cauldron.js"></script>
</body></html>
"""


def _page(page, title, service="", readOnly=False):
    crumb = " / " + html.escape(service) if service else ""
    return PAGE.format(title=html.escape(title), page=page, service=html.escape(service),
                       readOnly="true" if readOnly else "false", crumb=crumb).encode("utf-8")


class _WebResource(resource.Resource):
    """A page of the web view ``web``; a service's pages know its name (lower case)."""

    def __init__(self, web, name=None):
        super().__init__()
        self.web = web
        self.name = None if name is None else name.lower()


class _Leaf(_WebResource):
    isLeaf = True


class RootResource(_WebResource):
    """``/``: the services page; its children are the rest of the site."""

    def __init__(self, web):
        super().__init__(web)
        self.putChild(b"static", static.File(STATIC))
        self.putChild(b"events", ServicesEvents(web))
        self.putChild(b"service", ServicesResource(web))
        self.putChild(b"api", ApiResource(web))

    def getChild(self, name, request):
        if name == b"":
            return self
        return super().getChild(name, request)

    def render_GET(self, request):
        request.setHeader(b"content-type", b"text/html; charset=utf-8")
        return _page("services", "cauldron: services", readOnly=self.web.readOnly)


class ServicesEvents(_Leaf):
    """``/events``: the services list now, then again whenever it changes."""

    def render_GET(self, request):
        stream = self.web.openStream(request, self.web.servicesWatch.streams)
        if stream is None:
            return _tooManyStreams(request)
        stream.send("services", self.web.servicesWatch.snapshot())
        return server.NOT_DONE_YET


class ServicesResource(_WebResource):
    """``/service/NAME[/events|/write|/history]``."""

    def getChild(self, name, request):
        try:
            name = name.decode("utf-8")
        except UnicodeDecodeError:
            return pages.notFound("Not found", "No such service.")
        return ServiceResource(self.web, name)


class ServiceResource(_WebResource):
    def getChild(self, name, request):
        if name == b"":
            return self
        child = {b"events": ServiceEvents, b"write": WriteResource,
                 b"history": HistoryResource}.get(name)
        if child is None:
            return pages.notFound("Not found", "No such page.")
        return child(self.web, self.name)

    def render_GET(self, request):
        request.setHeader(b"content-type", b"text/html; charset=utf-8")
        return _page("service", "cauldron: " + self.name, self.name, self.web.readOnly)


class ServiceEvents(_Leaf):
    """``/service/NAME/events``: a snapshot, then each value and liveness change."""

    def render_GET(self, request):
        if not self.web.streamRoom():
            return _tooManyStreams(request)
        d = self.web.watch(self.name)

        def _watched(watch):
            if request._disconnected:
                return
            stream = self.web.openStream(request, watch.streams)
            if stream is None:
                request.write(_tooManyStreams(request))
                request.finish()
                return
            stream.send("snapshot", watch.snapshot(self.web.readOnly, self.web.archive is not None))

        def _failed(failure):
            failure.trap(CauldronError)
            if request._disconnected:
                return
            # An event stream that fails at once: the page shows why and retries.
            request.setHeader(b"content-type", b"text/event-stream; charset=utf-8")
            from cauldron.web.streams import encodeEvent

            request.write(b"retry: 2000\n\n" + encodeEvent("failure", {
                "error": type(failure.value).__name__, "message": failure.getErrorMessage()}))
            request.finish()

        d.addCallbacks(_watched, _failed)
        d.addErrback(lambda f: log.failure("web: opening a stream failed", f))
        return server.NOT_DONE_YET


class WriteResource(_Leaf):
    """``POST /service/NAME/write``: ``{"keyword": K, "value": V}``."""

    def render_POST(self, request):
        if self.web.readOnly:
            return _json(request, 403, {"error": "ReadOnlyView",
                                        "message": "this web view is read-only"})
        # Only this site's pages may write: another site's page can send a
        # cross-origin POST, but not with a JSON content type (the browser
        # asks first, and is never told yes) and never with our Origin.
        contentType = (request.getHeader(b"content-type") or b"").split(b";")[0].strip()
        if contentType.lower() != b"application/json":
            return _json(request, 415, {"error": "BadRequest",
                                        "message": "a write is sent as application/json"})
        if not _sameOrigin(request):
            return _json(request, 403, {"error": "CrossOrigin",
                                        "message": "writes come only from this site's pages"})
        try:
            body = json.loads(request.content.read().decode("utf-8"))
            keyword, value = body["keyword"], body["value"]
            if not isinstance(keyword, str):
                raise TypeError("keyword")
        except (ValueError, KeyError, TypeError, AttributeError):
            return _json(request, 400, {"error": "BadRequest", "message": "expected JSON "
                                        "{\"keyword\": NAME, \"value\": VALUE}"})
        d = self.web.watch(self.name)
        d.addCallback(lambda watch: watch.remote[keyword].write(value))
        d.addCallback(lambda ascii: _json(request, 200, {"keyword": keyword.upper(),
                                                         "ascii": ascii}))

        def _failed(failure):
            failure.trap(CauldronError)
            return _error(request, failure.value)

        d.addErrback(_failed)
        d.addErrback(lambda f: (log.failure("web: write failed", f),
                                _json(request, 500, {"error": "InternalError",
                                                     "message": f.getErrorMessage()}))[1])

        def _answer(body):
            if not request._disconnected:
                request.write(body)
                request.finish()

        d.addCallback(_answer)
        return server.NOT_DONE_YET

    def render_GET(self, request):
        request.setHeader(b"allow", b"POST")
        return _json(request, 405, {"error": "MethodNotAllowed", "message": "POST a write"})


class HistoryResource(_Leaf):
    """``/service/NAME/history?keyword=K&since=1h[&until=T]``: archived values as JSON."""

    def render_GET(self, request):
        if self.web.archive is None:
            return _json(request, 404, {"error": "NoArchive",
                                        "message": "no archive configured (--archive URL)"})
        args = {k.decode(): v[0].decode("utf-8", "replace") for k, v in request.args.items()}
        keyword = args.get("keyword")
        if not keyword:
            return _json(request, 400, {"error": "BadRequest", "message": "name a keyword"})
        since, until = args.get("since", "1h"), args.get("until")

        def query():
            from cauldron.archive import history

            return history(self.web.archive, self.name, [keyword], since=since, until=until,
                           limit=self.web.historyLimit)

        d = threads.deferToThread(query)
        d.addCallback(lambda records: _json(request, 200, {
            "keyword": keyword.upper(),
            "records": [{"timestamp": r.timestamp, "binary": r.binary, "ascii": r.ascii,
                         "kind": r.kind} for r in records],
        }))
        d.addErrback(lambda f: _error(request, f.value) if isinstance(f.value, CauldronError)
                     else _json(request, 400, {"error": type(f.value).__name__,
                                               "message": f.getErrorMessage()}))

        def _answer(body):
            if not request._disconnected:
                request.write(body)
                request.finish()

        d.addCallback(_answer)
        return server.NOT_DONE_YET


class ApiResource(_WebResource):
    """``/api/services`` and ``/api/service/NAME``: snapshots as plain JSON."""

    def getChild(self, name, request):
        if name == b"services":
            return _ServicesJson(self.web)
        if name == b"service" and request.postpath:
            return _ServiceJson(self.web, request.postpath[0].decode("utf-8", "replace"))
        return pages.notFound("Not found", "No such page.")


class _ServicesJson(_Leaf):
    def render_GET(self, request):
        return _json(request, 200, self.web.servicesWatch.snapshot())


class _ServiceJson(_Leaf):
    def render_GET(self, request):
        d = self.web.watch(self.name)
        d.addCallback(lambda watch: _json(request, 200, watch.snapshot(
            self.web.readOnly, self.web.archive is not None)))
        d.addErrback(lambda f: f.trap(CauldronError) and _error(request, f.value))

        def _answer(body):
            if not request._disconnected:
                request.write(body)
                request.finish()

        d.addCallback(_answer)
        return server.NOT_DONE_YET


class WebService(service.MultiService):
    """The web view: a client of the system serving pages on ``listen``.

    :param config: a path, a loaded :class:`cauldron.config.Config` or None
        (as :class:`~cauldron.client.ClientService` takes it).
    :param listen: ``HOST:PORT``; 127.0.0.1 unless told otherwise; port 0
        picks a free one (:attr:`port` says which, once started).
    :param readOnly: no write widgets; writes are refused with 403.
    :param archive: a database URL of ``cauldron-archiver`` for history, or None.
    """

    maxStreams = MAX_STREAMS
    maxPending = MAX_PENDING
    maxBody = MAX_BODY
    historyLimit = 20000

    def __init__(self, config=None, listen="127.0.0.1:8080", readOnly=False, reactor=None,
                 archive=None):
        super().__init__()
        if reactor is None:
            from twisted.internet import reactor
        self.reactor = reactor
        self.config = _config.load(config)
        self.host, self.port = parseListen(listen)
        self.readOnly = readOnly
        self.archive = archive
        self.client = ClientService(self.config, reactor=reactor)
        self.client.setServiceParent(self)
        self.servicesWatch = None
        self.watches = {}
        self._watching = {}
        self._streamCount = 0
        self._port = None  # the listening port once bound
        self._listened = Outcome()  # the port, or why there is none
        self._locatorTransport = None
        self._locator = None
        self._keepalive = None

    # -- streams

    def streamRoom(self):
        return self._streamCount < self.maxStreams

    def openStream(self, request, streams):
        """An :class:`EventStream` joined to ``streams``, or None when too many are open."""
        if not self.streamRoom():
            return None
        self._streamCount += 1

        def closed(stream):
            self._streamCount -= 1
            streams.discard(stream)

        stream = EventStream(request, self.maxPending, closed)
        if not stream.closed:
            streams.add(stream)
        return stream

    def _sendKeepalive(self):
        sets = [self.servicesWatch.streams] + [w.streams for w in self.watches.values()]
        for streams in sets:
            for stream in list(streams.streams):
                stream.sendRaw(b": keep-alive\n\n")

    # -- watched services

    def watch(self, name):
        """A Deferred firing with the :class:`ServiceWatch` of service ``name``."""
        name = name.lower()
        if name in self.watches:
            return defer.succeed(self.watches[name])
        mine = defer.Deferred()
        waiters = self._watching.get(name)
        if waiters is not None:
            waiters.append(mine)
            return mine
        self._watching[name] = [mine]
        d = self.client.service(name)

        def _got(remote):
            watch = ServiceWatch(remote, self.reactor, readOnly=self.readOnly,
                                 archive=self.archive is not None)
            watch.addChangeCallback(self._livenessChanged)
            return watch.start().addCallback(lambda _: watch)

        def _done(result):
            waiters = self._watching.pop(name, [])
            if isinstance(result, ServiceWatch):
                if self.running:
                    self.watches[name] = result
                else:
                    result.stop()
            for waiter in waiters:
                if isinstance(result, ServiceWatch):
                    waiter.callback(result)
                else:
                    waiter.errback(result)

        d.addCallback(_got)
        d.addBoth(_done)
        return mine

    def _livenessChanged(self):
        if self.servicesWatch is not None:
            self.servicesWatch.publish()

    # -- service

    def startService(self):
        from twisted.internet import task

        from cauldron.routerlink import Locator
        from cauldron.transport import Curve, Transport

        super().startService()
        site = server.Site(RootResource(self))
        site.requestFactory = BoundedRequest
        site.displayTracebacks = False
        if self.host in LOOPBACK_NAMES or self.host.startswith("127."):
            site.allowedHosts = LOOPBACK_NAMES | {self.host}
        locator = None
        if self.config.get("zmq-router", "enable"):
            self._locatorTransport = Transport(self.reactor, curve=Curve.fromConfig(self.config),
                                               shared=True)
            locator = self._locator = Locator(self.config, self._locatorTransport)
        self.servicesWatch = ServicesWatch(locator or _NoRouter(self.config), self.reactor,
                                           self.watches)
        self.servicesWatch.start()
        self._keepalive = task.LoopingCall(self._sendKeepalive)
        self._keepalive.clock = self.reactor
        self._keepalive.start(KEEPALIVE, now=False)
        endpointType = TCP6ServerEndpoint if ":" in self.host else TCP4ServerEndpoint
        endpoint = endpointType(self.reactor, self.port, interface=self.host)
        self._listened.reset()

        def _listening(port):
            self._port = port
            self.port = port.getHost().port
            log.info("cauldron-web: serving http://{host}:{port}/", host=self.host,
                     port=self.port)
            self._listened.set(port)

        endpoint.listen(site).addCallbacks(_listening, self._listened.set)

    def whenListening(self):
        """A Deferred firing with the listening port once bound (failing if it cannot be)."""
        return self._listened.whenKnown()

    @defer.inlineCallbacks
    def stopService(self):
        if self._keepalive is not None and self._keepalive.running:
            self._keepalive.stop()
        if self.servicesWatch is not None:
            self.servicesWatch.stop()
        for watch in list(self.watches.values()):
            watch.stop()
        self.watches.clear()
        port, self._port = self._port, None
        if port is not None:
            yield port.stopListening()
        if self._locator is not None:
            self._locator.close()
            self._locator = None
        if self._locatorTransport is not None:
            self._locatorTransport.shutdown()
            self._locatorTransport = None
        yield super().stopService()


class _NoRouter:
    """Stands in for the router when there is none: the list says why."""

    def __init__(self, config):
        self._why = "no router to ask: [zmq-router] enable = no in %s" % (config.source,)

    def request(self, makeMessage, what):
        return defer.fail(RouterUnavailable(self._why))
