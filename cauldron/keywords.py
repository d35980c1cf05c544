"""Typed keywords: conversion, validation, value state and hook defaults.

This is the pure core shared by dispatchers and clients (one type registry for
both sides, unlike the original): no I/O, no reactor, no sockets.  A dispatcher
drives :meth:`Basic.set` and the hooks; a client rebuilds keywords from
:meth:`Basic.describe` with :func:`fromDescription` to convert values locally.

Every rejected value or bad piece of metadata raises
:class:`cauldron.errors.BadValue` with a message naming the keyword.
"""

import collections.abc
import decimal
import math
import re
import time

from cauldron.errors import BadValue

__all__ = [
    "Basic",
    "String",
    "Boolean",
    "Integer",
    "Double",
    "Float",
    "Enumerated",
    "Mask",
    "IntegerArray",
    "DoubleArray",
    "TYPES",
    "typeFor",
    "fromDescription",
    "INT32_MIN",
    "INT32_MAX",
    "INT64_MIN",
    "INT64_MAX",
    "MASK_BITS",
    "MAX_TEXT_BYTES",
    "MAX_ARRAY_LENGTH",
    "MAX_NAME_BYTES",
]

INT32_MIN = -(2**31)
INT32_MAX = 2**31 - 1
#: an integer value (and an explicit integer range) must fit a signed 64-bit int
INT64_MIN = -(2**63)
INT64_MAX = 2**63 - 1
#: the longest text value (basic, string), in UTF-8 bytes: a message is capped
#: at 1 MiB and a reply carries both the binary and the ascii form
MAX_TEXT_BYTES = 256 * 1024
#: the most elements of an array value
MAX_ARRAY_LENGTH = 16384
#: the longest keyword name, in UTF-8 bytes: it bounds what a subscription
#: to a keyword's broadcast topic may cost a dispatcher
MAX_NAME_BYTES = 128
#: the longest text given for a non-text value (a number, or an array's text)
_MAX_INPUT_CHARS = 64 * MAX_ARRAY_LENGTH
#: how much of a rejected value a message shows
_SHOWN_CHARS = 80
#: a mask holds at most this many bits (unsigned), named or not
MASK_BITS = 64
MASK_MAX = 2**MASK_BITS - 1

_TRUE = frozenset({"1", "true", "t", "yes", "on"})
_FALSE = frozenset({"0", "false", "f", "no", "off"})
_CONTAINERS = (list, tuple, dict, set, frozenset)
_ARRAY_SPLIT = re.compile(r"\s*,\s*|\s+")
_MASK_SPLIT = re.compile(r"[\s,|]+")
_ASCII_SPACE = " \t\n\r\f\v"
# Numeric text is ASCII only: int() and float() also take "1_000" and
# non-ASCII digits ("\u0663"), which KTL peers would not read back.
_INTEGER_TEXT = re.compile(r"[+-]?(?:[0-9]+|0[xX][0-9a-fA-F]+|0[oO][0-7]+|0[bB][01]+)")
_DECIMAL_TEXT = re.compile(r"[+-]?(?:[0-9]+\.?[0-9]*|\.[0-9]+)(?:[eE][+-]?[0-9]+)?")
_SPECIAL_TEXT = re.compile(r"[+-]?(?:inf|infinity|nan)", re.IGNORECASE)
_HOOKS = ("check", "prewrite", "write", "postwrite", "preread", "read", "postread")


class _Reject(Exception):
    """Internal: why a value was refused, before the keyword name is added."""


def _shown(value):
    """``repr(value)``, cut to about 80 characters for an error message."""
    if isinstance(value, int) and not isinstance(value, bool) and value.bit_length() > 256:
        return f"<an int of {value.bit_length()} bits>"  # str() of a huge int is slow
    if isinstance(value, (str, bytes)) and len(value) > 4 * _SHOWN_CHARS:
        value = value[: 4 * _SHOWN_CHARS]  # repr of a huge value is wasted work
    elif isinstance(value, (list, tuple)) and len(value) > _SHOWN_CHARS:
        value = type(value)(value[:_SHOWN_CHARS])
    try:
        text = repr(value)
    except Exception:
        text = f"<{type(value).__name__}>"
    if len(text) > _SHOWN_CHARS:
        text = text[: _SHOWN_CHARS - 1] + "\u2026"
    return text


