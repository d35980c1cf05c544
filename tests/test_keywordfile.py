"""Tests for cauldron.keywordfile: TOML keyword files and their error messages."""

import os

import pytest

from cauldron import keywords
from cauldron.errors import CauldronError, ConfigError
from cauldron.keywordfile import FIELDS, keywordsFromMapping, loadKeywords

EXAMPLE = os.path.join(os.path.dirname(__file__), os.pardir, "docs", "examples", "demo.toml")


def writeFile(tmp_path, text, name="demo.toml"):
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return str(path)


def loadError(tmp_path, text, name="demo.toml"):
    """The ConfigError message loading ``text`` gives."""
    path = writeFile(tmp_path, text, name)
    with pytest.raises(ConfigError) as info:
        loadKeywords(path)
    message = str(info.value)
    assert message.startswith(path + ": "), message
    assert "\n" not in message
    return message


def test_designExample(tmp_path):
    """The example of DESIGN.md loads as typed keywords, in file order."""
    path = writeFile(
        tmp_path,
        """
[TEMP]
type = "double"
units = "K"
initial = 20.0
range = [0.0, 400.0]
description = "Detector temperature"

[MODE]
type = "enumerated"
enumerators = ["OFF", "ON", "STANDBY"]
initial = "OFF"
""",
    )
    temp, mode = loadKeywords(path)
    assert isinstance(temp, keywords.Double)
    assert (temp.name, temp.units, temp.initial, temp.range) == ("TEMP", "K", 20.0, (0.0, 400.0))
    assert temp.description == "Detector temperature"
    assert isinstance(mode, keywords.Enumerated)
    assert mode.enumerators == {0: "OFF", 1: "ON", 2: "STANDBY"}
    assert mode.initial == 0


def test_everyField(tmp_path):
    """Every documented field reaches the keyword; enumerators and bits may be tables."""
    path = writeFile(
        tmp_path,
        """
[mode]
type = "enum"
enumerators = { 1 = "ON", 0 = "OFF", 5 = "FAULT" }
initial = 5
readonly = true
format = "%s"

[FLAGS]
type = "mask"
bits = { 0 = "A", 3 = "D" }
initial = "A, D"

[CMD]
type = "string"
writeonly = true

[GAINS]
type = "integer array"
range = [0, 10]
initial = [1, 2, 3]
period = 0.5
persist = true
""",
    )
    mode, flags, cmd, gains = loadKeywords(path)
    assert mode.name == "MODE"
    assert mode.enumerators == {0: "OFF", 1: "ON", 5: "FAULT"}
    assert mode.initial == 5 and mode.readonly and mode.format == "%s"
    assert flags.bits == {0: "A", 3: "D"} and flags.initial == 9
    assert cmd.writeonly and cmd.initial is None
    assert isinstance(gains, keywords.IntegerArray)
    assert gains.range == (0, 10) and gains.initial == [1, 2, 3]
    assert gains.periodSeconds == 0.5
    assert gains.persist and not mode.persist


def test_everyKnownTypeName(tmp_path):
    """Any type name cauldron.keywords knows is accepted, spaces included."""
    for typeName, cls in keywords.TYPES.items():
        extra = 'enumerators = ["A"]' if issubclass(cls, keywords.Enumerated) else ""
        path = writeFile(tmp_path, '[K]\ntype = "%s"\n%s\n' % (typeName, extra))
        [kw] = loadKeywords(path)
        assert type(kw) is cls, typeName


def test_exampleFile():
    """docs/examples/demo.toml loads."""
    loaded = loadKeywords(EXAMPLE)
    names = [kw.name for kw in loaded]
    assert "TEMP" in names and "MODE" in names and "STATUS" in names


def test_pathLike(tmp_path):
    """A pathlib path works as well as a string."""
    path = tmp_path / "k.toml"
    path.write_text('[A]\ntype = "string"\n')
    assert [kw.name for kw in loadKeywords(path)] == ["A"]


def test_freshObjects(tmp_path):
    """Each load gives new keyword objects (they hold state)."""
    path = writeFile(tmp_path, '[A]\ntype = "string"\n')
    assert loadKeywords(path)[0] is not loadKeywords(path)[0]


def test_rangeShape(tmp_path):
    """A one-element range names file, keyword and field, and shows the value."""
    message = loadError(tmp_path, '[TEMP]\ntype = "double"\nrange = [1]\n')
    assert message.endswith("demo.toml: [TEMP] range: expected [min, max], got [1]")


