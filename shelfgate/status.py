"""`shelfgate status` — one screen of gateway health for an SSH session, from the gateway's local API.

    shelfgate status                          the gateway on this machine (http://127.0.0.1:8080)
    shelfgate status --url http://127.0.0.1:8081 --json

It reads `/api/health`, `/api/devices`, `/api/alerts?active=true` and `/api/stock` and prints: version, uptime,
broker connection, outbox depth and oldest age, a devices table (online/offline, last seen, messages, errors,
last error), active alerts by kind and bins that are low or out.

Exit codes (for scripts and monitoring checks):
  0  healthy — every device online, broker connected, outbox younger than `--max-outbox-age-min`
  1  degraded — any of those not true (each reason is printed), or a secondary endpoint failed
  2  unreachable — `/api/health` did not answer with JSON (one line on stderr; `--json` prints it as JSON)

Colour only when stdout is a terminal and `NO_COLOR` is unset (https://no-color.org). The standard library's
`urllib` does the HTTP, so the command needs no runtime dependency beyond the gateway's; proxies from the
environment are ignored on purpose (the API is local, and an SSH session's `http_proxy` must not capture it).
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import sys
import urllib.error
import urllib.parse
import urllib.request
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final, TextIO

EXIT_HEALTHY: Final = 0
EXIT_DEGRADED: Final = 1
EXIT_UNREACHABLE: Final = 2
JSON_SCHEMA_ID: Final = "shelfgate.status/1"
DEFAULT_URL: Final = "http://127.0.0.1:8080"
"""The gateway API's default bind (`api.port` in the store config, docs/config.md)."""
DEFAULT_MAX_OUTBOX_AGE_MIN: Final = 10.0
"""With the broker reachable the outbox drains within seconds; an event waiting 10 minutes means the WAN, the
broker or the hub is in trouble."""
MAX_DEVICE_ROWS: Final = 20
"""One screen: offline devices are listed first, then online ones up to this many rows in all."""
LAST_ERROR_WIDTH: Final = 40
STOCK_ALERT_LEVELS: Final = ("out", "low")


class Unreachable(Exception):
    """The gateway's API did not answer `/api/health` usefully."""


@dataclass(frozen=True, slots=True)
class Snapshot:
    """What the API said; `read_errors` names secondary endpoints that failed (the gateway still answered)."""

    url: str
    health: Mapping[str, Any]
    devices: Sequence[Mapping[str, Any]]
    alerts: Sequence[Mapping[str, Any]]
    stock: Sequence[Mapping[str, Any]]
    read_errors: Sequence[str] = ()


@dataclass(frozen=True, slots=True)
class Assessment:
    """Healthy, or degraded with one reason per problem."""

    reasons: list[str] = field(default_factory=list)

    @property
    def healthy(self) -> bool:
        """No reason to worry."""
        return not self.reasons

    @property
    def exit_code(self) -> int:
        """0 healthy, 1 degraded."""
        return EXIT_HEALTHY if self.healthy else EXIT_DEGRADED


# --- reading the API --------------------------------------------------------------------------------------


def _opener() -> urllib.request.OpenerDirector:
    # No ProxyHandler from the environment: the gateway API is local (module docstring).
    return urllib.request.build_opener(urllib.request.ProxyHandler({}))


def _describe(exc: BaseException) -> str:
    if isinstance(exc, urllib.error.HTTPError):
        return f"HTTP {exc.code} {exc.reason}"
    if isinstance(exc, urllib.error.URLError):
        reason = exc.reason
        return str(reason.strerror if isinstance(reason, OSError) and reason.strerror else reason)
    if isinstance(exc, json.JSONDecodeError):
        return f"not JSON ({exc.msg})"
    return str(exc) or type(exc).__name__


def _get_json(opener: urllib.request.OpenerDirector, url: str, timeout_s: float) -> Any:
    headers = {"Accept": "application/json"}
    token = os.environ.get("SHELFGATE_API_TOKEN")  # a gateway with `api.users_file` (docs/security.md)
    if token:
        headers["Authorization"] = f"Bearer {token}"
    request = urllib.request.Request(url, headers=headers)  # noqa: S310 - scheme checked in validate_url
    with opener.open(request, timeout=timeout_s) as response:
        return json.loads(response.read().decode("utf-8"))


