"""Hub config: YAML → frozen HubConfig; relative database paths; errors name the key path."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from hub.config import HubConfig, HubConfigError, load_hub_config

REPO = Path(__file__).resolve().parents[2]


def test_example_config_loads_and_resolves_database_next_to_the_file() -> None:
    config = load_hub_config(REPO / "config" / "hub.yaml")
    assert config.hub_id == "hq-demo"
    assert config.database == (REPO / "var" / "hub" / "hub.sqlite3").resolve()
    assert config.broker.client_id == "shelfgate-hub-hq-demo"
    assert config.stale_after_s == 90.0


def test_defaults_and_derived_client_id(tmp_path: Path) -> None:
    path = tmp_path / "hub.yaml"
    path.write_text("hub_id: hq1\ndatabase: data/hub.db\n", encoding="utf-8")
    config = load_hub_config(path)
    assert config.database == tmp_path / "data" / "hub.db"
    assert config.mqtt_client_id == "shelfgate-hub-hq1"
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
    assert config.database == tmp_path / "hub.db"
