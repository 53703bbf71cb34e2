"""The README documents every setting, and starts with the two commands a new user runs."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic_settings import BaseSettings

from cloudlog_core.aws import AwsSettings
from cloudlog_ingest.settings import IngestSettings
from cloudlog_ingest.tenants import TenantSettings
from cloudlog_wire.broker import BrokerSettings
from cloudlog_worker.settings import WorkerSettings
from cloudlog_writer.settings import WriterSettings
from flask_cloudlog.settings import ExtensionSettings

README = (Path(__file__).parents[2] / "README.md").read_text()
SETTINGS_CLASSES: list[type[BaseSettings]] = [
    AwsSettings,
    BrokerSettings,
    ExtensionSettings,
    WorkerSettings,
    IngestSettings,
    WriterSettings,
    TenantSettings,
]


def variable_names(settings_class: type[BaseSettings]) -> list[str]:
    prefix = settings_class.model_config.get("env_prefix", "")
    return [f"{prefix}{name}".upper() for name in settings_class.model_fields]


@pytest.mark.parametrize("settings_class", SETTINGS_CLASSES, ids=lambda c: c.__name__)
def test_every_setting_is_in_the_readme_table(settings_class: type[BaseSettings]) -> None:
    missing = [name for name in variable_names(settings_class) if f"| `{name}` |" not in README]
    assert missing == []


def test_readme_starts_with_make_dev_and_make_test() -> None:
    opening = README.split("## ", 1)[0]
    assert "make dev" in opening and "make test" in opening
