"""Remote configuration (`cmd/config`, issue #4 part 7): HQ pushes a store config, the gateway validates it like a
local file, applies it atomically, restarts its runtime in-process, and rolls back if the new config does not
come up.

Two pieces:

- `handle_config` — the command handler (`Gateway._on_command` dispatches ``config`` here). It validates the
  pushed text with the very loader `shelfgate run` uses (`edge.config.load_config` on a temp file next to the
  config, so relative paths, profiles, the catalogue and the on-site calibration overlay resolve exactly as
  they will), refuses a push that would move the gateway to another store, gateway id or database, then
  records the push as *pending* in `data_dir`, keeps the running file as ``<name>.previous``, renames the new
  one over the config file and asks the runner to reload.
- `RemoteConfig.run` — the runner `shelfgate run` uses instead of a bare ``Gateway(cfg).run()``: it starts a
  `Gateway`, and on a reload request stops it (clean offline status, database closed) and starts a new one on
  the new file. While a push is pending the new gateway is on *probation*: it must start (every task up, the
  API bound), connect its uplink to the broker and stay up for `SETTLE_S`, within the push's `probation_s`. If
  not, the runner stops it, saves the failed file as ``<name>.failed``, restores ``<name>.previous`` and starts
  again on it; the outcome is ``rolled_back`` with the reason.

Why the outcome is persisted (``remote-config.json`` in `data_dir`) rather than returned: the handler's gateway
is torn down before anyone knows whether the new config works, and the uplink's own result cache dies with it.
So the handler of the first delivery never answers; the outcome is written once known, and answered when the
hub sends the command again with the same id — which it does when it sees the store's next birth (the new
gateway's uplink connecting) and on its retry timer (`hub.config_rollout`). A re-sent command that arrives
while the new gateway is still on probation waits for the verdict. Every answer for a command id, whatever the
outcome, is kept (the newest `RESULTS_KEPT`), so a redelivery is answered from the record, never run again.

A push may carry the product catalogue (`catalogue_text`), with or without a config (`stage_push`): it is staged
under the target file's own name in a temp folder beside it, and the temp config's one `catalogue:` line names
that copy, so `load_config` checks the catalogue and every bin SKU in it exactly as it will once written (the same
errors with both line numbers). The catalogue is written before the config, with its own ``.previous``, and both
are restored on a rollback (``.failed`` kept); the pending record carries its path and version so a crash in
between is resolved at the next start like a config push.

*Watch* (DOMAIN.md: "rollback when a rollout misbehaves, error rate > 2 % for 5 minutes"): after an applied push
the runner judges the new runtime's device poll error rate (`poll_counters`: failed polls / polls of Modbus
transmitters and scales) from its start until `watch_s` after it proved itself. Over `max_error_rate`, not
recovered in the window's second half, while the previous runtime's rate over its last `watch_s` (sampled every
`SAMPLE_S`) was not: the runner restores `.previous` and restarts on it. The first answer (`applied`) is already
out, so the verdict is kept in the state file and answered to the hub's *verdict queries* (`verdict_of`), each
with a fresh command id.

The on-site calibrations survive a push because they never were in the pushed text: `load_config` merges the
installer overlay in `data_dir` over the bins of whatever file it reads (`edge.calibration.merge_overlay`), and
`data_dir` may not change remotely. A push that drops a bin the overlay calibrated is refused with the
overlay's own error, like a local edit would be.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import hashlib
import json
import logging
import os
import re
import shutil
import tempfile
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

from pydantic import ValidationError

from cloud_bridge.config_push import ConfigArgs, ConfigResult, WatchState
from cloud_bridge.contract import Command, CommandResult
from cloud_bridge.systemd import SdNotifier
from edge.config import ConfigError, ConfigIssue, LoadedConfig, load_config
from edge.yamlfile import YamlFileError, nearest_line, parse_yaml

if TYPE_CHECKING:
    from edge.gateway import Gateway

log = logging.getLogger(__name__)

STATE_FILE: Final = "remote-config.json"
"""In `data_dir`: the pending push (if any) and the answers given, by command id."""
RESULTS_KEPT: Final = 64
"""Answers remembered for redelivered command ids; the hub retries one rollout's command, not hundreds."""
SETTLE_S: Final = 2.0
"""A new config is healthy once its gateway has been up and connected this long (a task that dies right after
start is caught)."""
RELOAD_GRACE_S: Final = 60.0
"""How long the accepting handler waits to be cancelled by the restart before it reports a stuck runner."""
_POLL_S: Final = 0.1
SAMPLE_S: Final = 1.0
"""How often the runner samples the gateway's device poll counters (for the previous config's error rate)."""
SAMPLES_KEPT: Final = 3600
"""An hour of samples at `SAMPLE_S`: the longest window a baseline is measured over."""
MIN_WATCH_POLLS: Final = 3
"""Fewer polls than this in a watch say nothing about an error rate: the push passes. Low, because a device that
went offline is polled with back-off (`drivers.modbus.client`), a handful of times a minute."""
POLLED_FAMILIES: Final = frozenset({"modbus", "scale"})
"""Device families whose `messages` are polls the gateway sends (a failed one is an error); scanners, RFID, BLE
and cameras report what arrives, where a rate of bad messages says little about the config."""

