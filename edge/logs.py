"""Logging setup shared by every `shelfgate` command: human text or JSON lines (one object per line)."""

from __future__ import annotations

import json
import logging
import sys
from datetime import UTC, datetime
from typing import Final, Literal

from drivers.modbus.client import quiet_pymodbus_logging

BTHOME_LOGGER: Final = "bthome_ble"
"""bthome-ble's logger (drivers/ble/scanner.py has the same constant); named here so that a Modbus-only
gateway does not import bleak and D-Bus just to quiet it (16.5 MB of RSS, bench/bench_rss.py)."""

_STD_ATTRS = frozenset(logging.makeLogRecord({}).__dict__) | {"message", "asctime"}


class JsonLines(logging.Formatter):
    """One JSON object per record; `extra=` fields (device ids, bin ids) become keys."""

    def format(self, record: logging.LogRecord) -> str:
        out = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "msg": record.getMessage(),
        }
        out.update({k: v for k, v in record.__dict__.items() if k not in _STD_ATTRS})
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        return json.dumps(out, ensure_ascii=False, default=str)


def setup_logging(level: str = "INFO", fmt: Literal["text", "json"] = "text") -> None:
    """Configure the root logger once for a process; quiets chatty libraries to WARNING."""
    handler = logging.StreamHandler(sys.stderr)
    if fmt == "json":
        handler.setFormatter(JsonLines())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)-7s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    for noisy in ("pymodbus", "uvicorn", "uvicorn.error", "amqtt", "transitions", "sse_starlette"):
        logging.getLogger(noisy).setLevel(max(logging.WARNING, root.level))
    # pymodbus logs a CRC or timeout at ERROR on every failed poll, bthome-ble a WARNING on every advert with
    # a wrong key; our drivers count those and log availability once per change (STYLE.md rule 8), so the
    # libraries' per-frame lines would only flood the journal.
    quiet_pymodbus_logging()
    logging.getLogger(BTHOME_LOGGER).setLevel(logging.CRITICAL)
