"""Test helper: an RS-485 multi-drop line made of pty pairs, on which two devices can talk at once.

`firmware_sims.serial_link.PtyNullModem` joins exactly two ends, so two simulated transmitters cannot share
it: a request read by one server is gone for the other. This line gives each device its own pty pair and
relays like the real bus does::

    master ─ host_path ═ relay ═╦═ device_paths[0] ─ server A
                                ╚═ device_paths[1] ─ server B

* master → devices: every byte goes to every device (all receivers hear the master);
* devices → master: bytes arriving within `collision_window_s` of each other form one burst. A burst from
  one device passes unchanged; a burst from several is a collision and is merged byte by byte with AND —
  a simple model of two drivers fighting on the line (where both drive, a 0 bit wins, as on a wired-AND
  line; real transceivers give undefined levels, which the model only makes more deterministic). The master
  sees one frame whose CRC (almost surely) fails. Replies farther apart than the window arrive one after the
  other, as a good frame followed by stray bytes — also what a real line shows when one device is slower.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import fcntl
import os
import tty
from types import TracebackType


def _open_pair() -> tuple[int, int, str]:
    master, slave = os.openpty()
    tty.setraw(slave)  # binary line: no echo, no CR/LF translation
    fcntl.fcntl(master, fcntl.F_SETFL, fcntl.fcntl(master, fcntl.F_GETFL) | os.O_NONBLOCK)
    return master, slave, os.ttyname(slave)


def _write_all(fd: int, data: bytes) -> None:
    # Replies and requests are a few bytes; a pty's buffer holds kilobytes, so a short write is not expected.
    with contextlib.suppress(BlockingIOError):
        os.write(fd, data)


def merge_collision(chunks: list[bytes]) -> bytes:
    """AND the devices' bytes position by position; where only one device sent a byte, it passes as sent."""
    out = bytearray(max(len(c) for c in chunks))
    for i in range(len(out)):
        value = 0xFF
        for chunk in chunks:
            if i < len(chunk):
                value &= chunk[i]
        out[i] = value
    return bytes(out)


class PtyMultidrop:
    """`async with PtyMultidrop(devices=2) as line:` — `line.host_path`, `line.device_paths[i]`."""

    def __init__(self, devices: int = 2, *, collision_window_s: float = 0.015) -> None:
        if devices < 1:
            raise ValueError("a line needs at least one device")
        self.devices = devices
        self.collision_window_s = collision_window_s
        self.host_path = ""
        self.device_paths: list[str] = []
        self.collisions = 0
        """Bursts in which more than one device transmitted."""
        self._fds: list[int] = []
        self._host_master = -1
        self._device_masters: list[int] = []
        self._burst: dict[int, bytearray] = {}
        self._flush_handle: asyncio.TimerHandle | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    async def __aenter__(self) -> PtyMultidrop:
        self._loop = asyncio.get_running_loop()
        master, slave, path = _open_pair()
        self._fds += [master, slave]  # slaves stay open so the masters never read EIO between opens
        self._host_master, self.host_path = master, path
        for _ in range(self.devices):
            master, slave, path = _open_pair()
            self._fds += [master, slave]
            self._device_masters.append(master)
            self.device_paths.append(path)
        self._loop.add_reader(self._host_master, self._from_host)
        for index, fd in enumerate(self._device_masters):
            self._loop.add_reader(fd, self._from_device, index)
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self._flush_handle is not None:
            self._flush_handle.cancel()
        if self._loop is not None:
            for fd in [self._host_master, *self._device_masters]:
                with contextlib.suppress(ValueError, OSError):
                    self._loop.remove_reader(fd)
        for fd in self._fds:
            with contextlib.suppress(OSError):
                os.close(fd)
        self._fds = []

    @staticmethod
    def _read(fd: int) -> bytes:
        try:
            return os.read(fd, 4096)
        except (BlockingIOError, InterruptedError):
            return b""
        except OSError as exc:
            if exc.errno == errno.EIO:
                return b""
            raise

    def _from_host(self) -> None:
        data = self._read(self._host_master)
        for fd in self._device_masters:
            _write_all(fd, data)

    def _from_device(self, index: int) -> None:
        data = self._read(self._device_masters[index])
        if not data:
            return
        self._burst.setdefault(index, bytearray()).extend(data)
        if self._flush_handle is None and self._loop is not None:
            self._flush_handle = self._loop.call_later(self.collision_window_s, self._flush)

    def _flush(self) -> None:
        self._flush_handle = None
        burst, self._burst = self._burst, {}
        chunks = [bytes(b) for _, b in sorted(burst.items())]
        if not chunks:
            return
        if len(chunks) > 1:
            self.collisions += 1
            _write_all(self._host_master, merge_collision(chunks))
        else:
            _write_all(self._host_master, chunks[0])
