"""The settings form: what a merchant may enter, checked field by field."""

import string
from collections.abc import Mapping

import msgspec

from plugin.store import ShopChanges
from plugin.store.records import Shop, ShopOptions

REGIONS = {"eu": "Europe", "na": "North America", "oc": "Oceania"}
ENVIRONMENTS = {"playground": "Playground (test)", "live": "Live"}
CAPTURE_MODES = {
    "each": "Capture each shipment as it ships",
    "complete": "Capture once, when the order is completely shipped",
}
TEMPLATE_FIELDS = ("fulfillment_name", "fulfillment_id", "order_id")


class SettingsForm(msgspec.Struct, kw_only=True):
    """Entered values (the password only as given, never shown again) and their errors."""

    klarna_region: str = "eu"
    klarna_environment: str = "playground"
    klarna_username: str = ""
    klarna_password: str = ""
    capture_mode: str = "each"
    send_tracking: bool = True
    trigger_send_out: bool = False
    description_template: str = ""
    status_url: str = ""
    errors: dict[str, str] = {}

    @classmethod
    def from_shop(cls, shop: Shop) -> "SettingsForm":
        return cls(
            klarna_region=shop.klarna_region,
            klarna_environment=shop.klarna_environment,
            klarna_username=shop.klarna_username,
            capture_mode=shop.options.capture_mode,
            send_tracking=shop.options.send_tracking,
            trigger_send_out=shop.options.trigger_send_out,
            description_template=shop.options.description_template or "",
            status_url=shop.status_url or "",
        )

    @classmethod
    def from_post(cls, data: Mapping[str, str]) -> "SettingsForm":
        form = cls(
            klarna_region=data.get("klarna_region", "").strip(),
            klarna_environment=data.get("klarna_environment", "").strip(),
            klarna_username=data.get("klarna_username", "").strip(),
            klarna_password=data.get("klarna_password", ""),
            capture_mode=data.get("capture_mode", "").strip(),
            send_tracking=data.get("send_tracking") == "on",
            trigger_send_out=data.get("trigger_send_out") == "on",
            description_template=data.get("description_template", "").strip(),
            status_url=data.get("status_url", "").strip(),
        )
        form.errors = form._check()
        return form

    def _check(self) -> dict[str, str]:
        errors = {}
        if self.klarna_region not in REGIONS:
            errors["klarna_region"] = "Choose the region of your Klarna account."
        if self.klarna_environment not in ENVIRONMENTS:
            errors["klarna_environment"] = "Choose live or playground."
        if not self.klarna_username:
            errors["klarna_username"] = "Enter the API username Klarna gave you."
        elif len(self.klarna_username) > 255 or any(c.isspace() for c in self.klarna_username):
            errors["klarna_username"] = "An API username has no spaces and at most 255 characters."
        if len(self.klarna_password) > 1024:
            errors["klarna_password"] = "That is longer than any Klarna API password."  # noqa: S105
        if self.capture_mode not in CAPTURE_MODES:
            errors["capture_mode"] = "Choose when to capture."
        problem = _template_problem(self.description_template)
        if problem:
            errors["description_template"] = problem
        if self.status_url and (
            not self.status_url.startswith(("https://", "http://")) or len(self.status_url) > 2048
        ):
            errors["status_url"] = "Enter an http(s) URL, or leave it empty."
        return errors

    def changes(self) -> ShopChanges:
        return ShopChanges(
            klarna_region=self.klarna_region,
            klarna_environment=self.klarna_environment,
            klarna_username=self.klarna_username,
            status_url=self.status_url or None,
            options=ShopOptions(
                capture_mode="complete" if self.capture_mode == "complete" else "each",
                send_tracking=self.send_tracking,
                trigger_send_out=self.trigger_send_out,
                description_template=self.description_template or None,
            ),
        )


def _template_problem(template: str) -> str | None:
    if len(template) > 255:
        return "Klarna shows at most 255 characters."
    try:
        names = [name for _, name, _, _ in string.Formatter().parse(template) if name is not None]
    except ValueError:
        return "Braces must pair up, as in {fulfillment_name}."
    unknown = [name for name in names if name not in TEMPLATE_FIELDS]
    if unknown:
        allowed = ", ".join("{" + name + "}" for name in TEMPLATE_FIELDS)
        return f"Unknown field {{{unknown[0]}}}; you can use {allowed}."
    return None
