"""BigCommerce: the app installed from the BigCommerce marketplace. Its thin shipment webhooks
point at the order; the adapter reads the order through the REST API and writes the capture
status back as a metafield and staff notes."""

NAME = "bigcommerce"
