"""Integer money: minor units by ISO 4217 exponent, proportional allocation and tax in integers.

Decimal strings exist only at a storefront's edge and are parsed here with `Decimal`; inside, every
amount is an `int` of minor units. No float touches money.
"""

from collections.abc import Sequence
from decimal import ROUND_HALF_UP, Decimal, InvalidOperation

from plugin.errors import PluginError

# ISO 4217 active codes by minor-unit exponent (the List One table). Everything not named in the
# 0, 3 and 4 rows has two decimals.
_EXPONENTS: dict[int, str] = {
    0: "BIF CLP DJF GNF ISK JPY KMF KRW PYG RWF UGX UYI VND VUV XAF XOF XPF",
    2: (
        "AED AFN ALL AMD ANG AOA ARS AUD AWG AZN BAM BBD BDT BGN BMD BND BOB BOV BRL BSD BTN BWP "
        "BYN BZD CAD CDF CHE CHF CHW COP COU CRC CUC CUP CVE CZK DKK DOP DZD EGP ERN ETB EUR FJD "
        "FKP GBP GEL GHS GIP GMD GTQ GYD HKD HNL HTG HUF IDR ILS INR IRR JMD KES KGS KHR KPW KYD "
        "KZT LAK LBP LKR LRD LSL MAD MDL MGA MKD MMK MNT MOP MRU MUR MVR MWK MXN MXV MYR MZN NAD "
        "NGN NIO NOK NPR NZD PAB PEN PGK PHP PKR PLN QAR RON RSD RUB SAR SBD SCR SDG SEK SGD SHP "
        "SLE SOS SRD SSP STN SVC SYP SZL THB TJS TMT TOP TRY TTD TWD TZS UAH USD USN UYU UZS VED "
        "VES WST XCD XCG YER ZAR ZMW ZWG"
    ),
    3: "BHD IQD JOD KWD LYD OMR TND",
    4: "CLF UYW",
}
CURRENCY_EXPONENTS: dict[str, int] = {
    code: exponent for exponent, codes in _EXPONENTS.items() for code in codes.split()
}


class MoneyError(PluginError, ValueError):
    """An amount or currency that cannot be turned into exact minor units."""


def exponent(currency: str) -> int:
    """The number of decimals of `currency` (ISO 4217, case-insensitive)."""
    try:
        return CURRENCY_EXPONENTS[currency.upper()]
    except KeyError:
        raise MoneyError(f"unknown currency {currency!r}: not an ISO 4217 code") from None


def to_minor(amount: str | Decimal | int, currency: str, *, exact: bool = True) -> int:
    """Parse a decimal amount ("19.99") into minor units of `currency` (1999 for EUR).

    With `exact` (the default) an amount finer than the currency allows ("19.999" EUR) is an error;
    without it, it is rounded half up (storefronts that store tax-exclusive prices with extra
    digits).
    """
    try:
        value = Decimal(amount) if not isinstance(amount, Decimal) else amount
    except InvalidOperation:
        raise MoneyError(f"not a decimal amount: {amount!r}") from None
    if not value.is_finite():
        raise MoneyError(f"not a finite amount: {amount!r}")
    scaled = value.scaleb(exponent(currency))
    whole = scaled.to_integral_value(rounding=ROUND_HALF_UP)
    if exact and whole != scaled:
        raise MoneyError(f"{amount} {currency.upper()} has more than {exponent(currency)} decimals")
    return int(whole)


def to_decimal(minor: int, currency: str) -> Decimal:
    """Minor units back to a decimal amount, for display and storefront write-back."""
    return Decimal(minor).scaleb(-exponent(currency))


def div_round(numerator: int, denominator: int) -> int:
    """numerator / denominator rounded half away from zero, in integers."""
    if denominator <= 0:
        raise ValueError("denominator must be positive")
    quotient, remainder = divmod(abs(numerator), denominator)
    if 2 * remainder >= denominator:
        quotient += 1
    return quotient if numerator >= 0 else -quotient


def allocate(total: int, weights: Sequence[int]) -> list[int]:
    """Split `total` in proportion to `weights` so that the parts add up to `total` exactly.

    Largest remainder: every part gets the floor of its exact share, and the units left over go to
    the largest fractional remainders, ties to the earlier index. Deterministic.
    """
    if any(weight < 0 for weight in weights):
        raise ValueError("weights must not be negative")
    weight_sum = sum(weights)
    if weight_sum == 0:
        if total != 0:
            raise ValueError("cannot allocate a non-zero total over zero weights")
        return [0] * len(weights)
    sign = -1 if total < 0 else 1
    magnitude = abs(total)
    parts = []
    remainders = []
    for index, weight in enumerate(weights):
        share, remainder = divmod(magnitude * weight, weight_sum)
        parts.append(share)
        remainders.append((-remainder, index))
    left = magnitude - sum(parts)
    for _, index in sorted(remainders)[:left]:
        parts[index] += 1
    return [sign * part for part in parts]


def prorate(total: int, quantity: int, of_quantity: int, *, already: int = 0) -> int:
    """The share of `total` (a line's discount or tax) that `quantity` of `of_quantity` units carry,
    after `already` units were shipped before.

    Shares are differences of rounded cumulative shares, so however a line is split across
    shipments, and in whatever steps, the parts add up to `total` exactly.
    """
    if quantity < 0 or already < 0 or already + quantity > of_quantity:
        raise ValueError(f"cannot ship {quantity} after {already} of a line of {of_quantity} units")
    if of_quantity == 0:
        return 0
    return div_round(total * (already + quantity), of_quantity) - div_round(
        total * already, of_quantity
    )


def tax_included(total_amount: int, tax_rate: int) -> int:
    """The tax contained in a tax-inclusive `total_amount` at `tax_rate` (2500 = 25 %), rounded
    half away from zero: Klarna accepts total_tax_amount within +-1 of the exact value."""
    return total_amount - div_round(total_amount * 10_000, 10_000 + tax_rate)


def tax_on(net_amount: int, tax_rate: int) -> int:
    """The tax to add to a tax-exclusive `net_amount` at `tax_rate`, rounded half away from zero."""
    return div_round(net_amount * tax_rate, 10_000)
