"""The merchant's pages: settings, activity, one shipment, one order; the routes of sign-in by
link and of the confirmation of a new sign-in address (what they do is signin.py's)."""

import math
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Mapping, Sequence
from datetime import date, datetime, timedelta
from typing import Any
from urllib.parse import urlencode

import jinja2
import markupsafe
import msgspec
from starlette.background import BackgroundTask
from starlette.datastructures import FormData
from starlette.requests import Request
from starlette.responses import JSONResponse, RedirectResponse, Response, StreamingResponse

from plugin import about, dates
from plugin.capture import klarna_lines
from plugin.credentials import OUTCOME_TEXTS, ConnectionTest, check_credentials
from plugin.errors import JobError
from plugin.klarna import KlarnaError
from plugin.klarna.client import new_idempotency_key
from plugin.klarna.models import CaptureObject
from plugin.platforms import registry
from plugin.service import Service
from plugin.store.records import (
    KLARNA_CREDENTIALS,
    Delivery,
    Job,
    JobKind,
    OrderOperation,
    OrderRecord,
    Shipment,
    Shop,
    Waiting,
    order_subject,
)
from plugin.web import activity as activity_view
from plugin.web import present, signin
from plugin.web.advice import advice_for
from plugin.web.auth import COOKIE, Session
from plugin.web.forms import (
    CAPTURE_MODES,
    ENVIRONMENTS,
    KEEP_ALIVE_DAYS,
    KLARNA_ACCOUNT_FIELDS,
    REGIONS,
    TEMPLATE_FIELDS,
    SettingsForm,
    SettingsPage,
    address_errors,
)
from plugin.web.pages import (
    allow_framing,
    auth_of,
    embed,
    make_templates,
    message,
    partitioned_cookie,
    time_element,
)

PAGE_SIZE = 50
# Shipments an export reads at a time; dead letters a summary groups or a retry looks through.
EXPORT_PAGE = 500
DEAD_LIMIT = 1000
# Orders listed under "Authorizations expiring soon", soonest first.
EXPIRING_LIMIT = 50
DAY = 86_400.0


def _service(request: Request) -> Service:
    """The running service, whole: the pages use more of it than a platform's handlers may."""
    service: Service = request.app.state.service
    return service


MAX_FULFILLMENT_ID = 255  # characters, as events.FulfillmentEvent allows
# The service's templates and each platform's settings partial.
templates = make_templates(registry.template_loader())


@jinja2.pass_context
def _datetime(context: jinja2.runtime.Context, at: float) -> markupsafe.Markup:
    """A moment in the time zone and locale of the page's shop (UTC and English on a page of
    none), in a `<time>` element whose `datetime` holds it in ISO 8601."""
    shop = context.get("shop")
    if not isinstance(shop, Shop):
        return time_element(at)
    return time_element(at, shop.options.time_zone, shop.options.locale)


@jinja2.pass_context
def _day(context: jinja2.runtime.Context, day: str) -> str:
    """A day of the shop's time zone (ISO 8601, as the chart holds it) as the locale of the
    page's shop writes it."""
    shop = context.get("shop")
    return dates.day(
        date.fromisoformat(day), shop.options.locale if isinstance(shop, Shop) else None
    )


@jinja2.pass_context
def _money(context: jinja2.runtime.Context, minor: int | None, currency: str) -> str:
    """An amount as the locale of the page's shop writes it (English on a page of none)."""
    shop = context.get("shop")
    return present.amount(minor, currency, shop.options.locale if isinstance(shop, Shop) else "en")


templates.env.filters["datetime"] = _datetime
templates.env.filters["day"] = _day
templates.env.filters["money"] = _money
templates.env.filters["carrier"] = present.carrier
templates.env.filters["advice"] = advice_for
templates.env.filters["step"] = present.trail_step
templates.env.filters["call_state"] = lambda state: present.CALL_STATES.get(state, state)
templates.env.filters["order_state"] = lambda state: present.ORDER_STATES.get(state, state)
templates.env.filters["outcome"] = present.trail_outcome
templates.env.filters["reason"] = present.trail_reason

NOTICES = {
    "saved": "Settings saved.",
    "saved-anyway": "Settings saved anyway, but Klarna did not accept the credentials (see "
    "beside the password): shipments wait on them until Klarna accepts the ones saved here.",
    "sent": "Klarna was asked to send the customer their payment details again.",
}

Page = Callable[[Request, "Service", Shop, Session], Awaitable[Response]]

# After a Retry, what the banner says follows the job as it is now, not the link that came back
# from the Retry: a job that failed again is not shown as queued.
_RETRY_OUTCOMES = {
    "queued": ("yes", "Queued to be processed again."),
    "running": ("yes", "Being processed again now."),
    "done": ("yes", "Retried: done."),
    "waiting": ("", "Retried, and now waiting for Klarna credentials: see below."),
    "dead": ("", "Retried, and it failed again: see below for what went wrong."),
}


def _after_retry(request: Request, job_state: str | None) -> dict[str, str] | None:
    """The banner of a page a Retry redirected to, from the job's current state."""
    if request.query_params.get("notice") not in ("retried", "retried-order"):
        return None
    ok, text = _RETRY_OUTCOMES.get(job_state or "", ("", "The retry could not be followed."))
    return {"ok": ok, "text": text}


_SIGN_IN = (
    "Open the settings from your storefront's admin, or ask for a sign-in link by mail at "
    "/admin/login (or from the operator: klarna-capture admin-link SHOP_ID prints one)."
)
_SESSION_ENDED = "This session has ended. " + _SIGN_IN
_DISABLED = (
    "This shop is disabled: the app was uninstalled from the storefront. Install the app "
    "again to use these pages."
)