def test_rangeNotNumbers(tmp_path):
    """A range of strings is rejected with the field named."""
    message = loadError(tmp_path, '[TEMP]\ntype = "double"\nrange = ["a", "b"]\n')
    assert '[TEMP] range: expected [min, max] numbers, got ["a", "b"]' in message


def test_rangeReversed(tmp_path):
    """A range whose minimum is above its maximum names the field."""
    message = loadError(tmp_path, '[TEMP]\ntype = "double"\nrange = [5.0, 1.0]\n')
    assert "[TEMP] range: minimum 5.0 is above maximum 1.0" in message


def test_rangeOnString(tmp_path):
    """A range on a type without one is rejected."""
    message = loadError(tmp_path, '[S]\ntype = "string"\nrange = [0, 1]\n')
    assert "[S] range: a string keyword has no range" in message


def test_unknownField(tmp_path):
    """A misspelt field is an error naming it, not silently ignored."""
    message = loadError(tmp_path, '[TEMP]\ntype = "double"\nunit = "K"\n')
    assert "[TEMP] unit: unknown field" in message


def test_missingType(tmp_path):
    """type is required."""
    message = loadError(tmp_path, '[TEMP]\nunits = "K"\n')
    assert "[TEMP] type: missing" in message


def test_unknownType(tmp_path):
    """An unknown type lists the known ones."""
    message = loadError(tmp_path, '[TEMP]\ntype = "quaternion"\n')
    assert '[TEMP] type: unknown type "quaternion"' in message
    assert "double" in message


def test_badInitial(tmp_path):
    """An initial value the type rejects names the keyword and field."""
    message = loadError(
        tmp_path, '[TEMP]\ntype = "double"\nrange = [0.0, 10.0]\ninitial = 20.0\n'
    )
    assert "[TEMP] initial: " in message and "above the maximum" in message


def test_badEnumerator(tmp_path):
    """An initial value outside the enumerators is rejected."""
    message = loadError(
        tmp_path, '[MODE]\ntype = "enumerated"\nenumerators = ["OFF", "ON"]\ninitial = "DIM"\n'
    )
    assert "[MODE] initial: " in message and "DIM" in message


def test_enumeratorsRequired(tmp_path):
    """An enumerated keyword without enumerators says which field is missing."""
    message = loadError(tmp_path, '[MODE]\ntype = "enumerated"\n')
    assert "[MODE] enumerators: " in message


def test_duplicateEnumerator(tmp_path):
    """Duplicate enumerator names are rejected with the field named."""
    message = loadError(
        tmp_path, '[MODE]\ntype = "enumerated"\nenumerators = ["ON", "on"]\n'
    )
    assert "[MODE] enumerators: " in message and "twice" in message


def test_enumeratorsOnInteger(tmp_path):
    """enumerators on a non-enumerated type is an error, not ignored."""
    message = loadError(tmp_path, '[N]\ntype = "integer"\nenumerators = ["A"]\n')
    assert "[N] enumerators: only an enumerated keyword" in message


def test_bitsOnInteger(tmp_path):
    """bits on a non-mask type is an error, not ignored."""
    message = loadError(tmp_path, '[N]\ntype = "integer"\nbits = ["A"]\n')
    assert "[N] bits: only a mask keyword" in message


def test_badBits(tmp_path):
    """A bit number out of range names the field."""
    message = loadError(tmp_path, '[F]\ntype = "mask"\nbits = { 99 = "X" }\n')
    assert "[F] bits: bit 99" in message


def test_badFlags(tmp_path):
    """readonly must be a boolean; both readonly and writeonly is an error."""
    message = loadError(tmp_path, '[A]\ntype = "string"\nreadonly = "yes"\n')
    assert '[A] readonly: expected true or false, got "yes"' in message
    message = loadError(tmp_path, '[A]\ntype = "string"\nreadonly = true\nwriteonly = true\n')
    assert "[A] readonly: " in message and "both" in message


def test_persist(tmp_path):
    """persist = true or false; anything else names file, keyword and field."""
    on, off = keywordsFromMapping({"A": {"type": "double", "persist": True},
                                   "B": {"type": "double", "persist": False}})
    assert (on.persist, off.persist) == (True, False)
    for value in ('"yes"', "1", "[true]"):
        message = loadError(tmp_path, '[A]\ntype = "string"\npersist = %s\n' % value)
        assert message.endswith("[A] persist: expected true or false, got %s" % value), message


def test_badStrings(tmp_path):
    """units, description and format must be strings."""
    for field in ("units", "description", "format"):
        message = loadError(tmp_path, '[A]\ntype = "string"\n%s = 3\n' % field)
        assert "[A] %s: expected a string, got 3" % field in message


