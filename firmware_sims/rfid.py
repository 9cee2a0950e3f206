"""A simulated serial UHF module (M100 / JRD-4035 family) on a serial device path, e.g. a `PtyNullModem` end.

It speaks the device side with the gateway's own codec (`drivers.rfid.protocol`): it decodes command frames,
answers single inventory (0x22) with one round of tag notices (or error 0x15 when no tag replied), runs
multi-poll inventory (0x27) as a named task doing one round every `round_s` until its round count is spent,
and answers stop (0x28). Like the real module, a multi-poll round in which no tag replied sends nothing.

The tag population is the zone in front of this module's antenna: `tags` maps EPC → `SimTag` with its RSSI
and its own read probability (default `read_probability`, e.g. 0.65 for a still tag on the shelf; a tag on
the neighbouring shelf gets a small one). Tests and scenarios add and remove tags while it runs.

Faults (the issue's bad-input list; line-level faults such as bit flips and a late or dead line live on
`PtyNullModem`):

- `garbage_next(n)`: n random bytes before the next frame;
- `bad_checksum_next(n)`: the next n frames carry a wrong checksum;
- `bad_crc_next(n)`: the next n tag notices carry a wrong Gen2 CRC (the frame checksum is right);
- `half_frame_next()`: the next frame is cut in half (a module reset mid-frame);
- `silent`: the module neither answers nor reports (dead, unpowered);
- `power_cycle()`: the module forgets a running inventory, as after a brown-out.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from collections.abc import Iterable
from dataclasses import dataclass
from types import TracebackType

import serial_asyncio_fast

from drivers.rfid.protocol import (
    CMD_MULTI_INVENTORY,
    CMD_SINGLE_INVENTORY,
    CMD_STOP_MULTI_INVENTORY,
    ERR_NO_TAG,
    Frame,
    FrameDecoder,
    FrameType,
    NeedMore,
    ProtocolError,
    crc16_genibus,
    error_frame,
    stop_response,
    tag_notice_frame,
)

_log = logging.getLogger(__name__)

ERR_COMMAND: int = 0x17


@dataclass(slots=True)
class SimTag:
    """One tag in the antenna field."""

    epc: str
    rssi_dbm: int = -55
    read_probability: float | None = None
    """Chance a round reads this tag; None = the module's default."""


