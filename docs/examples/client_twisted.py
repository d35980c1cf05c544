"""A client inside a Twisted program: monitor a keyword, write it, wait, exit.

Run it against ``dispatcher.tac`` (same configuration)::

    CAULDRON_CONFIG=cauldron.ini python docs/examples/client_twisted.py
"""

from twisted.internet import defer, task

from cauldron.client import ClientService


async def main(reactor):
    # config=None: $CAULDRON_CONFIG, else defaults.  Every request below has a
    # deadline of `timeout` seconds and fails with a cauldron.errors class.
    client = ClientService(config=None, reactor=reactor, timeout=5.0)
    client.startService()
    try:
        example = await client.service("example")
        brightness = example["BRIGHTNESS"]

        # A monitor gets the current value first, then every change, in order.
        subscription = await brightness.monitor(
            lambda value: print("monitor: BRIGHTNESS = %s" % (value.ascii,))
        )

        # A write completes once the dispatcher ran every hook; it fires with
        # the new ascii value.  The dispatcher rounds it (prewrite hook).
        written = await brightness.write(75.04)
        print("wrote BRIGHTNESS = %s" % (written,))

        # waitFor fires True once the predicate holds, False at the timeout.
        seen = await brightness.waitFor(lambda value: value.binary == 75.0, timeout=5.0)
        print("waitFor BRIGHTNESS == 75.0: %s" % (seen,))
        subscription.stop()

        # LAMP's write hook returns a Deferred: this waits for it (0.2 s).
        print("wrote LAMP = %s" % (await example["LAMP"].write(True),))
    finally:
        await client.stopService()


if __name__ == "__main__":
    task.react(lambda reactor: defer.ensureDeferred(main(reactor)))
