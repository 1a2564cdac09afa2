"""What every page of the service shares, the storefront apps' install and admin entries
included: the templates, a short message page, the running service and sign-in of a request, who
may frame an answer and how a page fits into the storefront admin that frames it, and the
settings session's cookie. It names no platform and imports no registry, so that platform
packages may use it while the merchant's pages ask the registry."""

import re
import time
from pathlib import Path
from typing import Any

import jinja2
import markupsafe
import msgspec
from starlette.requests import Request
from starlette.responses import Response
from starlette.templating import Jinja2Templates

from plugin import dates
from plugin.context import ServiceContext
from plugin.errors import PluginError
from plugin.klarna.errors import join_messages
from plugin.web.auth import COOKIE, SESSION_SECONDS, Auth

TEMPLATES = Path(__file__).resolve().parent.parent / "templates"
# The request state entries SecurityHeaders and the templates read: who may frame this answer
# (absent: nobody), and how it fits into the storefront admin that frames it (absent: a page of
# its own).
FRAME_ANCESTORS = "frame_ancestors"
EMBEDDING = "embedding"

# What an embedding may put into a page: scripts from https URLs (no query, no fragment, nothing
# a CSP source or an attribute would read otherwise), stylesheets of our own, meta tags and a
# custom element by name.
_SCRIPT = re.compile(r"https://[a-z0-9.-]+(?:/[A-Za-z0-9._~-]+)+")
_STYLESHEET = re.compile(r"/admin/static/[a-z0-9-]+\.css")
_META_NAME = re.compile(r"[a-z][a-z0-9-]{0,63}")
_ELEMENT = re.compile(r"[a-z][a-z0-9]*(?:-[a-z0-9]+)+")
_META_CONTENT = 255


class Embedding(msgspec.Struct, frozen=True, kw_only=True):
    """How a shop's pages fit into the storefront admin that frames them (a platform's
    `SettingsPage.embedding`): the admin's script and what it reads from the page.

    - `meta`: (name, content) meta tags, before the scripts (which read them as they run);
    - `scripts`: https URLs, loaded first in the head, in order, neither async nor deferred; the
      page's Content-Security-Policy allows exactly these and no other script;
    - `stylesheets`: our own, after the service's, for the admin's look;
    - `nav`: the custom element that hands the pages' links to the admin's navigation, in place
      of the service's top bar (and its sign-out: the admin signs the merchant in).

    A page keeps working when the scripts do not load: the links stay in the page, the forms
    post as they do everywhere.
    """

    meta: tuple[tuple[str, str], ...] = ()
    scripts: tuple[str, ...] = ()
    stylesheets: tuple[str, ...] = ()
    nav: str = ""

    def __post_init__(self) -> None:
        for name, content in self.meta:
            if not _META_NAME.fullmatch(name) or len(content) > _META_CONTENT:
                raise ValueError(f"not a meta tag an embedding may set: {name!r}")
        for url in self.scripts:
            if not _SCRIPT.fullmatch(url):
                raise ValueError(f"not a script URL an embedding may load: {url!r}")
        for path in self.stylesheets:
            if not _STYLESHEET.fullmatch(path):
                raise ValueError(f"not one of our stylesheets: {path!r}")
        if self.nav and not _ELEMENT.fullmatch(self.nav):
            raise ValueError(f"not a custom element name: {self.nav!r}")


def embedding_of(request: Request) -> Embedding | None:
    """How the answer to `request` fits into a storefront admin (None: it does not)."""
    embedding = getattr(request.state, EMBEDDING, None)
    return embedding if isinstance(embedding, Embedding) else None


def _page_context(request: Request) -> dict[str, Any]:
    """What every page gets: its embedding, and with one the shop whose pages the navigation
    links (the one in the address, which `embed`'s caller has checked the session may open)."""
    embedding = embedding_of(request)
    shop_id = request.path_params.get("shop_id") if embedding is not None else None
    return {"embedding": embedding, "embedded_shop_id": shop_id}