GatewayFactory = Callable[[LoadedConfig, Callable[["Gateway"], None]], "Gateway"]
"""Builds a gateway for a config with an `on_ready` callback (tests pass one with simulator seams)."""


# --- persisted state ------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Pending:
    """A push written to disk whose gateway has not yet proved itself."""

    command_id: str
    previous_version: str
    new_version: str
    probation_s: float
    catalogue_path: str | None = None
    """The catalogue file this push wrote (None: no catalogue pushed)."""
    catalogue_existed: bool = False
    """Whether `catalogue_path` existed before (its old bytes are in ``<name>.previous``)."""
    previous_catalogue_version: str | None = None
    new_catalogue_version: str | None = None
    watch_s: float = 0.0
    max_error_rate: float = 0.02
    baseline_error_rate: float | None = None
    """The previous config's device poll error rate over the last `watch_s` before the push (None: no polls)."""

    def as_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, doc: dict[str, Any]) -> Pending:
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in doc.items() if k in names})


@dataclass(frozen=True, slots=True)
class Staged:
    """A validated push: what the gateway will run once the files are written."""

    config: LoadedConfig
    """As `load_config` will load it (version and catalogue included)."""
    config_text: str | None
    """The new config file's text; None: the running file stays (a catalogue-only push)."""
    catalogue_text: str | None = None
    catalogue_path: Path | None = None
    """Where `catalogue_text` goes: the file the config's `catalogue:` names."""


@dataclass(slots=True)
class Watch:
    """An applied push whose device error rate is being watched."""

    pending: Pending
    until_mono: float


def poll_counters(gateway: Gateway) -> tuple[int, int]:
    """(polls, failed polls) summed over the gateway's polled devices (`POLLED_FAMILIES`), since it started."""
    polls = errors = 0
    for view in gateway.device_health():
        if view.family in POLLED_FAMILIES:
            polls += view.messages
            errors += view.errors
    return polls, errors


def error_rate(start: tuple[int, int], end: tuple[int, int]) -> tuple[float | None, int]:
    """(errors / polls between two counter samples, polls); the rate is None without polls."""
    polls = end[0] - start[0]
    if polls <= 0:
        return None, 0
    return max(end[1] - start[1], 0) / polls, polls


def _write_atomic(path: Path, data: bytes) -> None:
    """Replace `path` with `data` so a reader sees the old bytes or the new, never half (temp, fsync, rename)."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    _fsync_dir(path.parent)


def _fsync_dir(folder: Path) -> None:
    """Make a rename durable (the directory entry, not only the file's bytes)."""
    with contextlib.suppress(OSError):
        dfd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)


def format_issue(exc: ConfigError, issue: ConfigIssue, pushed: Path) -> str:
    """One problem as `shelfgate check-config` words it, ``line N: key: message``; a problem found in another
    file (the calibration overlay, a catalogue) names that file first."""
    text = str(issue)
    return text if exc.file == pushed else f"{exc.file.name}: {text}"


_CATALOGUE_LINE = re.compile(r"^catalogue[ \t]*:[ \t]*[^\s#|>].*$")
"""A one-line top-level `catalogue: <file>` (what a pushed catalogue needs to be staged beside)."""


def _catalogue_target(
    text: str, config_path: Path, catalogue_format: str | None, pushing_config: bool
) -> tuple[Path, int] | str:
    """The file a pushed catalogue goes to and the `catalogue:` line, or why a catalogue cannot be pushed."""
    try:
        data, lines = parse_yaml(text)
    except YamlFileError:
        return "unparsable"  # load_config reports it with its line
    which = "the pushed config" if pushing_config else "the running config"
    value = data.get("catalogue") if isinstance(data, dict) else None
    line = nearest_line(("catalogue",), lines)
    if not isinstance(value, str) or not value or line is None:
        return (
            f"catalogue: {which} names no catalogue file; a pushed catalogue is written to the file"
            " `catalogue:` names (push a config with `catalogue: catalogue.yaml`)"
        )
    if not _CATALOGUE_LINE.match(text.splitlines()[line - 1]):
        return f"line {line}: catalogue: write `catalogue: <file>` on one line to push a catalogue with it"
    target = Path(value)
    target = (target if target.is_absolute() else config_path.parent / target).resolve()
    suffix = target.suffix.lower()
    kind = "csv" if suffix == ".csv" else "yaml" if suffix in (".yaml", ".yml") else None
    if kind is None:
        return f"line {line}: catalogue: {target.name}: a catalogue is a .yaml, .yml or .csv file"
    if catalogue_format is not None and catalogue_format != kind:
        return (
            f"line {line}: catalogue: {which} names {target.name} ({kind.upper()}) but the push carries"
            f" {catalogue_format.upper()}; push the catalogue as {kind.upper()} or name a .{catalogue_format}"
            " file in the config"
        )
    return target, line


