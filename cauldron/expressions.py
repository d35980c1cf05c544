"""Safe ``waitFor`` expressions: ``'$demo.MODE == "ON" and $demo.TEMP < 5'``.

Pure Python (no twisted) so it is testable alone.  An expression is Python
syntax where ``$service.KEYWORD`` names a keyword.  It is never handed to
``eval``: the text is parsed with :mod:`ast` (operands replaced by
placeholder names first) and only a small set of node types is accepted --
boolean operators, comparisons, arithmetic, unary operators, literals,
lists and tuples.  Calls, attributes, subscripts, lambdas, comprehensions
and bare names are rejected with a :class:`ValueError` naming the construct,
so a string from a config file or a user can never run code.

Which value of a keyword an operand stands for (KTL keywords have two):

* compared with a ``str`` (or tested ``in`` a list or tuple holding one): the
  keyword's **ascii** form (so ``$svc.MODE == "On"`` and
  ``$svc.MODE in ("On", "Standby")`` compare an enumerated keyword by name);
* everywhere else (numbers, arithmetic, truth tests, keyword vs keyword):
  its **binary** (native) form.

With ``case=False`` string comparisons ignore case, as KTL's ``waitFor``
does by default.  Unlike KTL, bare words are not strings: quote them.

Evaluation is bounded too, since it runs in the reactor thread: an integer
result of ``**``, ``<<`` or ``*`` may have at most ``MAX_INT_BITS`` (100,000)
bits (checked before computing it), a string, list or tuple built by ``*``
or ``+`` at most ``MAX_LENGTH`` (10,000) items, a float overflow is an
error, and ``%`` string formatting is not allowed.  Each refusal is a
:class:`ValueError` naming the operation.
"""

import ast
import math
import operator
import re
from collections import namedtuple

__all__ = ["MAX_DEPTH", "MAX_INT_BITS", "MAX_LENGTH", "Expression", "Value", "parse"]

#: one operand's two forms; any object with ``binary`` and ``ascii`` will do
Value = namedtuple("Value", "binary ascii")

#: bounds that keep a hostile expression from eating memory or CPU: the
#: source length, and the length of a string, list or tuple it builds
MAX_LENGTH = 10000
#: the most bits an integer result of ``**``, ``<<`` or ``*`` may have; the
#: bound is on the result (``((9 ** 256) ** 256) ** 256`` is refused at once)
MAX_INT_BITS = 100_000
#: how deeply an expression may nest
MAX_DEPTH = 100

_OPERAND = re.compile(r"\$([A-Za-z_]\w*)\.([A-Za-z_]\w*)")

_BINARY = {
    ast.Add: operator.add,
    ast.Sub: operator.sub,
    ast.Mult: operator.mul,
    ast.Div: operator.truediv,
    ast.FloorDiv: operator.floordiv,
    ast.Mod: operator.mod,
    ast.Pow: operator.pow,
    ast.BitAnd: operator.and_,
    ast.BitOr: operator.or_,
    ast.BitXor: operator.xor,
    ast.LShift: operator.lshift,
    ast.RShift: operator.rshift,
}
_UNARY = {
    ast.Not: operator.not_,
    ast.USub: operator.neg,
    ast.UAdd: operator.pos,
    ast.Invert: operator.invert,
}
_COMPARE = {
    ast.Eq: operator.eq,
    ast.NotEq: operator.ne,
    ast.Lt: operator.lt,
    ast.LtE: operator.le,
    ast.Gt: operator.gt,
    ast.GtE: operator.ge,
    ast.In: lambda a, b: a in b,
    ast.NotIn: lambda a, b: a not in b,
}
_LITERALS = (int, float, complex, str, bool, type(None))


def parse(text):
    """Parse ``text`` into an :class:`Expression`; ValueError if it is not allowed."""
    return Expression(text)


