"""The settings form: what a merchant may enter, checked field by field. The fields every shop
has are here; what a platform adds (its fields, their checks, its partial, who frames its pages)
is its `SettingsPage`, in `plugin/platforms/<name>/settings.py`."""

import functools
import re
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any, ClassVar, Literal
from zoneinfo import available_timezones

import msgspec
from babel import Locale, UnknownLocaleError

from plugin import emails
from plugin.capture import DESCRIPTION_FIELDS, description_problem
from plugin.config import Settings
from plugin.klarna.models import Environment, Region, parse_environment, parse_region
from plugin.outbound import AddressGuard, IPNetwork, url_problem
from plugin.shops import Shops
from plugin.store import ShopChanges
from plugin.store.records import DEFAULT_PAYMENT_GATEWAYS, Shop, ShopOptions
from plugin.web.pages import Embedding

REGIONS = {"eu": "Europe", "na": "North America", "oc": "Oceania"}
ENVIRONMENTS = {"playground": "Playground (test)", "live": "Live"}
CAPTURE_MODES = {
    "each": "Capture each shipment as it ships",
    "complete": "Capture once, when the order is completely shipped",
}
TEMPLATE_FIELDS = DESCRIPTION_FIELDS
KLARNA_ACCOUNT_FIELDS = (
    "klarna_region",
    "klarna_environment",
    "klarna_username",
    "klarna_password",
)
MAX_NAME = 255
MAX_TIME_ZONE = 64  # characters, as ShopOptions.time_zone allows; the longest IANA name has 32
MAX_LOCALE = 32  # characters, as ShopOptions.locale allows; Babel's longest ids have about 20
# A locale identifier's shape (language, then script, territory, variant), before Babel reads it.
_LOCALE_ID = re.compile(r"[A-Za-z]{2,3}([_-][A-Za-z0-9]{2,8}){0,3}")
_ZONE_NAME = re.compile(r"[A-Za-z][A-Za-z0-9_+\-]*(/[A-Za-z0-9_+\-]+)*")


def _bounds(name: str) -> tuple[int, int]:
    """The bounds ShopOptions sets on its integer option `name`: the form checks the same."""
    info = msgspec.inspect.type_info(ShopOptions)
    if isinstance(info, msgspec.inspect.StructType):
        for field in info.fields:
            kind = field.type
            if field.name != name or not isinstance(kind, msgspec.inspect.IntType):
                continue
            if kind.ge is not None and kind.le is not None:
                return kind.ge, kind.le
    raise TypeError(f"ShopOptions.{name} is no bounded integer")


# How many days ahead of its expiry an authorization is extended (ShopOptions.keep_alive_days).
KEEP_ALIVE_DAYS = _bounds("keep_alive_days")


class SettingsPage:
    """What a platform adds to a shop's settings page. This base adds nothing: a platform's
    `settings.py` subclasses it, and its `Platform` names an instance (`settings_page`).

    - `template`: its partial, a template of up to two macros: `fields()`, shown in the form after
      the common fields, and `webhooks()`, the card below it that says how shipments reach us.
    - `status_url`: whether its page offers a status URL (its callbacks are signed with the
      shop's webhook secret); where not, a save keeps the one stored.
    - `webhook_secret`: whether the shop signs its webhooks with a secret of its own, which its
      page makes anew (a storefront app's are signed with the app's secret).
    - `write_only`: its fields that are never sent back, not even as they were typed.
    - `addresses`: its fields holding an address the service will call (checked by the guard).
    - `time_zone_default`: where a new shop's time zone comes from, as the time zone field's
      hint ends ("Until you set one: ...").
    """

    template: ClassVar[Path | None] = None
    status_url: ClassVar[bool] = True
    webhook_secret: ClassVar[bool] = True
    write_only: ClassVar[tuple[str, ...]] = ()
    addresses: ClassVar[tuple[str, ...]] = ()
    time_zone_default: ClassVar[str] = "UTC, as your storefront's webhooks do not say its time zone"

    def from_shop(self, shop: Shop) -> dict[str, str]:
        """Its fields as the shop has them stored."""
        return {}

    def from_post(
        self, data: Mapping[str, str], shop: Shop, kept: Mapping[str, str]
    ) -> tuple[dict[str, str], dict[str, str]]:
        """Its fields as posted (`kept`: as stored) and their errors."""
        return dict(kept), {}

    def options(self, fields: Mapping[str, str]) -> dict[str, Any]:
        """The shop options (ShopOptions' fields) its fields set."""
        return {}

    def klarna_required(self, fields: Mapping[str, str]) -> bool:
        """Whether Klarna API credentials must be entered with these fields: not where the
        storefront captures (its checkout took the payment) and nothing is called at Klarna."""
        return True

    def shop_domain(self, fields: Mapping[str, str]) -> str | None:
        """The shop's domain, where the merchant enters it (None: not changed here)."""
        return None

    def context(self, shops: Shops, shop: Shop) -> dict[str, Any]:
        """What its partial shows beyond the form (choices, what is stored of a credential)."""
        return {}

    def frame_ancestors(self, shop: Shop) -> tuple[str, ...]:
        """The origins that may frame the shop's pages (its storefront's admin); none by default."""
        return ()

    def embedding(self, settings: Settings, shop: Shop) -> Embedding | None:
        """How the shop's pages fit into its storefront's admin when a session started there
        (its app's admin entry) opens them; None by default: they stay pages of their own."""
        return None

    async def conflicts(self, shops: Shops, shop: Shop, form: "SettingsForm") -> dict[str, str]:
        """Errors of its fields that only the store knows (another shop with the same site)."""
        return {}

    async def save(self, shops: Shops, shop: Shop, fields: Mapping[str, str]) -> None:
        """What a save keeps beyond the shop's options (an API key entered, as its token)."""


