import ipaddress
import re
import stat
from pathlib import Path

import pytest

from plugin.config import (
    PREFIX,
    ConfigError,
    DatabaseSettings,
    DatabaseUrl,
    KlarnaSettings,
    QueueSettings,
    SecretKeys,
    Settings,
    WebSettings,
    ensure_secret_keys,
    load_settings,
    record_serve_url,
    secure_data_dir,
    sqlite_path,
    unknown_variables,
    variable_names,
    with_serve_url,
)
from plugin.logs import is_secret_name

KEY = "k" * 16
OTHER_KEY = "o" * 24


def test_defaults(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    settings = load_settings({})
    data_dir = tmp_path.resolve() / "var"
    assert settings == Settings(
        data_dir=data_dir,
        database=DatabaseSettings(url=DatabaseUrl(f"sqlite:///{data_dir}/klarna-capture.db")),
        secret_keys=SecretKeys(),
        klarna=KlarnaSettings(url=None),
        web=WebSettings(
            public_url="http://127.0.0.1:8000",
            webhook_tolerance_seconds=300,
            public_url_configured=False,
        ),
        queue=QueueSettings(workers=4),
        log_level="INFO",
    )
    assert sqlite_path(settings) == data_dir / "klarna-capture.db"
    assert not data_dir.exists()


def test_every_variable_is_read(tmp_path: Path) -> None:
    settings = load_settings(
        {
            "KLARNA_CAPTURE_DATA_DIR": str(tmp_path / "data"),
            "KLARNA_CAPTURE_DATABASE_URL": f"sqlite:///{tmp_path}/db.sqlite",
            "KLARNA_CAPTURE_SECRET_KEY": f" {KEY} ,{OTHER_KEY}",
            "KLARNA_CAPTURE_KLARNA_URL": "http://127.0.0.1:8100/",
            "KLARNA_CAPTURE_PUBLIC_URL": "https://capture.example.com/",
            "KLARNA_CAPTURE_WORKERS": "0",
            "KLARNA_CAPTURE_WEBHOOK_TOLERANCE": "86400",
            "KLARNA_CAPTURE_LOG_LEVEL": "debug",
            "KLARNA_CAPTURE_DATABASE_POOL_SIZE": "8",
            "KLARNA_CAPTURE_WORKER_PROCESSES": "3",
        }
    )
    assert settings.data_dir == tmp_path / "data"
    assert sqlite_path(settings) == tmp_path / "db.sqlite"
    assert settings.secret_keys == (KEY, OTHER_KEY)
    assert settings.klarna.url == "http://127.0.0.1:8100"
    assert settings.web.public_url == "https://capture.example.com"
    assert settings.queue.workers == 0
    assert settings.web.webhook_tolerance_seconds == 86400
    assert settings.log_level == "DEBUG"
    assert (settings.database.pool_size, settings.queue.worker_processes) == (8, 3)


def test_empty_values_count_as_unset() -> None:
    settings = load_settings({"KLARNA_CAPTURE_WORKERS": "", "KLARNA_CAPTURE_SECRET_KEY": " "})
    assert settings.queue.workers == 4
    assert settings.secret_keys == ()


def test_relative_sqlite_path_is_fixed_against_the_working_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    settings = load_settings({"KLARNA_CAPTURE_DATABASE_URL": "sqlite:///db/capture.sqlite"})
    expected = tmp_path.resolve() / "db" / "capture.sqlite"
    assert settings.database.url == f"sqlite:///{expected}"
    assert sqlite_path(settings) == expected


@pytest.mark.parametrize(
    "url",
    [
        "postgresql://capture:pw@db.internal:5432/capture",
        "postgres://capture@db.internal/capture",
        "postgresql:///capture",
    ],
)
def test_postgres_urls_are_kept_as_given(url: str) -> None:
    settings = load_settings({"KLARNA_CAPTURE_DATABASE_URL": url})
    assert settings.database.url == url
    assert sqlite_path(settings) is None


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("DATABASE_URL", "mysql://capture:pw@db/capture"),
        ("DATABASE_URL", "sqlite://capture.db"),
        ("DATABASE_URL", "sqlite:///"),
        ("DATABASE_URL", "sqlite:///:memory:"),
        ("DATABASE_URL", "sqlite:///capture.db?mode=ro"),
        ("DATABASE_URL", "capture.db"),
        ("SECRET_KEY", "too-short"),
        ("SECRET_KEY", f"{KEY},short"),
        ("KLARNA_URL", "api.klarna.com"),
        ("KLARNA_URL", "ftp://api.klarna.com"),
        ("KLARNA_URL", "https://user:pw@api.klarna.com"),
        ("PUBLIC_URL", "https://capture.example.com/?shop=x"),
        ("PUBLIC_URL", "https://capture.example.com/#top"),
        ("PUBLIC_URL", "https://capture.example.com:http/"),
        ("PUBLIC_URL", "https://"),
        ("WORKERS", "lots"),
        ("WORKERS", "257"),
        ("WORKERS", "-1"),
        ("WORKERS", "2.5"),
        ("WEBHOOK_TOLERANCE", "0"),
        ("WEBHOOK_TOLERANCE", "86401"),
        ("WEBHOOK_TOLERANCE", "5m"),
        ("LOG_LEVEL", "verbose"),
        ("LOG_LEVEL", "CRITICAL"),
        ("DATABASE_POOL_SIZE", "1"),
        ("WORKER_PROCESSES", "0"),
        ("JOB_DEADLINE_SECONDS", "30"),
        ("JOB_DEADLINE_SECONDS", "1e9"),
        ("JOB_DEADLINE_SECONDS", "86401"),
        ("CALLBACK_WORKERS", "0"),
        ("CALLBACK_WORKERS", "257"),
        ("SHOP_CONCURRENCY", "0"),
        ("SHOP_CONCURRENCY", "-1"),
        ("TRUSTED_PROXIES", "proxy.internal"),
        ("TRUSTED_PROXIES", "10.0.0.1/8"),
        ("TRUSTED_PROXIES", "*"),
        ("DATABASE_TIMEOUT_SECONDS", "0"),
        ("DATABASE_TIMEOUT_SECONDS", "301"),
        ("DATABASE_TIMEOUT_SECONDS", "2.5"),
        ("DATABASE_TIMEOUT_SECONDS", "soon"),
        ("HEARTBEAT_SECONDS", "0"),
        ("HEARTBEAT_SECONDS", "61"),
        ("HEARTBEAT_SECONDS", "1.5"),
        ("HEARTBEAT_SECONDS", "-2"),
        ("HEARTBEAT_SECONDS", "two"),
        ("RETAIN_BODIES_DAYS", "-1"),
        ("RETAIN_BODIES_DAYS", "2.5"),
        # Shorter than Standard Webhooks' example schedule of redeliveries (3.15 days).
        ("RETAIN_DELIVERY_IDS_DAYS", "3"),
        ("RETAIN_JOBS_DAYS", "0"),
        ("RETAIN_LEDGER_DAYS", "0"),
        # Shorter than the defaults' 3 days of bodies and 7 of delivery ids, or 30 of jobs.
        ("RETAIN_LEDGER_DAYS", "29"),
        ("RETAIN_LEDGER_DAYS", "forever"),
        ("PRUNE_INTERVAL_SECONDS", "86401"),
    ],
)
def test_bad_values_name_the_variable_in_one_line(name: str, value: str) -> None:
    with pytest.raises(ConfigError) as caught:
        load_settings({f"KLARNA_CAPTURE_{name}": value})
    message = str(caught.value)
    assert message.startswith(f"KLARNA_CAPTURE_{name} ")
    assert "\n" not in message


