"""The gateway's uplink: drains the durable outbox to the hub over MQTT, and takes the hub's commands.

Why it is shaped like this (ARCHITECTURE.md, "The bridge and its contract"; STYLE.md rules 5, 7, 8, 12):

- **At-least-once on the wire, exactly-once in effect.** A batch is published with QoS 1 and its rows are
  deleted (`Outbox.ack_through`) only after the broker's PUBACK (MQTT 3.1.1 §4.3.2). aiomqtt 2.5.1's
  ``await client.publish(..., qos=1)`` returns only when paho calls ``on_publish``, which paho does for
  QoS > 0 only from its PUBACK handler (``_handle_pubackcomp``); its ``timeout`` raises
  ``MqttError("Operation timed out")``. Anything that goes wrong in between leaves the rows in the outbox,
  so they are sent again on the next connection, and the hub drops duplicates by event id
  ``{gateway_id}:{seq}``.
- **A broker that stops acknowledging is a dead connection.** A frozen broker keeps TCP up, so keepalive alone
  would take 1.5 × keepalive to notice. A publish that gets no PUBACK within `publish_timeout_s` tears the
  connection down and reconnects.
- **Stable client id, persistent session** (``clean_session=False``, MQTT 3.1.1 §3.1.2.4): commands the hub
  sends while the gateway is offline wait in the broker for it.
- **Birth and will** (§3.1.2.5): the retained ``status`` topic says ``online`` after every connect and the
  broker publishes the retained ``offline`` will when the connection dies without a DISCONNECT. A graceful
  stop publishes ``offline`` itself, because a DISCONNECT suppresses the will.
- **Reconnection lives here**, with capped exponential backoff and full jitter (`cloud_bridge.backoff`), and
  availability is state, logged once per change: one WARNING when the broker becomes unreachable, one INFO
  when it is back, DEBUG for every attempt in between.

MQTT 3.1.1 is used on purpose: its PUBACK carries no reason code, so a PUBACK is always "stored". The broker
ACL must therefore let the store write under its own root — Mosquitto acknowledges and silently drops a
3.1.1 publish the ACL denies.

**Command intake never trusts the payload** (`parse_command`). A `cmd/{name}` message is refused, with the
reason, unless it is at most `MAX_COMMAND_BYTES`, UTF-8, I-JSON (RFC 7493: no lone surrogates, no duplicate
member names; plus no NaN/Infinity, which RFC 8259 §6 does not allow), nested at most `MAX_COMMAND_DEPTH`
deep, and a valid `Command`. A refused command whose `id` can be read is answered on `cmd-result` with
``ok: false`` and the reason; one without a usable id is counted and logged (WARNING once, then DEBUG),
because there is no one to answer. Every message yields at most one result, and nothing in a payload can
end the uplink: a result that cannot be serialised is replaced by an error result for the same id.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import re
import resource
import shutil
import ssl
import sys
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Final, Literal

import aiomqtt
from aiomqtt.exceptions import MqttConnectError
from pydantic import ValidationError
from pydantic_core import PydanticSerializationError

from cloud_bridge import strict_json
from cloud_bridge.aio import reraise_swallowed_cancel
from cloud_bridge.backoff import Backoff
from cloud_bridge.contract import (
    Command,
    CommandResult,
    Event,
    EventBatch,
    Heartbeat,
    Status,
    command_result_topic,
    events_topic,
    health_topic,
    rfc3339,
    status_topic,
    store_root,
    utc_now,
)
from cloud_bridge.outbox import Outbox, OutboxRow

log = logging.getLogger(__name__)
_mqtt_log = logging.getLogger(f"{__name__}.mqtt")
"""Where aiomqtt and paho log; kept apart so the uplink's own availability lines stay one per change."""

CommandHandler = Callable[[str, Command], Awaitable[CommandResult]]
"""`on_command(name, command)` runs `cmd/{name}`; it raises `UnknownCommandError` for names it lacks."""
HeartbeatProvider = Callable[[], Awaitable[Heartbeat]]
"""Builds the next heartbeat; the gateway supplies one with device health, alerts and host metrics."""

TRANSIENT_ERRORS: Final = (aiomqtt.MqttError, OSError)
"""Errors that end a connection but not the uplink: it reconnects with backoff."""

