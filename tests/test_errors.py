"""One exception tree: the names plugin/errors.py exports are pinned, every exception class
defined anywhere under plugin/ derives from its root, and the drawing in its docstring names each
public one."""

import importlib
import inspect
import pkgutil
from collections.abc import Iterator
from types import ModuleType

import plugin
from plugin import errors
from plugin.capture import CaptureRefused
from plugin.errors import MappingError, OperationError, PluginError
from plugin.klarna import KlarnaError
from plugin.platforms.base import ApiError, StorefrontError
from plugin.worker import JobFailure


def modules() -> Iterator[ModuleType]:
    """Every module of the package, imported."""
    yield plugin
    for info in pkgutil.walk_packages(plugin.__path__, "plugin."):
        if info.name != "plugin.__main__":  # runs the CLI when imported; it defines nothing
            yield importlib.import_module(info.name)


def exception_classes() -> list[type[BaseException]]:
    """Every exception class a module under plugin/ defines (not those it imports)."""
    found = []
    for module in modules():
        for _, value in inspect.getmembers(module, inspect.isclass):
            if issubclass(value, BaseException) and value.__module__ == module.__name__:
                found.append(value)
    return found


def test_the_public_names_are_pinned() -> None:
    assert sorted(errors.__all__) == [
        "JobError",
        "MappingError",
        "OperationError",
        "PluginError",
        "join_messages",
    ]
    exported = {
        name
        for name in errors.__all__
        if inspect.isclass(value := getattr(errors, name)) and issubclass(value, BaseException)
    }
    assert exported == {"PluginError", "OperationError", "MappingError"}


def test_every_exception_class_of_the_project_derives_from_the_root() -> None:
    found = exception_classes()
    # The walk reaches every corner: the root's own module, a platform package, a sandbox.
    names = {f"{cls.__module__}.{cls.__qualname__}" for cls in found}
    assert {
        "plugin.errors.PluginError",
        "plugin.platforms.shopify.api.ShopifyError",
        "plugin.sandbox.shopify._GraphQLError",
    } <= names
    strays = [
        f"{cls.__module__}.{cls.__qualname__}" for cls in found if not issubclass(cls, PluginError)
    ]
    assert strays == []


def test_the_docstring_draws_every_public_exception_class() -> None:
    drawing = errors.__doc__ or ""
    public = sorted(
        {cls.__name__ for cls in exception_classes() if not cls.__name__.startswith("_")}
    )
    assert [name for name in public if name not in drawing] == []


def test_one_retryable_meaning_for_every_failed_operation() -> None:
    # The same fact under the same name: whether the same operation may succeed later.
    for branch in (KlarnaError, ApiError, StorefrontError, CaptureRefused, JobFailure):
        assert issubclass(branch, OperationError)
    assert KlarnaError("read", status=503, error_code="X", retryable=True).retryable
    assert not ApiError("read", status=400, code="X").retryable
    assert StorefrontError("map", "X", [], retryable=True).retryable
    assert not CaptureRefused("ORDER_CANCELLED", "cancelled").retryable
    assert issubclass(MappingError, ValueError)