def test_workers_error_reads_well() -> None:
    with pytest.raises(ConfigError) as caught:
        load_settings({"KLARNA_CAPTURE_WORKERS": "lots"})
    assert str(caught.value) == (
        "KLARNA_CAPTURE_WORKERS must be a whole number from 0 to 256, not 'lots'"
    )


def test_errors_do_not_repeat_secrets() -> None:
    with pytest.raises(ConfigError) as caught:
        load_settings({"KLARNA_CAPTURE_DATABASE_URL": "mysql://capture:hunter2@db/capture"})
    assert "hunter2" not in str(caught.value)
    with pytest.raises(ConfigError) as caught:
        load_settings({"KLARNA_CAPTURE_SECRET_KEY": f"{KEY},hunter2"})
    assert "hunter2" not in str(caught.value)
    assert KEY not in str(caught.value)


def test_key_file_is_created_once_and_reused(tmp_path: Path) -> None:
    data_dir = tmp_path / "not-yet" / "var"
    settings = load_settings({"KLARNA_CAPTURE_DATA_DIR": str(data_dir)})

    first, message = ensure_secret_keys(settings)
    key_file = data_dir / "secret-key"
    assert message is not None
    assert str(key_file) in message
    assert "KLARNA_CAPTURE_SECRET_KEY" in message
    assert "back it up" in message
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    assert len(first.secret_keys) == 1
    assert len(first.secret_keys[0]) >= 32
    assert first.secret_keys[0] == key_file.read_text().strip()
    assert [path.name for path in data_dir.iterdir()] == ["secret-key"]

    second, message = ensure_secret_keys(settings)
    assert message is None
    assert second.secret_keys == first.secret_keys
    assert second == first


