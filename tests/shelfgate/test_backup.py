"""`shelfgate backup` / `restore` on real gateway databases (GatewayStore files), including a backup taken while
another process keeps writing, and a restore refused while a process holds the database."""

from __future__ import annotations

import asyncio
import sqlite3
import subprocess
import sys
import textwrap
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from edge.store import GatewayStore, NewEvent
from shelfgate.backup import BackupError, backup, backups_in, restore
from shelfgate.cli import main

CONFIG = """\
store_id: bk-1
data_dir: {data_dir}
buses: [{{id: tcp1, kind: tcp, host: 127.0.0.1, port: 5020}}]
transmitters: [{{id: tx1, bus: tcp1, unit_id: 1, profile: wt-int32-abcd}}]
bins:
  - {{id: A01, sku: "06901234567892", name: {{zh: 可乐, en: Cola}}, unit_weight_g: 350,
      calibration: {{zero: 0, span_g_per_unit: 1}}, safety_stock: 2, max_stock: 10, device: tx1, channel: 0}}
"""


async def _write_events(db: Path, n: int) -> int:
    async with GatewayStore(db) as store:
        for i in range(n):
            await store.record([NewEvent("stock.changed", "2026-11-23T10:00:00Z", {"bin_id": "A01", "i": i})])
        return await store.last_seq()


def _config(tmp_path: Path) -> Path:
    profiles = Path(__file__).resolve().parents[2] / "config" / "profiles"
    cfg_dir = tmp_path / "cfg"
    (cfg_dir / "profiles").mkdir(parents=True)
    for p in profiles.glob("*.yaml"):
        (cfg_dir / "profiles" / p.name).write_text(p.read_text(encoding="utf-8"), encoding="utf-8")
    path = cfg_dir / "store.yaml"
    path.write_text(CONFIG.format(data_dir=tmp_path / "data"), encoding="utf-8")
    return path