class Expression:
    """A parsed, validated expression.

    :ivar text: the source text.
    :ivar operands: ``(service, KEYWORD)`` pairs in order of first use
        (service lower-cased, keyword upper-cased, as KTL names them).
    """

    def __init__(self, text):
        if not isinstance(text, str):
            raise TypeError(f"an expression must be a str, not {type(text).__name__}")
        if len(text) > MAX_LENGTH:
            raise ValueError(f"expression longer than {MAX_LENGTH} characters")
        self.text = text
        self.operands = []
        self._names = {}  # placeholder -> (service, KEYWORD)
        source = self._substitute(text)
        if not source.strip():
            raise ValueError("empty expression")
        try:
            tree = ast.parse(source.strip(), mode="eval")
        except SyntaxError as e:
            raise ValueError(f"invalid expression {text!r}: {e.msg}") from None
        except (RecursionError, MemoryError):
            raise ValueError(f"expression too deeply nested: {text[:60]!r}...") from None
        self._source = source.strip()
        try:
            self._check(tree.body)
        except RecursionError:
            raise ValueError(f"expression too deeply nested: {text[:60]!r}...") from None
        self._tree = tree.body

    def __repr__(self):
        return f"<Expression {self.text!r}>"

    # -- parsing

    def _placeholderPrefix(self, text):
        prefix = "_ktl_operand_"
        while prefix in text:  # the user cannot forge a placeholder
            prefix = "_" + prefix
        return prefix

    def _substitute(self, text):
        """Replace ``$svc.KW`` outside string literals by placeholder names."""
        prefix = self._placeholderPrefix(text)
        byOperand = {}
        out, i, n = [], 0, len(text)
        while i < n:
            c = text[i]
            if c in "'\"":
                end = _skipString(text, i)
                out.append(text[i:end])
                i = end
            elif c == "$":
                match = _OPERAND.match(text, i)
                if match is None:
                    raise ValueError(
                        f"invalid operand at {text[i:i + 20]!r}: write $service.KEYWORD"
                    )
                operand = (match.group(1).lower(), match.group(2).upper())
                if operand not in byOperand:
                    name = f"{prefix}{len(byOperand)}"
                    byOperand[operand] = name
                    self._names[name] = operand
                    self.operands.append(operand)
                out.append(f" {byOperand[operand]} ")
                i = match.end()
            else:
                out.append(c)
                i += 1
        return "".join(out)

    def _shown(self, node):
        """The source of ``node`` with operands spelled as the user wrote them."""
        segment = ast.get_source_segment(self._source, node) or type(node).__name__
        for name, (service, keyword) in self._names.items():
            segment = segment.replace(name, f"${service}.{keyword}")
        return " ".join(segment.split())

    def _reject(self, node, what):
        raise ValueError(f"{what} not allowed in an expression: {self._shown(node)!r}")

    def _check(self, node, depth=0):
        if depth > MAX_DEPTH:
            raise ValueError(f"expression too deeply nested (more than {MAX_DEPTH} levels)")
        depth += 1
        if isinstance(node, ast.BoolOp):
            for value in node.values:
                self._check(value, depth)
        elif isinstance(node, ast.Compare):
            for op in node.ops:
                if type(op) not in _COMPARE:
                    self._reject(node, f"operator {type(op).__name__}")
            self._check(node.left, depth)
            for value in node.comparators:
                self._check(value, depth)
        elif isinstance(node, ast.BinOp):
            if type(node.op) not in _BINARY:
                self._reject(node, f"operator {type(node.op).__name__}")
            self._check(node.left, depth)
            self._check(node.right, depth)
        elif isinstance(node, ast.UnaryOp):
            if type(node.op) not in _UNARY:
                self._reject(node, f"operator {type(node.op).__name__}")
            self._check(node.operand, depth)
        elif isinstance(node, ast.Constant):
            if not isinstance(node.value, _LITERALS):
                self._reject(node, f"literal of type {type(node.value).__name__}")
        elif isinstance(node, ast.Name):
            if node.id not in self._names:
                self._reject(node, f"name {node.id!r} (operands are written $service.KEYWORD)")
        elif isinstance(node, (ast.List, ast.Tuple)):
            for element in node.elts:
                self._check(element, depth)
        else:
            what = {
                ast.Call: "call",
                ast.Attribute: "attribute access",
                ast.Subscript: "subscript",
                ast.Lambda: "lambda",
                ast.ListComp: "comprehension",
                ast.SetComp: "comprehension",
                ast.DictComp: "comprehension",
                ast.GeneratorExp: "generator expression",
                ast.NamedExpr: "assignment expression",
                ast.Starred: "starred expression",
            }.get(type(node), type(node).__name__)
            self._reject(node, what)

    # -- evaluation

    def evaluate(self, values, case=True):
        """Evaluate with ``values[(service, KEYWORD)]`` giving each operand.

        A value is a :class:`Value`, anything with ``binary`` and ``ascii``
        attributes (e.g. a client ``KeywordValue``), or a plain value used for
        both forms.  ``case=False`` makes string comparisons case-insensitive.
        """
        return _Evaluator(self, values, case).value(self._tree)


