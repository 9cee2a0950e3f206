"""`shelfgate calibrate` through a real pty against a real gateway fed by simulated transmitters.

The test plays the installer: it reads the prompts from the pty, empties the simulated plate, places items of a
known total mass on it, types the mass and answers `y`. The written calibration must be the simulator's true one,
be in the overlay and the audit trail, and the live gateway must then count the plate exactly. Ctrl-C (a real
^C through the terminal's line discipline) must leave everything unchanged.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import json
import os
import pty
import re
import subprocess
import sys
import termios
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from edge.calibration import AUDIT_FILE, OVERLAY_FILE, read_overlay
from edge.config import load_config
from tests.shelfgate.installer_stack import TRUE_CAL, InstallerStack, eventually, installer_stack

pytestmark = pytest.mark.timeout(240)

ROOT = Path(__file__).resolve().parents[2]


class PtyProcess:
    """A child on the slave side of a pty (its controlling terminal, so ^C is a real SIGINT); we hold the master."""

    def __init__(self, argv: list[str]) -> None:
        self.master, slave = pty.openpty()
        attrs = termios.tcgetattr(slave)
        attrs[3] &= ~termios.ECHO  # the transcript then holds only what the program wrote
        termios.tcsetattr(slave, termios.TCSANOW, attrs)

        def take_terminal() -> None:
            fcntl.ioctl(0, termios.TIOCSCTTY, 0)

        self.proc = subprocess.Popen(
            argv,
            stdin=slave,
            stdout=slave,
            stderr=slave,
            cwd=ROOT,
            start_new_session=True,
            preexec_fn=take_terminal,  # noqa: PLW1509 - needed for a controlling terminal
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
        os.close(slave)
        self.text = ""

    async def expect(self, pattern: str, timeout_s: float = 60.0) -> re.Match[str]:
        """Read until `pattern` appears after what was already matched; fail with the transcript otherwise."""
        loop = asyncio.get_running_loop()
        rx = re.compile(pattern)
        try:
            async with asyncio.timeout(timeout_s):
                while True:
                    m = rx.search(self.text)
                    if m:
                        self.text = self.text[m.end() :]
                        return m
                    fut: asyncio.Future[bytes] = loop.create_future()

                    def readable(f: asyncio.Future[bytes] = fut) -> None:
                        if not f.done():
                            try:
                                f.set_result(os.read(self.master, 4096))
                            except OSError:
                                f.set_result(b"")

                    loop.add_reader(self.master, readable)
                    try:
                        chunk = await fut
                    finally:
                        loop.remove_reader(self.master)
                    if not chunk:
                        pytest.fail(f"program ended before {pattern!r}; output: {self.text!r}")
                    self.text += chunk.decode("utf-8", "replace")
        except TimeoutError:
            pytest.fail(f"no {pattern!r} on the terminal; output: {self.text!r}")

    def send(self, text: str) -> None:
        os.write(self.master, text.encode())

    async def wait(self, timeout_s: float = 30.0) -> int:
        return await asyncio.to_thread(self.proc.wait, timeout_s)

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        with contextlib.suppress(OSError):
            os.close(self.master)


@contextlib.asynccontextmanager
async def calibrate(stack: InstallerStack, *extra: str) -> AsyncIterator[PtyProcess]:
    argv = [sys.executable, "-m", "shelfgate", "calibrate", "A01", "--url", stack.url, *extra]
    p = PtyProcess(argv)
    try:
        yield p
    finally:
        p.close()


async def test_calibrate_through_a_pty_writes_the_true_calibration(tmp_path: Path) -> None:
    async with installer_stack(tmp_path) as stack, calibrate(stack, "--installer", "li") as term:
        await term.expect(r"Empty the plate.*Enter: ")
        stack.empty_plate()
        term.send("\n")
        await term.expect(r"live .* g +\[")  # the live line with its stability indicator
        await term.expect(r"zero taken")
        await term.expect(r"type its mass in g: ")
        mass_g = stack.place("A01", 5)
        term.send(f"{mass_g:.3f}\n")
        m = await term.expect(r"Check: .*: (OK|FAILED)")
        assert m.group(1) == "OK", term.text
        await term.expect(r"Write this calibration\? \[y/N\] ")
        term.send("y\n")
        await term.expect(r"Written: bin A01")
        assert await term.wait() == 0

        cal = stack.gateway.bins["A01"].calibration
        assert cal.span_g_per_unit == pytest.approx(TRUE_CAL.span_g_per_unit, rel=2e-3)
        # The tray stayed on the plate: zero is the bare cell's, so the engine's net weight excludes the tray.
        assert cal.zero == pytest.approx(TRUE_CAL.zero, abs=2.0 / TRUE_CAL.span_g_per_unit)
        overlay = read_overlay(stack.data_dir)["bins"]["A01"]["calibration"]
        assert overlay["span_g_per_unit"] == cal.span_g_per_unit
        audit = [json.loads(x) for x in (stack.data_dir / AUDIT_FILE).read_text().splitlines()]
        assert [(a["kind"], a["installer"], a["check"]["ok"]) for a in audit] == [("calibration", "li", True)]
        assert audit[0]["before"]["span_g_per_unit"] == 1.0

        # Live, without a restart: the engine now counts the 5 items exactly.
        async def counted() -> bool:
            view = await stack.get("/api/stock")
            return bool(view[0]["count"] == 5)

        await eventually(counted, 60, "the recalibrated bin counted 5")

        # And a restart runs with it: the overlay in the gateway's data_dir merges at load.
        merged = load_config(_point_data_dir(stack))
        assert merged.store.bins[0].calibration.span_g_per_unit == cal.span_g_per_unit


def _point_data_dir(stack: InstallerStack) -> Path:
    """A copy of the store YAML whose data_dir is the gateway's, to load it as `shelfgate run` would."""
    text = stack.config_file.read_text(encoding="utf-8").replace(
        "data_dir: gw", f"data_dir: {stack.data_dir}"
    )
    out = stack.config_file.parent / "store-run.yaml"
    out.write_text(text, encoding="utf-8")
    return out


async def test_ctrl_c_leaves_the_calibration_unchanged(tmp_path: Path) -> None:
    async with installer_stack(tmp_path) as stack, calibrate(stack, "--mass-g", "1750") as term:
        before = stack.gateway.bins["A01"].calibration
        await term.expect(r"Empty the plate.*Enter: ")
        stack.empty_plate()
        term.send("\n")
        await term.expect(r"Place 1750 g on the plate, then press Enter: ")
        assert stack.gateway.raw_taps  # the wizard is listening
        term.send("\x03")  # ^C: the line discipline sends SIGINT to the foreground process group
        await term.expect(r"Cancelled: the calibration of A01 is unchanged")
        assert await term.wait() == 130
        assert stack.gateway.bins["A01"].calibration == before
        assert not (stack.data_dir / OVERLAY_FILE).exists()
        assert not (stack.data_dir / AUDIT_FILE).exists()
        assert not stack.gateway.raw_taps  # the session was cancelled on the gateway

        assert await stack.status("/api/installer/calibration/A01") == 404
