"""Shopify: the app installed from the Shopify App Store. Its fulfilment webhooks point at the
order; the adapter reads the order through the Admin GraphQL API and writes the capture status
back as metafields and tags."""

NAME = "shopify"
