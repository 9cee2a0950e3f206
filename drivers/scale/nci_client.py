"""Async NCI/ECR scale client: the same public surface as the MT-SICS `ScaleClient`, where NCI allows it.

NCI (Avery Weigh-Tronix ECR protocol, 7821 manual p.25; status bits per the Ohaus Aviator 7000 NCI
section — layout drawn in `protocol.py`) has three commands, each answered with one ETX-terminated frame::

    W<CR>  →  <LF>  1.25lb<CR><LF>hh<CR><ETX>    weight + two status bytes
    S<CR>  →  <LF>hh<CR><ETX>                    status only
    Z<CR>  →  <LF>hh<CR><ETX>                    zero (taken only when the scale is still), then status
    other  →  <LF>?<CR><ETX>                     "bad command"

    status byte 1: motion · at zero · RAM error · EEPROM error;  byte 2: under · over capacity · ROM error ·
    faulty calibration

So the gateway can drive either protocol by config (`protocol: mtsics|nci`), `NciScaleClient` keeps
`ScaleClient`'s constructor, lifecycle, `online`, `counters`, `weigh_stable(timeout_s)` → `StableWeight` and
`zero()`. NCI has no serial-number, tare or reset command: `identify()`, `tare()`, `clear_tare()` and
`reset()` raise `ScaleCommandError(kind="not supported")` without touching the line.

Stable weights only (DOMAIN.md): `weigh_stable` polls `W` and returns a weight only when the motion bit is
clear; a scale stuck in motion ends in `ScaleNotStable`. Over/under capacity raise `ScaleRangeError`; the
RAM/EEPROM/ROM/calibration fault bits raise `ScaleCommandError(kind="device fault")` (counted in
`errors_logical`) — a faulty scale's weight must not price a sale.

Replies carry no command id, so matching is by shape (W wants a weight frame, S and Z a status-only frame),
one exchange at a time under a lock, and everything that arrived unasked is discarded before each request
(counted as stale). The scale never speaks unless asked, so bytes of an incomplete frame still buffered when
a new request goes out can only be noise or the torn end of an old reply: they are dropped and counted as
garbage (re-sync at a request boundary, on top of the decoder's re-sync at every ETX).

Power-cycles: an NCI scale does not announce itself and re-takes its power-up zero, so a zero set with
`zero()` is lost. A reply after the scale was offline is taken for a possible power-cycle: counted in
`power_cycles`, and `zero_lost` stays True until the next successful `zero()`. A power-cycle shorter than
`offline_after` unanswered requests cannot be told from a few lost replies and goes unnoticed (as with
MT-SICS scales that do not send their I4 line).
"""

from __future__ import annotations

import logging
from typing import Final, Unpack

from drivers.scale.client import NotYetStable, ScaleClientOptions, SerialScaleBase
from drivers.scale.models import (
    ScaleCommandError,
    ScaleSettings,
    StableWeight,
)
from drivers.scale.protocol import (
    NEED_MORE,
    NciDecoder,
    NciReply,
    NciStatus,
    ProtocolError,
    encode_nci_command,
)

_log = logging.getLogger(__name__)

NOT_SUPPORTED: Final = "not supported"
"""`ScaleCommandError.kind` for commands the NCI protocol does not have."""

DEVICE_FAULT: Final = "device fault"
"""`ScaleCommandError.kind` when the status bytes report a RAM, EEPROM, ROM or calibration fault."""