def test_configured_keys_leave_the_disk_alone(tmp_path: Path) -> None:
    settings = load_settings(
        {"KLARNA_CAPTURE_DATA_DIR": str(tmp_path / "var"), "KLARNA_CAPTURE_SECRET_KEY": KEY}
    )
    assert ensure_secret_keys(settings) == (settings, None)
    assert not (tmp_path / "var").exists()


def test_a_short_key_file_is_refused(tmp_path: Path) -> None:
    (tmp_path / "secret-key").write_text("short\n")
    settings = load_settings({"KLARNA_CAPTURE_DATA_DIR": str(tmp_path)})
    with pytest.raises(ConfigError, match="secret-key must hold a key of at least 16"):
        ensure_secret_keys(settings)


def test_repr_counts_keys_and_hides_them_and_the_database_password() -> None:
    settings = load_settings(
        {
            "KLARNA_CAPTURE_SECRET_KEY": f"{KEY},{OTHER_KEY}",
            "KLARNA_CAPTURE_DATABASE_URL": "postgresql://capture:hunter2@db.internal/capture",
        }
    )
    shown = repr(settings)
    assert KEY not in shown
    assert OTHER_KEY not in shown
    assert "hunter2" not in shown
    assert "<2 keys>" in shown
    assert "postgresql://capture:***@db.internal/capture" in shown


def test_an_unusable_data_dir_is_a_config_error(tmp_path: Path) -> None:
    (tmp_path / "var").write_text("a file, not a directory")
    settings = load_settings({"KLARNA_CAPTURE_DATA_DIR": str(tmp_path / "var")})
    with pytest.raises(ConfigError, match="cannot create the secret key file"):
        ensure_secret_keys(settings)


def test_the_shopify_app_settings_are_read_and_its_secrets_hidden() -> None:
    settings = load_settings(
        {
            "KLARNA_CAPTURE_SHOPIFY_CLIENT_ID": "client-1",
            "KLARNA_CAPTURE_SHOPIFY_CLIENT_SECRET": "shpss_new_secret_value",
            "KLARNA_CAPTURE_SHOPIFY_PREVIOUS_CLIENT_SECRET": "shpss_old_secret_value",
            "KLARNA_CAPTURE_SHOPIFY_API_VERSION": "2026-10",
            "KLARNA_CAPTURE_SHOPIFY_ADMIN_URL": "http://127.0.0.1:8200/shops/{shop}/",
        }
    )
    assert settings.shopify.enabled
    assert settings.shopify.client_id == "client-1"
    assert settings.shopify.client_secrets == ("shpss_new_secret_value", "shpss_old_secret_value")
    assert settings.shopify.api_version == "2026-10"
    assert settings.shopify.admin_url == "http://127.0.0.1:8200/shops/{shop}"
    assert "secret_value" not in repr(settings)
    assert "<2 secrets>" in repr(settings)
    default = load_settings({})
    assert not default.shopify.enabled
    assert default.shopify.admin_url == "https://{shop}"


