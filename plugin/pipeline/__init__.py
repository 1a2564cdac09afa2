"""The steps one shipment goes through, each durable and resumable: plan (idempotency key stored
before the call) -> capture -> shipping info -> customer send-out; outcomes are reported to the
shop's status URL, and written back onto the storefront order, by their own jobs.

A fulfilment has one job. Every run reconciles what the storefront sent (all its deliveries) with
what the ledger says is done, and does only what is missing; so a retry, a duplicate or a late
tracking update never repeats a side effect.

- `tasks`: `Pipeline`, what the worker runs for each kind of job.
- `fulfillments`: the fulfilment job: the platform's adapter says what shipped, then each step.
- `shipments`: one fulfilment as its steps see it, and how they write their outcomes.
- `captures`: plan and capture, and a plan settled by Klarna's word.
- `payments`: the same through a storefront that captures itself (Shopify's `orderCapture`),
  settled by the storefront's word; nothing called at Klarna.
- `operations`: what follows a capture: tracking added, customer send-out.
- `callbacks`: the callback job: write-back, then the status URL.
- `reports`: the status events and the callbacks that carry them.
- `failures`: any failure as the worker's JobFailure, in one function, and what a failed
  fulfilment leaves behind.
"""

from plugin.pipeline.tasks import Pipeline

__all__ = ["Pipeline"]