def _render(
    request: Request, name: str, context: dict[str, Any], status_code: int = 200
) -> Response:
    return templates.TemplateResponse(request, name, context, status_code=status_code)


def _settings_page(shop: Shop) -> SettingsPage:
    return registry.settings_page(shop.platform)


def _same_origin(request: Request, service: Service) -> bool:
    return signin.same_origin(request, service.settings.web.public_url)


def page(*, post: bool = False) -> Callable[[Page], Callable[[Request], Awaitable[Response]]]:
    """A page of one shop: needs that shop's session; a POST also a CSRF token and same origin."""

    def wrap(view: Page) -> Callable[[Request], Awaitable[Response]]:
        async def endpoint(request: Request) -> Response:
            service = _service(request)
            auth = auth_of(request)
            session = auth.read_session(request.cookies.get(COOKIE))
            if session is None:
                return message(request, "Please sign in", _SIGN_IN, 401)
            shop_id = request.path_params["shop_id"]
            if session.shop_id != shop_id:
                return message(request, "Not your shop", "This session is for another shop.", 403)
            # One indexed lookup: the session still lives (not signed out, not ended by an
            # uninstall or the shop's removal) and which shop it is, as stored now.
            shop = await service.store.session_shop(session.sid, time.time())
            if shop is None or shop.id != shop_id:
                return message(request, "Please sign in", _SESSION_ENDED, 401)
            if not shop.enabled:
                return message(request, "Shop disabled", _DISABLED, 403)
            settings_page = _settings_page(shop)
            allow_framing(request, settings_page.frame_ancestors(shop))
            if session.embedded:
                embed(request, settings_page.embedding(service.settings, shop))
            if post:
                form = await request.form()
                token = form.get("csrf_token")
                if not _same_origin(request, service) or not auth.csrf_valid(
                    session, token if isinstance(token, str) else None
                ):
                    return message(
                        request,
                        "Request refused",
                        "The form was out of date or came from another site. Reload the page "
                        "and try again.",
                        403,
                    )
                request.state.form = form
            request.state.csrf_token = auth.csrf_token(session)
            return await view(request, service, shop, session)

        return endpoint

    return wrap


async def login(request: Request) -> Response:
    """A one-time link (`?token=`) opens the page whose POST signs in; without one, the form
    that mails links (POST)."""
    service = _service(request)
    if request.method == "POST":
        return await signin.post(request, service)
    if "token" not in request.query_params:
        return signin.form_page(request, service)
    return signin.link_page(request, service, request.query_params.get("token", ""))


def _settings_context(
    request: Request, service: Service, shop: Shop, form: SettingsForm, **extra: Any
) -> dict[str, Any]:
    page = _settings_page(shop)
    return {
        **page.context(service.shops, shop),
        "shop": shop,
        "form": form,
        "platform_template": registry.settings_template(shop.platform),
        "offers_status_url": page.status_url,
        "time_zone_default": page.time_zone_default,
        # Stored, not as typed: the banner says what the shop needs as it stands.
        "klarna_required": page.klarna_required(page.from_shop(shop)),
        "regions": REGIONS,
        "environments": ENVIRONMENTS,
        "capture_modes": CAPTURE_MODES,
        "template_fields": TEMPLATE_FIELDS,
        "keep_alive_days": KEEP_ALIVE_DAYS,
        "webhook_url": f"{service.settings.web.public_url}/webhooks/{shop.platform}/{shop.id}",
        "csrf_token": request.state.csrf_token,
        "notice": NOTICES.get(request.query_params.get("notice", "")),
        "connection": _saved_connection(request),
        "pending_email": _pending_email(request, shop),
        "mail": service.settings.mail.enabled,
        "waiting": None,
        **extra,
    }


def _saved_connection(request: Request) -> dict[str, str] | None:
    """The connection test run by the save that redirected here, as its link says."""
    outcome = request.query_params.get("klarna", "")
    if outcome not in OUTCOME_TEXTS:
        return None
    return {"ok": "yes" if outcome == "accepted" else "", "text": OUTCOME_TEXTS[outcome]}


def _pending_email(request: Request, shop: Shop) -> str | None:
    """The new address the save that redirected here mailed a confirmation link to, as its
    signed value says, until the shop has it."""
    value = request.query_params.get("pending", "")
    if not value or len(value) > 1024:
        return None
    email = auth_of(request).read_pending_email(value, shop.id)
    return email if email != shop.email else None


async def _waiting_banner(service: Service, shop: Shop) -> Waiting | None:
    """The shipments waiting on the shop's Klarna credentials, as the settings and activity
    pages announce them (None: no banner). One indexed query per page view."""
    waiting = await service.store.waiting(shop.id, KLARNA_CREDENTIALS)
    return waiting if waiting.count else None


@page()
async def settings_page(
    request: Request, service: Service, shop: Shop, session: Session
) -> Response:
    form = SettingsForm.from_shop(shop, _settings_page(shop))
    banner = await _waiting_banner(service, shop)
    context = _settings_context(
        request,
        service,
        shop,
        form,
        waiting=banner,
        capture_check=await _capture_check(service, shop),
    )
    return _render(request, "settings.html", context)


async def _capture_check(service: Service, shop: Shop) -> str | None:
    """For a shop whose storefront captures (its checkout took Klarna's payment): what the
    storefront says of its capture setting, which must be manual. One read per page view."""
    storefront = service.pipeline.storefronts.get(shop.platform)
    payments = storefront.payments(shop) if storefront is not None and shop.enabled else None
    return await payments.capture_setting(shop) if payments is not None else None


def _form(request: Request) -> dict[str, str]:
    form: FormData = request.state.form
    return {key: value for key, value in form.items() if isinstance(value, str)}


