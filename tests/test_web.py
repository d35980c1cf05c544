"""The web view over real sockets, without a browser.

A router, a dispatcher and a :class:`~cauldron.web.server.WebService` run in
this process on the global reactor; requests go over TCP through Twisted's
own HTTP client (``Agent``), event streams are read as they arrive, and the
slow browser is a raw TCP client that never reads.  The browser itself:
``test_web_browser.py``.
"""

import json

from twisted.application.service import IServiceMaker
from twisted.internet import defer, endpoints, protocol, task
from twisted.internet import reactor as globalReactor
from twisted.plugin import getPlugins
from twisted.python import usage
from twisted.trial import unittest
from twisted.web.client import Agent, HTTPConnectionPool, readBody
from twisted.web.http_headers import Headers
from twisted.web.iweb import IBodyProducer
from zope.interface import implementer
from zope.interface.verify import verifyObject

from cauldron import keywords
from cauldron.web import WebService
from cauldron.web.server import parseListen
from cauldron.web.tap import WebOptions, WebRunner, makeWebService
from tests.helpers import eventually, turn
from tests.test_router import HEARTBEAT, RouterTestCase


@implementer(IBodyProducer)
class _Body:
    """A request body Agent can send (bytes, all at once)."""

    def __init__(self, data):
        self.data = data
        self.length = len(data)

    def startProducing(self, consumer):
        consumer.write(self.data)
        return defer.succeed(None)

    def pauseProducing(self):
        pass

    def stopProducing(self):
        pass


class _Collect(protocol.Protocol):
    """Keeps what an event stream sent so far."""

    def __init__(self):
        self.data = b""
        self.ended = defer.Deferred()

    def dataReceived(self, data):
        self.data += data

    def connectionLost(self, reason):
        self.ended.callback(None)

    def events(self):
        """``[(event, data)]`` of every complete event so far."""
        found = []
        for block in self.data.split(b"\n\n"):
            fields = dict(line.split(b": ", 1) for line in block.split(b"\n")
                          if b": " in line and not line.startswith(b":"))
            if b"event" in fields:
                found.append((fields[b"event"].decode(), json.loads(fields[b"data"])))
        return found


class _Stalled(protocol.Protocol):
    """A browser that asks for a stream, then never reads a byte."""

    def __init__(self, path):
        self.path = path
        self.lost = defer.Deferred()

    def connectionMade(self):
        self.transport.write(b"GET %s HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n" % (self.path,))
        self.transport.pauseProducing()

    def connectionLost(self, reason):
        self.lost.callback(None)


class WebTestCase(RouterTestCase):
    """A router, the ``demo`` dispatcher and a web view, all cleaned up."""

    @defer.inlineCallbacks
    def setUp(self):
        self.router, self.cfg = self.routerAndConfig()
        self.dispatcher = yield self.startDemo()
        self.pool = HTTPConnectionPool(globalReactor, persistent=False)
        self.agent = Agent(globalReactor, pool=self.pool)
        self.addCleanup(self.pool.closeCachedConnections)

    @defer.inlineCallbacks
    def startDemo(self):
        from cauldron.dispatcher import DispatcherService

        dispatcher = DispatcherService("demo", self.cfg, [
            keywords.Double("TEMP", initial=20.0, range=(0.0, 400.0), units="K"),
            keywords.Enumerated("MODE", enumerators=["OFF", "ON"], initial="OFF"),
            keywords.Integer("COUNT", initial=0, readonly=True),
        ], reactor=globalReactor, heartbeatInterval=HEARTBEAT)
        dispatcher.startService()
        self.addCleanup(lambda: dispatcher.running and dispatcher.stopService())
        yield dispatcher.whenReady()
        return dispatcher

    @defer.inlineCallbacks
    def startWeb(self, **kwargs):
        web = WebService(self.cfg, listen="127.0.0.1:0", reactor=globalReactor, **kwargs)
        web.startService()
        self.addCleanup(lambda: web.running and web.stopService())
        yield web.whenListening()
        self.base = b"http://127.0.0.1:%d" % (web.port,)
        return web

    def request(self, method, path, body=None, contentType=b"application/json", **headers):
        headers = Headers({b"connection": [b"close"],
                           **{k.encode(): [v] for k, v in headers.items()}})
        if body is not None:
            headers.addRawHeader(b"content-type", contentType)
            body = _Body(body if isinstance(body, bytes) else json.dumps(body).encode())
        return self.agent.request(method, self.base + path, headers, body)

    @defer.inlineCallbacks
    def getJson(self, method, path, body=None, **kwargs):
        """``(status, decoded JSON body)``."""
        response = yield self.request(method, path, body, **kwargs)
        data = yield readBody(response)
        return response.code, json.loads(data)

    @defer.inlineCallbacks
    def openStream(self, path):
        """``(response, collector)`` of an event stream, read as it arrives."""
        response = yield self.request(b"GET", path)
        collect = _Collect()
        if response.code == 200:
            response.deliverBody(collect)
            self.addCleanup(lambda: collect.ended)
            self.addCleanup(lambda: collect.transport.stopProducing())
        else:
            collect.data = yield readBody(response)
        return response, collect


