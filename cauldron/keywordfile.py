"""Keyword files: the TOML tables ``twistd cauldron-dispatcher -k`` serves.

One table per keyword, named by the keyword::

    [TEMP]
    type = "double"
    units = "K"
    initial = 20.0
    range = [0.0, 400.0]
    description = "Detector temperature"
    period = 5.0
    persist = true
    writers = ["ops", "obs-*"]

``writers`` and ``readers`` (names or glob patterns of client keys; secure
mode only) may also be given at the top of the file, before any table: they
are then the default of every keyword that names none.

Pure Python (no twisted, no zmq).  Every problem is a
:class:`cauldron.errors.ConfigError` naming the file, the keyword and the
field, so an operator can fix the file without reading code.
"""

import math
import os
import re
import sys

from cauldron import keywords
from cauldron.errors import BadValue, ConfigError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised on 3.10 only
    import tomli as tomllib

__all__ = ["FIELDS", "loadKeywords", "keywordsFromMapping"]

#: every field a keyword table may hold
FIELDS = (
    "type",
    "initial",
    "units",
    "range",
    "enumerators",
    "bits",
    "readonly",
    "writeonly",
    "description",
    "format",
    "period",
    "persist",
    "writers",
    "readers",
)

#: fields that may also stand at the top of a file, as every keyword's default
DEFAULT_FIELDS = ("writers", "readers")

# keywords.Basic reports "NAME: bad FIELD: why" / "NAME: bad initial value: why";
# recover the field so our message can name it the way the file does.
_BAD_FIELD = re.compile(r"^\S+: bad (?P<field>[a-z]+)(?: value)?: (?P<why>.*)$", re.DOTALL)


def loadKeywords(path):
    """Read a keyword file and return new keyword objects, in file order.

    Raises :class:`ConfigError` for a missing or unreadable file, invalid
    TOML (the message gives the line), or any bad keyword definition.
    """
    path = os.fspath(path)
    try:
        with open(path, "rb") as f:
            data = tomllib.load(f)
    except FileNotFoundError:
        raise ConfigError("%s: keyword file not found" % (path,)) from None
    except IsADirectoryError:
        raise ConfigError("%s: is a directory, not a keyword file" % (path,)) from None
    except OSError as e:
        raise ConfigError("%s: cannot read keyword file: %s" % (path, e.strerror)) from None
    except UnicodeDecodeError as e:
        raise ConfigError("%s: not UTF-8 text: %s" % (path, e)) from None
    except tomllib.TOMLDecodeError as e:
        raise ConfigError("%s: invalid TOML: %s" % (path, e)) from None
    return keywordsFromMapping(data, source=path)


def keywordsFromMapping(data, source="<keywords>"):
    """Build keywords from ``{name: {field: value}}`` as parsed from TOML.

    ``source`` names the origin in error messages.
    """
    result, seen = [], {}
    defaults = {field: data[field] for field in DEFAULT_FIELDS
                if field in data and not isinstance(data[field], dict)}
    for name, table in data.items():
        if name in defaults:
            continue
        if not isinstance(table, dict):
            raise ConfigError(
                "%s: %s = %s: expected a table [%s] defining a keyword"
                % (source, name, _show(table), name)
            )
        key = name.upper()
        if key in seen:
            raise ConfigError(
                "%s: [%s]: same keyword as [%s] (names are case-insensitive)"
                % (source, name, seen[key])
            )
        seen[key] = name
        result.append(_keyword(source, name, {**defaults, **table}))
    if not result:
        raise ConfigError("%s: no keywords defined" % (source,))
    return result


def _keyword(source, name, table):
    """One keyword from its table; every error names source, keyword and field."""

    def fail(field, why):
        where = "%s: [%s]" % (source, name)
        if field:
            where += " %s" % (field,)
        return ConfigError("%s: %s" % (where, why))

    for field in table:
        if field not in FIELDS:
            raise fail(field, "unknown field (known: %s)" % ", ".join(FIELDS))
    if "type" not in table:
        raise fail("type", "missing (known types: %s)" % ", ".join(sorted(keywords.TYPES)))
    try:
        cls = keywords.typeFor(table["type"])
    except BadValue:
        known = ", ".join(sorted(keywords.TYPES))
        raise fail("type", "unknown type %s (known: %s)" % (_show(table["type"]), known)) from None

    _checkShapes(table, fail)

    kwargs = {}
    for field in ("initial", "units", "range", "readonly", "writeonly", "description", "format",
                  "writers", "readers", "persist"):
        if field in table:
            kwargs[field] = table[field]
    if "range" in kwargs:
        kwargs["range"] = tuple(kwargs["range"])
    if "enumerators" in table:
        if not issubclass(cls, keywords.Enumerated):
            raise fail("enumerators", "only an enumerated keyword has enumerators")
        kwargs["enumerators"] = table["enumerators"]
    if "bits" in table:
        if not issubclass(cls, keywords.Mask):
            raise fail("bits", "only a mask keyword has bits")
        kwargs["bits"] = table["bits"]
    if "range" in kwargs and not cls.hasRange:
        raise fail("range", "a %s keyword has no range" % (cls.typeName,))

    try:
        keyword = cls(name, **kwargs)
    except BadValue as e:
        match = _BAD_FIELD.match(str(e))
        if match and match.group("field") in FIELDS:
            raise fail(match.group("field"), match.group("why")) from None
        raise fail(None, str(e)) from None

    if "period" in table:
        keyword.period(table["period"])
    return keyword


def _checkShapes(table, fail):
    """Check the structure of fields early, with messages in the file's terms."""
    for field in ("units", "description", "format"):
        if field in table and not isinstance(table[field], str):
            raise fail(field, "expected a string, got %s" % _show(table[field]))
    for field in ("readonly", "writeonly", "persist"):
        if field in table and not isinstance(table[field], bool):
            raise fail(field, "expected true or false, got %s" % _show(table[field]))
    if "range" in table:
        spec = table["range"]
        if not isinstance(spec, list) or len(spec) != 2:
            raise fail("range", "expected [min, max], got %s" % _show(spec))
        for bound in spec:
            if isinstance(bound, bool) or not isinstance(bound, (int, float)):
                raise fail("range", "expected [min, max] numbers, got %s" % _show(spec))
    for field in ("enumerators", "bits"):
        if field in table and not isinstance(table[field], (list, dict)):
            raise fail(
                field,
                "expected an array of names or a table of number = name, got %s"
                % _show(table[field]),
            )
    for field in ("writers", "readers"):
        patterns = table.get(field)
        if field in table and (not isinstance(patterns, list) or not all(
                isinstance(p, str) and p.strip() for p in patterns)):
            raise fail(field, "expected an array of key names or patterns, got %s"
                       % _show(patterns))
    if "period" in table:
        period = table["period"]
        if (
            isinstance(period, bool)
            or not isinstance(period, (int, float))
            or not math.isfinite(period)
            or period <= 0
        ):
            raise fail("period", "expected a positive number of seconds, got %s" % _show(period))


def _show(value):
    """A value as it would be written in TOML, for messages."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return '"%s"' % value.replace("\\", "\\\\").replace('"', '\\"')
    if isinstance(value, list):
        return "[%s]" % ", ".join(_show(v) for v in value)
    if isinstance(value, dict):
        return "{%s}" % ", ".join("%s = %s" % (k, _show(v)) for k, v in value.items())
    return str(value)
