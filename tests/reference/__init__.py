"""Public reference material the tests check the code against, vendored (README.md beside this
file names each file's source and date)."""

from pathlib import Path

HERE = Path(__file__).resolve().parent
KLARNA_OPENAPI = HERE / "klarna" / "order-management-api-openapi.yml"
SHOPIFY_FULFILLMENT_SAMPLE = HERE / "shopify" / "fulfillments-create.sample.json"
STANDARD_WEBHOOKS_SPEC = HERE / "standard-webhooks" / "standard-webhooks.md"