@pytest.mark.parametrize(
    ("environ", "variable"),
    [
        ({"KLARNA_CAPTURE_SHOPIFY_CLIENT_ID": "c"}, "SHOPIFY_CLIENT_ID"),
        ({"KLARNA_CAPTURE_SHOPIFY_CLIENT_SECRET": "s"}, "SHOPIFY_CLIENT_ID"),
        ({"KLARNA_CAPTURE_SHOPIFY_PREVIOUS_CLIENT_SECRET": "s"}, "SHOPIFY_PREVIOUS_CLIENT_SECRET"),
        ({"KLARNA_CAPTURE_SHOPIFY_API_VERSION": "latest"}, "SHOPIFY_API_VERSION"),
        ({"KLARNA_CAPTURE_SHOPIFY_ADMIN_URL": "http://127.0.0.1:1/"}, "SHOPIFY_ADMIN_URL"),
        ({"KLARNA_CAPTURE_SHOPIFY_ADMIN_URL": "ftp://{shop}"}, "SHOPIFY_ADMIN_URL"),
    ],
)
def test_bad_shopify_settings_name_the_variable(environ: dict[str, str], variable: str) -> None:
    with pytest.raises(ConfigError) as caught:
        load_settings(environ)
    assert str(caught.value).startswith(f"KLARNA_CAPTURE_{variable} ")
    assert "\n" not in str(caught.value)


def test_the_bigcommerce_app_settings_are_read_and_its_secret_hidden() -> None:
    settings = load_settings(
        {
            "KLARNA_CAPTURE_BIGCOMMERCE_CLIENT_ID": "bc-client-1",
            "KLARNA_CAPTURE_BIGCOMMERCE_CLIENT_SECRET": "bc_secret_value",
            "KLARNA_CAPTURE_BIGCOMMERCE_API_URL": "http://127.0.0.1:8300/",
            "KLARNA_CAPTURE_BIGCOMMERCE_LOGIN_URL": "http://127.0.0.1:8300/login/",
        }
    )
    assert settings.bigcommerce.enabled
    assert settings.bigcommerce.client_id == "bc-client-1"
    assert settings.bigcommerce.client_secret == "bc_secret_value"
    assert settings.bigcommerce.api_url == "http://127.0.0.1:8300"
    assert settings.bigcommerce.login_url == "http://127.0.0.1:8300/login"
    assert "bc_secret_value" not in repr(settings)
    assert "client_secret=<set>" in repr(settings)
    default = load_settings({})
    assert not default.bigcommerce.enabled
    assert default.bigcommerce.api_url == "https://api.bigcommerce.com"
    assert default.bigcommerce.login_url == "https://login.bigcommerce.com"
    assert "client_secret=None" in repr(default)


@pytest.mark.parametrize(
    ("environ", "variable"),
    [
        ({"KLARNA_CAPTURE_BIGCOMMERCE_CLIENT_ID": "c"}, "BIGCOMMERCE_CLIENT_ID"),
        ({"KLARNA_CAPTURE_BIGCOMMERCE_CLIENT_SECRET": "s"}, "BIGCOMMERCE_CLIENT_ID"),
        ({"KLARNA_CAPTURE_BIGCOMMERCE_API_URL": "api.bigcommerce.com"}, "BIGCOMMERCE_API_URL"),
        ({"KLARNA_CAPTURE_BIGCOMMERCE_LOGIN_URL": "ftp://login"}, "BIGCOMMERCE_LOGIN_URL"),
        ({"KLARNA_CAPTURE_BIGCOMMERCE_LOGIN_URL": "https://u:p@login"}, "BIGCOMMERCE_LOGIN_URL"),
    ],
)
def test_bad_bigcommerce_settings_name_the_variable(environ: dict[str, str], variable: str) -> None:
    with pytest.raises(ConfigError) as caught:
        load_settings(environ)
    assert str(caught.value).startswith(f"KLARNA_CAPTURE_{variable} ")
    assert "\n" not in str(caught.value)
    assert "u:p" not in str(caught.value)


def test_allowed_private_networks_are_read_as_networks() -> None:
    settings = load_settings(
        {"KLARNA_CAPTURE_ALLOWED_PRIVATE_NETWORKS": " 10.0.0.0/8, ,fd00::/8,127.0.0.1 "}
    )
    assert settings.web.allowed_private_networks == (
        ipaddress.ip_network("10.0.0.0/8"),
        ipaddress.ip_network("fd00::/8"),
        ipaddress.ip_network("127.0.0.1/32"),
    )
    assert "10.0.0.0/8" in repr(settings)
    assert load_settings({}).web.allowed_private_networks == ()


@pytest.mark.parametrize("value", ["10.0.0.1/8", "intranet", "10.0.0.0/33", "::1/200"])
def test_bad_allowed_private_networks_name_the_variable(value: str) -> None:
    with pytest.raises(ConfigError) as caught:
        load_settings({"KLARNA_CAPTURE_ALLOWED_PRIVATE_NETWORKS": value})
    assert str(caught.value).startswith("KLARNA_CAPTURE_ALLOWED_PRIVATE_NETWORKS ")
    assert "\n" not in str(caught.value)


