"""The comparison grammar (:mod:`nrc_cli.grammar`) as the collapse rule uses it: ``parse_term``
reads one ``COLUMN OP NUMBER`` term over given columns and operators, and ``CollapseRule.parse``
says its errors of the whole rule. The requirement side is in tests/unit/test_gates.py."""

from __future__ import annotations

import pytest

from nrc_cli.errors import ConfigError
from nrc_cli.grammar import OPERATORS, ExpressionError, parse_requirement, parse_term
from nrc_cli.options import (
    CLASSIFICATION_RULE_COLUMNS,
    RULE_COLUMNS,
    RULE_OPERATORS,
    CollapseRule,
)

# -- parse_term -------------------------------------------------------------------------------


def test_a_term_is_a_requirement_on_every_layer():
    term = parse_term(" nrc1_noise <= 0.2 ", columns=RULE_COLUMNS)
    assert (term.column, term.op, term.bound) == ("nrc1_noise", "<=", 0.2)
    assert term.scope == "layer" and term.selector.kind == "all"
    assert term.expr == "nrc1_noise <= 0.2" and term.source == "--collapse-rule"
    # The same text read as a requirement gives the same comparison.
    req = parse_requirement("nrc1_noise <= 0.2")
    assert (req.column, req.op, req.bound, req.selector) == (
        term.column,
        term.op,
        term.bound,
        term.selector,
    )


@pytest.mark.parametrize("op", OPERATORS)
def test_every_operator_of_the_grammar_when_allowed(op):
    assert parse_term(f"nrc2_cka {op} 1e-3", columns=RULE_COLUMNS).op == op


@pytest.mark.parametrize(
    ("text", "kind", "token", "what"),
    [
        ("", "syntax", "", "empty term (position 1)"),
        ("<= 1", "syntax", "", "unexpected '<' at position 1: expected a column name"),
        ("nrc1_noise", "syntax", "", "expected an operator, one of <= >=, found the end"),
        ("nrc1_noise < 1", "syntax", "", "the operator '<' at position 12 is not allowed"),
        ("nrc1_noise == 1", "syntax", "", "the operator '==' at position 12 is not allowed"),
        ("nrc1_noise[-1] <= 1", "syntax", "", "a term takes no [LAYERS] selector"),
        ("nrc1_noise <= 1 2", "syntax", "", "expected the end of the term after the number"),
        ("nrc1_noise <=", "number", "", "expected a number, found the end"),
        ("nrc1_noise <= abc", "number", "abc", "unexpected 'a' at position 15"),
        ("nrc1_noise <= 1e999", "number", "1e999", "the number '1e999' is not finite"),
        ("nc1 <= 1", "column", "nc1", "unknown column 'nc1' at position 1; expected one of"),
        ("layer <= 1", "column", "layer", "unknown column 'layer'"),
    ],
)
def test_term_errors_say_what_and_where(text, kind, token, what):
    with pytest.raises(ExpressionError) as info:
        parse_term(text, columns=RULE_COLUMNS, operators=RULE_OPERATORS)
    err = info.value
    assert (err.kind, err.token) == (kind, token)
    assert what in err.what
    assert err.message == f"--collapse-rule '{text.strip()}': {err.what}"
    expression, caret = err.hint.split("\n")
    assert expression == text.strip()
    assert caret.index("^") == len("hint: ") + err.position


def test_an_unknown_column_suggests_the_closest():
    with pytest.raises(ExpressionError) as info:
        parse_term("nrc1_nose <= 1", columns=RULE_COLUMNS)
    assert "did you mean 'nrc1_noise'?" in info.value.hint


# -- the collapse rule through the grammar -----------------------------------------------------


def test_the_rule_is_read_term_by_term_and_prints_back_canonically():
    rule = CollapseRule.parse("nrc1_noise <= +0.20, nrc3_alignment>=9e-1 ,stable_rank_h<=3.0")
    assert rule.terms == (
        ("nrc1_noise", "<=", 0.2),
        ("nrc3_alignment", ">=", 0.9),
        ("stable_rank_h", "<=", 3.0),
    )
    assert rule.text == "nrc1_noise<=0.2,nrc3_alignment>=0.9,stable_rank_h<=3"
    assert CollapseRule.parse(rule.text) == rule