@page(post=True)
async def save_settings(
    request: Request, service: Service, shop: Shop, session: Session
) -> Response:
    page = _settings_page(shop)
    form = SettingsForm.from_post(_form(request), shop, page, mail=service.settings.mail.enabled)
    allowed = service.settings.web.allowed_private_networks
    form.errors.update(await address_errors(form, shop, page, allowed))
    form.errors.update(await page.conflicts(service.shops, shop, form))
    new_email = form.email_to_confirm(shop)
    if new_email is not None and not form.errors:
        problem = await signin.email_change_problem(service, shop)
        if problem is not None:
            form.errors["email"] = problem
    if form.errors:
        form.forget_secrets(page)
        context = _settings_context(request, service, shop, form)
        return _render(request, "settings.html", context, status_code=400)
    # New credentials are tested before they are saved, and saved whatever the answer: the
    # merchant is told beside the field, and a refusal is saved with a warning. A save that
    # changes only options asks Klarna nothing.
    tested = None
    account = (form.klarna_username, form.klarna_region, form.klarna_environment)
    changed = account != (shop.klarna_username, shop.klarna_region, shop.klarna_environment)
    if form.klarna_username and (form.klarna_password or changed):
        tested = await _try_credentials(
            service, form, form.klarna_password or service.shops.klarna_password(shop)
        )
    await service.shops.update(
        shop.id, form.changes(shop, page), klarna_password=form.klarna_password or None
    )
    await page.save(service.shops, shop, form.fields)
    query = {"notice": "saved"}
    if tested is not None:
        notice = "saved" if tested.outcome == "accepted" else "saved-anyway"
        query = {"notice": notice, "klarna": tested.outcome}
    # A new address waits for the link mailed to it; a removed one is told to the old address.
    if new_email is not None:
        query["pending"] = auth_of(request).pending_email(shop.id, new_email)
    response = RedirectResponse(f"/admin/{shop.id}/settings?{urlencode(query)}", status_code=303)
    if new_email is not None or (shop.email is not None and not form.email):
        response.background = BackgroundTask(
            signin.send_email_change,
            service,
            auth_of(request),
            shop,
            new_email,
            service.settings.web.public_url,
        )
    return response


@page(post=True)
async def test_connection(
    request: Request, service: Service, shop: Shop, session: Session
) -> Response:
    page = _settings_page(shop)
    form = SettingsForm.from_post(_form(request), shop, page, mail=service.settings.mail.enabled)
    errors = {k: v for k, v in form.errors.items() if k in KLARNA_ACCOUNT_FIELDS}
    result: dict[str, str]
    if errors:
        result = {"ok": "", "text": "Fix the Klarna fields first."}
    else:
        password = form.klarna_password or service.shops.klarna_password(shop)
        tested = await _try_credentials(service, form, password)
        result = {
            "ok": "yes" if tested.outcome == "accepted" else "",
            "text": tested.text,
            "detail": tested.detail,
        }
    form.forget_secrets(page)
    form.errors = errors
    context = _settings_context(request, service, shop, form, connection=result)
    return _render(request, "settings.html", context)


async def _try_credentials(service: Service, form: SettingsForm, password: str) -> ConnectionTest:
    return await check_credentials(
        service.pipeline.klarna_http[0],
        username=form.klarna_username,
        password=password,
        region=form.account[0],
        environment=form.account[1],
        url=service.settings.klarna.url,
    )


@page(post=True)
async def rotate_secret(
    request: Request, service: Service, shop: Shop, session: Session
) -> Response:
    page = _settings_page(shop)
    if not page.webhook_secret:
        return message(request, "Not found", "There is no such page.", 404)
    secret = await service.shops.rotate_secret(shop.id)
    form = SettingsForm.from_shop(shop, page)
    context = _settings_context(request, service, shop, form, new_secret=secret)
    return _render(request, "settings.html", context)


class Row(msgspec.Struct, kw_only=True):
    """A shipment as the pages show it."""

    fulfillment_id: str
    state: str  # in the merchant's words (present.shipment_state)
    tone: str  # the state's colour: done, partial, pending, waiting, retrying, failed
    amount: str  # formatted for its currency
    currency: str
    capture_id: str
    klarna_reference: str
    klarna_order_id: str
    order_id: str
    order_number: str  # the storefront's, as its merchant knows the order ("" when not known)
    updated_at: float
    error: dict[str, Any] | None
    dead: bool
    can_send_out: bool
    waiting: bool = False  # on the shop's Klarna credentials: the error says why, not a failure


def _row(shipment: Shipment, locale: str) -> Row:
    error = msgspec.json.decode(shipment.last_error) if shipment.last_error else None
    amount = shipment.captured_amount
    if amount is None and shipment.planned_request:
        amount = msgspec.json.decode(shipment.planned_request, type=CaptureObject).captured_amount
    currency = shipment.currency or ""
    state = present.shipment_state(
        shipment.job_state, shipment.attempts, shipment.capture_state, shipment.capture_id
    )
    return Row(
        fulfillment_id=shipment.fulfillment_id,
        state=state.label,
        tone=state.tone,
        amount=present.amount(amount, currency, locale),
        currency=currency,
        capture_id=shipment.capture_id or "",
        klarna_reference=shipment.klarna_reference or "",
        klarna_order_id=shipment.klarna_order_id or "",
        order_id=shipment.order_id or "",
        order_number=shipment.order_number or "",
        updated_at=shipment.updated_at,
        error=error,
        dead=shipment.job_state == "dead",
        can_send_out=shipment.capture_id is not None,
        waiting=shipment.job_state == "waiting",
    )


