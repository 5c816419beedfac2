"""Derived features: arithmetic over other served values, evaluated at read time. Pure.

A derived feature is an expression such as `purchases_7d / page_views_7d` over served
keys of the same entity. The grammar is deliberately small, parsed here by hand with a
whitelist (never Python's `eval`), so a bad expression is refused with the exact
character position of the problem:

    expr  := term (("+" | "-") term)*
    term  := unary (("*" | "/") unary)*
    unary := "-" unary | atom
    atom  := number | key | function "(" expr ("," expr)* ")" | "(" expr ")"

`number` is a decimal (`2`, `0.5`, `1e3`), `key` a served key (`[a-z_][a-z0-9_]*`), and
`function` one of `min`, `max` (two or more arguments) and `coalesce` (the first non-null
argument).

Semantics, the same in serving, training sets and the tests' oracle:

- every result is a float, or null;
- a reference whose value is not a number (null, a list, a bool) is null;
- any null operand makes `+ - * /`, unary minus, `min` and `max` null; `coalesce` is
  the one way to turn a null into a value (`coalesce(a / b, 0)`);
- division by zero is null (a conversion rate of a user without page views is unknown,
  not infinite and not 0);
- a result that is not finite (an overflow to infinity) is null.

`parse` checks the syntax and the limits; `compile_expression` turns a parsed expression into a
closure tree once, so serving evaluates a deployed expression without parsing again.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

MAX_LENGTH = 500
MAX_NODES = 64
MAX_DEPTH = 12
MAX_REFERENCES = 16
FUNCTIONS: frozenset[str] = frozenset({"min", "max", "coalesce"})
OPERATORS = "+-*/"


class ExpressionError(ValueError):
    """An expression that cannot be parsed, or breaks a limit; `position` is the 0-based
    character offset of the problem."""

    def __init__(self, message: str, position: int) -> None:
        super().__init__(f"{message} (at position {position})")
        self.message = message
        self.position = position


# -- the tree ----------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class Number:
    value: float


@dataclass(frozen=True, slots=True)
class Ref:
    key: str
    position: int


@dataclass(frozen=True, slots=True)
class Neg:
    operand: Node


@dataclass(frozen=True, slots=True)
class BinOp:
    op: str  # one of OPERATORS
    left: Node
    right: Node


@dataclass(frozen=True, slots=True)
class Call:
    function: str  # one of FUNCTIONS
    args: tuple[Node, ...]


Node = Number | Ref | Neg | BinOp | Call

_PRECEDENCE = {"+": 1, "-": 1, "*": 2, "/": 2}


def unparse(node: Node) -> str:
    """Returns the canonical text of `node`: single spaces around operators, only the
    parentheses the precedence needs, numbers in their shortest form."""
    match node:
        case Number(value):
            return repr(int(value)) if value.is_integer() and abs(value) < 1e15 else repr(value)
        case Ref(key):
            return key
        case Neg(operand):
            inner = unparse(operand)
            return f"-({inner})" if isinstance(operand, BinOp) else f"-{inner}"
        case Call(function, args):
            return f"{function}({', '.join(unparse(a) for a in args)})"
        case BinOp(op, left, right):
            level = _PRECEDENCE[op]
            lhs, rhs = unparse(left), unparse(right)
            if isinstance(left, BinOp) and _PRECEDENCE[left.op] < level:
                lhs = f"({lhs})"
            # A right operand of the same level keeps its parentheses even where the
            # maths would not need them (a * (b * c)): floats do not associate, and the
            # text must evaluate exactly as the tree it was made from.
            if isinstance(right, BinOp) and _PRECEDENCE[right.op] <= level:
                rhs = f"({rhs})"
            return f"{lhs} {op} {rhs}"
    raise TypeError(f"not an expression node: {node!r}")


# -- parsing -----------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class _Token:
    kind: str  # "number", "name", "op", "(", ")", ",", "end"
    text: str
    position: int


def _tokens(text: str) -> list[_Token]:
    out: list[_Token] = []
    i, n = 0, len(text)
    while i < n:
        c = text[i]
        if c in " \t":
            i += 1
        elif c in OPERATORS:
            out.append(_Token("op", c, i))
            i += 1
        elif c in "(),":
            out.append(_Token(c, c, i))
            i += 1
        elif c.isascii() and (c.isdigit() or c == "."):
            j = i
            while j < n and text[j].isascii() and (text[j].isdigit() or text[j] == "."):
                j += 1
            if j < n and text[j] in "eE":
                k = j + 1
                if k < n and text[k] in "+-":
                    k += 1
                if k < n and text[k].isascii() and text[k].isdigit():
                    j = k
                    while j < n and text[j].isascii() and text[j].isdigit():
                        j += 1
            out.append(_Token("number", text[i:j], i))
            i = j
        elif c == "_" or (c.isascii() and c.islower()):
            j = i
            while j < n and (text[j] == "_" or (text[j].isascii() and text[j].isalnum())):
                j += 1
            out.append(_Token("name", text[i:j], i))
            i = j
        else:
            raise ExpressionError(f"unexpected character {c!r}", i)
    out.append(_Token("end", "", n))
    return out


class _Parser:
    def __init__(self, text: str) -> None:
        self._tokens = _tokens(text)
        self._i = 0
        self.nodes = 0

    def _peek(self) -> _Token:
        return self._tokens[self._i]

    def _take(self) -> _Token:
        token = self._tokens[self._i]
        self._i += 1
        return token

    def _node(self, node: Node, position: int) -> Node:
        self.nodes += 1
        if self.nodes > MAX_NODES:
            raise ExpressionError(f"more than {MAX_NODES} terms and operators", position)
        return node

    def parse(self) -> Node:
        node = self._expr(0)
        token = self._peek()
        if token.kind != "end":
            raise ExpressionError(f"unexpected {token.text!r}", token.position)
        return node

    def _expr(self, depth: int) -> Node:
        if depth > MAX_DEPTH:
            raise ExpressionError(f"nested deeper than {MAX_DEPTH}", self._peek().position)
        node = self._term(depth)
        while self._peek().text in ("+", "-") and self._peek().kind == "op":
            op = self._take()
            node = self._node(BinOp(op.text, node, self._term(depth)), op.position)
        return node

    def _term(self, depth: int) -> Node:
        node = self._unary(depth)
        while self._peek().text in ("*", "/") and self._peek().kind == "op":
            op = self._take()
            node = self._node(BinOp(op.text, node, self._unary(depth)), op.position)
        return node

    def _unary(self, depth: int) -> Node:
        token = self._peek()
        if token.kind == "op" and token.text == "-":
            self._take()
            return self._node(Neg(self._unary(depth + 1)), token.position)
        return self._atom(depth)

    def _atom(self, depth: int) -> Node:
        token = self._take()
        if token.kind == "number":
            try:
                value = float(token.text)
            except ValueError:
                raise ExpressionError(f"{token.text!r} is not a number", token.position) from None
            if not math.isfinite(value):
                raise ExpressionError(f"{token.text!r} is too large", token.position)
            return self._node(Number(value), token.position)
        if token.kind == "name":
            if self._peek().kind == "(":
                return self._call(token, depth)
            return self._node(Ref(token.text, token.position), token.position)
        if token.kind == "(":
            node = self._expr(depth + 1)
            self._expect(")", "a closing parenthesis")
            return node
        found = "the end of the expression" if token.kind == "end" else repr(token.text)
        raise ExpressionError(f"expected a number, a key or '(', found {found}", token.position)

    def _call(self, name: _Token, depth: int) -> Node:
        if name.text not in FUNCTIONS:
            known = ", ".join(sorted(FUNCTIONS))
            raise ExpressionError(f"unknown function {name.text!r} (known: {known})", name.position)
        self._take()  # "("
        args = [self._expr(depth + 1)]
        while self._peek().kind == ",":
            self._take()
            args.append(self._expr(depth + 1))
        self._expect(")", "',' or a closing parenthesis")
        if name.text in ("min", "max") and len(args) < 2:
            raise ExpressionError(f"{name.text} takes two or more arguments", name.position)
        return self._node(Call(name.text, tuple(args)), name.position)

    def _expect(self, kind: str, what: str) -> None:
        token = self._take()
        if token.kind != kind:
            found = "the end of the expression" if token.kind == "end" else repr(token.text)
            raise ExpressionError(f"expected {what}, found {found}", token.position)


def references(node: Node) -> list[Ref]:
    """Returns every key reference of `node`, left to right (repeats included)."""
    match node:
        case Ref():
            return [node]
        case Neg(operand):
            return references(operand)
        case BinOp(_, left, right):
            return references(left) + references(right)
        case Call(_, args):
            return [r for a in args for r in references(a)]
    return []


@dataclass(frozen=True, slots=True)
class Expression:
    """A parsed expression: its canonical `text`, its tree, and the distinct served keys
    it reads (`keys`, in order of first appearance)."""

    text: str
    tree: Node
    keys: tuple[str, ...]


def parse(text: str) -> Expression:
    """Returns the parsed expression. Raises ExpressionError (with the position) for a
    syntax error, an unknown function, more than MAX_LENGTH characters, MAX_NODES
    terms, MAX_DEPTH levels of nesting or MAX_REFERENCES distinct keys."""
    if len(text) > MAX_LENGTH:
        raise ExpressionError(f"longer than {MAX_LENGTH} characters", MAX_LENGTH)
    if not text.strip():
        raise ExpressionError("the expression is empty", 0)
    tree = _Parser(text).parse()
    refs = references(tree)
    keys = tuple(dict.fromkeys(r.key for r in refs))
    if len(keys) > MAX_REFERENCES:
        extra = next(r for r in refs if r.key == keys[MAX_REFERENCES])
        raise ExpressionError(f"more than {MAX_REFERENCES} distinct keys", extra.position)
    return Expression(unparse(tree), tree, keys)


# -- evaluation --------------------------------------------------------------------------
Evaluator = Callable[[Mapping[str, Any]], float | None]


def _number(value: Any) -> float | None:
    if value is None or isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value)


def _finite(value: float) -> float | None:
    return value if math.isfinite(value) else None


def _apply(op: str, a: float, b: float) -> float | None:
    if op == "+":
        return _finite(a + b)
    if op == "-":
        return _finite(a - b)
    if op == "*":
        return _finite(a * b)
    return None if b == 0 else _finite(a / b)


def compile_expression(expression: Expression) -> Evaluator:
    """Returns `values -> float | None` for the expression: the tree turned into nested
    closures once, so a read pays one call per node and no parsing. Never raises on
    any mapping of values (missing keys read as null)."""
    return _compile(expression.tree)


def _compile(node: Node) -> Evaluator:
    match node:
        case Number(value):
            return lambda _values: value
        case Ref(key):
            return lambda values: _number(values.get(key))
        case Neg(operand):
            inner = _compile(operand)

            def neg(values: Mapping[str, Any]) -> float | None:
                x = inner(values)
                return None if x is None else -x

            return neg
        case BinOp(op, left, right):
            lhs, rhs = _compile(left), _compile(right)

            def binop(values: Mapping[str, Any]) -> float | None:
                a = lhs(values)
                if a is None:
                    return None
                b = rhs(values)
                return None if b is None else _apply(op, a, b)

            return binop
        case Call(function, args):
            parts = tuple(_compile(a) for a in args)
            if function == "coalesce":

                def coalesce(values: Mapping[str, Any]) -> float | None:
                    for part in parts:
                        x = part(values)
                        if x is not None:
                            return x
                    return None

                return coalesce
            pick = min if function == "min" else max

            def extreme(values: Mapping[str, Any]) -> float | None:
                xs = [part(values) for part in parts]
                return None if None in xs else pick(x for x in xs if x is not None)

            return extreme
    raise TypeError(f"not an expression node: {node!r}")


@dataclass(frozen=True, slots=True)
class DerivedSpec:
    """A deployed derived feature: served as `name`, computed by `evaluate` from the
    values of `expression.keys`."""

    name: str
    expression: Expression
    evaluate: Evaluator


def derived_spec(name: str, text: str) -> DerivedSpec:
    """Returns the spec of derived feature `name`; raises ExpressionError."""
    expression = parse(text)
    return DerivedSpec(name, expression, compile_expression(expression))


def with_derived(
    values: dict[str, Any], derived: tuple[DerivedSpec, ...], hidden: tuple[str, ...]
) -> dict[str, Any]:
    """Adds each derived value to `values` (merged aggregate values, keyed as served),
    then drops the `hidden` keys (read only as inputs); returns `values`."""
    for spec in derived:
        values[spec.name] = spec.evaluate(values)
    for key in hidden:
        del values[key]
    return values
