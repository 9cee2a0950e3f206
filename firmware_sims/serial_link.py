"""A virtual RS-485 cable made of two pty pairs, with faults on demand.

A single pty pair has only one end with a path (the slave); the master end is a bare file descriptor. Both a
pymodbus serial server (the simulated transmitter) and the gateway's serial client want to *open a path*, so
this module makes two pairs and relays bytes between their master ends::

    simulator ─ device_path (slave A) ═ master A ─┐ relay ┌─ master B ═ host_path (slave B) ─ gateway

The relay is also where line faults are injected, exactly where a real RS-485 line would garble them:
`corrupt_next(n)` flips one bit in the next n device→host chunks (the client sees a CRC error),
`delay_s` holds device→host bytes back (a late reply), and `silent` drops them (a dead device).
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import fcntl
import logging
import os
import random
import tty
from collections import deque
from types import TracebackType

_log = logging.getLogger(__name__)

_CHUNK = 4096


class _Pipe:
    """Non-blocking writer to one master fd with a small queue for short writes."""

    def __init__(self, loop: asyncio.AbstractEventLoop, fd: int) -> None:
        self._loop = loop
        self._fd = fd
        self._pending: deque[bytes] = deque()
        self._writing = False

    def write(self, data: bytes) -> None:
        if not data:
            return
        self._pending.append(data)
        if not self._writing:
            self._flush()

    def _flush(self) -> None:
        while self._pending:
            chunk = self._pending[0]
            try:
                n = os.write(self._fd, chunk)
            except BlockingIOError:
                n = 0
            except OSError as exc:
                # The far end has no reader (e.g. the client closed its port): bytes on a dead line are lost,
                # as on a real cable.
                if exc.errno in (errno.EIO, errno.EBADF):
                    self._pending.clear()
                    break
                raise
            if n < len(chunk):
                self._pending[0] = chunk[n:]
                if not self._writing:
                    self._writing = True
                    self._loop.add_writer(self._fd, self._flush)
                return
            self._pending.popleft()
        if self._writing:
            self._writing = False
            self._loop.remove_writer(self._fd)

    def close(self) -> None:
        if self._writing:
            self._loop.remove_writer(self._fd)
            self._writing = False
        self._pending.clear()


class PtyNullModem:
    """Two pty pairs joined by a relay task; use as `async with PtyNullModem() as link:`."""

    def __init__(self, *, seed: int = 0) -> None:
        self.device_path = ""
        """Path the simulated device (pymodbus serial server) opens."""
        self.host_path = ""
        """Path the gateway opens, as it would open /dev/ttyUSB0."""
        self.delay_s = 0.0
        """Hold device→host bytes back this long (a late reply)."""
        self.silent = False
        """Drop device→host bytes (a dead device on the line)."""
        self.bytes_device_to_host = 0
        self.bytes_host_to_device = 0
        self.corrupted_chunks = 0
        self._corrupt_budget = 0
        self._rng = random.Random(seed)
        self._fds: list[int] = []
        self._loop: asyncio.AbstractEventLoop | None = None
        self._to_host: _Pipe | None = None
        self._to_device: _Pipe | None = None
        self._master_dev = self._master_host = -1

    def corrupt_next(self, chunks: int = 1) -> None:
        """Flip one random bit in each of the next `chunks` device→host reads (the client sees a bad CRC)."""
        self._corrupt_budget += chunks

    async def __aenter__(self) -> PtyNullModem:
        self._loop = asyncio.get_running_loop()
        self._master_dev, slave_dev = os.openpty()
        self._master_host, slave_host = os.openpty()
        self._fds = [self._master_dev, slave_dev, self._master_host, slave_host]
        for fd in (slave_dev, slave_host):
            # Raw mode: no echo, no CR/LF translation, no signal characters — an RS-485 line carries binary.
            tty.setraw(fd)
        for fd in (self._master_dev, self._master_host):
            fcntl.fcntl(fd, fcntl.F_SETFL, fcntl.fcntl(fd, fcntl.F_GETFL) | os.O_NONBLOCK)
        # The slave fds stay open here for the link's lifetime: when the last opener of a pty slave closes it,
        # reads on the master fail with EIO and the "cable" would break on every client reconnect.
        self.device_path = os.ttyname(slave_dev)
        self.host_path = os.ttyname(slave_host)
        self._to_host = _Pipe(self._loop, self._master_host)
        self._to_device = _Pipe(self._loop, self._master_dev)
        self._loop.add_reader(self._master_dev, self._from_device)
        self._loop.add_reader(self._master_host, self._from_host)
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def close(self) -> None:
        """Stop relaying and close every fd."""
        if self._loop is not None:
            for fd in (self._master_dev, self._master_host):
                with contextlib.suppress(ValueError, OSError):
                    self._loop.remove_reader(fd)
        for pipe in (self._to_host, self._to_device):
            if pipe is not None:
                pipe.close()
        for fd in self._fds:
            with contextlib.suppress(OSError):
                os.close(fd)
        self._fds = []
        self._loop = None

    @staticmethod
    def _read(fd: int) -> bytes:
        try:
            return os.read(fd, _CHUNK)
        except (BlockingIOError, InterruptedError):
            return b""
        except OSError as exc:
            if exc.errno == errno.EIO:  # no process has the slave open right now
                return b""
            raise

    def _from_device(self) -> None:
        data = self._read(self._master_dev)
        if not data or self.silent:
            return
        self.bytes_device_to_host += len(data)
        if self._corrupt_budget > 0:
            self._corrupt_budget -= 1
            self.corrupted_chunks += 1
            i = self._rng.randrange(len(data))
            data = data[:i] + bytes((data[i] ^ (1 << self._rng.randrange(8)),)) + data[i + 1 :]
        assert self._to_host is not None  # noqa: S101 - set in __aenter__
        if self.delay_s > 0 and self._loop is not None:
            self._loop.call_later(self.delay_s, self._to_host.write, data)
        else:
            self._to_host.write(data)

    def _from_host(self) -> None:
        data = self._read(self._master_host)
        if not data:
            return
        self.bytes_host_to_device += len(data)
        assert self._to_device is not None  # noqa: S101 - set in __aenter__
        self._to_device.write(data)