def test_the_metrics_address_is_read_or_turned_off() -> None:
    assert load_settings({}).metrics_address == ("127.0.0.1", 9464)
    read = {
        "10.0.0.5:9100": ("10.0.0.5", 9100),
        "[::1]:9464": ("::1", 9464),
        "metrics.internal:9464": ("metrics.internal", 9464),
        "off": None,
        "OFF": None,
    }
    for value, address in read.items():
        assert load_settings({"KLARNA_CAPTURE_METRICS_ADDRESS": value}).metrics_address == address


@pytest.mark.parametrize("value", ["9464", ":9464", "127.0.0.1:0", "127.0.0.1:70000", "::1:9464"])
def test_a_bad_metrics_address_names_the_variable(value: str) -> None:
    with pytest.raises(ConfigError, match=r"^KLARNA_CAPTURE_METRICS_ADDRESS must be host:port"):
        load_settings({"KLARNA_CAPTURE_METRICS_ADDRESS": value})


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_the_data_dir_is_private_even_with_the_key_in_the_environment(tmp_path: Path) -> None:
    data_dir = tmp_path / "fresh" / "var"
    settings = load_settings(
        {"KLARNA_CAPTURE_DATA_DIR": str(data_dir), "KLARNA_CAPTURE_SECRET_KEY": KEY}
    )
    assert secure_data_dir(settings) == []
    assert mode(data_dir) == 0o700
    assert mode(data_dir / "klarna-capture.db") == 0o600


def test_the_key_file_made_beside_the_database_is_private_too(tmp_path: Path) -> None:
    settings, _ = ensure_secret_keys(
        load_settings({"KLARNA_CAPTURE_DATA_DIR": str(tmp_path / "var")})
    )
    assert secure_data_dir(settings) == []
    assert mode(tmp_path / "var") == 0o700
    assert mode(tmp_path / "var" / "secret-key") == 0o600
    assert mode(tmp_path / "var" / "klarna-capture.db") == 0o600


def test_a_data_dir_open_to_others_is_tightened_and_said_so(tmp_path: Path) -> None:
    data_dir = tmp_path / "var"
    data_dir.mkdir(mode=0o755)
    data_dir.chmod(0o755)
    for name in ("klarna-capture.db", "klarna-capture.db-wal", "secret-key"):
        (data_dir / name).write_bytes(b"")
        (data_dir / name).chmod(0o644)
    settings = load_settings(
        {"KLARNA_CAPTURE_DATA_DIR": str(data_dir), "KLARNA_CAPTURE_SECRET_KEY": KEY}
    )
    notes = secure_data_dir(settings)
    assert mode(data_dir) == 0o700
    for name in ("klarna-capture.db", "klarna-capture.db-wal", "secret-key"):
        assert mode(data_dir / name) == 0o600
    assert len(notes) == 4
    assert f"{data_dir} was open to others (mode 0755); now 0700" in notes[0]
    assert secure_data_dir(settings) == []


def test_a_postgresql_deployment_with_its_key_set_makes_no_data_dir(tmp_path: Path) -> None:
    settings = load_settings(
        {
            "KLARNA_CAPTURE_DATA_DIR": str(tmp_path / "var"),
            "KLARNA_CAPTURE_SECRET_KEY": KEY,
            "KLARNA_CAPTURE_DATABASE_URL": "postgresql://capture@db.internal/capture",
        }
    )
    assert secure_data_dir(settings) == []
    assert not (tmp_path / "var").exists()