class EndpointTests(WebTestCase):
    """The JSON endpoints and the pages."""

    @defer.inlineCallbacks
    def test_servicesListed(self):
        """``/api/services`` lists each dispatcher the router knows, live."""
        web = yield self.startWeb()
        yield eventually(lambda: web.servicesWatch.rows)
        status, body = yield self.getJson(b"GET", b"/api/services")
        rows = body["services"]
        self.assertEqual([(r["service"], r["dispatcher"], r["state"], r["keywords"])
                          for r in rows], [("demo", "demo", "live", 3)])

    @defer.inlineCallbacks
    def test_serviceSnapshot(self):
        """``/api/service/NAME`` gives every keyword's type, units, range or enumerators, value."""
        yield self.startWeb()
        status, body = yield self.getJson(b"GET", b"/api/service/demo")
        self.assertEqual(status, 200)
        infos = {k["name"]: k for k in body["keywords"]}
        self.assertEqual(infos["TEMP"]["type"], "double")
        self.assertEqual(infos["TEMP"]["units"], "K")
        self.assertEqual(infos["TEMP"]["range"], [0.0, 400.0])
        self.assertEqual(infos["MODE"]["enumerators"], {"0": "OFF", "1": "ON"})
        self.assertTrue(infos["COUNT"]["readonly"])
        self.assertEqual(body["values"]["TEMP"]["ascii"], "20.0")
        self.assertEqual(body["state"]["lost"], [])

    @defer.inlineCallbacks
    def test_unknownService(self):
        """A service the router does not know is a 404 naming the error's class."""
        yield self.startWeb()
        status, body = yield self.getJson(b"GET", b"/api/service/nosuch")
        self.assertEqual((status, body["error"]), (404, "UnknownService"))

    @defer.inlineCallbacks
    def test_pages(self):
        """``/``, ``/service/NAME`` and the static files are served."""
        yield self.startWeb()
        for path, wanted in [(b"/", b'data-page="services"'),
                             (b"/service/demo", b'data-service="demo"'),
                             (b"/static/cauldron.js", b"EventSource"),
                             (b"/static/cauldron.css", b".lost-banner")]:
            response = yield self.request(b"GET", path)
            body = yield readBody(response)
            self.assertEqual(response.code, 200, path)
            self.assertIn(wanted, body)