class Call(msgspec.Struct, kw_only=True):
    """A life-cycle call on a Klarna order (a refund, the cancellation, the release, an
    extension) as the pages show it; never its idempotency key or request."""

    order_id: str
    what: str
    refund_id: str  # a refund's: the storefront's refund id
    state: str  # planned, done, failed
    amount: str
    currency: str
    klarna_refund_id: str
    expires_at: float | None  # an extension's: the authorization's new expiry
    error: JobError | None
    at: float


_CALLS = {"refund": "Refund", "cancel": "Cancellation", "release": "Release", "extend": "Extension"}
_error_decoder = msgspec.json.Decoder(JobError)


def _job_error(stored: str | None) -> JobError | None:
    """A stored failure (a dead letter's, a refused call's), as the pages show it."""
    if not stored:
        return None
    try:
        return _error_decoder.decode(stored)
    except msgspec.DecodeError:
        return JobError(step="", error_code="UNREADABLE", error_messages=[stored[:500]])


def _calls(operations: Iterable[OrderOperation], locale: str) -> list[Call]:
    """The calls the merchant sees, in the order they were planned (the order's number given to
    Klarna is bookkeeping, not shown)."""
    return [_call(op, locale) for op in operations if op.kind in _CALLS]


def _call(op: OrderOperation, locale: str) -> Call:
    expires_at = None
    if op.kind == "extend" and op.state == "done" and op.result:
        try:
            expires_at = datetime.fromisoformat(op.result).timestamp()
        except ValueError:
            expires_at = None
    return Call(
        order_id=op.order_id,
        what=_CALLS[op.kind],
        refund_id=op.key if op.kind == "refund" else "",
        state=op.state,
        amount=present.amount(op.amount, op.currency, locale)
        if op.kind in ("refund", "release")
        else "",
        currency=op.currency,
        klarna_refund_id=(op.result or "") if op.kind == "refund" and op.state == "done" else "",
        expires_at=expires_at,
        error=_job_error(op.error) if op.state == "failed" else None,
        at=op.updated_at,
    )


async def _partly_captured(
    service: Service, shop: Shop, shipments: Sequence[Shipment]
) -> dict[str, present.State]:
    """The captured shipments among these whose Klarna order is captured only in part and still
    holds the rest, by fulfilment id, as the ledger knows it (no call to Klarna): the order's
    captures summed against its amount when planned, while the order is open (none of it
    released, cancelled or run out). Two reads, however many shipments."""
    known = [
        s for s in shipments if s.capture_state == "captured" and s.order_amount and s.order_id
    ]
    order_ids = list(dict.fromkeys(s.order_id for s in known if s.order_id))
    if not order_ids:
        return {}
    captured: dict[str, int] = {}
    for capture in await service.store.order_captures(shop.id, order_ids):
        if capture.state == "captured":
            captured[capture.order_id] = captured.get(capture.order_id, 0) + (
                capture.captured_amount or 0
            )
    open_orders = {
        order.order_id
        for order in await service.store.get_orders(shop.id, order_ids)
        if order.state == "open"
    }
    found: dict[str, present.State] = {}
    for s in known:
        if s.order_id not in open_orders or not s.order_amount:
            continue
        done = captured.get(s.order_id, 0)
        partly = present.partly_captured(
            done, s.order_amount - done, s.order_amount, s.currency or "", shop.options.locale
        )
        if partly is not None:
            found[s.fulfillment_id] = partly
    return found


def _mark_partly(row: Row, partly: Mapping[str, present.State]) -> Row:
    """A captured row whose order is captured only in part says so (a failure, a wait, says
    what it says)."""
    state = partly.get(row.fulfillment_id)
    if state is not None and row.tone == "done":
        row.state, row.tone = state.label, state.tone
    return row


async def _operations(
    service: Service, shop: Shop, order_ids: Sequence[str]
) -> list[OrderOperation]:
    """The life-cycle calls of these orders, in one query (none for no order)."""
    return await service.store.order_operations(shop.id, order_ids) if order_ids else []


async def _order_job(service: Service, shop: Shop, order_id: str) -> Job | None:
    """The order's job, when it has one (None: no event of the order queued one)."""
    jobs = await service.store.order_jobs(shop.id, [order_id])
    return jobs[0] if jobs else None


class FailedOrder(msgspec.Struct, kw_only=True):
    """An order whose job is a dead letter, and why."""

    order_id: str
    error: JobError | None


async def _failed_orders(
    service: Service, shop: Shop, order_ids: Sequence[str]
) -> list[FailedOrder]:
    """The dead order jobs among these orders (a page's: at most PAGE_SIZE of them), in their
    order: one read of their jobs, whatever their number."""
    if not order_ids:
        return []
    dead = {
        job.key: job
        for job in await service.store.order_jobs(shop.id, order_ids)
        if job.state == "dead"
    }
    return [
        FailedOrder(order_id=order_id, error=_job_error(dead[order_id].last_error))
        for order_id in order_ids
        if order_id in dead
    ]


class Expiring(msgspec.Struct, kw_only=True):
    """An open order whose Klarna authorization runs out soon (or is not read yet), and what the
    keep-alive last did for it."""

    order_id: str
    klarna_order_id: str
    expires_at: float | None
    expired: bool
    extension: Call | None


