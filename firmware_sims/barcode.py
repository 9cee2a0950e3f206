"""A simulated serial/USB-CDC barcode scanner that "scans" codes onto a tty, with the faults lanes see.

The device side of `drivers.barcode`: each scan is built by `drivers.barcode.protocol.encode_scan` (optional
AIM symbology identifier + data + CR/LF/CRLF suffix), the same codec the gateway decodes with. Faults:

- `garbage()`: random non-text bytes (a bad cable, a scanner in the wrong mode), optionally as a line;
- `half_line()`: the start of a scan and then silence (a scanner reset mid-transmission);
- `unplug()` / `replug()`: the scanner goes away and comes back. On a plain device path this closes and
  reopens the simulator's end only (an RS-232 scanner pulled from a USB-serial adapter that stays plugged:
  the host sees silence). On a `HotplugPort` the host's tty vanishes too — its open fd hangs up and the
  path disappears — exactly what unplugging a USB-CDC scanner does to `/dev/ttyACM0`.

    async with HotplugPort(tmp_path) as port, BarcodeScannerSim(port) as scanner:
        client = ScannerClient(ScannerSettings(port.host_path), "lane-1")   # a stable by-id style path
        await scanner.scan("5901234123457", "]E0")
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import os
import random
import tty
from pathlib import Path
from types import TracebackType

from drivers.barcode.protocol import Terminator, encode_scan

from .serial_link import PtyNullModem

_log = logging.getLogger(__name__)

_NON_TEXT = bytes(b for b in range(256) if b < 0x20 and b not in (0x0A, 0x0D, 0x1D)) + bytes(
    range(0x80, 0x100)
)
"""Bytes that can never be part of a valid scan line (C0 controls except GS, and bytes invalid as UTF-8 starts)."""


class HotplugPort:
    """A USB-CDC tty that can be unplugged: a `PtyNullModem` reached through a stable symlink.

    `host_path` is a symlink (like `/dev/serial/by-id/usb-…-if00`) that exists only while "plugged in"; each
    plug creates a fresh pty pair behind it, and each unplug closes the pair, so a client holding the old tty
    open sees a hang-up, as with a real USB disconnect.
    """

    def __init__(self, directory: str | Path, name: str = "usb-Shelfgate_Sim_Scanner-if00") -> None:
        self.host_path = str(Path(directory) / name)
        self.link: PtyNullModem | None = None

    @property
    def device_path(self) -> str:
        """The simulator's end of the current pty pair."""
        if self.link is None:
            raise RuntimeError("the port is unplugged")
        return self.link.device_path

    @property
    def plugged(self) -> bool:
        return self.link is not None

    async def plug(self) -> None:
        """Create a new pty pair and point `host_path` at it."""
        if self.link is not None:
            return
        link = PtyNullModem()
        await link.__aenter__()
        self.link = link
        tmp = self.host_path + ".new"
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        os.symlink(link.host_path, tmp)
        os.replace(tmp, self.host_path)

    def unplug(self) -> None:
        """Remove `host_path` and close the pty pair (the host's open fd hangs up)."""
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.host_path)
        link, self.link = self.link, None
        if link is not None:
            link.close()

    async def __aenter__(self) -> HotplugPort:
        await self.plug()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.unplug()


class BarcodeScannerSim:
    """A scanner writing scans to `port` (a tty path, or a `HotplugPort` for USB unplug/replug)."""

    def __init__(
        self,
        port: str | HotplugPort,
        *,
        aim_prefix: bool = True,
        terminator: Terminator = Terminator.CR,
        seed: int = 0,
    ) -> None:
        self.port = port
        self.aim_prefix = aim_prefix
        """Send the AIM symbology identifier before the data (a setting on every retail scanner)."""
        self.terminator = terminator
        self.scans_sent = 0
        self._rng = random.Random(seed)
        self._fd = -1

    @property
    def plugged(self) -> bool:
        return self._fd >= 0

    async def __aenter__(self) -> BarcodeScannerSim:
        await self.replug()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self._close_fd()

    async def scan(self, data: str, symbology_id: str | None = "]E0") -> None:
        """Transmit one scan of `data` (the AIM identifier is sent only when `aim_prefix` is on)."""
        await self.send_raw(encode_scan(data, symbology_id if self.aim_prefix else None, self.terminator))
        self.scans_sent += 1

    async def garbage(self, n_bytes: int = 32, *, as_line: bool = True) -> bytes:
        """Transmit `n_bytes` of non-text noise, followed by the terminator when `as_line`; return the noise."""
        noise = bytes(self._rng.choice(_NON_TEXT) for _ in range(n_bytes))
        await self.send_raw(noise + (self.terminator.value.encode() if as_line else b""))
        return noise

    async def half_line(self, data: str, symbology_id: str | None = "]E0") -> bytes:
        """Transmit the first half of a scan, no terminator, then stay silent; return what was sent."""
        full = encode_scan(data, symbology_id if self.aim_prefix else None, self.terminator)
        half = full[: max(1, (len(full) - len(self.terminator.value)) // 2)]
        await self.send_raw(half)
        return half

    async def unplug(self) -> None:
        """Close the scanner's end; with a `HotplugPort` the host's tty vanishes too."""
        self._close_fd()
        if isinstance(self.port, HotplugPort):
            self.port.unplug()

    async def replug(self) -> None:
        """Come back (on a `HotplugPort`: a fresh tty behind the same `host_path`)."""
        if self._fd >= 0:
            return
        if isinstance(self.port, HotplugPort):
            await self.port.plug()
            path = self.port.device_path
        else:
            path = self.port
        fd = os.open(path, os.O_RDWR | os.O_NOCTTY | os.O_NONBLOCK)
        tty.setraw(fd)
        self._fd = fd

    async def send_raw(self, data: bytes) -> None:
        """Write bytes to the tty, waiting for room if the line is backed up."""
        if self._fd < 0:
            raise RuntimeError("the scanner is unplugged")
        loop = asyncio.get_running_loop()
        view = memoryview(data)
        while view:
            try:
                n = os.write(self._fd, view)
            except BlockingIOError:
                n = 0
            except OSError as exc:
                if exc.errno == errno.EIO:  # nobody on the other end: bytes on a dead line are lost
                    return
                raise
            view = view[n:]
            if view:
                ready: asyncio.Future[None] = loop.create_future()
                loop.add_writer(self._fd, _set_done, ready)
                try:
                    await ready
                finally:
                    loop.remove_writer(self._fd)

    def _close_fd(self) -> None:
        fd, self._fd = self._fd, -1
        if fd >= 0:
            with contextlib.suppress(OSError):
                os.close(fd)


def _set_done(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)
