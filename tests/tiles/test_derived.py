"""Derived expressions: parse, canonical text and evaluation against a brute-force oracle."""

from __future__ import annotations

import math
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from app.tiles.derived import (
    MAX_DEPTH,
    MAX_LENGTH,
    MAX_NODES,
    MAX_REFERENCES,
    BinOp,
    Call,
    ExpressionError,
    Neg,
    Node,
    Number,
    Ref,
    compile_expression,
    parse,
    unparse,
)

KEYS = ["a_5m", "b_1h", "c_7d", "views_30d"]


def oracle(node: Node, values: dict[str, Any]) -> float | None:
    """The README's rules, written out plainly: null in, null out; x / 0 is null; a
    non-finite result is null; coalesce takes the first non-null argument."""
    if isinstance(node, Number):
        return node.value
    if isinstance(node, Ref):
        v = values.get(node.key)
        if type(v) is int or type(v) is float:
            return float(v)
        return None
    if isinstance(node, Neg):
        x = oracle(node.operand, values)
        return None if x is None else -x
    if isinstance(node, BinOp):
        a = oracle(node.left, values)
        b = oracle(node.right, values)
        if a is None or b is None:
            return None
        if node.op == "/" and b == 0:
            return None
        result = {"+": a + b, "-": a - b, "*": a * b}[node.op] if node.op != "/" else a / b
        return result if math.isfinite(result) else None
    assert isinstance(node, Call)
    args = [oracle(a, values) for a in node.args]
    if node.function == "coalesce":
        return next((x for x in args if x is not None), None)
    if any(x is None for x in args):
        return None
    numbers = [x for x in args if x is not None]
    return min(numbers) if node.function == "min" else max(numbers)


numbers = st.one_of(
    st.sampled_from([0.0, 1.0, 2.0, 0.5, 100.0]),
    st.floats(min_value=0, max_value=1e6, allow_nan=False, allow_infinity=False),
).map(Number)
refs = st.sampled_from(KEYS).map(lambda k: Ref(k, 0))


def _extend(children: st.SearchStrategy[Node]) -> st.SearchStrategy[Node]:
    return st.one_of(
        children.map(Neg),
        st.builds(BinOp, st.sampled_from("+-*/"), children, children),
        st.builds(
            Call,
            st.sampled_from(["min", "max", "coalesce"]),
            st.lists(children, min_size=2, max_size=3).map(tuple),
        ),
    )


trees = st.recursive(st.one_of(numbers, refs), _extend, max_leaves=8)
values = st.dictionaries(
    st.sampled_from(KEYS),
    st.one_of(
        st.sampled_from([0, 0.0, 1, -1, None]),
        st.integers(-1000, 1000),
        st.floats(allow_nan=False, allow_infinity=False, width=32),
        st.sampled_from([True, "3", [1, 2], {"x": 1}]),  # not numbers: read as null
    ),
)


def _same(x: float | None, y: float | None) -> bool:
    return x == y or (x is not None and y is not None and math.isnan(x) and math.isnan(y))


class TestEvaluationMatchesTheOracle:
    @settings(max_examples=400)
    @given(trees, values)
    def test_compiled_tree_equals_the_recursive_oracle(self, tree: Node, vals: dict) -> None:
        expression = parse(unparse(tree))
        assert _same(compile_expression(expression)(vals), oracle(tree, vals))

    @settings(max_examples=300)
    @given(trees)
    def test_canonical_text_parses_back_to_the_same_tree_and_text(self, tree: Node) -> None:
        text = unparse(tree)
        parsed = parse(text)
        assert parsed.text == text
        assert unparse(parsed.tree) == text

    @given(trees, values)
    def test_result_is_a_finite_float_or_null(self, tree: Node, vals: dict) -> None:
        result = compile_expression(parse(unparse(tree)))(vals)
        assert result is None or (type(result) is float and math.isfinite(result))


class TestDefinedAnswers:
    def test_division_by_zero_is_null(self) -> None:
        assert compile_expression(parse("a_5m / b_1h"))({"a_5m": 3, "b_1h": 0}) is None

    def test_a_null_input_makes_the_result_null(self) -> None:
        assert compile_expression(parse("a_5m + 1"))({"a_5m": None}) is None
        assert compile_expression(parse("max(a_5m, 1)"))({}) is None

    def test_coalesce_turns_null_into_a_value(self) -> None:
        conversion = compile_expression(parse("coalesce(a_5m / b_1h, 0)"))
        assert conversion({"a_5m": 1, "b_1h": 0}) == 0.0
        assert conversion({"a_5m": 1, "b_1h": 4}) == 0.25

    def test_integers_come_back_as_floats(self) -> None:
        result = compile_expression(parse("a_5m + b_1h"))({"a_5m": 1, "b_1h": 2})
        assert result == 3.0
        assert type(result) is float

    def test_an_overflow_is_null(self) -> None:
        assert compile_expression(parse("a_5m * 1e300"))({"a_5m": 1e300}) is None


class TestParsing:
    def test_keys_are_distinct_in_order_of_appearance(self) -> None:
        assert parse("b_1h / (a_5m + b_1h)").keys == ("b_1h", "a_5m")

    def test_text_is_canonical(self) -> None:
        assert parse("  (a_5m)/(b_1h*2)  ").text == "a_5m / (b_1h * 2)"
        assert parse("(a - b) - (c - d)").text == "a - b - (c - d)"

    @pytest.mark.parametrize(
        ("text", "position", "words"),
        [
            ("a_5m / ", 7, "found the end"),
            ("a_5m $ b", 5, "unexpected character '$'"),
            ("a_5m b_1h", 5, "unexpected 'b_1h'"),
            ("sqrt(a_5m)", 0, "unknown function 'sqrt'"),
            ("min(a_5m)", 0, "two or more"),
            ("(a_5m + 1", 9, "closing parenthesis"),
            ("1.2.3 + a", 0, "not a number"),
            ("a_5m )", 5, "unexpected ')'"),
            ("", 0, "empty"),
            ("__import__('os')", 11, "unexpected character"),
        ],
    )
    def test_a_bad_expression_names_its_position(
        self, text: str, position: int, words: str
    ) -> None:
        with pytest.raises(ExpressionError) as caught:
            parse(text)
        assert caught.value.position == position
        assert words in caught.value.message

    def test_limits_are_refused(self) -> None:
        with pytest.raises(ExpressionError, match="longer than"):
            parse("a + " * (MAX_LENGTH // 4) + "a")
        with pytest.raises(ExpressionError, match="terms and operators"):
            parse(" + ".join(["1"] * (MAX_NODES // 2 + 1)))
        with pytest.raises(ExpressionError, match="nested deeper"):
            parse("(" * (MAX_DEPTH + 2) + "a" + ")" * (MAX_DEPTH + 2))
        many = " + ".join(f"k{i}" for i in range(MAX_REFERENCES + 1))
        with pytest.raises(ExpressionError, match="distinct keys") as caught:
            parse(many)
        assert caught.value.position == many.index(f"k{MAX_REFERENCES}")

    @given(st.text(alphabet="ab_15m()+-*/., $e", max_size=40))
    def test_any_text_parses_or_raises_expression_error(self, text: str) -> None:
        position = None
        try:
            expression = parse(text)
        except ExpressionError as exc:
            position = exc.position
        else:
            compile_expression(expression)({})
        assert position is None or 0 <= position <= len(text)