def _config_version(text: str, new: LoadedConfig) -> str:
    """`load_config`'s version of `text` as the config file (its bytes + this store's installer overlay)."""
    from edge.calibration import OVERLAY_FILE  # noqa: PLC0415 - edge.calibration imports edge.config

    overlay = Path(new.store.data_dir) / OVERLAY_FILE
    extra = overlay.read_bytes() if overlay.is_file() else b""
    return hashlib.sha256(text.encode("utf-8") + extra).hexdigest()[:12]


def validate_push(
    text: str, running: LoadedConfig, config_path: Path
) -> tuple[LoadedConfig | None, list[str]]:
    """A pushed config text alone (no catalogue): the config as it will load, or every problem (`stage_push`)."""
    staged, errors = stage_push(text, running, config_path)
    return (None, errors) if staged is None else (staged.config, [])


def stage_push(
    text: str | None,
    running: LoadedConfig,
    config_path: Path,
    *,
    catalogue_text: str | None = None,
    catalogue_format: str | None = None,
) -> tuple[Staged | None, list[str]]:
    """Load the pushed files as if they were the config file and its catalogue; the staged push, or every problem.

    `text` None keeps the running config file (a catalogue-only push). The config goes to a temp file beside the
    config; a pushed catalogue to a temp folder beside its target under the target's own name, and the temp
    config's one `catalogue:` line (same line number) names it — so `load_config` checks the catalogue, and
    every bin SKU in it, exactly as it will once written, and its errors quote the real file name. Temp files are
    removed again; nothing else is touched. Identity checks come on top of the loader's: a gateway cannot be moved
    to another store, gateway id or database remotely — that is a re-installation, and the outbox, seqs and
    calibrations in `data_dir` belong to this store.
    """
    folder = config_path.parent
    if text is None:
        try:
            text = config_path.read_text(encoding="utf-8")
        except OSError as exc:
            return None, [f"cannot read the running config {config_path}: {exc.strerror or exc}"]
        pushing_config = False
    else:
        pushing_config = True
    staged_text = text
    target: Path | None = None
    stage_dir: Path | None = None
    if catalogue_text is not None:
        found = _catalogue_target(text, config_path, catalogue_format, pushing_config)
        if isinstance(found, str) and found != "unparsable":
            return None, [found]
        if isinstance(found, tuple):
            target, line = found
            try:
                target.parent.mkdir(parents=True, exist_ok=True)
                stage_dir = Path(tempfile.mkdtemp(prefix=".push-", dir=target.parent))
                (stage_dir / target.name).write_text(catalogue_text, encoding="utf-8")
            except OSError as exc:
                if stage_dir is not None:
                    shutil.rmtree(stage_dir, ignore_errors=True)
                return None, [f"cannot write a temp file next to {target}: {exc.strerror or exc}"]
            lines_of = text.splitlines(keepends=True)
            ending = "\n" if lines_of[line - 1].endswith("\n") else ""
            lines_of[line - 1] = f"catalogue: {json.dumps(str(stage_dir / target.name))}{ending}"
            staged_text = "".join(lines_of)
    try:
        try:
            fd, tmp_name = tempfile.mkstemp(prefix=f".{config_path.name}.push-", suffix=".yaml", dir=folder)
        except OSError as exc:
            return None, [f"cannot write a temp file next to {config_path}: {exc.strerror or exc}"]
        tmp = Path(tmp_name)
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                f.write(staged_text)
            try:
                new = load_config(tmp)
            except ConfigError as exc:
                return None, [format_issue(exc, issue, tmp) for issue in exc.issues]
        finally:
            with contextlib.suppress(OSError):
                tmp.unlink()
    finally:
        if stage_dir is not None:
            shutil.rmtree(stage_dir, ignore_errors=True)
    if target is not None:
        new = dataclasses.replace(
            new,
            store=new.store.model_copy(update={"catalogue": target}),
            version=_config_version(text, new),
            path=config_path,
        )
    try:
        _, lines = parse_yaml(text)
    except YamlFileError:  # pragma: no cover - load_config parsed it already
        lines = {}
    old_s, new_s = running.store, new.store
    errors: list[str] = []

    def refuse(key: str, message: str) -> None:
        line = nearest_line((key,), lines)
        errors.append(f"{f'line {line}: ' if line else ''}{key}: {message}")

    if new_s.store_id != old_s.store_id:
        refuse(
            "store_id",
            f"{new_s.store_id!r} but this gateway is store {old_s.store_id!r}; a gateway cannot be moved to"
            " another store remotely (re-install it)",
        )
    if new_s.effective_gateway_id != old_s.effective_gateway_id:
        refuse(
            "gateway_id",
            f"{new_s.effective_gateway_id!r} but this gateway is {old_s.effective_gateway_id!r}; its event ids"
            " and MQTT session belong to that id (change it on site)",
        )
    if Path(new_s.data_dir).resolve() != Path(old_s.data_dir).resolve():
        refuse(
            "data_dir",
            f"{new_s.data_dir} but the gateway's database is in {old_s.data_dir}; it cannot move remotely",
        )
    if errors:
        return None, errors
    return Staged(
        new, text if pushing_config else None, catalogue_text if target is not None else None, target
    ), []


