"""Business Central filter syntax: parse, evaluate against BC contact dicts, translate to OData."""

from __future__ import annotations

import pytest

from contactsync.engine.bcfilter import (
    ContactFilter,
    FilterSyntaxError,
    UnknownFilterField,
    parse_filter,
)


@pytest.mark.parametrize(
    ("field", "expression", "value", "matches"),
    [
        ("city", "Seattle", "Seattle", True),
        ("city", "Seattle", "seattle", False),  # case-sensitive without @
        ("city", "@seattle", "SEATTLE", True),
        ("city", "Seattle|Redmond", "Redmond", True),
        ("city", "Seattle|Redmond", "Tacoma", False),
        ("city", "Seattle | Redmond", "Redmond", True),  # spaces around a value are ignored
        ("city", "New York", "New York", True),  # spaces inside count
        ("postalCode", "98000..98999", "98052", True),
        ("postalCode", "98000..98999", "99001", False),
        ("postalCode", "98000..98999", "98999", True),  # inclusive
        ("city", "..B", "Aberdeen", True),
        ("city", "..B", "Boston", False),  # "Boston" > "B"
        ("city", "M..", "Munich", True),
        ("city", "M..", "Berlin", False),
        ("city", "<>''", "", False),
        ("city", "<>''", "x", True),
        ("city", "''", "", True),
        ("city", "=''", "x", False),
        ("city", "<>Seattle", "Redmond", True),
        ("city", "<>Seattle", "Seattle", False),
        ("jobTitle", ">=B&<=D", "Clerk", True),
        ("jobTitle", ">=B&<=D", "Engineer", False),
        ("jobTitle", "<B", "Admin", True),
        ("jobTitle", ">B", "B", False),
        ("companyName", "@contoso*", "CONTOSO Ltd", True),
        ("companyName", "contoso*", "Contoso Ltd", False),
        ("companyName", "*oso*", "Contoso Ltd", True),
        ("companyName", "*Ltd", "Contoso Ltd", True),
        ("companyName", "Jo?n", "John", True),
        ("companyName", "Jo?n", "Joan Ltd", False),
        ("companyName", "<>*oso*", "Fabrikam", True),
        ("companyName", "'Smith & Co'", "Smith & Co", True),
        ("companyName", "'O''Brien'", "O'Brien", True),
        ("companyName", "'a*'", "a*", True),  # wildcards are literal inside quotes
        ("companyName", "'a*'", "ab", False),
        ("jobTitle", "30|(>=10&<=20)", "15", True),
        ("jobTitle", "30|(>=10&<=20)", "25", False),
        ("jobTitle", "a|b&c", "a", True),  # & binds tighter than |
        ("email", "*@contoso.com", "ann@contoso.com", True),
        ("country", "us|de", "US", True),  # Code fields compare upper case
        ("type", "person", "Person", True),
        ("type", "Person", "Company", False),
        ("privacyBlocked", "No", False, True),
        ("privacyBlocked", "false", True, False),
        ("city", "Seattle", None, False),
    ],
)
def test_evaluation(field: str, expression: str, value: object, matches: bool) -> None:
    assert parse_filter(field, expression).matches({field: value}) is matches


def test_all_fields_must_match() -> None:
    flt = ContactFilter.parse({"city": "Seattle|Redmond", "type": "Person"})
    assert flt.matches({"city": "Seattle", "type": "Person"})
    assert not flt.matches({"city": "Seattle", "type": "Company"})
    assert ContactFilter().matches({})


@pytest.mark.parametrize(
    ("expression", "position", "reason"),
    [
        ("Seattle)", 7, "unexpected ')'"),
        ("(Seattle|Redmond", 0, "missing ')'"),
        ("Seattle|", 8, "expected a value"),
        ("|Seattle", 0, "expected a value"),
        ("<>", 2, "expected a value"),
        ("'Seattle", 0, "unterminated quote"),
        (">Sea*", 1, "wildcard cannot be used with '>'"),
        ("<>A..B", 0, "range cannot follow '<>'"),
        ("'a'b", 3, "unexpected text after a quoted value"),
        ("Sea'ttle", 3, "a quote may only enclose a whole value"),
        ("A&&B", 2, "expected a value"),
        ("..", 2, "expected a value"),
        # typos that used to select everything or nothing without a word
        ("", 0, "empty expression"),
        ("98000...98999", 7, "a range has two dots"),
        ("...98999", 2, "a range has two dots"),
    ],
)
def test_syntax_errors_point_at_the_bad_character(
    expression: str, position: int, reason: str
) -> None:
    with pytest.raises(FilterSyntaxError) as caught:
        parse_filter("city", expression)
    error = caught.value
    assert error.position == position
    assert reason in error.reason
    message_lines = str(error).splitlines()
    assert message_lines[1] == "  " + expression
    assert message_lines[2] == "  " + " " * position + "^"


def test_bool_field_rejects_non_boolean_and_ranges() -> None:
    with pytest.raises(FilterSyntaxError, match="yes/no"):
        parse_filter("privacyBlocked", "maybe")
    with pytest.raises(FilterSyntaxError):
        parse_filter("privacyBlocked", "a..b")


def test_unknown_field_lists_the_valid_ones() -> None:
    with pytest.raises(UnknownFilterField) as caught:
        ContactFilter.parse({"town": "Seattle"})
    assert "town" in str(caught.value)
    assert "city" in str(caught.value) and "postalCode" in str(caught.value)


@pytest.mark.parametrize(
    ("filters", "odata"),
    [
        ({"city": "Seattle"}, "city eq 'Seattle'"),
        ({"city": "Seattle|Redmond"}, "(city eq 'Seattle' or city eq 'Redmond')"),
        ({"city": "<>''"}, "city ne ''"),
        ({"postalCode": "98000..98999"}, "(postalCode ge '98000' and postalCode le '98999')"),
        ({"postalCode": "..98999"}, "postalCode le '98999'"),
        ({"postalCode": "98000.."}, "postalCode ge '98000'"),
        ({"jobTitle": ">=B&<D"}, "(jobTitle ge 'B' and jobTitle lt 'D')"),
        ({"companyName": "Cont*"}, "startswith(companyName,'Cont')"),
        ({"companyName": "'O''Brien'"}, "companyName eq 'O''Brien'"),
        ({"country": "us"}, "country eq 'US'"),
        ({"privacyBlocked": "no"}, "privacyBlocked eq false"),
        ({"type": "person"}, "type eq 'Person'"),
        ({"city": "Seattle", "type": "Person"}, "city eq 'Seattle' and type eq 'Person'"),
        ({}, ""),
        # not exact: the caller lists more and matches locally
        ({"companyName": "@cont*"}, None),
        ({"companyName": "*oso*"}, None),
        ({"companyName": "Jo?n"}, None),
        ({"companyName": "<>Cont*"}, None),
        ({"city": "Seattle", "companyName": "*oso*"}, None),
        ({"city": "Seattle|@redmond"}, None),
    ],
)
def test_odata_translation(filters: dict[str, str], odata: str | None) -> None:
    assert ContactFilter.parse(filters).to_odata() == odata
