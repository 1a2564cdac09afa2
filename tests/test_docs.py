"""The docs stay true to the code: the configuration page's table holds every setting the service
reads and nothing else, no page names a setting that does not exist, the example alert rules use
only what the service exports, and the README stays a short entrance."""

import re
from collections.abc import Iterator, Mapping
from pathlib import Path

import pytest
import yaml
from prometheus_client.metrics import MetricWrapperBase

from plugin import metrics
from plugin.config import load_settings

ROOT = Path(__file__).resolve().parents[1]
CONFIGURATION = ROOT / "docs/operations/configuration.md"
ALERTS = ROOT / "docs/operations/prometheus-alerts.yml"
# A name spelled out, not a family of them (`KLARNA_CAPTURE_RETAIN_*`).
NAME = re.compile(r"KLARNA_CAPTURE_[A-Z0-9_]*[A-Z0-9](?![A-Z0-9_*])")
# Read by the test suite only (tests/conftest.py), never by the service.
TEST_ONLY = {"KLARNA_CAPTURE_TEST_POSTGRES_URL"}
README_LINES = 150


class _Recording(Mapping[str, str]):
    """An empty environment that notes every name asked of it."""

    def __init__(self) -> None:
        self.asked: set[str] = set()

    def __getitem__(self, name: str) -> str:
        self.asked.add(name)
        raise KeyError(name)

    def __iter__(self) -> Iterator[str]:
        return iter(())

    def __len__(self) -> int:
        return 0


def read_by_the_service() -> set[str]:
    """What `load_settings` asks the environment for, and any name spelled out in `plugin/`."""
    environment = _Recording()
    load_settings(environment)
    spelled = {
        name for path in (ROOT / "plugin").rglob("*.py") for name in NAME.findall(path.read_text())
    }
    return environment.asked | spelled


def configuration_table() -> list[str]:
    """The variable of each row of the configuration page's table, in order."""
    rows = re.findall(r"^\| `(KLARNA_CAPTURE_[A-Z0-9_]+)` \|", CONFIGURATION.read_text(), re.M)
    assert rows, f"no table of variables in {CONFIGURATION.relative_to(ROOT)}"
    return rows


def test_the_recording_environment_sees_what_load_settings_reads() -> None:
    # The check below is only as good as this: a setting read through the mapping is seen.
    asked = _Recording()
    load_settings(asked)
    assert {"KLARNA_CAPTURE_WORKERS", "KLARNA_CAPTURE_SHOP_CONCURRENCY"} <= asked.asked


def test_every_setting_the_service_reads_is_in_the_configuration_table() -> None:
    missing = read_by_the_service() - set(configuration_table())
    assert missing == set(), "add them to docs/operations/configuration.md"


def test_every_variable_in_the_configuration_table_is_read() -> None:
    rows = configuration_table()
    assert len(rows) == len(set(rows)), "a variable has two rows"
    assert set(rows) - read_by_the_service() == set()


def test_no_page_names_a_setting_that_does_not_exist() -> None:
    known = read_by_the_service() | TEST_ONLY
    pages = [ROOT / "README.md", *(ROOT / "docs").rglob("*.md")]
    unknown = {
        f"{page.relative_to(ROOT)}: {name}"
        for page in pages
        for name in NAME.findall(page.read_text())
        # A misspelling shown with the warning the service gives for it is an example, not a
        # setting the page claims.
        if name not in known and f"'{name}' is not a setting" not in page.read_text()
    }
    assert unknown == set()


def exported_series() -> dict[str, set[str]]:
    """Each series name the service's metrics can export, with the labels it carries."""
    suffixes = {"counter": ["_total"], "gauge": [""], "histogram": ["_bucket", "_count", "_sum"]}
    series: dict[str, set[str]] = {}
    for metric in vars(metrics).values():
        if not isinstance(metric, MetricWrapperBase):
            continue
        # prometheus_client keeps a metric's name, type and label names in these attributes only.
        labels = set(metric._labelnames)
        assert metric._type is not None
        for suffix in suffixes[metric._type]:
            series[metric._name + suffix] = labels | ({"le"} if suffix == "_bucket" else set())
    return series


LABEL_VALUES = {
    "klarna_capture_captures_total": {"outcome": set(metrics.CAPTURE_OUTCOMES)},
    "klarna_capture_deliveries_total": {"outcome": set(metrics.DELIVERY_OUTCOMES)},
    "klarna_capture_jobs": {"state": set(metrics.JOB_STATES)},
}
# Prometheus's own: the scrape's health and the target's labels.
PROMETHEUS_SERIES = {"up"}
TARGET_LABELS = {"job", "instance"}


def alert_expressions() -> list[str]:
    document = yaml.safe_load(ALERTS.read_text())
    return [rule["expr"] for group in document["groups"] for rule in group["rules"]]


def test_the_example_alert_rules_use_only_exported_metrics_and_labels() -> None:
    series = exported_series()
    assert "klarna_capture_klarna_request_seconds_count" in series
    expressions = alert_expressions()
    assert expressions
    for expression in expressions:
        for name, matchers in re.findall(r"\b([a-z_]+)\{([^}]*)\}", expression):
            if name in PROMETHEUS_SERIES:
                continue
            assert name in series, f"{name} is not exported: {expression}"
            for label, value in re.findall(r'(\w+)\s*=~?\s*"([^"]*)"', matchers):
                assert label in series[name] | TARGET_LABELS, f"{name} has no label {label}"
                allowed = LABEL_VALUES.get(name, {}).get(label)
                if allowed is not None:
                    assert set(value.split("|")) <= allowed, f"{name}{{{label}={value!r}}}"
        bare = re.findall(r"\b(klarna_capture_[a-z_]+)\b(?!\{)", expression)
        assert set(bare) <= set(series), expression


@pytest.mark.parametrize("name", ["README.md", "SECURITY.md", "CONTRIBUTING.md", "CHANGELOG.md"])
def test_links_from_the_root_pages_reach_their_files(name: str) -> None:
    # mkdocs --strict checks the links inside docs/; these pages live outside it.
    targets = re.findall(r"\]\(([^)#]+)(?:#[^)]*)?\)", (ROOT / name).read_text())
    local = [target for target in targets if "://" not in target]
    assert local or name == "CHANGELOG.md"
    assert [target for target in local if not (ROOT / target).exists()] == []


def test_the_readme_stays_an_entrance() -> None:
    lines = (ROOT / "README.md").read_text().splitlines()
    assert len(lines) <= README_LINES, f"README.md has {len(lines)} lines; move detail into docs/"