def _tooLong(value, size):
    return f"{_shown(value)} is too long: {size} UTF-8 bytes, at most {MAX_TEXT_BYTES}"


def _fitText(text):
    """``text`` if it fits the wire: valid UTF-8 of at most MAX_TEXT_BYTES bytes."""
    if len(text) > MAX_TEXT_BYTES:  # each character is at least one byte
        raise _Reject(_tooLong(text, f"at least {len(text)}"))
    try:
        size = len(text.encode("utf-8"))
    except UnicodeEncodeError as e:
        raise _Reject(
            f"{_shown(text)} cannot be encoded as UTF-8 "
            f"({e.object[e.start:e.end]!r} at {e.start}: {e.reason})"
        ) from None
    if size > MAX_TEXT_BYTES:
        raise _Reject(_tooLong(text, size))
    return text


def _asciiText(value):
    """``value`` stripped of ASCII whitespace; _Reject if it is absurdly long."""
    if len(value) > _MAX_INPUT_CHARS:
        raise _Reject(f"{_shown(value)} is too long ({len(value)} characters)")
    return value.strip(_ASCII_SPACE)


# -- scalar parsers shared by the types ------------------------------------


def _isInt(value):
    return isinstance(value, int) and not isinstance(value, bool)


def _parseInteger(value, low, high, allowBool=True):
    """Return an int within [low, high] or raise _Reject.

    Bounds are checked before any big conversion, so hostile text such as
    '1e999999999' cannot make us build a huge integer.
    """
    if isinstance(value, bool):
        if not allowBool:
            raise _Reject(f"{_shown(value)} is a boolean, not an integer")
        return _bounded(int(value), low, high)
    if isinstance(value, int):
        return _bounded(value, low, high)
    if isinstance(value, float):
        if not math.isfinite(value):
            raise _Reject(f"{_shown(value)} is not a finite number")
        if not value.is_integer():
            raise _Reject(f"{_shown(value)} is not an integer")
        _bounded(value, low, high)
        return int(value)
    if isinstance(value, str):
        text = _asciiText(value)
        number = _integerText(text)
        if number is not None:
            return _bounded(number, low, high)
        if _SPECIAL_TEXT.fullmatch(text):
            raise _Reject(f"{_shown(value)} is not a finite number")
        if not _DECIMAL_TEXT.fullmatch(text):
            raise _Reject(f"{_shown(value)} is not a number")
        if not math.isfinite(float(text)):  # "1e999": no peer reads it back as a number
            raise _Reject(f"{_shown(value)} is not a finite number")
        number = decimal.Decimal(text)  # "4.0", "1e3"; bounded before int()
        if number != number.to_integral_value():
            raise _Reject(f"{_shown(value)} is not an integer")
        _bounded(number, low, high, shown=_Shown(value))
        return int(number)
    raise _Reject(f"{_shown(value)} is not an integer")


def _parseDouble(value, low, high):
    """Return a finite float within [low, high] or raise _Reject."""
    if isinstance(value, bool):
        raise _Reject(f"{_shown(value)} is a boolean, not a number")
    if isinstance(value, (int, float)):
        try:
            number = float(value)
        except OverflowError:
            raise _Reject(f"{_shown(value)} is too large for a double") from None
    elif isinstance(value, str):
        text = _asciiText(value)
        if not (_DECIMAL_TEXT.fullmatch(text) or _SPECIAL_TEXT.fullmatch(text)):
            raise _Reject(f"{_shown(value)} is not a number")
        number = float(text)
    else:
        raise _Reject(f"{_shown(value)} is not a number")
    if not math.isfinite(number):
        raise _Reject(f"{_shown(value)} is not a finite number")
    return _bounded(number, low, high)


class _Shown:
    """Shows a value cut short in a message (see :func:`_shown`)."""

    def __init__(self, value):
        self.value = value

    def __repr__(self):
        return _shown(self.value)


def _bounded(number, low, high, shown=None):
    if low is not None and number < low:
        raise _Reject(f"{shown or _Shown(number)!r} is below the minimum {low!r}")
    if high is not None and number > high:
        raise _Reject(f"{shown or _Shown(number)!r} is above the maximum {high!r}")
    return number