class _Evaluator:
    def __init__(self, expression, values, case):
        self.names = expression._names
        self.values = values
        self.case = case

    def operand(self, node, form):
        service, keyword = self.names[node.id]
        try:
            value = self.values[(service, keyword)]
        except KeyError:
            raise KeyError(f"no value given for ${service}.{keyword}") from None
        if hasattr(value, "binary") and hasattr(value, "ascii"):
            return getattr(value, form)
        return value

    def value(self, node, form="binary"):
        if isinstance(node, ast.Name):
            return self.operand(node, form)
        if isinstance(node, ast.Constant):
            return node.value
        if isinstance(node, ast.BoolOp):
            result = None
            for item in node.values:
                result = self.value(item)
                if isinstance(node.op, ast.And) and not result:
                    return result
                if isinstance(node.op, ast.Or) and result:
                    return result
            return result
        if isinstance(node, ast.Compare):
            return self.compare(node)
        if isinstance(node, ast.BinOp):
            return self.binop(node)
        if isinstance(node, ast.UnaryOp):
            return _UNARY[type(node.op)](self.value(node.operand))
        if isinstance(node, ast.List):
            return [self.value(e) for e in node.elts]
        if isinstance(node, ast.Tuple):
            return tuple(self.value(e) for e in node.elts)
        raise ValueError(f"unexpected node {type(node).__name__}")  # _check prevents this

    def side(self, node, other):
        """A comparison side: an operand takes its ascii form when ``other`` is text."""
        if isinstance(node, ast.Name):
            return self.operand(node, "ascii" if _textual(other) else "binary")
        return self.value(node)

    def compare(self, node):
        nodes = [node.left] + list(node.comparators)
        # Evaluate non-operand sides first: they decide which form operands take.
        plain = {i: self.value(n) for i, n in enumerate(nodes) if not isinstance(n, ast.Name)}
        for i, op in enumerate(node.ops):
            left = plain[i] if i in plain else self.side(nodes[i], plain.get(i + 1))
            right = plain[i + 1] if i + 1 in plain else self.side(nodes[i + 1], plain.get(i))
            if not self.case:
                left, right = _fold(left), _fold(right)
            if not _COMPARE[type(op)](left, right):
                return False
        return True

    def binop(self, node):
        left, right = self.value(node.left), self.value(node.right)
        op = type(node.op)
        _checkSize(op, left, right)
        try:
            return _BINARY[op](left, right)
        except OverflowError:
            raise ValueError(
                f"{_OPERATION[op]} overflows: {_short(left)} and {_short(right)}"
            ) from None


_OPERATION = {
    ast.Add: "addition",
    ast.Sub: "subtraction",
    ast.Mult: "multiplication",
    ast.Div: "division",
    ast.FloorDiv: "floor division",
    ast.Mod: "modulo",
    ast.Pow: "exponentiation",
    ast.BitAnd: "bitwise and",
    ast.BitOr: "bitwise or",
    ast.BitXor: "bitwise xor",
    ast.LShift: "left shift",
    ast.RShift: "right shift",
}


def _short(value):
    text = repr(value) if not isinstance(value, int) or value.bit_length() < 200 else None
    if text is None:
        return f"an int of {value.bit_length()} bits"
    return text if len(text) <= 40 else text[:39] + "\u2026"


def _checkSize(op, left, right):
    """Refuse an operation whose RESULT would be too large to compute quickly.

    Bounding only the right operand is not enough: ``(9 ** 256) ** 256`` has
    a small exponent and a huge result.
    """
    what = _OPERATION[op]
    if op is ast.Pow and _isInt(left) and _isInt(right) and right > 0 and abs(left) > 1:
        # log2 works on ints of any size; right > MAX_INT_BITS first keeps
        # the product a float
        if right > MAX_INT_BITS or math.log2(abs(left)) * right > MAX_INT_BITS:
            raise ValueError(
                f"{what} too large: {_short(left)} ** {_short(right)} would exceed "
                f"{MAX_INT_BITS} bits"
            )
    elif op is ast.LShift and _isInt(left) and _isInt(right) and left and right > 0:
        if abs(left).bit_length() + right > MAX_INT_BITS:
            raise ValueError(
                f"{what} too large: {_short(left)} << {_short(right)} would exceed "
                f"{MAX_INT_BITS} bits"
            )
    elif op is ast.Mult:
        if _isInt(left) and _isInt(right):
            if abs(left).bit_length() + abs(right).bit_length() > MAX_INT_BITS:
                raise ValueError(
                    f"{what} too large: {_short(left)} * {_short(right)} would exceed "
                    f"{MAX_INT_BITS} bits"
                )
        for a, b in ((left, right), (right, left)):
            if isinstance(a, (str, list, tuple)) and _isInt(b) and b * len(a) > MAX_LENGTH:
                raise ValueError(
                    f"repetition too long: {_short(a)} * {_short(b)} "
                    f"(at most {MAX_LENGTH} items)"
                )
    elif op is ast.Add:
        if isinstance(left, (str, list, tuple)) and isinstance(right, (str, list, tuple)):
            if len(left) + len(right) > MAX_LENGTH:
                raise ValueError(f"concatenation too long (at most {MAX_LENGTH} items)")
    elif op is ast.Mod and isinstance(left, str):
        # '%2000000000d' % 1 would build a 2 GB string
        raise ValueError(f"string formatting not allowed in an expression: {_short(left)} % ...")


def _textual(value):
    """A str, or a list/tuple holding one (the right side of ``in``)."""
    if isinstance(value, (list, tuple)):
        return any(isinstance(item, str) for item in value)
    return isinstance(value, str)


def _isInt(value):
    return isinstance(value, int)  # bool included


def _fold(value):
    if isinstance(value, str):
        return value.casefold()
    if isinstance(value, (list, tuple)):
        return type(value)(_fold(v) for v in value)
    return value


def _skipString(text, start):
    """The index just past the string literal starting at ``start``."""
    quote = text[start]
    triple = text.startswith(quote * 3, start)
    delimiter = quote * 3 if triple else quote
    i = start + len(delimiter)
    while i < len(text):
        if text[i] == "\\":
            i += 2
            continue
        if text.startswith(delimiter, i):
            return i + len(delimiter)
        if text[i] == "\n" and not triple:
            break
        i += 1
    return len(text)  # unterminated: ast.parse reports it
