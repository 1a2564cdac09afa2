"""The shape of the code: each storefront platform is one package that nothing outside it imports
but the registry, product code never imports a sandbox, every module imports on its own (no
import cycle hides behind an import order), and every template ships in the package."""

import ast
import tomllib
from collections.abc import Iterator
from pathlib import Path

from plugin.platforms import registry

ROOT = Path(__file__).resolve().parents[1]
PLUGIN = ROOT / "plugin"
PLATFORMS = sorted(path.parent.name for path in (PLUGIN / "platforms").glob("*/__init__.py"))
REGISTRY = "plugin/platforms/registry.py"


def sources() -> Iterator[Path]:
    yield from sorted(PLUGIN.rglob("*.py"))
    yield from sorted((ROOT / "scripts").rglob("*.py"))


def module_of(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imported(path: Path) -> set[str]:
    """Every module `path` imports, anywhere in it (a function's lazy imports too); `from a
    import b` imports `a.b` where b is a module, else `a`."""
    names: set[str] = set()
    package = module_of(path).split(".")
    if path.name != "__init__.py":
        package = package[:-1]
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = package[: len(package) - node.level + 1] if node.level else []
            module = ".".join([*base, *([node.module] if node.module else [])])
            for alias in node.names:
                submodule = f"{module}.{alias.name}"
                names.add(submodule if is_module(submodule) else module)
    return names


def is_module(name: str) -> bool:
    path = ROOT.joinpath(*name.split("."))
    return path.with_suffix(".py").is_file() or (path / "__init__.py").is_file()


def platform_of(module: str) -> str | None:
    parts = module.split(".")
    if len(parts) >= 3 and parts[:2] == ["plugin", "platforms"] and parts[2] in PLATFORMS:
        return parts[2]
    return None


def test_the_platforms_are_found() -> None:
    assert PLATFORMS == ["bigcommerce", "shopify", "standard", "woocommerce"]


def test_only_the_registry_imports_a_platform_package() -> None:
    offenders = set()
    for path in sources():
        where = str(path.relative_to(ROOT))
        if where == REGISTRY:
            continue
        for module in imported(path):
            platform = platform_of(module)
            if platform is None or where.startswith(f"plugin/platforms/{platform}/"):
                continue
            offenders.add((where, module))
    assert offenders == set()


def test_the_dependencies_run_one_way() -> None:
    """web pages -> registry -> platforms -> web helpers and core: the modules the platforms use
    from the web layer ask no registry, and the service knows no web layer (the app gives the
    pages their sign-in)."""
    for helper in ("pages", "auth", "forms"):
        assert "plugin.platforms.registry" not in imported(PLUGIN / "web" / f"{helper}.py")
    assert not [name for name in imported(PLUGIN / "service.py") if name.startswith("plugin.web")]


def test_the_service_templates_name_no_platform() -> None:
    """What a platform's shops see of it (its fields, hints, webhook card) is its own partial,
    under plugin/platforms/<name>/templates/."""
    labels = {platform.label.lower() for platform in registry.PLATFORMS.values()}
    assert labels == {"standard webhooks", "shopify", "woocommerce", "bigcommerce"}
    for template in (PLUGIN / "templates").glob("*.html"):
        text = template.read_text().lower()
        assert [label for label in labels if label in text] == [], template.name


def test_product_code_never_imports_a_sandbox() -> None:
    """The simulators are for tests, demos and benchmarks; only the CLI's `sandbox` command runs
    them (it imports them when run)."""
    importing = {
        str(path.relative_to(ROOT))
        for path in PLUGIN.rglob("*.py")
        if not path.is_relative_to(PLUGIN / "sandbox")
        and any(name.startswith("plugin.sandbox") for name in imported(path))
    }
    assert importing <= {"plugin/cli/sandbox.py"}


def test_the_sandboxes_import_no_platform() -> None:
    """A sandbox states what it serves itself (the Shopify API versions, say); the product's
    choices are checked against it by tests, never read by it."""
    for path in (PLUGIN / "sandbox").rglob("*.py"):
        assert not [name for name in imported(path) if platform_of(name)], path


def test_every_template_is_package_data() -> None:
    """The templates (the platforms' settings partials too) and the stylesheet are in the
    wheel: pyproject's package data names each of them."""
    patterns = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"][
        "package-data"
    ]["plugin"]
    shipped = {path for pattern in patterns for path in PLUGIN.glob(pattern)}
    needed = {path for suffix in ("html", "css") for path in PLUGIN.rglob(f"*.{suffix}")}
    assert needed
    assert needed - shipped == set()
