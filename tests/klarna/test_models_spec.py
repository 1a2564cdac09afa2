"""Our Klarna Structs against Klarna's own OpenAPI spec, so the two cannot drift apart."""

import re
from typing import Annotated, Any

import msgspec
import pytest
import yaml
from msgspec import inspect

from plugin.klarna import models
from tests.reference import KLARNA_OPENAPI

SPEC_PATH = KLARNA_OPENAPI

# Struct -> spec schema; request Structs must match exactly, read Structs only in names and types.
REQUESTS = {
    models.CaptureObject: "CaptureObject",
    models.OrderLine: "order_line",
    models.ShippingInfo: "shipping_info",
    models.UpdateShippingInfo: "UpdateShippingInfo",
    models.RefundObject: "RefundObject",
    models.UpdateMerchantReferences: "Update merchant references",
}
READS = {
    models.Order: "MerchantOrderDto",
    models.Capture: "Capture",
    models.Refund: "Refund",
    models.ErrorBody: "ErrorMessageDto",
}


@pytest.fixture(scope="module")
def schemas() -> dict[str, Any]:
    spec = yaml.safe_load(SPEC_PATH.read_text())
    return dict(spec["components"]["schemas"])


def _ref_name(prop: dict[str, Any]) -> str:
    return str(prop["$ref"]).rsplit("/", 1)[-1]


def _unwrap(typ: inspect.Type) -> tuple[inspect.Type, bool]:
    """(the type without None, whether None was allowed)."""
    if isinstance(typ, inspect.UnionType):
        others = [t for t in typ.types if not isinstance(t, inspect.NoneType)]
        assert len(others) == 1, typ
        return others[0], True
    return typ, False


def _spec_enum(prop: dict[str, Any]) -> set[str] | None:
    # Klarna's spec writes some enums as one "a|b|c" string or an unanchored "(a|b|c)" pattern.
    if "enum" in prop:
        return {word for value in prop["enum"] for word in str(value).split("|")}
    if "pattern" in prop:
        return set(re.sub(r"[()^$]", "", prop["pattern"]).split("|"))
    return None


def _check_type(where: str, typ: inspect.Type, prop: dict[str, Any], exact: bool) -> None:
    if "$ref" in prop:
        assert isinstance(typ, inspect.StructType), where
        return
    kind = prop.get("type")
    if isinstance(typ, inspect.IntType):
        assert kind == "integer", where
        if exact:
            assert typ.ge == prop.get("minimum"), f"{where}: minimum"
            assert typ.le == prop.get("maximum"), f"{where}: maximum"
    elif isinstance(typ, inspect.LiteralType):
        assert kind == "string", where
        assert set(typ.values) == _spec_enum(prop), f"{where}: enum values"
    elif isinstance(typ, inspect.StrType):
        assert kind == "string", where
        if exact:
            assert _spec_enum(prop) is None, f"{where}: the spec has an enum for this field"
            assert typ.max_length == prop.get("maxLength"), f"{where}: maxLength"
    elif isinstance(typ, inspect.DateTimeType):
        assert (kind, prop.get("format")) == ("string", "date-time"), where
    elif isinstance(typ, inspect.ListType):
        assert kind == "array", where
        if exact:
            assert typ.max_length == prop.get("maxItems"), f"{where}: maxItems"
            assert (typ.min_length or 0) == prop.get("minItems", 0), f"{where}: minItems"
        item, _ = _unwrap(typ.item_type)
        _check_type(f"{where}[]", item, prop["items"], exact)
    else:
        raise AssertionError(f"{where}: no rule for {typ!r}")


def _check_struct(
    struct: type[msgspec.Struct], schema_name: str, schemas: dict[str, Any], exact: bool
) -> None:
    schema = schemas[schema_name]
    info = inspect.type_info(struct)
    assert isinstance(info, inspect.StructType)
    required = set(schema.get("required", []))
    for field in info.fields:
        where = f"{schema_name}.{field.encode_name}"
        assert field.encode_name in schema["properties"], f"{where} is not in Klarna's spec"
        prop = schema["properties"][field.encode_name]
        typ, nullable = _unwrap(field.type)
        _check_type(where, typ, prop, exact)
        if exact:
            is_required = field.required and not nullable
            assert is_required == (field.encode_name in required), f"{where}: required"
        if isinstance(typ, inspect.StructType) or (
            isinstance(typ, inspect.ListType) and "$ref" in prop.get("items", {})
        ):
            nested = typ if isinstance(typ, inspect.StructType) else _unwrap(typ.item_type)[0]
            assert isinstance(nested, inspect.StructType)
            ref = prop if "$ref" in prop else prop["items"]
            _check_struct(nested.cls, _ref_name(ref), schemas, exact)


@pytest.mark.parametrize(("struct", "schema_name"), REQUESTS.items())
def test_request_structs_match_the_spec_exactly(
    struct: type[msgspec.Struct], schema_name: str, schemas: dict[str, Any]
) -> None:
    _check_struct(struct, schema_name, schemas, exact=True)


@pytest.mark.parametrize(("struct", "schema_name"), READS.items())
def test_read_structs_use_the_specs_names_and_types(
    struct: type[msgspec.Struct], schema_name: str, schemas: dict[str, Any]
) -> None:
    _check_struct(struct, schema_name, schemas, exact=False)


def test_order_status_enum_is_the_specs(schemas: dict[str, Any]) -> None:
    info = inspect.type_info(models.Order)
    assert isinstance(info, inspect.StructType)
    field = next(f for f in info.fields if f.name == "status")
    assert isinstance(field.type, inspect.LiteralType)
    assert set(field.type.values) == set(
        schemas["MerchantOrderDto"]["properties"]["status"]["enum"]
    )


def test_a_drifted_struct_is_caught(schemas: dict[str, Any]) -> None:
    class Drifted(msgspec.Struct, omit_defaults=True):
        name: models.Str255
        quantity: models.Quantity
        total_amount: models.SignedAmount
        unit_price: models.SignedAmount
        reference: Annotated[str, msgspec.Meta(max_length=64)] | None = None

    _check_struct(models.OrderLine, "order_line", schemas, exact=True)
    with pytest.raises(AssertionError, match=r"order_line\.reference: maxLength"):
        _check_struct(Drifted, "order_line", schemas, exact=True)


def test_responses_tolerate_fields_klarna_adds() -> None:
    body = b'{"order_id": "o1", "status": "AUTHORIZED", "order_amount": 100, "brand_new": {"x": 1}}'
    assert msgspec.json.decode(body, type=models.Order).order_id == "o1"
