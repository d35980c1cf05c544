"""What the web view knows of the system: the router's list, and each watched service.

:class:`ServicesWatch` asks the router for its list every
:data:`POLL_INTERVAL` seconds; :class:`ServiceWatch` holds one monitor per
keyword of one service, shared by every browser showing it, and its
dispatchers' liveness.  Both fan their news out to a
:class:`~cauldron.web.streams.StreamSet`.
"""

import math
import time
from collections import deque

from twisted.internet import defer, task
from twisted.logger import Logger

from cauldron.errors import CauldronError
from cauldron.protocol.messages import ListServices
from cauldron.web.streams import StreamSet

__all__ = ["ServicesWatch", "ServiceWatch", "POLL_INTERVAL", "PLOT_SECONDS"]

log = Logger()

#: seconds between two questions to the router
POLL_INTERVAL = 2.0
#: a dispatcher whose lease was renewed longer ago than this is shown late
LATE_AGE = 2.0
#: seconds of numeric values kept per keyword for the live plot
PLOT_SECONDS = 600.0
#: points kept per keyword for the live plot
PLOT_POINTS = 600
NUMERIC = ("integer", "double", "float")


def _jsonable(value):
    """A value JSON can carry (non-finite floats become their text)."""
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    return value


class ServicesWatch:
    """The router's list of services, polled, with the rows that vanished marked lost."""

    def __init__(self, locator, reactor, watches):
        self._locator = locator
        self._reactor = reactor
        self._watches = watches
        self._loop = task.LoopingCall(self.poll)
        self._loop.clock = reactor
        self._asking = None
        self.streams = StreamSet()
        self.rows = {}
        self.error = None

    def start(self):
        self._loop.start(POLL_INTERVAL, now=True)

    def stop(self):
        if self._loop.running:
            self._loop.stop()
        if self._asking is not None:
            self._asking.cancel()
        self.streams.closeAll()

    def poll(self):
        """Ask the router once; the answer updates :meth:`snapshot` and the streams."""
        if self._asking is not None:
            return None
        d = self._asking = self._locator.request(lambda i: ListServices(i), "list services")
        d.addCallbacks(self._listed, self._failed)
        d.addErrback(lambda f: f.trap(defer.CancelledError) and None)

        def done(_):
            self._asking = None

        return d.addBoth(done)

    def _listed(self, reply):
        self.error = None
        seen = set()
        for entry in reply.services:
            key = (entry.service, entry.dispatcher or entry.service)
            seen.add(key)
            self.rows[key] = {
                "service": entry.service, "dispatcher": key[1], "host": entry.host,
                "dispatchPort": entry.dispatchPort, "broadcastPort": entry.broadcastPort,
                "age": round(entry.age, 1), "keywords": entry.keywords,
                "state": "live" if entry.age <= LATE_AGE else "late",
            }
        for key, row in self.rows.items():
            if key not in seen:
                row["state"] = "lost"
        self.publish()

    def _failed(self, failure):
        failure.trap(CauldronError)
        self.error = "%s: %s" % (type(failure.value).__name__, failure.getErrorMessage())
        self.publish()

    def snapshot(self):
        """``{"services": [row...], "error": text or None}``; rows sorted by service, dispatcher."""
        rows = []
        for key in sorted(self.rows):
            row = dict(self.rows[key])
            watch = self._watches.get(row["service"])
            if watch is not None and row["dispatcher"] in watch.lostDispatchers():
                row["state"] = "lost"
            rows.append(row)
        return {"services": rows, "error": self.error}

    def publish(self):
        self.streams.send("services", self.snapshot())


