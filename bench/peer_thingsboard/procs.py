"""Child processes of the harness: started in their own session, read line by line, sampled from /proc, stopped.

Every process here is one the harness started, and it is stopped by its own pid (SIGINT, then SIGTERM, then
SIGKILL) — nothing is ever stopped by name.
"""

from __future__ import annotations

import contextlib
import os
import queue
import signal
import subprocess
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import IO

CLK_TCK = os.sysconf("SC_CLK_TCK")


def cpu_s(pid: int) -> float | None:
    """utime + stime of the process, all threads, seconds (proc(5): fields 14 and 15 of /proc/PID/stat)."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text(encoding="ascii")
    except OSError:
        return None
    fields = text.rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def status_kb(pid: int, key: str) -> int | None:
    """One kB field of /proc/PID/status (VmRSS, VmHWM)."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text(encoding="ascii").splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1])
    except OSError:
        return None
    return None


class Child:
    """One started process; stdout lines (when piped) are collected by a reader thread."""

    def __init__(
        self,
        name: str,
        argv: Sequence[str],
        *,
        cwd: Path | None = None,
        env: dict[str, str] | None = None,
        stdout_file: Path | None = None,
        stderr_file: Path | None = None,
    ) -> None:
        self.name = name
        self._out_file: IO[bytes] | None = stdout_file.open("wb") if stdout_file else None
        self._err_file: IO[bytes] | None = stderr_file.open("wb") if stderr_file else None
        self.proc = subprocess.Popen(
            list(argv),
            cwd=cwd,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=self._out_file or subprocess.PIPE,
            stderr=self._err_file or subprocess.DEVNULL,
            start_new_session=True,
        )
        self.lines: queue.Queue[str] = queue.Queue()
        self.history: list[str] = []
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        if self._out_file is None and self.proc.stdout is not None:
            self._thread = threading.Thread(target=self._read, name=f"read[{name}]", daemon=True)
            self._thread.start()

    @property
    def pid(self) -> int:
        """The child's pid."""
        return self.proc.pid

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for raw in self.proc.stdout:
            line = raw.decode("utf-8", errors="replace").rstrip("\n")
            with self._lock:
                self.history.append(line)
            self.lines.put(line)

    def snapshot(self) -> list[str]:
        """Every stdout line so far."""
        with self._lock:
            return list(self.history)

    def expect(self, prefix: str, timeout_s: float) -> str:
        """Wait for a stdout line starting with `prefix`; RuntimeError if the process dies or time runs out."""
        deadline = time.monotonic() + timeout_s
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise RuntimeError(f"{self.name}: no line starting {prefix!r} within {timeout_s:.0f} s")
            try:
                line = self.lines.get(timeout=min(left, 0.5))
            except queue.Empty:
                if self.proc.poll() is not None and self.lines.empty():
                    raise RuntimeError(
                        f"{self.name} exited ({self.proc.returncode}) before {prefix!r}"
                    ) from None
                continue
            if line.startswith(prefix):
                return line

    def signal(self, sig: int) -> None:
        """Send a signal to this child only."""
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.proc.pid, sig)

    def stop(self, grace_s: float = 5.0) -> int | None:
        """SIGINT, then SIGTERM, then SIGKILL, each after a grace period; returns the exit code."""
        for sig, wait_s in ((signal.SIGINT, grace_s), (signal.SIGTERM, 3.0), (signal.SIGKILL, 5.0)):
            if self.proc.poll() is not None:
                break
            self.signal(sig)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(timeout=wait_s)
        if self._thread is not None:
            self._thread.join(timeout=2)
        for f in (self._out_file, self._err_file):
            if f is not None:
                f.close()
        return self.proc.returncode