def test_badFormat(tmp_path):
    """A format that cannot format the type names the field."""
    message = loadError(tmp_path, '[T]\ntype = "double"\nformat = "%d %d"\n')
    assert "[T] format: " in message


def test_badPeriod(tmp_path):
    """period must be a positive number of seconds."""
    for value in ("0", "-1", '"fast"', "true", "inf"):
        message = loadError(tmp_path, '[T]\ntype = "double"\nperiod = %s\n' % value)
        assert "[T] period: expected a positive number of seconds" in message


def test_notATable(tmp_path):
    """A top-level value that is not a table is an error naming it."""
    message = loadError(tmp_path, 'TEMP = 3\n')
    assert "TEMP = 3: expected a table [TEMP]" in message


def test_caseDuplicates(tmp_path):
    """Two tables naming the same keyword in different case are an error."""
    message = loadError(tmp_path, '[temp]\ntype = "double"\n[TEMP]\ntype = "double"\n')
    assert "[TEMP]: same keyword as [temp]" in message


def test_badName(tmp_path):
    """A keyword name with a space is rejected, naming it."""
    message = loadError(tmp_path, '["MY TEMP"]\ntype = "double"\n')
    assert "[MY TEMP]" in message


def test_empty(tmp_path):
    """A file defining no keyword is an error, not an empty service."""
    message = loadError(tmp_path, "# nothing\n")
    assert "no keywords defined" in message


def test_invalidToml(tmp_path):
    """Invalid TOML names the file and the line."""
    message = loadError(tmp_path, '[TEMP]\ntype = "double"\nunits = K\n')
    assert "invalid TOML" in message and "line 3" in message


def test_notUtf8(tmp_path):
    """Undecodable bytes are a ConfigError, not a UnicodeDecodeError."""
    path = tmp_path / "demo.toml"
    path.write_bytes(b'[A]\ntype = "string"\ndescription = "\xff"\n')
    with pytest.raises(ConfigError) as info:
        loadKeywords(str(path))
    assert str(info.value).startswith(str(path))


def test_missingFile(tmp_path):
    """A missing file is a ConfigError naming it."""
    path = str(tmp_path / "nope.toml")
    with pytest.raises(ConfigError) as info:
        loadKeywords(path)
    assert str(info.value) == "%s: keyword file not found" % path


def test_directory(tmp_path):
    """A directory is a ConfigError, not an IsADirectoryError."""
    with pytest.raises(ConfigError):
        loadKeywords(str(tmp_path))


def test_errorTree():
    """ConfigError is a CauldronError, so callers catch one class."""
    assert issubclass(ConfigError, CauldronError)


def test_fromMapping():
    """keywordsFromMapping names its source in messages."""
    [kw] = keywordsFromMapping({"A": {"type": "int", "initial": 3}})
    assert kw.initial == 3
    with pytest.raises(ConfigError) as info:
        keywordsFromMapping({"A": {"type": "int", "colour": 1}}, source="x")
    assert str(info.value).startswith("x: [A] colour: unknown field")


def test_fieldsDocumented():
    """The documented fields are exactly the accepted ones."""
    assert set(FIELDS) == {
        "type", "initial", "units", "range", "enumerators", "bits",
        "readonly", "writeonly", "description", "format", "period", "persist", "writers",
        "readers",
    }


def test_writersAndReaders():
    """writers/readers per keyword, or at the top of the file as every keyword's default."""
    temp, mode, secret = keywordsFromMapping({
        "writers": ["ops"],
        "TEMP": {"type": "double"},
        "MODE": {"type": "integer", "writers": ["obs-*", "ops"], "readers": []},
        "SECRET": {"type": "string", "readers": ["admin"]},
    })
    assert (temp.writers, temp.readers) == (("ops",), None)
    assert (mode.writers, mode.readers) == (("obs-*", "ops"), ())
    assert (secret.writers, secret.readers) == (("ops",), ("admin",))


@pytest.mark.parametrize("value", ['"ops"', "[1]", '[""]', "true"])
def test_badWritersNamed(tmp_path, value):
    """writers must be an array of key names or patterns; the error names file, keyword, field."""
    path = tmp_path / "kw.toml"
    path.write_text('[TEMP]\ntype = "double"\nwriters = %s\n' % value)
    with pytest.raises(ConfigError, match=r"kw.toml: \[TEMP\] writers: expected an array"):
        loadKeywords(path)
