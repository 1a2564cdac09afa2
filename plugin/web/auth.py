"""Sign-in for the settings page: one-time admin links and the CSRF token of the page that uses
one, signed session cookies (naming a session the store keeps) and per-session CSRF tokens, the
sign-in form's CSRF token, the links that confirm a new sign-in address, and the `state` of a
Shopify install, all with itsdangerous and the service's secret keys."""

import hmac
import secrets
from collections.abc import Sequence

import msgspec
from itsdangerous import BadSignature, SignatureExpired, URLSafeTimedSerializer

from plugin.errors import PluginError

LINK_SECONDS = 15 * 60
SESSION_SECONDS = 8 * 3600
COOKIE = "kc_session"
INSTALL_STATE_SECONDS = 10 * 60
INSTALL_STATE_COOKIE = "kc_install_state"
INSTALL_STATE_SALT = "klarna-capture install state"
# The sign-in form (/admin/login) has no session to tie its CSRF token to: its token signs a
# random value the browser keeps in this cookie (double submit), for this long.
LOGIN_FORM_SECONDS = 3600
LOGIN_COOKIE = "kc_login"
# The page a one-time link opens (a GET, which mail scanners make too) posts the link back with a
# token naming the link and a random value this cookie keeps: only that POST uses the link.
LINK_COOKIE = "kc_link"
# Those two cookies hold their random value signed (a few dozen characters): a longer one is
# none of ours, and is not even checked.
MAX_FORM_COOKIE = 256
NONCE_CHARS = 32
# What an action did, carried signed in the link of the page it redirects to, is shown that long.
OUTCOME_SECONDS = 10 * 60
# A link confirming a new sign-in address works for as long as a sign-in link.
EMAIL_CHANGE_SECONDS = LINK_SECONDS


class LinkError(PluginError):
    """A sign-in link that cannot be used; the message is for the merchant."""


class EmailChange(msgspec.Struct, frozen=True):
    """What a link mailed to a new sign-in address confirms: `shop_id`'s address is `email`."""

    shop_id: str
    email: str
    nonce: str


class InstallStateError(PluginError):
    """An OAuth `state` that did not come back as it was sent; the message is for the log."""


class Session(msgspec.Struct, frozen=True):
    """A settings session of one shop; `embedded` when it was started by a storefront admin that
    frames the pages (its app's admin entry), so that its pages fit into that admin."""

    shop_id: str
    sid: str
    embedded: bool = False


