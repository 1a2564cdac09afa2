"""Sign-in by mail (/admin/login): the form asking for an address, the limits on asking, and the
mail of one-time links sent off the request path, so that the answer is the same, in text, status
and time, whether the address belongs to a shop or not, and whether it was asked for too often;
the page a one-time link opens (a GET, harmless to the mail scanners that follow links) and its
POST, which alone uses the link and signs in; and the same two steps for the link that confirms
a new sign-in address, with the mails that ask for that confirmation."""

import hashlib
import ipaddress
import logging
import math
import time
from urllib.parse import parse_qs, urlsplit

from starlette.background import BackgroundTask
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response

from plugin import emails, mail
from plugin.service import Service
from plugin.store import ShopChanges, StoreUnavailable
from plugin.store.records import Shop
from plugin.web.auth import (
    LINK_COOKIE,
    LINK_SECONDS,
    LOGIN_COOKIE,
    LOGIN_FORM_SECONDS,
    Auth,
    LinkError,
)
from plugin.web.pages import auth_of, message, render, set_session_cookie
from plugin.webhooks import BodyRefused, read_body

log = logging.getLogger("plugin.web.signin")

# The form holds an address and a token: anything longer is no sign-in request.
MAX_FORM_BYTES = 4096
# Sign-in requests counted per address and per client (as the app sees it: a trusted proxy's
# X-Forwarded-For) in windows of a link's life, across processes (the store): enough for a
# merchant who mistypes, too few to flood a mailbox or try addresses by the thousand.
WINDOW_SECONDS = 15 * 60
PER_ADDRESS = 3
PER_CLIENT = 10
SUBJECT = "Your sign-in link for Klarna capture"
CONFIRM_SUBJECT = "Confirm your new sign-in address for Klarna capture"
NOTICE_SUBJECT = "A change of your sign-in address for Klarna capture was asked"
# A one-time link's token is itsdangerous text of a few hundred characters.
MAX_TOKEN = 1024
_REFUSED = "The form was out of date or came from another site. Reload the page and try again."
_DISABLED = (
    "This shop is disabled: the app was uninstalled from the storefront. Install the app "
    "again to use these pages."
)


def same_origin(request: Request, public_url: str) -> bool:
    """Whether the request's Origin (or, without one, its Referer) is this site."""
    allowed = {_origin(public_url), _origin(str(request.base_url))}
    origin = request.headers.get("origin")
    if origin is not None:
        return origin in allowed
    referer = request.headers.get("referer")
    return referer is not None and _origin(referer) in allowed


def _origin(url: str) -> str:
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}"


def form_page(
    request: Request,
    service: Service,
    *,
    entered: str = "",
    error: str | None = None,
    status_code: int = 200,
) -> Response:
    """The sign-in form, with a fresh CSRF token and its cookie (the browser's own while valid,
    so that every tab's form works); without mail configured, the page that sends the merchant
    to the operator."""
    if not service.settings.mail.enabled:
        return render(request, "login.html", {"title": "Sign in", "mail": False}, status_code)
    cookie, token = auth_of(request).login_form(request.cookies.get(LOGIN_COOKIE))
    context = {
        "title": "Sign in",
        "mail": True,
        "csrf_token": token,
        "email": entered,
        "error": error,
    }
    response = render(request, "login.html", context, status_code)
    response.set_cookie(
        LOGIN_COOKIE,
        cookie,
        max_age=LOGIN_FORM_SECONDS,
        path="/admin/login",
        httponly=True,
        secure=service.settings.web.public_url.startswith("https://"),
        samesite="strict",
    )
    return response


async def read_form(request: Request) -> dict[str, str] | Response:
    """The fields of a small form POST (the first value of each), or the answer refusing it."""
    try:
        body = await read_body(request, MAX_FORM_BYTES)
    except BodyRefused as refused:
        return _message(request, "Request refused", "That is no sign-in request.", refused.status)
    try:
        fields = parse_qs(body.decode("utf-8", "replace"), max_num_fields=8)
    except ValueError:  # more fields than the form has
        return _message(request, "Request refused", "That is no sign-in request.", 400)
    return {name: values[0] for name, values in fields.items()}


