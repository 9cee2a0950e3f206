"""`shelfgate users add|list|remove|passwd` — the gateway API's local accounts (edge/auth.py).

The file is named either directly (`--file users.json`) or through the store config (`--config store.yaml`,
reading `api.users_file`, relative to the config); with `--config` each change is also written to the
gateway's audit log (`data_dir/audit.db`) as the local operating-system user. The running gateway picks up a
change on its next request: no restart.

Passwords come from a prompt (typed twice, not echoed) or, for scripts, from the first line of stdin
(`--password-stdin`); never from an argument, which `ps` and shell history would show.
"""

from __future__ import annotations

import argparse
import getpass
import os
import sys
from pathlib import Path
from typing import Any

from edge.audit import Actor, audit_for
from edge.auth import ROLES, UserError, UserStore
from edge.yamlfile import YamlFileError, parse_yaml, read_text
from shelfgate.exits import EXIT_BAD_INPUT, EXIT_OK


def _paths(args: argparse.Namespace) -> tuple[Path, Path | None]:
    """(users file, data_dir for the audit log or None)."""
    if args.file is not None:
        return Path(args.file), None
    config = Path(args.config)
    data, _ = parse_yaml(read_text(config))
    api = data.get("api") if isinstance(data, dict) else None
    users_file = api.get("users_file") if isinstance(api, dict) else None
    if not users_file:
        raise UserError(
            f"{config}: no `api.users_file`; set it (e.g. `users_file: users.json`) or use --file"
        )
    data_dir = Path(str(data.get("data_dir", "var")))
    base = config.parent
    return (
        Path(users_file) if Path(users_file).is_absolute() else base / users_file,
        data_dir if data_dir.is_absolute() else base / data_dir,
    )


def _password(args: argparse.Namespace) -> str:
    if args.password_stdin:
        return sys.stdin.readline().rstrip("\r\n")
    first = getpass.getpass("password: ")
    if getpass.getpass("again: ") != first:
        raise UserError("the two passwords differ")
    return first


def _audit(data_dir: Path | None, action: str, target: str, before: Any, after: Any) -> None:
    if data_dir is None:
        return
    who = getpass.getuser() if hasattr(os, "getuid") else "local"
    audit_for(data_dir).record(action, target, before, after, actor=Actor(f"os:{who}", "admin", "local"))


def _users(args: argparse.Namespace) -> int:
    try:
        users_file, data_dir = _paths(args)
        store = UserStore(users_file)
        if args.users_command == "list":
            for u in sorted(store.users().values(), key=lambda u: u.name):
                print(f"{u.name}\t{u.role}\t{u.created_at}")
            return EXIT_OK
        if args.users_command == "add":
            user = store.add(args.name, args.role, _password(args))
            _audit(data_dir, "user.add", user.name, None, {"role": user.role})
            print(f"added {user.name} ({user.role}) to {users_file}")
        elif args.users_command == "remove":
            gone = store.remove(args.name)
            _audit(data_dir, "user.remove", gone.name, {"role": gone.role}, None)
            print(f"removed {gone.name} from {users_file}")
        elif args.users_command == "passwd":
            changed = store.set_password(args.name, _password(args))
            _audit(data_dir, "user.passwd", changed.name, None, {"password": "changed"})
            print(f"new password for {changed.name}")
    except (UserError, YamlFileError, OSError) as exc:
        print(f"shelfgate users: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    return EXIT_OK


def add_parser(sub: Any) -> None:
    """Register `users` on the CLI's subparsers."""
    u = sub.add_parser(
        "users", help="gateway API accounts: add, list, remove, passwd (roles: " + ", ".join(ROLES) + ")"
    )
    where = u.add_mutually_exclusive_group(required=True)
    where.add_argument("--file", type=Path, help="the users file (JSON, mode 0600)")
    where.add_argument(
        "--config", type=Path, help="a store config: its `api.users_file` (and audit to data_dir)"
    )
    cmds = u.add_subparsers(dest="users_command", required=True, metavar="ACTION")
    a = cmds.add_parser("add", help="create a user")
    a.add_argument("name")
    a.add_argument("--role", required=True, choices=ROLES)
    a.add_argument("--password-stdin", action="store_true", help="read the password from stdin's first line")
    cmds.add_parser("list", help="users and roles (never hashes)")
    r = cmds.add_parser("remove", help="delete a user; their sessions end")
    r.add_argument("name")
    p = cmds.add_parser("passwd", help="set a new password")
    p.add_argument("name")
    p.add_argument("--password-stdin", action="store_true", help="read the password from stdin's first line")
    u.set_defaults(func=_users)


__all__ = ["add_parser"]
