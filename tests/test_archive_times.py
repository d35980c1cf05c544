"""Durations and instants as operators type them (pure, no clock read)."""

import datetime

import pytest

from cauldron.archive.history import formatRecords, instant
from cauldron.archive.store import Record
from cauldron.archive.times import isoTime, localTime, parseDuration, parseInstant

NOW = 1_800_000_000.0
#: 2027-01-15T08:00:00Z
EIGHT = datetime.datetime(2027, 1, 15, 8, tzinfo=datetime.timezone.utc).timestamp()


@pytest.mark.parametrize("text, seconds", [
    ("45", 45.0), ("45s", 45.0), ("30m", 1800.0), ("1.5h", 5400.0), ("90d", 90 * 86400.0),
    ("2w", 14 * 86400.0), (" 7d ", 7 * 86400.0),
])
def test_durations(text, seconds):
    assert parseDuration(text) == seconds


@pytest.mark.parametrize("text", ["", "d", "-1h", "0s", "1y", "forever", "1e999", None])
def test_badDurations(text):
    with pytest.raises(ValueError) as error:
        parseDuration(text)
    assert repr(text) in str(error.value)


def test_instants():
    assert parseInstant("now", NOW) == NOW
    assert parseInstant("1h", NOW) == NOW - 3600
    assert parseInstant("2027-01-15T08:00:00Z", NOW) == EIGHT
    assert parseInstant("2027-01-15T09:00:00+01:00", NOW) == EIGHT
    local = datetime.datetime(2027, 1, 15, 8, 0).astimezone().timestamp()
    assert parseInstant("2027-01-15T08:00", NOW) == local  # no zone: local time
    assert parseInstant("2027-01-15 08:00", NOW) == local


@pytest.mark.parametrize("text", ["yesterday", "2027-13-01", "", "12:00pm"])
def test_badInstants(text):
    with pytest.raises(ValueError) as error:
        parseInstant(text, NOW)
    assert "is not a time" in str(error.value) and "2026-12-02T03:00" in str(error.value)


def test_shownInLocalTimeWithZone():
    shown = localTime(1_799_913_600.25)
    expected = datetime.datetime.fromtimestamp(1_799_913_600.25).astimezone()
    assert shown == expected.strftime("%Y-%m-%d %H:%M:%S.250 %z")
    assert datetime.datetime.fromisoformat(isoTime(1_799_913_600.25)).timestamp() \
        == 1_799_913_600.25


def test_instantAcceptsWhatScriptsHave():
    assert instant(None) is None
    assert instant(12.5) == 12.5
    assert instant(datetime.datetime(2027, 1, 15, 8, tzinfo=datetime.timezone.utc)) == EIGHT
    assert instant("2h", now=NOW) == NOW - 7200


def test_formats():
    records = [Record("demo", "TEMP", "e1", 1, 1_799_913_600.0, 20.5, "20.5"),
               Record("demo", "TEMP", "e1", 2, 1_799_913_601.0, kind="gap", missed=3),
               Record("demo", "TEMP", "e1", 5, 1_799_913_602.0, 21.0, 'a "b", c')]
    table = formatRecords(records).splitlines()
    assert table[0].endswith("  TEMP  20.5")
    assert table[1].endswith("  TEMP  (gap: 3 values not archived from sequence 2)")
    csvText = formatRecords(records, "csv").splitlines()
    assert csvText[0] == "time,unix,service,keyword,value,kind,missed,epoch,sequence,dispatcher"
    assert csvText[3].endswith(',demo,TEMP,"a ""b"", c",value,0,e1,5,demo')
    with pytest.raises(ValueError):
        formatRecords(records, "xml")
