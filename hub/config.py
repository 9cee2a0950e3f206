"""Hub configuration: one YAML file validated once, at start, into frozen typed models (STYLE.md rule 11).

Deliberately independent of `edge.config` (the hub knows only the wire contract). Errors name the key path,
e.g. ``hub.yaml: broker.port: Input should be less than 65536``; bad config fails start.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError


class HubConfigError(Exception):
    """The hub config file is missing, not YAML, or fails validation; the message names the key path."""

    def __init__(self, source: str, key_path: str, reason: str) -> None:
        self.source = source
        self.key_path = key_path
        self.reason = reason
        where = f"{source}: {key_path}" if key_path else source
        super().__init__(f"{where}: {reason}")


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class BrokerConfig(_Frozen):
    """Where the hub subscribes. A stable `client_id` plus a persistent session lets the broker queue QoS 1
    messages while the hub restarts (MQTT 3.1.1 §3.1.2.4, Clean Session = 0)."""

    host: str = Field(default="127.0.0.1", min_length=1)
    port: int = Field(default=1883, gt=0, lt=65536)
    keepalive_s: int = Field(default=30, ge=5, le=65535)
    client_id: str | None = Field(default=None, min_length=1, max_length=64)
    reconnect_max_s: float = Field(default=30.0, gt=0, le=600)


class ApiConfig(_Frozen):
    """The HQ API listener; port 0 lets the kernel pick a free port (tests, demo)."""

    host: str = Field(default="127.0.0.1", min_length=1)
    port: int = Field(default=8800, ge=0, lt=65536)


class HubConfig(_Frozen):
    """Everything the hub needs to start. `database` is a SQLite file path (resolved against the config
    file's directory by `load_hub_config`)."""

    hub_id: str = Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
    database: Path
    broker: BrokerConfig = BrokerConfig()
    api: ApiConfig = ApiConfig()
    heartbeat_s: float = Field(default=30.0, gt=0, description="heartbeat period the gateways are set to")
    stale_after_heartbeats: int = Field(
        default=3, ge=1, description="missed heartbeats before a store is stale"
    )

    @property
    def stale_after_s(self) -> float:
        """A store with no heartbeat for this long is shown as stale."""
        return self.stale_after_heartbeats * self.heartbeat_s

    @property
    def mqtt_client_id(self) -> str:
        """The configured client id, else one derived from `hub_id` (stable across restarts)."""
        return self.broker.client_id or f"shelfgate-hub-{self.hub_id}"


def _key_path(loc: tuple[int | str, ...]) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def parse_hub_config(raw: Any, *, source: str = "<hub config>", base_dir: Path | None = None) -> HubConfig:
    """Validate an already-loaded mapping; a relative `database` is resolved against `base_dir`."""
    if not isinstance(raw, dict):
        raise HubConfigError(source, "", "the top level must be a mapping")
    try:
        config = HubConfig.model_validate(raw)
    except ValidationError as exc:
        first = exc.errors()[0]
        raise HubConfigError(source, _key_path(tuple(first["loc"])), first["msg"]) from exc
    if base_dir is not None and not config.database.is_absolute():
        config = config.model_copy(update={"database": (base_dir / config.database).resolve()})
    return config


def load_hub_config(path: Path | str) -> HubConfig:
    """Read and validate a hub YAML file."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise HubConfigError(str(path), "", f"cannot read: {exc.strerror or exc}") from exc
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise HubConfigError(str(path), "", f"not valid YAML: {exc}") from exc
    return parse_hub_config(raw, source=str(path), base_dir=path.resolve().parent)