def test_the_queue_settings_default_to_shares_of_the_workers() -> None:
    settings = load_settings(
        {"KLARNA_CAPTURE_WORKERS": "8", "KLARNA_CAPTURE_WORKER_PROCESSES": "3"}
    )
    assert (settings.queue.job_deadline_seconds, settings.queue.callback_workers) == (300, None)
    assert (settings.queue.capture_loops, settings.queue.callback_loops) == (8, 2)
    assert settings.queue.shop_limit == 12  # half of the 24 capture workers of the three processes
    assert settings.queue.callback_shop_limit == 3  # half of the 6 callback loops of the three
    default = load_settings({})
    assert (
        default.queue.capture_loops,
        default.queue.callback_loops,
        default.queue.shop_limit,
    ) == (4, 2, 2)
    # one shop's callbacks leave a loop for the others
    assert default.queue.callback_shop_limit == 1
    alone = load_settings({"KLARNA_CAPTURE_WORKERS": "1"})
    assert (alone.queue.capture_loops, alone.queue.callback_loops, alone.queue.shop_limit) == (
        1,
        2,
        1,
    )
    assert alone.queue.callback_shop_limit == 1
    capped = load_settings(
        {"KLARNA_CAPTURE_CALLBACK_WORKERS": "16", "KLARNA_CAPTURE_SHOP_CONCURRENCY": "3"}
    )
    assert capped.queue.callback_shop_limit == 3  # never above the shop's cap
    serving = load_settings({"KLARNA_CAPTURE_WORKERS": "0", "KLARNA_CAPTURE_CALLBACK_WORKERS": "2"})
    assert (serving.queue.capture_loops, serving.queue.callback_loops) == (0, 0)


def test_the_queue_settings_are_read() -> None:
    settings = load_settings(
        {
            "KLARNA_CAPTURE_WORKERS": "6",
            "KLARNA_CAPTURE_JOB_DEADLINE_SECONDS": "90",
            "KLARNA_CAPTURE_CALLBACK_WORKERS": "2",
            "KLARNA_CAPTURE_SHOP_CONCURRENCY": "5",
        }
    )
    assert settings.queue.job_deadline_seconds == 90
    assert (
        settings.queue.capture_loops,
        settings.queue.callback_loops,
        settings.queue.shop_limit,
    ) == (6, 2, 5)
    assert "job_deadline_seconds=90, callback_workers=2, shop_concurrency=5" in repr(settings)


def test_trusted_proxies_default_to_loopback_and_are_read_as_networks() -> None:
    assert load_settings({}).web.trusted_proxies == (
        ipaddress.ip_network("127.0.0.1/32"),
        ipaddress.ip_network("::1/128"),
    )
    settings = load_settings({"KLARNA_CAPTURE_TRUSTED_PROXIES": "172.28.0.10, 10.1.0.0/16"})
    assert settings.web.trusted_proxies == (
        ipaddress.ip_network("172.28.0.10/32"),
        ipaddress.ip_network("10.1.0.0/16"),
    )
    assert "10.1.0.0/16" in repr(settings)


def test_the_database_timeout_is_read_and_bounded() -> None:
    assert load_settings({}).database.timeout_seconds == 5
    settings = load_settings({"KLARNA_CAPTURE_DATABASE_TIMEOUT_SECONDS": "12"})
    assert settings.database.timeout_seconds == 12
    assert "timeout_seconds=12" in repr(settings)


def test_the_heartbeat_defaults_to_two_seconds_and_is_read() -> None:
    assert load_settings({}).queue.heartbeat_seconds == 2
    settings = load_settings({"KLARNA_CAPTURE_HEARTBEAT_SECONDS": "5"})
    assert settings.queue.heartbeat_seconds == 5
    assert "heartbeat_seconds=5" in repr(settings)


def test_the_retention_windows_default_to_the_documented_figures() -> None:
    settings = load_settings({})
    assert (
        settings.retention.bodies_days,
        settings.retention.delivery_ids_days,
        settings.retention.jobs_days,
        settings.retention.ledger_days,
        settings.retention.prune_interval_seconds,
    ) == (3, 7, 30, 1095, 3600)


def test_the_retention_windows_are_read() -> None:
    settings = load_settings(
        {
            "KLARNA_CAPTURE_RETAIN_BODIES_DAYS": "0",
            "KLARNA_CAPTURE_RETAIN_DELIVERY_IDS_DAYS": "14",
            "KLARNA_CAPTURE_RETAIN_JOBS_DAYS": "90",
            "KLARNA_CAPTURE_RETAIN_LEDGER_DAYS": "never",
            "KLARNA_CAPTURE_PRUNE_INTERVAL_SECONDS": "0",
        }
    )
    assert (
        settings.retention.bodies_days,
        settings.retention.delivery_ids_days,
        settings.retention.jobs_days,
        settings.retention.ledger_days,
        settings.retention.prune_interval_seconds,
    ) == (0, 14, 90, None, 0)
    assert "ledger_days=None, prune_interval_seconds=0" in repr(settings)
    assert (
        load_settings({"KLARNA_CAPTURE_RETAIN_LEDGER_DAYS": "3650"}).retention.ledger_days == 3650
    )