def _parseBoolean(value):
    if isinstance(value, bool):
        return value
    if _isInt(value) and value in (0, 1):
        return bool(value)
    if isinstance(value, str):
        text = value.strip().lower()
        if text in _TRUE:
            return True
        if text in _FALSE:
            return False
    raise _Reject(f"{_shown(value)} is not a boolean (use 1/0, true/false, yes/no, on/off)")


def _parseMetaInt(value):
    """An integer given in metadata: an int or an integer string (TOML keys)."""
    if _isInt(value):
        number = value
    elif isinstance(value, str) and re.fullmatch(r"[+-]?[0-9]+", value.strip(_ASCII_SPACE)):
        number = int(value.strip(_ASCII_SPACE), 10)
    else:
        raise _Reject(f"{_shown(value)} is not an integer")
    if not INT64_MIN <= number <= INT64_MAX:
        raise _Reject(f"{_shown(value)} does not fit in a signed 64-bit integer")
    return number


# -- the types --------------------------------------------------------------


class Basic:
    """A keyword whose value is any text; the base of every type.

    Hooks given to the constructor as callables replace the method on this
    instance and are called without ``self``.
    """

    typeName = "basic"
    #: the KTL type name a client shows for it (``kw["type"]`` in :mod:`cauldron.ktl`)
    ktlType = "KTL_STRING"
    #: other KTL type names that mean this type
    ktlAliases = ()
    #: whether a ``range`` makes sense for this type
    hasRange = False
    #: the clock used for timestamps; replace on an instance in tests
    clock = staticmethod(time.time)
    #: nested set() calls one outer set() may queue before we call it a loop
    reentryLimit = 100

    def __init__(
        self,
        name,
        *,
        units="",
        description="",
        range=None,
        format=None,
        readonly=False,
        writeonly=False,
        initial=None,
        check=None,
        prewrite=None,
        write=None,
        postwrite=None,
        preread=None,
        read=None,
        postread=None,
        writers=None,
        readers=None,
        persist=False,
    ):
        self.name = _checkName(name)
        self.writers = self._setupPatterns("writers", writers)
        self.readers = self._setupPatterns("readers", readers)
        self.units = self._metaString("units", units)
        self.description = self._metaString("description", description)
        for field, flag in (("readonly", readonly), ("writeonly", writeonly),
                            ("persist", persist)):
            if not isinstance(flag, bool):
                raise self._badMeta(field, f"{flag!r} is not a boolean")
        if readonly and writeonly:
            raise self._badMeta("readonly", "a keyword cannot be both readonly and writeonly")
        self.readonly = readonly
        self.writeonly = writeonly
        #: whether a dispatcher keeps the value across restarts (a state file;
        #: see :mod:`cauldron.statefile`): a policy of the owner, not described
        self.persist = persist
        self._setupExtra()
        self.range = self._setupRange(range)
        self.format = self._setupFormat(format)
        hooks = dict(
            check=check,
            prewrite=prewrite,
            write=write,
            postwrite=postwrite,
            preread=preread,
            read=read,
            postread=postread,
        )
        for hook, fn in hooks.items():
            if fn is None:
                continue
            if not callable(fn):
                raise self._badMeta(hook, f"{fn!r} is not callable")
            setattr(self, hook, fn)
        if initial is not None:
            try:
                initial = self._convert(initial)
            except _Reject as e:
                raise BadValue(f"{self.name}: bad initial value: {e}") from None
        self.initial = initial

        self.value = None
        self._asciiOf = None
        self._asciiText = None
        self.sequence = 0
        self.timestamp = None
        self.service = None
        self.periodSeconds = None
        self.listenerErrors = 0
        self.lastListenerError = None
        self._listeners = []
        self._publishing = False
        self._pending = []
        self._nested = 0

    # -- metadata helpers

    def _badMeta(self, field, why):
        return BadValue(f"{self.name}: bad {field}: {why}")

    def _setupPatterns(self, field, patterns):
        """Key names (or glob patterns) allowed to write or read; None: the service's default."""
        if patterns is None:
            return None
        if isinstance(patterns, str) or not all(
            isinstance(p, str) and p.strip() for p in patterns
        ):
            raise self._badMeta(field, f"{patterns!r} is not a list of key names or patterns")
        return tuple(p.strip() for p in patterns)

    def _metaString(self, field, value):
        if not isinstance(value, str):
            raise self._badMeta(field, f"{value!r} is not a string")
        return value

    def _setupExtra(self):
        """Subclasses validate their own metadata (enumerators, bits) here."""

    def _setupRange(self, spec):
        if spec is None:
            return self._defaultRange()
        if not self.hasRange:
            raise self._badMeta("range", f"a {self.typeName} keyword has no range")
        if isinstance(spec, (str, bytes)) or not isinstance(spec, collections.abc.Sequence):
            raise self._badMeta("range", f"{spec!r} is not a (min, max) pair")
        if len(spec) != 2:
            raise self._badMeta("range", f"{spec!r} is not a (min, max) pair")
        low, high = (self._rangeBound(b) for b in spec)
        low, high = self._closeRange(low, high)
        if low is not None and high is not None and low > high:
            raise self._badMeta("range", f"minimum {low!r} is above maximum {high!r}")
        return (low, high)

    def _defaultRange(self):
        return None

    def _closeRange(self, low, high):
        """Fill the open sides of a range; the default leaves them open."""
        return low, high

    def _rangeBound(self, bound):
        return bound

    def _setupFormat(self, fmt):
        if fmt is None:
            return None
        if not isinstance(fmt, str):
            raise self._badMeta("format", f"{fmt!r} is not a string")
        try:
            result = fmt % self._formatSample()
        except (TypeError, ValueError, KeyError) as e:
            raise self._badMeta("format", f"{fmt!r} cannot format a {self.typeName}: {e}") from None
        if not isinstance(result, str):
            raise self._badMeta("format", f"{fmt!r} does not give text")
        return fmt

    def _formatSample(self):
        return ""

    # -- conversion

    def _convert(self, value):
        """Turn any accepted input into the binary value, or raise _Reject."""
        if value is None:
            raise _Reject("None is not a value")
        if isinstance(value, str):
            return _fitText(value)
        if isinstance(value, bytes):
            if len(value) > MAX_TEXT_BYTES:
                raise _Reject(_tooLong(value, len(value)))
            try:
                return value.decode("utf-8")
            except UnicodeDecodeError:
                raise _Reject(f"{_shown(value)} is not UTF-8 text") from None
        if isinstance(value, _CONTAINERS):
            raise _Reject(f"{_shown(value)} is not a scalar")
        try:
            text = str(value)
        except ValueError as e:  # e.g. an int too large for str()
            raise _Reject(f"{type(value).__name__} value has no text form: {e}") from None
        return _fitText(text)

    def _ascii(self, binary):
        """The default ascii form of a valid binary value."""
        return binary

    def toBinary(self, value):
        """Validate ``value`` and return the native (binary) value."""
        try:
            return self._convert(value)
        except _Reject as e:
            raise BadValue(f"{self.name}: {e}") from None

    def fromAscii(self, text):
        """Same as :meth:`toBinary`; named for symmetry with :meth:`toAscii`."""
        return self.toBinary(text)

    def toAscii(self, value):
        """The ascii (text) form; accepts anything :meth:`toBinary` accepts.

        ``None`` (no value) gives ``""``.
        """
        if value is None:
            return ""
        return self._formatted(self.toBinary(value))

    def _formatted(self, binary):
        """The ascii form of a binary value already validated."""
        if self.format is not None:
            return self.format % binary
        return self._ascii(binary)

    @property
    def ascii(self):
        """The current value as text (``""`` when there is none).

        Cached per value: formatting on every read and broadcast is wasted
        work, and the stored value was validated when it was set.
        """
        value = self.value
        if self._asciiOf is not value or self._asciiText is None:
            self._asciiText = "" if value is None else self._formatted(value)
            self._asciiOf = value
        return self._asciiText

    # -- value state

    def set(self, value, force=False):
        """Store and publish a new value; return True if it was published.

        Nothing is stored when conversion or :meth:`check` rejects the value.
        A set() from inside a listener is validated at once but applied after
        the current listeners ran, so listeners never recurse.
        """
        if value is self.value and value is not None and not force and not self._publishing:
            return False  # the stored value itself (a default read): nothing changes
        binary = self.toBinary(value)
        self.check(binary)
        if self._publishing:
            latest = self._pending[-1] if self._pending else self.value
            if not force and binary == latest:
                return False
            self._nested += 1
            if self._nested > self.reentryLimit:
                self._listenerFailed(
                    RuntimeError(f"{self.name}: more than {self.reentryLimit} nested set() calls")
                )
                return False
            self._pending.append(binary)
            return True
        if not force and binary == self.value:
            return False
        self._publishing = True
        self._nested = 0
        try:
            self._publish(binary)
            while self._pending:
                self._publish(self._pending.pop(0))
        finally:
            self._publishing = False
            self._pending = []
        return True

    def _publish(self, binary):
        self.value = binary
        self.sequence += 1
        self.timestamp = self.clock()
        for listener in list(self._listeners):
            try:
                listener(self)
            except Exception as e:
                self._listenerFailed(e)

    def _listenerFailed(self, error):
        self.listenerErrors += 1
        self.lastListenerError = error

    def addListener(self, listener):
        """Call ``listener(keyword)`` after every published change (held strongly)."""
        if not callable(listener):
            raise TypeError(f"{listener!r} is not callable")
        self._listeners.append(listener)

    def removeListener(self, listener):
        """Stop calling ``listener``; unknown listeners are ignored."""
        try:
            self._listeners.remove(listener)
        except ValueError:
            pass

    def begin(self):
        """Publish the initial value, if any and no value was set yet."""
        if self.initial is not None and self.value is None:
            return self.set(self.initial)
        return False

    def period(self, seconds):
        """Ask for a periodic read every ``seconds``.

        The period is stored; the dispatcher applies stored periods when it
        attaches, or at once if it is already attached.
        """
        if (
            isinstance(seconds, bool)
            or not isinstance(seconds, (int, float))
            or not math.isfinite(seconds)
            or seconds <= 0
        ):
            raise BadValue(f"{self.name}: bad period: {seconds!r} is not a positive number")
        self.periodSeconds = seconds
        if self.service is not None:
            self.service.schedulePeriod(self, seconds)

    # -- hooks (defaults; the dispatcher wraps them to accept Deferreds)

    def check(self, value):
        """Reject a converted value by raising; the range was already checked."""
        return None

    def prewrite(self, value):
        """Adjust a value before it is written; returns the value to write."""
        return value

    def write(self, value):
        """Push the value to hardware; the default does nothing."""
        return None

    def postwrite(self, value):
        """After a successful write: publish the value."""
        return self.set(value)

    def preread(self):
        """Prepare a read; the default does nothing."""
        return None

    def read(self):
        """Return a fresh value; the default is the current one."""
        return self.value

    def postread(self, value):
        """After a read: publish the value if there is one."""
        if value is not None:
            return self.set(value)
        return None

    # -- description

    def describe(self):
        """Plain, JSON-safe metadata for the wire (see :func:`fromDescription`)."""
        return {
            "name": self.name,
            "type": self.typeName,
            "units": self.units,
            "description": self.description,
            "range": None if self.range is None else list(self.range),
            "format": self.format,
            "readonly": self.readonly,
            "writeonly": self.writeonly,
            "initial": list(self.initial) if isinstance(self.initial, list) else self.initial,
        }

    def __repr__(self):
        units = f" {self.units}" if self.units else ""
        return f"<{type(self).__name__} {self.name}={self.value!r}{units} seq={self.sequence}>"


