"""Every module of the service imports on its own, whichever is first: an import cycle between
modules (the registry, the platforms and the service, say) shows only when one of them is the
first imported, which no other test chooses."""

import pkgutil
import subprocess
import sys

import plugin

MODULES = sorted(
    module.name
    for module in pkgutil.walk_packages(plugin.__path__, "plugin.")
    if module.name != "plugin.__main__"
)

# One interpreter imports each module first in turn, forgetting the service's modules between.
_PROBE = """
import importlib, sys
failed = []
for name in sys.argv[1:]:
    for loaded in [m for m in sys.modules if m == "plugin" or m.startswith("plugin.")]:
        del sys.modules[loaded]
    try:
        importlib.import_module(name)
    except Exception as exc:
        failed.append(f"{name}: {type(exc).__name__}: {exc}")
print("\\n".join(failed))
"""


def test_the_walk_finds_the_platform_packages() -> None:
    assert "plugin.platforms.registry" in MODULES
    assert "plugin.platforms.shopify.webhooks" in MODULES


def test_every_module_imports_when_it_is_the_first() -> None:
    done = subprocess.run(
        [sys.executable, "-c", _PROBE, *MODULES], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == ""
