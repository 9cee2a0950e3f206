"""Simulated retail scales on a serial line: an MT-SICS balance and an NCI/ECR scale, with faults on demand.

Both speak the device side of `drivers.scale.protocol` (the gateway's own codec) on a pty path, normally
`PtyNullModem.device_path`::

    async with PtyNullModem() as link, MtSicsScaleSim(link.device_path) as scale:
        scale.put(250.0)                      # grams on the pan; the scale is in motion for settle_s
        ... ScaleClient(ScaleSettings(link.host_path), "scale-1") ...

Behaviour, as on the real devices: a weight change puts the scale in motion for `settle_s`; `SI` answers at
once (`S D` while moving); `S`, `Z` and `T` wait for stability up to `stability_timeout_s` and then answer
`S I` / `Z I` / `T I`; `@` cancels a running `SIR` stream and answers the I4 serial-number line; a power-up
forgets the tare and zero and announces itself with the I4 line (after a little boot junk).

Faults: `silent` (the scale ignores everything), `late_reply_s` (every reply held back), `garbage_replies`
(the next n replies replaced by line noise), `inject_garbage(bytes)` (noise now), `power_off()` /
`power_on()` / `power_cycle(off_s)`, and `stuck_in_motion` (never stable). All timing uses the event loop's
clock and `call_later` handles the simulator owns and cancels on close — no background tasks.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from types import TracebackType
from typing import Final, Self

import serial_asyncio_fast

from drivers.scale.protocol import (
    GRAMS_PER_UNIT,
    NEED_MORE,
    MtCommand,
    MtResponse,
    MtSicsCommandDecoder,
    NciCommandDecoder,
    NciReply,
    NciStatus,
    ProtocolError,
    encode_mtsics_response,
    encode_nci_reply,
    mtsics_weight_reply,
)

BOOT_JUNK: Final = b"\x00\xff\xfe\r\n"
"""What a UART emits while the scale's supply ramps up; one garbage line for the client to skip."""

GARBAGE_LINE: Final = b"#\x15\xfe~@~\x7f\r\n"


class _Receiver(asyncio.Protocol):
    def __init__(self, on_bytes: Callable[[bytes], None]) -> None:
        self._on_bytes = on_bytes
        self.closed: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    def data_received(self, data: bytes) -> None:
        self._on_bytes(data)

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.closed.done():
            self.closed.set_result(None)


