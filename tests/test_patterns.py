"""Rule patterns: PCRE's answers for ordinary patterns, bounded time for pathological ones."""

from __future__ import annotations

import pytest

from markd.analysis import patterns
from markd.analysis.patterns import SliceExpired, compile_pattern, metered
from markd.errors import CommandError

# (pattern, field name, PCRE2's answer as mongod compiles it: UTF on, Unicode properties off)
PCRE_ANSWERS = [
    ("^ssn", "ssn_1", True),
    ("^ssn", "my_ssn", False),
    ("_secret$", "a_secret", True),
    (r"\d", "x7", True),
    (r"\d", "x\u0663", False),  # ARABIC-INDIC DIGIT THREE: not a digit without PCRE2_UCP (Python's re says yes)
    (r"^\w+$", "caf\u00e9", False),  # \w is ASCII-only in PCRE2 without UCP
    ("(?i)^caf\u00c9$", "caf\u00e9", True),  # caseless matching does fold non-ASCII letters under UTF
    (r"a\z", "a", True),  # PCRE's \z (Python's re rejects it)
    (r"\Qa.b\E", "xa.bx", True),  # PCRE's literal quoting (Python's re rejects it)
    (r"^[[:digit:]]+$", "123", True),
    (r"^(?!_)", "_id", False),  # look-ahead: RE2 cannot, the fallback can
    (r"^(?!_)", "name", True),
    (r"^(a)\1$", "aa", True),  # backreference
    (r"(?<=x)y", "xy", True),  # look-behind
    ("^(a+)+$", "a" * 26 + "!", False),  # exponential for a backtracking engine, linear for RE2
]


@pytest.mark.parametrize(("pattern", "name", "expected"), PCRE_ANSWERS)
def test_ordinary_patterns_answer_as_pcre(pattern: str, name: str, expected: bool) -> None:
    with metered():
        assert compile_pattern(pattern).search(name) is expected


def test_the_catastrophic_pattern_is_searched_by_re2_in_linear_time() -> None:
    compiled = compile_pattern("^(a+)+$")
    assert compiled.engine == "re2"
    with metered() as meter:
        assert not compiled.search("a" * 100_000 + "!")
    assert meter.spent < patterns.DEFAULT_LIMIT_SECS


def test_fallback_patterns_are_bounded_by_the_meter() -> None:
    # A look-ahead keeps it on the backtracking engine, and the nested quantifier makes it explode.
    compiled = compile_pattern(r"^(?=x)?(a|aa)+$")
    assert compiled.engine == "regex"
    with metered(limit=0.05), pytest.raises(CommandError) as raised:
        compiled.search("a" * 5000 + "!")
    assert raised.value.code == patterns.MATCH_LIMIT_CODE
    assert "match limit exceeded" in raised.value.errmsg


def test_the_meter_is_per_command() -> None:
    compiled = compile_pattern("^x")
    for _ in range(3):
        with metered(limit=1.0) as meter:
            compiled.search("xyz")
        assert meter.spent < 1.0


def test_a_slice_meter_hands_the_command_back() -> None:
    compiled = compile_pattern(r"^(?=x)?(a|aa)+$")
    with metered(slice_secs=0.001), pytest.raises(SliceExpired):
        compiled.search("a" * 5000 + "!")


@pytest.mark.parametrize(("pattern", "message"), [
    ("(", "missing ), unterminated subpattern at position 0"),
    ("a{2,1}", "min repeat greater than max repeat at position 2"),
    ("[z-a]", "bad character range z-a at position 1"),
])
def test_invalid_patterns_keep_their_code_and_message(pattern: str, message: str) -> None:
    with pytest.raises(CommandError) as raised:
        compile_pattern(pattern)
    assert raised.value.code == 51141
    assert raised.value.errmsg == (
        f"Invalid regular expression in 'patternProperties': {pattern} PCRE error string: {message}")


def test_patterns_longer_than_pcre_accepts_are_refused() -> None:
    with pytest.raises(CommandError) as raised:
        compile_pattern("a" * (patterns.MAX_PATTERN_LENGTH + 1))
    assert raised.value.code == 51141


def test_compiled_patterns_compare_by_their_text() -> None:
    assert compile_pattern("^a") == compile_pattern("^a")
    assert hash(compile_pattern("^a")) == hash(compile_pattern("^a"))
    assert compile_pattern("^a").pattern == "^a"
