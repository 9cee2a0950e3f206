"""`cmd/config` at the gateway (edge/remote_config.py) without a broker: validation exactly like a local file,
identity refusals, answers recorded by command id across restarts, and the runner's probation and rollback with a
stand-in gateway at the factory seam (the real gateway + broker path is tests/integration/test_remote_config.py).
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace
from typing import Any, cast

import pytest

from cloud_bridge.config_push import ConfigResult
from cloud_bridge.contract import Command, CommandResult
from edge.calibration import update_overlay
from edge.config import Calibration, LoadedConfig, load_config
from edge.gateway import Gateway
from edge.remote_config import STATE_FILE, RemoteConfig, handle_config, validate_push

pytestmark = pytest.mark.timeout(60)

BASE = """\
store_id: s1
data_dir: data
buses:
  - {id: tcp1, kind: tcp, host: 127.0.0.1, port: 1}
transmitters:
  - {id: tx1, bus: tcp1, unit_id: 1, profile: wt-int32-abcd}
bins:
  - id: A01
    sku: '06901234567892'
    name: {zh: 商品, en: Item}
    unit_weight_g: 350
    calibration: {zero: 1000, span_g_per_unit: 0.05}
    safety_stock: 4
    max_stock: 12
    device: tx1
    channel: 0