class NciScaleClient(SerialScaleBase[NciReply]):
    """One NCI/ECR scale: `async with NciScaleClient(ScaleSettings(port), "scale-1") as scale: ...`.

    Availability, garbage handling, port backoff and counters behave exactly as in `ScaleClient` (they share
    `SerialScaleBase`). `settings.request_timeout_s` bounds W and S, `command_timeout_s` bounds Z.
    """

    def __init__(
        self, settings: ScaleSettings, device_id: str, **options: Unpack[ScaleClientOptions]
    ) -> None:
        super().__init__(settings, device_id, **options)
        self.serial_number: str | None = None
        """Always None: NCI has no command that reports one (kept for parity with `ScaleClient`)."""
        self.tare_lost = False
        """Always False: NCI has no tare (kept for parity with `ScaleClient`)."""
        self.zero_lost = False
        """True after a possible power-cycle was noticed (the scale re-took its power-up zero), until the next
        successful `zero()`."""
        self.last_status: NciStatus | None = None
        """The status bytes of the last reply that carried them."""
        self._decoder = NciDecoder()

    # --- protocol hooks ------------------------------------------------------------------------------------

    def _new_decoder(self) -> None:
        self._decoder = NciDecoder()

    def _decode_received(self, data: bytes) -> None:
        self._decoder.feed(data)
        while True:
            try:
                item = self._decoder.next_reply()
            except ProtocolError as exc:
                self._note_garbage(exc)
                continue
            if item is NEED_MORE:
                return
            assert isinstance(item, NciReply)  # noqa: S101 - narrowing for mypy
            self._end_garbage_burst()
            self._queue_reply(item)

    def _on_back_from_silence(self) -> None:
        self.counters.power_cycles += 1
        self.zero_lost = True
        _log.warning(
            "scale %s answers again after an outage: treating it as power-cycled (zero lost)", self.device_id
        )

    def _encode(self, cmd: str) -> bytes:
        return encode_nci_command(cmd)

    def _before_request(self) -> None:
        self._flush_partial_frame()

    def _flush_partial_frame(self) -> None:
        """Drop the bytes of an incomplete frame before a request (they cannot belong to its reply)."""
        held = self._decoder.buffered
        if held:
            self._decoder = NciDecoder()
            self._note_garbage(ProtocolError(f"{held} bytes of an incomplete frame before a request"))

    # --- exchanges -----------------------------------------------------------------------------------------

    async def _exchange(self, cmd: str, *, want_weight: bool, timeout_s: float) -> NciReply:
        """Send one command and return its reply (the only place replies are matched and counted)."""

        def accept(reply: NciReply) -> bool:
            if reply.error is not None:
                self._note_reply()
                self.counters.errors_syntax += 1
                reason = f"{cmd}: the scale answered '?' ({reply.error})"
                self.counters.last_error = reason
                raise ScaleCommandError(self.device_id, reason, kind="syntax")
            is_weight_frame = reply.unit is not None or reply.weight is not None
            if is_weight_frame == want_weight:
                self._note_reply()
                self.last_status = reply.status
                return True
            return False  # the other shape: a late reply to another command

        async with self._lock:
            await self._ensure_open()
            return await self._request_locked(cmd, timeout_s, accept)

    def _check_status(self, cmd: str, status: NciStatus | None) -> NciStatus:
        """Raise for faults and out-of-range loads; return the status for the caller's own checks."""
        if status is None:  # pragma: no cover - only the '?' frame lacks a status, and it raised already
            raise ScaleCommandError(self.device_id, f"{cmd}: reply without status", kind="syntax")
        if status.fault:
            self.counters.errors_logical += 1
            flags = ", ".join(
                name
                for name in ("ram_error", "eeprom_error", "rom_error", "faulty_calibration")
                if getattr(status, name)
            )
            reason = f"{cmd}: the scale reports a fault ({flags})"
            self.counters.last_error = reason
            raise ScaleCommandError(self.device_id, reason, kind=DEVICE_FAULT)
        if status.over_capacity or status.under_capacity:
            raise self._range_error(cmd, overload=status.over_capacity)
        return status

    def _not_supported(self, what: str) -> ScaleCommandError:
        return ScaleCommandError(
            self.device_id,
            f"{what} is not supported by the NCI protocol (commands: W, S, Z)",
            kind=NOT_SUPPORTED,
        )

    # --- public commands -----------------------------------------------------------------------------------

    async def read_status(self) -> NciStatus:
        """`S`: the status bytes alone (motion, at zero, range, faults), without judging them."""
        reply = await self._exchange("S", want_weight=False, timeout_s=self.settings.request_timeout_s)
        assert reply.status is not None  # noqa: S101 - status-only frames always carry one
        return reply.status

    async def zero(self) -> None:
        """`Z`: set zero. The scale ignores it while in motion; the status it returns says whether it took."""
        reply = await self._exchange("Z", want_weight=False, timeout_s=self.settings.command_timeout_s)
        status = self._check_status("Z", reply.status)
        if status.motion or not status.at_zero:
            self.counters.not_executable += 1
            why = (
                "scale in motion"
                if status.motion
                else "not at zero afterwards (load outside the zero range?)"
            )
            reason = f"Z: zero not taken: {why}"
            self.counters.last_error = reason
            raise ScaleCommandError(self.device_id, reason, kind="not executable")
        self.zero_lost = False

    async def weigh_stable(self, timeout_s: float | None = None) -> StableWeight:
        """A stable weight, polling `W` until the motion bit clears (never a weight in motion).

        Raises `ScaleNotStable` when the scale answered but stayed in motion until the deadline,
        `ScaleTimeout` when it never answered, `ScaleRangeError` on over/under capacity, `ScaleCommandError`
        on a fault bit (kind "device fault") or when the scale keeps answering '?', `ScaleUnavailable` when
        the port is gone. Lost replies within the deadline are retried; no poll starts after the deadline.
        """
        return await self._poll_until_stable(timeout_s, self._poll_w)

    async def _poll_w(self) -> StableWeight | NotYetStable:
        """One `W` poll of `weigh_stable`."""
        try:
            # Always the full request timeout: a poll cut short by the deadline would count a timeout
            # against a scale that did nothing wrong.
            reply = await self._exchange("W", want_weight=True, timeout_s=self.settings.request_timeout_s)
        except ScaleCommandError as exc:
            # '?' to W: a command garbled on its way to the scale, or a scale not speaking NCI at all.
            return NotYetStable(exc.reason, error=exc)
        status = self._check_status("W", reply.status)
        if not status.motion and reply.weight is not None and reply.unit is not None:
            return self._weight(reply.weight, reply.unit)
        if status.motion:
            self.counters.dynamic_replies += 1
            return NotYetStable("in motion")
        return NotYetStable("no weight displayed")

    async def identify(self) -> str:
        """Not in NCI: raises `ScaleCommandError(kind="not supported")`."""
        raise self._not_supported("identify (serial number)")

    async def tare(self) -> StableWeight:
        """Not in NCI: raises `ScaleCommandError(kind="not supported")`."""
        raise self._not_supported("tare")

    async def clear_tare(self) -> None:
        """Not in NCI: raises `ScaleCommandError(kind="not supported")`."""
        raise self._not_supported("clear tare")

    async def reset(self) -> str | None:
        """Not in NCI: raises `ScaleCommandError(kind="not supported")`."""
        raise self._not_supported("reset")
