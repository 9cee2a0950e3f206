"""Clock-jump seam for the reliability suite: loaded by a gateway or hub subprocess whose PYTHONPATH starts with
this folder (Python imports `sitecustomize` at start-up, see the `site` module docs).

When `SHELFGATE_CLOCK_OFFSET_FILE` names a file, `time.time()` and `time.time_ns()` return the real wall clock
plus the number of seconds written in that file — re-read at most every 0.1 s, so a test "jumps the clock" of a
running process by writing a new offset. The gateway stamps events and judges alert dwell with `time.time()`
(edge/gateway.py), the hub stamps receipt and gap age with it (hub/ingest.py); `datetime.now()` is not shifted
(C-level clock) — nothing on the ordering path reads it. The monotonic clock is untouched: that is what a real
NTP step or an RTC reset does too (CLOCK_REALTIME jumps, CLOCK_MONOTONIC does not; clock_gettime(2)).
"""

from __future__ import annotations

import os
import time as _time

_PATH = os.environ.get("SHELFGATE_CLOCK_OFFSET_FILE")

if _PATH:
    _OFFSET_FILE: str = _PATH
    _real_time = _time.time
    _real_time_ns = _time.time_ns
    _cache = {"offset_s": 0.0, "read_at": -1.0}

    def _offset_s() -> float:
        now = _time.monotonic()
        if now - _cache["read_at"] >= 0.1:
            _cache["read_at"] = now
            try:
                with open(_OFFSET_FILE, encoding="ascii") as f:
                    _cache["offset_s"] = float(f.read().strip() or 0)
            except (OSError, ValueError):
                pass
        return _cache["offset_s"]

    def _time_s() -> float:
        return _real_time() + _offset_s()

    def _time_ns() -> int:
        return _real_time_ns() + int(_offset_s() * 1e9)

    _time.time = _time_s
    _time.time_ns = _time_ns