@pytest.mark.parametrize("text", ["", "  ", "\t"])
def test_an_empty_rule(text):
    with pytest.raises(ConfigError) as info:
        CollapseRule.parse(text)
    assert info.value.cli_message == (
        "--collapse-rule: expected terms like 'nrc1_noise<=0.2', found an empty rule"
    )


@pytest.mark.parametrize(
    ("text", "task", "message", "hint"),
    [
        (
            "nrc1_noise<=0.2,first_collapsed_index<=3",
            "regression",
            "--collapse-rule: unknown column 'first_collapsed_index' in "
            "'nrc1_noise<=0.2,first_collapsed_index<=3' (not a regression report's per-layer "
            "column)",
            "columns: " + ", ".join(RULE_COLUMNS),
        ),
        (
            "nrc1_noise<=0.2",
            "classification",
            "--collapse-rule: unknown column 'nrc1_noise' in 'nrc1_noise<=0.2' (not a "
            "classification report's per-layer column)",
            "columns: " + ", ".join(CLASSIFICATION_RULE_COLUMNS),
        ),
        (
            "layer<=3",
            None,
            "--collapse-rule: unknown column 'layer' in 'layer<=3' (not a per-layer column)",
            None,
        ),
    ],
)
def test_a_name_that_is_not_a_per_layer_column(text, task, message, hint):
    with pytest.raises(ConfigError) as info:
        CollapseRule.parse(text, task)
    assert info.value.cli_message == message
    if hint is not None:
        assert info.value.hint == hint


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (
            "nrc1_noise<=",
            "--collapse-rule: cannot parse term 'nrc1_noise<=' in 'nrc1_noise<=': expected a "
            "number, found the end of the expression (position 13)",
        ),
        (
            "nrc1_noise<=0.2,nrc2_cka>= ",
            "--collapse-rule: cannot parse term 'nrc2_cka>=' in 'nrc1_noise<=0.2,nrc2_cka>= ': "
            "expected a number, found the end of the expression (position 11)",
        ),
        (
            "nrc1_noise<=0.2,nrc2_cka>=x",
            "--collapse-rule: 'x' in term 'nrc2_cka>=x' is not a finite number",
        ),
    ],
)
def test_a_missing_number(text, message):
    with pytest.raises(ConfigError) as info:
        CollapseRule.parse(text)
    assert info.value.cli_message == message
    assert "COLUMN<=NUMBER or COLUMN>=NUMBER" in info.value.hint


@pytest.mark.parametrize(
    ("text", "what"),
    [
        ("nrc1_noise<0.2", "the operator '<' at position 11 is not allowed in a term"),
        ("nrc1_noise!=0", "the operator '!=' at position 11 is not allowed in a term"),
        ("nrc1_noise[-1]<=0.2", "a term takes no [LAYERS] selector"),
        ("nrc1_noise<=0.2,,nrc2_cka>=0.5", "empty term (position 1)"),
    ],
)
def test_only_the_rule_operators_and_no_selector(text, what):
    with pytest.raises(ConfigError, match="collapse_rule: cannot parse term") as info:
        CollapseRule.parse(text)
    assert what in info.value.cli_message
    assert "\n" not in info.value.hint  # one hint line: the command line shows error + hint


def test_the_rule_compares_with_the_grammar_operators():
    rule = CollapseRule.parse("nrc1_noise<=0.2,nrc3_alignment>=0.9")
    assert rule.holds({"nrc1_noise": 0.2, "nrc3_alignment": 0.9})
    assert not rule.holds({"nrc1_noise": 0.2000001, "nrc3_alignment": 0.9})
    assert not rule.holds({"nrc1_noise": 0.1, "nrc3_alignment": 0.8999999})