class String(Basic):
    """A text keyword; same rules as :class:`Basic`."""

    typeName = "string"


class Boolean(Basic):
    """True/False; ascii ``"1"``/``"0"`` as KTL does."""

    typeName = "boolean"
    ktlType = "KTL_BOOLEAN"

    def _convert(self, value):
        return _parseBoolean(value)

    def _ascii(self, binary):
        return "1" if binary else "0"

    def _formatSample(self):
        return False


class Integer(Basic):
    """An integer, within inclusive int32 bounds unless a range says otherwise."""

    typeName = "integer"
    ktlType = "KTL_INT"
    ktlAliases = ("KTL_INT64",)
    hasRange = True

    def _defaultRange(self):
        return (INT32_MIN, INT32_MAX)

    def _closeRange(self, low, high):
        # An open side keeps the int32 bound, as KTL integers are int32.
        return (INT32_MIN if low is None else low, INT32_MAX if high is None else high)

    def _rangeBound(self, bound):
        if bound is None:
            return None
        try:
            number = _parseInteger(bound, None, None, allowBool=False)
        except _Reject as e:
            raise self._badMeta("range", str(e)) from None
        if not INT64_MIN <= number <= INT64_MAX:
            raise self._badMeta(
                "range", f"{_shown(bound)} does not fit in a signed 64-bit integer"
            )
        return number

    def _convert(self, value):
        return _parseInteger(value, *self.range)

    def _ascii(self, binary):
        return str(binary)

    def _formatSample(self):
        return 0


