"""Fixtures for the fault-injection suite: a running rig (tests/reliability/harness.py).

`shared_rig` is one rig for a whole module (its tests run on the module's event loop): starting two Python
services and waiting for the first counts costs ~10 s on a loaded CI machine, and a fault suite where each
fault lands on the state the previous ones left is the harder test anyway. `rig` is a fresh one per test."""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import pytest_asyncio

from tests.reliability.harness import Rig


def _require_mosquitto() -> None:
    if shutil.which("mosquitto") is None and not Path("/usr/sbin/mosquitto").exists():
        pytest.skip("mosquitto is not installed (Debian: apt-get install mosquitto)")


@pytest.fixture
async def rig(tmp_path: Path) -> AsyncIterator[Rig]:
    """Store simulator + gateway and hub subprocesses + Mosquitto behind a switchable proxy, all up and counted."""
    _require_mosquitto()
    async with Rig(tmp_path / "rig", seed=11) as r:
        yield r


async def _mount_small_tmpfs(path: Path, size: str) -> str | None:
    """Mount a tmpfs of `size` on path; None if done, else why not (not root, no CAP_SYS_ADMIN...)."""
    if os.geteuid() != 0:
        return "mounting a tmpfs needs root"
    done = await asyncio.to_thread(
        subprocess.run,
        ["mount", "-t", "tmpfs", "-o", f"size={size},mode=0700", "tmpfs", str(path)],
        capture_output=True,
        text=True,
        check=False,
    )
    return None if done.returncode == 0 else f"mount failed: {done.stderr.strip() or done.returncode}"


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def shared_rig(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Rig]:
    """One rig for every test of a module (mark the module `pytest.mark.asyncio(loop_scope="module")`).

    The gateway's data_dir is an 8 MiB tmpfs when this process may mount one, so a test can fill the disk that
    holds the outbox; `rig.small_disk` says whether it is, `rig.small_disk_reason` why not."""
    _require_mosquitto()
    base = tmp_path_factory.mktemp("shared")
    data_dir = base / "gwdata"
    data_dir.mkdir()
    why_not = await _mount_small_tmpfs(data_dir, "8m")
    try:
        async with Rig(base / "rig", seed=23, data_dir=data_dir) as r:
            r.small_disk = why_not is None
            r.small_disk_reason = why_not or ""
            yield r
    finally:
        if why_not is None:
            await asyncio.to_thread(subprocess.run, ["umount", "-l", str(data_dir)], check=False)