async def post(request: Request, service: Service) -> Response:
    """A POST of /admin/login: the page of a one-time link using it (it carries `token`), or the
    form asking for links by mail."""
    fields = await read_form(request)
    if isinstance(fields, Response):
        return fields
    if "token" in fields:
        return await use_link(request, service, fields)
    return await request_link(request, service, fields)


async def request_link(request: Request, service: Service, fields: dict[str, str]) -> Response:
    """A POST of the form: checked, counted, answered alike for every address; the mail goes
    after the answer (a background task), to the shops of the address if there are any."""
    if not service.settings.mail.enabled:
        return form_page(request, service, status_code=404)
    token = fields.get("csrf_token", "")
    auth = auth_of(request)
    public_url = service.settings.web.public_url
    if not same_origin(request, public_url) or not auth.login_form_valid(
        request.cookies.get(LOGIN_COOKIE), token
    ):
        return _message(request, "Request refused", _REFUSED, 403)
    entered = fields.get("email", "")[: emails.MAX_ADDRESS + 1]
    address = emails.normalise(entered)
    if address is None:
        return form_page(request, service, entered=entered, error=emails.PROBLEM, status_code=400)
    now = time.time()
    # The client's limit says nothing about the address: it is answered as what it is.
    hits, reset_at = await service.store.count_hit(
        "login-client:" + client_key(request), WINDOW_SECONDS, now
    )
    if hits > PER_CLIENT:
        minutes = max(1, math.ceil((reset_at - now) / 60))
        response = _message(
            request,
            "Too many sign-in requests",
            f"Too many sign-in links were asked for. Try again in {minutes} minutes.",
            429,
        )
        response.headers["retry-after"] = str(math.ceil(reset_at - now))
        return response
    # The address's limit is not: a different answer would tell anyone who knows an address
    # that it is asked for, and would let them keep its merchant from signing in. Past it, the
    # answer is the same and the mail is simply not sent.
    hits, _ = await service.store.count_hit(
        "login-address:" + hashlib.sha256(address.encode()).hexdigest(), WINDOW_SECONDS, now
    )
    context = {"title": "Check your mail", "mail": True, "sent_to": address}
    response = render(request, "login.html", context)
    if hits <= PER_ADDRESS:
        response.background = BackgroundTask(send_links, service, auth, address)
    return response


def link_page(request: Request, service: Service, token: str) -> Response:
    """GET of a one-time link: nothing is used, only checked; a page whose button posts the link
    back (mail scanners that open links do not post forms)."""
    auth = auth_of(request)
    try:
        _, link_nonce = auth.read_link(token[:MAX_TOKEN])
    except LinkError as exc:
        return _message(request, "Sign-in link not valid", str(exc), 400)
    return _confirm_page(
        request,
        service,
        link_nonce,
        {
            "title": "Sign in",
            "text": "Sign in to your shop's Klarna capture settings.",
            "action": "/admin/login",
            "token": token,
            "button": "Sign in",
        },
    )


def _confirm_page(
    request: Request, service: Service, link_nonce: str, context: dict[str, str]
) -> Response:
    cookie, csrf = auth_of(request).link_form(link_nonce, request.cookies.get(LINK_COOKIE))
    response = render(request, "confirm.html", {**context, "csrf_token": csrf})
    response.set_cookie(
        LINK_COOKIE,
        cookie,
        max_age=LINK_SECONDS,
        path=context["action"],
        httponly=True,
        secure=service.settings.web.public_url.startswith("https://"),
        samesite="strict",
    )
    return response


def _confirmed(request: Request, service: Service, fields: dict[str, str], nonce: str) -> bool:
    """Whether the POST of a link's page came from this site, from the browser that opened it."""
    return same_origin(request, service.settings.web.public_url) and auth_of(
        request
    ).link_form_valid(request.cookies.get(LINK_COOKIE), fields.get("csrf_token"), nonce)