class Double(Basic):
    """A finite float; NaN and infinities are rejected (JSON cannot carry them)."""

    typeName = "double"
    ktlType = "KTL_DOUBLE"
    ktlAliases = ("KTL_FLOAT",)
    hasRange = True

    def _rangeBound(self, bound):
        if bound is None:
            return None
        try:
            return _parseDouble(bound, None, None)
        except _Reject as e:
            raise self._badMeta("range", str(e)) from None

    def _convert(self, value):
        low, high = self.range or (None, None)
        return _parseDouble(value, low, high)

    def _ascii(self, binary):
        return repr(binary)

    def _formatSample(self):
        return 0.0


Float = Double


class Enumerated(Basic):
    """One of a set of named numbers; binary is the number, ascii the name."""

    typeName = "enumerated"
    ktlType = "KTL_ENUM"

    def __init__(self, name, *, enumerators=None, **kwargs):
        self._enumSpec = enumerators
        super().__init__(name, **kwargs)

    def _setupExtra(self):
        spec = self._enumSpec
        del self._enumSpec
        if spec is None:
            raise self._badMeta("enumerators", "an enumerated keyword needs enumerators")
        pairs = _numberedNames(self, "enumerators", spec)
        if not pairs:
            raise self._badMeta("enumerators", "the list is empty")
        #: number -> name, in number order
        self.enumerators = dict(sorted(pairs))
        self._byName = {n.lower(): i for i, n in self.enumerators.items()}
        self._low, self._high = min(self.enumerators), max(self.enumerators)

    def _convert(self, value):
        if isinstance(value, str):
            number = self._byName.get(value.strip().lower())
            if number is not None:
                return number
        if isinstance(value, (str, int, float)) and not isinstance(value, bool):
            try:
                number = _parseInteger(value, self._low, self._high)
            except _Reject:
                number = None
            if number in self.enumerators:
                return number
        valid = ", ".join(f"{i}={n}" for i, n in self.enumerators.items())
        raise _Reject(f"{_shown(value)} is not a valid enumerator (valid: {valid})")

    def _ascii(self, binary):
        return self.enumerators[binary]

    def _formatSample(self):
        return next(iter(self.enumerators))

    def describe(self):
        d = super().describe()
        d["enumerators"] = {str(i): n for i, n in self.enumerators.items()}
        return d


