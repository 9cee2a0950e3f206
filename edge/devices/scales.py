"""Scales: one client per scale (`ScaleClient` for MT-SICS, `NciScaleClient` for NCI/ECR — the same surface),
asking for a stable weight every `poll_interval_s`.

The client does the protocol work — SI polling until the scale reports `S S`, resets after a power-cycle,
garbage and late replies counted, availability logged once per change, the port reopened with backoff. The
coordinator keeps the last stable weight per scale for `GET /api/scales` and the live stream, and turns the
client's counters into a `DeviceHealthView`.

Only stable weights are kept (DOMAIN.md: a sale may only use a weight the scale itself calls stable); a
stale one is never shown as fresh — every view carries its age and the scale's availability.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Final

from cloud_bridge.contract import rfc3339
from drivers.scale.client import ScaleClient
from drivers.scale.models import (
    ScaleCommandError,
    ScaleRangeError,
    ScaleSettings,
    ScaleTimeout,
    ScaleUnavailable,
    StableWeight,
)
from drivers.scale.nci_client import NciScaleClient
from edge.config import Scale
from edge.devices.base import DeviceHealthView, Family, Publish, age_s, error_counts, supervise

_log = logging.getLogger(__name__)

AnyScaleClient = ScaleClient | NciScaleClient

ERROR_KINDS: Final = (
    "timeouts",
    "garbage_lines",
    "stale_lines",
    "dropped_lines",
    "errors_syntax",
    "errors_transmission",
    "errors_logical",
    "not_executable",
    "overloads",
    "underloads",
    "not_stable",
    "disconnects",
    "open_failures",
)
"""`ScaleCounters` fields that count a failure (stale lines are late replies: a symptom worth seeing)."""


@dataclass(slots=True)
class _ScaleState:
    cfg: Scale
    client: AnyScaleClient | None = None
    last: StableWeight | None = None
    port_open: bool | None = None
    """None until the first exchange; False while the client reports the port unavailable."""
    out_of_range: str | None = None
    """`overload` / `underload` while the pan is beyond the scale's range, else None."""
    crashes: int = 0


def _settings(cfg: Scale) -> ScaleSettings:
    return ScaleSettings(
        port=cfg.port,
        baudrate=cfg.baudrate,
        bytesize=cfg.bytesize,
        parity=cfg.parity,
        stopbits=cfg.stopbits,
        request_timeout_s=cfg.request_timeout_s,
        stable_timeout_s=cfg.stable_timeout_s,
    )


class ScaleCoordinator:
    """Every configured scale; `run()` under the gateway's TaskGroup, one task `scale[{id}].loop` each."""

    family: Family = "scale"

    def __init__(self, scales: Sequence[Scale], publish: Publish) -> None:
        self._publish = publish
        self._scales = {s.id: _ScaleState(s) for s in scales}

    async def run(self) -> None:
        """Run every scale until cancelled."""
        async with asyncio.TaskGroup() as tg:
            for scale_id, state in self._scales.items():
                tg.create_task(
                    supervise(
                        f"scale {scale_id}",
                        functools.partial(self._run_one, state),
                        on_crash=functools.partial(self._crashed, state),
                    ),
                    name=f"scale[{scale_id}].loop",
                )

    @staticmethod
    def _crashed(state: _ScaleState, reason: str) -> None:
        state.crashes += 1
        state.client = None

    async def _run_one(self, state: _ScaleState) -> None:
        # A missing port at start is not fatal: the client logs it once and reopens on a later call.
        client_class = NciScaleClient if state.cfg.protocol == "nci" else ScaleClient
        async with client_class(_settings(state.cfg), state.cfg.id) as client:
            state.client = client
            while True:
                await self._read_once(state, client)
                await asyncio.sleep(state.cfg.poll_interval_s)

    async def _read_once(self, state: _ScaleState, client: AnyScaleClient) -> None:
        was_online = client.online
        try:
            weight = await client.weigh_stable()
        except ScaleUnavailable:
            state.port_open = False  # the client logged the loss (or the missing port at start) once
            return
        except ScaleRangeError as exc:
            state.port_open = True
            kind = "overload" if exc.overload else "underload"
            if state.out_of_range != kind:
                state.out_of_range = kind
                self._publish({"type": "scale", "scale": self.view(state.cfg.id)})
            return
        except (ScaleTimeout, ScaleCommandError):  # ScaleNotStable is a ScaleTimeout: counted by the client
            state.port_open = True
            return
        if state.port_open is False and was_online is not False:
            # The client says nothing when a port that was missing appears; its own INFO covers only a scale
            # that had been silent. Availability is state: one line for this change.
            _log.info(
                "scale %s answering on %s (serial %s)", state.cfg.id, state.cfg.port, client.serial_number
            )
        state.port_open = True
        changed = state.last is None or (weight.value, weight.unit) != (state.last.value, state.last.unit)
        changed = changed or state.out_of_range is not None
        state.out_of_range = None
        state.last = weight
        if changed:
            self._publish({"type": "scale", "scale": self.view(state.cfg.id)})

    # --- views ---------------------------------------------------------------------------------------------

    def view(self, scale_id: str, now_mono: float | None = None) -> dict[str, Any]:
        """One scale's last stable weight (with its age) and state, for `GET /api/scales` and the stream."""
        state = self._scales[scale_id]
        now = time.monotonic() if now_mono is None else now_mono
        client = state.client
        w = state.last
        return {
            "device_id": scale_id,
            "lane": state.cfg.lane,
            "protocol": state.cfg.protocol,
            "online": self._online(state),
            "weight": None
            if w is None
            else {
                "value": w.value,
                "unit": w.unit,
                "weight_g": w.weight_g,
                "ts": rfc3339(w.ts),
                "age_s": age_s(w.mono, now),
            },
            "out_of_range": state.out_of_range,
            "tare_lost": bool(client and client.tare_lost),
            "serial": client.serial_number if client else None,
        }

    def views(self) -> list[dict[str, Any]]:
        """Every scale, in config order."""
        now = time.monotonic()
        return [self.view(scale_id, now) for scale_id in self._scales]

    @staticmethod
    def _online(state: _ScaleState) -> bool:
        client = state.client
        return bool(client and client.online and state.port_open is not False)

    def health(self, now_mono: float) -> list[DeviceHealthView]:
        """Each scale's health from its client's counters."""
        out = []
        for scale_id, state in self._scales.items():
            client = state.client
            snap: dict[str, Any] = dict(client.counters.snapshot()) if client else {}
            errors = error_counts(snap, ERROR_KINDS)
            errors["internal"] = state.crashes
            out.append(
                DeviceHealthView(
                    device_id=scale_id,
                    family=self.family,
                    online=self._online(state),
                    connected=state.port_open is True,
                    last_seen_age_s=age_s(snap.get("last_seen_mono"), now_mono),
                    messages=int(snap.get("requests") or 0),
                    errors_by_kind=errors,
                    last_error=snap.get("last_error"),
                    serial=client.serial_number if client else None,
                    detail={
                        "port": state.cfg.port,
                        "protocol": state.cfg.protocol,
                        "lane": state.cfg.lane,
                        "tare_lost": bool(client and client.tare_lost),
                        "zero_lost": bool(isinstance(client, NciScaleClient) and client.zero_lost),
                    },
                    counters=snap,
                )
            )
        return out