class ServiceWatch:
    """One service as the web view shows it: metadata, values, liveness, recent history.

    :param remote: the :class:`cauldron.client.RemoteService`.
    """

    def __init__(self, remote, reactor, wallClock=time.time, readOnly=False, archive=False):
        self.remote = remote
        self.name = remote.name
        self._reactor = reactor
        self._wallClock = wallClock
        self._readOnly, self._archive = readOnly, archive
        self.streams = StreamSet()
        self.values = {}
        self.recent = {}
        self._subscriptions = []
        self._monitored = set()
        self._onChange = []
        self._joining = None
        remote.addStateCallback(self._stateChanged)

    def start(self):
        """Monitor every readable keyword; fires once each monitor is primed or failed.

        Keywords that appear later (a dispatcher joining the service) are
        monitored within :data:`POLL_INTERVAL`, and open pages redrawn.
        """
        self._joining = task.LoopingCall(self._joined)
        self._joining.clock = self._reactor
        self._joining.start(POLL_INTERVAL, now=False)
        return self._monitorNew()

    def _monitorNew(self):
        calls = []
        for keyword in self.remote:
            if keyword.name in self._monitored:
                continue
            self._monitored.add(keyword.name)  # handled: monitored, or nothing to see
            if keyword.info.get("writeonly"):
                continue
            d = keyword.monitor(self._changed)
            d.addCallback(self._subscriptions.append)
            d.addErrback(self._monitorFailed, keyword.name)
            calls.append(d)
        return defer.DeferredList(calls)

    def _joined(self):
        """New keywords: monitored, then every open page gets a fresh snapshot."""
        if set(self.remote.keywords()) <= self._monitored:
            return
        d = self._monitorNew()
        d.addCallback(lambda _: self.streams.send(
            "snapshot", self.snapshot(self._readOnly, self._archive)))
        return d

    def _monitorFailed(self, failure, name):
        self._monitored.discard(name)  # tried again at the next poll
        failure.trap(CauldronError)
        log.info("web: monitoring {service}.{kw} failed: {why}", service=self.name, kw=name,
                 why=failure.getErrorMessage())

    def stop(self):
        if self._joining is not None and self._joining.running:
            self._joining.stop()
        self.remote.removeStateCallback(self._stateChanged)
        for subscription in self._subscriptions:
            subscription.stop()
        self._subscriptions = []
        self.streams.closeAll()

    def addChangeCallback(self, callback):
        """Call ``callback()`` whenever the dispatchers' liveness changes."""
        self._onChange.append(callback)

    def lostDispatchers(self):
        return list(self.remote.lost)

    def _changed(self, value):
        shown = {
            "keyword": value.name, "ascii": value.ascii, "binary": _jsonable(value.binary),
            "timestamp": value.timestamp, "missed": value.missed,
        }
        self.values[value.name] = shown
        if isinstance(value.binary, (int, float)) and not isinstance(value.binary, bool) \
                and math.isfinite(value.binary):
            points = self.recent.setdefault(value.name, deque(maxlen=PLOT_POINTS))
            when = value.timestamp if value.timestamp is not None else self._wallClock()
            points.append((when, value.binary))
            while points and points[0][0] < when - PLOT_SECONDS:
                points.popleft()
        self.streams.send("value", shown)

    def _stateChanged(self, remote):
        self.streams.send("state", self.state())
        for callback in self._onChange:
            callback()

    def state(self):
        """``{"lost": [dispatcher...], "dispatchers": {name: {"host", "connected"}}}``."""
        return {
            "lost": self.lostDispatchers(),
            "dispatchers": {
                name: {"connected": d.connected, "keywords": d.keywords()}
                for name, d in sorted(self.remote.dispatchers.items())
            },
        }

    def keywordInfo(self, keyword):
        info = dict(keyword.info)
        info["name"] = keyword.name
        info["type"] = keyword.type.typeName
        info["dispatcher"] = keyword.dispatcher.name
        for key in ("initial", "binary", "ascii", "sequence", "timestamp"):
            info.pop(key, None)
        return {k: _jsonable(v) for k, v in info.items()}

    def snapshot(self, readOnly, archive=False):
        """Everything a page needs to draw the service from scratch."""
        return {
            "service": self.name,
            "readOnly": readOnly,
            "archive": archive,
            "keywords": [self.keywordInfo(k) for k in self.remote],
            "values": self.values,
            "recent": {name: list(points) for name, points in self.recent.items()},
            "state": self.state(),
            "now": self._wallClock(),
        }