async def use_link(request: Request, service: Service, fields: dict[str, str]) -> Response:
    """POST of a one-time link's page: the link is used (once) and a session starts."""
    try:
        shop_id, nonce = auth_of(request).read_link(fields.get("token", "")[:MAX_TOKEN])
    except LinkError as exc:
        return _message(request, "Sign-in link not valid", str(exc), 400)
    if not _confirmed(request, service, fields, nonce):
        return _message(request, "Request refused", _REFUSED, 403)
    if not await service.store.use_admin_link(nonce, shop_id, time.time()):
        return _message(
            request,
            "Sign-in link already used",
            "Each sign-in link works once. Ask for a new one.",
            400,
        )
    shop = await service.store.get_shop(shop_id)
    if shop is None:
        return _message(request, "No such shop", "This shop no longer exists.", 404)
    if not shop.enabled:
        return _message(request, "Shop disabled", _DISABLED, 403)
    response = RedirectResponse(f"/admin/{shop_id}/settings", status_code=303)
    await set_session_cookie(request, response, shop_id)
    return response


def client_key(request: Request) -> str:
    """Whom the per-client limit counts: the client's address as the app sees it (uvicorn puts a
    trusted proxy's X-Forwarded-For there), an IPv6 client by its /64, which one host is commonly
    given whole, so that it cannot take a fresh address for each request."""
    host = request.client.host if request.client else ""
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return host[:100] or "unknown"
    if address.version == 6:
        return str(ipaddress.ip_network(f"{address}/64", strict=False))
    return str(address)


def _message(request: Request, title: str, text: str, status_code: int) -> Response:
    return message(request, title, text, status_code)


async def send_links(service: Service, auth: Auth, address: str) -> None:
    """Mail `address` one message with a one-time sign-in link for each enabled shop registered
    to it; nothing when there is none. Failures are logged (without the address or a link),
    never raised: the answer has gone."""
    try:
        shops = [s for s in await service.store.shops_by_email(address) if s.enabled]
    except StoreUnavailable as exc:
        log.warning("sign-in mail not sent: database unavailable", extra={"error": str(exc)})
        return
    if not shops:
        return
    base = service.settings.web.public_url
    lines = [
        "Someone, hopefully you, asked to sign in to Klarna capture with this address.",
        "",
        "Each link works once, for 15 minutes:",
        "",
    ]
    for shop in shops:
        lines += [
            f"{shop.name} ({shop.id}):",
            f"{base}/admin/login?token={auth.link_token(shop.id)}",
        ]
        lines.append("")
    lines.append("If you did not ask for this, ignore this mail: nothing changes.")
    settings = service.settings.mail
    try:
        await mail.send(settings, mail.message(settings, address, SUBJECT, "\n".join(lines)))
    except mail.MAIL_ERRORS as exc:
        log.warning(
            "sign-in mail not sent",
            extra={"shops": [s.id for s in shops], "error": type(exc).__name__},
        )
        return
    log.info("sign-in mail sent", extra={"shops": [s.id for s in shops]})


def email_change_page(request: Request, service: Service, token: str) -> Response:
    """GET of a link confirming a new sign-in address: checked, not used; a page whose button
    posts it back (as a sign-in link's, so that mail scanners do not confirm it)."""
    try:
        change = auth_of(request).read_email_change(token[:MAX_TOKEN])
    except LinkError as exc:
        return _message(request, "Confirmation link not valid", str(exc), 400)
    return _confirm_page(
        request,
        service,
        change.nonce,
        {
            "title": "Confirm your sign-in address",
            "text": f"Use {change.email} to sign in to your shop's Klarna capture settings and "
            "to receive its failure alerts.",
            "action": "/admin/confirm-email",
            "token": token,
            "button": "Use this address",
        },
    )


