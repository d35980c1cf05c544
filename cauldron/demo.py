"""The demo: a router and a ``demo`` dispatcher in one process, for a first look.

``cauldron demo`` runs :func:`makeDemoService` and prints :func:`demoBanner`.
The keywords cover every KTL type and show the dispatcher's features: a
simulated sensor re-read periodically (``TEMP``), a counter (``COUNT``), a
write that takes time and answers through a Deferred (``FILTER``), a check
hook refusing bad values (``POSITION``) and a read-only mask derived from
other keywords (``STATUS``).
"""

import math
import shlex

from twisted.application import service
from twisted.internet import defer, task
from twisted.logger import Logger

from cauldron import config as _config
from cauldron import keywords
from cauldron.dispatcher import DispatcherService
from cauldron.errors import BadValue, CauldronError
from cauldron.router import RouterService
from cauldron.transport import AddressInUse, portOf

__all__ = ["SERVICE", "DemoService", "makeDemoService", "demoBanner"]

log = Logger()

#: the name of the demo's service
SERVICE = "demo"
#: the temperature TEMP relaxes to while MODE is OFF (K)
AMBIENT = 293.0
#: seconds TEMP takes to close ~63% of the gap to its target
TIME_CONSTANT = 10.0
#: seconds the filter wheel takes to move
FILTER_MOVE = 0.5
FILTERS = ["OPEN", "B", "V", "R", "I"]
STATUS_BITS = {0: "COOLING", 1: "MOVING", 2: "OPEN"}
COOLING, MOVING, OPEN = 1, 2, 4


class DemoKeywords:
    """The demo's keywords and the simulated hardware behind their hooks.

    Hooks are methods of this object (passed to the keyword constructors), so
    the simulation state lives in one place and runs on the given reactor.
    """

    def __init__(self, reactor, tick=1.0, filterMove=FILTER_MOVE):
        self.reactor = reactor
        self.tick = tick
        self.filterMove = filterMove
        self._temperature = AMBIENT
        self._lastUpdate = None
        self._counting = None
        self._moving = False
        self.temp = keywords.Double(
            "TEMP", units="K", range=(0.0, 400.0), format="%.3f", readonly=True,
            initial=AMBIENT, read=self.readTemperature,
            description="Detector temperature (simulated; follows SETPOINT while MODE=ON)",
        )
        self.setpoint = keywords.Double(
            "SETPOINT", units="K", range=(0.0, 400.0), initial=150.0,
            description="Temperature the controller aims for while MODE=ON",
        )
        self.mode = keywords.Enumerated(
            "MODE", enumerators=["OFF", "ON", "STANDBY"], initial="OFF",
            description="Controller mode: ON cools, STANDBY holds, OFF warms to ambient",
        )
        self.shutter = keywords.Boolean(
            "SHUTTER", initial=False, description="Shutter open (1) or closed (0)",
        )
        self.filter = keywords.Enumerated(
            "FILTER", enumerators=FILTERS, initial="OPEN", write=self.moveFilter,
            description="Filter wheel position (a move takes %g s)" % (filterMove,),
        )
        self.count = keywords.Integer(
            "COUNT", initial=0, range=(0, None), readonly=True, read=self.readCount,
            description="Ticks since the demo started",
        )
        self.message = keywords.String(
            "MESSAGE", initial="welcome to the cauldron demo",
            description="Free text; the filter wheel reports here too",
        )
        self.status = keywords.Mask(
            "STATUS", bits=STATUS_BITS, initial=0, readonly=True,
            description="Derived state: COOLING, MOVING (filter), OPEN (shutter)",
        )
        self.position = keywords.DoubleArray(
            "POSITION", units="mm", range=(-100.0, 100.0), initial=[0.0, 0.0, 0.0],
            check=self.checkPosition, description="Stage position x y z",
        )
        # Periodic reads run the read hooks: the sensor and the counter tick
        # without any client asking.
        self.temp.period(tick)
        self.count.period(tick)
        for keyword in (self.mode, self.shutter, self.setpoint, self.temp):
            keyword.addListener(self._updateStatus)

    def all(self):
        """Every keyword, in the order they are served."""
        return [
            self.temp, self.setpoint, self.mode, self.shutter, self.filter,
            self.count, self.message, self.status, self.position,
        ]

    # -- hooks

    def readTemperature(self):
        """Relax towards the target for the time elapsed, plus a small ripple.

        Time-based, so client reads between periodic ones change nothing
        but the phase: the sensor drifts at the same rate however often read.
        """
        now = self.reactor.seconds()
        if self._lastUpdate is not None and self.mode.ascii != "STANDBY":
            target = self.setpoint.value if self.mode.ascii == "ON" else AMBIENT
            elapsed = now - self._lastUpdate
            self._temperature += (target - self._temperature) * (
                1.0 - math.exp(-elapsed / TIME_CONSTANT)
            )
        self._lastUpdate = now
        ripple = 0.05 * math.sin(now)
        return min(max(self._temperature + ripple, 0.0), 400.0)

    def readCount(self):
        """Whole ticks since the first read (rounded: periodic reads land on ticks)."""
        now = self.reactor.seconds()
        if self._counting is None:
            self._counting = now
        return round((now - self._counting) / self.tick)

    def moveFilter(self, position):
        """Start the wheel; the write (and its reply) completes when it arrives."""
        name = FILTERS[position]
        self._moving = True
        self._updateStatus()
        self.message.set("filter wheel moving to %s" % (name,))
        return task.deferLater(self.reactor, self.filterMove, self._filterArrived, name)

    def _filterArrived(self, name):
        self._moving = False
        self._updateStatus()
        self.message.set("filter wheel at %s" % (name,))

    def checkPosition(self, value):
        """A stage has three axes; anything else is refused before it is written."""
        if len(value) != 3:
            raise BadValue("POSITION: expected 3 values (x y z), got %d" % (len(value),))

    def _updateStatus(self, _keyword=None):
        bits = 0
        if (
            self.mode.ascii == "ON"
            and self.temp.value is not None
            and self.setpoint.value is not None
            and abs(self.temp.value - self.setpoint.value) > 1.0
        ):
            bits |= COOLING
        if self._moving:
            bits |= MOVING
        if self.shutter.value:
            bits |= OPEN
        self.status.set(bits)