class WriteTests(WebTestCase):
    """Writes through ``POST /service/NAME/write``."""

    @defer.inlineCallbacks
    def test_write(self):
        """A write answers 200 with the new ascii value, which the dispatcher holds."""
        yield self.startWeb()
        status, body = yield self.getJson(b"POST", b"/service/demo/write",
                                          {"keyword": "temp", "value": 42.5})
        self.assertEqual((status, body), (200, {"keyword": "TEMP", "ascii": "42.5"}))
        self.assertEqual(self.dispatcher["TEMP"].value, 42.5)

    @defer.inlineCallbacks
    def test_refused(self):
        """A refused write answers 4xx with the error's class and the dispatcher's words."""
        yield self.startWeb()
        status, body = yield self.getJson(b"POST", b"/service/demo/write",
                                          {"keyword": "TEMP", "value": 500})
        self.assertEqual((status, body["error"]), (400, "BadValue"))
        self.assertIn("above the maximum 400", body["message"])
        status, body = yield self.getJson(b"POST", b"/service/demo/write",
                                          {"keyword": "MODE", "value": "SIDEWAYS"})
        self.assertEqual((status, body["error"]), (400, "BadValue"))
        status, body = yield self.getJson(b"POST", b"/service/demo/write",
                                          {"keyword": "COUNT", "value": 3})
        self.assertEqual((status, body["error"]), (409, "ReadOnly"))
        status, body = yield self.getJson(b"POST", b"/service/demo/write",
                                          {"keyword": "NOSUCH", "value": 3})
        self.assertEqual((status, body["error"]), (404, "UnknownKeyword"))
        status, body = yield self.getJson(b"POST", b"/service/demo/write", b"not json")
        self.assertEqual((status, body["error"]), (400, "BadRequest"))
        status, body = yield self.getJson(b"POST", b"/service/demo/write", b"x",
                                          contentType=b"text/plain")
        self.assertEqual((status, body["error"]), (415, "BadRequest"))
        self.assertEqual(self.dispatcher["TEMP"].value, 20.0)

    @defer.inlineCallbacks
    def test_crossSite(self):
        """A write from another site's page, or to a name that is not this host's, is refused."""
        web = yield self.startWeb()
        write = {"keyword": "TEMP", "value": 1.0}
        status, body = yield self.getJson(b"POST", b"/service/demo/write", write,
                                          origin=b"http://evil.example")
        self.assertEqual((status, body["error"]), (403, "CrossOrigin"))
        raw = _Collect()
        yield endpoints.connectProtocol(
            endpoints.TCP4ClientEndpoint(globalReactor, "127.0.0.1", web.port), raw)
        raw.transport.write(b"GET /api/services HTTP/1.1\r\nHost: evil.example:%d\r\n"
                            b"Connection: close\r\n\r\n" % (web.port,))
        yield raw.ended
        self.assertTrue(raw.data.startswith(b"HTTP/1.1 421 "), raw.data)
        self.assertIn(b'"WrongHost"', raw.data)
        self.assertEqual(self.dispatcher["TEMP"].value, 20.0)
        status, body = yield self.getJson(b"POST", b"/service/demo/write", write,
                                          origin=b"http://127.0.0.1:%d" % (web.port,))
        self.assertEqual(status, 200)

    @defer.inlineCallbacks
    def test_readOnly(self):
        """``readOnly``: a write is refused with 403 and the page is told to show no widgets."""
        yield self.startWeb(readOnly=True)
        status, body = yield self.getJson(b"POST", b"/service/demo/write",
                                          {"keyword": "TEMP", "value": 1.0})
        self.assertEqual((status, body["error"]), (403, "ReadOnlyView"))
        self.assertEqual(self.dispatcher["TEMP"].value, 20.0)
        status, body = yield self.getJson(b"GET", b"/api/service/demo")
        self.assertTrue(body["readOnly"])

    @defer.inlineCallbacks
    def test_bodyLimit(self):
        """A body over the limit is refused with 413 and never written."""
        web = yield self.startWeb()
        padding = "x" * web.maxBody
        status, body = yield self.getJson(b"POST", b"/service/demo/write",
                                          {"keyword": "TEMP", "value": 1.0, "pad": padding})
        self.assertEqual((status, body["error"]), (413, "TooLarge"))
        self.assertEqual(self.dispatcher["TEMP"].value, 20.0)


