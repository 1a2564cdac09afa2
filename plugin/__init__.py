"""klarna-capture: captures Klarna orders when a storefront ships them."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("klarna-capture")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0.0.0"
