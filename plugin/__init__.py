"""klarna-capture: captures Klarna orders when a storefront ships them."""

from plugin.about import VERSION as __version__

__all__ = ["__version__"]