async def _expiring(service: Service, shop: Shop, now: float) -> list[Expiring]:
    """The shop's open orders whose authorization expires within its `keep_alive_days`, soonest
    first, with their last extension: two queries, at most EXPIRING_LIMIT orders."""
    orders: list[OrderRecord] = await service.store.orders_expiring(
        now + shop.options.keep_alive_days * DAY, shop_id=shop.id, limit=EXPIRING_LIMIT
    )
    extensions: dict[str, Call] = {}
    for op in await _operations(service, shop, [order.order_id for order in orders]):
        if op.kind == "extend" and op.state != "planned":
            # Planned in order: the last one stays.
            extensions[op.order_id] = _call(op, shop.options.locale)
    return [
        Expiring(
            order_id=order.order_id,
            klarna_order_id=order.klarna_order_id,
            expires_at=order.authorization_expires_at,
            expired=order.authorization_expires_at is not None
            and order.authorization_expires_at <= now,
            extension=extensions.get(order.order_id),
        )
        for order in orders
    ]


class DeadCode(msgspec.Struct, kw_only=True):
    """One error code of the shop's dead letters: how many failed with it, and of which kinds in
    words ("2 shipments", "1 order")."""

    code: str
    count: int
    kinds: list[str]


class Summary(msgspec.Struct, kw_only=True):
    """The top of the activity page: captures today and over the last week per currency, the
    shipments waiting, the dead letters needing attention (by kind, as Retry all retries them:
    every kind), the same dead letters by error code, the chart."""

    today: list[dict[str, Any]]
    week: list[dict[str, Any]]
    waiting: int
    on_credentials: int
    attention: list[str]  # the dead letters by kind in words, the shipments always first
    attention_count: int
    dead_codes: list[DeadCode]  # most first
    listed: list[str]  # the dead letters the codes count, by kind in words
    listed_count: int  # less than attention_count only past DEAD_LIMIT
    chart: activity_view.Chart


async def _summary(service: Service, shop: Shop, now: float) -> Summary:
    """Three indexed reads: the captures of the last CHART_DAYS days of the shop's time zone (by
    quarter hour, added up to its days), the shipments by job state with the dead letters by
    kind, and the shop's dead letters (at most DEAD_LIMIT) by error code and kind."""
    zone = dates.zone(shop.options.time_zone)
    today = activity_view.day_of(now, zone)
    first_day = today - activity_view.CHART_DAYS + 1
    since = activity_view.day_start(activity_view.local_date(first_day), zone)
    days = activity_view.by_day(await service.store.captures_by_quarter(shop.id, since), zone)
    counts = await service.store.shipment_counts(shop.id)
    dead: dict[JobKind, int] = {
        "fulfillment": counts.dead,
        "order": counts.dead_orders,
        "callback": counts.dead_callbacks,
    }
    codes: dict[str, dict[JobKind, int]] = {}
    listed: dict[JobKind, int] = {}
    for job in await service.store.dead_jobs(shop.id, limit=DEAD_LIMIT):
        kinds = codes.setdefault(activity_view.error_code(job.last_error) or "unknown", {})
        kinds[job.kind] = kinds.get(job.kind, 0) + 1
        listed[job.kind] = listed.get(job.kind, 0) + 1

    def shown(first: int) -> list[dict[str, Any]]:
        return [
            {
                "currency": t.currency,
                "count": t.count,
                "amount": present.amount(t.amount, t.currency, shop.options.locale),
            }
            for t in activity_view.totals(days, first)
        ]

    dead_codes = [
        DeadCode(code=code, count=sum(kinds.values()), kinds=activity_view.in_words(kinds))
        for code, kinds in codes.items()
    ]
    return Summary(
        today=shown(today),
        week=shown(today - activity_view.WEEK_DAYS + 1),
        waiting=counts.waiting + counts.queued + counts.running,
        on_credentials=counts.waiting,
        attention=activity_view.in_words(dead, always=("fulfillment",)),
        attention_count=sum(dead.values()),
        dead_codes=sorted(dead_codes, key=lambda c: (-c.count, c.code)),
        listed=activity_view.in_words(listed),
        listed_count=sum(listed.values()),
        chart=activity_view.chart(days, today),
    )


def _cursor(value: str) -> tuple[float, int] | None:
    """A page link's `before` (updated_at_jobid); BadQuery when it is not one."""
    if not value:
        return None
    at, _, job_id = value.partition("_")
    try:
        before = (float(at), int(job_id))
    except ValueError:
        before = None
    if before is None or not math.isfinite(before[0]) or not 0 <= before[1] < 2**63:
        raise activity_view.BadQuery("That page link is not valid.")
    return before


def _requeued(request: Request, shop: Shop) -> dict[str, Any] | None:
    """What the retry of one error code's dead letters queued, as its redirect's signed value
    says (a count and a code typed into the link show nothing)."""
    value = request.query_params.get("requeued", "")
    if not value or len(value) > 1024:
        return None
    outcome = auth_of(request).read_outcome(value, shop.id)
    if outcome is None:
        return None
    count, code = outcome.get("count"), outcome.get("code")
    if not isinstance(count, int) or not isinstance(code, str):
        return None
    return {"count": count, "code": code}


