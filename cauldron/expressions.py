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
does by default.  As in KTL, a bare word is a string: ``$svc.MODE ==
STANDBY`` means ``$svc.MODE == "STANDBY"``; quote text holding spaces,
operators or a leading ``$`` (``True``, ``False`` and ``None`` keep their
Python meaning).

Evaluation is bounded too, since it runs in the reactor thread, on every
broadcast of an operand (see :data:`MAX_SIZE`, :data:`MAX_STEPS`,
:data:`MAX_INT_BITS`).  The size of every value an operator would build is
worked out from its operands' sizes *before* it is built, and the work of
each evaluation is counted as it goes; constant parts are evaluated once, at
parse time, so ``$demo.X in (((1,)*10000,)*10000,)*10000`` is refused by
:func:`parse`, before any I/O.  A refusal is a :class:`BudgetExceeded` (a
:class:`ValueError`) naming the operation.  A float overflow is a
:class:`ValueError` too, and ``%`` string formatting is not allowed.
"""

import ast
import math
import operator
import re
from collections import namedtuple

__all__ = [
    "MAX_DEPTH",
    "MAX_INT_BITS",
    "MAX_LENGTH",
    "MAX_SIZE",
    "MAX_STEPS",
    "BudgetExceeded",
    "Expression",
    "Value",
    "parse",
]

#: one operand's two forms; any object with ``binary`` and ``ascii`` will do
Value = namedtuple("Value", "binary ascii")

#: the longest expression text, in characters
MAX_LENGTH = 10000
#: how deeply an expression may nest
MAX_DEPTH = 100
#: the largest value an operator may build, in units: one per item of a
#: list or tuple, counted recursively, one per character of a string, one
#: per 64 bits of an integer beyond the first (so ``[0] * 10000`` and
#: ``'a' * 10000`` are the largest of their kind)
MAX_SIZE = 10000
#: the most bits an integer result of ``**``, ``<<`` or ``*`` may have; the
#: bound is on the result (``((9 ** 256) ** 256) ** 256`` is refused at once)
MAX_INT_BITS = 100_000
#: the work one evaluation may do, in steps of roughly 10 ns (10 ms in all).
#: Work done in C costs a step per unit (as for MAX_SIZE) of each value
#: built, COMPARE_COST per unit compared or searched, a sixteenth of a step
#: per character compared or case-folded; work done in Python costs more
#: (NODE_COST, WALK_COST, FOLD_COST); big integers cost their sizes in
#: 64-bit words multiplied (over 8 for a product, over 2 for a quotient or
#: remainder), a power the square of its result's, over 16.
MAX_STEPS = 1_000_000
#: steps per node evaluated (or list measured), per item walked in Python
#: to measure a list or tuple, and per unit of a list or tuple case-folded
NODE_COST = 100
WALK_COST = 20
FOLD_COST = 20
#: steps per item of a flat list or tuple measured in C, and per unit
#: compared (a comparison of two objects)
FAST_WALK_COST = 2
COMPARE_COST = 2


class BudgetExceeded(ValueError):
    """The expression would exceed MAX_SIZE, MAX_INT_BITS or MAX_STEPS."""


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


class _BareWords(ast.NodeTransformer):
    """Turn a bare word (a name that is no operand) into the string it spells, as KTL reads it."""

    def __init__(self, operands):
        self._operands = operands

    def visit_Name(self, node):
        if node.id in self._operands:
            return node
        return ast.copy_location(ast.Constant(node.id), node)


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
            tree = _BareWords(self._names).visit(tree)
        except RecursionError:
            raise ValueError(f"expression too deeply nested: {text[:60]!r}...") from None
        self._tree = tree.body
        self._constants = {}
        self._foldConstants()

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
            pass  # an operand, or a bare word: the string it spells (_BareWords)
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

    def _foldConstants(self):
        """Evaluate every constant part now, once; anything over budget is refused here.

        ``$demo.X in (((1,)*10000,)*10000,)*10000`` fails in :func:`parse`,
        before any I/O and without building anything large; later
        evaluations reuse the values.  Comparisons are left out (their
        outcome depends on ``case``), and so are errors (``1/0``), raised
        again if evaluation comes to them (short-circuiting may skip them).
        """
        variable = set()  # ids of the nodes holding an operand or a comparison

        def mark(node):  # depth bounded by MAX_DEPTH (checked)
            found = isinstance(node, (ast.Name, ast.Compare))
            for child in ast.iter_child_nodes(node):
                found = mark(child) or found
            if found:
                variable.add(id(node))
            return found

        mark(self._tree)
        evaluator = _Evaluator(self, {}, True)
        pending = [self._tree]
        while pending:
            node = pending.pop()
            if not isinstance(node, ast.expr):  # an operator or a context
                continue
            if id(node) in variable:
                pending.extend(ast.iter_child_nodes(node))
                continue
            try:
                self._constants[id(node)] = evaluator.value(node)
            except BudgetExceeded:
                raise
            except Exception:
                pass  # raised again if evaluated

    # -- evaluation

    def evaluate(self, values, case=True):
        """Evaluate with ``values[(service, KEYWORD)]`` giving each operand.

        A value is a :class:`Value`, anything with ``binary`` and ``ascii``
        attributes (e.g. a client ``KeywordValue``), or a plain value used for
        both forms.  ``case=False`` makes string comparisons case-insensitive.
        Raises :class:`BudgetExceeded` rather than go over the budget.
        """
        return _Evaluator(self, values, case).value(self._tree).value


class _Sized:
    """A value with its size (see MAX_SIZE) and whether it holds a string.

    Either may be None, unknown: operands (keyword values) come unmeasured,
    since walking a large array is work too; :meth:`_Evaluator.measure`
    walks one at most once, and only as far as an operation needs.
    """

    __slots__ = ("value", "known", "text")

    def __init__(self, value, known=None, text=None):
        self.value = value
        self.known = known
        self.text = text


def _literal(value):
    if isinstance(value, str):
        return _Sized(value, len(value), True)
    return _Sized(value, _size(value), False)


class _Evaluator:
    """Evaluates an expression's tree, counting its steps (about 10 ns each).

    Work done in C costs a step per unit of the values it goes through;
    work done in Python costs more per unit: NODE_COST per node, WALK_COST
    per item measured, FOLD_COST per unit of a list or tuple case-folded.
    """

    def __init__(self, expression, values, case):
        self.names = expression._names
        self.constants = expression._constants
        self.shown = expression._shown
        self.values = values
        self.case = case
        self.steps = 0
        self.operands = {}  # (placeholder, form) -> _Sized, so each is measured once

    def charge(self, steps, node):
        """Count work, refusing work beyond MAX_STEPS before it is done."""
        self.steps += steps
        if self.steps > MAX_STEPS:
            raise BudgetExceeded(
                f"evaluation too long: more than {MAX_STEPS} steps, at {self.shown(node)!r}"
            )

    def measure(self, sized, node, cap=MAX_STEPS):
        """The size of ``sized``; if larger than ``cap``, some number above ``cap``."""
        if sized.known is None:
            # never walking further than the steps left can pay for
            size, steps, text, exact = _measure(sized.value, cap, MAX_STEPS - self.steps)
            self.charge(steps, node)
            if exact:
                sized.known, sized.text = size, text
            return size
        return sized.known

    def holdsText(self, sized, node):
        """Whether ``sized`` is or holds a string (True when that is not known)."""
        if sized.text is None:
            self.measure(sized, node)
        return sized.text is not False

    def operand(self, node, form):
        sized = self.operands.get((node.id, form))
        if sized is None:
            service, keyword = self.names[node.id]
            try:
                value = self.values[(service, keyword)]
            except KeyError:
                raise KeyError(f"no value given for ${service}.{keyword}") from None
            if hasattr(value, "binary") and hasattr(value, "ascii"):
                value = getattr(value, form)
            sized = self.operands[(node.id, form)] = _Sized(value)
        return sized

    def value(self, node, form="binary"):
        """``node`` evaluated: a :class:`_Sized`."""
        self.charge(NODE_COST, node)
        constant = self.constants.get(id(node))
        if constant is not None:
            return constant
        if isinstance(node, ast.Name):
            return self.operand(node, form)
        if isinstance(node, ast.Constant):
            return _literal(node.value)
        if isinstance(node, ast.BoolOp):
            result = None
            for item in node.values:
                result = self.value(item)
                if isinstance(node.op, ast.And) and not result.value:
                    return result
                if isinstance(node.op, ast.Or) and result.value:
                    return result
            return result
        if isinstance(node, ast.Compare):
            return _Sized(self.compare(node), 0, False)
        if isinstance(node, ast.BinOp):
            return self.binop(node)
        if isinstance(node, ast.UnaryOp):
            return self.unaryop(node)
        if isinstance(node, (ast.List, ast.Tuple)):
            items = [self.value(e) for e in node.elts]
            self.charge(len(items), node)
            # Never refused for its size: it holds references to values
            # already paid for, no more of them than the source shows.
            known = text = None
            if all(item.known is not None for item in items):
                known = len(items) + sum(item.known for item in items)
            if all(item.text is not None for item in items):
                text = any(item.text for item in items)
            kind = list if isinstance(node, ast.List) else tuple
            return _Sized(kind(item.value for item in items), known, text)
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

        def other(i):
            return plain[i].value if i in plain else None

        for i, op in enumerate(node.ops):
            left = plain[i] if i in plain else self.side(nodes[i], other(i + 1))
            right = plain[i + 1] if i + 1 in plain else self.side(nodes[i + 1], other(i))
            a, b = left.value, right.value
            if not self.case:
                a, b = self.fold(left, right, node)
            texts = isinstance(a, _TEXTS) and isinstance(b, _TEXTS)
            if type(op) in (ast.In, ast.NotIn):
                if texts:  # a substring search, in C: about linear
                    self.charge(1 + (len(a) + len(b)) // 4, node)
                elif isinstance(b, (list, tuple)):
                    self.charge(1 + COMPARE_COST * self.search(left, right, node), node)
            elif texts:  # in C, never beyond the shorter string
                self.charge(1 + min(len(a), len(b)) // 16, node)
            else:  # item by item, never beyond the smaller side
                self.charge(1 + COMPARE_COST * self.smaller(left, right, node), node)
            if not _COMPARE[type(op)](a, b):
                return False
        return True

    def search(self, needle, container, node):
        """The cost of ``needle in container``: the needle compared with each item.

        Each comparison costs at most the needle's size, or the item's, so
        a small needle needs no walk through the container.
        """
        items = len(container.value)
        cost = items * (1 + self.measure(needle, node))
        if COMPARE_COST * cost <= MAX_STEPS - self.steps:
            return cost
        return min(cost, items + self.measure(container, node))

    def smaller(self, left, right, node):
        """The smaller size of two sides, measuring the larger no further than that."""
        if left.known is None and right.known is not None:
            left, right = right, left
        size = self.measure(left, node)
        return min(size, self.measure(right, node, size))

    def fold(self, left, right, node):
        """Both sides case-folded, when both hold text (else folding changes nothing)."""
        if not (_mayHoldText(left.value) and _mayHoldText(right.value)):
            return left.value, right.value
        first, second = (left, right) if left.known is not None else (right, left)
        if not (self.holdsText(first, node) and self.holdsText(second, node)):
            return left.value, right.value
        return self.folded(left, node), self.folded(right, node)

    def folded(self, sized, node):
        value = sized.value
        if isinstance(value, str):
            self.charge(1 + len(value) // 16, node)  # in C
        else:  # a list or tuple, rebuilt in Python
            self.charge(1 + FOLD_COST * self.measure(sized, node), node)
        return _fold(value)

    def unaryop(self, node):
        value = self.value(node.operand).value
        if isinstance(node.op, ast.Not):
            return _Sized(not value, 0, False)
        if _isInt(value):
            self.charge(2 + _words(value), node)  # -x and ~x build a new int
        result = _UNARY[type(node.op)](value)  # a TypeError for a list, say
        return _Sized(result, 0 if not _isInt(result) else _words(result), False)

    def binop(self, node):
        left, right = self.value(node.left), self.value(node.right)
        op = type(node.op)
        result = self.budget(op, left, right, node)  # charges, or refuses
        try:
            result.value = _BINARY[op](left.value, right.value)
        except OverflowError:
            raise ValueError(
                f"{_OPERATION[op]} overflows: {_short(left.value)} and {_short(right.value)}"
            ) from None
        return result

    def budget(self, op, left, right, node):
        """Charge an operation, refusing it before it is computed: its result's _Sized.

        The size of everything an operator can build (a repeated or joined
        sequence, an integer) is worked out from its operands' sizes, never
        by building it.
        """
        a, b = left.value, right.value
        what = _OPERATION[op]
        if op is ast.Mod and isinstance(a, (str, bytes)):
            # '%2000000000d' % 1 would build a 2 GB string
            raise BudgetExceeded(
                f"string formatting not allowed in an expression: {_short(a)} % ..."
            )
        if _isInt(a) and _isInt(b):
            bits = _intBits(op, a, b)
            if bits > MAX_INT_BITS:
                raise BudgetExceeded(
                    f"{what} too large: {_short(a)} {_SYMBOL[op]} {_short(b)} would exceed "
                    f"{MAX_INT_BITS} bits"
                )
            wa, wb, words = _words(a) + 1, _words(b) + 1, bits // 64 + 1
            # calibrated on CPython's algorithms (schoolbook division,
            # Karatsuba products, powers by squaring), about 10 ns a step
            if op is ast.Mult:
                cost = wa * wb // 8 + words
            elif op in (ast.FloorDiv, ast.Mod):
                cost = wa * wb // 2 + 2 * (wa + wb)
            elif op is ast.Pow:
                cost = words * words // 16 + words
            else:
                cost = 2 * (wa + wb + words)
            self.charge(cost, node)
            return _Sized(None, 0 if op is ast.Div else words - 1, False)
        if op is ast.Mult:
            for seq, n, sized in ((a, b, left), (b, a, right)):
                if isinstance(seq, _SEQUENCES) and _isInt(n):
                    size = max(n, 0) * self.measure(sized, node, MAX_SIZE)
                    if size > MAX_SIZE:
                        raise BudgetExceeded(
                            f"repetition too long: {_short(seq)} * {_short(n)} would be "
                            f"{_sizeOf(size)}, more than the {MAX_SIZE} allowed"
                        )
                    self.charge(1 + size, node)
                    return _Sized(None, size, sized.text)
        if op is ast.Add and isinstance(a, _SEQUENCES) and type(a) is type(b):
            size = self.measure(left, node, MAX_SIZE) + self.measure(right, node, MAX_SIZE)
            if size > MAX_SIZE:
                raise BudgetExceeded(
                    f"concatenation too long: {_short(a)} + {_short(b)} would be "
                    f"{_sizeOf(size)}, more than the {MAX_SIZE} allowed"
                )
            self.charge(1 + size, node)
            text = None if None in (left.text, right.text) else left.text or right.text
            return _Sized(None, size, text)
        # float or complex arithmetic (an int operand converted first, at
        # worst an OverflowError), or a TypeError coming at once
        self.charge(1 + _words(a) + _words(b), node)
        return _Sized(None, 0, False)


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
_SYMBOL = {
    ast.Add: "+",
    ast.Sub: "-",
    ast.Mult: "*",
    ast.Div: "/",
    ast.FloorDiv: "//",
    ast.Mod: "%",
    ast.Pow: "**",
    ast.BitAnd: "&",
    ast.BitOr: "|",
    ast.BitXor: "^",
    ast.LShift: "<<",
    ast.RShift: ">>",
}
_SEQUENCES = (str, bytes, list, tuple)
_TEXTS = (str, bytes)


def _intBits(op, a, b):
    """An upper bound on the bits of ``a op b`` (ints), without computing it.

    Bounding only the right operand is not enough: ``(9 ** 256) ** 256`` has
    a small exponent and a huge result.
    """
    la, lb = abs(a).bit_length(), abs(b).bit_length()
    if op is ast.Pow:
        if b <= 0 or abs(a) <= 1:
            return 64  # 1, -1, 0 or a float
        # log2 works on ints of any size; b > MAX_INT_BITS first keeps the
        # product a float
        if b > MAX_INT_BITS:
            return MAX_INT_BITS + 1
        return math.ceil(math.log2(abs(a)) * b) + 1
    if op is ast.LShift:
        if not a or b <= 0:
            return la
        return la + b if b <= MAX_INT_BITS else MAX_INT_BITS + 1
    if op is ast.Mult:
        return la + lb
    if op is ast.Div:
        return 64  # a float
    return max(la, lb) + 1  # + - // % & | ^ >>


def _words(value):
    """64-bit words of an int beyond the first; 0 for anything else."""
    return value.bit_length() // 64 if _isInt(value) else 0


def _size(value, cap=MAX_SIZE):
    """Size units of ``value`` (see MAX_SIZE); past ``cap``, some number above it."""
    return _measure(value, cap, MAX_STEPS)[0]


def _measure(value, cap, budget):
    """``(size, steps, text, exact)``: :func:`_size`, the steps taken to learn it,
    and whether ``value`` is or holds a string.

    The walk stops once the size passes ``cap`` or the steps ``budget``:
    then ``exact`` is False, ``size`` a lower bound and ``text`` unknown.
    """
    if isinstance(value, (str, bytes)):
        return len(value), 1, isinstance(value, str), True
    if not isinstance(value, (list, tuple)):
        return _words(value), 1, False, True
    count = len(value)
    steps = NODE_COST + FAST_WALK_COST * count
    if count > cap or steps > budget:
        return count, NODE_COST, False, False
    kinds = set(map(type, value))  # in C: a keyword's array is measured quickly
    if kinds <= _SCALARS:
        return count, steps, False, True
    if kinds <= _INTS and max(map(int.bit_length, value)) < 64:
        return count, steps + FAST_WALK_COST * count, False, True
    if kinds == _STRINGS:
        return count + sum(map(len, value)), steps + FAST_WALK_COST * count, True, True
    size, text = count, False
    for item in value:  # in Python
        steps += WALK_COST
        if isinstance(item, str):
            size += len(item)
            text = True
        elif isinstance(item, int):
            size += item.bit_length() >> 6
        elif isinstance(item, (list, tuple)):
            more, itemSteps, itemText, exact = _measure(item, cap - size, budget - steps)
            size, steps, text = size + more, steps + itemSteps, text or itemText
            if not exact:
                return size, steps, False, False
        elif isinstance(item, bytes):
            size += len(item)
        if size > cap or steps > budget:
            return size, steps, False, False
    return size, steps, text, True


_SCALARS = frozenset({float, bool, complex, type(None)})
_INTS = frozenset({int, bool})
_STRINGS = frozenset({str})


def _sizeOf(size):
    return f"of size {size}" if size <= 1_000_000_000 else "of size above 1e9"


def _mayHoldText(value):
    return isinstance(value, (str, list, tuple))


def _short(value):
    """A short description of ``value`` for an error message (never a huge repr)."""
    if _isInt(value) and value.bit_length() >= 200:
        return f"an int of {value.bit_length()} bits"
    if isinstance(value, (str, bytes)) and len(value) > 40:
        return repr(value[:39])[:-1] + "\u2026" + repr(value[:1])[-1]
    if isinstance(value, (list, tuple)) and _size(value, 40) > 40:
        items = "1 item" if len(value) == 1 else f"{len(value)} items"
        return f"<a {type(value).__name__} of {items}, size {_size(value, MAX_STEPS)}>"
    text = repr(value)
    return text if len(text) <= 40 else text[:39] + "\u2026"


def _textual(value):
    """A str, or a list/tuple holding one (the right side of ``in``)."""
    if isinstance(value, (list, tuple)):
        return any(isinstance(item, str) for item in value)
    return isinstance(value, str)


def _isInt(value):
    return isinstance(value, int)  # bool included


def _isNumber(value):
    return isinstance(value, (int, float, complex))


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
