"""Tests for cauldron.expressions: parsing, operand forms, and refusing anything unsafe."""

import subprocess
import sys
import time

import pytest

from cauldron import expressions
from cauldron.expressions import Value, parse

TEMP = ("demo", "TEMP")
MODE = ("demo", "MODE")


def values(temp=3.0, mode=(1, "On")):
    return {TEMP: Value(temp, str(temp)), MODE: Value(*mode)}


def test_operands_in_order_of_first_use_with_ktl_case():
    e = parse("$Demo.temp > 3 and $demo.MODE == 'On' or $demo.TEMP < 0")
    assert e.operands == [TEMP, MODE]
    assert e.text == "$Demo.temp > 3 and $demo.MODE == 'On' or $demo.TEMP < 0"


def test_numbers_compare_with_the_binary_form():
    e = parse("$demo.TEMP > 30")
    assert e.evaluate(values(33.0)) is True
    assert e.evaluate(values(3.0)) is False


def test_strings_compare_with_the_ascii_form():
    # MODE is enumerated: binary 1, ascii "On"
    assert parse('$demo.MODE == "On"').evaluate(values()) is True
    assert parse('"On" == $demo.MODE').evaluate(values()) is True
    assert parse("$demo.MODE == 1").evaluate(values()) is True
    assert parse('$demo.MODE != "Off"').evaluate(values()) is True
    assert parse('$demo.MODE in ("On", "Standby")').evaluate(values()) is True
    assert parse('$demo.MODE not in ["Off", "Standby"]').evaluate(values()) is True
    assert parse("$demo.MODE in (1, 2)").evaluate(values()) is True


def test_case_insensitive_strings_on_request():
    e = parse('$demo.MODE == "ON"')
    assert e.evaluate(values()) is False
    assert e.evaluate(values(), case=False) is True


def test_compound_chained_and_arithmetic():
    v = values(4.0)
    assert parse('$demo.MODE == "On" and $demo.TEMP < 5').evaluate(v) is True
    assert parse('$demo.MODE == "Off" or $demo.TEMP < 5').evaluate(v) is True
    assert parse('not ($demo.MODE == "Off")').evaluate(v) is True
    assert parse("3 < $demo.TEMP < 5").evaluate(v) is True
    assert parse("3 < $demo.TEMP < 4").evaluate(v) is False
    assert parse("$demo.TEMP * 2 + 1 == 9").evaluate(v) is True
    assert parse("-$demo.TEMP <= -4 and $demo.MODE & 1").evaluate(v)
    assert parse("$demo.TEMP > $demo.MODE").evaluate(v) is True  # both binary


def test_dollar_inside_a_string_literal_is_not_an_operand():
    e = parse("$demo.MSG == '$demo.TEMP costs $5'")
    assert e.operands == [("demo", "MSG")]
    assert e.evaluate({("demo", "MSG"): Value("x", "$demo.TEMP costs $5")}) is True


def test_plain_values_stand_for_both_forms():
    assert parse("$demo.TEMP >= 2").evaluate({TEMP: 2}) is True


def test_missing_operand_value():
    with pytest.raises(KeyError, match=r"\$demo\.MODE"):
        parse("$demo.MODE == 1").evaluate({TEMP: 1})


@pytest.mark.parametrize(
    "text, construct",
    [
        ("__import__('os').system('true')", "call"),
        ("$demo.TEMP.__class__", "attribute"),
        ("(1).__class__.__bases__", "attribute"),
        ("$demo.TEMP[0]", "subscript"),
        ("lambda: 1", "lambda"),
        ("[x for x in (1, 2)]", "comprehension"),
        ("{x for x in (1, 2)}", "comprehension"),
        ("(x for x in (1,))", "generator"),
        ("{'a': 1}", "Dict"),
        ("open", "name 'open'"),
        ("os", "name 'os'"),
        ("$demo.TEMP if 1 else 2", "IfExp"),
        ("f'{1}' == '1'", "JoinedStr"),
        ("b'x' == b'x'", "bytes"),
        ("... == ...", "ellipsis"),
        ("1 is 1", "operator Is"),
        ("_ktl_operand_0 == 1", "name"),
    ],
)
def test_unsafe_constructs_are_rejected_by_name(text, construct):
    with pytest.raises(ValueError) as info:
        parse(text)
    assert construct.lower() in str(info.value).lower()