@page()
async def activity(request: Request, service: Service, shop: Shop, session: Session) -> Response:
    try:
        before = _cursor(request.query_params.get("before", ""))
        filters = activity_view.read_filters(request.query_params)
    except activity_view.BadQuery as exc:
        return message(request, "Bad page", str(exc), 400)
    next_at: tuple[float, int] | None = None
    scanned_to: tuple[float, int] | None = None
    if filters.active:
        found = await service.store.find_shipments(
            shop.id,
            state=filters.state,
            search=filters.search,
            before=before,
            limit=PAGE_SIZE + 1,
            scan=activity_view.SCAN,
        )
        shipments, scanned_to = found.shipments, found.scanned_to
    else:
        shipments = await service.store.shipments(shop.id, before=before, limit=PAGE_SIZE + 1)
    if len(shipments) > PAGE_SIZE:
        shipments = shipments[:PAGE_SIZE]
        next_at = (shipments[-1].updated_at, shipments[-1].job_id)
    else:
        # A filtered look that stopped at its bound goes on from there: older ones may match.
        next_at = scanned_to
    next_cursor = f"{next_at[0]!r}_{next_at[1]}" if next_at is not None else None
    partly = await _partly_captured(service, shop, shipments)
    rows = [_mark_partly(_row(s, shop.options.locale), partly) for s in shipments]
    # The orders of this page's shipments: their refunds, cancellation, release and extensions,
    # and those whose own job failed for good.
    order_ids = list(dict.fromkeys(row.order_id for row in rows if row.order_id))
    return _render(
        request,
        "activity.html",
        {
            "shop": shop,
            "rows": rows,
            "calls": _calls(await _operations(service, shop, order_ids), shop.options.locale),
            "failed_orders": await _failed_orders(service, shop, order_ids),
            "expiring": await _expiring(service, shop, time.time()) if before is None else [],
            "next_cursor": next_cursor,
            "first_page": before is None,
            "filters": filters,
            "filter_query": filters.query(),
            "scan": activity_view.SCAN,
            "summary": await _summary(service, shop, time.time()),
            "requeued": _requeued(request, shop),
            "today": activity_view.local_date(
                activity_view.day_of(time.time(), dates.zone(shop.options.time_zone))
            ).isoformat(),
            "time_zone": dates.zone(shop.options.time_zone).key,
            "csrf_token": request.state.csrf_token,
            "waiting": await _waiting_banner(service, shop),
        },
    )


@page()
async def export_activity(
    request: Request, service: Service, shop: Shop, session: Session
) -> Response:
    """The shop's shipments last changed within a range of days of its time zone (both
    included) as CSV, streamed a page of EXPORT_PAGE at a time, each page one indexed read, one
    of its orders' refunds and two of what marks a partial capture."""
    try:
        first, last = activity_view.read_range(request.query_params)
    except activity_view.BadQuery as exc:
        return message(request, "Bad export", str(exc), 400)
    zone = dates.zone(shop.options.time_zone)
    start = activity_view.day_start(first, zone)
    # The end is the next day's start (a day of a change of offset is not 24 hours long).
    end = activity_view.day_start(last, zone) + activity_view.DAY
    if last < date.max:
        end = activity_view.day_start(last + timedelta(days=1), zone)

    async def lines() -> AsyncIterator[str]:
        yield activity_view.csv_text([activity_view.export_header(zone)])
        after: tuple[float, int] | None = None
        while True:
            page = await service.store.shipments_changed(
                shop.id, start, end, after=after, limit=EXPORT_PAGE
            )
            if not page:
                return
            order_ids = list(dict.fromkeys(s.order_id for s in page if s.order_id))
            partly = await _partly_captured(service, shop, page)
            refunded: dict[str, int] = {}
            for op in await _operations(service, shop, order_ids):
                if op.kind == "refund" and op.state == "done":
                    refunded[op.order_id] = refunded.get(op.order_id, 0) + (op.amount or 0)
            yield activity_view.csv_text(
                [
                    activity_view.export_row(
                        s,
                        _mark_partly(_row(s, shop.options.locale), partly).state,
                        refunded.get(s.order_id or ""),
                        zone,
                    )
                    for s in page
                ]
            )
            if len(page) < EXPORT_PAGE:
                return
            after = (page[-1].updated_at, page[-1].job_id)

    name = f"activity-{first.isoformat()}-to-{last.isoformat()}.csv"
    return StreamingResponse(
        lines(),
        media_type="text/csv; charset=utf-8",
        headers={"content-disposition": f'attachment; filename="{name}"'},
    )


@page(post=True)
async def retry_dead(request: Request, service: Service, shop: Shop, session: Session) -> Response:
    """POST .../activity/retry-dead: every dead letter of this shop failed with `error_code`,
    run again (at most DEAD_LIMIT, the most recent first); the page after says how many."""
    code = _form(request).get("error_code", "")
    if not activity_view.ERROR_CODE.fullmatch(code):
        return message(request, "Bad request", "Name the error code to retry.", 400)
    dead = await service.store.dead_jobs(shop.id, limit=DEAD_LIMIT)
    ids = [job.id for job in dead if activity_view.error_code(job.last_error) == code]
    queued = await service.store.requeue_dead_jobs(shop.id, ids, time.time()) if ids else 0
    if queued:
        service.wake_workers()
    outcome = auth_of(request).outcome(shop.id, {"count": queued, "code": code})
    query = urlencode({"requeued": outcome})
    return RedirectResponse(f"/admin/{shop.id}/activity?{query}", status_code=303)