class StreamTests(WebTestCase):
    """The server-sent event streams and their bounds."""

    @defer.inlineCallbacks
    def test_snapshotThenChanges(self):
        """A service stream starts with a snapshot, then carries each change."""
        yield self.startWeb()
        response, stream = yield self.openStream(b"/service/demo/events")
        self.assertEqual(response.headers.getRawHeaders(b"content-type"),
                         [b"text/event-stream; charset=utf-8"])
        yield eventually(lambda: stream.events())
        event, snapshot = stream.events()[0]
        self.assertEqual((event, snapshot["values"]["TEMP"]["ascii"]), ("snapshot", "20.0"))
        self.dispatcher["TEMP"].set(33.0)
        yield eventually(lambda: ("value", "TEMP", "33.0") in [
            (e, d.get("keyword"), d.get("ascii")) for e, d in stream.events()])

    @defer.inlineCallbacks
    def test_dispatcherJoiningIsShown(self):
        """Keywords of a dispatcher joining the service: a new snapshot, then their changes."""
        from cauldron.dispatcher import DispatcherService

        yield self.startWeb()
        response, stream = yield self.openStream(b"/service/demo/events")
        yield eventually(lambda: stream.events())
        motors = DispatcherService("demo", self.cfg, [keywords.Double("POS", initial=1.5)],
                                   reactor=globalReactor, heartbeatInterval=HEARTBEAT,
                                   dispatcher="motors")
        motors.startService()
        self.addCleanup(lambda: motors.running and motors.stopService())
        yield motors.whenReady()

        def snapshots():
            return [d for e, d in stream.events() if e == "snapshot"]

        yield eventually(lambda: len(snapshots()) == 2, timeout=10)
        names = {(k["name"], k["dispatcher"]) for k in snapshots()[1]["keywords"]}
        self.assertIn(("POS", "motors"), names)
        motors["POS"].set(2.5)
        yield eventually(lambda: ("value", "POS", "2.5") in [
            (e, d.get("keyword"), d.get("ascii")) for e, d in stream.events()])
        yield task.deferLater(globalReactor, 2.5, lambda: None)  # a poll with nothing new
        self.assertEqual(len(snapshots()), 2)

    @defer.inlineCallbacks
    def test_servicesStream(self):
        """The services stream sends the list at once."""
        yield self.startWeb()
        response, stream = yield self.openStream(b"/events")
        yield eventually(lambda: stream.events())
        self.assertEqual(stream.events()[0][0], "services")

    @defer.inlineCallbacks
    def test_lostAndBack(self):
        """A dispatcher that falls silent is marked lost on the stream, and cleared on return."""
        web = yield self.startWeb()
        response, stream = yield self.openStream(b"/service/demo/events")
        yield eventually(lambda: stream.events())
        watch = web.watches["demo"]
        self.dispatcher.stopService()  # silent, as a dead one
        yield eventually(lambda: ("state", ["demo"]) in [
            (e, d.get("lost")) for e, d in stream.events()], timeout=10)
        self.assertEqual(watch.lostDispatchers(), ["demo"])
        self.dispatcher = yield self.startDemo()

        def cleared():
            states = [d["lost"] for e, d in stream.events() if e == "state"]
            return states.index(["demo"]) < len(states) - 1 and states[-1] == []

        yield eventually(cleared, timeout=10)

    @defer.inlineCallbacks
    def test_streamLimit(self):
        """Beyond the limit of open streams a new one is refused with 503."""
        web = yield self.startWeb()
        web.maxStreams = 2
        first, _ = yield self.openStream(b"/events")
        second, _ = yield self.openStream(b"/service/demo/events")
        third, refused = yield self.openStream(b"/events")
        self.assertEqual((first.code, second.code, third.code), (200, 200, 503))
        self.assertEqual(json.loads(refused.data)["error"], "TooManyStreams")

    @defer.inlineCallbacks
    def test_slowStreamDropped(self):
        """A stream whose browser does not read is dropped once its queue passes the bound.

        What waits for it never exceeds the bound by more than one event, and
        the stream's place is free again.
        """
        web = yield self.startWeb()
        web.maxPending = 32 * 1024
        yield web.watch("demo")
        watch = web.watches["demo"]
        stalled = _Stalled(b"/service/demo/events")
        endpoint = endpoints.TCP4ClientEndpoint(globalReactor, "127.0.0.1", web.port)
        yield endpoints.connectProtocol(endpoint, stalled)
        self.addCleanup(lambda: stalled.lost)
        self.addCleanup(lambda: stalled.transport.abortConnection())
        yield eventually(lambda: len(watch.streams) == 1)
        stream = next(iter(watch.streams.streams))
        big = {"keyword": "TEMP", "ascii": "x" * 16384}
        sent = 0
        while not stream.dropped:
            self.assertLessEqual(stream.pendingBytes, web.maxPending + 17000)
            watch.streams.send("value", big)
            sent += 1
            self.assertLess(sent, 4000, "never dropped")  # 64 MB: far beyond any socket buffer
            yield turn()  # let the reactor write what the socket takes
        stalled.transport.resumeProducing()  # reading again, it sees the connection closed
        yield stalled.lost
        self.assertEqual((len(watch.streams), web._streamCount), (0, 0))