class Mask(Basic):
    """A bit mask; binary is the int, ascii the set bit names (or the number)."""

    typeName = "mask"
    ktlType = "KTL_MASK"
    ktlAliases = ("KTL_ENUMM",)

    def __init__(self, name, *, bits=None, **kwargs):
        self._bitSpec = bits
        super().__init__(name, **kwargs)

    def _setupExtra(self):
        spec = self._bitSpec
        del self._bitSpec
        #: bit number -> name, in bit order; empty when bits are unnamed
        self.bits = {}
        if spec is None:
            self._byName = {}
            self._allBits = MASK_MAX
            return
        pairs = _numberedNames(self, "bits", spec)
        if not pairs:
            raise self._badMeta("bits", "the list is empty (omit bits for an unnamed mask)")
        for bit, bitName in pairs:
            if not 0 <= bit < MASK_BITS:
                raise self._badMeta("bits", f"bit {bit} is outside 0..{MASK_BITS - 1}")
            if _MASK_SPLIT.search(bitName):
                raise self._badMeta("bits", f"name {bitName!r} contains a separator")
            if _integerText(bitName):
                raise self._badMeta("bits", f"name {bitName!r} looks like a number")
            self.bits[bit] = bitName
        self.bits = dict(sorted(self.bits.items()))
        self._byName = {n.lower(): b for b, n in self.bits.items()}
        self._allBits = sum(1 << b for b in self.bits)

    def _convert(self, value):
        if _isInt(value):
            return self._checkBits(value)
        if isinstance(value, str):
            text = _asciiText(value)
            if not text:
                return 0
            if text.lower() not in self._byName:
                number = _integerText(text)
                if number is not None:
                    return self._checkBits(number)
            return self._namesToMask(_MASK_SPLIT.split(text), value)
        if isinstance(value, (list, tuple, set, frozenset)):
            if len(value) > MAX_ARRAY_LENGTH:
                raise _Reject(f"{_shown(value)}: more than {MAX_ARRAY_LENGTH} bit names")
            for item in value:
                if not isinstance(item, str):
                    raise _Reject(f"{_shown(value)}: {_shown(item)} is not a bit name")
            return self._namesToMask(value, value)
        raise _Reject(f"{_shown(value)} is not a mask (an integer or bit names)")

    def _namesToMask(self, names, original):
        mask = 0
        named = False
        for bitName in names:
            key = bitName.strip().lower()
            if not key:
                continue
            named = True
            if key not in self._byName:
                valid = ", ".join(self.bits.values()) or "none defined"
                raise _Reject(
                    f"{_shown(original)}: {_shown(bitName)} is not a bit name (valid: {valid})"
                )
            mask |= 1 << self._byName[key]
        if not named and original:
            # Only "" and [] mean 0: "," or " | " is more likely a mistake.
            raise _Reject(f"{_shown(original)} has separators but no bit names")
        return mask

    def _checkBits(self, number):
        if number < 0:
            raise _Reject(f"{_shown(number)} is negative")
        if number & ~self._allBits:
            if not self.bits:
                raise _Reject(f"{_shown(number)} does not fit in {MASK_BITS} bits")
            raise _Reject(f"{_shown(number)} sets undefined bits {number & ~self._allBits:#x}")
        return number

    def _ascii(self, binary):
        if not self.bits or binary == 0:
            return str(binary)
        return ", ".join(n for b, n in self.bits.items() if binary & (1 << b))

    def _formatSample(self):
        return 0

    def describe(self):
        d = super().describe()
        d["bits"] = {str(b): n for b, n in self.bits.items()}
        return d


