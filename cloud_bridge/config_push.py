"""The `cmd/config` command: a store config pushed by HQ (hub → gateway) and the gateway's answer.

Kept beside `contract.py` as one module both ends import, like `cloud_bridge/resend.py`: the hub builds these
args and reads this result, the gateway parses the args and builds the result, and neither may drift.
Documented in `docs/wire-contract.md` ("cmd/config").

Why the whole YAML text and not a JSON tree: the gateway must validate a push *exactly like a local file*
(`edge.config.load_config`: same loader, same errors with key and line), and line numbers only exist in the
text HQ wrote. The text also becomes the gateway's config file byte for byte, so its config version (a hash of
the file) is the same at HQ and in the store.

Outcomes (`ConfigResult.outcome`):

- ``applied`` — validated, written atomically, the gateway restarted on it and came up healthy (or the text was
  already running: nothing restarted). ``ok: true``.
- ``rejected`` — refused before anything changed: not a valid config (`errors`, one per problem, each
  ``line N: key: message``), or it tries to move the gateway to another store or database. ``ok: false``.
- ``rolled_back`` — valid, written and started, but the gateway did not come up healthy within `probation_s`;
  the previous file was restored and is running again; `reason` says why. ``ok: false``.

A push may carry a product catalogue (`catalogue_text`, YAML or an HQ CSV export) with or without a config: the
gateway validates it like its local catalogue file, requires every bin SKU of the (new or current) config in it,
writes it to the file the config's `catalogue:` names and applies both together (both restored on rollback).

After an applied push the gateway *watches* its device poll error rate for `watch_s` (DOMAIN.md: "rollback when a
rollout misbehaves, error rate > 2 % for 5 minutes"); if the new files misbehave where the previous did not, it
rolls back to them on its own. That verdict comes after the first answer, so the hub asks for it with a
*verdict query*: `cmd/config` with only `verdict_of` (the push's command id) and a fresh command id; the answer's
`watch` says ``watching`` (ask again later), ``passed``, ``rolled_back`` (with `reason`) or ``interrupted``.
"""

from __future__ import annotations

from typing import Final, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

CONFIG_COMMAND: Final = "config"
"""`{name}` in `cmd/{name}`."""
MAX_CONFIG_YAML_CHARS: Final = 200_000
"""Largest config text taken, in characters and in UTF-8 bytes: real store files are a few tens of KiB, and the
whole command (JSON escaping adds a little) must stay under the uplink's 256 KiB payload limit
(`cloud_bridge.uplink.MAX_COMMAND_BYTES`)."""
MAX_PUSH_BYTES: Final = 240_000
"""Config and catalogue together, UTF-8 bytes: one command must stay under the uplink's 256 KiB (JSON escaping
adds a little). A larger catalogue is installed on site (or split across stores' needs) for now."""
DEFAULT_WATCH_S: Final = 300.0
"""How long an applied push's device error rate is watched (DOMAIN.md: "> 2 % for 5 minutes")."""
DEFAULT_MAX_ERROR_RATE: Final = 0.02
"""Device poll error rate (errors / polls over the watch window) above which an applied push is rolled back."""
DEFAULT_PROBATION_S: Final = 60.0
"""How long a freshly applied config has to come up healthy (connected to the broker) before it is rolled
back. Long enough for a TLS handshake to a distant broker over a slow store line."""

ConfigOutcome = Literal["applied", "rejected", "rolled_back"]
WatchState = Literal["watching", "passed", "rolled_back", "interrupted"]
CatalogueFormat = Literal["yaml", "csv"]