class DemoService(service.MultiService):
    """A router (unless ``[zmq-router] enable = no``) and the demo dispatcher.

    Started in that order, so a router ``port`` of 0 is resolved to the port
    actually bound before the dispatcher asks the router for a lease; stopped
    in the other order, so the dispatcher's release still reaches the router.

    :ivar router: the :class:`~cauldron.router.RouterService`, or None in direct mode.
    :ivar dispatcher: the :class:`~cauldron.dispatcher.DispatcherService`.
    :ivar demoKeywords: the :class:`DemoKeywords` behind the dispatcher.
    """

    def __init__(self, config, reactor, tick=1.0, heartbeatInterval=1.0,
                 filterMove=FILTER_MOVE):
        super().__init__()
        cfg = _config.load(config)
        self.reactor = reactor
        self.router = None
        #: True when another router already held the configured address
        self.sharedRouter = False
        if cfg.get("zmq-router", "enable"):
            self.router = RouterService(cfg, reactor=reactor)
            self.router.setServiceParent(self)
        self.demoKeywords = DemoKeywords(reactor, tick=tick, filterMove=filterMove)
        self.dispatcher = DispatcherService(
            SERVICE, cfg, keywords=self.demoKeywords.all(), reactor=reactor,
            heartbeatInterval=heartbeatInterval,
        )
        self.dispatcher.setServiceParent(self)

    def startService(self):
        service.Service.startService(self)
        if self.router is not None:
            self._startRouter()
        self.dispatcher.startService()

    def _startRouter(self):
        try:
            self.router.startService()
        except AddressInUse:
            # Someone runs a router already (``twistd cauldron-router``, say):
            # register with it rather than fail.  If it is not a router, the
            # dispatcher's lease request fails and whenReady() says so.
            self.sharedRouter = True
            log.info("a router already listens at {address}: the demo registers with it",
                     address=self.router.config.routerAddress())
            return
        configured = self.dispatcher.config
        if configured.get("zmq-router", "port") == 0:
            self.dispatcher.config = configured.replace(
                "zmq-router", "port", portOf(self.router.address)
            )

    def stopService(self):
        service.Service.stopService(self)
        d = defer.succeed(None)
        if self.dispatcher.running:
            d = defer.maybeDeferred(self.dispatcher.stopService)
        if self.router is not None and self.router.running:
            d.addBoth(lambda _: self.router.stopService())
        return d

    def whenReady(self):
        """Fires with the dispatcher's ``(dispatchAddress, broadcastAddress)`` once it
        serves, or fails with the reason it could not start."""
        return self.dispatcher.whenReady()