def test_the_known_variables_are_those_the_settings_read() -> None:
    source = (Path(__file__).resolve().parents[1] / "plugin" / "config.py").read_text()
    read = {"KLARNA_CAPTURE_" + name for name in re.findall(r'get\("([A-Z_]+)"\)', source)}
    assert len(read) > 20
    assert variable_names() == read | {"KLARNA_CAPTURE_TEST_POSTGRES_URL"}


def test_unknown_variables_name_the_closest_known_one() -> None:
    assert unknown_variables(
        {
            "KLARNA_CAPTURE_PUBLIC_ULR": "https://x.example",
            "KLARNA_CAPTURE_POLL": "5",
            "KLARNA_CAPTURE_WORKERS": "2",
            "OTHER_THING": "1",
        }
    ) == [
        "klarna-capture: 'KLARNA_CAPTURE_POLL' is not a setting and is ignored; did you mean "
        "KLARNA_CAPTURE_POLL_MS?",
        "klarna-capture: 'KLARNA_CAPTURE_PUBLIC_ULR' is not a setting and is ignored; did you "
        "mean KLARNA_CAPTURE_PUBLIC_URL?",
    ]


def test_an_unset_public_url_follows_where_serve_listens(tmp_path: Path) -> None:
    unset = load_settings({"KLARNA_CAPTURE_DATA_DIR": str(tmp_path)})
    assert with_serve_url(unset).web.public_url == "http://127.0.0.1:8000"  # no serve yet
    served = record_serve_url(unset, "http://127.0.0.1:9000")
    assert served.web.public_url == "http://127.0.0.1:9000"
    assert with_serve_url(unset).web.public_url == "http://127.0.0.1:9000"
    (tmp_path / "serve-url").write_text("not a url\n")
    assert with_serve_url(unset).web.public_url == "http://127.0.0.1:8000"

    configured = load_settings(
        {
            "KLARNA_CAPTURE_DATA_DIR": str(tmp_path / "set"),
            "KLARNA_CAPTURE_PUBLIC_URL": "https://c.example",
        }
    )
    assert (
        record_serve_url(configured, "http://127.0.0.1:9000").web.public_url == "https://c.example"
    )
    assert not (tmp_path / "set").exists()
    assert with_serve_url(configured).web.public_url == "https://c.example"


@pytest.mark.parametrize(
    "value",
    ["postgresql:/bob:s3cretpw@localhost/db", "mysql://bob:s3cretpw@db/capture", "pg:s3cretpw@db"],
)
def test_a_bad_database_url_is_named_by_its_scheme_never_its_password(value: str) -> None:
    with pytest.raises(ConfigError) as caught:
        load_settings({"KLARNA_CAPTURE_DATABASE_URL": value})
    assert "s3cretpw" not in str(caught.value)
    assert str(caught.value).startswith("KLARNA_CAPTURE_DATABASE_URL ")


def test_no_secret_setting_shows_in_the_repr_of_the_settings() -> None:
    # Every variable whose name says it is a secret (as the log redaction reads names), so that
    # one added later is checked too, with the client ids that its app needs beside it.
    secrets = {
        name: f"leaked-{name.removeprefix(PREFIX).lower()}-0123456789"
        for name in variable_names()
        if is_secret_name(name.removeprefix(PREFIX).lower())
    }
    assert len(secrets) >= 4
    environ = {
        **secrets,
        "KLARNA_CAPTURE_SHOPIFY_CLIENT_ID": "client-1",
        "KLARNA_CAPTURE_BIGCOMMERCE_CLIENT_ID": "bc-client-1",
        "KLARNA_CAPTURE_DATABASE_URL": "postgresql://capture:leaked-password@db.internal/capture",
    }
    settings = load_settings(environ)
    shown = repr(settings)
    for name, value in secrets.items():
        assert value not in shown, name
    assert "leaked-password" not in shown
    assert "client-1" in shown  # what is no secret is shown
    assert settings.secret_keys == (secrets["KLARNA_CAPTURE_SECRET_KEY"],)
    assert settings.bigcommerce.client_secret == secrets["KLARNA_CAPTURE_BIGCOMMERCE_CLIENT_SECRET"]
