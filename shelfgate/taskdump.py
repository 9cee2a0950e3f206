"""`kill -USR1 PID`: log every unfinished asyncio task with its stack — the report to attach to a hang.

A wedged asyncio program looks idle to `py-spy dump` or a thread dump (the loop sits in `select`); what is stuck
is the coroutine awaiting something that never comes, and only its task's stack names it. The handler runs in
the main thread between bytecodes (Python signal handlers do; asyncio's wakeup fd gets the loop out of
`select`), reads the tasks through the garbage collector (so it works for any loop, even one blocked in its
shutdown), and writes to stderr — no lock the stuck code might hold.
"""

from __future__ import annotations

import asyncio
import gc
import signal
import sys
from types import FrameType
from typing import TextIO


def dump_tasks(file: TextIO | None = None) -> int:
    """Print every unfinished task with its stack; returns how many."""
    out = file if file is not None else sys.stderr
    tasks = [o for o in gc.get_objects() if isinstance(o, asyncio.Task) and not o.done()]
    print(f"shelfgate: {len(tasks)} unfinished asyncio task(s)", file=out)
    for task in tasks:
        print(f"--- task {task.get_name()}", file=out)
        task.print_stack(limit=40, file=out)
    return len(tasks)


def _on_usr1(_signum: int, _frame: FrameType | None) -> None:
    dump_tasks()
    sys.stderr.flush()


def install() -> None:
    """Install the SIGUSR1 handler (main thread only; a no-op where SIGUSR1 does not exist)."""
    if hasattr(signal, "SIGUSR1"):
        signal.signal(signal.SIGUSR1, _on_usr1)
