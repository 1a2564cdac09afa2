"""The storefront platforms this service speaks to. Everything outside `plugin/platforms/` asks
here and names no platform; adding one is a package beside these and a line below."""

from collections.abc import Callable, Mapping

import jinja2

from plugin.events import FulfillmentEvent
from plugin.platforms.base import Platform
from plugin.platforms.bigcommerce.platform import PLATFORM as BIGCOMMERCE
from plugin.platforms.shopify.platform import PLATFORM as SHOPIFY
from plugin.platforms.standard.platform import PLATFORM as STANDARD
from plugin.platforms.woocommerce.platform import PLATFORM as WOOCOMMERCE
from plugin.shops import COMMON_OPTIONS
from plugin.web.forms import SettingsPage

PLATFORMS: Mapping[str, Platform] = {
    platform.name: platform for platform in (STANDARD, SHOPIFY, WOOCOMMERCE, BIGCOMMERCE)
}


def get(name: str) -> Platform | None:
    return PLATFORMS.get(name)


def domain_formats() -> dict[str, Callable[[str], bool]]:
    """How each platform writes its storefront domains, where it has a format."""
    return {
        name: platform.domain_format
        for name, platform in PLATFORMS.items()
        if platform.domain_format is not None
    }


def options_of(name: str) -> tuple[str, ...]:
    """The names of the options (ShopOptions' fields) that a shop of platform `name` uses."""
    platform = PLATFORMS.get(name)
    return COMMON_OPTIONS + (platform.options if platform is not None else ())


def settings_page(name: str) -> SettingsPage:
    """What the settings page of a shop of platform `name` adds to the common fields."""
    platform = PLATFORMS.get(name)
    return platform.settings_page if platform is not None else SettingsPage()


def settings_template(name: str) -> str | None:
    """The name `template_loader` gives platform `name`'s settings partial, if it has one."""
    template = settings_page(name).template
    return f"{name}/{template.name}" if template is not None else None


def template_loader() -> jinja2.BaseLoader:
    """The platforms' settings partials, each under its platform's name (`<name>/<file>`)."""
    return jinja2.PrefixLoader(
        {
            name: jinja2.FileSystemLoader(platform.settings_page.template.parent)
            for name, platform in PLATFORMS.items()
            if platform.settings_page.template is not None
        }
    )


def page_paths() -> tuple[str, ...]:
    """The paths of the platforms' own pages (install and admin entries)."""
    return tuple(path for platform in PLATFORMS.values() for path in platform.pages)


def delivery_event(name: str, body: bytes) -> FulfillmentEvent | None:
    """The shipment a stored delivery of platform `name` describes, where its body says alone."""
    platform = PLATFORMS.get(name)
    if platform is None or platform.delivery_event is None:
        return None
    return platform.delivery_event(body)
