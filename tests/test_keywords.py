"""Tests for cauldron.keywords: conversion tables, round trips, value state."""

import math
import time

import pytest
from hypothesis import given
from hypothesis import strategies as st

from cauldron.errors import BadValue, KeywordError
from cauldron.keywords import (
    INT32_MAX,
    INT32_MIN,
    INT64_MAX,
    INT64_MIN,
    MAX_ARRAY_LENGTH,
    MAX_TEXT_BYTES,
    TYPES,
    Basic,
    Boolean,
    Double,
    DoubleArray,
    Enumerated,
    Float,
    Integer,
    IntegerArray,
    Mask,
    String,
    fromDescription,
    typeFor,
)

NUMBERS = ["ZERO", "ONE", "TWO", "THREE"]
BITS = ["POWER", "COOLING", "SHUTTER"]


def make(typeName, **kwargs):
    """A keyword of each type with the metadata the tables below assume."""
    cls = typeFor(typeName)
    if cls is Enumerated:
        kwargs.setdefault("enumerators", NUMBERS)
    if cls is Mask and kwargs.pop("named", True):
        kwargs.setdefault("bits", BITS)
    return cls("kw", **kwargs)


# -- conversion tables: (type, input, binary, ascii) ---------------------------

ACCEPT = [
    # basic / string: any text, any character
    ("basic", "foobar", "foobar", "foobar"),
    ("string", "foobar", "foobar", "foobar"),
    ("string", "a:b:c", "a:b:c", "a:b:c"),
    ("string", "line1\nline2\r\n", "line1\nline2\r\n", "line1\nline2\r\n"),
    ("string", "", "", ""),
    ("string", "  padded ", "  padded ", "  padded "),
    ("string", 12, "12", "12"),
    ("string", 2.5, "2.5", "2.5"),
    ("string", True, "True", "True"),
    ("string", b"bytes", "bytes", "bytes"),
    ("string", "\u00e9\u2603", "\u00e9\u2603", "\u00e9\u2603"),
    # boolean: Cauldron vectors
    ("boolean", "1", True, "1"),
    ("boolean", True, True, "1"),
    ("boolean", "yes", True, "1"),
    ("boolean", "on", True, "1"),
    ("boolean", "t", True, "1"),
    ("boolean", "true", True, "1"),
    ("boolean", "TruE", True, "1"),
    ("boolean", " On ", True, "1"),
    ("boolean", 1, True, "1"),
    ("boolean", "0", False, "0"),
    ("boolean", False, False, "0"),
    ("boolean", "no", False, "0"),
    ("boolean", "off", False, "0"),
    ("boolean", "f", False, "0"),
    ("boolean", "false", False, "0"),
    ("boolean", "fALSe", False, "0"),
    ("boolean", 0, False, "0"),
    # integer
    ("integer", "1", 1, "1"),
    ("integer", 1, 1, "1"),
    ("integer", 100, 100, "100"),
    ("integer", " -12 ", -12, "-12"),
    ("integer", "+3", 3, "3"),
    ("integer", 4.0, 4, "4"),
    ("integer", "4.0", 4, "4"),
    ("integer", "1e3", 1000, "1000"),
    ("integer", "0x10", 16, "16"),
    ("integer", "0b101", 5, "5"),
    ("integer", "010", 10, "10"),
    ("integer", True, 1, "1"),
    ("integer", INT32_MAX, INT32_MAX, str(INT32_MAX)),
    ("integer", INT32_MIN, INT32_MIN, str(INT32_MIN)),
    # double / float: Cauldron vectors
    ("double", 1, 1.0, "1.0"),
    ("double", 1.0, 1.0, "1.0"),
    ("double", 1e10, 1e10, str(1e10)),
    ("double", 1.234567e50, 1.234567e50, repr(1.234567e50)),
    ("double", "4.1", 4.1, "4.1"),
    ("double", "1e3", 1000.0, "1000.0"),
    ("double", " 2.5 ", 2.5, "2.5"),
    ("double", -0.0, 0.0, "-0.0"),
    ("double", 0.1, 0.1, "0.1"),
    ("float", "4.1", 4.1, "4.1"),
    # enumerated (0=ZERO ... 3=THREE): Cauldron vectors
    ("enumerated", "ONE", 1, "ONE"),
    ("enumerated", 1, 1, "ONE"),
    ("enumerated", "one", 1, "ONE"),
    ("enumerated", " Two ", 2, "TWO"),
    ("enumerated", "3", 3, "THREE"),
    ("enumerated", 0, 0, "ZERO"),
    ("enumerated", 2.0, 2, "TWO"),
    # mask (0=POWER, 1=COOLING, 2=SHUTTER)
    ("mask", 0, 0, "0"),
    ("mask", 5, 5, "POWER, SHUTTER"),
    ("mask", "5", 5, "POWER, SHUTTER"),
    ("mask", "0x3", 3, "POWER, COOLING"),
    ("mask", "power, shutter", 5, "POWER, SHUTTER"),
    ("mask", "POWER|COOLING", 3, "POWER, COOLING"),
    ("mask", "SHUTTER POWER", 5, "POWER, SHUTTER"),
    ("mask", " cooling ", 2, "COOLING"),
    ("mask", ["SHUTTER", "power"], 5, "POWER, SHUTTER"),
    ("mask", [], 0, "0"),
    ("mask", "", 0, "0"),
    ("mask", "0", 0, "0"),
    ("mask", 7, 7, "POWER, COOLING, SHUTTER"),
    # arrays
    ("integer array", [1, 2, 3], [1, 2, 3], "1 2 3"),
    ("integer array", (1, "2", 3.0), [1, 2, 3], "1 2 3"),
    ("integer array", "1 2 3", [1, 2, 3], "1 2 3"),
    ("integer array", "1,2, 3", [1, 2, 3], "1 2 3"),
    ("integer array", " 1 ,\t2\n3 ", [1, 2, 3], "1 2 3"),
    ("integer array", "-4", [-4], "-4"),
    ("integer array", "", [], ""),
    ("integer array", [], [], ""),
    ("double array", [1, 2.5], [1.0, 2.5], "1.0 2.5"),
    ("double array", "1e3, -2.5", [1000.0, -2.5], "1000.0 -2.5"),
    ("float array", "0.1 0.2", [0.1, 0.2], "0.1 0.2"),
]