class _Array(Basic):
    """A list of numbers; each element follows the scalar type's rules."""

    hasRange = True
    _scalar = None

    def _defaultRange(self):
        return self._scalar._defaultRange(self)

    def _closeRange(self, low, high):
        return self._scalar._closeRange(self, low, high)

    def _rangeBound(self, bound):
        return self._scalar._rangeBound(self, bound)

    def _convert(self, value):
        if isinstance(value, str):
            text = _asciiText(value)
            items = _ARRAY_SPLIT.split(text, maxsplit=MAX_ARRAY_LENGTH) if text else []
        elif isinstance(value, collections.abc.Sequence) and not isinstance(value, bytes):
            items = value
        else:
            raise _Reject(f"{_shown(value)} is not a sequence of numbers")
        if len(items) > MAX_ARRAY_LENGTH:
            raise _Reject(
                f"{_shown(value)}: more than {MAX_ARRAY_LENGTH} elements"
                + (f" ({len(items)})" if not isinstance(value, str) else "")
            )
        items = list(items)
        result = []
        for index, item in enumerate(items):
            if isinstance(item, str) and not item.strip():
                raise _Reject(f"element {index} is empty in {_shown(value)}")
            try:
                result.append(self._scalar._convert(self, item))
            except _Reject as e:
                raise _Reject(f"element {index}: {e}") from None
        return result

    def _formatted(self, binary):
        """Elements joined by one space (``format`` applies to each element)."""
        if self.format is not None:
            return " ".join(self.format % item for item in binary)
        return " ".join(self._scalar._ascii(self, item) for item in binary)

    def _formatSample(self):
        return self._scalar._formatSample(self)


class IntegerArray(_Array):
    """A list of ints; the range (default int32) applies to each element."""

    typeName = "integer array"
    ktlType = "KTL_INT_ARRAY"
    ktlAliases = ("KTL_INT64_ARRAY",)
    _scalar = Integer


