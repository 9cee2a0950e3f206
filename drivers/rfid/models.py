"""Typed values the serial UHF reader client hands to the gateway, and the exceptions it raises.

`TagRead` and `Availability` are what `UhfReaderClient.events()` yields; `ReaderCounters` is the live health
record of one reader (the gateway reads `snapshot()` for its status page).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

from drivers.rfid.epc import RawEpc, Sgtin96


@dataclass(frozen=True, slots=True)
class TagRead:
    """One tag seen once by one reader.

    `ts` is wall-clock seconds for storage; `mono` is `time.monotonic()` for presence windows, which must not
    jump when NTP steps the clock. `identity` is the SGTIN-96 decode, or `RawEpc` for other schemes and for
    malformed SGTINs (`malformed` then says why).
    """

    reader_id: str
    epc: str
    rssi_dbm: int
    pc: int
    ts: float
    mono: float
    identity: Sgtin96 | RawEpc
    malformed: str | None = None


@dataclass(frozen=True, slots=True)
class Availability:
    """A change of a reader's availability; yielded once per change, never per failed probe."""

    reader_id: str
    online: bool
    reason: str
    ts: float


@dataclass(slots=True)
class ReaderCounters:
    """Running health counters of one reader (mutated only by its client's loop)."""

    frames: int = 0
    tag_reads: int = 0
    checksum_errors: int = 0
    frame_errors: int = 0
    """Frames rejected for a bad length, type or end byte (not the checksum)."""
    crc_errors: int = 0
    """Tag notices whose Gen2 CRC did not match: the read is dropped."""
    malformed_epc: int = 0
    """Reads whose EPC claims SGTIN-96 but breaks it: yielded as raw, counted here."""
    garbage_bytes: int = 0
    truncated_frames: int = 0
    """Partial frames abandoned because the line went idle mid-frame."""
    error_frames: int = 0
    """Error responses from the module (e.g. 0x15 "no tag" after a single inventory)."""
    dropped_reads: int = 0
    """Reads dropped because the consumer fell behind (bounded queue full)."""
    probes: int = 0
    """Liveness probes sent after silence (stop + restart of the inventory)."""
    connects: int = 0
    disconnects: int = 0
    connect_failures: int = 0
    last_seen_mono: float | None = None
    last_error: str | None = None
    online: bool = False

    def snapshot(self) -> dict[str, int | float | str | bool | None]:
        """A plain, JSON-ready copy."""
        return asdict(self)


class RfidDriverError(Exception):
    """Something failed talking to one reader; `reason` says what, in words fit for a status page."""

    def __init__(self, reader_id: str, reason: str) -> None:
        super().__init__(f"{reader_id}: {reason}")
        self.reader_id = reader_id
        self.reason = reason


class ReaderUnavailable(RfidDriverError):
    """The serial port is not open (missing, unplugged, being reopened); commands cannot be sent now."""
