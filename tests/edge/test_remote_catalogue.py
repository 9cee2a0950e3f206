"""Catalogue pushes and the error-rate watch at the gateway (edge/remote_config.py) without a broker: a pushed
catalogue is validated exactly like the local file (its own errors with lines, every bin SKU required), written
beside the config with `.previous` kept, both restored on rollback; the watch rolls an applied push back when its
device poll error rate is over the limit while the previous config's was not, and answers verdict queries.

The runner uses a stand-in gateway at the factory seam whose device counters the test sets (the real gateway
polling a real Modbus simulator is tests/integration/test_remote_catalogue.py).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace
from typing import Any, cast

import pytest

from cloud_bridge.config_push import ConfigResult
from cloud_bridge.contract import Command, CommandResult
from edge.config import LoadedConfig, load_config
from edge.devices.base import DeviceHealthView
from edge.gateway import Gateway
from edge.remote_config import Pending, RemoteConfig, error_rate, stage_push
from edge.retail.catalogue import parse_catalogue_yaml

pytestmark = pytest.mark.timeout(60)

GTIN = "06901234567892"
OTHER = "07032069804988"

BASE = f"""\
store_id: s1
data_dir: data
catalogue: catalogue.yaml
buses:
  - {{id: tcp1, kind: tcp, host: 127.0.0.1, port: 1}}
transmitters:
  - {{id: tx1, bus: tcp1, unit_id: 1, profile: wt-int32-abcd}}
bins:
  - id: A01
    sku: '{GTIN}'
    name: {{zh: 商品, en: Item}}
    unit_weight_g: 350
    calibration: {{zero: 1000, span_g_per_unit: 0.05}}
    safety_stock: 4
    max_stock: 12
    device: tx1
    channel: 0