def test_forged_placeholder_cannot_reach_an_operand():
    with pytest.raises(ValueError, match="name"):
        parse("$demo.TEMP == 1 and _ktl_operand_0 == 1")


def test_syntax_errors_and_bad_operands_are_value_errors():
    for text in ["", "   ", "$demo.TEMP >", "$demo", "$.TEMP > 1", "1 +", "x := 1"]:
        with pytest.raises(ValueError):
            parse(text)
    with pytest.raises(TypeError):
        parse(42)


def test_resource_bombs_are_refused():
    with pytest.raises(ValueError, match="too long"):
        parse("'a' * 100000000 == 'a'").evaluate({})
    with pytest.raises(ValueError, match="exponent"):
        parse("2 ** 100000000 > 1").evaluate({})
    with pytest.raises(ValueError, match="shift"):
        parse("1 << 100000000 > 1").evaluate({})
    with pytest.raises(ValueError, match="longer"):
        parse("1" + " + 1" * expressions.MAX_LENGTH)
    with pytest.raises(ValueError, match="nested"):
        parse("(" * 3000 + "1" + ")" * 3000)


@pytest.mark.parametrize(
    "text, operation",
    [
        # small exponents, huge results: bounding the exponent alone let
        # these run for seconds to minutes
        ("((9 ** 256) ** 256) ** 256 > 1", "exponentiation"),
        ("(((9 ** 256) ** 256) ** 256) ** 256 > 1", "exponentiation"),
        ("(9 ** 256) ** 256 ** 2 > 1", "exponentiation"),
        ("2 ** 100001 > 1", "exponentiation"),
        ("(1 << 99000) << 2000 > 1", "left shift"),
        ("(1 << 60000) * (1 << 60000) > 1", "multiplication"),
        ("((3 ** 25000) * (3 ** 25000)) * (3 ** 25000) > 1", "multiplication"),
        ("'ab' * 6000 == 'a'", "repetition"),
        ("('a' * 10000) + ('a' * 10000) == 'a'", "concatenation"),
        ("[0] * 10000 + [1] == [1]", "concatenation"),
        ("'%2000000000d' % 1 == '1'", "string formatting"),
        ("2.0 ** 100000 > 1", "exponentiation"),
        ("(10 ** 400) * 1.0 > 1", "multiplication"),
        ("(10 ** 400) ** 0.5 > 1", "exponentiation"),
    ],
)
def test_results_too_large_are_refused_fast(text, operation):
    start = time.monotonic()
    with pytest.raises(ValueError, match=operation):
        parse(text).evaluate({})
    assert time.monotonic() - start < 0.5


def test_large_but_bounded_results_still_work():
    assert parse("2 ** 99999 > 1").evaluate({}) is True
    assert parse("(1 << 99999) > 0").evaluate({}) is True
    assert parse("(2 ** 50000) * (2 ** 49000) > 0").evaluate({}) is True
    assert parse("2 ** -100000000 == 0.0").evaluate({}) is True
    assert parse("1 ** 10000000000 == 1 and (-1) ** 10000000001 == -1").evaluate({}) is True
    assert parse("2.0 ** 0.5 > 1.41").evaluate({}) is True
    assert parse("'a' * 10000 > 'a'").evaluate({}) is True


def test_error_message_shows_operands_as_written():
    with pytest.raises(ValueError, match=r"\$demo\.TEMP"):
        parse("$demo.TEMP.real > 1")


def test_deep_but_short_expressions_are_refused_before_evaluation():
    with pytest.raises(ValueError, match="nested"):
        parse("1" + "+1" * 900 + " > 0")
    assert parse("1" + "+1" * 50 + " > 0").evaluate({}) is True


def test_pure_python_no_twisted_nor_zmq():
    code = ("import cauldron.expressions, sys; print(sorted(m for m in sys.modules"
            " if m.split('.')[0] in ('twisted', 'zmq', 'txzmq', 'crochet')))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            timeout=60)
    assert (result.returncode, result.stdout.strip()) == (0, "[]"), result.stderr