class _SerialDeviceSim:
    """The device end of a serial line: port handling, power, and the line-level faults."""

    def __init__(self, port: str, *, settle_s: float, capacity_g: float) -> None:
        self.port = port
        self.settle_s = settle_s
        self.capacity_g = capacity_g
        self.silent = False
        """Ignore every command (a dead scale, or one set to another protocol)."""
        self.late_reply_s = 0.0
        """Hold every reply back this long."""
        self.garbage_replies = 0
        """Replace the next n replies with line noise."""
        self.stuck_in_motion = False
        """Never settle (a draught, a vibrating counter, an item touching the housing)."""
        self.powered = True
        self.commands: list[str] = []
        """Every command received while powered, in order (for assertions)."""
        self.replies_sent = 0
        self._gross_g = 0.0
        self._zero_g = 0.0
        self._tare_g = 0.0
        self._moving_until = 0.0
        self._timers: set[asyncio.TimerHandle] = set()
        self._transport: asyncio.Transport | None = None
        self._receiver: _Receiver | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    async def __aenter__(self) -> Self:
        self._loop = asyncio.get_running_loop()
        transport, receiver = await serial_asyncio_fast.create_serial_connection(
            self._loop, lambda: _Receiver(self._received), self.port, baudrate=9600
        )
        assert isinstance(receiver, _Receiver)  # noqa: S101 - our factory made it
        self._transport, self._receiver = transport, receiver
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Cancel pending replies and close the port."""
        self._cancel_timers()
        transport, receiver = self._transport, self._receiver
        self._transport = self._receiver = None
        if transport is not None and receiver is not None:
            transport.close()
            await asyncio.wait([receiver.closed], timeout=5.0)

    # --- physics -------------------------------------------------------------------------------------------

    def _now(self) -> float:
        assert self._loop is not None  # noqa: S101 - set in __aenter__
        return self._loop.time()

    def put(self, grams: float) -> None:
        """Set the gross load on the pan; a change puts the scale in motion for `settle_s`."""
        if grams != self._gross_g:
            self._gross_g = grams
            self._moving_until = self._now() + self.settle_s

    @property
    def gross_g(self) -> float:
        """The load on the pan."""
        return self._gross_g

    @property
    def tare_g(self) -> float:
        """The tare memory."""
        return self._tare_g

    @property
    def net_g(self) -> float:
        """What the display shows, in grams: gross minus zero point minus tare."""
        return self._gross_g - self._zero_g - self._tare_g

    def is_stable(self) -> bool:
        """Settled since the last change, and not stuck."""
        return not self.stuck_in_motion and self._now() >= self._moving_until

    # --- power ---------------------------------------------------------------------------------------------

    def power_off(self) -> None:
        """Cut the supply: pending replies are lost and input is ignored until `power_on`."""
        self.powered = False
        self._cancel_timers()

    def power_on(self) -> None:
        """Restore the supply: tare and zero are forgotten; the scale announces itself."""
        self.powered = True
        self._tare_g = 0.0
        self._zero_g = 0.0
        self._moving_until = self._now() + self.settle_s
        self._power_up()

    async def power_cycle(self, off_s: float) -> None:
        """Off for `off_s`, then on again."""
        self.power_off()
        await asyncio.sleep(off_s)
        self.power_on()

    def _power_up(self) -> None:
        """Device-specific power-up output (none by default)."""

    # --- line ----------------------------------------------------------------------------------------------

    def inject_garbage(self, data: bytes = GARBAGE_LINE) -> None:
        """Write line noise now, whatever the scale is doing."""
        if self._transport is not None:
            self._transport.write(data)

    def _send(self, data: bytes) -> None:
        if not self.powered or self._transport is None:
            return
        if self.garbage_replies > 0:
            self.garbage_replies -= 1
            data = GARBAGE_LINE
        self.replies_sent += 1
        if self.late_reply_s > 0:
            self._later(self.late_reply_s, self._write, data)
        else:
            self._write(data)

    def _write(self, data: bytes) -> None:
        if self.powered and self._transport is not None:
            self._transport.write(data)

    def _later(self, delay_s: float, callback: Callable[..., None], *args: object) -> None:
        assert self._loop is not None  # noqa: S101 - set in __aenter__
        handle: asyncio.TimerHandle

        def fire() -> None:
            self._timers.discard(handle)
            callback(*args)

        handle = self._loop.call_later(delay_s, fire)
        self._timers.add(handle)

    def _cancel_timers(self) -> None:
        for handle in self._timers:
            handle.cancel()
        self._timers.clear()

    def _when_stable(
        self, deadline: float, on_stable: Callable[[], None], on_timeout: Callable[[], None]
    ) -> None:
        """Call `on_stable` once the scale settles, or `on_timeout` at `deadline` (the scale's own timeout)."""
        now = self._now()
        if self.is_stable():
            on_stable()
            return
        if now >= deadline:
            on_timeout()
            return
        wake = deadline if self.stuck_in_motion else min(deadline, self._moving_until)
        self._later(max(wake - now, 0.005), self._when_stable, deadline, on_stable, on_timeout)

    def _received(self, data: bytes) -> None:
        if not self.powered or self.silent:
            return
        self._handle_bytes(data)

    def _handle_bytes(self, data: bytes) -> None:
        raise NotImplementedError


class MtSicsScaleSim(_SerialDeviceSim):
    """A Mettler Toledo balance speaking MT-SICS level 0/1 (S, SI, SIR, Z, T, TA, TAC, I4, @)."""

    def __init__(
        self,
        port: str,
        *,
        serial_number: str = "0123456789",
        unit: str = "g",
        decimals: int = 2,
        settle_s: float = 0.3,
        stability_timeout_s: float = 1.0,
        capacity_g: float = 6200.0,
        underload_g: float = 100.0,
        stream_interval_s: float = 0.1,
        announce_power_up: bool = True,
    ) -> None:
        super().__init__(port, settle_s=settle_s, capacity_g=capacity_g)
        if unit not in GRAMS_PER_UNIT:
            raise ValueError(f"unit {unit!r} is not a mass unit")
        self.serial_number = serial_number
        self.unit = unit
        self.decimals = decimals
        self.stability_timeout_s = stability_timeout_s
        self.underload_g = underload_g
        """Gross this far below the zero point reads as underload (`-`): the pan is lifted off."""
        self.stream_interval_s = stream_interval_s
        self.announce_power_up = announce_power_up
        self.resets = 0
        self._decoder = MtSicsCommandDecoder()
        self._streaming = False

    def _display(self, grams: float) -> float:
        return grams / GRAMS_PER_UNIT[self.unit]

    def _weight_reply(self, cmd_id: str, *, force_stable: bool = False) -> MtResponse:
        if self.net_g > self.capacity_g:
            return MtResponse(cmd_id, "+")
        if self._gross_g - self._zero_g < -self.underload_g:
            return MtResponse(cmd_id, "-")
        status = "S" if force_stable or self.is_stable() else "D"
        return mtsics_weight_reply(
            cmd_id, status, self._display(self.net_g), self.unit, decimals=self.decimals
        )

    def _reply(self, resp: MtResponse) -> None:
        self._send(encode_mtsics_response(resp, quote_strings=resp.cmd == "I4"))

    def _id_line(self) -> MtResponse:
        return MtResponse("I4", "A", (self.serial_number,))

    def _power_up(self) -> None:
        self._streaming = False
        self._decoder = MtSicsCommandDecoder()
        if self.announce_power_up:
            self._write(BOOT_JUNK)
            self._reply(self._id_line())

    def power_off(self) -> None:
        """Cut the supply (also stops a running SIR stream)."""
        super().power_off()
        self._streaming = False

    def _handle_bytes(self, data: bytes) -> None:
        self._decoder.feed(data)
        while True:
            try:
                item = self._decoder.next_command()
            except ProtocolError:
                self._reply(MtResponse("ES", ""))
                continue
            if item is NEED_MORE:
                return
            assert isinstance(item, MtCommand)  # noqa: S101 - narrowing for mypy
            self.commands.append(item.cmd)
            # Any command ends a running SIR stream (MT-SICS: a new command cancels repetition).
            if self._streaming:
                self._streaming = False
                self._cancel_timers()
            self._command(item)

    def _command(self, command: MtCommand) -> None:
        cmd = command.cmd
        deadline = self._now() + self.stability_timeout_s
        if cmd == "SI":
            self._reply(self._weight_reply("S"))
        elif cmd == "S":
            self._when_stable(
                deadline,
                lambda: self._reply(self._weight_reply("S", force_stable=True)),
                lambda: self._reply(MtResponse("S", "I")),
            )
        elif cmd == "SIR":
            self._streaming = True
            self._stream()
        elif cmd == "Z":
            self._when_stable(deadline, self._do_zero, lambda: self._reply(MtResponse("Z", "I")))
        elif cmd == "T":
            self._when_stable(deadline, self._do_tare, lambda: self._reply(MtResponse("T", "I")))
        elif cmd == "TA":
            self._reply(
                mtsics_weight_reply("TA", "A", self._display(self._tare_g), self.unit, decimals=self.decimals)
            )
        elif cmd == "TAC":
            self._tare_g = 0.0
            self._reply(MtResponse("TAC", "A"))
        elif cmd == "I4":
            self._reply(self._id_line())
        elif cmd == "@":
            # Reset: the state after switching on, without a new zero (MT-SICS "@"); the tare is cleared.
            self.resets += 1
            self._tare_g = 0.0
            self._reply(self._id_line())
        else:
            self._reply(MtResponse("ES", ""))

    def _stream(self) -> None:
        if not self._streaming or not self.powered:
            return
        self._reply(self._weight_reply("S"))
        self._later(self.stream_interval_s, self._stream)

    def _do_zero(self) -> None:
        self._zero_g = self._gross_g
        self._tare_g = 0.0
        self._reply(MtResponse("Z", "A"))

    def _do_tare(self) -> None:
        gross_net = self._gross_g - self._zero_g
        if gross_net > self.capacity_g:
            self._reply(MtResponse("T", "+"))
            return
        if gross_net < -self.underload_g:
            self._reply(MtResponse("T", "-"))
            return
        self._tare_g = gross_net
        self._reply(
            mtsics_weight_reply("T", "S", self._display(self._tare_g), self.unit, decimals=self.decimals)
        )


class NciScaleSim(_SerialDeviceSim):
    """An NCI/ECR retail scale (W weight, S status, Z zero; anything else is answered with `?`)."""

    def __init__(
        self,
        port: str,
        *,
        unit: str = "lb",
        decimals: int = 2,
        width: int = 7,
        settle_s: float = 0.3,
        capacity_g: float = 15_000.0,
        underload_g: float = 100.0,
    ) -> None:
        super().__init__(port, settle_s=settle_s, capacity_g=capacity_g)
        if unit not in GRAMS_PER_UNIT:
            raise ValueError(f"unit {unit!r} is not a mass unit")
        self.unit = unit
        self.decimals = decimals
        self.width = width
        self.underload_g = underload_g
        self._decoder = NciCommandDecoder()

    def status(self) -> NciStatus:
        """The status bytes as the scale would send them now."""
        display = self.net_g / GRAMS_PER_UNIT[self.unit]
        half_step = 0.5 * 10.0**-self.decimals
        return NciStatus(
            motion=not self.is_stable(),
            at_zero=abs(display) < half_step,
            over_capacity=self.net_g > self.capacity_g,
            under_capacity=self._gross_g - self._zero_g < -self.underload_g,
        )

    def _handle_bytes(self, data: bytes) -> None:
        self._decoder.feed(data)
        while True:
            try:
                cmd = self._decoder.next_command()
            except ProtocolError:
                self._send(encode_nci_reply(NciReply(status=None, error="bad command")))
                continue
            if cmd is NEED_MORE:
                return
            assert isinstance(cmd, str)  # noqa: S101 - narrowing for mypy
            self.commands.append(cmd)
            self._command(cmd)

    def _command(self, cmd: str) -> None:
        if cmd == "W":
            status = self.status()
            out_of_range = status.over_capacity or status.under_capacity
            weight = None if out_of_range else self.net_g / GRAMS_PER_UNIT[self.unit]
            reply = NciReply(status=status, weight=weight, unit=self.unit)
            self._send(encode_nci_reply(reply, decimals=self.decimals, width=self.width))
        elif cmd == "S":
            self._send(encode_nci_reply(NciReply(status=self.status())))
        elif cmd == "Z":
            if self.is_stable():  # a moving scale ignores zero; the status it returns says why
                self._zero_g = self._gross_g
                self._tare_g = 0.0
            self._send(encode_nci_reply(NciReply(status=self.status())))
        else:
            self._send(encode_nci_reply(NciReply(status=None, error="bad command")))
