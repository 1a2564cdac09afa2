"""The mail settings (KLARNA_CAPTURE_SMTP_URL, KLARNA_CAPTURE_MAIL_FROM): read and checked at
load like every setting, the password never in an error or a repr."""

import pytest

from plugin.config import ConfigError, MailSettings, load_settings

SECRET = "s3cr3t-pa55"


def mail(url: str | None, sender: str | None = "Capture@Example.com") -> MailSettings:
    env = {}
    if url is not None:
        env["KLARNA_CAPTURE_SMTP_URL"] = url
    if sender is not None:
        env["KLARNA_CAPTURE_MAIL_FROM"] = sender
    return load_settings(env).mail


def test_without_them_no_mail_is_sent() -> None:
    assert mail(None, None) == MailSettings()
    assert not MailSettings().enabled


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        # Over a network, a link mailed in clear could be read on the way: STARTTLS or nothing.
        ("smtp://mail.example.com", ("mail.example.com", 587, "require", None)),
        ("smtp://mail.example.com?starttls=auto", ("mail.example.com", 587, "auto", None)),
        ("smtp://127.0.0.1:2525", ("127.0.0.1", 2525, "auto", None)),
        ("smtp://mail.example.com:2525?starttls=off", ("mail.example.com", 2525, "off", None)),
        (f"smtps://ann:{SECRET}@mail.example.com", ("mail.example.com", 465, "tls", "ann")),
        (
            f"smtp://ann%40shop:{SECRET}@mail.example.com?starttls=require",
            ("mail.example.com", 587, "require", "ann@shop"),
        ),
    ],
)
def test_the_url_says_where_and_how(url: str, expected: tuple[object, ...]) -> None:
    settings = mail(url)
    assert (settings.host, settings.port, settings.security, settings.username) == expected
    assert settings.mail_from == "capture@example.com"
    assert settings.enabled
    assert SECRET not in repr(settings)
    if settings.username:
        assert str(settings.password) == SECRET


@pytest.mark.parametrize(
    ("url", "sender", "problem"),
    [
        ("smtp://mail.example.com", None, "go together"),
        (None, "capture@example.com", "go together"),
        ("http://mail.example.com", "capture@example.com", "smtp://host"),
        ("smtp://", "capture@example.com", "smtp://host"),
        ("smtp://mail.example.com:99999", "capture@example.com", "port"),
        ("smtp://mail.example.com/x", "capture@example.com", "no path"),
        ("smtp://mail.example.com?starttls=maybe", "capture@example.com", "starttls must"),
        ("smtps://mail.example.com?starttls=require", "capture@example.com", "smtp:// only"),
        ("smtp://mail.example.com?from=x", "capture@example.com", "one parameter"),
        (f"smtp://ann:{SECRET}@mail.example.com?starttls=auto", "capture@example.com", "in clear"),
        (
            f"smtp://ann:{SECRET}@mail.example.com?starttls=off",
            "capture@example.com",
            "never sent in clear",
        ),
        ("smtp://mail.example.com", "Capture <capture@example.com>", "one plain address"),
        ("smtp://mail.example.com", "capture@example.com\r\nBcc: x@y.z", "one plain address"),
    ],
)
def test_a_wrong_setting_is_refused_at_load_without_its_password(
    url: str | None, sender: str | None, problem: str
) -> None:
    with pytest.raises(ConfigError, match=problem) as refused:
        mail(url, sender)
    assert SECRET not in str(refused.value)