_IDLE_WAIT_S: Final = 5.0
"""Upper bound of one `wait_for_rows` when the outbox is empty; appends wake the drain sooner."""
_STABLE_CONNECTION_S: Final = 10.0
"""A connection that lasted this long was healthy: the next failure starts the backoff from the base again.
A broker that accepts and then drops us at once (e.g. two gateways sharing a client id, each taking the
session over from the other) keeps backing off instead of reconnecting in a tight loop."""
_GOODBYE_TIMEOUT_S: Final = 2.0
"""How long a graceful stop waits for the PUBACK of the offline status before disconnecting anyway."""
_COMMAND_RESULTS_REMEMBERED: Final = 256
"""QoS 1 may redeliver a command; its result is re-sent from this cache instead of running it twice."""
_MAX_QUEUED_COMMANDS: Final = 1000
"""Bound of aiomqtt's incoming queue. Overflow policy: aiomqtt drops the message with a warning; the hub
sees no `cmd-result` and retries the command."""

MAX_COMMAND_BYTES: Final = 256 * 1024
"""Largest `cmd/{name}` payload taken. Today's commands are well under 1 KiB and a whole store config as
JSON is tens of KiB; anything bigger is refused before it is parsed, so a hostile or broken publisher cannot
make the gateway spend memory and CPU on it."""
MAX_COMMAND_DEPTH: Final = 64
"""Deepest JSON nesting taken in a command (objects and arrays). Real arguments nest a few levels; a cap
keeps handlers that walk `args` recursively safe from stack exhaustion."""
_ID_PREFIX_BYTES: Final = 1024
"""An oversized payload is not parsed; its id is read only from a leading ``{"id": "…"`` within this many
bytes (the order the hub's pydantic serialisation writes), so the hub still learns why it was refused."""
_LEADING_ID: Final = re.compile(rb'\A\s*\{\s*"id"\s*:\s*"([^"\\\x00-\x1f]{1,128})"')

_REFUSED_CONNACK_CODES: Final = frozenset({1, 2, 4, 5, 0x84, 0x85, 0x86, 0x87, 0x8A, 0x8C})
"""CONNACK refusals that mean misconfiguration (protocol version, client id, credentials, not authorised,
banned, bad auth method) rather than a broker that is merely down: 3.1.1 codes and their MQTT 5 forms."""


class UnknownCommandError(LookupError):
    """Raised by an `on_command` handler for a name it does not handle; the uplink then tries built-ins."""

    def __init__(self, name: str) -> None:
        super().__init__(f"unknown command {name!r}")
        self.name = name


class InvalidRowError(ValueError):
    """An outbox row cannot be represented as a contract `Event` (a bug upstream of the uplink)."""

    def __init__(self, seq: int, reason: str) -> None:
        super().__init__(f"outbox row seq={seq} is not a valid event: {reason}")
        self.seq = seq
        self.reason = reason


def event_id(gateway_id: str, seq: int) -> str:
    """The hub's idempotency key of one event."""
    return f"{gateway_id}:{seq}"


def event_from_row(gateway_id: str, row: OutboxRow) -> Event:
    """One outbox row as a contract `Event`; `InvalidRowError` when the row does not fit the contract."""
    try:
        return Event(
            id=event_id(gateway_id, row.seq), seq=row.seq, type=row.event_type, ts=row.ts, data=row.data
        )
    except ValidationError as exc:
        raise InvalidRowError(row.seq, _validation_reason(exc)) from exc


def build_batch(*, store_id: str, gateway_id: str, rows: Sequence[OutboxRow]) -> EventBatch:
    """The longest prefix of `rows` that is contiguous in seq and valid, as one `EventBatch`.

    The envelope promises events first_seq..last_seq with nothing in between, so a hole in the outbox (rows
    lost at the gateway; the disk quotas never make one) ends the batch; the next batch starts after the hole
    and the hub sees the gap.
    Raises `InvalidRowError` when the very first row is invalid, ValueError when `rows` is empty.
    """
    if not rows:
        raise ValueError("build_batch needs at least one row")
    events = [event_from_row(gateway_id, rows[0])]
    for row in rows[1:]:
        if row.seq != events[-1].seq + 1:
            break
        try:
            events.append(event_from_row(gateway_id, row))
        except InvalidRowError:
            break
    return EventBatch(
        store_id=store_id,
        gateway_id=gateway_id,
        first_seq=events[0].seq,
        last_seq=events[-1].seq,
        events=events,
    )