def validate_url(url: str) -> str:
    """The base URL without a trailing slash; only http(s) with a host (urllib would also open `file:`)."""
    parsed = urllib.parse.urlsplit(url)
    if parsed.scheme not in ("http", "https") or not parsed.netloc:
        raise ValueError(f"--url must be http://HOST[:PORT] or https://…, got {url!r}")
    return url.rstrip("/")


def fetch(url: str, *, timeout_s: float = 5.0) -> Snapshot:
    """Read the four endpoints; `Unreachable` when `/api/health` fails, else failures go in `read_errors`."""
    base = validate_url(url)
    opener = _opener()
    try:
        health = _get_json(opener, f"{base}/api/health", timeout_s)
    except (OSError, ValueError, http.client.HTTPException) as exc:
        raise Unreachable(f"gateway API at {base} unreachable: {_describe(exc)}") from exc
    if not isinstance(health, dict):
        raise Unreachable(f"gateway API at {base} answered /api/health with something other than an object")
    read_errors: list[str] = []

    def read_list(path: str) -> list[Mapping[str, Any]]:
        try:
            got = _get_json(opener, f"{base}{path}", timeout_s)
        except (OSError, ValueError, http.client.HTTPException) as exc:
            read_errors.append(f"could not read {path}: {_describe(exc)}")
            return []
        if not isinstance(got, list):
            read_errors.append(f"could not read {path}: not a list")
            return []
        return [item for item in got if isinstance(item, dict)]

    devices = read_list("/api/devices")
    alerts = read_list("/api/alerts?active=true&limit=5000")
    stock = read_list("/api/stock")
    return Snapshot(base, health, devices, alerts, stock, tuple(read_errors))


# --- judging ----------------------------------------------------------------------------------------------


def assess(snapshot: Snapshot, *, max_outbox_age_s: float) -> Assessment:
    """Degraded when a device is offline, the broker is not connected, the outbox is too old, the gateway
    says it is not ok, or an endpoint could not be read; otherwise healthy."""
    reasons: list[str] = []
    h = snapshot.health
    if h.get("status") != "ok":
        reasons.append(f"gateway status is {h.get('status')!r}")
    offline = [str(d.get("device_id")) for d in snapshot.devices if not d.get("online")]
    if offline:
        shown = ", ".join(offline[:8]) + (f" and {len(offline) - 8} more" if len(offline) > 8 else "")
        reasons.append(f"{len(offline)} device(s) offline: {shown}")
    elif not snapshot.devices and _int(h.get("devices_online")) < _int(h.get("devices_total")):
        reasons.append(f"{_int(h.get('devices_total')) - _int(h.get('devices_online'))} device(s) offline")
    if not h.get("uplink_connected"):
        reasons.append("not connected to the MQTT broker")
    oldest = h.get("outbox_oldest_age_s")
    if isinstance(oldest, int | float) and oldest > max_outbox_age_s:
        reasons.append(
            f"outbox: {_int(h.get('outbox_depth'))} event(s) waiting, oldest {_duration(float(oldest))}"
            f" (limit {_duration(max_outbox_age_s)})"
        )
    reasons.extend(snapshot.read_errors)
    return Assessment(reasons)


def _int(value: object) -> int:
    return int(value) if isinstance(value, int | float) and not isinstance(value, bool) else 0


def _duration(seconds: float) -> str:
    """Compact human duration: `0.4 s`, `42 s`, `7 min 05 s`, `3 h 02 min`, `2 d 4 h`."""
    if seconds < 10:
        return f"{seconds:.1f} s"
    s = int(seconds)
    if s < 60:
        return f"{s} s"
    if s < 3600:
        return f"{s // 60} min {s % 60:02d} s"
    if s < 86400:
        return f"{s // 3600} h {s % 3600 // 60:02d} min"
    return f"{s // 86400} d {s % 86400 // 3600} h"


