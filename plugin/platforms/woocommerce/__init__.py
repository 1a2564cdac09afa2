"""WooCommerce: a site's signed order webhooks carry the whole order; the adapter decides from
them what shipped and writes the outcome back through the site's REST API."""

NAME = "woocommerce"
