"""A plain, blocking script: KTL style, no reactor in sight.

Run it against ``dispatcher.tac`` (same configuration)::

    CAULDRON_CONFIG=cauldron.ini python docs/examples/blocking_script.py
"""

from cauldron import ktl

# The configuration is $CAULDRON_CONFIG (or pass config="file.ini").
example = ktl.Service("example")

# read() returns the ascii value; binary=True the native one.
print("UPTIME = %s s" % (example["UPTIME"].read(),))
print("LAMP = %s" % (ktl.read("example", "LAMP"),))

# write() returns once the dispatcher completed the write (LAMP takes 0.2 s).
print("wrote LAMP = %s" % (example["LAMP"].write(False),))
print("wrote BRIGHTNESS = %s" % (ktl.write("example", "BRIGHTNESS", 25),))

# waitFor takes an expression over $service.KEYWORD operands; False at the timeout.
print("waitFor: %s" % (ktl.waitFor("$example.BRIGHTNESS == 25 and not $example.LAMP",
                                   timeout=5),))

# Errors are cauldron.errors classes: a bad value is also a ValueError.
try:
    example["BRIGHTNESS"].write(500)
except ValueError as e:
    print("refused: %s" % (e,))