class TapTests(unittest.TestCase):
    """``twistd cauldron-web``: options, service and plugin."""

    def test_defaults(self):
        """Without options: localhost port 8080, writes allowed, no archive."""
        options = WebOptions()
        options.parseOptions([])
        self.assertEqual((options["listen"], options["read-only"], options["archive"]),
                         ("127.0.0.1:8080", 0, None))

    def test_badListen(self):
        """A listen address without a port is a usage error."""
        self.assertRaises(usage.UsageError, WebOptions().parseOptions, ["--listen", "here"])

    def test_makeService(self):
        """The options make a WebService with them."""
        options = WebOptions()
        options.parseOptions(["--listen", "0.0.0.0:9000", "--read-only"])
        runner = makeWebService(options, reactor=globalReactor)
        self.assertIsInstance(runner, WebRunner)
        web = runner.web
        self.assertIsInstance(web, WebService)
        self.assertEqual((web.host, web.port, web.readOnly), ("0.0.0.0", 9000, True))

    def test_plugin(self):
        """``cauldron-web`` is a twistd plugin."""
        makers = {m.tapname: m for m in getPlugins(IServiceMaker)}
        self.assertIn("cauldron-web", makers)
        verifyObject(IServiceMaker, makers["cauldron-web"])
        self.assertIs(makers["cauldron-web"].options, WebOptions)

    def test_parseListen(self):
        """``HOST:PORT`` or ``PORT``; the host defaults to 127.0.0.1."""
        self.assertEqual(parseListen("8081"), ("127.0.0.1", 8081))
        self.assertEqual(parseListen("[::1]:80"), ("::1", 80))


