"""Async MT-SICS scale client: one per serial port, request/reply under one lock, health and availability.

Transport choice: pyserial-asyncio-fast (Home Assistant's maintained fork of pyserial-asyncio). It registers
the port's file descriptor with the running event loop (`add_reader`), so a scale costs no thread, a
cancelled `await` cancels cleanly, and received bytes reach the sans-IO decoder the moment they arrive. The
alternative — blocking pyserial in a worker thread — needs a thread per port, and a blocking `read(timeout)`
cannot be interrupted when the awaiting task is cancelled.

MT-SICS has no transaction ids, so the client keeps one exchange on the line at a time (an `asyncio.Lock`),
matches a reply by its id (`SI` → `S`, `@` → `I4`), and before every request discards whatever arrived
unasked (counted as stale lines): a late reply to a timed-out request can then only be mistaken for the
next request's reply if it arrives after that request was sent.

Stable weights only (DOMAIN.md: count only stable readings): `weigh_stable` polls `SI` and returns only an
`S S <value> <unit>` reply; `S D` (dynamic) replies are never returned, and a scale stuck in motion ends in
`ScaleNotStable` (a `ScaleTimeout`), counted in `not_stable`. SI polling is preferred over `S` because the
client owns the deadline and every poll proves the line alive, whereas `S` may legitimately stay unanswered
for as long as the scale's own stability timeout and cannot be told apart from a dead scale meanwhile.

Power-cycles: an MT-SICS scale announces power-up with its serial-number line (`I4 A "<SNR>"`), and loses
its tare. An unsolicited I4 line, or a reply after the scale was offline, makes the client send `@` (reset:
cancels any half-received command or running SIR stream, answers the serial number) before its next command,
counted in `resets`; `tare_lost` tells the gateway the tare must be taken again.

The serial plumbing every scale protocol needs — port and backoff, bounded reply queue, garbage counting,
availability — is `SerialScaleBase`, shared with the NCI client (`nci_client.py`); `ScaleClient` adds MT-SICS.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from types import TracebackType
from typing import Final, Generic, Self, TypedDict, TypeVar, Unpack

import serial_asyncio_fast

from drivers.backoff import full_jitter_s
from drivers.scale.models import (
    Availability,
    ScaleCommandError,
    ScaleCounters,
    ScaleNotStable,
    ScaleRangeError,
    ScaleSettings,
    ScaleTimeout,
    ScaleUnavailable,
    StableWeight,
)
from drivers.scale.protocol import (
    NEED_MORE,
    MtResponse,
    MtSicsDecoder,
    ProtocolError,
    encode_mtsics_command,
    to_grams,
)

_log = logging.getLogger(__name__)

RECEIVE_QUEUE_LINES: Final = 32
"""Replies held for the next exchange; when full the oldest is dropped and counted (`dropped_lines`)."""

_RESET_IDS: Final = frozenset({"I4", "@"})
"""`@` is answered with the I4 serial-number line; some firmware (and InstrumentKit's mock) answers `@ A`."""


ReplyT = TypeVar("ReplyT")


class ScaleClientOptions(TypedDict, total=False):
    """The keyword options every scale client takes (defaults in `SerialScaleBase.__init__`)."""

    on_availability: Callable[[Availability], None] | None
    backoff_base_s: float
    backoff_cap_s: float
    rng: random.Random | None


@dataclass(frozen=True, slots=True)
class NotYetStable:
    """One `weigh_stable` poll that answered without a stable weight.

    `last` describes it for the final error; `pause` waits the poll interval before the next poll; `error`,
    when set, is raised at the deadline if it was still the latest answer (a scale that keeps refusing).
    """

    last: str
    pause: bool = True
    error: ScaleCommandError | None = None


class _LineProtocol(asyncio.Protocol, Generic[ReplyT]):
    """Glue from the serial transport's callbacks to the client (no logic of its own)."""

    def __init__(self, client: SerialScaleBase[ReplyT]) -> None:
        self._client = client
        self.closed: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    def data_received(self, data: bytes) -> None:
        self._client._on_bytes(data)

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.closed.done():
            self.closed.set_result(None)
        self._client._on_lost(self, exc)


class SerialScaleBase(Generic[ReplyT]):
    """What every serial scale client shares, whatever its protocol: the port, availability, garbage, health.

    The port is opened with pyserial-asyncio-fast on first use and reopened after a loss, no sooner than a
    capped, fully jittered exponential backoff allows (STYLE.md rule 7); decoded replies land in a bounded
    queue (oldest dropped and counted when full); availability is state, reported once per change (rule 8).
    Subclasses supply the decoder (`_new_decoder`, `_decode_received`) and their protocol's commands, and
    may react to a lost port or a return from silence (`_on_port_lost`, `_on_back_from_silence`).
    """

    def __init__(
        self,
        settings: ScaleSettings,
        device_id: str,
        *,
        on_availability: Callable[[Availability], None] | None = None,
        backoff_base_s: float = 0.5,
        backoff_cap_s: float = 30.0,
        rng: random.Random | None = None,
    ) -> None:
        if backoff_base_s <= 0 or backoff_cap_s < backoff_base_s:
            raise ValueError("need 0 < backoff_base_s <= backoff_cap_s")
        self.settings = settings
        self.device_id = device_id
        self.counters = ScaleCounters()
        self._on_availability = on_availability
        self._backoff_base_s = backoff_base_s
        self._backoff_cap_s = backoff_cap_s
        self._rng = rng or random.Random()  # jitter, not security
        self._lock = asyncio.Lock()
        self._replies: asyncio.Queue[ReplyT] = asyncio.Queue(maxsize=RECEIVE_QUEUE_LINES)
        self._transport: asyncio.Transport | None = None
        self._protocol: _LineProtocol[ReplyT] | None = None
        self._open_attempts = 0
        self._next_open_mono = 0.0
        self._closing = False
        self._online: bool | None = None
        self._consecutive_timeouts = 0
        self._in_garbage_burst = False

    # --- lifecycle -----------------------------------------------------------------------------------------

    async def __aenter__(self) -> Self:
        self._closing = False
        # A missing port at start is not fatal: the gateway starts and the scale reports unavailable.
        try:
            await self._ensure_open()
        except ScaleUnavailable as exc:
            _log.warning("scale %s: %s", self.device_id, exc.reason)
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Close the port and wait until the transport has let go of it."""
        self._closing = True
        transport, protocol = self._transport, self._protocol
        self._transport = self._protocol = None
        if transport is not None and protocol is not None:
            transport.close()
            # The transport closes the port in an executor; wait so no task outlives the client.
            await asyncio.wait([protocol.closed], timeout=5.0)

    @property
    def online(self) -> bool | None:
        """None before the first verdict, then the current availability."""
        return self._online

    @property
    def unread_lines(self) -> int:
        """Valid replies received and not yet consumed by an exchange."""
        return self._replies.qsize()

    async def _ensure_open(self) -> None:
        if self._transport is not None:
            return
        loop = asyncio.get_running_loop()
        if loop.time() < self._next_open_mono:
            raise ScaleUnavailable(self.device_id, self.counters.last_error or "serial port closed")
        s = self.settings
        try:
            transport, protocol = await serial_asyncio_fast.create_serial_connection(
                loop,
                lambda: _LineProtocol(self),
                s.port,
                baudrate=s.baudrate,
                bytesize=s.bytesize,
                parity=s.parity,
                stopbits=s.stopbits,
            )
        except (OSError, ValueError) as exc:  # serial.SerialException is an OSError
            self.counters.open_failures += 1
            reason = f"cannot open serial port {s.port}: {exc}"
            self.counters.last_error = reason
            delay_s = full_jitter_s(self._open_attempts, self._backoff_base_s, self._backoff_cap_s, self._rng)
            self._open_attempts += 1
            self._next_open_mono = loop.time() + delay_s
            raise ScaleUnavailable(self.device_id, reason) from exc
        assert isinstance(protocol, _LineProtocol)  # noqa: S101 - our factory made it
        self._transport, self._protocol = transport, protocol
        self._open_attempts = 0
        self._new_decoder()

    # --- protocol hooks ------------------------------------------------------------------------------------

    def _new_decoder(self) -> None:
        """Start decoding afresh (a newly opened port carries nothing of the old stream)."""
        raise NotImplementedError

    def _decode_received(self, data: bytes) -> None:
        """Feed received bytes to the decoder; queue replies with `_queue_reply`, garbage to `_note_garbage`."""
        raise NotImplementedError

    def _on_port_lost(self) -> None:
        """The port went away under us (the device may have been swapped or restarted meanwhile)."""

    def _on_back_from_silence(self) -> None:
        """The first reply after the scale was offline: it may have been power-cycled meanwhile."""

    # --- receive path (event-loop callbacks, synchronous) ---------------------------------------------------

    def _on_bytes(self, data: bytes) -> None:
        self._decode_received(data)

    def _end_garbage_burst(self) -> None:
        if self._in_garbage_burst:
            self._in_garbage_burst = False
            _log.debug("scale %s: valid lines again", self.device_id)

    def _queue_reply(self, item: ReplyT) -> None:
        if self._replies.full():
            self._replies.get_nowait()
            self.counters.dropped_lines += 1
        self._replies.put_nowait(item)

    def _on_lost(self, protocol: _LineProtocol[ReplyT], exc: Exception | None) -> None:
        if protocol is not self._protocol:
            return  # our own close
        self._transport = self._protocol = None
        if not self._closing:
            self.counters.disconnects += 1
            self.counters.last_error = f"serial port {self.settings.port} lost: {exc}"
            self._on_port_lost()
            _log.warning("scale %s: %s", self.device_id, self.counters.last_error)

    def _note_garbage(self, exc: ProtocolError) -> None:
        self.counters.garbage_lines += 1
        self.counters.last_error = f"garbage on the line: {exc}"
        if not self._in_garbage_burst:
            self._in_garbage_burst = True
            _log.warning("scale %s: garbage on the line (%s); skipping to the next line", self.device_id, exc)

    # --- availability --------------------------------------------------------------------------------------

    def _set_available(self, online: bool, reason: str) -> None:
        previous = self._online
        self._online = online
        self.counters.online = online
        if previous is online:
            return
        if online and previous is None:
            return  # the first reply at start is no change worth a log line
        if online:
            _log.info("scale %s back online: %s", self.device_id, reason)
        else:
            _log.warning("scale %s offline: %s", self.device_id, reason)
        if self._on_availability is not None:
            self._on_availability(Availability(self.device_id, online=online, reason=reason, ts=time.time()))

    def _note_reply(self) -> None:
        c = self.counters
        c.replies += 1
        c.last_seen_mono = time.monotonic()
        self._consecutive_timeouts = 0
        if self._online is False:
            self._on_back_from_silence()
        self._set_available(True, "reply received")

    def _note_timeout(self, reason: str) -> None:
        self.counters.timeouts += 1
        self.counters.last_error = reason
        self._consecutive_timeouts += 1
        if self._consecutive_timeouts >= self.settings.offline_after:
            self._set_available(False, f"{self._consecutive_timeouts} requests unanswered ({reason})")

    def _discard_unread(self) -> None:
        while not self._replies.empty():
            self._replies.get_nowait()
            self.counters.stale_lines += 1

    # --- shared exchange and polling ------------------------------------------------------------------------

    def _encode(self, cmd: str) -> bytes:
        """The bytes of one command on the wire."""
        raise NotImplementedError

    def _before_request(self) -> None:
        """Called under the lock just before the unread replies are discarded and a request goes out."""

    async def _request_locked(self, cmd: str, timeout_s: float, accept: Callable[[ReplyT], bool]) -> ReplyT:
        """Send `cmd` and return the first reply `accept` takes (call with the lock held, port open).

        `accept` returns True for this command's reply (after `_note_reply`), False for a reply of another
        shape (counted as stale, skipped), or raises for a refusal. No reply within `timeout_s` counts
        towards offline and raises `ScaleTimeout`.
        """
        transport = self._transport
        if transport is None:
            raise ScaleUnavailable(self.device_id, self.counters.last_error or "serial port closed")
        self._before_request()
        self._discard_unread()
        self.counters.requests += 1
        try:
            transport.write(self._encode(cmd))
            async with asyncio.timeout(timeout_s):
                while True:
                    reply = await self._replies.get()
                    if accept(reply):
                        return reply
                    self.counters.stale_lines += 1
        except TimeoutError:
            reason = f"no reply to {cmd} within {timeout_s:g} s"
            self._on_request_timeout()
            self._note_timeout(reason)
            raise ScaleTimeout(self.device_id, reason) from None

    def _on_request_timeout(self) -> None:
        """A request went unanswered (before it is counted towards offline)."""

    def _range_error(self, cmd: str, *, overload: bool) -> ScaleRangeError:
        if overload:
            self.counters.overloads += 1
        else:
            self.counters.underloads += 1
        reason = f"{cmd}: {'overload' if overload else 'underload'}"
        self.counters.last_error = reason
        return ScaleRangeError(self.device_id, reason, overload=overload)

    async def _pause_until(self, deadline: float) -> None:
        """The pause between two polls, never past the deadline."""
        pause_s = min(self.settings.poll_interval_s, deadline - asyncio.get_running_loop().time())
        if pause_s > 0:
            await asyncio.sleep(pause_s)

    async def _poll_until_stable(
        self, timeout_s: float | None, poll: Callable[[], Awaitable[StableWeight | NotYetStable]]
    ) -> StableWeight:
        """Call `poll` until it returns a stable weight or the deadline passes (the `weigh_stable` loop).

        A `ScaleTimeout` from `poll` is a lost reply: retried at once. Anything else `poll` raises ends the
        call. No poll starts after the deadline, so the call returns within `timeout_s` plus one request
        timeout. At the deadline: the latest `NotYetStable.error` if set, `ScaleTimeout` when the scale never
        answered, else `ScaleNotStable` (counted in `not_stable`).
        """
        budget_s = self.settings.stable_timeout_s if timeout_s is None else timeout_s
        loop = asyncio.get_running_loop()
        deadline = loop.time() + budget_s
        answered = False
        last = "no reply"
        refusal: ScaleCommandError | None = None
        while deadline - loop.time() > 0:
            try:
                outcome = await poll()
            except ScaleTimeout as exc:
                last = exc.reason
                continue
            answered = True
            if isinstance(outcome, StableWeight):
                return outcome
            last, refusal = outcome.last, outcome.error
            if outcome.pause:
                await self._pause_until(deadline)
        if refusal is not None:
            raise refusal
        if not answered:
            raise ScaleTimeout(self.device_id, f"no reply within {budget_s:g} s ({last})")
        self.counters.not_stable += 1
        reason = f"no stable weight within {budget_s:g} s (last: {last})"
        self.counters.last_error = reason
        raise ScaleNotStable(self.device_id, reason)

    def _weight(self, value: float, unit: str) -> StableWeight:
        return StableWeight(
            self.device_id,
            value=value,
            unit=unit,
            weight_g=to_grams(value, unit),
            ts=time.time(),
            mono=time.monotonic(),
        )


class ScaleClient(SerialScaleBase[MtResponse]):
    """One MT-SICS scale: `async with ScaleClient(ScaleSettings(port), "scale-1") as scale: ...`.

    Availability is state: after `settings.offline_after` consecutive unanswered requests the scale is offline
    (one WARNING, one `on_availability` call), and the first reply after that brings it back (one INFO, one
    call). Garbage on the line is counted per line and logged once per burst (a valid line ends the burst).
    A missing or lost serial port raises `ScaleUnavailable`; the port is reopened on a later call, no sooner
    than a capped, fully jittered exponential backoff allows.
    """

    def __init__(
        self, settings: ScaleSettings, device_id: str, **options: Unpack[ScaleClientOptions]
    ) -> None:
        super().__init__(settings, device_id, **options)
        self.serial_number: str | None = None
        """From the last I4 / @ reply."""
        self.tare_lost = False
        """True after a power-cycle was noticed, until the next successful `tare()` or `clear_tare()`."""
        self._decoder = MtSicsDecoder()
        self._expect: frozenset[str] = frozenset()
        self._expect_timeout_s = 0.0
        self._needs_reset = True
        """Reset before the first command: cancels a stream a previous process left running."""
        self._late_id_until = 0.0
        """Until then an unasked I4 line is taken for the late reply to a timed-out I4/@, not a power-up."""

    # --- protocol hooks ------------------------------------------------------------------------------------

    def _new_decoder(self) -> None:
        self._decoder = MtSicsDecoder()

    def _decode_received(self, data: bytes) -> None:
        self._decoder.feed(data)
        while True:
            try:
                item = self._decoder.next_response()
            except ProtocolError as exc:
                self._note_garbage(exc)
                continue
            if item is NEED_MORE:
                return
            assert isinstance(item, MtResponse)  # noqa: S101 - narrowing for mypy
            self._end_garbage_burst()
            if item.cmd == "I4" and "I4" not in self._expect and time.monotonic() >= self._late_id_until:
                self._note_power_up(item)
                continue
            self._queue_reply(item)

    def _on_port_lost(self) -> None:
        self._needs_reset = True

    def _on_back_from_silence(self) -> None:
        if not self._needs_reset:
            # Back from silence: it may have been power-cycled without our seeing its I4 announcement.
            self._needs_reset = True
            self.counters.power_cycles += 1
            self.tare_lost = True

    def _note_power_up(self, line: MtResponse) -> None:
        self.counters.power_cycles += 1
        self._needs_reset = True
        self.tare_lost = True
        serial = line.args[0] if line.args else "?"
        _log.warning(
            "scale %s announced a power-up (serial %s): tare lost, resetting", self.device_id, serial
        )

    # --- exchanges -----------------------------------------------------------------------------------------

    async def _exchange(self, cmd: str, expect: frozenset[str], timeout_s: float) -> MtResponse:
        """Send one command and return its reply (the only place replies are matched and counted)."""
        async with self._lock:
            await self._ensure_open()
            if self._needs_reset and cmd != "@":
                await self._reset_locked()
            return await self._exchange_locked(cmd, expect, timeout_s)

    def _encode(self, cmd: str) -> bytes:
        return encode_mtsics_command(cmd)

    def _on_request_timeout(self) -> None:
        if "I4" in self._expect:
            self._late_id_until = time.monotonic() + 10 * self._expect_timeout_s

    async def _exchange_locked(self, cmd: str, expect: frozenset[str], timeout_s: float) -> MtResponse:
        def accept(resp: MtResponse) -> bool:
            if resp.error is not None:
                self._note_reply()
                raise self._command_error(cmd, resp.error)
            if resp.cmd in expect:
                self._note_reply()
                return True
            return False

        self._expect, self._expect_timeout_s = expect, timeout_s
        try:
            return await self._request_locked(cmd, timeout_s, accept)
        finally:
            self._expect = frozenset()

    def _command_error(self, cmd: str, kind: str) -> ScaleCommandError:
        c = self.counters
        if kind == "syntax":
            c.errors_syntax += 1
        elif kind == "transmission":
            c.errors_transmission += 1
        elif kind == "logical":
            c.errors_logical += 1
        else:
            c.not_executable += 1
        reason = f"{cmd}: {kind} error" if kind != "not executable" else f"{cmd}: not executable now"
        c.last_error = reason
        return ScaleCommandError(self.device_id, reason, kind=kind)

    def _check_status(self, cmd: str, resp: MtResponse) -> None:
        """Turn the refusal statuses (I, L, +, -) of a command's reply into our exceptions."""
        if resp.status == "I":
            raise self._command_error(cmd, "not executable")
        if resp.status == "L":
            raise self._command_error(cmd, "logical")
        if resp.status in {"+", "-"}:
            raise self._range_error(cmd, overload=resp.status == "+")

    async def _reset_locked(self) -> None:
        resp = await self._exchange_locked("@", _RESET_IDS, self.settings.request_timeout_s)
        self.counters.resets += 1
        self._needs_reset = False
        serial = resp.args[0] if resp.args else None
        if serial is not None:
            if self.serial_number is not None and serial != self.serial_number:
                _log.warning(
                    "scale %s: serial number changed from %s to %s (device swapped?)",
                    self.device_id,
                    self.serial_number,
                    serial,
                )
            self.serial_number = serial

    # --- public commands -----------------------------------------------------------------------------------

    async def reset(self) -> str | None:
        """`@`: reset the scale (cancel commands and streams); returns its serial number if it sent one."""
        async with self._lock:
            await self._ensure_open()
            await self._reset_locked()
            return self.serial_number

    async def identify(self) -> str:
        """`I4`: the scale's serial number."""
        resp = await self._exchange("I4", frozenset({"I4"}), self.settings.request_timeout_s)
        self._check_status("I4", resp)
        if resp.status != "A" or not resp.args:
            raise ScaleCommandError(
                self.device_id, f"I4 reply without a serial number: {resp}", kind="logical"
            )
        self.serial_number = resp.args[0]
        return resp.args[0]

    async def zero(self) -> None:
        """`Z`: set zero (the scale waits for stability first, hence `command_timeout_s`)."""
        resp = await self._exchange("Z", frozenset({"Z"}), self.settings.command_timeout_s)
        self._check_status("Z", resp)

    async def tare(self) -> StableWeight:
        """`T`: tare with the stable weight on the pan; returns the tare weight."""
        resp = await self._exchange("T", frozenset({"T"}), self.settings.command_timeout_s)
        self._check_status("T", resp)
        if resp.value is None or resp.unit is None or resp.status == "D":
            raise ScaleCommandError(
                self.device_id, f"T reply without a stable weight: {resp}", kind="logical"
            )
        self.tare_lost = False
        return self._weight(resp.value, resp.unit)

    async def clear_tare(self) -> None:
        """`TAC`: clear the tare memory."""
        resp = await self._exchange("TAC", frozenset({"TAC"}), self.settings.request_timeout_s)
        self._check_status("TAC", resp)
        self.tare_lost = False

    async def weigh_stable(self, timeout_s: float | None = None) -> StableWeight:
        """A stable net weight, polling `SI` until the scale reports one (never a dynamic value).

        Raises `ScaleNotStable` when the scale answered but stayed in motion (or busy) until the deadline,
        `ScaleTimeout` when it never answered, `ScaleRangeError` on overload/underload, `ScaleUnavailable`
        when the port is gone. Lost replies and transmission errors within the deadline are retried. No poll
        starts after the deadline, so the call returns within `timeout_s` plus one request timeout.
        """
        return await self._poll_until_stable(timeout_s, self._poll_si)

    async def _poll_si(self) -> StableWeight | NotYetStable:
        """One `SI` poll of `weigh_stable`."""
        try:
            # Always the full request timeout: a poll cut short by the deadline would count a timeout
            # against a scale that did nothing wrong.
            resp = await self._exchange("SI", frozenset({"S"}), self.settings.request_timeout_s)
        except ScaleCommandError as exc:
            if exc.kind != "transmission":
                raise
            return NotYetStable(exc.reason, pause=False)
        if resp.stable is True and resp.value is not None and resp.unit is not None:
            return self._weight(resp.value, resp.unit)
        if resp.status not in {"D", "I"}:  # D (dynamic) and I (busy) keep polling; + - L raise
            self._check_status("SI", resp)
        if resp.status == "D":
            self.counters.dynamic_replies += 1
        return NotYetStable("dynamic (in motion)" if resp.status == "D" else f"status {resp.status}")
