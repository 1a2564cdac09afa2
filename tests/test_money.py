from decimal import Decimal
from fractions import Fraction

import pytest
from hypothesis import given
from hypothesis import strategies as st

from plugin import money
from plugin.money import MoneyError


@pytest.mark.parametrize(
    ("amount", "currency", "minor"),
    [
        ("19.99", "EUR", 1999),
        ("19.9", "eur", 1990),
        ("0.00", "USD", 0),
        ("-5.00", "SEK", -500),
        ("1500", "JPY", 1500),
        ("1500.0", "JPY", 1500),
        ("1.234", "KWD", 1234),
        ("0.0001", "CLF", 1),
        (Decimal("123456.78"), "GBP", 12345678),
        (7, "NOK", 700),
    ],
)
def test_to_minor_uses_the_iso_exponent(amount: str, currency: str, minor: int) -> None:
    assert money.to_minor(amount, currency) == minor


def test_unknown_currency_is_a_clear_error() -> None:
    with pytest.raises(MoneyError, match="unknown currency 'XYZ'"):
        money.to_minor("1.00", "XYZ")


@pytest.mark.parametrize("amount", ["19.999", "1.5"])
def test_finer_than_the_currency_is_an_error_unless_rounding_is_asked(amount: str) -> None:
    currency = "EUR" if amount == "19.999" else "JPY"
    with pytest.raises(MoneyError, match="decimals"):
        money.to_minor(amount, currency)
    assert money.to_minor("19.995", "EUR", exact=False) == 2000
    assert money.to_minor("-19.995", "EUR", exact=False) == -2000


@pytest.mark.parametrize("amount", ["", "abc", "NaN", "Infinity", "1e"])
def test_garbage_is_not_money(amount: str) -> None:
    with pytest.raises(MoneyError):
        money.to_minor(amount, "EUR")


def test_to_decimal_round_trips() -> None:
    assert money.to_decimal(1999, "EUR") == Decimal("19.99")
    assert money.to_decimal(1500, "JPY") == Decimal("1500")
    assert str(money.to_decimal(1234, "KWD")) == "1.234"


def test_allocate_largest_remainder_is_exact_and_deterministic() -> None:
    assert money.allocate(100, [1, 1, 1]) == [34, 33, 33]
    assert money.allocate(-100, [1, 1, 1]) == [-34, -33, -33]
    assert money.allocate(10, [3, 0, 7]) == [3, 0, 7]
    assert money.allocate(5, [1, 2]) == [2, 3]
    assert money.allocate(0, [0, 0]) == [0, 0]
    with pytest.raises(ValueError, match="zero weights"):
        money.allocate(1, [0, 0])


@given(
    st.integers(-(10**9), 10**9),
    st.lists(st.integers(0, 10**6), min_size=1, max_size=20).filter(lambda w: sum(w) > 0),
)
def test_allocate_parts_add_up_and_stay_within_one_of_the_exact_share(
    total: int, weights: list[int]
) -> None:
    parts = money.allocate(total, weights)
    assert sum(parts) == total
    for part, weight in zip(parts, weights, strict=True):
        assert abs(part - Fraction(total * weight, sum(weights))) < 1


@given(
    st.integers(0, 10**7),
    st.integers(1, 50).flatmap(
        lambda whole: st.tuples(
            st.just(whole),
            st.lists(st.integers(1, whole), min_size=1, max_size=whole),
        )
    ),
)
def test_prorate_parts_of_a_line_shipped_in_steps_add_up(
    total: int, whole_and_steps: tuple[int, list[int]]
) -> None:
    whole, steps = whole_and_steps
    shipped, parts = 0, []
    for step in steps:
        step = min(step, whole - shipped)
        parts.append(money.prorate(total, step, whole, already=shipped))
        shipped += step
    parts.append(money.prorate(total, whole - shipped, whole, already=shipped))
    assert sum(parts) == total
    assert all(part >= 0 for part in parts)


def test_prorate_refuses_more_than_the_line_holds() -> None:
    with pytest.raises(ValueError, match="cannot ship 2 after 9 of a line of 10"):
        money.prorate(100, 2, 10, already=9)


@given(st.integers(-(10**8), 10**8), st.integers(0, 10_000))
def test_tax_included_lies_within_half_a_unit_of_the_exact_value(total: int, rate: int) -> None:
    exact = total - Fraction(total * 10_000, 10_000 + rate)
    assert abs(money.tax_included(total, rate) - exact) <= Fraction(1, 2)


def test_tax_examples() -> None:
    assert money.tax_included(11960, 2500) == 2392
    assert money.tax_included(-1000, 2500) == -200
    assert money.tax_on(8999, 725) == 652
    assert money.div_round(5, 2) == 3
    assert money.div_round(-5, 2) == -3