def time_element(
    at: float, time_zone: str | None = None, locale: str | None = None
) -> markupsafe.Markup:
    """A moment as a page shows it: in a shop's time zone and locale (UTC and English on a page
    of none; plugin.dates), in a `<time>` element whose `datetime` holds it in ISO 8601."""
    return markupsafe.Markup('<time datetime="{}">{}</time>').format(
        dates.iso(at, time_zone), dates.moment(at, time_zone, locale)
    )


def make_templates(*loaders: jinja2.BaseLoader) -> Jinja2Templates:
    """The service's templates, then those `loaders` find (the platforms' partials). Every page
    gets the request's `embedding` (see `embed`), so a short message inside a storefront admin
    fits into it too."""
    env = jinja2.Environment(
        loader=jinja2.ChoiceLoader([jinja2.FileSystemLoader(TEMPLATES), *loaders]),
        autoescape=jinja2.select_autoescape(),
    )
    env.filters["messages"] = join_messages
    env.filters["datetime"] = time_element
    return Jinja2Templates(env=env, context_processors=[_page_context])


templates = make_templates()


def service_of(request: Request) -> ServiceContext:
    service: ServiceContext = request.app.state.service
    return service


def auth_of(request: Request) -> Auth:
    """The sign-in links, sessions, CSRF tokens and install states of the app serving
    `request` (plugin.app puts them on its state)."""
    auth: Auth = request.app.state.auth
    return auth


def render(
    request: Request, name: str, context: dict[str, Any], status_code: int = 200
) -> Response:
    return templates.TemplateResponse(request, name, context, status_code=status_code)


class Refused(PluginError):
    """A request a platform's page answers with a short page (`message`): `reason` goes to the
    log, never a secret; `title` and `text` to the merchant."""

    def __init__(self, status: int, title: str, text: str, reason: str) -> None:
        super().__init__(reason)
        self.status = status
        self.title = title
        self.text = text


def message(request: Request, title: str, text: str, status_code: int) -> Response:
    return render(request, "message.html", {"title": title, "text": text}, status_code)


def allow_framing(request: Request, origins: tuple[str, ...]) -> None:
    """Let `origins` (https origins: a storefront admin that embeds the app) frame this answer;
    without a call nobody may."""
    if origins:
        setattr(request.state, FRAME_ANCESTORS, origins)


def embed(request: Request, embedding: Embedding | None) -> None:
    """Show this answer as part of the storefront admin that frames it, as `embedding` says:
    its script, its navigation (the pages of the shop in the address, which the caller has
    checked the session may open), its look, and a CSP that allows exactly that script. Without
    a call (or with None) the page is one of its own and runs no script at all."""
    if embedding is not None:
        setattr(request.state, EMBEDDING, embedding)


async def set_session_cookie(
    request: Request, response: Response, shop_id: str, *, embedded: bool = False
) -> None:
    """A new settings session, recorded in the store (where sign-out and uninstall end it) and
    set as the cookie. An embedded app's session shows its pages as part of the storefront admin
    (see `embed`), and its cookie is a third-party one inside that admin's iframe, so over https
    it is SameSite=None and partitioned (CHIPS) to that admin."""
    service = service_of(request)
    session, value = auth_of(request).new_session(shop_id, embedded=embedded)
    now = time.time()
    await service.store.start_session(session.sid, shop_id, now + SESSION_SECONDS, now)
    https = service.settings.web.public_url.startswith("https://")
    if embedded and https:
        response.headers.append("set-cookie", partitioned_cookie(value, SESSION_SECONDS))
        return
    response.set_cookie(
        COOKIE, value, max_age=SESSION_SECONDS, path="/admin", httponly=True, secure=https
    )


def partitioned_cookie(value: str, max_age: int) -> str:
    # Written out by hand: http.cookies (under Starlette) knows Partitioned only from Python 3.14.
    # The value is itsdangerous' URL-safe text, or empty to delete.
    return (
        f"{COOKIE}={value}; HttpOnly; Max-Age={max_age}; Path=/admin; SameSite=None; Secure; "
        "Partitioned"
    )