class UhfModuleSim:
    """`async with UhfModuleSim(link.device_path, tags=[...]) as module:` — the device side of one module."""

    def __init__(
        self,
        device_path: str,
        *,
        tags: Iterable[str | SimTag] = (),
        read_probability: float = 0.65,
        round_s: float = 0.02,
        rssi_jitter_db: int = 3,
        baudrate: int = 115200,
        seed: int = 0,
    ) -> None:
        if not 0 <= read_probability <= 1:
            raise ValueError("read_probability must be in [0, 1]")
        if round_s <= 0:
            raise ValueError("round_s must be > 0")
        self.device_path = device_path
        self.read_probability = read_probability
        self.round_s = round_s
        self.rssi_jitter_db = rssi_jitter_db
        self.baudrate = baudrate
        self.tags: dict[str, SimTag] = {}
        for tag in tags:
            self.add(tag)
        self.silent = False
        self.commands_seen: list[int] = []
        self.rounds_done = 0
        self.notices_sent = 0
        self.frame_errors = 0
        self._rng = random.Random(seed)
        self._garbage_bytes = 0
        self._bad_checksums = 0
        self._bad_crcs = 0
        self._half_frames = 0
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None
        self._rx_task: asyncio.Task[None] | None = None
        self._inventory_task: asyncio.Task[None] | None = None

    # --- population --------------------------------------------------------------------------------------

    def add(self, tag: str | SimTag) -> None:
        """Put a tag into the field."""
        t = SimTag(tag) if isinstance(tag, str) else tag
        self.tags[t.epc.upper()] = t

    def remove(self, epc: str) -> None:
        """Take a tag out of the field (a sale, a move)."""
        self.tags.pop(epc.upper(), None)

    # --- faults ------------------------------------------------------------------------------------------

    def garbage_next(self, n_bytes: int = 16) -> None:
        """Send `n_bytes` random bytes before the next frame."""
        self._garbage_bytes += n_bytes

    def bad_checksum_next(self, frames: int = 1) -> None:
        """Corrupt the checksum of the next `frames` frames."""
        self._bad_checksums += frames

    def bad_crc_next(self, notices: int = 1) -> None:
        """Corrupt the Gen2 CRC of the next `notices` tag notices."""
        self._bad_crcs += notices

    def half_frame_next(self) -> None:
        """Send only the first half of the next frame."""
        self._half_frames += 1

    def power_cycle(self) -> None:
        """Forget the running inventory and any partial state, as a module does after a reset."""
        self._stop_inventory()

    @property
    def inventory_running(self) -> bool:
        """True while a multi-poll inventory is running."""
        return self._inventory_task is not None and not self._inventory_task.done()

    # --- lifecycle ---------------------------------------------------------------------------------------

    async def __aenter__(self) -> UhfModuleSim:
        self._reader, self._writer = await serial_asyncio_fast.open_serial_connection(
            url=self.device_path, baudrate=self.baudrate
        )
        self._rx_task = asyncio.create_task(self._receive(), name=f"uhf_sim[{self.device_path}].rx")
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Stop every task and close the port."""
        self._stop_inventory()
        tasks = [t for t in (self._rx_task, self._inventory_task) if t is not None]
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.wait(tasks)
        self._rx_task = self._inventory_task = None
        if self._writer is not None:
            with contextlib.suppress(OSError):
                self._writer.close()
            self._writer = None

    # --- device behaviour --------------------------------------------------------------------------------

    async def _receive(self) -> None:
        assert self._reader is not None  # noqa: S101 - set in __aenter__
        decoder = FrameDecoder()
        while True:
            data = await self._reader.read(4096)
            if not data:
                return
            decoder.receive_data(data)
            while True:
                try:
                    event = decoder.next_event()
                except ProtocolError:
                    self.frame_errors += 1
                    continue
                if isinstance(event, NeedMore):
                    break
                self._on_command(event)

    def _on_command(self, frame: Frame) -> None:
        if frame.frame_type != FrameType.COMMAND:
            self.frame_errors += 1
            return
        self.commands_seen.append(frame.command)
        if self.silent:
            return
        if frame.command == CMD_SINGLE_INVENTORY:
            if not self._one_round():
                self._emit(error_frame(ERR_NO_TAG))
        elif frame.command == CMD_MULTI_INVENTORY and len(frame.params) == 3:
            self._stop_inventory()
            rounds = int.from_bytes(frame.params[1:3], "big")
            self._inventory_task = asyncio.create_task(
                self._multi_poll(rounds), name=f"uhf_sim[{self.device_path}].inventory"
            )
        elif frame.command == CMD_STOP_MULTI_INVENTORY:
            self._stop_inventory()
            self._emit(stop_response())
        else:
            self._emit(error_frame(ERR_COMMAND))

    def _stop_inventory(self) -> None:
        if self._inventory_task is not None:
            self._inventory_task.cancel()
            self._inventory_task = None

    async def _multi_poll(self, rounds: int) -> None:
        for _ in range(rounds):
            if not self.silent:
                self._one_round()
            await asyncio.sleep(self.round_s)

    def _one_round(self) -> int:
        """One inventory round: a notice per tag that replied; returns how many did."""
        self.rounds_done += 1
        replied = 0
        for tag in list(self.tags.values()):
            p = self.read_probability if tag.read_probability is None else tag.read_probability
            if self._rng.random() >= p:
                continue
            replied += 1
            epc = bytes.fromhex(tag.epc)
            rssi = max(
                -128, min(127, tag.rssi_dbm + self._rng.randint(-self.rssi_jitter_db, self.rssi_jitter_db))
            )
            crc: int | None = None
            if self._bad_crcs > 0:
                self._bad_crcs -= 1
                crc = crc16_genibus(((len(epc) // 2) << 11).to_bytes(2, "big") + epc) ^ 0x0001
            self._emit(tag_notice_frame(epc, rssi, crc=crc))
            self.notices_sent += 1
        return replied

    def _emit(self, frame: bytes) -> None:
        if self._writer is None or self.silent:
            return
        out = b""
        if self._garbage_bytes > 0:
            out += self._rng.randbytes(self._garbage_bytes)
            self._garbage_bytes = 0
        if self._bad_checksums > 0:
            self._bad_checksums -= 1
            frame = frame[:-2] + bytes(((frame[-2] + 1) & 0xFF, frame[-1]))
        if self._half_frames > 0:
            self._half_frames -= 1
            frame = frame[: len(frame) // 2]
        self._writer.write(out + frame)