def _validation_reason(exc: ValidationError) -> str:
    """A one-line reason from a pydantic error: the first problem and how many more there are."""
    errors = exc.errors(include_url=False)
    if not errors:
        return str(exc)
    first = errors[0]
    where = ".".join(str(part) for part in first["loc"]) or "payload"
    more = f" (+{len(errors) - 1} more)" if len(errors) > 1 else ""
    return f"{where}: {first['msg']}{more}"


class CommandRefusedError(ValueError):
    """A `cmd/{name}` payload that is not a valid command; `command_id` is its id when one could be read."""

    def __init__(self, reason: str, command_id: str | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.command_id = command_id


def _usable_id(value: object) -> str | None:
    """`value` if it can be echoed as a `CommandResult.id` (a string of 1–128 characters, valid UTF-8)."""
    if isinstance(value, str) and 0 < len(value) <= 128 and strict_json.utf8_ok(value):
        return value
    return None


def parse_command(payload: bytes) -> Command:
    """The `Command` in a `cmd/{name}` payload, or `CommandRefusedError` saying why not (never another error).

    Checks, in order: size, UTF-8, strict JSON, depth and Unicode, then the `Command` schema; the module
    docstring says why each one.
    """
    if len(payload) > MAX_COMMAND_BYTES:
        found = _LEADING_ID.match(payload[:_ID_PREFIX_BYTES])
        command_id = None
        if found is not None:
            with contextlib.suppress(UnicodeDecodeError):
                command_id = _usable_id(found.group(1).decode("utf-8"))
        raise CommandRefusedError(
            f"payload of {len(payload)} bytes exceeds the limit of {MAX_COMMAND_BYTES} bytes", command_id
        )
    try:
        text = payload.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise CommandRefusedError(f"payload is not UTF-8 (byte {exc.start})") from None
    try:
        doc = strict_json.parse(text, max_depth=MAX_COMMAND_DEPTH)
    except ValueError as exc:
        raise CommandRefusedError(f"invalid JSON: {exc}") from None
    command_id = _usable_id(doc.get("id")) if isinstance(doc, dict) else None
    try:
        strict_json.check_tree(doc, max_depth=MAX_COMMAND_DEPTH)
    except ValueError as exc:
        raise CommandRefusedError(f"invalid JSON: {exc}", command_id) from None
    try:
        return Command.model_validate(doc)
    except ValidationError as exc:
        raise CommandRefusedError(_validation_reason(exc), command_id) from None


def _is_refusal(exc: BaseException) -> bool:
    """True when the broker refused the CONNECT for a reason retrying will not fix by itself."""
    if not isinstance(exc, MqttConnectError):
        return False
    value = getattr(exc.rc, "value", exc.rc)
    return value in _REFUSED_CONNACK_CODES


def _undo_taskgroup_parent_cancel(tasks: asyncio.TaskGroup | None) -> None:
    """Take back the one cancel Python 3.11's TaskGroup leaves on its parent after a child failed.

    When a child fails while the parent already waits in `__aexit__` (always so in `_serve`, whose body only
    creates tasks), 3.11 cancels the parent and never uncancels it; 3.12 does. Left alone, the stale count
    makes `reraise_swallowed_cancel()` stop the uplink after its first broker failure. Exactly one is taken
    back, so a real stop request that arrived meanwhile still counts.
    """
    task = asyncio.current_task()
    if (
        sys.version_info < (3, 12)
        and task is not None
        and tasks is not None
        and getattr(tasks, "_parent_cancel_requested", False)
        and task.cancelling() > 0
    ):
        task.uncancel()


def _release_transport(client: aiomqtt.Client) -> None:
    """Close what aiomqtt 2.5.1 may leave open after a failed connect or a broken session.

    When CONNACK never arrives (a frozen broker still accepts TCP), ``Client.__aenter__`` raises
    ``MqttError("Operation timed out")`` but leaves paho's socket open with its reader registered; and after
    an unexpected disconnection nobody may have retrieved the ``_disconnected`` future's exception. paho's
    ``_sock_close`` is idempotent and unregisters the socket through aiomqtt's ``on_socket_close``.
    """
    client._client._sock_close()  # no public way to drop a half-open socket
    disconnected = client._disconnected
    if disconnected.done() and not disconnected.cancelled():
        disconnected.exception()


@dataclass(frozen=True, slots=True)
class HostSample:
    """Host metrics from stdlib and procfs, for the uplink's built-in heartbeat."""

    mem_rss_mb: float
    """Resident set of this process in MiB (2^20 bytes)."""
    disk_free_mb: float
    """Free space of the data filesystem in MiB."""
    temperature_c: float | None
    """SoC temperature in °C, None where the board has no thermal zone."""
    cpu_busy_ticks: int
    """Aggregate non-idle CPU time since boot (``/proc/stat``, clock ticks); 0 when unavailable."""
    cpu_total_ticks: int


def read_host_sample(disk_path: str = "/") -> HostSample:
    """Sample the host; blocking procfs/statvfs reads, so callers run it in a thread."""
    mib = 1024 * 1024
    try:
        resident_pages = int(Path("/proc/self/statm").read_text(encoding="ascii").split()[1])
        mem_rss_mb = resident_pages * os.sysconf("SC_PAGE_SIZE") / mib
    except (OSError, ValueError, IndexError):
        mem_rss_mb = (
            resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        )  # Linux: KiB (peak, not current)
    try:
        disk_free_mb = shutil.disk_usage(disk_path).free / mib
    except OSError:
        disk_free_mb = 0.0
    try:
        # Linux thermal sysfs (Raspberry Pi OS: the SoC sensor) reports millidegrees Celsius.
        temperature_c: float | None = (
            int(Path("/sys/class/thermal/thermal_zone0/temp").read_text(encoding="ascii")) / 1000
        )
    except (OSError, ValueError):
        temperature_c = None
    try:
        # proc(5): "cpu user nice system idle iowait irq softirq steal …"; idle and iowait are not busy.
        ticks = [
            int(v) for v in Path("/proc/stat").read_text(encoding="ascii").split("\n", 1)[0].split()[1:9]
        ]
        cpu_total_ticks = sum(ticks)
        cpu_busy_ticks = cpu_total_ticks - ticks[3] - (ticks[4] if len(ticks) > 4 else 0)
    except (OSError, ValueError, IndexError):
        cpu_busy_ticks = cpu_total_ticks = 0
    return HostSample(mem_rss_mb, disk_free_mb, temperature_c, cpu_busy_ticks, cpu_total_ticks)


class Uplink:
    """One gateway's MQTT connection to the hub: outbox drain, birth/will, heartbeats, command intake.

    `run()` owns the connection for the life of the gateway and returns only when cancelled. The public
    state (`connected`, `last_published_seq`, `published_batches`, `published_events`, `reconnects`,
    `last_error`, …) is plain attributes read by the heartbeat and the local API; `stats()` returns it as a
    dict.
    """

    def __init__(
        self,
        *,
        store_id: str,
        gateway_id: str,
        boot_id: str,
        version: str,
        config_version: str,
        outbox: Outbox,
        host: str,
        port: int,
        keepalive_s: int = 30,
        tls: ssl.SSLContext | None = None,
        username: str | None = None,
        password: str | None = None,
        batch_max_events: int = 200,
        publish_timeout_s: float = 10.0,
        heartbeat_s: float = 30.0,
        heartbeat: HeartbeatProvider | None = None,
        on_command: CommandHandler | None = None,
        backoff_base_s: float = 0.5,
        backoff_cap_s: float = 30.0,
    ) -> None:
        if batch_max_events < 1:
            raise ValueError(f"batch_max_events must be >= 1, got {batch_max_events}")
        if publish_timeout_s <= 0 or heartbeat_s <= 0 or keepalive_s < 0:
            raise ValueError("publish_timeout_s and heartbeat_s must be > 0, keepalive_s >= 0")
        self.store_id = store_id
        self.gateway_id = gateway_id
        self.boot_id = boot_id
        self.version = version
        self.config_version = config_version
        self.host = host
        self.port = port
        self._outbox = outbox
        self._keepalive_s = keepalive_s
        self._tls = tls
        self._username = username
        self._password = password
        self._batch_max_events = batch_max_events
        self._publish_timeout_s = publish_timeout_s
        self._heartbeat_s = heartbeat_s
        self._heartbeat_provider = heartbeat
        self._on_command = on_command
        self._backoff = Backoff(backoff_base_s, backoff_cap_s)

        self._status_topic = status_topic(store_id)
        self._events_topic = events_topic(store_id)
        self._health_topic = health_topic(store_id)
        self._cmd_result_topic = command_result_topic(store_id)
        self._command_prefix = f"{store_root(store_id)}/cmd/"

        # Public state (read by heartbeats and the local API).
        self.connected = False
        """True from a completed connect (subscribed, birth acknowledged) until that connection is lost."""
        self.last_published_seq: int | None = None
        """Highest seq whose batch the broker acknowledged during this process's life."""
        self.published_batches = 0
        self.published_events = 0
        self.reconnects = 0
        """Connections established after the first one."""
        self.connection_failures = 0
        """Connect attempts that failed plus connections that ended in an error."""
        self.heartbeats_sent = 0
        self.commands_handled = 0
        self.commands_rejected = 0
        """Commands answered with a validation error or dropped because no id could be recovered."""
        self.rows_rejected = 0
        """Outbox rows that could never be represented on the wire and were dropped (logged at ERROR)."""
        self.last_error: str | None = None

        self._started_mono = time.monotonic()
        self._ever_connected = False
        self._connected_since_mono: float | None = None
        self._reachable: bool | None = None
        self._warned_undeliverable_command = False
        self._heartbeat_failing = False
        self._recent_results: OrderedDict[str, CommandResult] = OrderedDict()
        self._cpu_mark: tuple[int, int] = (0, 0)

    # --- public ----------------------------------------------------------------------------------------

    async def run(self) -> None:
        """Connect, serve, and reconnect after every failure, until cancelled.

        On cancellation while connected it publishes the retained offline status, then disconnects cleanly.
        Connection errors (`TRANSIENT_ERRORS`, including publish timeouts) are retried forever; anything else
        — an outbox failure, a bug — is not: the offline status goes out and the error propagates, wrapped in
        an ExceptionGroup by the uplink's TaskGroup.
        """
        try:
            while True:
                try:
                    await self._session()
                except TRANSIENT_ERRORS as exc:
                    reraise_swallowed_cancel()
                    self._note_failure(exc)
                    delay_s = self._backoff.next_delay_s()
                    if _is_refusal(exc):
                        # Misconfiguration: retrying fast will not fix it; retry slowly in case the broker's
                        # credentials or ACL are being corrected while the gateway keeps working offline.
                        delay_s = self._backoff.cap_s
                    log.debug("uplink: next connect attempt in %.2f s", delay_s)
                    await asyncio.sleep(delay_s)
        finally:
            self.connected = False

    def stats(self) -> dict[str, int | str | bool | None]:
        """The public state as one JSON-ready dict."""
        return {
            "connected": self.connected,
            "last_published_seq": self.last_published_seq,
            "published_batches": self.published_batches,
            "published_events": self.published_events,
            "reconnects": self.reconnects,
            "connection_failures": self.connection_failures,
            "heartbeats_sent": self.heartbeats_sent,
            "commands_handled": self.commands_handled,
            "commands_rejected": self.commands_rejected,
            "rows_rejected": self.rows_rejected,
            "last_error": self.last_error,
        }

    def status(self, state: Literal["online", "offline"]) -> Status:
        """The birth (``online``) or will/goodbye (``offline``) payload of this gateway, stamped now."""
        return Status(
            state=state,
            gateway_id=self.gateway_id,
            boot_id=self.boot_id,
            version=self.version,
            config_version=self.config_version,
            ts=rfc3339(utc_now()),
        )

    # --- connection ------------------------------------------------------------------------------------

    def _new_client(self) -> aiomqtt.Client:
        """A fresh aiomqtt client per connection: reusing one after an unexpected disconnect is fragile."""
        will = aiomqtt.Will(
            topic=self._status_topic, payload=self.status("offline").to_json(), qos=1, retain=True
        )
        return aiomqtt.Client(
            self.host,
            self.port,
            username=self._username,
            password=self._password,
            logger=_mqtt_log,
            identifier=self.gateway_id,
            protocol=aiomqtt.ProtocolVersion.V311,
            will=will,
            clean_session=False,
            keepalive=self._keepalive_s,
            timeout=self._publish_timeout_s,
            tls_context=self._tls,
            max_queued_incoming_messages=_MAX_QUEUED_COMMANDS,
        )

    async def _session(self) -> None:
        """One connection: subscribe, birth, then the three tasks until something fails (always raises)."""
        client = self._new_client()
        try:
            async with client:
                # Subscribe before the birth: a hub answering the birth with a command must find us listening.
                reraise_swallowed_cancel()
                await client.subscribe(f"{self._command_prefix}#", qos=1, timeout=self._publish_timeout_s)
                reraise_swallowed_cancel()
                await client.publish(
                    self._status_topic,
                    self.status("online").to_json(),
                    qos=1,
                    retain=True,
                    timeout=self._publish_timeout_s,
                )
                reraise_swallowed_cancel()
                self._note_connected()
                try:
                    await self._serve(client)
                except BaseException as exc:
                    # Leaving `async with` sends DISCONNECT, which suppresses the will: on a stop (or a bug)
                    # say offline first. After a connection error the broker is unreachable or stalled, and the
                    # next connection's birth follows within the backoff anyway.
                    if not isinstance(exc, TRANSIENT_ERRORS):
                        await self._say_offline(client)
                    raise
        finally:
            self.connected = False
            _release_transport(client)

    async def _serve(self, client: aiomqtt.Client) -> None:
        """Run drain, heartbeat and command intake in one TaskGroup; re-raise the first connection error."""
        failure: Exception | None = None
        tasks: asyncio.TaskGroup | None = None
        try:
            async with asyncio.TaskGroup() as tasks:
                tasks.create_task(self._drain(client), name="uplink.drain")
                tasks.create_task(self._heartbeats(client), name="uplink.heartbeat")
                tasks.create_task(self._commands(client), name="uplink.commands")
        except* TRANSIENT_ERRORS as group:
            failure = group.exceptions[0]
            _undo_taskgroup_parent_cancel(tasks)
        raise failure or aiomqtt.MqttError("uplink session ended without an error")

    async def _say_offline(self, client: aiomqtt.Client) -> None:
        """Graceful stop: a DISCONNECT suppresses the will, so publish the retained offline status here."""
        try:
            await client.publish(
                self._status_topic,
                self.status("offline").to_json(),
                qos=1,
                retain=True,
                timeout=min(self._publish_timeout_s, _GOODBYE_TIMEOUT_S),
            )
        except TRANSIENT_ERRORS as exc:
            log.debug("uplink: offline status not acknowledged before disconnect: %s", exc)

    def _note_connected(self) -> None:
        if self._ever_connected:
            self.reconnects += 1
        self._ever_connected = True
        self.connected = True
        self._connected_since_mono = time.monotonic()
        if self._reachable is False:
            log.info(
                "uplink: broker %s:%d reachable again; online as %s", self.host, self.port, self.gateway_id
            )
        elif self._reachable is None:
            log.info("uplink: connected to %s:%d as %s", self.host, self.port, self.gateway_id)
        self._reachable = True

    def _note_failure(self, exc: BaseException) -> None:
        self.connected = False
        if (
            self._connected_since_mono is not None
            and time.monotonic() - self._connected_since_mono >= _STABLE_CONNECTION_S
        ):
            self._backoff.reset()
        self._connected_since_mono = None
        self.connection_failures += 1
        self.last_error = f"{type(exc).__name__}: {exc}"
        if self._reachable is False:
            log.debug("uplink: still unreachable: %s", self.last_error)
            return
        self._reachable = False
        if _is_refusal(exc):
            log.error(
                "uplink: broker %s:%d refused gateway %s (%s); check credentials/ACL; retrying every %.0f s",
                self.host,
                self.port,
                self.gateway_id,
                self.last_error,
                self._backoff.cap_s,
            )
        else:
            log.warning(
                "uplink: broker %s:%d unreachable (%s); events stay in the outbox, retrying with backoff",
                self.host,
                self.port,
                self.last_error,
            )

    # --- drain -----------------------------------------------------------------------------------------

    async def _drain(self, client: aiomqtt.Client) -> None:
        """Publish the outbox oldest-first, one batch in flight, deleting rows only after their PUBACK."""
        while True:
            rows = await self._outbox.peek(self._batch_max_events)
            if not rows:
                await self._outbox.wait_for_rows(_IDLE_WAIT_S)
                reraise_swallowed_cancel()  # an Outbox built on 3.11's wait_for may have dropped a cancel
                continue
            try:
                batch = build_batch(store_id=self.store_id, gateway_id=self.gateway_id, rows=rows)
            except InvalidRowError as exc:
                # It can never be sent; keeping it would stall the store's uplink for good. The gateway's
                # ledger still holds it, and the hub sees the hole in seq.
                log.error("uplink: dropping undeliverable outbox row: %s", exc)  # noqa: TRY400 - no traceback
                await self._outbox.ack_through(exc.seq)
                self.rows_rejected += 1
                continue
            await client.publish(self._events_topic, batch.to_json(), qos=1, timeout=self._publish_timeout_s)
            reraise_swallowed_cancel()
            # Returning from a QoS 1 publish means paho saw the PUBACK (see module docstring).
            await self._outbox.ack_through(batch.last_seq)
            self.last_published_seq = batch.last_seq
            self.published_batches += 1
            self.published_events += len(batch.events)

    # --- heartbeat -------------------------------------------------------------------------------------

    async def _heartbeats(self, client: aiomqtt.Client) -> None:
        """One heartbeat right after connecting, then one every `heartbeat_s` (QoS 1, not retained)."""
        while True:
            beat = await self._next_heartbeat()
            if beat is not None:
                await client.publish(
                    self._health_topic, beat.to_json(), qos=1, timeout=self._publish_timeout_s
                )
                reraise_swallowed_cancel()
                self.heartbeats_sent += 1
            await asyncio.sleep(self._heartbeat_s)

    async def _next_heartbeat(self) -> Heartbeat | None:
        provider = self._heartbeat_provider or self._default_heartbeat
        try:
            beat = await provider()
        except Exception:
            # The provider is the gateway's code; a failing metric must not take the uplink down.
            if not self._heartbeat_failing:
                log.exception("uplink: heartbeat provider failed; skipping heartbeats until it recovers")
            self._heartbeat_failing = True
            return None
        if self._heartbeat_failing:
            log.info("uplink: heartbeat provider recovered")
            self._heartbeat_failing = False
        return beat

    async def _default_heartbeat(self) -> Heartbeat:
        """A heartbeat from what the uplink knows plus stdlib host metrics (no devices, no alerts).

        `last_seq` here is the last *published* seq; the gateway's own provider reports the last allocated one.
        """
        depth, oldest_age_s = await self._outbox.depth()
        host = await asyncio.to_thread(read_host_sample, "/")
        return Heartbeat(
            gateway_id=self.gateway_id,
            boot_id=self.boot_id,
            ts=rfc3339(utc_now()),
            uptime_s=round(time.monotonic() - self._started_mono, 3),
            cpu_pct=round(self._host_cpu_pct(host), 1),
            mem_rss_mb=round(host.mem_rss_mb, 1),
            disk_free_mb=round(host.disk_free_mb, 1),
            temperature_c=host.temperature_c,
            outbox_depth=depth,
            outbox_oldest_age_s=oldest_age_s,
            last_seq=self.last_published_seq or 0,
            devices=[],
            active_alerts=0,
        )

    def _host_cpu_pct(self, host: HostSample) -> float:
        """Host CPU utilisation (0–100 over all cores) since the previous heartbeat (since boot the first time)."""
        then_busy, then_total = self._cpu_mark
        self._cpu_mark = (host.cpu_busy_ticks, host.cpu_total_ticks)
        total = host.cpu_total_ticks - then_total
        return 0.0 if total <= 0 else min(100.0, max(0.0, 100.0 * (host.cpu_busy_ticks - then_busy) / total))

    # --- commands --------------------------------------------------------------------------------------

    async def _commands(self, client: aiomqtt.Client) -> None:
        """Take `cmd/{name}` messages in order and publish one `cmd-result` each.

        This loop is also the connection watchdog: aiomqtt's message iterator raises MqttError as soon as the
        connection drops, while a pending publish would only notice at its timeout.
        """
        async for message in client.messages:
            if not isinstance(message.payload, bytes):  # pragma: no cover - paho always delivers bytes
                continue
            result = await self._handle_command(message.topic.value, message.payload, retained=message.retain)
            if result is not None:
                await client.publish(
                    self._cmd_result_topic, _result_payload(result), qos=1, timeout=self._publish_timeout_s
                )
                reraise_swallowed_cancel()

    async def _handle_command(self, topic: str, payload: bytes, *, retained: bool) -> CommandResult | None:
        """Validate, de-duplicate and run one command; None when there is nobody to answer."""
        if not topic.startswith(self._command_prefix):
            return None
        name = topic.removeprefix(self._command_prefix)
        if retained:
            # A retained command would re-run on every (re)subscribe; it is stale state, not an instruction.
            self._drop_command(name, "retained commands are not accepted")
            return None
        try:
            command = parse_command(payload)
        except CommandRefusedError as exc:
            if exc.command_id is None:
                self._drop_command(name, exc.reason)
                return None
            self.commands_rejected += 1
            # %r: the name and id come from the network; a newline in them must not forge a log line.
            log.info("uplink: rejected command %r id=%r: %s", name, exc.command_id, exc.reason)
            return CommandResult(id=exc.command_id, ok=False, error=f"invalid command: {exc.reason}")
        cached = self._recent_results.get(command.id)
        if cached is not None:
            log.debug("uplink: command id=%s redelivered; re-sending its result", command.id)
            return cached
        result = await self._execute(name, command)
        self._recent_results[command.id] = result
        while len(self._recent_results) > _COMMAND_RESULTS_REMEMBERED:
            self._recent_results.popitem(last=False)
        self.commands_handled += 1
        return result

    async def _execute(self, name: str, command: Command) -> CommandResult:
        if not name:
            return CommandResult(id=command.id, ok=False, error="empty command name")
        if self._on_command is not None:
            try:
                result = await self._on_command(name, command)
            except UnknownCommandError:
                pass
            except Exception as exc:
                # The handler's failure is the command's outcome, reported to the hub, not the uplink's.
                log.exception("uplink: command %s id=%s failed", name, command.id)
                return CommandResult(id=command.id, ok=False, error=f"{type(exc).__name__}: {exc}")
            else:
                return result if result.id == command.id else result.model_copy(update={"id": command.id})
        if name == "ping":
            return CommandResult(id=command.id, ok=True, result={"pong": True})
        return CommandResult(id=command.id, ok=False, error=f"unknown command {name!r}")

    def _drop_command(self, name: str, reason: str) -> None:
        """Nobody to answer: count it, WARNING the first time, DEBUG after that."""
        self.commands_rejected += 1
        if self._warned_undeliverable_command:
            log.debug("uplink: dropped command %r: %s", name, reason)
            return
        self._warned_undeliverable_command = True
        log.warning(
            "uplink: dropped command %r with no usable id (%s); further ones are logged at DEBUG and counted",
            name,
            reason,
        )


def _result_payload(result: CommandResult) -> bytes:
    """The wire form of a result; a handler's result that cannot be JSON becomes an error for the same id.

    The id always serialises: `parse_command` refuses ids that are not valid UTF-8.
    """
    try:
        return result.model_dump_json(exclude_none=True).encode()
    except PydanticSerializationError as exc:
        log.error("uplink: result of command id=%r is not serialisable: %s", result.id, exc)  # noqa: TRY400
        fallback = CommandResult(id=result.id, ok=False, error="the command's result could not be serialised")
        return fallback.model_dump_json(exclude_none=True).encode()


__all__ = [
    "MAX_COMMAND_BYTES",
    "MAX_COMMAND_DEPTH",
    "TRANSIENT_ERRORS",
    "CommandHandler",
    "CommandRefusedError",
    "HeartbeatProvider",
    "HostSample",
    "InvalidRowError",
    "UnknownCommandError",
    "Uplink",
    "build_batch",
    "event_from_row",
    "event_id",
    "parse_command",
    "read_host_sample",
]