class OrderIdSettingsPage(SettingsPage):
    """The page of a storefront app's shop (one installed from the platform's marketplace): where
    its orders keep the Klarna order id (`sources`, each with its own rules for the field,
    `field_problem`)."""

    sources: ClassVar[Mapping[str, str]] = {}
    # Status callbacks are signed with the shop's webhook secret, which a storefront app's
    # merchant never sees: the page does not offer them.
    status_url = False
    # The app's own secret signs these platforms' webhooks: the shop has none to show.
    webhook_secret = False

    def field_problem(self, source: str, field: str) -> str | None:
        """What is wrong with `field` where the order id is kept in `source`; None: nothing."""
        raise NotImplementedError

    def from_shop(self, shop: Shop) -> dict[str, str]:
        return {
            "klarna_order_id_source": shop.options.klarna_order_id_source,
            "klarna_order_id_field": shop.options.klarna_order_id_field,
        }

    def from_post(
        self, data: Mapping[str, str], shop: Shop, kept: Mapping[str, str]
    ) -> tuple[dict[str, str], dict[str, str]]:
        fields = {
            "klarna_order_id_source": data.get("klarna_order_id_source", "").strip(),
            "klarna_order_id_field": data.get("klarna_order_id_field", "").strip(),
        }
        errors = {}
        if fields["klarna_order_id_source"] not in self.sources:
            errors["klarna_order_id_source"] = "Choose where your orders keep the Klarna order id."
        else:
            problem = self.field_problem(
                fields["klarna_order_id_source"], fields["klarna_order_id_field"]
            )
            if problem:
                errors["klarna_order_id_field"] = problem
        return fields, errors

    def options(self, fields: Mapping[str, str]) -> dict[str, Any]:
        return {
            "klarna_order_id_source": order_id_source(fields["klarna_order_id_source"]),
            "klarna_order_id_field": fields["klarna_order_id_field"],
        }

    def context(self, shops: Shops, shop: Shop) -> dict[str, Any]:
        return {"klarna_order_id_sources": self.sources}


