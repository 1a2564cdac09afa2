"""The settings page of a Standard Webhooks shop: the common fields, its status URL and its
webhook secret; nothing of its own beyond the partial that shows them."""

from pathlib import Path

from plugin.web.forms import SettingsPage


class StandardSettings(SettingsPage):
    template = Path(__file__).resolve().parent / "templates" / "settings.html"