@pytest.mark.parametrize("typeName, given, binary, text", ACCEPT)
def test_accept(typeName, given, binary, text):
    kw = make(typeName)
    result = kw.toBinary(given)
    assert result == binary
    assert type(result) is type(binary)
    if isinstance(binary, list):
        assert all(type(a) is type(b) for a, b in zip(result, binary, strict=True))
    assert kw.toAscii(result) == text
    assert kw.fromAscii(text) == binary
    assert kw.toAscii(given) == text


REJECT = [
    ("basic", None, "None is not a value"),
    ("string", None, "None is not a value"),
    ("string", ["a"], "is not a scalar"),
    ("string", b"\xff", "is not UTF-8"),
    ("boolean", "other", "'other' is not a boolean"),
    ("boolean", 100, "100 is not a boolean"),
    ("boolean", 2, "is not a boolean"),
    ("boolean", 1.0, "is not a boolean"),
    ("boolean", "", "is not a boolean"),
    ("boolean", None, "is not a boolean"),
    ("integer", "blah", "'blah' is not a number"),
    ("integer", 1e32, "is above the maximum 2147483647"),
    ("integer", 4.5, "4.5 is not an integer"),
    ("integer", 2.5, "is not an integer"),
    ("integer", "4.5", "'4.5' is not an integer"),
    ("integer", "4.1", "is not an integer"),
    ("integer", "abc", "is not a number"),
    ("integer", "", "is not a number"),
    ("integer", math.nan, "is not a finite number"),
    ("integer", math.inf, "is not a finite number"),
    ("integer", "inf", "is not a finite number"),
    ("integer", INT32_MAX + 1, "is above the maximum"),
    ("integer", INT32_MIN - 1, "is below the minimum"),
    ("integer", "1e999999999", "'1e999999999' is not a finite number"),
    ("integer", "1e999", "'1e999' is not a finite number"),
    ("integer", "-1E+999", "is not a finite number"),
    ("integer", "1e20", "'1e20' is above the maximum"),
    ("integer array", "1 1e999", "element 1: '1e999' is not a finite number"),
    ("integer", None, "is not an integer"),
    ("integer", [1], "is not an integer"),
    ("double", "blah", "'blah' is not a number"),
    ("double", "abc", "'abc' is not a number"),
    ("double", True, "is a boolean"),
    ("double", math.nan, "nan is not a finite number"),
    ("double", "nan", "is not a finite number"),
    ("double", math.inf, "is not a finite number"),
    ("double", "-inf", "is not a finite number"),
    ("double", "1e400", "is not a finite number"),
    ("double", 10**400, "too large"),
    ("double", None, "is not a number"),
    ("double", "", "is not a number"),
    ("enumerated", 4, "4 is not a valid enumerator (valid: 0=ZERO, 1=ONE, 2=TWO, 3=THREE)"),
    ("enumerated", "FOUR", "'FOUR' is not a valid enumerator"),
    ("enumerated", -1, "is not a valid enumerator"),
    ("enumerated", 1.5, "is not a valid enumerator"),
    ("enumerated", True, "is not a valid enumerator"),
    ("enumerated", None, "is not a valid enumerator"),
    ("enumerated", "", "is not a valid enumerator"),
    ("mask", -1, "is negative"),
    ("mask", 8, "sets undefined bits 0x8"),
    ("mask", "8", "sets undefined bits"),
    ("mask", "POWER, LASER", "'LASER' is not a bit name (valid: POWER, COOLING, SHUTTER)"),
    ("mask", ["POWER", 1], "1 is not a bit name"),
    ("mask", 1.0, "is not a mask"),
    ("mask", True, "is not a mask"),
    ("mask", None, "is not a mask"),
    ("integer array", [1, "x"], "element 1: 'x' is not a number"),
    ("integer array", "1 2.5", "element 1: '2.5' is not an integer"),
    ("integer array", "1,,2", "element 1 is empty"),
    ("integer array", ",1", "element 0 is empty"),
    ("integer array", 5, "is not a sequence"),
    ("integer array", None, "is not a sequence"),
    ("integer array", [2**40], "element 0: 1099511627776 is above the maximum"),
    ("double array", ["1", "nan"], "element 1: 'nan' is not a finite number"),
    ("double array", [True], "element 0: True is a boolean"),
    ("double array", {"a": 1}, "is not a sequence"),
    # numeric text is ASCII only: int() and float() would take these
    ("integer", "1_000", "'1_000' is not a number"),
    ("integer", "0x_ff", "is not a number"),
    ("integer", "\u0663", "is not a number"),  # ARABIC-INDIC DIGIT THREE
    ("integer", "\uff11\uff12", "is not a number"),  # fullwidth 12
    ("integer", "1_0.5", "is not a number"),
    ("double", "1_000", "'1_000' is not a number"),
    ("double", "1_000.5", "is not a number"),
    ("double", "\u0663", "is not a number"),
    ("double", "\u0663.5", "is not a number"),
    ("enumerated", "0_1", "is not a valid enumerator"),  # int() reads 1
    ("enumerated", "\u0661", "is not a valid enumerator"),
    ("mask", "1_0", "is not a bit name"),
    ("mask", "\u0661", "is not a bit name"),
    ("integer array", "1 1_000", "element 1: '1_000' is not a number"),
    ("double array", ["\u0663"], "element 0: '\u0663' is not a number"),
    # separators alone are not an empty mask (only "" and [] are)
    ("mask", ",", "',' has separators but no bit names"),
    ("mask", " | ", "has separators but no bit names"),
    ("mask", ", ,", "has separators but no bit names"),
    ("mask", ["", " "], "has separators but no bit names"),
    # values must fit the wire
    ("string", "\ud800", "cannot be encoded as UTF-8"),
    ("basic", "ok \udfff", "cannot be encoded as UTF-8"),
    ("string", "x" * (MAX_TEXT_BYTES + 1), "is too long"),
    ("string", "\u00e9" * (MAX_TEXT_BYTES // 2 + 1), "is too long"),  # 2 bytes each
    ("basic", b"x" * (MAX_TEXT_BYTES + 1), "is too long"),
    ("integer array", [0] * (MAX_ARRAY_LENGTH + 1), f"more than {MAX_ARRAY_LENGTH} elements"),
    ("double array", " ".join(["1"] * (MAX_ARRAY_LENGTH + 1)), "more than"),
    ("double array", range(10**12), "more than"),
]


@pytest.mark.parametrize("typeName, given, why", REJECT)
def test_reject(typeName, given, why):
    kw = make(typeName)
    with pytest.raises(BadValue) as info:
        kw.toBinary(given)
    message = str(info.value)
    assert message.startswith("KW: ")
    assert why in message
    with pytest.raises(BadValue):
        kw.toAscii(given) if given is not None else kw.toBinary(given)


def test_textAtTheLimitsIsAccepted():
    kw = String("s")
    assert kw.toBinary("x" * MAX_TEXT_BYTES) == "x" * MAX_TEXT_BYTES
    assert kw.toBinary("\u00e9" * (MAX_TEXT_BYTES // 2)) == "\u00e9" * (MAX_TEXT_BYTES // 2)
    assert kw.toBinary("\U0001f600") == "\U0001f600"  # a real (paired) astral character
    assert IntegerArray("a").toBinary([1] * MAX_ARRAY_LENGTH) == [1] * MAX_ARRAY_LENGTH
    text = " ".join(["-1.2345678901234567e-300"] * MAX_ARRAY_LENGTH)
    assert len(DoubleArray("a").toBinary(text)) == MAX_ARRAY_LENGTH
    assert Integer("i").toBinary("0x7f") == 127
    assert Integer("i").toBinary(" -0o17 ") == -15
    assert Integer("i").toBinary("+0B11") == 3
    assert Double("d").toBinary(".5") == 0.5
    assert Double("d").toBinary("5.") == 5.0
    assert Double("d").toBinary("-1E+03") == -1000.0


def test_oversizedTextIsRejectedFast():
    start = time.monotonic()
    for kw in (Integer("i"), Double("d"), IntegerArray("a"), Mask("m"), String("s")):
        with pytest.raises(BadValue, match="too long|more than"):
            kw.toBinary("1 " * 10**7)
    assert time.monotonic() - start < 2


@pytest.mark.parametrize(
    "keyword, given",
    [
        (Integer("i"), "1e999"),
        (Integer("i"), "1e20"),
        (Integer("i"), "abc"),
        (Integer("i"), "4.5"),
        (Double("d"), "1e999"),
        (Double("d", range=(0, 1)), "5"),
        (Enumerated("e", enumerators=["OFF", "ON"]), "DIM"),
        (IntegerArray("a"), "1 zz"),
    ],
)
def test_rejectedValueIsShownOnce(keyword, given):
    """The one-line message names the keyword and shows the value exactly once."""
    with pytest.raises(BadValue) as info:
        keyword.toBinary(given)
    message = str(info.value)
    assert "\n" not in message
    assert message.count(given.split()[-1]) == 1, message


def test_rejectedValuesAreCutShortInMessages():
    with pytest.raises(BadValue) as info:
        Integer("i").toBinary("z" * 10000)
    message = str(info.value)
    assert len(message) < 150 and "\u2026" in message
    with pytest.raises(BadValue) as info:
        Integer("i").toBinary(2**100000)
    assert str(info.value) == "I: <an int of 100001 bits> is above the maximum 2147483647"
    with pytest.raises(BadValue) as info:
        IntegerArray("a").toBinary(["x" * 500])
    assert len(str(info.value)) < 150
    with pytest.raises(BadValue) as info:
        Mask("m", bits=BITS).toBinary("POWER, " + "Q" * 5000)
    assert len(str(info.value)) < 300


def test_integerRangeMustFitInt64():
    assert Integer("i", range=(INT64_MIN, INT64_MAX)).range == (INT64_MIN, INT64_MAX)
    for bad in [(0, INT64_MAX + 1), (INT64_MIN - 1, 0), (0, 2**100), (0, "0x8000000000000000")]:
        with pytest.raises(BadValue, match="bad range: .* signed 64-bit"):
            Integer("i", range=bad)
    with pytest.raises(BadValue, match="signed 64-bit"):
        IntegerArray("a", range=(0, 2**64))
    with pytest.raises(BadValue, match="bad enumerators: .* signed 64-bit"):
        Enumerated("e", enumerators={str(2**63): "HUGE"})
    kw = Integer("i", range=(0, None))
    with pytest.raises(BadValue, match="above the maximum"):
        kw.toBinary(INT64_MAX)


def test_limitsAreExported():
    import cauldron.keywords as keywords

    for name in ("MAX_TEXT_BYTES", "MAX_ARRAY_LENGTH", "INT64_MIN", "INT64_MAX"):
        assert name in keywords.__all__
    assert (MAX_TEXT_BYTES, MAX_ARRAY_LENGTH) == (256 * 1024, 16384)


def test_badValueIsAValueError():
    with pytest.raises(ValueError):
        Double("t").toBinary("abc")


def test_messagesNameKeywordValueAndReason():
    temp = Double("temp", range=(0, 400.0))
    with pytest.raises(BadValue, match=r"^TEMP: 'abc' is not a number$"):
        temp.toBinary("abc")
    with pytest.raises(BadValue, match=r"^TEMP: 500\.0 is above the maximum 400\.0$"):
        temp.toBinary(500)
    with pytest.raises(BadValue, match=r"^TEMP: -1\.0 is below the minimum 0\.0$"):
        temp.toBinary("-1")


# -- ranges -----------------------------------------------------------------


def test_rangeInclusive():
    kw = Integer("i", range=(0, 10))
    assert kw.toBinary(0) == 0
    assert kw.toBinary(10) == 10
    with pytest.raises(BadValue):
        kw.toBinary(11)
    with pytest.raises(BadValue):
        kw.toBinary(-1)


def test_integerDefaultRangeIsInt32():
    assert Integer("i").range == (INT32_MIN, INT32_MAX)


def test_integerOpenSideKeepsInt32Bound():
    kw = Integer("i", range=(0, None))
    assert kw.range == (0, INT32_MAX)
    with pytest.raises(BadValue):
        kw.toBinary(INT32_MAX + 1)


def test_integerExplicitRangeMayExceedInt32():
    kw = Integer("i", range=(0, 2**40))
    assert kw.toBinary(2**40) == 2**40


def test_doubleOpenRange():
    kw = Double("d", range=(None, 1.0))
    assert kw.toBinary(-1e300) == -1e300
    with pytest.raises(BadValue, match="above the maximum"):
        kw.toBinary(1.5)
    assert Double("d").range is None


def test_arrayRangeAppliesPerElement():
    kw = DoubleArray("a", range=(0, 1))
    assert kw.toBinary("0 0.5 1") == [0.0, 0.5, 1.0]
    with pytest.raises(BadValue, match="element 2: 2.0 is above the maximum 1.0"):
        kw.toBinary([0, 1, 2])


def test_unnamedMask():
    kw = Mask("m")
    assert kw.bits == {}
    assert kw.toBinary(2**64 - 1) == 2**64 - 1
    assert kw.toAscii(6) == "6"
    assert kw.toBinary("0xff") == 255
    with pytest.raises(BadValue, match="does not fit in 64 bits"):
        kw.toBinary(2**64)
    with pytest.raises(BadValue, match="is not a bit name"):
        kw.toBinary("POWER")


def test_sparseMaskBits():
    kw = Mask("m", bits={"0": "A", "4": "E"})
    assert kw.toBinary("a e") == 17
    assert kw.toAscii(16) == "E"
    with pytest.raises(BadValue, match="undefined bits 0x2"):
        kw.toBinary(2)


def test_enumeratedMappingFromToml():
    kw = Enumerated("mode", enumerators={"0": "OFF", "1": "On", "5": "Standby"})
    assert kw.enumerators == {0: "OFF", 1: "On", 5: "Standby"}
    assert kw.toBinary("standby") == 5
    assert kw.toAscii(1) == "On"
    assert kw.describe()["enumerators"] == {"0": "OFF", "1": "On", "5": "Standby"}


def test_enumeratorNameWinsOverNumber():
    # A name that reads as a number (binning "1", "2"...) is matched as a name first.
    kw = Enumerated("bin", enumerators=["1", "2", "4"])
    assert kw.toBinary("1") == 0
    assert kw.toBinary("4") == 2
    assert kw.toBinary(1) == 1
    assert kw.toBinary(kw.toAscii(1)) == 1


# -- format -----------------------------------------------------------------


@pytest.mark.parametrize(
    "kw, value, text",
    [
        (Double("d", format="%.2f"), 3.14159, "3.14"),
        (Integer("i", format="%05d"), 42, "00042"),
        (Integer("i", format="0x%04x"), 255, "0x00ff"),
        (Boolean("b", format="%d"), True, "1"),
        (String("s", format="[%s]"), "x", "[x]"),
        (DoubleArray("a", format="%.1f"), [1, 2.25], "1.0 2.2"),
        (IntegerArray("a", format="%03d"), "1 2", "001 002"),
        (Mask("m", format="%#x"), 10, "0xa"),
    ],
)
def test_format(kw, value, text):
    assert kw.toAscii(value) == text


@pytest.mark.parametrize("fmt", ["%d %d", "%q", 5, "%(x)s"])
def test_badFormat(fmt):
    with pytest.raises(BadValue, match="^D: bad format: "):
        Double("d", format=fmt)


# -- round trips (hypothesis) -----------------------------------------------

finite = st.floats(allow_nan=False, allow_infinity=False)
int32 = st.integers(INT32_MIN, INT32_MAX)
bitNames = st.lists(st.sampled_from(BITS), unique=True)

ROUNDTRIP = {
    "basic": st.text(),
    "string": st.text() | st.integers() | finite,
    "boolean": st.booleans() | st.sampled_from(["yes", "OFF", "t", "0", 1]),
    "integer": int32 | int32.map(str) | int32.map(float),
    "double": finite | st.integers(-(2**60), 2**60) | finite.map(repr),
    "enumerated": st.integers(0, 3) | st.sampled_from(NUMBERS),
    "mask": st.integers(0, 7) | bitNames | bitNames.map("|".join),
    "integer array": st.lists(int32) | st.lists(int32.map(str)).map(", ".join),
    "double array": st.lists(finite) | st.lists(finite.map(repr)).map(" ".join),
}


@pytest.mark.parametrize("typeName", sorted(ROUNDTRIP))
def test_roundTrip(typeName):
    kw = make(typeName)

    @given(ROUNDTRIP[typeName])
    def check(value):
        binary = kw.toBinary(value)
        assert kw.toBinary(kw.toAscii(binary)) == binary
        assert kw.toAscii(kw.fromAscii(kw.toAscii(binary))) == kw.toAscii(binary)

    check()


@given(st.integers(0, 2**64 - 1))
def test_roundTripUnnamedMask(value):
    kw = Mask("m")
    assert kw.toBinary(kw.toAscii(value)) == value


def test_noValueAsciiIsEmpty():
    for name in sorted(TYPES):
        kw = make(name)
        assert kw.toAscii(None) == ""
        assert kw.ascii == ""


# -- names, metadata, registry ----------------------------------------------


def test_nameUpperCased():
    assert Double("temp").name == "TEMP"


@pytest.mark.parametrize("name", ["", "A B", " TEMP", "TEMP\n", "\t", None, 5])
def test_badName(name):
    with pytest.raises(BadValue, match="bad keyword name"):
        Basic(name)


@pytest.mark.parametrize(
    "cls, kwargs, field",
    [
        (Enumerated, {}, "enumerators"),
        (Enumerated, {"enumerators": []}, "enumerators"),
        (Enumerated, {"enumerators": "OFF ON"}, "enumerators"),
        (Enumerated, {"enumerators": ["A", "a"]}, "enumerators"),
        (Enumerated, {"enumerators": {"0": "A", 0: "B"}}, "enumerators"),
        (Enumerated, {"enumerators": {"x": "A"}}, "enumerators"),
        (Enumerated, {"enumerators": ["A", ""]}, "enumerators"),
        (Enumerated, {"enumerators": ["A", 3]}, "enumerators"),
        (Mask, {"bits": []}, "bits"),
        (Mask, {"bits": ["A B"]}, "bits"),
        (Mask, {"bits": ["A,B"]}, "bits"),
        (Mask, {"bits": ["A|B"]}, "bits"),
        (Mask, {"bits": ["12"]}, "bits"),
        (Mask, {"bits": {"64": "HIGH"}}, "bits"),
        (Mask, {"bits": {"-1": "NEG"}}, "bits"),
        (Double, {"range": (5, 1)}, "range"),
        (Integer, {"range": (5, 1)}, "range"),
        (Integer, {"range": (None, INT32_MIN - 1)}, "range"),
        (Integer, {"range": (0, 1.5)}, "range"),
        (Integer, {"range": (0, 1, 2)}, "range"),
        (Integer, {"range": "0 10"}, "range"),
        (Double, {"range": (0, "x")}, "range"),
        (Double, {"range": (0, math.nan)}, "range"),
        (String, {"range": (0, 1)}, "range"),
        (Boolean, {"range": (0, 1)}, "range"),
        (Enumerated, {"enumerators": ["A"], "range": (0, 1)}, "range"),
        (Mask, {"range": (0, 1)}, "range"),
        (Double, {"units": 5}, "units"),
        (Double, {"description": None}, "description"),
        (Double, {"readonly": "yes"}, "readonly"),
        (Double, {"readonly": True, "writeonly": True}, "readonly"),
        (Double, {"persist": "yes"}, "persist"),
        (Double, {"persist": 1}, "persist"),
        (Double, {"read": 5}, "read"),
    ],
)
def test_badMetadata(cls, kwargs, field):
    with pytest.raises(BadValue) as info:
        cls("kw", **kwargs)
    assert str(info.value).startswith(f"KW: bad {field}: ")


@pytest.mark.parametrize(
    "cls, initial",
    [
        (Boolean, 100),
        (Double, "abc"),
        (Double, 500.0),
        (Integer, 4.5),
        (Enumerated, "FOUR"),
        (Mask, "LASER"),
        (IntegerArray, "1 x"),
    ],
)
def test_badInitial(cls, initial):
    kwargs = {"range": (0, 400)} if cls is Double else {}
    if cls is Enumerated:
        kwargs["enumerators"] = NUMBERS
    if cls is Mask:
        kwargs["bits"] = BITS
    with pytest.raises(BadValue, match="^KW: bad initial value: "):
        cls("kw", initial=initial, **kwargs)


def test_initialIsConvertedNotStored():
    kw = Integer("i", initial="100")
    assert kw.initial == 100
    assert kw.value is None
    assert kw.sequence == 0


def test_typeNamesAndAliases():
    expected = {
        Basic: "basic",
        String: "string",
        Boolean: "boolean",
        Integer: "integer",
        Double: "double",
        Enumerated: "enumerated",
        Mask: "mask",
        IntegerArray: "integer array",
        DoubleArray: "double array",
    }
    for cls, name in expected.items():
        assert cls.typeName == name
        assert TYPES[name] is cls
        assert typeFor(name) is cls
    assert Float is Double
    for alias, cls in [
        ("float", Double),
        ("float array", DoubleArray),
        ("int", Integer),
        ("bool", Boolean),
        ("enum", Enumerated),
        ("str", String),
    ]:
        assert TYPES[alias] is cls
    assert typeFor("Double") is Double
    assert typeFor(" integer  ARRAY ") is IntegerArray


@pytest.mark.parametrize("name", ["quaternion", "", None, 3])
def test_typeForUnknown(name):
    with pytest.raises(BadValue, match="unknown keyword type") as info:
        typeFor(name)
    assert isinstance(info.value, KeywordError)
    assert "double" in str(info.value)


# -- describe / fromDescription ---------------------------------------------

DESCRIBED = [
    Basic("b", description="anything", initial="x:y\nz"),
    String("s", units="", format="%s", readonly=True),
    Boolean("flag", initial="yes", writeonly=True),
    Integer("count", units="warps", range=(0, 100), initial=5, format="%d"),
    Integer("wide"),
    Double("temp", units="K", range=(0.0, 400.0), initial=20, description="Detector"),
    Double("free"),
    Enumerated("mode", enumerators=["OFF", "ON", "STANDBY"], initial="on"),
    Enumerated("sparse", enumerators={"2": "A", "7": "B"}),
    Mask("status", bits=BITS, initial="POWER|SHUTTER"),
    Mask("raw"),
    IntegerArray("pos", range=(-5, 5), initial="1 2 3"),
    DoubleArray("coeffs", initial=[0.5, 1], format="%.3f"),
]


@pytest.mark.parametrize("kw", DESCRIBED, ids=lambda k: k.name)
def test_describeRoundTrip(kw):
    d = kw.describe()
    assert d["name"] == kw.name
    assert d["type"] == kw.typeName
    for field in ("units", "description", "format", "readonly", "writeonly", "initial"):
        assert field in d
    copy = fromDescription(d)
    assert type(copy) is type(kw)
    assert copy.describe() == d
    assert copy.value is None


def test_describeIsPlainData():
    import json

    for kw in DESCRIBED:
        assert json.loads(json.dumps(kw.describe())) == kw.describe()


def test_describeContents():
    d = Enumerated("mode", enumerators=["OFF", "ON"]).describe()
    assert d["enumerators"] == {"0": "OFF", "1": "ON"}
    assert "bits" not in d
    d = Mask("m", bits=["A", "B"], initial=3).describe()
    assert d["bits"] == {"0": "A", "1": "B"}
    assert d["initial"] == 3
    assert Integer("i").describe()["range"] == [INT32_MIN, INT32_MAX]
    assert Double("d").describe()["range"] is None


def test_persist():
    """persist is a boolean on every type, False by default, and not described.

    Whether a dispatcher keeps a value across restarts is its owner's policy,
    like period and hooks: clients never see it.
    """
    for cls, extra in ((Double, {}), (Enumerated, {"enumerators": ["A"]}), (Mask, {}),
                       (String, {}), (IntegerArray, {})):
        assert cls("kw", **extra).persist is False
        kw = cls("kw", persist=True, **extra)
        assert kw.persist is True
        assert "persist" not in kw.describe()
        assert fromDescription(kw.describe()).persist is False


def test_fromDescriptionTolerantButStrict():
    kw = fromDescription({"name": "x", "type": "float", "future": 1, "range": [0, 1]})
    assert isinstance(kw, Double)
    assert kw.range == (0.0, 1.0)
    assert isinstance(fromDescription({"name": "x"}), Basic)
    with pytest.raises(BadValue, match="unknown keyword type"):
        fromDescription({"name": "x", "type": "quaternion"})
    with pytest.raises(BadValue, match="without a name"):
        fromDescription({"type": "double"})
    with pytest.raises(BadValue, match="must be a mapping"):
        fromDescription(["x"])
    with pytest.raises(BadValue, match="bad enumerators"):
        fromDescription({"name": "x", "type": "enumerated"})


def test_fromTomlLikeTable():
    kw = fromDescription(
        {"name": "MODE", "type": "enumerated", "enumerators": ["OFF", "ON"], "initial": "OFF"}
    )
    assert kw.initial == 0


# -- value state --------------------------------------------------------------


class Clock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self):
        self.now += 0.5
        return self.now


def clocked(kw):
    kw.clock = Clock()
    return kw


def test_setPublishes():
    kw = clocked(Double("temp", range=(0, 400)))
    seen = []
    kw.addListener(lambda k: seen.append((k.value, k.sequence, k.timestamp)))
    assert kw.value is None and kw.timestamp is None and kw.sequence == 0
    assert kw.set("20") is True
    assert kw.value == 20.0
    assert kw.ascii == "20.0"
    assert kw.sequence == 1
    assert kw.timestamp == 1000.5
    assert kw.set(20) is False
    assert kw.sequence == 1
    assert kw.set(20, force=True) is True
    assert kw.sequence == 2
    assert kw.set(21.5) is True
    assert seen == [(20.0, 1, 1000.5), (20.0, 2, 1001.0), (21.5, 3, 1001.5)]


def test_setBadValueStoresNothing():
    kw = Double("temp", range=(0, 400))
    kw.set(1)
    seen = []
    kw.addListener(seen.append)
    with pytest.raises(BadValue):
        kw.set(500)
    with pytest.raises(BadValue):
        kw.set("abc")
    assert kw.value == 1.0 and kw.sequence == 1 and seen == []


def test_checkRejects():
    def check(value):
        if value % 2:
            raise BadValue("odd")

    kw = Integer("even", check=check)
    kw.set(2)
    with pytest.raises(BadValue, match="odd"):
        kw.set(3)
    assert kw.value == 2 and kw.sequence == 1


def test_valueWithColonAndNewlines():
    kw = String("msg")
    text = "a: b\nc:\r\n\x00:"
    assert kw.set(text)
    assert kw.value == text and kw.ascii == text


def test_setTypes():
    kw = Integer("i")
    kw.set(True)
    assert kw.value == 1 and type(kw.value) is int
    assert kw.set("1") is False


def test_removeListenerAndStrongReference():
    kw = Integer("i")
    seen = []
    kw.addListener(lambda k: seen.append(k.value))  # nothing else references it
    fn = seen.append
    kw.addListener(fn)
    kw.set(1)
    kw.removeListener(fn)
    kw.removeListener(fn)  # unknown: ignored
    kw.set(2)
    assert seen == [1, kw, 2]
    with pytest.raises(TypeError):
        kw.addListener(5)


def test_listenerErrorsIsolated():
    kw = Integer("i")
    seen = []

    def bad(k):
        raise RuntimeError("boom")

    kw.addListener(bad)
    kw.addListener(lambda k: seen.append(k.value))
    assert kw.set(1) is True
    assert kw.set(2) is True
    assert seen == [1, 2]
    assert kw.listenerErrors == 2
    assert isinstance(kw.lastListenerError, RuntimeError)
    assert kw.value == 2


def test_reentrantSetIsQueued():
    kw = Integer("i")
    seen = []

    def clamp(k):
        seen.append(k.value)
        if k.value > 10:
            assert k.set(10) is True
            assert k.set(10) is False  # same as the queued value
            assert k.value > 10  # applied after this listener returns

    kw.addListener(clamp)
    kw.addListener(lambda k: seen.append(("second", k.value)))
    assert kw.set(50) is True
    assert seen == [50, ("second", 50), 10, ("second", 10)]
    assert kw.value == 10 and kw.sequence == 2
    assert kw.listenerErrors == 0


def test_reentrantBadValueReachesListener():
    kw = Integer("i", range=(0, 10))
    errors = []

    def listener(k):
        try:
            k.set(99)
        except BadValue as e:
            errors.append(e)

    kw.addListener(listener)
    kw.set(1)
    assert len(errors) == 1 and kw.value == 1


def test_reentrantLoopIsBounded():
    kw = Integer("i")
    kw.addListener(lambda k: k.set(k.value + 1))
    assert kw.set(0) is True
    assert kw.value == kw.reentryLimit
    assert kw.listenerErrors == 1
    assert "nested set()" in str(kw.lastListenerError)
    # the guard resets: the keyword still works afterwards
    kw.removeListener(kw._listeners[0])
    assert kw.set(-1) is True


def test_forcedReentrantSetIsBounded():
    kw = Boolean("cmd")
    kw.addListener(lambda k: k.set(False, force=True))
    kw.set(True)
    assert kw.value is False
    assert kw.sequence == kw.reentryLimit + 1


def test_begin():
    kw = Integer("i", initial=100)
    assert kw.begin() is True
    assert kw.value == 100 and kw.sequence == 1
    assert kw.begin() is False
    assert Integer("j").begin() is False
    already = Integer("k", initial=1)
    already.set(5)
    assert already.begin() is False and already.value == 5


# -- hooks ------------------------------------------------------------------


def test_hookDefaults():
    kw = Integer("i")
    assert kw.check(3) is None
    assert kw.prewrite(3) == 3
    assert kw.write(3) is None
    assert kw.preread() is None
    assert kw.read() is None
    assert kw.postread(None) is None
    assert kw.value is None
    kw.postwrite(3)
    assert kw.value == 3
    assert kw.read() == 3
    kw.postread(4)
    assert kw.value == 4 and kw.sequence == 2


def test_hookCallablesReplaceMethods():
    calls = []
    kw = Integer(
        "i",
        check=lambda v: calls.append(("check", v)),
        prewrite=lambda v: v * 2,
        write=lambda v: calls.append(("write", v)),
        postwrite=lambda v: calls.append(("postwrite", v)),
        preread=lambda: calls.append("preread"),
        read=lambda: 42,
        postread=lambda v: calls.append(("postread", v)),
    )
    assert kw.prewrite(2) == 4
    kw.write(4)
    kw.postwrite(4)
    kw.preread()
    assert kw.read() == 42
    kw.postread(42)
    kw.set(1)
    assert calls == [
        ("write", 4),
        ("postwrite", 4),
        "preread",
        ("postread", 42),
        ("check", 1),
    ]
    assert Integer("other").read() is None  # the class is untouched


def test_subclassHooks():
    class Heartbeat(Integer):
        def read(self):
            return (self.value or 0) + 1

    kw = Heartbeat("beat", initial=0)
    kw.begin()
    kw.postread(kw.read())
    assert kw.value == 1
    assert fromDescription(kw.describe()).typeName == "integer"


# -- period -------------------------------------------------------------------


class FakeService:
    def __init__(self):
        self.calls = []

    def schedulePeriod(self, keyword, seconds):
        self.calls.append((keyword, seconds))


def test_periodStoredWithoutService():
    kw = Integer("i")
    assert kw.periodSeconds is None
    kw.period(0.5)
    assert kw.periodSeconds == 0.5


def test_periodSchedulesWithService():
    kw = Integer("i")
    kw.service = FakeService()
    kw.period(2)
    assert kw.periodSeconds == 2
    assert kw.service.calls == [(kw, 2)]


@pytest.mark.parametrize("seconds", [0, -1, math.nan, math.inf, "1", True, None])
def test_badPeriod(seconds):
    kw = Integer("i")
    kw.service = FakeService()
    with pytest.raises(BadValue, match="^I: bad period: "):
        kw.period(seconds)
    assert kw.periodSeconds is None and kw.service.calls == []


def test_repr():
    kw = Double("temp", units="K")
    kw.set(20)
    assert repr(kw) == "<Double TEMP=20.0 K seq=1>"
    assert kw != Double("temp", units="K")  # identity equality
