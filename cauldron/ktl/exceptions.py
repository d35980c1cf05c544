"""KTL Python's exception names, and the KTL Python names cauldron does not provide.

This module is ``ktl.Exceptions``, for ``from ktl.Exceptions import ktlError``.
"""

from cauldron.errors import CauldronError, CauldronTimeout, KeywordError

# what ``from ktl.Exceptions import *`` gives: KTL Python's exception names
__all__ = ["NoValue", "TimeoutException", "ktlError"]

#: where the docs list every KTL Python name and what cauldron does with it
COMING_FROM_KTL = '"Coming from KTL" in docs/ktl.rst'


# -- KTL's exception names: cauldron's own classes, so both catch the same errors

#: KTL Python's base error: every error cauldron raises on purpose
ktlError = CauldronError
#: KTL Python's timeout: a :class:`TimeoutError` and a :data:`ktlError` too
TimeoutException = CauldronTimeout


class NoValue(KeywordError, ValueError):
    """``kw["ascii"]`` (or ``"binary"``) of a keyword no value has reached yet.

    A :data:`ktlError`, as in KTL Python: read() or monitor() first.
    """


class Unsupported(AttributeError):
    """A KTL Python name cauldron does not provide; the message says why and where to look."""


# -- KTL Python names cauldron does not provide ------------------------------------

#: module-level KTL Python names with no equivalent here: name -> why
_UNSUPPORTED = {
    "ktlc": "it is KTL Python's wrapper of the KTL C library; cauldron speaks ZeroMQ and "
            "has no C layer",
    "NoHeartbeatsError": "cauldron always watches the dispatcher's own heartbeat, so "
                         "isAlive() never lacks one",
}
#: the same for Keyword attributes
_UNSUPPORTED_KEYWORD = {
    "ktlc": _UNSUPPORTED["ktlc"],
}


def _unsupportedMessage(name, why):
    return f"ktl.{name} is not supported by cauldron: {why} (see {COMING_FROM_KTL})"

