"""Hub config: YAML → frozen HubConfig; database URLs (relative SQLite paths, PostgreSQL); errors name the
key path."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from hub.config import HubConfig, HubConfigError, IngestConfig, load_hub_config, normalize_database_url

REPO = Path(__file__).resolve().parents[2]


def test_example_config_loads_and_resolves_database_next_to_the_file() -> None:
    config = load_hub_config(REPO / "config" / "hub.yaml")
    assert config.hub_id == "hq-demo"
    path = (REPO / "var" / "hub" / "hub.sqlite3").resolve()
    assert config.database == f"sqlite:///{path}"
    assert config.sqlite_path == path
    assert config.broker.client_id == "shelfgate-hub-hq-demo"
    assert config.stale_after_s == 90.0
    assert config.ingest == IngestConfig()  # the example spells out the defaults


def test_defaults_and_derived_client_id(tmp_path: Path) -> None:
    path = tmp_path / "hub.yaml"
    path.write_text("hub_id: hq1\ndatabase: data/hub.db\n", encoding="utf-8")
    config = load_hub_config(path)
    assert config.sqlite_path == tmp_path / "data" / "hub.db"  # a bare path is a SQLite file, as before
    assert config.mqtt_client_id == "shelfgate-hub-hq1"
    assert (config.ingest.share_group, config.ingest.gap_timeout_s, config.database_pool_size) == (
        "hub",
        2.0,
        4,
    )
    assert (config.heartbeat_s, config.stale_after_heartbeats, config.api.port) == (30.0, 3, 8800)
    with pytest.raises(ValidationError):
        config.hub_id = "other"  # type: ignore[misc]


@pytest.mark.parametrize(
    ("text", "key_path"),
    [
        ("hub_id: hq1\ndatabase: x.db\nbroker: {port: 70000}\n", "broker.port"),
        ("database: x.db\n", "hub_id"),
        ("hub_id: hq1\ndatabase: x.db\napi: {port: -1}\n", "api.port"),
        ("hub_id: hq1\ndatabase: x.db\nstale_after_heartbeats: 0\n", "stale_after_heartbeats"),
        ("hub_id: hq1\ndatabase: x.db\nbroker: {hots: x}\n", "broker.hots"),
    ],
)
def test_errors_name_the_key_path(tmp_path: Path, text: str, key_path: str) -> None:
    path = tmp_path / "hub.yaml"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(HubConfigError) as caught:
        load_hub_config(path)
    assert caught.value.key_path == key_path
    assert str(caught.value).startswith(f"{path}: {key_path}: ")


def test_unreadable_and_non_mapping_files(tmp_path: Path) -> None:
    with pytest.raises(HubConfigError, match="cannot read"):
        load_hub_config(tmp_path / "missing.yaml")
    path = tmp_path / "list.yaml"
    path.write_text("- 1\n- 2\n", encoding="utf-8")
    with pytest.raises(HubConfigError, match="mapping"):
        load_hub_config(path)
    path.write_text("hub_id: [unclosed\n", encoding="utf-8")
    with pytest.raises(HubConfigError, match="not valid YAML"):
        load_hub_config(path)


def test_direct_construction_keeps_absolute_paths(tmp_path: Path) -> None:
    config = HubConfig(hub_id="hq1", database=tmp_path / "hub.db")
    assert config.sqlite_path == tmp_path / "hub.db"
    assert config.database == f"sqlite:///{tmp_path / 'hub.db'}"


@pytest.mark.parametrize(
    ("given", "canonical"),
    [
        ("sqlite:///data/hub.db", "sqlite:///data/hub.db"),
        ("sqlite:////srv/hub.db", "sqlite:////srv/hub.db"),
        ("/srv/hub.db", "sqlite:////srv/hub.db"),
        ("postgresql://hub@127.0.0.1:5432/fleet", "postgresql+psycopg://hub@127.0.0.1:5432/fleet"),
        ("postgres://hub@db.example:5433/fleet", "postgresql+psycopg://hub@db.example:5433/fleet"),
        ("postgresql+psycopg://hub@127.0.0.1/fleet", "postgresql+psycopg://hub@127.0.0.1/fleet"),
        (
            "postgresql://hub@127.0.0.1/fleet?sslmode=require",
            "postgresql+psycopg://hub@127.0.0.1/fleet?sslmode=require",
        ),
    ],
)
def test_database_urls_are_canonical(given: str, canonical: str) -> None:
    assert normalize_database_url(given) == canonical


def test_relative_sqlite_urls_resolve_next_to_the_file(tmp_path: Path) -> None:
    path = tmp_path / "hub.yaml"
    path.write_text("hub_id: hq1\ndatabase: sqlite:///data/hub.db\n", encoding="utf-8")
    assert load_hub_config(path).database == f"sqlite:///{tmp_path / 'data' / 'hub.db'}"
    path.write_text("hub_id: hq1\ndatabase: postgresql://hub@127.0.0.1/fleet\n", encoding="utf-8")
    config = load_hub_config(path)
    assert (config.database, config.sqlite_path) == ("postgresql+psycopg://hub@127.0.0.1/fleet", None)


@pytest.mark.parametrize(
    ("database", "reason"),
    [
        ("postgresql://hub:s3cret@127.0.0.1/fleet", "PGPASSWORD or ~/.pgpass"),
        ("mysql://hub@127.0.0.1/fleet", "unsupported database 'mysql'"),
        ("sqlite://", "sqlite needs a file"),
        ("'sqlite:///:memory:'", "sqlite needs a file"),
        ("postgresql://hub@127.0.0.1", "needs a database name"),
        ("''", "empty database URL"),
    ],
)
def test_bad_database_urls_fail_start_with_the_reason(tmp_path: Path, database: str, reason: str) -> None:
    path = tmp_path / "hub.yaml"
    path.write_text(f"hub_id: hq1\ndatabase: {database}\n", encoding="utf-8")
    with pytest.raises(HubConfigError) as caught:
        load_hub_config(path)
    assert caught.value.key_path == "database"
    assert reason in caught.value.reason
    assert "s3cret" not in str(caught.value)


@pytest.mark.parametrize(
    ("ingest", "key_path"),
    [
        ("{share_group: 'a/b'}", "ingest.share_group"),
        ("{gap_timeout_s: 0}", "ingest.gap_timeout_s"),
        ("{reorder_window_events: 0}", "ingest.reorder_window_events"),
        ("{resend_retry_s: -1}", "ingest.resend_retry_s"),
        ("{share: hub}", "ingest.share"),
    ],
)
def test_ingest_settings_are_checked(tmp_path: Path, ingest: str, key_path: str) -> None:
    path = tmp_path / "hub.yaml"
    path.write_text(f"hub_id: hq1\ndatabase: x.db\ningest: {ingest}\n", encoding="utf-8")
    with pytest.raises(HubConfigError) as caught:
        load_hub_config(path)
    assert caught.value.key_path == key_path


def test_no_share_group_means_plain_subscriptions(tmp_path: Path) -> None:
    path = tmp_path / "hub.yaml"
    path.write_text("hub_id: hq1\ndatabase: x.db\ningest: {share_group: null}\n", encoding="utf-8")
    assert load_hub_config(path).ingest.share_group is None
