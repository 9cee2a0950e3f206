"""The `cmd/resend` command: its arguments (hub → gateway) and its result (gateway → hub).

Kept beside `contract.py` as one module both ends import, for the same reason: the hub builds these args and
reads this result, the gateway parses the args and builds the result, and neither may drift. Documented in
`docs/wire-contract.md` ("cmd/resend").

Why a list of ranges and not one: the hub may be missing several holes of one gateway at once (a shared
subscription splits a store's batches over workers, and loss is rarely one contiguous run). One command per
request keeps the gateway's command cache (one result per command id) and the hub's rate limit simple.
"""

from __future__ import annotations

from typing import Any, Final, Self

from pydantic import BaseModel, ConfigDict, Field, model_validator

RESEND_COMMAND: Final = "resend"
"""`{name}` in `cmd/{name}`."""
MAX_RESEND_RANGES: Final = 100
"""Ranges in one command; the hub asks for the oldest holes first and the rest on a later request."""
MAX_RESEND_EVENTS: Final = 200_000
"""Events one command may ask for (the gateway's default retention); a larger request is refused whole."""


class _Model(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class SeqSpan(_Model):
    """An inclusive range of event seqs of one gateway, e.g. 1041..1090."""

    first_seq: int = Field(ge=1)
    last_seq: int = Field(ge=1)

    @model_validator(mode="after")
    def _ordered(self) -> Self:
        if self.first_seq > self.last_seq:
            raise ValueError(f"first_seq {self.first_seq} > last_seq {self.last_seq}")
        return self

    @property
    def size(self) -> int:
        """How many seqs the range holds."""
        return self.last_seq - self.first_seq + 1


class ResendArgs(_Model):
    """`Command.args` of `cmd/resend`: ``{"ranges": [{"first_seq": 5, "last_seq": 7}, …]}``.

    The single-range shorthand ``{"first_seq": 5, "last_seq": 7}`` is accepted too (operators type it by hand).
    Ranges may overlap or come in any order; the gateway re-sends their union once.
    """

    ranges: list[SeqSpan] = Field(min_length=1, max_length=MAX_RESEND_RANGES)

    @model_validator(mode="before")
    @classmethod
    def _shorthand(cls, value: Any) -> Any:
        if isinstance(value, dict) and "ranges" not in value and {"first_seq", "last_seq"} <= value.keys():
            rest = {k: v for k, v in value.items() if k not in {"first_seq", "last_seq"}}
            return {**rest, "ranges": [{"first_seq": value["first_seq"], "last_seq": value["last_seq"]}]}
        return value

    @model_validator(mode="after")
    def _bounded(self) -> Self:
        total = sum(span.size for span in merge_spans(self.ranges))
        if total > MAX_RESEND_EVENTS:
            raise ValueError(f"asks for {total} events; at most {MAX_RESEND_EVENTS} per command")
        return self


class ResendResult(_Model):
    """`CommandResult.result` of `cmd/resend`.

    `resent` rows were put back in the outbox (same id and seq, so the hub's constraint makes any replay
    harmless); `already_queued` were still waiting in the outbox; `not_retained` are gone from the gateway for
    good (past its retention) — the hub stops waiting for them; `not_allocated` lie above the gateway's last
    seq (a hub that asks for them has a wrong picture of this gateway).
    """

    requested: int = Field(ge=0)
    resent: int = Field(ge=0)
    already_queued: int = Field(ge=0)
    not_retained: list[SeqSpan] = Field(default_factory=list)
    not_allocated: list[SeqSpan] = Field(default_factory=list)


def merge_spans(spans: list[SeqSpan]) -> list[SeqSpan]:
    """The union of `spans` as sorted, disjoint, non-touching ranges."""
    merged: list[SeqSpan] = []
    for span in sorted(spans, key=lambda s: s.first_seq):
        if merged and span.first_seq <= merged[-1].last_seq + 1:
            if span.last_seq > merged[-1].last_seq:
                merged[-1] = SeqSpan(first_seq=merged[-1].first_seq, last_seq=span.last_seq)
        else:
            merged.append(span)
    return merged
