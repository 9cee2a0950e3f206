"""Is there an MT-SICS balance on this port, and what is its serial number? — one short, bounded probe.

MT-SICS level 0 (Mettler Toledo MT-SICS reference manual) gives every balance two identification commands:

    host → scale   @<CR><LF>     reset: cancel running commands and streams; answered with the I4 line
    scale → host   I4 A "0123456789"<CR><LF>
    host → scale   I4<CR><LF>    serial number
    scale → host   I4 A "0123456789"<CR><LF>

`@` first, because a balance left streaming (`SIR`) by an earlier program fills the line with weight lines
that would hide the answer to anything else; it also needs no stable weight, so an answer comes at once.
Some firmware answers `@` with `@ A` instead of the I4 line; then `I4` is asked separately. Any valid MT-SICS
line (even `ES`, a syntax error) proves the protocol; bytes that are not MT-SICS lines suggest a wrong baud
rate or another device. Every wait is bounded by `timeout_s`: a silent port costs at most two timeouts.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Final

from drivers.scale.protocol import (
    NEED_MORE,
    MtResponse,
    MtSicsDecoder,
    ProtocolError,
    encode_mtsics_command,
)
from drivers.serial_line import Parity, SerialLine, SerialLineError

DEFAULT_BAUDRATE: Final = 9600
"""MT-SICS factory setting (9600 8N1)."""
PROTOCOL: Final = "mt-sics"


@dataclass(frozen=True, slots=True)
class ScaleProbeResult:
    """What the probe found on one port.

    `found` is True when the port speaks MT-SICS; `serial_number` is set when the balance told it. `error` is
    set instead when the port could not be used at all (missing, busy, unplugged).
    """

    port: str
    baudrate: int
    found: bool
    serial_number: str | None = None
    detail: str = ""
    lines: tuple[str, ...] = field(default=())
    """The MT-SICS replies received, as text (for the installer's eyes and for `--json`)."""
    error: str | None = None


def _line_text(resp: MtResponse) -> str:
    return " ".join([resp.cmd, resp.status, *resp.args]).strip()


class _Collector:
    """Decodes received bytes into MT-SICS replies; counts what was not one."""

    def __init__(self) -> None:
        self.decoder = MtSicsDecoder()
        self.replies: list[MtResponse] = []
        self.garbage = 0

    def feed(self, data: bytes) -> None:
        self.decoder.feed(data)
        while True:
            try:
                item = self.decoder.next_response()
            except ProtocolError:
                self.garbage += 1
                continue
            if item is NEED_MORE:
                return
            assert isinstance(item, MtResponse)  # noqa: S101 - narrowing for mypy
            self.replies.append(item)


def _serial_from(replies: list[MtResponse]) -> str | None:
    # The I4 line carries the serial number; some firmware puts it in its `@ A "<SNR>"` reply instead.
    for r in replies:
        if r.cmd in ("I4", "@") and r.status == "A" and r.args:
            return r.args[0]
    return None


async def probe_mtsics(
    port: str,
    *,
    baudrate: int = DEFAULT_BAUDRATE,
    parity: Parity = "N",
    timeout_s: float = 0.5,
) -> ScaleProbeResult:
    """Send `@` (and `I4` if needed) and report what answered; never waits more than about 2 × `timeout_s`."""
    collector = _Collector()
    received = 0

    async def ask(line: SerialLine, cmd: str) -> None:
        nonlocal received
        first = len(collector.replies)
        line.write(encode_mtsics_command(cmd))

        def answered(_: bytes) -> bool:
            collector.feed(line.take())
            new = collector.replies[first:]
            return _serial_from(new) is not None or any(r.cmd in ("@", "ES", "ET", "EL") for r in new)

        await line.wait_until(answered, timeout_s)
        received = line.bytes_in

    try:
        async with SerialLine(port, baudrate=baudrate, parity=parity) as line:
            await ask(line, "@")
            if collector.replies and _serial_from(collector.replies) is None:
                await ask(line, "I4")
    except SerialLineError as exc:
        return ScaleProbeResult(port, baudrate, found=False, detail=exc.reason, error=exc.reason)
    lines = tuple(_line_text(r) for r in collector.replies)
    serial = _serial_from(collector.replies)
    if serial is not None:
        return ScaleProbeResult(
            port, baudrate, True, serial, f"MT-SICS balance, serial number {serial}", lines
        )
    if collector.replies:
        return ScaleProbeResult(
            port, baudrate, True, None, "speaks MT-SICS but did not tell its serial number (I4)", lines
        )
    if received:
        return ScaleProbeResult(
            port,
            baudrate,
            False,
            detail=f"{received} bytes back, none an MT-SICS line (wrong baud rate, or another device)",
        )
    return ScaleProbeResult(port, baudrate, False, detail=f"no answer to MT-SICS @ within {timeout_s:g} s")
