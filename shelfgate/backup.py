"""`shelfgate backup` and `shelfgate restore`: online SQLite backups of the gateway database, and a restore that
never reuses an event `seq`.

Backup uses SQLite's online backup API (sqlite3.Connection.backup, https://sqlite.org/backup.html): a consistent
snapshot taken while the gateway keeps writing, then `PRAGMA integrity_check` on the copy, then an atomic rename
into place — a half-written or corrupt file is never left under a backup's name. The timer in
`systemd/shelfgate-backup.timer` runs it every 5 minutes (recovery point ≤ 5 min).

Restore is the delicate half. The hub applies each event id `{gateway_id}:{seq}` at most once, so a restored
gateway that hands out a seq again would have its new event silently dropped as a duplicate at the hub. Events
written after the backup may already have reached the hub, and a dead gateway cannot say how many. So restore
moves `last_seq` forward past anything the old database can have issued: to `--seq-floor` when the operator
knows the hub's last seq for this gateway (`GET /api/fleet` at the hub shows it), else by `--seq-gap` (default
1 000 000 — more than 5 minutes of any store's events by orders of magnitude). The hub then sees the skipped
range as missing, asks for it with `cmd/resend`, and learns it is not retained: the loss of the last minutes
before a disk died is reported, never hidden, and nothing new collides with an old id.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import sqlite3
import sys
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from shelfgate.exits import EXIT_BAD_INPUT, EXIT_FAILURE, EXIT_OK

DB_NAME = "gateway.db"
BACKUP_PREFIX = "gateway-"
BACKUP_SUFFIX = ".db"
DEFAULT_KEEP = 288
"""24 h of backups at one per 5 minutes."""
DEFAULT_SEQ_GAP = 1_000_000


class BackupError(Exception):
    """A backup or restore could not be done; the message says why and what to do."""


@dataclass(frozen=True)
class BackupResult:
    path: Path
    size_bytes: int
    last_seq: int
    duration_s: float
    removed: tuple[Path, ...]
    offsite: Path | None


@dataclass(frozen=True)
class RestoreResult:
    restored_from: Path
    previous_saved_as: Path | None
    backup_last_seq: int
    new_last_seq: int
    duration_s: float


def _last_seq(conn: sqlite3.Connection) -> int:
    row = conn.execute("SELECT CAST(value AS INTEGER) FROM meta WHERE key='last_seq'").fetchone()
    if row is None:
        raise BackupError("not a shelfgate gateway database (no last_seq in its meta table)")
    return int(row[0])


def _check(path: Path) -> int:
    """Integrity-check a database file; return its last seq."""
    try:
        with contextlib.closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True)) as conn:
            (verdict,) = conn.execute("PRAGMA integrity_check").fetchone()
            if verdict != "ok":
                raise BackupError(f"{path}: integrity check failed: {verdict}")
            return _last_seq(conn)
    except sqlite3.DatabaseError as exc:
        raise BackupError(f"{path}: not a readable SQLite database: {exc}") from exc


def backups_in(folder: Path) -> list[Path]:
    """Backups in a folder, oldest first (names sort by their UTC timestamp)."""
    if not folder.is_dir():
        return []
    return sorted(
        p for p in folder.iterdir() if p.name.startswith(BACKUP_PREFIX) and p.name.endswith(BACKUP_SUFFIX)
    )


def backup(
    data_dir: Path,
    dest: Path,
    *,
    keep: int = DEFAULT_KEEP,
    offsite: Path | None = None,
    now: datetime | None = None,
) -> BackupResult:
    """Take one online backup of `data_dir/gateway.db` into `dest`, keep the newest `keep`, optionally copy off-site."""
    src = data_dir / DB_NAME
    if not src.is_file():
        raise BackupError(f"no gateway database at {src} (is data_dir right, and has the gateway run once?)")
    if keep < 1:
        raise BackupError("--keep must be at least 1")
    dest.mkdir(parents=True, exist_ok=True)
    stamp = (now or datetime.now(UTC)).strftime("%Y%m%dT%H%M%S%fZ")
    final = dest / f"{BACKUP_PREFIX}{stamp}{BACKUP_SUFFIX}"
    tmp = final.with_suffix(".partial")
    started = time.monotonic()
    try:
        with (
            contextlib.closing(sqlite3.connect(f"file:{src}?mode=ro", uri=True, timeout=30)) as source,
            contextlib.closing(sqlite3.connect(tmp)) as target,
        ):
            # pages=256 per step: the gateway's writer only waits for one short step at a time.
            source.backup(target, pages=256, sleep=0.005)
            target.commit()
        last_seq = _check(tmp)
        with open(tmp, "rb") as fh:
            os.fsync(fh.fileno())
        tmp.replace(final)
    except (sqlite3.Error, OSError) as exc:
        tmp.unlink(missing_ok=True)
        raise BackupError(f"backup of {src} into {dest} failed: {exc}") from exc
    except BackupError:
        tmp.unlink(missing_ok=True)
        raise
    removed = tuple(backups_in(dest)[:-keep])
    for old in removed:
        old.unlink(missing_ok=True)
    copied: Path | None = None
    if offsite is not None:
        try:
            offsite.mkdir(parents=True, exist_ok=True)
            part = offsite / (final.name + ".partial")
            shutil.copyfile(final, part)
            copied = part.replace(offsite / final.name)
            for old in backups_in(offsite)[:-keep]:
                old.unlink(missing_ok=True)
        except OSError as exc:
            raise BackupError(
                f"backup {final} is good, but the off-site copy to {offsite} failed: {exc}"
            ) from exc
    return BackupResult(
        path=final,
        size_bytes=final.stat().st_size,
        last_seq=last_seq,
        duration_s=time.monotonic() - started,
        removed=removed,
        offsite=copied,
    )


def _holders(db: Path) -> list[int]:
    """PIDs of other processes with the database (or its WAL) open, from /proc (Linux).

    SQLite locks cannot tell: in WAL mode a running gateway holds no lock between its short transactions. An open
    file descriptor can, and the gateway keeps its connection open for its whole life.
    """
    names = {str(db.resolve()), str(db.resolve()) + "-wal"}
    me = os.getpid()
    found: list[int] = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit() or int(proc.name) == me:
            continue
        try:
            fds = list((proc / "fd").iterdir())
        except OSError:
            continue
        for fd in fds:
            with contextlib.suppress(OSError):
                if os.readlink(fd) in names:
                    found.append(int(proc.name))
                    break
    return found


def restore(
    backup_path: Path,
    data_dir: Path,
    *,
    seq_gap: int | None = None,
    seq_floor: int | None = None,
    now: datetime | None = None,
) -> RestoreResult:
    """Put a backup in place as the gateway database, with `last_seq` moved past anything ever issued.

    With `seq_floor` (the hub's highest seq for this gateway) seq continues at `seq_floor + seq_gap` (gap 0 by
    default; give one if messages may still sit queued in the broker); without it at the backup's last seq
    plus `seq_gap` (default `DEFAULT_SEQ_GAP`).
    """
    started = time.monotonic()
    if not backup_path.is_file():
        raise BackupError(f"no backup at {backup_path}")
    if seq_gap is not None and seq_gap < 0:
        raise BackupError("--seq-gap must not be negative")
    backup_last = _check(backup_path)
    db = data_dir / DB_NAME
    holders = _holders(db) if db.exists() else []
    if holders:
        raise BackupError(
            f"{db} is open in process {', '.join(map(str, holders))} — stop the gateway first"
            " (systemctl stop shelfgate)"
        )
    if seq_floor is None:
        new_last = backup_last + (DEFAULT_SEQ_GAP if seq_gap is None else seq_gap)
    else:
        new_last = seq_floor + (seq_gap or 0)
    if seq_floor is not None and seq_floor < backup_last:
        raise BackupError(
            f"--seq-floor {seq_floor} is below the backup's own last seq {backup_last}: that cannot be the hub's"
            " last seq for this gateway (wrong gateway or wrong backup?)"
        )
    data_dir.mkdir(parents=True, exist_ok=True)
    staged = data_dir / (DB_NAME + ".restoring")
    shutil.copyfile(backup_path, staged)
    try:
        with contextlib.closing(sqlite3.connect(staged)) as conn:
            conn.execute("UPDATE meta SET value=? WHERE key='last_seq'", (str(new_last),))
            conn.execute(
                "INSERT INTO meta (key, value) VALUES ('restored_seq_skip', ?)"
                " ON CONFLICT(key) DO UPDATE SET value=excluded.value",
                (f"{backup_last + 1}-{new_last}",),
            )
            conn.commit()
    except sqlite3.Error as exc:
        staged.unlink(missing_ok=True)
        raise BackupError(f"could not prepare {backup_path} for restore: {exc}") from exc
    saved: Path | None = None
    if db.exists():
        stamp = (now or datetime.now(UTC)).strftime("%Y%m%dT%H%M%SZ")
        saved = data_dir / f"{DB_NAME}.before-restore-{stamp}"
        db.replace(saved)
        for side in ("-wal", "-shm"):
            extra = db.with_name(db.name + side)
            if extra.exists():
                extra.replace(saved.with_name(saved.name + side))
    staged.replace(db)
    return RestoreResult(
        restored_from=backup_path,
        previous_saved_as=saved,
        backup_last_seq=backup_last,
        new_last_seq=new_last,
        duration_s=time.monotonic() - started,
    )


# --- the commands ------------------------------------------------------------------------------------------


def _data_dir(config: Path) -> Path:
    from edge.config import load_config

    return Path(load_config(config).store.data_dir)


def run_backup(args: argparse.Namespace) -> int:
    """`shelfgate backup --config FILE [--dest DIR] [--keep N] [--offsite DIR]`."""
    from edge.config import ConfigError

    try:
        data_dir = _data_dir(args.config)
        dest = args.dest or data_dir / "backups"
        result = backup(data_dir, dest, keep=args.keep, offsite=args.offsite)
    except ConfigError as exc:
        print(exc, file=sys.stderr)
        return EXIT_BAD_INPUT
    except BackupError as exc:
        print(f"backup failed: {exc}", file=sys.stderr)
        return EXIT_FAILURE
    print(
        f"backup {result.path} ({result.size_bytes / 1e6:.1f} MB, last seq {result.last_seq},"
        f" {result.duration_s:.2f} s); removed {len(result.removed)} old"
        + (f"; off-site copy {result.offsite}" if result.offsite else "")
    )
    return EXIT_OK


def _newest_if_folder(path: Path) -> Path:
    if not path.is_dir():
        return path
    found = backups_in(path)
    if not found:
        raise BackupError(f"no backups in {path}")
    return found[-1]


def run_restore(args: argparse.Namespace) -> int:
    """`shelfgate restore BACKUP --config FILE [--seq-floor N | --seq-gap N]`."""
    from edge.config import ConfigError

    try:
        data_dir = _data_dir(args.config)
        result = restore(
            _newest_if_folder(args.backup), data_dir, seq_gap=args.seq_gap, seq_floor=args.seq_floor
        )
    except ConfigError as exc:
        print(exc, file=sys.stderr)
        return EXIT_BAD_INPUT
    except BackupError as exc:
        print(f"restore failed: {exc}", file=sys.stderr)
        return EXIT_FAILURE
    print(f"restored {result.restored_from} into {data_dir / DB_NAME} in {result.duration_s:.2f} s")
    if result.previous_saved_as:
        print(f"the database it replaced is kept as {result.previous_saved_as}")
    print(
        f"seq continues after {result.new_last_seq} (the backup ended at {result.backup_last_seq}; seqs"
        f" {result.backup_last_seq + 1}..{result.new_last_seq} are skipped so no event id is ever reused —"
        " the hub will report the ones it never received as missing)"
    )
    return EXIT_OK


def add_parsers(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Register `backup` and `restore`."""
    b = sub.add_parser("backup", help="online backup of the gateway database (run every 5 min by a timer)")
    b.add_argument("--config", type=Path, required=True)
    b.add_argument("--dest", type=Path, default=None, help="backup folder (default: DATA_DIR/backups)")
    b.add_argument("--keep", type=int, default=DEFAULT_KEEP, help=f"backups to keep (default {DEFAULT_KEEP})")
    b.add_argument(
        "--offsite", type=Path, default=None, help="also copy each backup here (e.g. a mounted share)"
    )
    b.set_defaults(func=run_backup)

    r = sub.add_parser("restore", help="restore the gateway database from a backup (gateway stopped)")
    r.add_argument("backup", type=Path, help="a backup file, or a folder (its newest backup)")
    r.add_argument("--config", type=Path, required=True)
    r.add_argument(
        "--seq-floor",
        type=int,
        default=None,
        help="the hub's last seq for this gateway (GET /api/fleet); seq continues above it",
    )
    r.add_argument(
        "--seq-gap",
        type=int,
        default=None,
        help=f"seqs to skip: past the backup's last (default {DEFAULT_SEQ_GAP}), or past --seq-floor (default 0)",
    )
    r.set_defaults(func=run_restore)
