"""The drawing on docs/architecture.md is the code's: every module of `plugin/` sits in one of its
boxes, every import from one box to another is an arrow of it, and every arrow is an import.

Imports made only for annotations (under `if TYPE_CHECKING:`) are not arrows: they do not run."""

import ast
import re
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PAGE = ROOT / "docs/architecture.md"
# A box: `id["label"]` with the label's paths in backquotes; an arrow: `a --> b`.
_MERMAID = re.compile(r"```mermaid\n(.*?)```", re.S)
_BOX = re.compile(r'^\s*(\w+)\["(.*?)"\]', re.M)
_ARROW = re.compile(r"^\s*(\w+)\s*-->\s*(\w+)\s*$", re.M)
_PATH = re.compile(r"`(plugin/[\w/.]*)`")


def drawing() -> tuple[dict[str, list[str]], set[tuple[str, str]]]:
    blocks = _MERMAID.findall(PAGE.read_text())
    assert len(blocks) == 1, "docs/architecture.md draws the dependencies in one mermaid block"
    boxes = {box: _PATH.findall(label) for box, label in _BOX.findall(blocks[0])}
    return boxes, set(_ARROW.findall(blocks[0]))


def module_of(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def box_of(module: str, boxes: dict[str, list[str]]) -> str | None:
    """The box whose path is the longest that holds `module`."""
    best: tuple[int, str] | None = None
    for box, paths in boxes.items():
        for path in paths:
            prefix = path.removesuffix(".py").rstrip("/").replace("/", ".")
            holds = module == prefix or module.startswith(prefix + ".")
            if holds and (best is None or len(prefix) > best[0]):
                best = (len(prefix), box)
    return best[1] if best else None


def _runtime_imports(tree: ast.Module, modules: set[str]) -> set[str]:
    """The modules of `modules` that a module imports when it runs (annotation-only ones left
    out): `from plugin import metrics` is an import of plugin.metrics, not of plugin."""
    typing_only: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            typing_only.update(id(child) for child in ast.walk(node))
    found: set[str] = set()
    for node in ast.walk(tree):
        if id(node) in typing_only:
            continue
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            for alias in node.names:
                named = f"{node.module}.{alias.name}"
                found.add(named if named in modules else node.module)
    return found & modules


def imports() -> dict[str, set[str]]:
    sources = {module_of(path): path for path in (ROOT / "plugin").rglob("*.py")}
    return {
        module: _runtime_imports(ast.parse(path.read_text()), set(sources))
        for module, path in sources.items()
    }


def test_every_module_sits_in_a_box() -> None:
    boxes, _ = drawing()
    assert sorted(module for module in imports() if box_of(module, boxes) is None) == []


def test_every_box_names_code_that_exists() -> None:
    boxes, _ = drawing()
    missing = [path for paths in boxes.values() for path in paths if not (ROOT / path).exists()]
    assert missing == []


def test_the_arrows_are_the_imports_between_boxes() -> None:
    boxes, arrows = drawing()
    found: dict[tuple[str, str], list[str]] = defaultdict(list)
    for module, names in imports().items():
        for name in names:
            source, target = box_of(module, boxes), box_of(name, boxes)
            if source and target and source != target:
                found[(source, target)].append(f"{module} -> {name}")
    undrawn = {arrow: sorted(found[arrow]) for arrow in found if arrow not in arrows}
    assert undrawn == {}, "imports the drawing lacks"
    assert sorted(arrows - set(found)) == [], "arrows that no import makes"