async def test_backup_then_restore_continues_seq_past_everything_issued(tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.mkdir()
    db = data / "gateway.db"
    assert await _write_events(db, 5) == 5
    result = backup(data, tmp_path / "backups")
    assert result.last_seq == 5
    assert result.path.name.startswith("gateway-")
    # The gateway goes on after the backup: these seqs may have reached the hub before the disk died.
    assert await _write_events(db, 3) == 8

    restored = restore(result.path, data, seq_gap=1000)
    assert restored.backup_last_seq == 5
    assert restored.new_last_seq == 1005
    assert restored.previous_saved_as is not None
    assert restored.previous_saved_as.exists()
    async with GatewayStore(db) as store:
        (seq,) = await store.record([NewEvent("stock.changed", "2026-11-23T10:05:00Z", {"bin_id": "A01"})])
        assert seq == 1006, "a restored gateway must never reuse a seq the hub may have seen"
        ledger = await store.ledger(after_seq=0)
        assert [r.seq for r in ledger] == [1, 2, 3, 4, 5, 1006]


async def test_seq_floor_from_the_hub_is_used_and_a_floor_below_the_backup_is_refused(tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.mkdir()
    await _write_events(data / "gateway.db", 4)
    b = backup(data, tmp_path / "b")
    assert restore(b.path, data, seq_floor=9).new_last_seq == 9
    assert restore(b.path, data, seq_floor=9, seq_gap=100).new_last_seq == 109
    with pytest.raises(BackupError, match="below the backup's own last seq"):
        restore(b.path, data, seq_floor=2)


def test_backup_is_consistent_while_another_process_writes(tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.mkdir()
    db = data / "gateway.db"
    asyncio.run(_write_events(db, 1))
    writer = subprocess.Popen(  # a second process appending events as fast as it can, as the gateway would
        [
            sys.executable,
            "-c",
            textwrap.dedent(
                f"""
                import asyncio
                from pathlib import Path
                from edge.store import GatewayStore, NewEvent
                async def main():
                    async with GatewayStore(Path({str(db)!r})) as s:
                        print("ready", flush=True)
                        for i in range(100000):
                            await s.record([NewEvent("stock.changed", "2026-11-23T10:00:00Z", {{"i": i}})])
                asyncio.run(main())
                """
            ),
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert writer.stdout is not None
        assert writer.stdout.readline().strip() == "ready"
        results = []
        for k in range(3):
            results.append(backup(data, tmp_path / "b", now=datetime(2026, 11, 23, 10, 0, k, tzinfo=UTC)))
            time.sleep(0.2)
        assert writer.poll() is None, "the writer must still be running: the backups were online"
    finally:
        writer.kill()
        writer.communicate()
    seqs = [r.last_seq for r in results]
    assert seqs == sorted(seqs)
    assert seqs[-1] > seqs[0], "the writer kept writing between backups"
    for r in results:
        with sqlite3.connect(r.path) as conn:
            assert conn.execute("PRAGMA integrity_check").fetchone() == ("ok",)
            # Consistent snapshot: ledger rows 1..last_seq, no hole, nothing beyond it.
            count, top = conn.execute("SELECT COUNT(*), MAX(seq) FROM ledger").fetchone()
            assert (count, top) == (r.last_seq, r.last_seq)


async def test_rotation_keeps_the_newest_and_offsite_copies(tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.mkdir()
    await _write_events(data / "gateway.db", 2)
    t0 = datetime(2026, 11, 23, 10, 0, tzinfo=UTC)
    for k in range(5):
        r = backup(data, tmp_path / "b", keep=3, offsite=tmp_path / "nas", now=t0 + timedelta(minutes=5 * k))
    local = backups_in(tmp_path / "b")
    assert len(local) == 3
    assert local[-1] == r.path
    assert [p.name for p in backups_in(tmp_path / "nas")] == [p.name for p in local]
    assert not list((tmp_path / "b").glob("*.partial"))


def test_restore_refuses_while_a_process_holds_the_database(tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.mkdir()
    asyncio.run(_write_events(data / "gateway.db", 2))
    b = backup(data, tmp_path / "b")
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            f"import sqlite3, sys, time; c = sqlite3.connect({str(data / 'gateway.db')!r}); c.execute('SELECT 1');"
            " print('open', flush=True); time.sleep(60)",
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout is not None
        assert holder.stdout.readline().strip() == "open"
        with pytest.raises(BackupError, match=f"open in process {holder.pid}"):
            restore(b.path, data)
    finally:
        holder.kill()
        holder.communicate()
    assert restore(b.path, data).new_last_seq == 2 + 1_000_000


def test_bad_inputs_say_what_is_wrong(tmp_path: Path) -> None:
    with pytest.raises(BackupError, match="no gateway database"):
        backup(tmp_path, tmp_path / "b")
    junk = tmp_path / "junk.db"
    junk.write_bytes(b"not sqlite at all" * 100)
    with pytest.raises(BackupError, match="not a readable SQLite database"):
        restore(junk, tmp_path / "data")
    with sqlite3.connect(tmp_path / "other.db") as conn:
        conn.execute("CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT)")
    with pytest.raises(BackupError, match="not a shelfgate gateway database"):
        restore(tmp_path / "other.db", tmp_path / "data")


def test_the_commands(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cfg = _config(tmp_path)
    assert main(["backup", "--config", str(cfg)]) == 1
    assert "no gateway database" in capsys.readouterr().err
    (tmp_path / "data").mkdir()
    asyncio.run(_write_events(tmp_path / "data" / "gateway.db", 3))
    assert main(["backup", "--config", str(cfg), "--keep", "2"]) == 0
    out = capsys.readouterr().out
    assert "last seq 3" in out
    assert (
        main(["restore", str(tmp_path / "data" / "backups"), "--config", str(cfg), "--seq-floor", "40"]) == 0
    )
    out = capsys.readouterr().out
    assert "seq continues after 40" in out
    assert "kept as" in out
    assert main(["restore", str(tmp_path / "nothing-here"), "--config", str(cfg)]) == 1
    assert "no backup at" in capsys.readouterr().err
