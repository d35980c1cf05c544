"""Durations and instants as operators type them: ``90d``, ``1h``, ``2026-12-02T03:00``.

Pure: the current time is always passed in.  Errors are :class:`ValueError`
with one line naming the text and what is accepted (front ends turn them
into usage errors).
"""

import datetime
import math
import re

__all__ = ["parseDuration", "parseInstant", "localTime", "isoTime"]

_UNITS = {"s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, "w": 7 * 86400.0}
_DURATION = re.compile(r"^\s*(\d+(?:\.\d*)?|\.\d+)\s*([smhdw]?)\s*$")
_ACCEPTED = "now, a duration ago such as 90s, 15m, 1h, 7d, 2w, or a date and time such " \
            "as 2026-12-02T03:00 (local time unless a zone is given: 2026-12-02T03:00Z)"


def parseDuration(text):
    """Seconds in ``text``: ``90d``, ``1.5h``, ``30m``, ``45s``, ``2w`` (bare numbers: seconds)."""
    match = _DURATION.match(text) if isinstance(text, str) else None
    if match is None:
        raise ValueError(f"{text!r} is not a duration: use a number and a unit, "
                         "such as 45s, 30m, 1h, 90d or 2w")
    seconds = float(match.group(1)) * _UNITS[match.group(2) or "s"]
    if not math.isfinite(seconds) or seconds <= 0:
        raise ValueError(f"{text!r} is not a positive duration")
    return seconds


def parseInstant(text, now):
    """Unix seconds for ``text``: ``now``, a duration ago (``1h``) or an ISO 8601 date/time.

    A date and time without a zone is local time, as operators read clocks.
    ``now`` (Unix seconds) is what a duration counts back from.
    """
    if not isinstance(text, str) or not text.strip():
        raise ValueError(f"{text!r} is not a time: use {_ACCEPTED}")
    text = text.strip()
    if text.lower() == "now":
        return now
    if _DURATION.match(text):
        return now - parseDuration(text)
    iso = text[:-1] + "+00:00" if text.endswith(("Z", "z")) else text
    try:
        when = datetime.datetime.fromisoformat(iso)
    except ValueError:
        raise ValueError(f"{text!r} is not a time: use {_ACCEPTED}") from None
    if when.tzinfo is None:
        when = when.astimezone()  # local time, the machine's zone
    return when.timestamp()


def localTime(seconds):
    """``2026-12-02 04:05:06.123 +0100``: local time with its zone, to the millisecond."""
    when = datetime.datetime.fromtimestamp(seconds).astimezone()
    return when.strftime("%Y-%m-%d %H:%M:%S.") + f"{when.microsecond // 1000:03d}" \
        + when.strftime(" %z")


def isoTime(seconds):
    """ISO 8601 with the local zone's offset, to the microsecond (for CSV and JSON)."""
    return datetime.datetime.fromtimestamp(seconds).astimezone().isoformat()
