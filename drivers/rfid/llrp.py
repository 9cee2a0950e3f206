"""Fixed RFID readers over LLRP (EPCglobal LLRP 1.0.1, TCP port 5084) through `sllurp` — an optional extra.

sllurp is GPLv3, so it is not a dependency of the product: `pip install 'shelfgate[llrp]'` adds it. This
module imports it lazily, only when an `LlrpReaderClient` is constructed; importing `drivers.rfid` (or this
module) without sllurp works, and constructing the client without it raises `LlrpSupportMissing`, which names
the extra.

    async with LlrpReaderClient("10.0.0.21", "dock-door-1", antennas=[1, 2]) as reader:
        async for read in reader.reads():     # LlrpTagRead — a TagRead, plus antenna and reader timestamp
            ...

How sllurp is used: only its protocol state machine (`LLRPClient`: capabilities → config → ROSpec add/enable
→ inventory, keepalive acks) and its message codec (`LLRPMessage`). Its own socket thread
(`LLRPReaderClient`) is not used: the TCP connection is an asyncio stream owned by one named task,
`llrp_reader[{id}].loop`, so there is no thread to leak, a cancel ends the connection at once, and received
bytes are handled on the loop like every other driver's. The client frames messages itself by the header's
length field (LLRP 1.0.1 §16.1: rsvd 3 | ver 3 | type 10 | length 32 | id 32) before sllurp decodes them, so
an undecodable message is skipped without losing the stream.

Same model as the serial UHF client (`drivers.rfid.models`): `events()` yields `LlrpTagRead` (a `TagRead`
subclass adding `antenna` and the reader's FirstSeenTimestampUTC) and `Availability`; SGTIN-96 EPCs are
decoded with `drivers.rfid.epc`, so presence windows and GTIN counting work unchanged. One TagReportData is
one read, whatever its TagSeenCount (a report per tag per round is what the ROSpec below asks for).

Liveness: the ROSpec is set up by sllurp with a periodic KeepaliveSpec (§12.2.4), so a healthy reader sends
KEEPALIVE even with no tag in the field. No message for `silence_s` (default three keepalive intervals) means
the reader or the path to it is gone: the connection is dropped and reopened. Availability is state (STYLE.md
rule 8): online when the inventory runs, offline — one WARNING, one `Availability` — when the connection ends
or cannot be made, back online — one INFO — when inventory runs again. Reconnects use capped exponential
backoff with full jitter (`drivers.backoff`, rule 7); a reader that refuses the configuration or the
connection is retried only at the cap.

Bad input never ends the loop: undecodable messages, unusable TagReportData (no EPC, an EPC that is not whole
16-bit words — sllurp itself accepts both silently), malformed SGTINs (yielded raw), error statuses and a lost
framing are each counted by kind in `LlrpCounters.errors` and logged once per kind per connection.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import importlib.util
import logging
import random
import struct
import time
from collections.abc import AsyncIterator, Iterable, Mapping
from dataclasses import asdict, dataclass, field
from types import ModuleType, TracebackType
from typing import Any, Final

from drivers.backoff import full_jitter_s
from drivers.rfid._common import ReaderEvents
from drivers.rfid.epc import RawEpc, Sgtin96, parse_epc
from drivers.rfid.errors import EpcError, ProtocolError
from drivers.rfid.models import Availability, TagRead

__all__ = [
    "INSTALL_HINT",
    "LLRP_DEFAULT_PORT",
    "LlrpCounters",
    "LlrpReaderClient",
    "LlrpSupportMissing",
    "LlrpTagRead",
    "sllurp_available",
]

_log = logging.getLogger(__name__)

LLRP_DEFAULT_PORT: Final = 5084
"""IANA-assigned LLRP port (LLRP 1.0.1 §3)."""

INSTALL_HINT: Final = "pip install 'shelfgate[llrp]'"

_HEADER: Final = struct.Struct("!HII")
_MAX_MESSAGE_BYTES: Final = 1 << 20
"""A length field beyond this is a broken stream, not a big report (real reports are a few kB)."""

_STATE_INVENTORYING: Final = 18
"""sllurp `LLRPReaderState.STATE_INVENTORYING`; checked against the module at load time."""

RSSI_UNKNOWN_DBM: Final = -128
"""`rssi_dbm` of a read whose report lacks PeakRSSI (the floor of LLRP's signed-byte PeakRSSI, §16.2.7.3.7)."""

_MAX_EPC_HEX: Final = 124
"""Gen2 PC bits 15-11 count EPC words: at most 31 words = 496 bits = 124 hex digits."""


class LlrpSupportMissing(ImportError):
    """sllurp (the optional `llrp` extra) is not installed."""

    def __init__(self) -> None:
        super().__init__(f"LLRP readers need the optional sllurp package (GPLv3): {INSTALL_HINT}")


def sllurp_available() -> bool:
    """True when the `llrp` extra is installed (without importing the rest of sllurp)."""
    try:
        return importlib.util.find_spec("sllurp") is not None
    except (ImportError, ValueError):  # ValueError: sys.modules['sllurp'] is None
        return False


def _load_sllurp() -> ModuleType:
    try:
        module = importlib.import_module("sllurp.llrp")
    except ImportError as exc:
        raise LlrpSupportMissing from exc
    if module.LLRPReaderState.STATE_INVENTORYING != _STATE_INVENTORYING:  # pragma: no cover - sllurp changed
        raise LlrpSupportMissing
    return module


# --- values -------------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class LlrpTagRead(TagRead):
    """A `TagRead` from a fixed reader: which antenna saw it, and when the reader says it did.

    `ts`/`mono` are when the gateway received the report (the reader's clock may be unsynchronised);
    `first_seen_utc_us` is the reader's own FirstSeenTimestampUTC (§16.2.7.3.9), None if not reported.
    """

    antenna: int | None = None
    first_seen_utc_us: int | None = None


@dataclass(slots=True)
class LlrpCounters:
    """Running health counters of one LLRP reader (mutated only by its client's loop)."""

    messages: int = 0
    reports: int = 0
    tag_reads: int = 0
    keepalives: int = 0
    dropped_reads: int = 0
    """Reads dropped because the consumer fell behind (bounded queue full)."""
    connects: int = 0
    reconnects: int = 0
    """Connections made after the first one."""
    disconnects: int = 0
    connect_failures: int = 0
    errors: dict[str, int] = field(default_factory=dict)
    """Errors by kind: decode, malformed_report, malformed_epc, reader_error, framing, silence, setup,
    refused, connect, internal."""
    last_seen_mono: float | None = None
    last_error: str | None = None
    online: bool = False

    def count_error(self, kind: str, reason: str) -> None:
        """One more error of `kind`; `reason` becomes `last_error`."""
        self.errors[kind] = self.errors.get(kind, 0) + 1
        self.last_error = reason

    def snapshot(self) -> dict[str, Any]:
        """A plain, JSON-ready copy."""
        return asdict(self)


class _SessionEnded(Exception):
    """Why one connection ended; `kind` is the error counter, `misconfigured` slows retries to the cap."""

    def __init__(self, reason: str, kind: str, *, misconfigured: bool = False) -> None:
        super().__init__(reason)
        self.reason = reason
        self.kind = kind
        self.misconfigured = misconfigured


# --- the client ---------------------------------------------------------------------------------------------


class LlrpReaderClient:
    """One LLRP fixed reader; an async context manager whose loop task owns the TCP connection."""

    def __init__(
        self,
        host: str,
        reader_id: str,
        *,
        port: int = LLRP_DEFAULT_PORT,
        antennas: Iterable[int] = (1,),
        tx_power_dbm: float | None = None,
        keepalive_s: float = 5.0,
        silence_s: float | None = None,
        connect_timeout_s: float = 5.0,
        setup_timeout_s: float = 10.0,
        close_timeout_s: float = 2.0,
        backoff_base_s: float = 0.5,
        backoff_cap_s: float = 30.0,
        queue_size: int = 4096,
        rng: random.Random | None = None,
        sllurp_config: Mapping[str, Any] | None = None,
    ) -> None:
        self._sllurp = _load_sllurp()  # first: without the extra nothing else matters
        antenna_ids = tuple(antennas)
        if not antenna_ids or any(not 1 <= a <= 0xFFFF for a in antenna_ids):
            raise ValueError("antennas must be LLRP antenna ids 1..65535")
        if not 0 < port < 1 << 16:
            raise ValueError("port must be 1..65535")
        if min(keepalive_s, connect_timeout_s, setup_timeout_s, close_timeout_s) <= 0:
            raise ValueError("timeouts and the keepalive interval must be positive")
        if silence_s is not None and silence_s <= keepalive_s:
            raise ValueError("silence_s must exceed keepalive_s")
        if backoff_base_s <= 0 or backoff_cap_s < backoff_base_s:
            raise ValueError("need 0 < backoff_base_s <= backoff_cap_s")
        if queue_size < 2:
            raise ValueError("queue_size must be >= 2")
        self.host = host
        self.port = port
        self.reader_id = reader_id
        self.antennas = antenna_ids
        self.tx_power_dbm = tx_power_dbm
        self.keepalive_s = keepalive_s
        self.silence_s = 3.0 * keepalive_s if silence_s is None else silence_s
        self.connect_timeout_s = connect_timeout_s
        self.setup_timeout_s = setup_timeout_s
        self.close_timeout_s = close_timeout_s
        self.backoff_base_s = backoff_base_s
        self.backoff_cap_s = backoff_cap_s
        self.counters = LlrpCounters()
        self._events = ReaderEvents(queue_size, self.counters, on_overflow=self._warn_overflow)
        self._extra_config = dict(sllurp_config or {})
        self._rng = rng or random.Random()  # jitter, not security
        self._task: asyncio.Task[None] | None = None
        self._llrp: Any = None
        """sllurp `LLRPClient` of the current connection (untyped: sllurp ships no annotations)."""
        self._writer: asyncio.StreamWriter | None = None
        self._available: bool | None = None
        self._inventorying = False
        self._closing = False
        self._close_acked = False
        self._logged_kinds: set[str] = set()

    # --- lifecycle -----------------------------------------------------------------------------------------

    async def __aenter__(self) -> LlrpReaderClient:
        self._events.closed = False
        self._task = asyncio.create_task(self._run(), name=f"llrp_reader[{self.reader_id}].loop")
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Stop politely (delete our ROSpec, CLOSE_CONNECTION), close, and end the `events()` iterators."""
        if self._events.closed:
            return
        self._events.closed = True
        task, self._task = self._task, None
        if task is not None and self._inventorying and self._llrp is not None and self._writer is not None:
            self._closing = True
            llrp = self._llrp
            with contextlib.suppress(Exception):  # best effort: the connection may be failing right now
                llrp.stopPolitely(
                    onCompletion=lambda *_: llrp.sendMessage({"CLOSE_CONNECTION": {}}), disconnect=True
                )
            await asyncio.wait([task], timeout=self.close_timeout_s)
        if task is not None:
            task.cancel()
            await asyncio.wait([task])
        self._events.end()

    @property
    def available(self) -> bool | None:
        """True while inventory runs, False after the connection ended, None before the first verdict."""
        return self._available

    @property
    def connected(self) -> bool:
        """True while the TCP connection is open."""
        return self._writer is not None

    @property
    def inventorying(self) -> bool:
        """True while the reader runs our ROSpec."""
        return self._inventorying

    # --- consumer side -------------------------------------------------------------------------------------

    def events(self) -> AsyncIterator[TagRead | Availability]:
        """Tag reads and availability changes, in arrival order, until the client is closed."""
        return self._events.events()

    def reads(self) -> AsyncIterator[TagRead]:
        """Only the tag reads of `events()`."""
        return self._events.reads()

    def _warn_overflow(self) -> None:
        """Overflow policy (`ReaderEvents`): new reads are dropped (counted, one warning per episode) when
        the consumer falls behind; an availability change evicts the oldest read instead."""
        _log.warning("llrp reader %s: consumer behind, dropping reads", self.reader_id)

    # --- availability and errors ---------------------------------------------------------------------------

    def _set_available(self, online: bool, reason: str) -> None:
        self.counters.online = online
        if self._available is online:
            return
        self._available = online
        where = f"{self.host}:{self.port}"
        if online:
            _log.info("llrp reader %s at %s online: %s", self.reader_id, where, reason)
        else:
            _log.warning("llrp reader %s at %s offline: %s", self.reader_id, where, reason)
        self._events.put(Availability(self.reader_id, online=online, reason=reason, ts=time.time()))

    def _error(self, kind: str, reason: str) -> None:
        self.counters.count_error(kind, reason)
        if kind in self._logged_kinds:
            return
        self._logged_kinds.add(kind)
        _log.warning("llrp reader %s: %s (further %s errors are only counted)", self.reader_id, reason, kind)

    # --- the loop ------------------------------------------------------------------------------------------

    async def _run(self) -> None:
        attempt = 0
        while True:
            try:
                async with asyncio.timeout(self.connect_timeout_s):
                    reader, writer = await asyncio.open_connection(self.host, self.port)
            except (OSError, TimeoutError) as exc:
                reason = f"cannot connect to {self.host}:{self.port}: {exc or 'timed out'}"
                self.counters.connect_failures += 1
                self._error("connect", reason)
                self._set_available(False, reason)
                await asyncio.sleep(
                    full_jitter_s(attempt, self.backoff_base_s, self.backoff_cap_s, self._rng)
                )
                attempt += 1
                continue
            c = self.counters
            c.connects += 1
            if c.connects > 1:
                c.reconnects += 1
            self._logged_kinds.clear()
            self._writer = writer
            misconfigured = False
            try:
                await self._session(reader, writer)
                reason = f"{self.host}:{self.port} closed the connection"
                if self._closing and self._close_acked:
                    return
            except _SessionEnded as end:
                reason = end.reason
                misconfigured = end.misconfigured
                self._error(end.kind, reason)
            except OSError as exc:
                reason = f"connection to {self.host}:{self.port} failed: {exc}"
            except Exception as exc:  # noqa: BLE001 - the loop's last line of defence, logged with traceback
                # A bug here (or in sllurp) must not end the reader's loop for good: log it, reconnect.
                reason = f"unexpected error: {exc!r}"
                self.counters.count_error("internal", reason)
                _log.exception("llrp reader %s: unexpected error; reconnecting", self.reader_id)
            finally:
                reached_inventory = self._inventorying
                self._inventorying = False
                self._llrp = None
                self._writer = None
                writer.close()
                with contextlib.suppress(OSError):
                    await writer.wait_closed()
            if self._closing:
                return  # aclose() is ending us; a deliberate close is no outage
            c.disconnects += 1
            c.last_error = reason
            self._set_available(False, reason)
            attempt = 0 if reached_inventory else attempt + 1
            delay_s = (
                self.backoff_cap_s * self._rng.uniform(0.5, 1.0)
                if misconfigured
                else full_jitter_s(attempt, self.backoff_base_s, self.backoff_cap_s, self._rng)
            )
            await asyncio.sleep(delay_s)

    def _reader_config(self) -> Any:
        """A fresh sllurp config per connection (sllurp's state machine writes into it)."""
        settings: dict[str, Any] = {
            "antennas": list(self.antennas),
            "tx_power": 0,  # index 0 = the reader's maximum, unless tx_power_dbm picks one
            "start_inventory": True,
            "reset_on_connect": True,  # delete ROSpecs/AccessSpecs a previous client left behind
            "reconnect": False,  # reconnection is ours (backoff, availability)
            "keepalive_interval": int(self.keepalive_s * 1000),
            "tag_content_selector": {
                "EnableROSpecID": False,
                "EnableSpecIndex": False,
                "EnableInventoryParameterSpecID": False,
                "EnableAntennaID": True,
                "EnableChannelIndex": False,
                "EnablePeakRSSI": True,
                "EnableFirstSeenTimestamp": True,
                "EnableLastSeenTimestamp": False,
                "EnableTagSeenCount": True,
                "EnableAccessSpecID": False,
                "C1G2EPCMemorySelector": {"EnableCRC": False, "EnablePCBits": True},
            },
        }
        if self.tx_power_dbm is not None:
            settings["tx_power_dbm"] = float(self.tx_power_dbm)
        settings.update(self._extra_config)
        return self._sllurp.LLRPReaderConfig(settings)

    def _on_state(self, state: int) -> None:
        inventorying = state == _STATE_INVENTORYING
        if inventorying and not self._inventorying:
            self._inventorying = True
            self._set_available(True, f"inventory running on antennas {list(self.antennas)}")
        elif not inventorying:
            self._inventorying = False

    async def _session(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """Run one connection until it ends (raises `_SessionEnded` for every end but a clean close)."""
        sllurp = self._sllurp
        try:
            self._llrp = sllurp.LLRPClient(
                self._reader_config(), transport_tx_write=writer.write, state_change_callback=self._on_state
            )
        except Exception as exc:  # sllurp validates the config with its own exception types
            raise _SessionEnded(
                f"sllurp rejects the reader config: {exc}", "setup", misconfigured=True
            ) from exc
        loop = asyncio.get_running_loop()
        setup_deadline = loop.time() + self.setup_timeout_s
        self._close_acked = False
        buffer = bytearray()
        while True:
            wait_s = self.silence_s
            if not self._inventorying and not self._closing:
                wait_s = min(wait_s, setup_deadline - loop.time())
                if wait_s <= 0:
                    raise _SessionEnded(
                        f"inventory not running {self.setup_timeout_s:g} s after connecting", "setup"
                    )
            try:
                async with asyncio.timeout(wait_s):
                    data = await reader.read(65536)
            except TimeoutError:
                if self._inventorying or self._closing:
                    raise _SessionEnded(
                        f"no message for {self.silence_s:g} s (keepalives stopped)", "silence"
                    ) from None
                continue  # the setup deadline is checked at the top
            if not data:
                return
            buffer += data
            while len(buffer) >= _HEADER.size:
                word, length, _msg_id = _HEADER.unpack_from(buffer)
                if word >> 13 or not _HEADER.size <= length <= _MAX_MESSAGE_BYTES:
                    # No sync marker in LLRP: after a bad header no later byte can be trusted.
                    raise _SessionEnded(f"stream framing lost (header {bytes(buffer[:10]).hex()})", "framing")
                if len(buffer) < length:
                    break
                raw = bytes(buffer[:length])
                del buffer[:length]
                self._handle(raw, word & 0x3FF)
                if self._close_acked:
                    return
            await writer.drain()

    def _handle(self, raw: bytes, msg_type: int) -> None:
        """One framed message: count it, take its tag reads, then let sllurp's state machine act on it."""
        c = self.counters
        c.messages += 1
        c.last_seen_mono = time.monotonic()
        try:
            lmsg = self._sllurp.LLRPMessage(msgbytes=raw)
            name: str = lmsg.getName()
            body: dict[str, Any] = lmsg.msgdict[name]
        except Exception as exc:  # noqa: BLE001 - sllurp raises LLRPError, struct.error, KeyError, ValueError …
            self._error("decode", f"undecodable message of type {msg_type} skipped: {exc}")
            return
        if name == "RO_ACCESS_REPORT":
            c.reports += 1
            self._on_report(body)
        elif name == "KEEPALIVE":
            c.keepalives += 1
        elif name == "CLOSE_CONNECTION_RESPONSE":
            self._close_acked = True
            return  # ours to handle: sllurp's state machine does not expect it
        elif name == "READER_EVENT_NOTIFICATION":
            self._check_connection_event(body)
        elif name == "ERROR_MESSAGE":
            self._error("reader_error", f"reader sent ERROR_MESSAGE: {body.get('LLRPStatus')}")
            return
        status = body.get("LLRPStatus")
        if isinstance(status, dict) and status.get("StatusCode") not in (None, "Success"):
            self._error(
                "reader_error", f"{name}: {status.get('StatusCode')} {status.get('ErrorDescription')!r}"
            )
        try:
            self._llrp.handleMessage(lmsg)
        except Exception as exc:  # sllurp's state machine raises ReaderConfigurationError, KeyError …
            raise _SessionEnded(
                f"reader setup failed in sllurp ({name}): {exc}", "setup", misconfigured=True
            ) from exc

    def _check_connection_event(self, body: Mapping[str, Any]) -> None:
        event = body.get("ReaderEventNotificationData")
        attempt = event.get("ConnectionAttemptEvent") if isinstance(event, dict) else None
        if isinstance(attempt, dict) and attempt.get("Status") != "Success":
            # e.g. "a Client initiated connection already exists" (§13.2.6.11): another client holds it.
            raise _SessionEnded(
                f"reader refused the connection: {attempt.get('Status')}", "refused", misconfigured=True
            )

    # --- tag reports ---------------------------------------------------------------------------------------

    def _on_report(self, body: Mapping[str, Any]) -> None:
        entries = body.get("TagReportData", [])
        if not isinstance(entries, list):
            entries = [entries]
        now_mono = time.monotonic()
        now = time.time()
        for entry in entries:
            read = self._tag_read(entry, now, now_mono) if isinstance(entry, dict) else None
            if read is None:
                continue
            self.counters.tag_reads += 1
            self._events.put(read)

    def _tag_read(self, entry: Mapping[str, Any], now: float, now_mono: float) -> LlrpTagRead | None:
        """One TagReportData → a read; None (counted as malformed_report) when it is unusable."""
        epc_field = entry.get("EPC", entry.get("EPC-96"))
        epc = epc_field.decode("ascii", "replace") if isinstance(epc_field, bytes) else epc_field
        problem: str | None = None
        if "SllurpDecodeError" in entry:
            problem = "undecodable parameter in TagReportData"
        elif not isinstance(epc, str) or not epc:
            problem = "TagReportData without an EPC"
        elif len(epc) % 4 or len(epc) > _MAX_EPC_HEX or not all(ch in "0123456789abcdefABCDEF" for ch in epc):
            # Gen2 EPCs are whole 16-bit words (PC bits 15-11 count them); anything else is a torn report.
            problem = f"EPC {epc[:32]!r} is not whole 16-bit words of hex"
        if problem is not None:
            self._error("malformed_report", f"tag report skipped: {problem}")
            return None
        assert isinstance(epc, str)  # noqa: S101 - narrowing for mypy
        epc = epc.upper()
        malformed: str | None = None
        identity: Sgtin96 | RawEpc
        try:
            identity = parse_epc(epc)
        except (EpcError, ProtocolError) as exc:
            identity = RawEpc(epc)
            malformed = str(exc)
            self._error("malformed_epc", f"malformed EPC {epc}: {exc}")
        antenna = entry.get("AntennaID")
        rssi = entry.get("PeakRSSI")
        pc = entry.get("C1G2PC")
        first_seen = entry.get("FirstSeenTimestampUTC")
        return LlrpTagRead(
            reader_id=self.reader_id,
            epc=epc,
            rssi_dbm=rssi if isinstance(rssi, int) else RSSI_UNKNOWN_DBM,
            # Gen2 §6.3.2.1.2.2: without reported PC bits, the length field is all we know of the PC word.
            pc=pc if isinstance(pc, int) else (len(epc) // 4) << 11,
            ts=now,
            mono=now_mono,
            identity=identity,
            malformed=malformed,
            antenna=antenna if isinstance(antenna, int) else None,
            first_seen_utc_us=first_seen if isinstance(first_seen, int) else None,
        )
