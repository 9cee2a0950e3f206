"""Gateway-side handlers of hub commands (`cmd/{name}`), one function per command, free of the uplink.

The uplink (`cloud_bridge.uplink`) validates the `Command`, de-duplicates redelivered ids and publishes what a
handler returns on `cmd-result`; `Gateway._on_command` dispatches by name to the functions here. A handler
answers a bad argument with ``ok: false`` and the reason (the hub logs it); it raises only for a failure of
the gateway itself (the uplink then answers ``ok: false`` with the exception).
"""

from __future__ import annotations

import logging

from pydantic import ValidationError

from cloud_bridge.contract import Command, CommandResult
from cloud_bridge.resend import ResendArgs
from edge.store import GatewayStore

log = logging.getLogger(__name__)


def _reason(exc: ValidationError) -> str:
    first = exc.errors()[0]
    where = ".".join(str(part) for part in first["loc"]) or "args"
    more = f" (+{exc.error_count() - 1} more)" if exc.error_count() > 1 else ""
    return f"{where}: {first['msg']}{more}"


async def handle_resend(store: GatewayStore, command: Command) -> CommandResult:
    """`cmd/resend`: put the requested, still-retained events back in the outbox (same id and seq).

    The result (`cloud_bridge.resend.ResendResult`) says how many were re-sent, how many were still queued
    anyway, and which ranges are no longer retained or were never allocated — the hub records the former as
    lost instead of asking again.
    """
    try:
        args = ResendArgs.model_validate(command.args)
    except ValidationError as exc:
        return CommandResult(id=command.id, ok=False, error=f"invalid resend args: {_reason(exc)}")
    result = await store.resend(args.ranges)
    log.info(
        "resend %s: %d of %d event(s) re-queued, %d still queued, %d range(s) no longer retained",
        command.id,
        result.resent,
        result.requested,
        result.already_queued,
        len(result.not_retained),
    )
    return CommandResult(id=command.id, ok=True, result=result.model_dump(mode="json"))
