"""A dispatcher embedded in your own Twisted application.

Run it with (``-n``: stay in the foreground, log to stdout)::

    CAULDRON_CONFIG=cauldron.ini twistd -n -y docs/examples/dispatcher.tac

It serves the service ``example``: a lamp that takes a moment to switch
(a write hook returning a Deferred), a brightness rounded before it is
written, and an uptime counter refreshed every second.
"""

from twisted.application import service
from twisted.internet import reactor, task

from cauldron import config, keywords
from cauldron.dispatcher import DispatcherService

# config.load() with no path reads $CAULDRON_CONFIG, else the built-in defaults.
cfg = config.load()
started = reactor.seconds()


def switchLamp(on):
    """The write hook: pretend the relay takes 0.2 s.

    Returning a Deferred makes the dispatcher wait for it; the client's write
    completes only then (and later writes to LAMP queue behind it).
    """
    return task.deferLater(reactor, 0.2, lambda: None)


def roundBrightness(percent):
    """prewrite returns the value actually written: here, one decimal."""
    return round(percent, 1)


def readUptime():
    """The read hook: called for client reads and, with period(), every second."""
    return int(reactor.seconds() - started)


lamp = keywords.Boolean("LAMP", initial=False, write=switchLamp,
                        description="Lamp on (1) or off (0); switching takes 0.2 s")
brightness = keywords.Double("BRIGHTNESS", units="%", range=(0.0, 100.0), initial=50.0,
                             prewrite=roundBrightness, description="Lamp brightness")
uptime = keywords.Integer("UPTIME", units="s", initial=0, readonly=True, read=readUptime,
                          description="Seconds since the dispatcher started")
uptime.period(1.0)
note = keywords.String("NOTE", initial="", description="Free text")

# Your application's own services go into the same MultiService.
application = service.Application("example-dispatcher")
services = service.MultiService()
services.setServiceParent(application)

dispatcher = DispatcherService(
    "example", config=cfg, keywords=[lamp, brightness, uptime, note], reactor=reactor
)
dispatcher.setServiceParent(services)
