"""Sans-IO intake: one MQTT message (topic + payload bytes) → a validated contract object, or a rejection.

No broker, database, clock or logging here, so every rule is testable with plain bytes. A rejection carries
a short machine-readable `code` and a human `detail`; the ingest worker quarantines it and carries on. Rules
beyond the pydantic schema (docs/wire-contract.md, ARCHITECTURE.md "The bridge and its contract"):

- the store id in the payload must equal the one in the topic (a store writes only under its own root);
- a batch carries exactly ``last_seq - first_seq + 1`` events with seqs first_seq, first_seq+1, … in order;
- each event id is ``{gateway_id}:{seq}`` (the hub's idempotency key must match the seq it is filed under);
- every timestamp is RFC 3339 with an offset (a naive time cannot be ordered across stores);
- no string holds U+0000: PostgreSQL text cannot store it, and both engines must accept the same input.

Event data is validated generically (`Event.typed_data()` and the contract's `EVENT_DATA_MODELS`), so an
event type added to the contract is accepted here without a change; what the hub does with it is
`hub.db.EFFECTS`.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from datetime import datetime
from typing import Final, TypeVar

from pydantic import BaseModel, ValidationError

from cloud_bridge.contract import (
    AlertData,
    CommandResult,
    EventBatch,
    Heartbeat,
    Status,
    store_id_from_topic,
)

M = TypeVar("M", bound=BaseModel)

MAX_PAYLOAD_BYTES: Final = 4 * 1024 * 1024
"""Larger payloads are rejected before parsing; a gateway batches far below this."""

_ESCAPED_NUL: Final = re.compile(rb"(?<!\\)(?:\\\\)*\\u0000")
"""A JSON ``\\u0000`` escape (an odd run of backslashes before ``u0000``; an escaped backslash is not one)."""


class PayloadRejected(ValueError):
    """The message is malformed, foreign or inconsistent; `code` is stable, `detail` is for people."""

    def __init__(self, code: str, detail: str) -> None:
        self.code = code
        self.detail = detail
        super().__init__(f"{code}: {detail}")

    @property
    def reason(self) -> str:
        """What the quarantine table stores."""
        return f"{self.code}: {self.detail}"


@dataclass(frozen=True, slots=True)
class BatchMessage:
    """A consistent event batch with each event's `data` already validated against its type's model."""

    store_id: str
    batch: EventBatch
    data: tuple[BaseModel, ...]
    """`events[i].typed_data()`, one per event: StockChanged, AlertData, or any later contract type."""


@dataclass(frozen=True, slots=True)
class StatusMessage:
    """A birth or will on `status`."""

    store_id: str
    status: Status


@dataclass(frozen=True, slots=True)
class HeartbeatMessage:
    """A heartbeat on `health`."""

    store_id: str
    heartbeat: Heartbeat


@dataclass(frozen=True, slots=True)
class CommandResultMessage:
    """An outcome on `cmd-result`."""

    store_id: str
    result: CommandResult


Parsed = BatchMessage | StatusMessage | HeartbeatMessage | CommandResultMessage


def _loc(loc: tuple[int | str, ...]) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out or "(root)"


def _validate(model: type[M], payload: bytes, what: str) -> M:
    try:
        parsed = model.model_validate_json(payload)
    except ValidationError as exc:
        first = exc.errors()[0]
        if first["type"] == "json_invalid":
            raise PayloadRejected("bad-json", f"{what}: {first['msg']}") from exc
        more = f" (+{exc.error_count() - 1} more)" if exc.error_count() > 1 else ""
        raise PayloadRejected("schema", f"{what}: {_loc(tuple(first['loc']))}: {first['msg']}{more}") from exc
    _check_numbers(parsed.model_dump(), what)
    return parsed


_INT64: Final = range(-(2**63), 2**63)
"""What a SQLite INTEGER or a PostgreSQL BIGINT holds."""


def _check_numbers(doc: object, what: str) -> None:
    """Refuse numbers the database cannot store, so they are quarantined instead of failing the apply.

    pydantic's JSON parser takes NaN and ±Infinity (not JSON, RFC 8259 §6) into any float, and any integer
    into an `int` field; SQLite stores NaN as NULL (a NOT NULL failure) and raises OverflowError past 64 bits.
    Either used to end ingest on that message and, as it is never acknowledged, again on every redelivery.
    Iterative: nesting is already bounded by the parser."""
    stack = [doc]
    while stack:
        node = stack.pop()
        if isinstance(node, float) and not math.isfinite(node):
            raise PayloadRejected("schema", f"{what}: a number is NaN or infinite, which JSON does not allow")
        if isinstance(node, int) and node not in _INT64:
            raise PayloadRejected("schema", f"{what}: an integer does not fit in 64 bits")
        if isinstance(node, dict):
            stack.extend(node.values())
        elif isinstance(node, list | tuple):
            stack.extend(node)


def check_timestamp(value: str, where: str) -> datetime:
    """Parse an RFC 3339 timestamp that carries an offset; PayloadRejected otherwise."""
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError as exc:
        raise PayloadRejected("bad-ts", f"{where}: {value!r} is not RFC 3339") from exc
    if parsed.tzinfo is None:
        raise PayloadRejected("bad-ts", f"{where}: {value!r} has no UTC offset")
    return parsed


def _check_batch(store_id: str, batch: EventBatch) -> tuple[BaseModel, ...]:
    if batch.store_id != store_id:
        raise PayloadRejected(
            "store-mismatch", f"payload store_id {batch.store_id!r} ≠ topic store {store_id!r}"
        )
    expected_count = batch.last_seq - batch.first_seq + 1
    if expected_count != len(batch.events):
        raise PayloadRejected(
            "seq-count",
            f"first_seq={batch.first_seq} last_seq={batch.last_seq} promise {expected_count} events,"
            f" the batch has {len(batch.events)}",
        )
    typed: list[BaseModel] = []
    for index, event in enumerate(batch.events):
        expected_seq = batch.first_seq + index
        if event.seq != expected_seq:
            raise PayloadRejected("seq-gap", f"events[{index}].seq={event.seq}, expected {expected_seq}")
        expected_id = f"{batch.gateway_id}:{event.seq}"
        if event.id != expected_id:
            raise PayloadRejected("id-mismatch", f"events[{index}].id={event.id!r}, expected {expected_id!r}")
        check_timestamp(event.ts, f"events[{index}].ts")
        try:
            data = event.typed_data()
        except ValidationError as exc:
            first = exc.errors()[0]
            raise PayloadRejected(
                "schema", f"events[{index}].data ({event.type}): {_loc(tuple(first['loc']))}: {first['msg']}"
            ) from exc
        if isinstance(data, AlertData):
            check_timestamp(data.raised_at, f"events[{index}].data.raised_at")
        typed.append(data)
    return tuple(typed)


def parse_message(topic: str, payload: bytes) -> Parsed:
    """Classify and validate one message from the hub's subscriptions; PayloadRejected says why not."""
    try:
        store_id = store_id_from_topic(topic)
    except ValueError as exc:
        raise PayloadRejected("foreign-topic", str(exc)) from exc
    leaf = topic.split("/", 4)[4]
    if not payload:
        raise PayloadRejected("empty", f"zero-length payload on {leaf}")
    if len(payload) > MAX_PAYLOAD_BYTES:
        raise PayloadRejected("too-large", f"{len(payload)} bytes > {MAX_PAYLOAD_BYTES}")
    if _ESCAPED_NUL.search(payload):
        raise PayloadRejected("nul-char", "a string holds U+0000, which the hub database cannot store")
    if leaf == "events":
        batch = _validate(EventBatch, payload, "batch")
        return BatchMessage(store_id, batch, _check_batch(store_id, batch))
    if leaf == "status":
        status = _validate(Status, payload, "status")
        check_timestamp(status.ts, "status.ts")
        return StatusMessage(store_id, status)
    if leaf == "health":
        heartbeat = _validate(Heartbeat, payload, "heartbeat")
        check_timestamp(heartbeat.ts, "heartbeat.ts")
        return HeartbeatMessage(store_id, heartbeat)
    if leaf == "cmd-result":
        return CommandResultMessage(store_id, _validate(CommandResult, payload, "cmd-result"))
    raise PayloadRejected("foreign-topic", f"the hub does not consume {leaf!r}")
