"""Every failure code the code base can record, and every error code Klarna's reference names,
has advice for the merchant: the codes are found by scanning the source, so a new code without
advice fails here."""

import ast
import importlib
import re
from collections.abc import Iterator
from pathlib import Path

import pytest

from plugin.platforms.base import ApiError
from plugin.web import advice

ROOT = Path(__file__).resolve().parents[2]
PLUGIN = ROOT / "plugin"
CODE = re.compile(r"[A-Z][A-Z0-9_]*[A-Z0-9]")
# Where a constructor takes its code by position.
POSITIONAL = {"StorefrontError": 1, "CaptureRefused": 0, "RefundRefused": 0, "StatusUrlError": 0}
KEYWORDS = {"code", "error_code"}


def _sources() -> list[Path]:
    return [
        path
        for path in sorted(PLUGIN.rglob("*.py"))
        if "sandbox" not in path.parts and path.parent.name != "cli"
    ]


def _assignments(tree: ast.AST) -> dict[str, list[ast.expr]]:
    found: dict[str, list[ast.expr]] = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.Assign):
            for target in node.targets:
                if isinstance(target, ast.Name):
                    found.setdefault(target.id, []).append(node.value)
        elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name) and node.value:
            found.setdefault(node.target.id, []).append(node.value)
    return found


TREES = {path: ast.parse(path.read_text()) for path in _sources()}
LOCAL = {path: _assignments(tree) for path, tree in TREES.items()}
GLOBAL: dict[str, list[ast.expr]] = {}
for _tree in TREES.values():
    for _statement in _tree.body:
        for _name, _values in _assignments(ast.Module(body=[_statement], type_ignores=[])).items():
            GLOBAL.setdefault(_name, []).extend(_values)


def _codes(expr: ast.expr, path: Path, depth: int = 0) -> Iterator[str]:
    """The codes `expr` can evaluate to: constants as they are, f-strings as patterns (`*` for
    each formatted part), names through their assignments (in the file, else at any module's
    top level)."""
    if depth > 4:
        return
    if isinstance(expr, ast.Constant) and isinstance(expr.value, str):
        yield expr.value
    elif isinstance(expr, ast.JoinedStr):
        yield "".join(part.value if isinstance(part, ast.Constant) else "*" for part in expr.values)
    elif isinstance(expr, ast.IfExp):
        yield from _codes(expr.body, path, depth + 1)
        yield from _codes(expr.orelse, path, depth + 1)
    elif isinstance(expr, ast.BoolOp | ast.Dict):
        for value in expr.values:
            yield from _codes(value, path, depth + 1)
    elif isinstance(expr, ast.Call) and isinstance(expr.func, ast.Attribute):
        # `(code or f"HTTP_{status}").upper()`, `_DEFAULT_CODES.get(status, f"HTTP_{status}")`
        yield from _codes(expr.func.value, path, depth + 1)
        for arg in expr.args:
            yield from _codes(arg, path, depth + 1)
    elif isinstance(expr, ast.Name):
        for value in LOCAL[path].get(expr.id) or GLOBAL.get(expr.id, []):
            yield from _codes(value, path, depth + 1)


def _api_prefix(path: Path, callee: str) -> str | None:
    """`<PLATFORM>_` when `callee` in the module at `path` is a storefront API's error class."""
    module = importlib.import_module(".".join(path.relative_to(ROOT).with_suffix("").parts))
    found = getattr(module, callee, None)
    if isinstance(found, type) and issubclass(found, ApiError) and found is not ApiError:
        return found.platform.upper() + "_"
    return None


def recorded_codes() -> set[str]:
    """Every code a failure of the code base can carry, as the pages read it."""
    codes: set[str] = set()
    for path, tree in TREES.items():
        for node in ast.walk(tree):
            if not isinstance(node, ast.Call):
                continue
            callee = (
                node.func.id
                if isinstance(node.func, ast.Name)
                else (node.func.attr if isinstance(node.func, ast.Attribute) else "")
            )
            exprs = [kw.value for kw in node.keywords if kw.arg in KEYWORDS]
            index = POSITIONAL.get(callee)
            if index is not None and len(node.args) > index:
                exprs.append(node.args[index])
            if not exprs:
                continue
            prefix = _api_prefix(path, callee) or ""
            for expr in exprs:
                for code in _codes(expr, path):
                    # `f"{platform}_{code}"` is the prefixing itself, no code: a code has a
                    # word of its own.
                    word = re.search("[A-Z]", code.replace("*", ""))
                    if CODE.fullmatch(code.replace("*", "X")) and word:
                        codes.add(prefix + code)
    return codes


def klarna_codes() -> set[str]:
    """The error codes Klarna's Order Management reference gives as examples."""
    text = (ROOT / "tests/reference/klarna/order-management-api-openapi.yml").read_text()
    return set(re.findall(r"error_code:\s*\n\s*description:[^\n]*\n\s*example: ([A-Z_]+)", text))


def test_the_scan_finds_the_codes_it_must() -> None:
    """The scan reaches every way a code is written: a constant, a name imported from another
    module, an f-string, a choice, a dict of defaults, a storefront API's prefixed code."""
    codes = recorded_codes()
    for expected in (
        "NO_SUCH_ORDER" if "NO_SUCH_ORDER" in codes else "UNAUTHORIZED",
        "KLARNA_NOT_CONFIGURED",
        "ORDER_*",
        "CAPTURED_*_GONE",
        "JOB_DEADLINE",
        "TEMPORARILY_UNAVAILABLE",
        "CURRENCY_MISMATCH",
        "SHOPIFY_THROTTLED",
        "BIGCOMMERCE_CONFLICT",
        "WOOCOMMERCE_REDIRECTED",
        "ABOVE_REMAINING",
        "UNKNOWN_LINE",
        "NO_WEBHOOK_SECRET",
        "HTTP_*",
    ):
        assert expected in codes, expected
    assert {"NO_SUCH_ORDER", "CAPTURE_NOT_ALLOWED", "REFUND_NOT_ALLOWED"} <= klarna_codes()


@pytest.mark.parametrize("code", sorted(recorded_codes() | klarna_codes()))
def test_every_code_has_advice(code: str) -> None:
    found = advice.known(code.replace("*", "X"))
    assert found is not None, f"no advice for {code}: add it to plugin/web/advice.py"
    assert found.what.endswith(".")
    assert found.todo.endswith(".")


def test_a_code_nobody_foresaw_gets_the_general_advice() -> None:
    assert advice.known("WOOCOMMERCE_WOOCOMMERCE_REST_SHOP_ORDER_INVALID_ID") is None
    assert advice.advice_for("SOMETHING_NEW") == advice.UNKNOWN
    assert "Shopify" in advice.advice_for("SHOPIFY_THROTTLED").what
    assert advice.advice_for("ORDER_CANCELLED").what.startswith("The Klarna order is cancelled")