class RunWebTests(WebTestCase):
    """``runWeb``: what ``cauldron web`` runs."""

    @defer.inlineCallbacks
    def test_servesUntilCancelled(self):
        """It prints the address, serves, and stops cleanly when cancelled."""
        from cauldron.web import runWeb

        lines = []
        running = defer.Deferred.fromCoroutine(runWeb(globalReactor, self.cfg,
                                                      listen="127.0.0.1:0",
                                                      printer=lines.append))
        running.addErrback(lambda f: f.trap(defer.CancelledError))
        yield eventually(lambda: lines)
        self.assertRegex(lines[0], r"^cauldron web: serving http://127\.0\.0\.1:\d+/")
        self.base = lines[0].split()[3].rstrip("/").encode()
        status, body = yield self.getJson(b"GET", b"/api/service/demo")
        self.assertEqual(status, 200)
        running.cancel()
        yield running

    @defer.inlineCallbacks
    def test_addressInUse(self):
        """An address it cannot listen on is one CauldronError saying so."""
        from cauldron.errors import CauldronError
        from cauldron.web import runWeb

        web = yield self.startWeb()
        running = defer.Deferred.fromCoroutine(runWeb(globalReactor, self.cfg,
                                                      listen="127.0.0.1:%d" % (web.port,),
                                                      printer=lambda line: None))
        error = yield self.assertFailure(running, CauldronError)
        self.assertIn("cannot listen on 127.0.0.1:%d" % (web.port,), str(error))


class HistoryTests(WebTestCase):
    """``/service/NAME/history`` reads what ``cauldron-archiver`` stored."""

    @defer.inlineCallbacks
    def test_history(self):
        """Values the archiver stored come back as JSON records, oldest first."""
        import os
        import shutil
        import tempfile

        from cauldron.archive import ArchiverService, history

        folder = tempfile.mkdtemp(prefix="cauldron-web-archive-")
        self.addCleanup(shutil.rmtree, folder, ignore_errors=True)
        db = "sqlite:///" + os.path.join(folder, "archive.sqlite")
        archiver = ArchiverService(self.cfg, db=db, reactor=globalReactor, discoveryInterval=0.1)
        archiver.startService()
        self.addCleanup(lambda: archiver.running and archiver.stopService())
        yield archiver.whenReady()
        self.dispatcher["TEMP"].set(55.0)
        yield eventually(lambda: "55.0" in [r.ascii for r in history(db, "demo", ["TEMP"])])
        yield self.startWeb(archive=db)
        status, body = yield self.getJson(b"GET", b"/service/demo/history?keyword=temp&since=1h")
        self.assertEqual((status, body["keyword"]), (200, "TEMP"))
        values = [r["ascii"] for r in body["records"] if r["kind"] == "value"]
        self.assertEqual(values[-1], "55.0")

    @defer.inlineCallbacks
    def test_noArchive(self):
        """Without an archive the history endpoint says so (404)."""
        yield self.startWeb()
        status, body = yield self.getJson(b"GET", b"/service/demo/history?keyword=TEMP")
        self.assertEqual((status, body["error"]), (404, "NoArchive"))


def test_twistdAddressInUse(tmp_path):
    """``twistd cauldron-web`` on a taken address ends at once, non-zero, saying why."""
    import socket
    import subprocess

    from tests.processes import DEADLINE, TWISTD, environment

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = subprocess.run(
            [*TWISTD, "-n", "--pidfile=", "cauldron-web", "--listen", "127.0.0.1:%d" % port],
            cwd=str(tmp_path), env=environment(), capture_output=True, text=True,
            timeout=DEADLINE, stdin=subprocess.DEVNULL)
    assert result.returncode != 0, result.stdout
    assert "cauldron-web: cannot listen on 127.0.0.1:%d" % port in result.stdout + result.stderr


def test_twistdBadOptionIsOneLine(tmp_path):
    """A bad ``--listen`` is one line on stderr, nothing on stdout, exit 1."""
    import subprocess

    from tests.processes import DEADLINE, TWISTD, environment

    result = subprocess.run(
        [*TWISTD, "-n", "--pidfile=", "cauldron-web", "--listen", "nowhere"],
        cwd=str(tmp_path), env=environment(), capture_output=True, text=True,
        timeout=DEADLINE, stdin=subprocess.DEVNULL)
    assert (result.returncode, result.stdout) == (1, ""), result
    assert result.stderr.startswith("twistd cauldron-web: ") and result.stderr.count("\n") == 1
