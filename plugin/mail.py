"""Mail out over SMTP (aiosmtplib): one plain-text message to one address, through the server of
the mail settings, bounded in time. What a mail says is its sender's (the sign-in page, the
failure alerts); here is only how it leaves."""

from email.message import EmailMessage
from email.utils import formatdate, make_msgid

import aiosmtplib

from plugin.config import MailSecurity, MailSettings

# Connect, each command and the message itself: a mail server that hangs holds one background
# task that long, never a request.
TIMEOUT_SECONDS = 30.0
# What a failed send raises: the server refused, the connection failed or timed out.
MAIL_ERRORS = (aiosmtplib.SMTPException, OSError, TimeoutError)
STARTTLS: dict[MailSecurity, bool | None] = {
    "tls": False,
    "require": True,
    "auto": None,
    "off": False,
}


def message(settings: MailSettings, to: str, subject: str, text: str) -> EmailMessage:
    """A plain-text message from the settings' sender to `to` (an address in plugin.emails'
    normal form: no line breaks, so no header can be added through it)."""
    if settings.mail_from is None:
        raise ValueError("no KLARNA_CAPTURE_MAIL_FROM: mail is not configured")
    mail = EmailMessage()
    mail["From"] = settings.mail_from
    mail["To"] = to
    mail["Subject"] = subject
    mail["Date"] = formatdate(usegmt=True)  # RFC 5322 asks for it; filters score mail without
    mail["Message-ID"] = make_msgid(domain=settings.mail_from.rpartition("@")[2])
    mail["Auto-Submitted"] = "auto-generated"  # RFC 3834: no vacation replies to us
    mail.set_content(text)
    return mail


async def send(settings: MailSettings, mail: EmailMessage) -> None:
    """Send `mail` through the settings' server; one of MAIL_ERRORS when it did not go out."""
    if settings.host is None:
        raise ValueError("no KLARNA_CAPTURE_SMTP_URL: mail is not configured")
    await aiosmtplib.send(
        mail,
        hostname=settings.host,
        port=settings.port,
        username=settings.username,
        password=None if settings.password is None else str(settings.password),
        use_tls=settings.security == "tls",
        # True: STARTTLS or fail; None: when the server offers it; False: never (or TLS already).
        start_tls=STARTTLS[settings.security],
        timeout=TIMEOUT_SECONDS,
    )
