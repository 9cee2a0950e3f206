"""systemd service notification (`READY=1`, `WATCHDOG=1`, `STOPPING=1`) and a watchdog that pings only while healthy.

Both long-running processes (the store gateway and a hub worker) run as `Type=notify` units, so this lives in the
package both may import. No dependency: the protocol is one datagram per message on the AF_UNIX socket named in
`$NOTIFY_SOCKET` (sd_notify(3); a leading ``@`` means the Linux abstract namespace). `$WATCHDOG_USEC` carries the
unit's `WatchdogSec=` in microseconds and `$WATCHDOG_PID` the process it is meant for (sd_watchdog_enabled(3));
systemd recommends pinging at half that interval.

The watchdog's point (issue #7): systemd restarts the service when the pings stop, so a ping must mean "the
loop and every critical task are making progress" — not merely "the process exists". `Liveness` collects
progress beats from the critical tasks; `Watchdog` sends a ping only when every beat is fresh and every probe
(e.g. a round-trip through the database thread) answers in time, and logs once which check failed.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field

_log = logging.getLogger(__name__)


class SdNotifier:
    """Sends sd_notify messages; a no-op when not started by systemd (no `$NOTIFY_SOCKET`)."""

    def __init__(self, env: Mapping[str, str] | None = None) -> None:
        env = os.environ if env is None else env
        raw = env.get("NOTIFY_SOCKET", "")
        self._address: str | None = None
        if raw.startswith("@"):
            self._address = "\0" + raw[1:]
        elif raw.startswith("/"):
            self._address = raw
        self.watchdog_interval_s = _watchdog_interval_s(env)
        self.sent = 0
        self.failed = 0

    @property
    def enabled(self) -> bool:
        """True when a notify socket was given."""
        return self._address is not None

    def notify(self, *lines: str) -> bool:
        """Send one message (``KEY=VALUE`` lines). Never raises: a lost notification must not stop the service."""
        if self._address is None:
            return False
        payload = "\n".join(lines).encode()
        try:
            # Non-blocking: a full datagram queue (systemd busy, or a test reading nothing) must cost a lost
            # message, never a blocked event loop — a blocked loop is exactly what the watchdog exists to catch.
            with socket.socket(
                socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC | socket.SOCK_NONBLOCK
            ) as sock:
                sock.connect(self._address)
                sock.send(payload)
        except OSError as exc:
            self.failed += 1
            if self.failed == 1:
                _log.warning(
                    "systemd notify socket %r refused a message: %s", self._address.lstrip("\0"), exc
                )
            return False
        self.sent += 1
        return True

    def ready(self, status: str = "") -> bool:
        """`READY=1` (with an optional human status line `systemctl status` shows)."""
        return self.notify("READY=1", *([f"STATUS={status}"] if status else []))

    def stopping(self) -> bool:
        """`STOPPING=1`: shutdown has begun, so a slow stop is not mistaken for a hang."""
        return self.notify("STOPPING=1")


def _watchdog_interval_s(env: Mapping[str, str]) -> float | None:
    """`WatchdogSec=` from the environment, or None when the watchdog is off or meant for another process."""
    usec = env.get("WATCHDOG_USEC", "")
    if not usec.isdigit() or int(usec) == 0:
        return None
    pid = env.get("WATCHDOG_PID", "")
    if pid and pid.isdigit() and int(pid) != os.getpid():
        return None
    return int(usec) / 1e6


@dataclass
class Liveness:
    """Progress beats from the critical tasks: each names itself and how long it may go without a beat."""

    clock: Callable[[], float] = time.monotonic
    _beats: dict[str, float] = field(default_factory=dict)
    _max_age_s: dict[str, float] = field(default_factory=dict)

    def expect(self, name: str, max_age_s: float) -> None:
        """Register a critical task; it counts as fresh from now."""
        self._max_age_s[name] = max_age_s
        self._beats[name] = self.clock()

    def beat(self, name: str) -> None:
        """The task made progress."""
        self._beats[name] = self.clock()

    def forget(self, name: str) -> None:
        """The task ended on purpose (it is no longer expected to beat)."""
        self._beats.pop(name, None)
        self._max_age_s.pop(name, None)

    def stale(self) -> list[str]:
        """Names of the tasks whose last beat is older than they allowed, each with its age."""
        now = self.clock()
        return [
            f"{name} ({now - self._beats[name]:.1f} s)"
            for name, limit in sorted(self._max_age_s.items())
            if now - self._beats[name] > limit
        ]


Probe = Callable[[], Awaitable[object]]


class Watchdog:
    """Pings systemd every `interval_s` while the loop, the beats and the probes are all healthy.

    The loop's own health is implicit: a wedged event loop never runs this coroutine, so the pings stop. A probe
    is an awaitable round-trip through something critical (the database thread); it must finish within
    `probe_timeout_s`.
    """

    def __init__(
        self,
        notifier: SdNotifier,
        liveness: Liveness,
        *,
        interval_s: float | None = None,
        probes: Mapping[str, Probe] | None = None,
        probe_timeout_s: float | None = None,
    ) -> None:
        self.notifier = notifier
        self.liveness = liveness
        full = notifier.watchdog_interval_s
        self.interval_s = interval_s if interval_s is not None else (full / 2 if full else None)
        self.probes = dict(probes or {})
        self.probe_timeout_s = probe_timeout_s or (self.interval_s or 5.0)
        self.pings = 0
        """Pings delivered to the notify socket."""
        self.withheld = 0
        """Intervals in which a check failed and no ping was sent."""
        self._unhealthy_reason: str | None = None

    async def check(self) -> str | None:
        """None when healthy, else why not (the first failing check)."""
        stale = self.liveness.stale()
        if stale:
            return "no progress from " + ", ".join(stale)
        for name, probe in self.probes.items():
            try:
                async with asyncio.timeout(self.probe_timeout_s):
                    await probe()
            except TimeoutError:
                return f"probe {name} did not answer within {self.probe_timeout_s:.1f} s"
            except Exception as exc:  # noqa: BLE001 — any failure of a probe is a health verdict, reported below
                return f"probe {name} failed: {exc!r}"
        return None

    async def run(self) -> None:
        """Ping until cancelled; returns at once when systemd asked for no watchdog."""
        if self.interval_s is None or not self.notifier.enabled:
            return
        _log.info("systemd watchdog on: pinging every %.1f s while healthy", self.interval_s)
        while True:
            reason = await self.check()
            if reason is None:
                if self._unhealthy_reason is not None:
                    _log.warning("healthy again; watchdog pings resume")
                    self._unhealthy_reason = None
                if self.notifier.notify("WATCHDOG=1"):
                    self.pings += 1
            else:
                self.withheld += 1
                if reason.split(" (")[0] != (self._unhealthy_reason or "").split(" (")[0]:
                    _log.error("withholding the systemd watchdog ping: %s", reason)
                self._unhealthy_reason = reason
            await asyncio.sleep(self.interval_s)