class DoubleArray(_Array):
    """A list of finite floats; the range applies to each element."""

    typeName = "double array"
    ktlType = "KTL_DOUBLE_ARRAY"
    ktlAliases = ("KTL_FLOAT_ARRAY",)
    _scalar = Double


# -- metadata helpers -------------------------------------------------------


def _checkName(name):
    if not isinstance(name, str) or not name or any(c.isspace() for c in name):
        raise BadValue(f"bad keyword name {name!r}: it must be non-empty text without spaces")
    if len(name.upper().encode("utf-8", "surrogatepass")) > MAX_NAME_BYTES:
        raise BadValue(f"bad keyword name {name[:40]!r}...: longer than {MAX_NAME_BYTES} bytes")
    return name.upper()


def _integerText(text):
    """The int spelled by ``text`` (ASCII decimal, 0x, 0o, 0b), or None."""
    text = text.strip(_ASCII_SPACE)
    if not _INTEGER_TEXT.fullmatch(text):
        return None  # also refuses "1_000" and non-ASCII digits
    try:
        if text.lstrip("+-")[1:2] in ("x", "X", "o", "O", "b", "B"):
            return int(text, 0)
        return int(text, 10)  # "010" is decimal 10
    except ValueError:  # more digits than int() converts: the caller decides
        return None


def _numberedNames(keyword, field, spec):
    """(number, name) pairs from a list (numbered from 0) or a mapping.

    Mapping keys may be integer strings, as TOML and JSON tables need.
    """
    if isinstance(spec, collections.abc.Mapping):
        raw = list(spec.items())
    elif isinstance(spec, (list, tuple)):
        raw = list(enumerate(spec))
    else:
        raise keyword._badMeta(field, f"{spec!r} is neither a list nor a mapping")
    pairs, numbers, names = [], set(), set()
    for number, name in raw:
        try:
            number = _parseMetaInt(number)
        except _Reject as e:
            raise keyword._badMeta(field, str(e)) from None
        if not isinstance(name, str) or not name.strip():
            raise keyword._badMeta(field, f"name {name!r} for {number} is not a non-empty string")
        name = name.strip()
        if number in numbers:
            raise keyword._badMeta(field, f"number {number} is given twice")
        if name.lower() in names:
            raise keyword._badMeta(field, f"name {name!r} is given twice")
        numbers.add(number)
        names.add(name.lower())
        pairs.append((number, name))
    return pairs


# -- registry ---------------------------------------------------------------

TYPES = {
    cls.typeName: cls
    for cls in (
        Basic,
        String,
        Boolean,
        Integer,
        Double,
        Enumerated,
        Mask,
        IntegerArray,
        DoubleArray,
    )
}
TYPES.update(
    {
        "float": Double,
        "float array": DoubleArray,
        "int": Integer,
        "bool": Boolean,
        "enum": Enumerated,
        "str": String,
    }
)


def typeFor(name):
    """The keyword class for a type name (case-insensitive); BadValue if unknown."""
    if isinstance(name, str):
        cls = TYPES.get(" ".join(name.lower().split()))
        if cls is not None:
            return cls
    raise BadValue(f"unknown keyword type {name!r} (known: {', '.join(sorted(TYPES))})")


_DESCRIBED = (
    "units",
    "description",
    "range",
    "format",
    "readonly",
    "writeonly",
    "initial",
)


def fromDescription(description):
    """Build a keyword from :meth:`Basic.describe` output (or a TOML table).

    The type defaults to ``basic`` as in KTL; an unknown type is an error;
    unknown extra fields are ignored so newer peers stay readable.
    """
    if not isinstance(description, collections.abc.Mapping):
        raise BadValue(f"a keyword description must be a mapping, not {description!r}")
    if "name" not in description:
        raise BadValue(f"keyword description without a name: {description!r}")
    cls = typeFor(description.get("type", "basic"))
    kwargs = {k: description[k] for k in _DESCRIBED if description.get(k) is not None}
    if issubclass(cls, Enumerated):
        kwargs["enumerators"] = description.get("enumerators")
    elif issubclass(cls, Mask) and description.get("bits"):
        kwargs["bits"] = description["bits"]
    return cls(description["name"], **kwargs)