class Auth:
    def __init__(self, secret_keys: Sequence[str]) -> None:
        # itsdangerous signs with the last key and accepts all; ours lists the newest first.
        keys = list(reversed(secret_keys))
        self._links = URLSafeTimedSerializer(keys, salt="klarna-capture admin link")
        self._sessions = URLSafeTimedSerializer(keys, salt="klarna-capture session")
        self._csrf = URLSafeTimedSerializer(keys, salt="klarna-capture csrf")
        self._install_states = URLSafeTimedSerializer(keys, salt=INSTALL_STATE_SALT)
        self._login_forms = URLSafeTimedSerializer(keys, salt="klarna-capture login form")
        self._login_cookies = URLSafeTimedSerializer(keys, salt="klarna-capture login cookie")
        self._link_forms = URLSafeTimedSerializer(keys, salt="klarna-capture link form")
        self._link_cookies = URLSafeTimedSerializer(keys, salt="klarna-capture link cookie")
        self._email_changes = URLSafeTimedSerializer(keys, salt="klarna-capture email change")
        self._pending_emails = URLSafeTimedSerializer(keys, salt="klarna-capture pending email")
        self._outcomes = URLSafeTimedSerializer(keys, salt="klarna-capture outcome")

    def link_token(self, shop_id: str) -> str:
        return self._links.dumps({"shop": shop_id, "nonce": secrets.token_hex(16)})

    def read_link(self, token: str) -> tuple[str, str]:
        """(shop id, nonce) of a valid link token; the caller makes sure it is used once."""
        try:
            data = self._links.loads(token, max_age=LINK_SECONDS)
        except SignatureExpired:
            raise LinkError("This sign-in link has expired: links work for 15 minutes.") from None
        except BadSignature:
            raise LinkError("This sign-in link is not valid.") from None
        return str(data["shop"]), str(data["nonce"])

    def new_session(self, shop_id: str, *, embedded: bool = False) -> tuple[Session, str]:
        """A new session of the shop and its signed cookie. The cookie alone is not enough: the
        caller records the session in the store, and only a session recorded there and not ended
        signs in (sign-out and uninstall end it on the server)."""
        session = Session(shop_id=shop_id, sid=secrets.token_hex(16), embedded=embedded)
        data: dict[str, object] = {"shop": shop_id, "sid": session.sid}
        if embedded:
            data["embedded"] = True
        return session, self._sessions.dumps(data)

    def read_session(self, cookie: str | None) -> Session | None:
        if not cookie:
            return None
        try:
            data = self._sessions.loads(cookie, max_age=SESSION_SECONDS)
        except BadSignature:
            return None
        return Session(
            shop_id=str(data["shop"]), sid=str(data["sid"]), embedded=data.get("embedded") is True
        )

    def csrf_token(self, session: Session) -> str:
        return self._csrf.dumps(session.sid)

    def csrf_valid(self, session: Session, token: str | None) -> bool:
        if not token:
            return False
        try:
            sid = self._csrf.loads(token, max_age=SESSION_SECONDS)
        except BadSignature:
            return False
        return hmac.compare_digest(str(sid), session.sid)

    def login_form(self, cookie: str | None) -> tuple[str, str]:
        """A sign-in form's (cookie value, CSRF token): the token names the random value the
        cookie holds. The browser's cookie, while valid, keeps its value (signed anew, for
        another LOGIN_FORM_SECONDS), so that a form opened in a second tab leaves the first
        one's token good; any other cookie is replaced by a new value."""
        nonce = _kept_nonce(self._login_cookies, cookie, LOGIN_FORM_SECONDS) or _new_nonce()
        return self._login_cookies.dumps(nonce), self._login_forms.dumps(nonce)

    def login_form_valid(self, cookie: str | None, token: str | None) -> bool:
        """Whether `token` was made with the browser's sign-in form cookie, each within the
        hour."""
        nonce = _kept_nonce(self._login_cookies, cookie, LOGIN_FORM_SECONDS)
        if nonce is None or not token:
            return False
        try:
            named = self._login_forms.loads(token, max_age=LOGIN_FORM_SECONDS)
        except BadSignature:
            return False
        return hmac.compare_digest(str(named).encode(), nonce.encode())

    def link_form(self, link_nonce: str, cookie: str | None) -> tuple[str, str]:
        """The (cookie value, CSRF token) of the page a one-time link opens: the token names both
        the cookie's random value and the link, so that it posts back only that link, from that
        browser. As with the sign-in form, a valid cookie keeps its value (signed anew, for
        another LINK_SECONDS): the pages of two links opened one after the other (a mail holds
        one per shop) both still sign in."""
        nonce = _kept_nonce(self._link_cookies, cookie, LINK_SECONDS) or _new_nonce()
        token = self._link_forms.dumps({"form": nonce, "link": link_nonce})
        return self._link_cookies.dumps(nonce), token

    def link_form_valid(self, cookie: str | None, token: str | None, link_nonce: str) -> bool:
        """Whether `token` was made for the link of `link_nonce` with the browser's cookie."""
        nonce = _kept_nonce(self._link_cookies, cookie, LINK_SECONDS)
        if nonce is None or not token:
            return False
        try:
            data = self._link_forms.loads(token, max_age=LINK_SECONDS)
        except BadSignature:
            return False
        if not isinstance(data, dict):
            return False
        return hmac.compare_digest(
            str(data.get("form", "")).encode(), nonce.encode()
        ) and hmac.compare_digest(str(data.get("link", "")).encode(), link_nonce.encode())

    def email_change_token(self, shop_id: str, email: str) -> str:
        """The token of a link that makes `email` the sign-in address of `shop_id`, once."""
        return self._email_changes.dumps(
            {"shop": shop_id, "email": email, "nonce": secrets.token_hex(16)}
        )

    def read_email_change(self, token: str) -> EmailChange:
        """What a valid token confirms; the caller makes sure it is used once."""
        try:
            data = self._email_changes.loads(token, max_age=EMAIL_CHANGE_SECONDS)
        except SignatureExpired:
            raise LinkError(
                "This confirmation link has expired: links work for 15 minutes."
            ) from None
        except BadSignature:
            raise LinkError("This confirmation link is not valid.") from None
        return EmailChange(
            shop_id=str(data["shop"]), email=str(data["email"]), nonce=str(data["nonce"])
        )

    def pending_email(self, shop_id: str, email: str) -> str:
        """What the settings page after a save shows as "confirmation sent to `email`": signed,
        so that no link can make the page say it of another address."""
        return self._pending_emails.dumps({"shop": shop_id, "email": email})

    def read_pending_email(self, value: str, shop_id: str) -> str | None:
        """The address a `pending_email` of `shop_id` names, while its link may be followed."""
        try:
            data = self._pending_emails.loads(value, max_age=EMAIL_CHANGE_SECONDS)
        except BadSignature:
            return None
        if not isinstance(data, dict) or data.get("shop") != shop_id:
            return None
        return str(data.get("email", "")) or None

    def outcome(self, shop_id: str, outcome: dict[str, str | int]) -> str:
        """What an action on `shop_id`'s pages did, signed for the link of the page after it, so
        that the page's banner says only what happened (no link can make it say anything)."""
        return self._outcomes.dumps({"shop": shop_id, "outcome": outcome})

    def read_outcome(self, value: str, shop_id: str) -> dict[str, object] | None:
        """The outcome an `outcome` value of `shop_id` carries; None: none, or not ours."""
        try:
            data = self._outcomes.loads(value, max_age=OUTCOME_SECONDS)
        except BadSignature:
            return None
        if not isinstance(data, dict) or data.get("shop") != shop_id:
            return None
        outcome = data.get("outcome")
        return outcome if isinstance(outcome, dict) else None

    def install_state(self, shop_domain: str) -> str:
        """The `state` of one install of the storefront app on `shop_domain`: signed, short-lived,
        also kept in the browser's cookie so the callback must reach the browser that started."""
        return self._install_states.dumps({"shop": shop_domain, "nonce": secrets.token_hex(16)})

    def check_install_state(self, state: str, *, shop_domain: str, cookie: str | None) -> None:
        if not state:
            raise InstallStateError("missing state parameter")
        try:
            data = self._install_states.loads(state, max_age=INSTALL_STATE_SECONDS)
        except SignatureExpired:
            raise InstallStateError("state is older than 10 minutes") from None
        except BadSignature:
            raise InstallStateError("state signature is not valid") from None
        if not isinstance(data, dict) or not hmac.compare_digest(
            str(data.get("shop", "")).encode(), shop_domain.encode()
        ):
            raise InstallStateError("state was issued for another shop")
        if not cookie:
            raise InstallStateError("no install state cookie: another browser, or cookies blocked")
        if not hmac.compare_digest(cookie.encode(), state.encode()):
            raise InstallStateError("state does not match this browser's install state cookie")


def _kept_nonce(signer: URLSafeTimedSerializer, cookie: str | None, max_age: int) -> str | None:
    """The random value a form cookie holds, when it is one of ours: bounded, signed by
    `signer`, younger than `max_age`. None for anything else."""
    if not cookie or len(cookie) > MAX_FORM_COOKIE:
        return None
    try:
        nonce = signer.loads(cookie, max_age=max_age)
    except BadSignature:
        return None
    return nonce if isinstance(nonce, str) and len(nonce) == NONCE_CHARS else None


def _new_nonce() -> str:
    return secrets.token_hex(NONCE_CHARS // 2)