"""


@pytest.fixture
def config_file(tmp_path: Path) -> Path:
    path = tmp_path / "etc" / "store.yaml"
    path.parent.mkdir()
    path.write_text(BASE, encoding="utf-8")
    return path


def command(cid: str, text: str, **args: Any) -> Command:
    return Command(id=cid, issued_at="2026-11-23T10:00:00.000Z", args={"config_yaml": text, **args})


def text_of(path: Path) -> str:
    return path.read_text(encoding="utf-8")


def write_state(data_dir: Path, doc: dict[str, Any]) -> None:
    data_dir.mkdir(parents=True, exist_ok=True)
    (data_dir / STATE_FILE).write_text(json.dumps(doc), encoding="utf-8")


async def answered(control: RemoteConfig, command_id: str) -> None:
    """Poll (hang guard: 30 s) until the runner has recorded an answer for `command_id`."""
    for _ in range(600):
        if control.answer_for(command_id) is not None:
            return
        await asyncio.sleep(0.05)
    pytest.fail(f"no answer recorded for {command_id}")


def outcome(answer: CommandResult) -> ConfigResult:
    assert answer.result is not None
    return ConfigResult.model_validate(answer.result)


def test_invalid_push_lists_every_problem_with_line_and_key(config_file: Path) -> None:
    running = load_config(config_file)
    bad = BASE.replace("safety_stock: 4", "safety_stock: -1").replace("max_stock: 12", "max_stock: lots")
    new, errors = validate_push(bad, running, config_file)
    assert new is None
    assert "line 13: bins[0].safety_stock: Input should be greater than or equal to 0" in errors
    assert any(e.startswith("line 14: bins[0].max_stock:") for e in errors), errors
    assert list(config_file.parent.iterdir()) == [config_file]  # the temp file is gone


def test_broken_yaml_is_reported_with_its_line(config_file: Path) -> None:
    new, errors = validate_push(BASE + "  - id: [unclosed\n", load_config(config_file), config_file)
    assert new is None
    assert len(errors) == 1
    assert errors[0].startswith("line 18: <file>: YAML: ")  # where the parser noticed, as check-config says


def test_moving_the_gateway_is_refused_at_the_key(config_file: Path) -> None:
    running = load_config(config_file)
    moved = BASE.replace("store_id: s1", "store_id: s2").replace("data_dir: data", "data_dir: elsewhere")
    new, errors = validate_push(moved, running, config_file)
    assert new is None
    assert errors[0].startswith("line 1: store_id: 's2' but this gateway is store 's1'")
    assert any(e.startswith("line 1: gateway_id: 's2-gw'") for e in errors)  # follows the store id
    assert any(e.startswith("line 2: data_dir: ") for e in errors)


def test_site_calibration_survives_a_push(config_file: Path) -> None:
    running = load_config(config_file)
    on_site = Calibration(zero=1234.5, span_g_per_unit=0.0498)
    update_overlay(Path(running.store.data_dir), "A01", calibration=on_site)
    pushed = BASE.replace("safety_stock: 4", "safety_stock: 6")
    new, errors = validate_push(pushed, load_config(config_file), config_file)
    assert errors == []
    assert new is not None
    assert new.store.bins[0].safety_stock == 6
    assert new.store.bins[0].calibration.zero == pytest.approx(1234.5)
    # A push that drops the calibrated bin is refused by the overlay's own check, naming the overlay.
    no_bins = BASE.split("bins:", maxsplit=1)[0] + "bins: []\n"
    new, errors = validate_push(no_bins, running, config_file)
    assert new is None
    assert errors == ["installer-overlay.yaml: bins.A01: no bin 'A01' in the store config"]


async def test_answers_are_recorded_and_survive_a_restart(config_file: Path) -> None:
    running = load_config(config_file)
    data_dir = Path(running.store.data_dir)
    control = RemoteConfig(config_file, data_dir)
    bad = BASE.replace("safety_stock: 4", "safety_stock: x")
    first = await control.handle(running, command("c1", bad))
    assert not first.ok
    assert first.error is not None
    assert first.error.startswith("invalid config: 1 error(s): line 13: bins[0].safety_stock:")
    assert outcome(first).outcome == "rejected"
    # Same id after a process restart, even with other text: answered from the record, not run again.
    again = await RemoteConfig(config_file, data_dir).handle(running, command("c1", BASE))
    assert again == first
    assert json.loads((data_dir / STATE_FILE).read_text())["results"]["c1"]["ok"] is False
    # The running text again: applied at once, no restart.
    same = await control.handle(running, command("c2", BASE))
    assert same.ok
    assert outcome(same).restarted is False
    assert outcome(same).config_version == running.version
    assert text_of(config_file) == BASE


async def test_refusals_outside_the_runner(config_file: Path) -> None:
    running = load_config(config_file)
    answer = await handle_config(None, running, command("c1", BASE))
    assert answer.error == (
        "remote configuration needs the gateway started by `shelfgate run` (no config runner here)"
    )
    control = RemoteConfig(config_file, Path(running.store.data_dir))
    bad_args = await control.handle(running, Command(id="c2", issued_at="x", args={"config_yaml": ""}))
    assert bad_args.error is not None
    assert bad_args.error.startswith("invalid config args: config_yaml:")


# --- the runner, with a stand-in gateway -------------------------------------------------------------------------


class StandIn:
    """What the runner uses of a `Gateway`: run(), uplink.connected, on_ready, device_health() (no devices here);
    `connects` decides the uplink."""

    def __init__(self, cfg: LoadedConfig, on_ready: Callable[[Gateway], None], connects: bool) -> None:
        self.config = cfg
        self.on_ready = on_ready
        self.uplink = SimpleNamespace(connected=False, last_error=None if connects else "refused")
        self.connects = connects
        self.remote_config: RemoteConfig | None = None
        self.notifier: object = None

    def device_health(self) -> list[Any]:
        return []

    async def run(self) -> None:
        self.on_ready(cast(Gateway, self))
        self.uplink.connected = self.connects
        await asyncio.Event().wait()


async def test_runner_applies_a_healthy_push_and_rolls_back_a_dead_one(config_file: Path) -> None:
    running = load_config(config_file)
    control = RemoteConfig(config_file, Path(running.store.data_dir))
    built: list[StandIn] = []

    def factory(cfg: LoadedConfig, on_ready: Callable[[Gateway], None]) -> Gateway:
        # A config whose safety stock is 9 stands for one that never reaches its broker.
        gw = StandIn(cfg, on_ready, connects=cfg.store.bins[0].safety_stock != 9)
        built.append(gw)
        return cast(Gateway, gw)

    task = asyncio.create_task(control.run(running, factory))
    try:

        async def push_and_resend(cid: str, text: str) -> CommandResult:
            first = asyncio.create_task(control.handle(built[-1].config, command(cid, text, probation_s=1)))
            await answered(control, cid)
            assert first.cancelled() or not first.done() or first.exception() is not None
            first.cancel()
            # The hub's resend, to whichever gateway runs now.
            return await control.handle(built[-1].config, command(cid, text, probation_s=1))

        await asyncio.sleep(0)
        good = BASE.replace("safety_stock: 4", "safety_stock: 7")
        applied = await push_and_resend("c-good", good)
        assert applied.ok
        assert outcome(applied).restarted is True
        assert built[-1].config.store.bins[0].safety_stock == 7
        assert len(built) == 2

        dead = BASE.replace("safety_stock: 4", "safety_stock: 9")
        rolled = await push_and_resend("c-dead", dead)
        assert not rolled.ok
        assert (
            rolled.error
            == "rolled back: not connected to the broker 127.0.0.1:1883 within 1 s (last error: refused)"
        )
        assert outcome(rolled).config_version == built[-1].config.version
        assert [gw.config.store.bins[0].safety_stock for gw in built] == [4, 7, 9, 7]
        assert text_of(config_file) == good
        assert text_of(config_file.with_name("store.yaml.failed")) == dead
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task


async def test_a_push_interrupted_before_its_file_was_written_is_rolled_back_at_start(
    config_file: Path,
) -> None:
    running = load_config(config_file)
    data_dir = Path(running.store.data_dir)
    pending = {"command_id": "c9", "previous_version": running.version, "new_version": "0123456789ab"}
    write_state(data_dir, {"pending": {**pending, "probation_s": 5}, "results": {}})
    control = RemoteConfig(config_file, data_dir)
    config_file.with_name("store.yaml.previous").write_text(BASE, encoding="utf-8")

    def factory(cfg: LoadedConfig, on_ready: Callable[[Gateway], None]) -> Gateway:
        return cast(Gateway, StandIn(cfg, on_ready, connects=True))

    task = asyncio.create_task(control.run(running, factory))
    try:
        await answered(control, "c9")
        answer = control.answer_for("c9")
        assert answer is not None
        assert answer.error == "rolled back: the gateway restarted before config 0123456789ab was in place"
        assert control.pending is None
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