class _Model(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class ConfigArgs(_Model):
    """`Command.args` of `cmd/config`: a push (`config_yaml` and/or `catalogue_text`) or a verdict query."""

    config_yaml: str | None = Field(default=None, min_length=1, max_length=MAX_CONFIG_YAML_CHARS)
    """The whole store config file, as HQ wants it on disk; None: keep the running one (catalogue-only push)."""
    catalogue_text: str | None = Field(default=None, min_length=1, max_length=MAX_CONFIG_YAML_CHARS)
    """The whole product catalogue file (YAML, or an HQ CSV export), written to the file `catalogue:` names."""
    catalogue_format: CatalogueFormat | None = None
    """What `catalogue_text` is; None: whatever the target file's suffix says. A mismatch is refused."""
    probation_s: float = Field(default=DEFAULT_PROBATION_S, ge=1.0, le=600.0)
    """Seconds the new config has to come up healthy before the gateway rolls back."""
    watch_s: float = Field(default=DEFAULT_WATCH_S, ge=0.0, le=86400.0)
    """Seconds the device error rate is watched after the push applied; 0: no watch."""
    max_error_rate: float = Field(default=DEFAULT_MAX_ERROR_RATE, gt=0.0, le=1.0)
    """Error rate (0..1) above which, across the whole watch, the push is rolled back."""
    rollout_id: str | None = Field(default=None, max_length=64)
    """The HQ rollout this push belongs to (for the gateway's log); optional."""
    verdict_of: str | None = Field(default=None, min_length=1, max_length=128)
    """A verdict query: the command id of an earlier push whose watch verdict HQ wants (nothing is pushed)."""

    @field_validator("config_yaml", "catalogue_text")
    @classmethod
    def _fits_a_command(cls, text: str | None) -> str | None:
        if text is None:
            return text
        size = len(text.encode("utf-8", errors="surrogatepass"))
        if size > MAX_CONFIG_YAML_CHARS:
            raise ValueError(f"{size} bytes as UTF-8; at most {MAX_CONFIG_YAML_CHARS} fit in one command")
        return text

    @model_validator(mode="after")
    def _something_to_do(self) -> ConfigArgs:
        if self.verdict_of is not None:
            if self.config_yaml is not None or self.catalogue_text is not None:
                raise ValueError("a verdict query (verdict_of) pushes nothing")
            return self
        if self.config_yaml is None and self.catalogue_text is None:
            raise ValueError("give config_yaml, catalogue_text or both")
        size = sum(
            len(t.encode("utf-8", errors="surrogatepass"))
            for t in (self.config_yaml, self.catalogue_text)
            if t
        )
        if size > MAX_PUSH_BYTES:
            raise ValueError(
                f"config and catalogue are {size} bytes together; at most {MAX_PUSH_BYTES} fit in one command"
            )
        return self


class ConfigResult(_Model):
    """`CommandResult.result` of `cmd/config`."""

    outcome: ConfigOutcome
    config_version: str | None = None
    """The config version the gateway runs after this command (the new one when applied, the old one otherwise);
    None when unknown."""
    previous_version: str | None = None
    """The version that ran when the command arrived."""
    errors: list[str] = Field(default_factory=list)
    """`rejected`: every problem, ``line N: key: message`` like `shelfgate check-config` prints them."""
    reason: str | None = None
    """`rejected` / `rolled_back`: one line saying why."""
    restarted: bool = False
    """True when the gateway restarted its runtime for this command."""
    catalogue_version: str | None = None
    """`Catalogue.version` the gateway runs after this command (None: no catalogue configured)."""
    previous_catalogue_version: str | None = None
    """The catalogue version that ran when the command arrived."""
    watch_s: float | None = None
    """`applied`: seconds the device error rate is being watched from now (None: no watch)."""
    watch: WatchState | None = None
    """A verdict query's answer (see the module docstring)."""
    error_rate: float | None = None
    """The watched error rate (0..1) when the watch ended; `baseline_error_rate` the previous config's."""
    baseline_error_rate: float | None = None


__all__ = [
    "CONFIG_COMMAND",
    "DEFAULT_MAX_ERROR_RATE",
    "DEFAULT_PROBATION_S",
    "DEFAULT_WATCH_S",
    "MAX_CONFIG_YAML_CHARS",
    "MAX_PUSH_BYTES",
    "CatalogueFormat",
    "ConfigArgs",
    "ConfigOutcome",
    "ConfigResult",
    "WatchState",
]