class SettingsForm(msgspec.Struct, kw_only=True):
    """Entered values (the password only as given, never shown again) and their errors; the
    platform's own fields in `fields`, named as its partial names them."""

    klarna_region: str = "eu"
    klarna_environment: str = "playground"
    klarna_username: str = ""
    klarna_password: str = ""
    capture_mode: str = "each"
    send_tracking: bool = True
    trigger_send_out: bool = False
    description_template: str = ""
    release_remaining: bool = True
    keep_alive: bool = True
    keep_alive_days: str = "3"
    time_zone: str = "UTC"
    locale: str = "en"
    status_url: str = ""
    email: str = ""
    failure_alerts: bool = False
    fields: dict[str, str] = {}
    errors: dict[str, str] = {}

    @classmethod
    def from_shop(cls, shop: Shop, page: SettingsPage) -> "SettingsForm":
        return cls(
            klarna_region=shop.klarna_region,
            klarna_environment=shop.klarna_environment,
            klarna_username=shop.klarna_username,
            capture_mode=shop.options.capture_mode,
            send_tracking=shop.options.send_tracking,
            trigger_send_out=shop.options.trigger_send_out,
            description_template=shop.options.description_template or "",
            release_remaining=shop.options.release_remaining,
            keep_alive=shop.options.keep_alive,
            keep_alive_days=str(shop.options.keep_alive_days),
            time_zone=shop.options.time_zone,
            locale=shop.options.locale,
            status_url=shop.status_url or "",
            email=shop.email or "",
            failure_alerts=shop.options.failure_alerts,
            fields=page.from_shop(shop),
        )

    @classmethod
    def from_post(
        cls, data: Mapping[str, str], shop: Shop, page: SettingsPage, *, mail: bool = True
    ) -> "SettingsForm":
        """The form as posted for `shop`. Fields its page does not show keep the shop's values
        (the address and the alerts too when `mail` is not configured); a shop without a stored
        Klarna password must be given one."""
        form = cls(
            klarna_region=data.get("klarna_region", "").strip(),
            klarna_environment=data.get("klarna_environment", "").strip(),
            klarna_username=data.get("klarna_username", "").strip(),
            klarna_password=data.get("klarna_password", ""),
            capture_mode=data.get("capture_mode", "").strip(),
            send_tracking=data.get("send_tracking") == "on",
            trigger_send_out=data.get("trigger_send_out") == "on",
            description_template=data.get("description_template", "").strip(),
            release_remaining=data.get("release_remaining") == "on",
            keep_alive=data.get("keep_alive") == "on",
            keep_alive_days=data.get("keep_alive_days", "").strip(),
            time_zone=data.get("time_zone", "").strip(),
            locale=data.get("locale", "en").strip(),
            status_url=data.get("status_url", "").strip(),
            # Cut before anything else looks at it: longer is no address (emails.MAX_ADDRESS).
            email=data.get("email", "")[: emails.MAX_ADDRESS + 1].strip(),
            failure_alerts=data.get("failure_alerts") == "on",
        )
        kept = cls.from_shop(shop, page)
        if not page.status_url:
            form.status_url = kept.status_url
        if not mail:
            # Not on the page: what the operator's CLI stored stays.
            form.email, form.failure_alerts = kept.email, kept.failure_alerts
        form.fields, form.errors = page.from_post(data, shop, kept.fields)
        form.errors.update(form._check())
        if not form.klarna_password and shop.klarna_password_set_at is None:
            form.errors["klarna_password"] = "Enter the API password Klarna gave you."  # noqa: S105
        if (
            not page.klarna_required(form.fields)
            and not form.klarna_username
            and not form.klarna_password
        ):
            # Left empty on purpose: nothing is called at Klarna for this shop.
            form.errors.pop("klarna_username", None)
            form.errors.pop("klarna_password", None)
        return form

    def _check(self) -> dict[str, str]:
        errors = {}
        if parse_region(self.klarna_region) is None:
            errors["klarna_region"] = "Choose the region of your Klarna account."
        if parse_environment(self.klarna_environment) is None:
            errors["klarna_environment"] = "Choose live or playground."
        if not self.klarna_username:
            errors["klarna_username"] = "Enter the API username Klarna gave you."
        elif len(self.klarna_username) > 255 or any(c.isspace() for c in self.klarna_username):
            errors["klarna_username"] = "An API username has no spaces and at most 255 characters."
        if len(self.klarna_password) > 1024:
            errors["klarna_password"] = "That is longer than any Klarna API password."  # noqa: S105
        if self.capture_mode not in CAPTURE_MODES:
            errors["capture_mode"] = "Choose when to capture."
        problem = description_problem(self.description_template)
        if problem:
            errors["description_template"] = problem
        if parse_keep_alive_days(self.keep_alive_days) is None:
            low, high = KEEP_ALIVE_DAYS
            errors["keep_alive_days"] = f"Enter a whole number of days from {low} to {high}."
        problem = time_zone_problem(self.time_zone)
        if problem:
            errors["time_zone"] = problem
        if locale_id(self.locale) is None:
            errors["locale"] = (
                "Enter a locale identifier, such as en, en_GB, de_DE or sv_SE (see the hint)."
            )
        if self.status_url and (
            not self.status_url.startswith(("https://", "http://")) or len(self.status_url) > 2048
        ):
            errors["status_url"] = "Enter an http(s) URL, or leave it empty."
        if self.email and emails.normalise(self.email) is None:
            errors["email"] = emails.PROBLEM
        elif self.failure_alerts and not self.email:
            errors["email"] = "Enter the address the alerts go to."
        return errors

    def forget_secrets(self, page: SettingsPage) -> None:
        """Write-only fields are never sent back, not even as they were typed."""
        self.klarna_password = ""
        for name in page.write_only:
            self.fields[name] = ""

    @property
    def account(self) -> tuple[Region, Environment]:
        """The Klarna account's region and environment, of a form without errors."""
        region, environment = (
            parse_region(self.klarna_region),
            parse_environment(self.klarna_environment),
        )
        if region is None or environment is None:
            raise ValueError("the form's Klarna account has errors")
        return region, environment

    def changes(self, shop: Shop, page: SettingsPage) -> ShopChanges:
        region, environment = self.account
        changes = ShopChanges(
            klarna_region=region,
            klarna_environment=environment,
            klarna_username=self.klarna_username,
            status_url=self.status_url or None,
            # Removing the address takes effect now; a new one only once the link mailed to it
            # is followed (email_to_confirm), so that a session cannot send sign-in links
            # elsewhere unchecked.
            email=None if not self.email else msgspec.UNSET,
            # The options the page does not show stay as stored.
            options=msgspec.structs.replace(
                shop.options,
                capture_mode="complete" if self.capture_mode == "complete" else "each",
                send_tracking=self.send_tracking,
                trigger_send_out=self.trigger_send_out,
                description_template=self.description_template or None,
                release_remaining=self.release_remaining,
                keep_alive=self.keep_alive,
                failure_alerts=self.failure_alerts,
                keep_alive_days=parse_keep_alive_days(self.keep_alive_days)
                or shop.options.keep_alive_days,
                time_zone=self.time_zone,
                locale=locale_id(self.locale) or "en",
                **page.options(self.fields),
            ),
        )
        domain = page.shop_domain(self.fields)
        if domain:
            changes.shop_domain = domain
        return changes

    def email_to_confirm(self, shop: Shop) -> str | None:
        """The new sign-in address entered, to be confirmed by the link mailed to it; None when
        the address is unchanged or removed (of a form without errors)."""
        address = emails.normalise(self.email) if self.email else None
        return address if address is not None and address != shop.email else None