async def _shipment_page(
    request: Request,
    service: Service,
    shop: Shop,
    *,
    outcome: dict[str, str] | None = None,
    status_code: int = 200,
) -> Response:
    shipment = await service.store.shipment(shop.id, request.path_params["fulfillment_id"])
    if shipment is None:
        return message(request, "No such shipment", "This shop has no such shipment.", 404)
    locale = shop.options.locale
    row = _row(shipment, locale)
    if not row.klarna_order_id:
        await _from_deliveries(service, shop, row)
    live: dict[str, Any] | None = None
    live_error = None
    if shipment.capture_id and shipment.klarna_order_id:
        # The Klarna order as it stands, its captures in it: what this one holds now, and
        # whether the order is captured in full (else the state says how much of it).
        try:
            order = await service.pipeline.klarna(shop).read_order(shipment.klarna_order_id)
        except KlarnaError as error:
            live_error = str(error)
        else:
            capture = next((c for c in order.captures if c.capture_id == shipment.capture_id), None)
            partly = present.partly_captured(
                order.captured_amount,
                order.remaining_authorized_amount,
                order.order_amount,
                row.currency,
                locale,
            )
            if partly is not None and row.tone == "done":
                row.state, row.tone = partly.label, partly.tone
            live = {
                "capture": capture,
                "order": order,
                "amount": present.amount(capture.captured_amount, row.currency, locale)
                if capture
                else "",
                "refunded": present.amount(capture.refunded_amount, row.currency, locale)
                if capture
                else "",
            }
    trail = await service.store.audit_trail(shop.id, shipment.fulfillment_id)
    order_ids = [shipment.order_id] if shipment.order_id else []
    return _render(
        request,
        "shipment.html",
        {
            "shop": shop,
            "row": row,
            "portal_url": present.portal_url(
                shop.klarna_environment, shop.klarna_username, row.klarna_order_id
            ),
            "calls": _calls(await _operations(service, shop, order_ids), shop.options.locale),
            "live": live,
            "live_error": live_error,
            "trail": trail,
            "outcome": outcome or _after_retry(request, shipment.job_state),
            "notice": NOTICES.get(request.query_params.get("notice", "")),
            "csrf_token": request.state.csrf_token,
        },
        status_code=status_code,
    )


async def _from_ledger(
    service: Service, shop: Shop, row: Row, deliveries: Sequence[Delivery]
) -> None:
    """The Klarna order of the shipment's order, where the ledger knows it (another shipment or
    an order event of it reached Klarna)."""
    order_id = row.order_id or next((d.order_id for d in deliveries if d.order_id), None)
    order = await service.store.get_order(shop.id, order_id) if order_id else None
    if order is not None:
        row.order_id = order.order_id
        row.klarna_order_id = order.klarna_order_id
        row.currency = row.currency or order.currency


async def _from_deliveries(service: Service, shop: Shop, row: Row) -> None:
    """A shipment that failed before it was planned has no capture row: its order, Klarna order
    and amount are read from its stored deliveries, through its platform's decoding, and the
    Klarna order from the ledger's order where the deliveries do not say (or are pruned)."""
    deliveries = await service.store.fulfillment_deliveries(shop.id, row.fulfillment_id)
    await _from_ledger(service, shop, row, deliveries)
    for delivery in deliveries:
        row.order_id = row.order_id or delivery.order_id or ""
        event = registry.delivery_event(shop.platform, delivery.body)
        if event is None:
            continue
        row.order_id = row.order_id or event.order_id
        row.klarna_order_id = event.klarna_order_id
        row.currency = event.currency
        try:
            total = sum(line.total_amount for line in klarna_lines(event))
        except (ValueError, ArithmeticError):
            continue
        row.amount = present.amount(total, event.currency, shop.options.locale)
        return


@page()
async def shipment_page(
    request: Request, service: Service, shop: Shop, session: Session
) -> Response:
    if not is_fulfillment_id(request.path_params["fulfillment_id"]):
        return message(request, "Not found", "There is no such page.", 404)
    return await _shipment_page(request, service, shop)


class OrderFacts(msgspec.Struct, kw_only=True):
    """A storefront order at Klarna as its page shows it, from the ledger."""

    order_id: str
    klarna_order_id: str
    currency: str
    state: str  # open, cancelled, closed; "" when no order event or keep-alive noted it yet
    expires_at: float | None  # while open
    refunded: str  # the done refunds' sum


async def _order_page(
    request: Request,
    service: Service,
    shop: Shop,
    *,
    outcome: dict[str, str] | None = None,
    status_code: int = 200,
) -> Response:
    order_id = request.path_params["order_id"]
    store = service.store
    order = await store.get_order(shop.id, order_id)
    operations = await store.order_operations(shop.id, [order_id])
    captures = await store.order_captures(shop.id, [order_id])
    trail = await store.audit_trail(shop.id, order_subject(order_id))
    if order is None and not operations and not captures and not trail:
        return message(request, "No such order", "This shop has no such order.", 404)
    job = await _order_job(service, shop, order_id)
    # What Klarna order it is and its currency: whatever the ledger holds of it.
    known = order or (operations[0] if operations else None) or (captures[0] if captures else None)
    currency = known.currency if known is not None else ""
    facts = OrderFacts(
        order_id=order_id,
        klarna_order_id=known.klarna_order_id if known is not None else "",
        currency=currency,
        state=order.state if order is not None else "",
        expires_at=order.authorization_expires_at
        if order is not None and order.state == "open"
        else None,
        refunded=present.amount(
            sum(op.amount or 0 for op in operations if op.kind == "refund" and op.state == "done"),
            currency,
            shop.options.locale,
        ),
    )
    return _render(
        request,
        "order.html",
        {
            "shop": shop,
            "order": facts,
            "portal_url": present.portal_url(
                shop.klarna_environment, shop.klarna_username, facts.klarna_order_id
            ),
            "calls": _calls(operations, shop.options.locale),
            "shipments": [
                {
                    "fulfillment_id": c.fulfillment_id,
                    "state": present.CAPTURED.label
                    if c.state == "captured"
                    else present.CAPTURING.label,
                    "amount": present.amount(c.captured_amount, c.currency, shop.options.locale),
                    "currency": c.currency,
                }
                for c in captures
            ],
            "dead": job is not None and job.state == "dead",
            "error": _job_error(job.last_error) if job is not None else None,
            "trail": trail,
            "outcome": outcome or _after_retry(request, job.state if job is not None else None),
            "notice": NOTICES.get(request.query_params.get("notice", "")),
            "csrf_token": request.state.csrf_token,
        },
        status_code=status_code,
    )


