"""Storefront adapters, one package per platform (`standard`, `shopify`, `woocommerce`,
`bigcommerce`): each knows its platform's headers, payloads and APIs, and nothing outside this
package knows a platform's field names. `registry` lists them; `base` is what every platform
gives the rest of the service."""