def makeDemoService(config, reactor, tick=1.0, heartbeatInterval=1.0):
    """The demo as one service to start: a router (unless direct mode) and the
    ``demo`` dispatcher.

    :param config: a path, a loaded :class:`cauldron.config.Config` or None
        (then ``$CAULDRON_CONFIG``, else defaults).
    :param reactor: the reactor everything runs on.
    :param tick: seconds between the simulated sensor's readings (and COUNT's ticks).
    :returns: a :class:`DemoService` (a ``MultiService``).
    """
    return DemoService(config, reactor, tick=tick, heartbeatInterval=heartbeatInterval)


def demoBanner(dispatcher):
    """What the demo tells its user once ready: where it listens, what to type next.

    ``dispatcher`` is the demo's :class:`~cauldron.dispatcher.DispatcherService`
    (or the :class:`DemoService`).  When the configuration came from a file,
    every suggested command carries ``-c FILE``, since a client must read the
    same file to find the demo.
    """
    dispatcher = getattr(dispatcher, "dispatcher", dispatcher)
    cfg = dispatcher.config
    routed = cfg.get("zmq-router", "enable")
    option = "" if cfg.path is None else " -c %s" % (shlex.quote(cfg.path),)
    names = dispatcher.keywords()
    lines = [
        "cauldron demo: service %r serves %d keywords: %s"
        % (dispatcher.name, len(names), " ".join(names)),
    ]
    if routed:
        lines.append("  router     %s" % (cfg.routerAddress(),))
    else:
        lines.append("  router     none (direct mode: [zmq-router] enable = no)")
    lines.append("  dispatch   %s" % (dispatcher.dispatchAddress or "(not bound yet)",))
    lines.append("  broadcast  %s" % (dispatcher.broadcastAddress or "(not bound yet)",))
    note = _fileMismatch(dispatcher, routed)
    if note:
        lines.append("  note: " + note)
    name = dispatcher.name
    lines += [
        "Try, in another terminal:",
        "  cauldron show%s -s %s TEMP MODE" % (option, name),
        "  cauldron monitor%s -s %s TEMP" % (option, name),
        "  cauldron modify%s -s %s MODE=ON" % (option, name),
        "  cauldron describe%s -s %s" % (option, name),
    ]
    if routed:
        lines.append("  cauldron services%s" % (option,))
    lines.append("Stop with Ctrl-C.")
    return "\n".join(lines)


def _fileMismatch(dispatcher, routed):
    """Why ``-c FILE`` would not reach this demo (ephemeral ports), or None."""
    path = dispatcher.config.path
    if path is None:
        return None
    try:
        onFile = _config.load(path)
    except CauldronError:
        return None
    if routed:
        if onFile.get("zmq-router", "port") == 0:
            port = portOf(dispatcher.config.routerAddress())
            return ("%s asks for an ephemeral router port (port = 0); clients need a "
                    "configuration naming port = %d" % (path, port))
        return None
    ports = (onFile.get("zmq", "dispatch-port"), onFile.get("zmq", "broadcast-port"))
    if 0 in ports and dispatcher.dispatchAddress and dispatcher.broadcastAddress:
        return ("%s asks for ephemeral ports (0); clients need a configuration naming "
                "dispatch-port = %d and broadcast-port = %d"
                % (path, portOf(dispatcher.dispatchAddress), portOf(dispatcher.broadcastAddress)))
    return None