async def confirm_email_change(request: Request, service: Service) -> Response:
    """POST of that page: the link is used (once) and the shop's address becomes the new one."""
    fields = await read_form(request)
    if isinstance(fields, Response):
        return fields
    try:
        change = auth_of(request).read_email_change(fields.get("token", "")[:MAX_TOKEN])
    except LinkError as exc:
        return _message(request, "Confirmation link not valid", str(exc), 400)
    if not _confirmed(request, service, fields, change.nonce):
        return _message(request, "Request refused", _REFUSED, 403)
    # The sign-in links' store of used nonces, with a prefix of its own: once, across processes.
    if not await service.store.use_admin_link("email:" + change.nonce, change.shop_id, time.time()):
        return _message(
            request,
            "Confirmation link already used",
            "Each confirmation link works once. Enter the address on the settings page again.",
            400,
        )
    shop = await service.store.get_shop(change.shop_id)
    if shop is None:
        return _message(request, "No such shop", "This shop no longer exists.", 404)
    if not shop.enabled:
        return _message(request, "Shop disabled", _DISABLED, 403)
    await service.shops.update(shop.id, ShopChanges(email=change.email))
    log.info("sign-in address changed", extra={"shop": shop.id})
    return _message(
        request,
        "Address confirmed",
        f"Sign-in links and failure alerts of {shop.name} now go to {change.email}.",
        200,
    )


async def email_change_problem(service: Service, shop: Shop) -> str | None:
    """Why the settings page may not mail a confirmation link now: a session may ask for as
    many as an address may for sign-in links (PER_ADDRESS in WINDOW_SECONDS, across processes),
    so that it cannot use the service to mail any address again and again."""
    now = time.time()
    hits, reset_at = await service.store.count_hit("email-change:" + shop.id, WINDOW_SECONDS, now)
    if hits <= PER_ADDRESS:
        return None
    minutes = max(1, math.ceil((reset_at - now) / 60))
    return f"Too many new addresses were entered. Try again in {minutes} minutes."


async def send_email_change(
    service: Service, auth: Auth, shop: Shop, new: str | None, base: str
) -> None:
    """After a save that changed the shop's sign-in address: a link confirming it to the `new`
    address (None: the address was removed), and a word to the old one, when there is one, that
    a change was asked. Failures are logged (without addresses or links), never raised."""
    settings = service.settings.mail
    mails = []
    if new is not None:
        link = f"{base}/admin/confirm-email?token={auth.email_change_token(shop.id, new)}"
        text = "\n".join(
            [
                f"Someone signed in to the Klarna capture settings of {shop.name} ({shop.id})",
                "asked to send its sign-in links and failure alerts to this address.",
                "",
                "To confirm, open this link within 15 minutes and press the button it shows:",
                "",
                link,
                "",
                "If you did not ask for this, ignore this mail: nothing changes.",
            ]
        )
        mails.append(mail.message(settings, new, CONFIRM_SUBJECT, text))
    if shop.email is not None:
        if new is not None:
            what = [
                f"Someone signed in to the Klarna capture settings of {shop.name} ({shop.id})",
                f"asked to send its sign-in links and failure alerts to {new} instead of here.",
                "Nothing changes unless the link mailed to that address is followed within 15",
                "minutes.",
            ]
        else:
            what = [
                f"Someone signed in to the Klarna capture settings of {shop.name} ({shop.id})",
                "removed this address: its sign-in links and failure alerts no longer come here.",
            ]
        what += [
            "",
            "If this was not you, sign in to the settings from your storefront's admin or ask",
            "the operator of the service, and check the address there.",
        ]
        mails.append(mail.message(settings, shop.email, NOTICE_SUBJECT, "\n".join(what)))
    for message_ in mails:
        try:
            await mail.send(settings, message_)
        except mail.MAIL_ERRORS as exc:
            log.warning(
                "address change mail not sent",
                extra={"shop": shop.id, "error": type(exc).__name__},
            )