def alerts_by_kind(alerts: Sequence[Mapping[str, Any]]) -> dict[str, int]:
    """Active alerts counted by kind, most frequent first."""
    return dict(Counter(str(a.get("kind", "?")) for a in alerts).most_common())


def bins_by_level(stock: Sequence[Mapping[str, Any]]) -> dict[str, int]:
    """Bins counted by stock level (out, low, ok, over, unknown)."""
    return dict(Counter(str(b.get("level", "unknown")) for b in stock).most_common())


# --- output -----------------------------------------------------------------------------------------------


class _Style:
    def __init__(self, colour: bool) -> None:
        self.colour = colour

    def _wrap(self, code: str, text: str) -> str:
        return f"\x1b[{code}m{text}\x1b[0m" if self.colour else text

    def good(self, text: str) -> str:
        return self._wrap("32", text)

    def warn(self, text: str) -> str:
        return self._wrap("33", text)

    def bad(self, text: str) -> str:
        return self._wrap("1;31", text)

    def dim(self, text: str) -> str:
        return self._wrap("2", text)


def _table(rows: list[list[str]], styles: list[list[str]]) -> list[str]:
    """Left-aligned columns; `styles` holds each cell already styled (escapes do not count for width)."""
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = []
    for row, styled in zip(rows, styles, strict=True):
        cells = [s + " " * (w - len(plain)) for plain, s, w in zip(row, styled, widths, strict=True)]
        lines.append("  " + "  ".join(cells).rstrip())
    return lines


def render_text(snapshot: Snapshot, assessment: Assessment, *, colour: bool) -> str:
    """The one-screen summary."""
    st = _Style(colour)
    h = snapshot.health
    out: list[str] = []
    uptime = h.get("uptime_s")
    out.append(
        f"shelfgate {h.get('version', '?')}  store {h.get('store_id', '?')}  gateway {h.get('gateway_id', '?')}"
        f"  up {_duration(float(uptime)) if isinstance(uptime, int | float) else '?'}"
        f"  config {str(h.get('config_version', '?'))[:12]}"
    )
    if assessment.healthy:
        out.append(f"status   {st.good('HEALTHY')}")
    else:
        out.append(f"status   {st.warn('DEGRADED')}")
        out.extend(f"         - {reason}" for reason in assessment.reasons)
    broker = st.good("connected") if h.get("uplink_connected") else st.bad("DISCONNECTED")
    oldest = h.get("outbox_oldest_age_s")
    oldest_text = _duration(float(oldest)) if isinstance(oldest, int | float) else "-"
    out.append(
        f"broker   {broker}   outbox {_int(h.get('outbox_depth'))} waiting, oldest {oldest_text}"
        f"   last seq {_int(h.get('last_seq'))}"
    )
    devices = list(snapshot.devices)
    online = sum(1 for d in devices if d.get("online"))
    out.append(f"devices  {online}/{len(devices)} online")
    if devices:
        ordered = sorted(devices, key=lambda d: bool(d.get("online")))  # offline first, config order kept
        shown = ordered[:MAX_DEVICE_ROWS]
        header = ["DEVICE", "FAMILY", "STATE", "LAST SEEN", "MSGS", "ERRORS", "LAST ERROR"]
        rows, styles = [header], [[st.dim(c) for c in header]]
        for d in shown:
            age = d.get("last_seen_age_s")
            state = "online" if d.get("online") else "OFFLINE"
            last_error = str(d.get("last_error") or "")
            if len(last_error) > LAST_ERROR_WIDTH:
                last_error = last_error[: LAST_ERROR_WIDTH - 1] + "…"
            row = [
                str(d.get("device_id", "?")),
                str(d.get("family", "?")),
                state,
                f"{_duration(float(age))} ago" if isinstance(age, int | float) else "never",
                str(_int(d.get("messages"))),
                str(_int(d.get("errors"))),
                last_error,
            ]
            styled = list(row)
            styled[2] = st.good(state) if d.get("online") else st.bad(state)
            rows.append(row)
            styles.append(styled)
        out.extend(_table(rows, styles))
        if len(ordered) > len(shown):
            out.append(f"  … and {len(ordered) - len(shown)} more online")
    kinds = alerts_by_kind(snapshot.alerts)
    if kinds:
        listed = ", ".join(f"{kind} {n}" for kind, n in kinds.items())
        out.append(f"alerts   {sum(kinds.values())} active: {listed}")
    else:
        out.append(f"alerts   {st.good('none active')}")
    levels = bins_by_level(snapshot.stock)
    low_out = ", ".join(f"{level} {levels.get(level, 0)}" for level in STOCK_ALERT_LEVELS)
    unknown = levels.get("unknown", 0)
    out.append(
        f"bins     {len(snapshot.stock)} total: {low_out}" + (f", unknown {unknown}" if unknown else "")
    )
    return "\n".join(out) + "\n"


