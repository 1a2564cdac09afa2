"""What every page of the service shares, the storefront apps' install and admin entries
included: the templates, a short message page, the running service and sign-in of a request, who
may frame an answer, and the settings session's cookie. It names no platform and imports no
registry, so that platform packages may use it while the merchant's pages ask the registry."""

import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import jinja2
from starlette.requests import Request
from starlette.responses import Response
from starlette.templating import Jinja2Templates

from plugin.context import ServiceContext
from plugin.errors import PluginError
from plugin.klarna.errors import join_messages
from plugin.web.auth import COOKIE, SESSION_SECONDS, Auth

TEMPLATES = Path(__file__).resolve().parent.parent / "templates"
# The request state entry SecurityHeaders reads: who may frame this answer (absent: nobody).
FRAME_ANCESTORS = "frame_ancestors"


def make_templates(*loaders: jinja2.BaseLoader) -> Jinja2Templates:
    """The service's templates, then those `loaders` find (the platforms' partials)."""
    env = jinja2.Environment(
        loader=jinja2.ChoiceLoader([jinja2.FileSystemLoader(TEMPLATES), *loaders]),
        autoescape=jinja2.select_autoescape(),
    )
    env.filters["messages"] = join_messages
    env.filters["datetime"] = lambda at: datetime.fromtimestamp(at, UTC).strftime(
        "%Y-%m-%d %H:%M UTC"
    )
    return Jinja2Templates(env=env)


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


async def set_session_cookie(
    request: Request, response: Response, shop_id: str, *, embedded: bool = False
) -> None:
    """A new settings session, recorded in the store (where sign-out and uninstall end it) and
    set as the cookie. An embedded app's session remembers it started inside the storefront
    admin, and its cookie is a third-party one inside that admin's iframe, so over https it is
    SameSite=None and partitioned (CHIPS) to that admin."""
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