def parse_keep_alive_days(value: str) -> int | None:
    """`value` as the shop's `keep_alive_days` (at most two ASCII digits, within
    KEEP_ALIVE_DAYS); None when it is no such number."""
    low, high = KEEP_ALIVE_DAYS
    if not re.fullmatch(r"[0-9]{1,2}", value) or not low <= int(value) <= high:
        return None
    return int(value)


def time_zone_problem(name: str) -> str | None:
    """What is wrong with `name` as the shop's time zone (an IANA name zoneinfo knows); None:
    nothing. Its shape is checked before the name is looked up."""
    if len(name) > MAX_TIME_ZONE or not _ZONE_NAME.fullmatch(name) or name not in _time_zones():
        return "Enter a time zone by its IANA name, such as Europe/Stockholm or America/New_York."
    return None


def locale_id(name: str) -> str | None:
    """`name` as the Babel locale identifier it names (`de-de` -> `de_DE`); None when it names
    none Babel has data for. Its length and shape are checked before Babel reads it."""
    if len(name) > MAX_LOCALE or not _LOCALE_ID.fullmatch(name):
        return None
    try:
        return str(Locale.parse(name.replace("-", "_")))
    except (UnknownLocaleError, ValueError):
        return None


@functools.cache
def _time_zones() -> frozenset[str]:
    """The IANA names this machine knows, read once (a walk of the zone files)."""
    return frozenset(available_timezones())


# A Shopify shop's payment gateways (its settings page, `shop set`): at most this many names.
MAX_GATEWAYS = 5


def gateways(text: str) -> tuple[str, ...]:
    """The payment gateway names of the field (comma-separated), lower case, each once; empty:
    the known names of Klarna's gateways."""
    names = tuple(dict.fromkeys(n.strip().casefold() for n in text.split(",") if n.strip()))
    return names or DEFAULT_PAYMENT_GATEWAYS


def gateways_problem(text: str) -> str | None:
    names = [n.strip() for n in text.split(",") if n.strip()]
    if len(names) > MAX_GATEWAYS:
        return f"Enter at most {MAX_GATEWAYS} gateway names, separated by commas."
    for name in names:
        problem = name_problem("payment gateway", name)
        if problem:
            return problem
    return None


def name_problem(what: str, name: str) -> str | None:
    """What is wrong with `name` as the name of a `what` (an attribute, a payment gateway)."""
    if not name:
        return f"Enter the name of the {what}."
    if len(name) > MAX_NAME or not name.isprintable():
        return f"A {what} name has at most {MAX_NAME} characters, all printable."
    return None


def order_id_source(value: str) -> Literal["metafield", "note_attribute", "transaction"]:
    """A storefront app's `klarna_order_id_source` as ShopOptions types it."""
    if value == "note_attribute":
        return "note_attribute"
    if value == "transaction":
        return "transaction"
    return "metafield"


async def address_errors(
    form: SettingsForm, shop: Shop, page: SettingsPage, allowed: Iterable[IPNetwork]
) -> dict[str, str]:
    """The entered URLs that lead outside the public internet and the `allowed` networks (names
    resolved, bounded in time). Only changed ones are checked: every call checks again where it
    connects."""
    guard = AddressGuard(allowed)
    stored = SettingsForm.from_shop(shop, page)
    entered = [("status_url", form.status_url, stored.status_url)]
    for name in page.addresses:
        entered.append((name, form.fields.get(name, ""), stored.fields.get(name, "")))
    errors = {}
    for field, url, before in entered:
        if url and url != before and field not in form.errors:
            problem = await url_problem(url, guard)
            if problem is not None:
                errors[field] = problem
    return errors
