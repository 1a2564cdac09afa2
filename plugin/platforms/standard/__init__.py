"""Standard Webhooks: any storefront that signs its webhooks per the Standard Webhooks
specification and sends our public event schema."""

NAME = "standard"