@page()
async def order_page(request: Request, service: Service, shop: Shop, session: Session) -> Response:
    if not is_fulfillment_id(request.path_params["order_id"]):
        return message(request, "Not found", "There is no such page.", 404)
    return await _order_page(request, service, shop)


@page(post=True)
async def order_action(
    request: Request, service: Service, shop: Shop, session: Session
) -> Response:
    """POST .../orders/<order id>/retry: a dead order job run again; ids may hold slashes."""
    order_id, _, action = request.path_params["target"].rpartition("/")
    if action != "retry" or not is_fulfillment_id(order_id):
        return message(request, "Not found", "There is no such page.", 404)
    request.path_params["order_id"] = order_id
    job = await _order_job(service, shop, order_id)
    if (
        job is None
        or job.state != "dead"
        or not await service.store.requeue_job(job.id, time.time())
    ):
        outcome = {"ok": "", "text": "Only an order that failed for good can be retried."}
        return await _order_page(request, service, shop, outcome=outcome, status_code=409)
    service.wake_workers()
    return RedirectResponse(
        f"/admin/{shop.id}/orders/{order_id}?notice=retried-order", status_code=303
    )


def is_fulfillment_id(value: str) -> bool:
    """Whether `value` could be a fulfilment (or order) id: every event carries one of at most
    255 printable characters. Anything else in a URL is none, answered without a lookup."""
    return 0 < len(value) <= MAX_FULFILLMENT_ID and value.isprintable()


@page(post=True)
async def shipment_action(
    request: Request, service: Service, shop: Shop, session: Session
) -> Response:
    """POST .../shipments/<fulfillment id>/<action>: ids may hold slashes (Shopify's do)."""
    fulfillment_id, _, action = request.path_params["target"].rpartition("/")
    handler = _ACTIONS.get(action)
    if handler is None or not is_fulfillment_id(fulfillment_id):
        return message(request, "Not found", "There is no such page.", 404)
    request.path_params["fulfillment_id"] = fulfillment_id
    return await handler(request, service, shop, session)


async def _retry(request: Request, service: Service, shop: Shop, session: Session) -> Response:
    fulfillment_id = request.path_params["fulfillment_id"]
    shipment = await service.store.shipment(shop.id, fulfillment_id)
    if shipment is None:
        return message(request, "No such shipment", "This shop has no such shipment.", 404)
    if shipment.job_state != "dead" or not await service.store.requeue_job(
        shipment.job_id, time.time()
    ):
        outcome = {"ok": "", "text": "Only a shipment that failed for good can be retried."}
        return await _shipment_page(request, service, shop, outcome=outcome, status_code=409)
    service.wake_workers()
    return RedirectResponse(
        f"/admin/{shop.id}/shipments/{fulfillment_id}?notice=retried", status_code=303
    )


async def _send_out(request: Request, service: Service, shop: Shop, session: Session) -> Response:
    fulfillment_id = request.path_params["fulfillment_id"]
    shipment = await service.store.shipment(shop.id, fulfillment_id)
    if shipment is None:
        return message(request, "No such shipment", "This shop has no such shipment.", 404)
    if not shipment.capture_id or not shipment.klarna_order_id:
        outcome = {"ok": "", "text": "Nothing is captured yet, so there is nothing to resend."}
        return await _shipment_page(request, service, shop, outcome=outcome, status_code=409)
    key = new_idempotency_key()
    try:
        await service.pipeline.klarna(shop).trigger_send_out(
            shipment.klarna_order_id, shipment.capture_id, idempotency_key=key
        )
    except KlarnaError as error:
        await service.store.add_audit(
            shop.id, fulfillment_id, shipment.job_id, "send_out", "failed", str(error), time.time()
        )
        outcome = {"ok": "", "text": "Klarna did not resend.", "detail": str(error)}
        return await _shipment_page(request, service, shop, outcome=outcome, status_code=502)
    await service.store.add_audit(
        shop.id,
        fulfillment_id,
        shipment.job_id,
        "send_out",
        "resent by the merchant",
        msgspec.json.encode({"idempotency_key": key}).decode(),
        time.time(),
    )
    return RedirectResponse(
        f"/admin/{shop.id}/shipments/{fulfillment_id}?notice=sent", status_code=303
    )


_ACTIONS: dict[str, Page] = {"retry": _retry, "send-out": _send_out}


@page(post=True)
async def logout(request: Request, service: Service, shop: Shop, session: Session) -> Response:
    # Ended in the store: the cookie, kept or copied, no longer signs in.
    await service.store.end_session(session.sid)
    response = message(request, "Signed out", "You are signed out.", 200)
    response.delete_cookie(COOKIE, path="/admin")
    if service.settings.web.public_url.startswith("https://"):
        # A partitioned cookie (the embedded app's) is only removed by a partitioned deletion.
        response.headers.append("set-cookie", partitioned_cookie("", 0))
    return response


async def confirm_email(request: Request) -> Response:
    """A link confirming a new sign-in address: GET shows its button, POST uses it."""
    service = _service(request)
    if request.method == "POST":
        return await signin.confirm_email_change(request, service)
    return signin.email_change_page(request, service, request.query_params.get("token", ""))


async def home(request: Request) -> Response:
    return message(request, "klarna-capture", _SIGN_IN, 200)


async def index(request: Request) -> Response:
    """What answers at the root: the service's name, version and documentation; a page for a
    browser, JSON for anyone else (a probe, curl, a script)."""
    if "text/html" in request.headers.get("accept", ""):
        return _render(
            request,
            "about.html",
            {"title": about.NAME, "version": about.VERSION, "docs_url": about.DOCS_URL},
        )
    return JSONResponse(
        {"service": about.NAME, "version": about.VERSION, "documentation": about.DOCS_URL}
    )