def render_json(snapshot: Snapshot, assessment: Assessment) -> dict[str, Any]:
    """The machine-readable form (schema `shelfgate.status/1`)."""
    return {
        "schema": JSON_SCHEMA_ID,
        "url": snapshot.url,
        "state": "healthy" if assessment.healthy else "degraded",
        "reasons": assessment.reasons,
        "gateway": dict(snapshot.health),
        "devices": [
            {
                key: d.get(key)
                for key in (
                    "device_id",
                    "family",
                    "online",
                    "connected",
                    "last_seen_age_s",
                    "messages",
                    "errors",
                    "last_error",
                )
            }
            for d in snapshot.devices
        ],
        "alerts_by_kind": alerts_by_kind(snapshot.alerts),
        "bins_by_level": bins_by_level(snapshot.stock),
    }


def use_colour(stream: TextIO) -> bool:
    """Colour only on a terminal, and never with NO_COLOR set."""
    isatty = getattr(stream, "isatty", None)
    return bool(isatty()) if callable(isatty) and "NO_COLOR" not in os.environ else False


# --- the command ------------------------------------------------------------------------------------------


def run(args: argparse.Namespace, *, stdout: TextIO | None = None, stderr: TextIO | None = None) -> int:
    """`shelfgate status`: print the summary; return 0 healthy, 1 degraded, 2 unreachable."""
    out = stdout or sys.stdout
    err = stderr or sys.stderr
    try:
        snapshot = fetch(args.url, timeout_s=args.timeout)
    except ValueError as exc:  # a bad --url
        print(f"shelfgate status: {exc}", file=err)
        return EXIT_UNREACHABLE
    except Unreachable as exc:
        if args.json:
            json.dump(
                {"schema": JSON_SCHEMA_ID, "url": args.url, "state": "unreachable", "error": str(exc)}, out
            )
            out.write("\n")
        print(f"shelfgate status: {exc}", file=err)
        return EXIT_UNREACHABLE
    assessment = assess(snapshot, max_outbox_age_s=args.max_outbox_age_min * 60.0)
    if args.json:
        json.dump(render_json(snapshot, assessment), out, ensure_ascii=False, indent=2)
        out.write("\n")
    else:
        out.write(render_text(snapshot, assessment, colour=use_colour(out)))
    return assessment.exit_code


def add_parser(sub: Any) -> None:
    """Register `status` on the CLI's subparsers."""
    p = sub.add_parser(
        "status",
        help="one-screen health summary of the running gateway (exit 0 healthy, 1 degraded, 2 unreachable)",
        description="Read the local gateway API and summarise its health. See docs/operations.md.",
    )
    p.add_argument("--url", default=DEFAULT_URL, help=f"gateway API base URL (default {DEFAULT_URL})")
    p.add_argument("--json", action="store_true", help="machine-readable output (schema shelfgate.status/1)")
    p.add_argument(
        "--max-outbox-age-min",
        type=float,
        default=DEFAULT_MAX_OUTBOX_AGE_MIN,
        help=f"degraded when the oldest unsent event is older (default {DEFAULT_MAX_OUTBOX_AGE_MIN:g} min)",
    )
    p.add_argument("--timeout", type=float, default=5.0, help="seconds per API request (default 5)")
    p.set_defaults(func=run)