"""


def catalogue(price: str = "3.50", *, gtins: tuple[str, ...] = (GTIN,)) -> str:
    items = "".join(
        f'  - gtin: "{g}"\n    name: {{zh: 商品, en: Item}}\n    price: "{price}"\n    category: misc\n'
        for g in gtins
    )
    return "currency: CNY\nitems:\n" + items


@pytest.fixture
def config_file(tmp_path: Path) -> Path:
    path = tmp_path / "etc" / "store.yaml"
    path.parent.mkdir()
    path.write_text(BASE, encoding="utf-8")
    (path.parent / "catalogue.yaml").write_text(catalogue(), encoding="utf-8")
    return path


def push(cid: str, **args: Any) -> Command:
    return Command(id=cid, issued_at="2026-11-23T10:00:00.000Z", args=args)


def text_of(path: Path) -> str:
    return path.read_text(encoding="utf-8")


def write(path: Path, text: str) -> None:
    path.write_text(text, encoding="utf-8")


def test_a_pushed_catalogue_is_checked_like_the_local_file(config_file: Path) -> None:
    running = load_config(config_file)
    folder = config_file.parent
    before = sorted(p.name for p in folder.iterdir())
    bad_price = catalogue().replace('price: "3.50"', 'price: "3.5.0"')
    staged, errors = stage_push(None, running, config_file, catalogue_text=bad_price)
    assert staged is None
    assert len(errors) == 1
    assert errors[0].startswith("line 3: catalogue: catalogue.yaml: line 5: items[0].price:"), errors

    sku_line = 1 + BASE.splitlines().index(f"    sku: '{GTIN}'")
    staged, errors = stage_push(None, running, config_file, catalogue_text=catalogue(gtins=(OTHER,)))
    assert staged is None
    assert errors == [
        f"line {sku_line}: bins[0].sku: SKU '{GTIN}' of bin 'A01' is not in the catalogue catalogue.yaml"
    ]

    staged, errors = stage_push(
        None, running, config_file, catalogue_text=catalogue(), catalogue_format="csv"
    )
    assert staged is None
    assert errors[0].startswith("line 3: catalogue: the running config names catalogue.yaml (YAML)")

    no_catalogue = BASE.replace("catalogue: catalogue.yaml\n", "")
    staged, errors = stage_push(no_catalogue, running, config_file, catalogue_text=catalogue())
    assert staged is None
    assert errors[0].startswith("catalogue: the pushed config names no catalogue file")
    assert sorted(p.name for p in folder.iterdir()) == before  # no temp file or folder left behind

    # A new bin whose SKU only the pushed catalogue holds: valid together, and the version is the file's.
    both = BASE.replace("safety_stock: 4", "safety_stock: 5").replace(f"sku: '{GTIN}'", f"sku: '{OTHER}'")
    staged, errors = stage_push(both, running, config_file, catalogue_text=catalogue("4.20", gtins=(OTHER,)))
    assert errors == []
    assert staged is not None
    assert staged.catalogue_path == (folder / "catalogue.yaml").resolve()
    assert staged.config.store.catalogue == staged.catalogue_path
    assert staged.config.catalogue is not None
    assert staged.config.catalogue.version == parse_catalogue_yaml(catalogue("4.20", gtins=(OTHER,))).version
    folder.joinpath("check.yaml").write_text(both, encoding="utf-8")
    (folder / "catalogue.yaml").write_text(catalogue("4.20", gtins=(OTHER,)), encoding="utf-8")
    assert staged.config.version == load_config(folder / "check.yaml").version


def test_error_rate_between_samples() -> None:
    assert error_rate((10, 0), (110, 5)) == (0.05, 100)
    assert error_rate((10, 0), (10, 0)) == (None, 0)


# --- the runner with a stand-in gateway whose device counters the test sets ----------------------------------------


class StandIn:
    """What the runner uses of a `Gateway`; `failing` makes every poll of its one transmitter fail."""

    def __init__(self, cfg: LoadedConfig, on_ready: Callable[[Gateway], None], *, failing: bool) -> None:
        self.config = cfg
        self.on_ready = on_ready
        self.uplink = SimpleNamespace(connected=False, last_error=None)
        self.remote_config: RemoteConfig | None = None
        self.notifier: object = None
        self.failing = failing
        self.polls = 0

    def device_health(self) -> list[DeviceHealthView]:
        return [
            DeviceHealthView(
                device_id="tx1",
                family="modbus",
                online=not self.failing,
                connected=True,
                last_seen_age_s=None,
                messages=self.polls,
                errors_by_kind={},
                total_errors=self.polls if self.failing else 0,
            )
        ]

    async def run(self) -> None:
        self.on_ready(cast(Gateway, self))
        self.uplink.connected = True
        while True:
            self.polls += 5
            await asyncio.sleep(0.05)


async def until(check: Callable[[], bool], what: str) -> None:
    """Poll (hang guard: 30 s) until `check()`."""
    for _ in range(600):
        if check():
            return
        await asyncio.sleep(0.05)
    pytest.fail(f"timed out waiting for {what}")


async def test_the_watch_rolls_back_a_misbehaving_push_with_its_catalogue(config_file: Path) -> None:
    running = load_config(config_file)
    control = RemoteConfig(config_file, Path(running.store.data_dir))
    built: list[StandIn] = []
    catalogue_file = config_file.with_name("catalogue.yaml")
    original_catalogue = text_of(catalogue_file)

    def factory(cfg: LoadedConfig, on_ready: Callable[[Gateway], None]) -> Gateway:
        # Safety stock 9 stands for a config whose transmitter cannot be reached.
        gw = StandIn(cfg, on_ready, failing=cfg.store.bins[0].safety_stock == 9)
        built.append(gw)
        return cast(Gateway, gw)

    task = asyncio.create_task(control.run(running, factory))
    try:
        await until(lambda: len(control._samples) >= 2, "the runner samples the healthy gateway")
        bad = BASE.replace("safety_stock: 4", "safety_stock: 9")
        new_catalogue = catalogue("4.20")
        args = {"config_yaml": bad, "catalogue_text": new_catalogue, "probation_s": 1, "watch_s": 1}
        first = asyncio.create_task(control.handle(running, push("c1", **args)))
        await until(lambda: control.answer_for("c1") is not None, "the push is applied")
        first.cancel()
        applied = control.answer_for("c1")
        assert applied is not None
        assert applied.ok
        result = ConfigResult.model_validate(applied.result)
        assert result.watch_s == 1
        assert result.baseline_error_rate == 0.0
        assert result.catalogue_version == parse_catalogue_yaml(new_catalogue).version
        assert text_of(catalogue_file) == new_catalogue
        early = control.verdict("q1", "c1")
        assert early.result is not None
        assert early.result["watch"] in ("watching", "rolled_back")

        await until(lambda: control.verdicts.get("c1", {}).get("watch") == "rolled_back", "the watch verdict")
        await until(lambda: len(built) == 3 and control.pending is None, "the restart on the previous files")
        assert [gw.config.store.bins[0].safety_stock for gw in built] == [4, 9, 4]
        assert text_of(config_file) == BASE
        assert text_of(catalogue_file) == original_catalogue  # restored with the config
        assert text_of(catalogue_file.with_name("catalogue.yaml.failed")) == new_catalogue
        answer = control.verdict("q2", "c1")
        assert not answer.ok
        assert answer.error == "rolled back: error rate 100.0 % > 2 % for 1 s"
        assert answer.result is not None
        assert answer.result["watch"] == "rolled_back"
        # A redelivered push hears the final outcome too.
        again = await control.handle(built[-1].config, push("c1", **args))
        assert again.error == "rolled back: error rate 100.0 % > 2 % for 1 s"
        # A later verdict query about an unknown push is refused, not recorded.
        unknown = control.verdict("q3", "nope")
        assert unknown == CommandResult(id="q3", ok=False, error="no watch on record for config push 'nope'")
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task


async def test_the_watch_keeps_a_push_when_the_previous_config_failed_too(config_file: Path) -> None:
    failing = BASE.replace("safety_stock: 4", "safety_stock: 9")
    write(config_file, failing)
    running = load_config(config_file)
    control = RemoteConfig(config_file, Path(running.store.data_dir))
    built: list[StandIn] = []

    def factory(cfg: LoadedConfig, on_ready: Callable[[Gateway], None]) -> Gateway:
        gw = StandIn(cfg, on_ready, failing=True)  # the bus is down whatever the config says
        built.append(gw)
        return cast(Gateway, gw)

    task = asyncio.create_task(control.run(running, factory))
    try:
        await until(lambda: len(control._samples) >= 2, "the runner samples the gateway")
        pushed = failing.replace("max_stock: 12", "max_stock: 14")
        first = asyncio.create_task(
            control.handle(running, push("c1", config_yaml=pushed, probation_s=1, watch_s=1))
        )
        await until(lambda: control.verdicts.get("c1", {}).get("watch") == "passed", "the watch verdict")
        first.cancel()
        verdict = control.verdict("q1", "c1")
        assert verdict.ok
        assert verdict.result is not None
        assert verdict.result["reason"].startswith("error rate 100.0 % > 2 %, as under the previous config")
        assert len(built) == 2
        assert text_of(config_file) == pushed
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task


def test_a_csv_catalogue_is_checked_as_the_csv_file_it_becomes(config_file: Path) -> None:
    folder = config_file.parent
    csv_config = BASE.replace("catalogue: catalogue.yaml", "catalogue: catalogue.csv")
    header = "gtin,name_zh,name_en,price,category\n"
    write(folder / "catalogue.csv", header + f"{GTIN},可乐,Cola,3.50,drinks\n")
    write(config_file, csv_config)
    running = load_config(config_file)
    bad = header + f"{GTIN},可乐,Cola,3.50,drinks\n{OTHER},饼干,Biscuits,cheap,snacks\n"
    staged, errors = stage_push(None, running, config_file, catalogue_text=bad, catalogue_format="csv")
    assert staged is None
    assert len(errors) == 1
    assert errors[0].startswith(f"line 3: catalogue: catalogue.csv: line 3: row 2 (gtin {OTHER}).price:"), (
        errors
    )
    good = header + f"{GTIN},可乐,Cola,4.20,drinks\n"
    staged, errors = stage_push(None, running, config_file, catalogue_text=good)
    assert errors == []
    assert staged is not None
    assert staged.config_text is None  # the running config stays
    assert staged.catalogue_path == (folder / "catalogue.csv").resolve()
    assert staged.config.version == running.version


async def test_a_catalogue_push_cut_short_by_a_crash_is_rolled_back_at_start(config_file: Path) -> None:
    """The pending record was written, then the process died before the new catalogue was renamed in: the next
    start runs a catalogue that is not the pushed one, so the push is answered rolled back and both files stay
    (are put back) as they were."""
    running = load_config(config_file)
    data_dir = Path(running.store.data_dir)
    catalogue_file = config_file.with_name("catalogue.yaml")
    original = text_of(catalogue_file)
    write(catalogue_file.with_name("catalogue.yaml.previous"), original)
    write(config_file.with_name("store.yaml.previous"), BASE)
    control = RemoteConfig(config_file, data_dir)
    control.pending = Pending(
        "c7",
        running.version,
        running.version,
        5.0,
        catalogue_path=str(catalogue_file.resolve()),
        catalogue_existed=True,
        previous_catalogue_version=running.catalogue.version if running.catalogue else None,
        new_catalogue_version="0123456789ab",  # never written: the crash came first
    )

    def factory(cfg: LoadedConfig, on_ready: Callable[[Gateway], None]) -> Gateway:
        return cast(Gateway, StandIn(cfg, on_ready, failing=False))

    task = asyncio.create_task(control.run(running, factory))
    try:
        await until(lambda: control.answer_for("c7") is not None, "the verdict on the cut-short push")
        answer = control.answer_for("c7")
        assert answer is not None
        assert answer.error == "rolled back: the gateway restarted before catalogue 0123456789ab was in place"
        assert text_of(catalogue_file) == original
        assert control.pending is None
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