def _result(command_id: str, result: ConfigResult, error: str | None = None) -> CommandResult:
    return CommandResult(
        id=command_id, ok=result.outcome == "applied", error=error, result=result.model_dump(mode="json")
    )


# --- the runner and its command state ---------------------------------------------------------------------------


class _ReloadAwareNotifier(SdNotifier):
    """The gateway's systemd notifier, saying ``RELOADING=1`` instead of ``STOPPING=1`` when the runtime stops
    only to start again on a new config (sd_notify(3)): the next gateway's ``READY=1`` ends the reload, and
    systemd does not take the service for one shutting down."""

    def __init__(self, control: RemoteConfig) -> None:
        super().__init__()
        self._control = control

    def stopping(self) -> bool:
        if self._control.restarting:
            return self.notify("RELOADING=1", "STATUS=applying a config pushed by HQ")
        return super().stopping()


class RemoteConfig:
    """The remote-config state of one gateway process: pending push, answers by command id, reload signal, and
    the error-rate watch of the last applied push.

    `run()` is the process's gateway loop (see the module docstring); `handle()` is the `cmd/config` handler.
    """

    def __init__(self, config_path: Path, data_dir: Path) -> None:
        self.config_path = Path(config_path).resolve()
        self.previous_path = self.config_path.with_name(self.config_path.name + ".previous")
        self.failed_path = self.config_path.with_name(self.config_path.name + ".failed")
        self.state_path = Path(data_dir) / STATE_FILE
        self.pending: Pending | None = None
        self.results: dict[str, dict[str, Any]] = {}
        self.verdicts: dict[str, dict[str, Any]] = {}
        """Watch verdicts by push command id (`watch`, `reason`, rates), answered to verdict queries."""
        self.watching: Watch | None = None
        self.gateway: Gateway | None = None
        """The gateway running now (tests and the demo read its API port)."""
        self.restarting = False
        """True while a gateway is being stopped in order to start another (reload or rollback)."""
        self.restarts = 0
        self._reload = asyncio.Event()
        self._accepted: str | None = None
        """Command id accepted by this gateway and written to disk; the restart has not happened yet."""
        self._verdict = asyncio.Event()
        self._samples: deque[tuple[float, int, int]] = deque(maxlen=SAMPLES_KEPT)
        """(loop time, polls, errors) of the running gateway, every `SAMPLE_S` (the baseline's source)."""
        self._watch_failed: str | None = None
        """Set by the watch: why the watched push is to be rolled back (the runner does it)."""
        self._load()

    # --- state file ---

    def _load(self) -> None:
        try:
            doc = json.loads(self.state_path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return
        except (OSError, ValueError) as exc:
            # Losing the record costs at most a re-run of an idempotent push; refusing to start would cost the store.
            log.error(  # noqa: TRY400 - the message is the whole story
                "remote config: unreadable %s (%s); starting with no pending push", self.state_path, exc
            )
            return
        pending = doc.get("pending")
        if isinstance(pending, dict):
            self.pending = Pending.from_json(pending)
        results = doc.get("results")
        if isinstance(results, dict):
            self.results = {str(k): v for k, v in results.items() if isinstance(v, dict)}
        verdicts = doc.get("verdicts")
        if isinstance(verdicts, dict):
            self.verdicts = {str(k): v for k, v in verdicts.items() if isinstance(v, dict)}
        watching = doc.get("watching")
        if isinstance(watching, str) and self.verdicts.get(watching, {}).get("watch") == "watching":
            # The process stopped during a watch: the counters it measured are gone with it.
            self.verdicts[watching] = {
                "watch": "interrupted",
                "reason": "the gateway process restarted during the watch",
            }

    def _save(self) -> None:
        for table in (self.results, self.verdicts):
            while len(table) > RESULTS_KEPT:
                del table[next(iter(table))]
        doc = {
            "pending": None if self.pending is None else self.pending.as_json(),
            "results": self.results,
            "verdicts": self.verdicts,
            "watching": None if self.watching is None else self.watching.pending.command_id,
        }
        self.state_path.parent.mkdir(parents=True, exist_ok=True)
        _write_atomic(self.state_path, json.dumps(doc, ensure_ascii=False, indent=1).encode())

    def _record(self, answer: CommandResult) -> CommandResult:
        self.results[answer.id] = answer.model_dump(mode="json", exclude_none=True)
        self._save()
        return answer

    def answer_for(self, command_id: str) -> CommandResult | None:
        """The recorded answer to a command id, if it has one."""
        found = self.results.get(command_id)
        return None if found is None else CommandResult.model_validate(found)

    # --- the handler ---

    async def handle(self, running: LoadedConfig, command: Command) -> CommandResult:
        """`cmd/config` (see the module docstring); a redelivered id is answered from the record."""
        try:
            args = ConfigArgs.model_validate(command.args)
        except ValidationError as exc:
            first = exc.errors()[0]
            where = ".".join(str(p) for p in first["loc"]) or "args"
            return CommandResult(
                id=command.id, ok=False, error=f"invalid config args: {where}: {first['msg']}"
            )
        if args.verdict_of is not None:
            return self.verdict(command.id, args.verdict_of)
        known = self.answer_for(command.id)
        if known is not None:
            return known
        busy_with = self._accepted or (self.pending.command_id if self.pending else None)
        if busy_with == command.id:
            return await self._await_verdict(command.id)
        if busy_with is not None:
            # Not recorded: once the other push is settled the hub's retry of this id is taken normally.
            return CommandResult(
                id=command.id, ok=False, error=f"busy: config push {busy_with} is being applied; retry later"
            )
        running_catalogue = running.catalogue.version if running.catalogue is not None else None
        staged, errors = await asyncio.to_thread(
            stage_push,
            args.config_yaml,
            running,
            self.config_path,
            catalogue_text=args.catalogue_text,
            catalogue_format=args.catalogue_format,
        )
        if staged is None:
            log.warning("remote config %s rejected: %s", command.id, "; ".join(errors))
            reason = f"{len(errors)} error(s): " + "; ".join(errors[:5]) + ("; …" if len(errors) > 5 else "")
            outcome = ConfigResult(
                outcome="rejected",
                config_version=running.version,
                previous_version=running.version,
                catalogue_version=running_catalogue,
                previous_catalogue_version=running_catalogue,
                errors=errors,
                reason=reason,
            )
            what = "config" if args.config_yaml is not None else "catalogue"
            return self._record(_result(command.id, outcome, f"invalid {what}: {reason}"))
        new = staged.config
        new_catalogue = new.catalogue.version if new.catalogue is not None else None
        if new.version == running.version and (
            staged.catalogue_text is None or new_catalogue == running_catalogue
        ):
            log.info("remote config %s: version %s already running; nothing to do", command.id, new.version)
            same = ConfigResult(
                outcome="applied",
                config_version=new.version,
                previous_version=running.version,
                catalogue_version=running_catalogue,
                previous_catalogue_version=running_catalogue,
            )
            return self._record(_result(command.id, same))
        baseline = self._baseline_rate(args.watch_s)
        self._end_watch("interrupted", f"superseded by config push {command.id}")
        await asyncio.to_thread(self._write, command.id, args, staged, running, baseline)
        log.warning(
            "remote config %s: config %s → %s (catalogue %s → %s) written to %s; restarting the gateway on it"
            " (probation %.0f s)",
            command.id,
            running.version,
            new.version,
            running_catalogue,
            new_catalogue,
            self.config_path,
            args.probation_s,
        )
        self._accepted = command.id
        self._reload.set()
        # The restart cancels this handler (and the uplink it runs in); the answer goes out from the record once
        # the new gateway has proved itself or been rolled back.
        await asyncio.sleep(RELOAD_GRACE_S)
        raise RuntimeError(
            f"config {new.version} was written but the gateway did not restart within the grace"
        )

    def verdict(self, query_id: str, push_id: str) -> CommandResult:
        """A verdict query: the watch verdict of push `push_id` (never recorded: each query has its own id)."""
        found = self.verdicts.get(push_id)
        if found is None:
            return CommandResult(
                id=query_id, ok=False, error=f"no watch on record for config push {push_id!r}"
            )
        watch: WatchState = found["watch"]
        recorded = self.answer_for(push_id)
        base = ConfigResult.model_validate(recorded.result) if recorded and recorded.result else None
        result = ConfigResult(
            outcome="rolled_back" if watch == "rolled_back" else "applied",
            config_version=None if base is None else base.config_version,
            previous_version=None if base is None else base.previous_version,
            catalogue_version=None if base is None else base.catalogue_version,
            previous_catalogue_version=None if base is None else base.previous_catalogue_version,
            reason=found.get("reason"),
            restarted=watch == "rolled_back",
            watch=watch,
            error_rate=found.get("error_rate"),
            baseline_error_rate=found.get("baseline_error_rate"),
        )
        error = f"rolled back: {found.get('reason')}" if watch == "rolled_back" else None
        return CommandResult(
            id=query_id, ok=watch != "rolled_back", error=error, result=result.model_dump(mode="json")
        )

    def _write(
        self, command_id: str, args: ConfigArgs, staged: Staged, running: LoadedConfig, baseline: float | None
    ) -> None:
        """Record the push as pending, keep the running files as `.previous`, then rename the new ones in.

        In this order, so a crash at any point leaves a state `run()` resolves: a pending record whose versions
        are not the files' is answered rolled back at the next start (both files restored).
        """
        target = staged.catalogue_path
        new_catalogue = staged.config.catalogue
        self.pending = Pending(
            command_id,
            running.version,
            staged.config.version,
            args.probation_s,
            catalogue_path=None if target is None else str(target),
            catalogue_existed=target is not None and target.is_file(),
            previous_catalogue_version=None if running.catalogue is None else running.catalogue.version,
            new_catalogue_version=None if new_catalogue is None else new_catalogue.version,
            watch_s=args.watch_s,
            max_error_rate=args.max_error_rate,
            baseline_error_rate=baseline,
        )
        self._save()
        _write_atomic(self.previous_path, self.config_path.read_bytes())
        if target is not None and staged.catalogue_text is not None:
            if target.is_file():
                _write_atomic(_sibling(target, ".previous"), target.read_bytes())
            _write_atomic(target, staged.catalogue_text.encode("utf-8"))
        if staged.config_text is not None:
            _write_atomic(self.config_path, staged.config_text.encode("utf-8"))

    async def _await_verdict(self, command_id: str) -> CommandResult:
        """A re-sent push that is on probation right now: answer once the runner has judged it."""
        limit_s = (self.pending.probation_s if self.pending else 0.0) + RELOAD_GRACE_S
        async with asyncio.timeout(limit_s):
            while (answer := self.answer_for(command_id)) is None:
                self._verdict.clear()
                await self._verdict.wait()
        return answer

    # --- error-rate watch ---

    def _baseline_rate(self, window_s: float) -> float | None:
        """The running gateway's poll error rate over (at least) its last `window_s`, or over its samples so far
        when it has run for less; None without polls."""
        if not self._samples or window_s <= 0 or self.gateway is None:
            return None
        now = asyncio.get_running_loop().time()
        polls_now, errors_now = poll_counters(self.gateway)
        start = self._samples[0]
        for sample in self._samples:
            if sample[0] > now - window_s:
                break
            start = sample
        rate, _ = error_rate((start[1], start[2]), (polls_now, errors_now))
        return rate

    async def _sample(self, gateway: Gateway) -> None:
        """Sample a gateway's poll counters every `SAMPLE_S` until cancelled (its samples replace the last's)."""
        loop = asyncio.get_running_loop()
        self._samples.clear()
        while True:
            polls, errors = poll_counters(gateway)
            self._samples.append((loop.time(), polls, errors))
            await asyncio.sleep(SAMPLE_S)

    async def _watch(self, gateway: Gateway, watch: Watch) -> None:
        """Judge an applied push after `watch_s`: rolled back when its error rate over the whole window exceeded
        the limit and it did not recover in the window's second half (no start-up burst is blamed), while the
        previous config's rate did not exceed it.

        "Recovered" needs polls: a device that went offline is polled with back-off, so a quiet second half
        proves nothing and counts as still failing.
        """
        p = watch.pending
        loop = asyncio.get_running_loop()
        # The push took effect when this gateway started on it: its counters (zero then) are the window's start,
        # so the probation's polls count too — a dead device is polled with back-off, and its first failures
        # come fast.
        start = (0, 0)
        await asyncio.sleep(p.watch_s / 2)
        middle = poll_counters(gateway)
        await asyncio.sleep(max(watch.until_mono - loop.time(), 0.0))
        end = poll_counters(gateway)
        rate, polls = error_rate(start, end)
        late_rate, _ = error_rate(middle, end)
        limit = p.max_error_rate
        facts: dict[str, Any] = {"error_rate": rate, "baseline_error_rate": p.baseline_error_rate}
        recovered = late_rate is not None and late_rate <= limit
        if rate is None or polls < MIN_WATCH_POLLS or rate <= limit or recovered:
            self._end_watch("passed", None, **facts)
            return
        if p.baseline_error_rate is not None and p.baseline_error_rate > limit:
            log.warning(
                "remote config %s: error rate %.1f %% > %g %%, but the previous config had %.1f %%: kept",
                p.command_id,
                rate * 100,
                limit * 100,
                p.baseline_error_rate * 100,
            )
            self._end_watch(
                "passed",
                f"error rate {rate * 100:.1f} % > {limit * 100:g} %, as under the previous config"
                f" ({p.baseline_error_rate * 100:.1f} %): not caused by this push",
                **facts,
            )
            return
        reason = f"error rate {rate * 100:.1f} % > {limit * 100:g} % for {p.watch_s:.0f} s"
        if self.watching is not watch:  # superseded by a newer push meanwhile
            return
        log.error("remote config %s: %s; rolling back to the previous config", p.command_id, reason)
        self._watch_failed = reason
        self._reload.set()

    def _end_watch(self, verdict: WatchState, reason: str | None, **facts: Any) -> None:
        """Record the watched push's verdict (no-op without a watch)."""
        watch = self.watching
        if watch is None:
            return
        self.watching = None
        self.verdicts[watch.pending.command_id] = {"watch": verdict, "reason": reason, **facts}
        self._save()
        log.info(
            "remote config %s: watch %s%s", watch.pending.command_id, verdict, f": {reason}" if reason else ""
        )

    # --- the runner ---

    async def run(
        self,
        config: LoadedConfig,
        factory: GatewayFactory | None = None,
        *,
        on_ready: Callable[[Gateway], None] | None = None,
    ) -> None:
        """Run gateways until cancelled: restart on a reload request, judge a pending push, watch an applied one,
        roll back a bad one.

        Returns when a gateway's `run()` returns by itself; a gateway that fails outside probation propagates
        its error (systemd restarts the process).
        """
        make = factory or _default_factory
        cfg = config
        while True:
            pending = self.pending
            ready = asyncio.Event()

            def mark_ready(gw: Gateway, ready: asyncio.Event = ready) -> None:
                ready.set()
                if on_ready is not None:
                    on_ready(gw)

            gateway = make(cfg, mark_ready)
            gateway.remote_config = self
            gateway.notifier = _ReloadAwareNotifier(self)
            self.gateway = gateway
            self._accepted = None
            self._watch_failed = None
            self._reload.clear()
            task = asyncio.create_task(gateway.run(), name="gateway")
            helpers: list[asyncio.Task[None]] = [
                asyncio.create_task(self._sample(gateway), name="remote_config.sample")
            ]
            try:
                if pending is not None:
                    failure = await self._probation(gateway, task, ready, cfg, pending)
                    if failure is not None:
                        await self._stop(task)
                        cfg = await self._roll_back(pending, failure)
                        continue
                    if pending.watch_s > 0:
                        loop = asyncio.get_running_loop()
                        self.watching = Watch(pending, loop.time() + pending.watch_s)
                        self.verdicts[pending.command_id] = {"watch": "watching", "reason": None}
                        helpers.append(
                            asyncio.create_task(
                                self._watch(gateway, self.watching), name="remote_config.watch"
                            )
                        )
                    self._settle(pending, "applied", cfg)
                if not await self._until_reload(task):
                    return
                await self._stop(task)
                if self._watch_failed is not None and self.watching is not None:
                    reason, watched = self._watch_failed, self.watching.pending
                    self._watch_failed = None
                    cfg = await self._roll_back_watched(watched, reason)
                    continue
                try:
                    cfg = await asyncio.to_thread(load_config, self.config_path)
                except ConfigError as exc:
                    if self.pending is None:
                        raise
                    cfg = await self._roll_back(self.pending, f"the new config no longer loads: {exc}")
            finally:
                for helper in helpers:
                    helper.cancel()
                if not task.done():  # we are being stopped (or failed): the gateway stops for good
                    await self._stop(task, restarting=False)

    async def _probation(
        self,
        gateway: Gateway,
        task: asyncio.Task[None],
        ready: asyncio.Event,
        cfg: LoadedConfig,
        pending: Pending,
    ) -> str | None:
        """None when the new gateway came up healthy, else why not."""
        if cfg.version != pending.new_version:
            return f"the gateway restarted before config {pending.new_version} was in place"
        running_catalogue = cfg.catalogue.version if cfg.catalogue is not None else None
        if pending.catalogue_path is not None and running_catalogue != pending.new_catalogue_version:
            return f"the gateway restarted before catalogue {pending.new_catalogue_version} was in place"
        loop = asyncio.get_running_loop()
        deadline = loop.time() + pending.probation_s
        healthy_since: float | None = None
        while True:
            if task.done():
                exc = None if task.cancelled() else task.exception()
                return (
                    f"the gateway stopped during probation: {type(exc).__name__}: {exc}"
                    if exc
                    else ("the gateway stopped during probation")
                )
            uplink = gateway.uplink
            now = loop.time()
            if ready.is_set() and uplink is not None and uplink.connected:
                healthy_since = healthy_since if healthy_since is not None else now
                if now - healthy_since >= min(SETTLE_S, pending.probation_s / 2):
                    return None
            else:
                healthy_since = None
            if now >= deadline:
                if not ready.is_set():
                    return f"the gateway did not start within {pending.probation_s:.0f} s"
                b = cfg.store.broker
                last = (
                    f" (last error: {uplink.last_error})" if uplink is not None and uplink.last_error else ""
                )
                return (
                    f"not connected to the broker {b.host}:{b.port} within {pending.probation_s:.0f} s{last}"
                )
            await asyncio.sleep(_POLL_S)

    def _settle(
        self, pending: Pending, outcome: str, running: LoadedConfig, reason: str | None = None
    ) -> None:
        """Record the verdict on a pending push and wake a re-sent command waiting for it."""
        catalogue = running.catalogue.version if running.catalogue is not None else None
        if outcome == "applied":
            log.info("remote config %s: config %s is up; applied", pending.command_id, running.version)
            result = ConfigResult(
                outcome="applied",
                config_version=running.version,
                previous_version=pending.previous_version,
                catalogue_version=catalogue,
                previous_catalogue_version=pending.previous_catalogue_version,
                restarted=True,
                watch_s=pending.watch_s or None,
                baseline_error_rate=pending.baseline_error_rate,
            )
            answer = _result(pending.command_id, result)
        else:
            result = ConfigResult(
                outcome="rolled_back",
                config_version=running.version,
                previous_version=pending.previous_version,
                catalogue_version=catalogue,
                previous_catalogue_version=pending.previous_catalogue_version,
                reason=reason,
                restarted=True,
            )
            answer = _result(pending.command_id, result, f"rolled back: {reason}")
        self.pending = None
        self._record(answer)
        self._verdict.set()

    async def _roll_back(self, pending: Pending, reason: str) -> LoadedConfig:
        """Keep the failed files as `.failed`, restore `.previous`, record the verdict; the config to start next."""
        cfg = await asyncio.to_thread(self._restore_previous, pending)
        log.error(
            "remote config %s: config %s rolled back to %s: %s",
            pending.command_id,
            pending.new_version,
            pending.previous_version,
            reason,
        )
        self._settle(pending, "rolled_back", cfg, reason)  # on the loop: it wakes waiting handlers
        self.restarts += 1
        return cfg

    async def _roll_back_watched(self, pending: Pending, reason: str) -> LoadedConfig:
        """The watch found the applied push misbehaving: restore its previous files and record the verdict (the
        first answer, `applied`, is kept; verdict queries and a redelivered push hear `rolled_back`)."""
        cfg = await asyncio.to_thread(self._restore_previous, pending)
        log.error(
            "remote config %s: config %s rolled back to %s after its watch: %s",
            pending.command_id,
            pending.new_version,
            cfg.version,
            reason,
        )
        self.watching = None
        self.verdicts[pending.command_id] = {
            "watch": "rolled_back",
            "reason": reason,
            "baseline_error_rate": pending.baseline_error_rate,
        }
        self._settle(pending, "rolled_back", cfg, reason)  # the restart was counted by `_until_reload`
        return cfg

    def _restore_previous(self, pending: Pending) -> LoadedConfig:
        """File work of a rollback (a thread): `.failed` kept, `.previous` put back (config and any pushed
        catalogue) and loaded."""
        with contextlib.suppress(OSError):
            _write_atomic(self.failed_path, self.config_path.read_bytes())
        if self.previous_path.is_file():
            _write_atomic(self.config_path, self.previous_path.read_bytes())
        if pending.catalogue_path is not None:
            target = Path(pending.catalogue_path)
            previous = _sibling(target, ".previous")
            with contextlib.suppress(OSError):
                _write_atomic(_sibling(target, ".failed"), target.read_bytes())
            if pending.catalogue_existed and previous.is_file():
                _write_atomic(target, previous.read_bytes())
            elif not pending.catalogue_existed:
                with contextlib.suppress(OSError):
                    target.unlink()  # it did not exist before this push: nothing the old config names
        return load_config(self.config_path)

    async def _until_reload(self, task: asyncio.Task[None]) -> bool:
        """Wait for a reload request (True) or the gateway's end (False; its error propagates)."""
        waiter = asyncio.create_task(self._reload.wait(), name="remote_config.reload")
        try:
            await asyncio.wait({task, waiter}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            waiter.cancel()
        if task.done():
            task.result()
            return False
        self.restarts += 1
        return True

    async def _stop(self, task: asyncio.Task[None], *, restarting: bool = True) -> None:
        """Cancel a gateway and wait for its clean stop (offline status sent, database closed); `restarting`:
        another gateway follows (systemd hears RELOADING=1 instead of STOPPING=1)."""
        self.restarting = restarting
        task.cancel()
        try:
            await task
        except asyncio.CancelledError:
            current = asyncio.current_task()
            if current is not None and current.cancelling():
                raise
        except Exception:
            log.exception("remote config: the gateway failed while stopping")
        finally:
            self.restarting = False


def _sibling(path: Path, suffix: str) -> Path:
    """``catalogue.yaml`` → ``catalogue.yaml.previous`` (the name keeps the file's own suffix first)."""
    return path.with_name(path.name + suffix)


def _default_factory(cfg: LoadedConfig, on_ready: Callable[[Gateway], None]) -> Gateway:
    from edge.gateway import Gateway  # noqa: PLC0415 - edge.gateway imports this module

    return Gateway(cfg, on_ready=on_ready)


async def handle_config(
    control: RemoteConfig | None, running: LoadedConfig, command: Command
) -> CommandResult:
    """`cmd/config` for `Gateway._on_command`: refused when the gateway runs without the config runner."""
    if control is None:
        return CommandResult(
            id=command.id,
            ok=False,
            error="remote configuration needs the gateway started by `shelfgate run` (no config runner here)",
        )
    return await control.handle(running, command)


async def run_gateway(config: LoadedConfig, **kwargs: Any) -> None:
    """`shelfgate run`: the gateway under a `RemoteConfig` runner for its config file."""
    control = RemoteConfig(config.path, Path(config.store.data_dir))
    await control.run(config, **kwargs)


__all__ = [
    "MIN_WATCH_POLLS",
    "POLLED_FAMILIES",
    "RELOAD_GRACE_S",
    "SETTLE_S",
    "STATE_FILE",
    "GatewayFactory",
    "Pending",
    "RemoteConfig",
    "Staged",
    "Watch",
    "error_rate",
    "format_issue",
    "handle_config",
    "poll_counters",
    "run_gateway",
    "stage_push",
    "validate_push",
]
