"""Config rollouts at the hub (hub/config_rollout.py) on both engines: targets are published once, re-published
with the same id after the store's next birth or the retry time, settled from `command_results` (the gateway's
`cmd-result` as ingest stores it), and timed out; the API validates requests and shows progress.

The publisher is a recording stand-in at the `Publish` seam (the MQTT path is tests/integration/test_remote_config.py).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest

from cloud_bridge.config_push import CONFIG_COMMAND, ConfigArgs, ConfigResult
from cloud_bridge.contract import (
    Command,
    CommandResult,
    Status,
    command_result_topic,
    status_topic,
)
from hub.api import create_app
from hub.config import HubConfig
from hub.config_rollout import ConfigRollouts, RolloutRequest, UnknownStoresError, outcome_of
from hub.db import HubDB
from hub.parse import CommandResultMessage, StatusMessage, parse_message

YAML = "store_id: {{store_id}}\nbins: []\n"


class Clock:
    def __init__(self) -> None:
        self.now = 1_800_000_000.0

    def __call__(self) -> float:
        return self.now


class Recorder:
    """Stands in for `Ingest.publish_command`; `connected` False makes every publish fail like an offline worker."""

    def __init__(self) -> None:
        self.sent: list[tuple[str, str, Command]] = []
        self.connected = True

    async def __call__(self, store_id: str, name: str, command: Command) -> bool:
        if not self.connected:
            return False
        self.sent.append((store_id, name, command))
        return True


@pytest.fixture
async def db(db_url: str) -> AsyncIterator[HubDB]:
    async with HubDB(db_url) as opened:
        yield opened


async def birth(db: HubDB, store_id: str, at: float) -> None:
    status = Status(
        state="online", gateway_id=f"{store_id}-gw", boot_id="b1", version="0.1.0", config_version="v0",
        ts="2026-11-23T10:00:00.000Z",
    )  # fmt: skip
    message = parse_message(status_topic(store_id), status.to_json())
    assert isinstance(message, StatusMessage)
    await db.record_status(message, at)


async def answer(db: HubDB, store_id: str, result: CommandResult, at: float) -> None:
    payload = result.model_dump_json(exclude_none=True).encode()
    message = parse_message(command_result_topic(store_id), payload)
    assert isinstance(message, CommandResultMessage)
    await db.record_command_result(message, at)


def config_answer(command: Command, outcome: str, **extra: Any) -> CommandResult:
    result = ConfigResult.model_validate({"outcome": outcome, "config_version": "v1", **extra})
    return CommandResult(
        id=command.id,
        ok=outcome == "applied",
        error=None if outcome == "applied" else f"{outcome}: why",
        result=result.model_dump(mode="json"),
    )


async def test_publish_resend_settle_and_time_out(db: HubDB) -> None:
    clock, sent = Clock(), Recorder()
    rollouts = ConfigRollouts(db, sent, clock=clock, retry_s=30)
    for store_id in ("s1", "s2", "s3", "s4"):
        await birth(db, store_id, clock.now - 100)
    view = await rollouts.create(
        RolloutRequest(stores="all", config_yaml=YAML, probation_s=5, timeout_s=600, note="thresholds")
    )
    assert view.counts == {"pending": 4, "applied": 0, "rejected": 0, "rolled_back": 0, "timed_out": 0}
    assert [(s, name) for s, name, _ in sent.sent] == [(s, CONFIG_COMMAND) for s in ("s1", "s2", "s3", "s4")]
    by_store = {s: c for s, _, c in sent.sent}
    args = ConfigArgs.model_validate(by_store["s2"].args)
    assert args.config_yaml == "store_id: s2\nbins: []\n"  # the placeholder, per store
    assert args.probation_s == 5
    assert args.rollout_id == view.rollout_id

    # Nothing new: no second publish. A birth after the publish (the gateway restarted): the same id again.
    clock.now += 5
    await rollouts.sweep()
    assert len(sent.sent) == 4
    await birth(db, "s1", clock.now)
    clock.now += 1
    await rollouts.sweep()
    assert [(s, c.id) for s, _, c in sent.sent[4:]] == [("s1", by_store["s1"].id)]

    # Answers: applied, rejected (with the file's problems), rolled back; s4 stays silent.
    await answer(db, "s1", config_answer(by_store["s1"], "applied", restarted=True), clock.now)
    await answer(db, "s2", config_answer(by_store["s2"], "rejected", errors=["line 2: bins: bad"]), clock.now)
    await answer(db, "s3", config_answer(by_store["s3"], "rolled_back", reason="no broker"), clock.now)
    await rollouts.sweep()
    view_now = await rollouts.get(view.rollout_id)
    assert view_now is not None
    states = {t.store_id: t.state for t in view_now.targets}
    assert states == {"s1": "applied", "s2": "rejected", "s3": "rolled_back", "s4": "pending"}
    s2 = next(t for t in view_now.targets if t.store_id == "s2")
    assert s2.errors == ["line 2: bins: bad"]
    assert s2.error == "rejected: why"
    assert not view_now.done

    # The retry timer re-sends to the silent store only; past the rollout's timeout it is timed out.
    clock.now += 31
    await rollouts.sweep()
    assert [s for s, _, _ in sent.sent[5:]] == ["s4"]
    clock.now += 600
    await rollouts.sweep()
    final = await rollouts.get(view.rollout_id)
    assert final is not None
    assert final.done
    assert final.counts["timed_out"] == 1
    s4 = next(t for t in final.targets if t.store_id == "s4")
    assert s4.error == "no answer from the store within 600 s"
    assert s4.sent_count == 2


async def test_offline_worker_keeps_targets_due(db: HubDB) -> None:
    clock, sent = Clock(), Recorder()
    sent.connected = False
    rollouts = ConfigRollouts(db, sent, clock=clock)
    await birth(db, "s1", clock.now)
    view = await rollouts.create(RolloutRequest(configs={"s1": "store_id: s1\n"}))
    assert view.targets[0].sent_count == 0
    sent.connected = True
    await rollouts.sweep()
    assert [c.id for _, _, c in sent.sent] == [view.targets[0].command_id]


async def test_requests_are_checked(db: HubDB) -> None:
    rollouts = ConfigRollouts(db, Recorder(), clock=Clock())
    await birth(db, "s1", 0.0)
    with pytest.raises(UnknownStoresError, match=r"unknown store\(s\) \['nope'\]"):
        await rollouts.create(RolloutRequest(stores=["s1", "nope"], config_yaml=YAML))
    with pytest.raises(ValueError, match="exactly one of config_yaml"):
        RolloutRequest(stores=["s1"])
    with pytest.raises(ValueError, match=r"no entry in configs for store\(s\) \['s2'\]"):
        RolloutRequest(stores=["s1", "s2"], configs={"s1": "x"})


def test_outcome_without_a_config_result_is_a_refusal() -> None:
    assert outcome_of(False, "unknown command 'config'", None) == "rejected"
    assert outcome_of(False, "busy", None) == "rejected"
    assert outcome_of(False, "rolled back: x", '{"outcome": "rolled_back"}') == "rolled_back"


async def test_api_creates_and_reports(db: HubDB) -> None:
    config = HubConfig.model_validate({"hub_id": "t", "database": "sqlite:///unused.db"})
    sent = Recorder()
    rollouts = ConfigRollouts(db, sent, clock=Clock())
    await birth(db, "s1", 0.0)
    app = create_app(db, config, rollouts=rollouts)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://hub") as http:
        r = await http.post("/api/config-rollouts", json={"stores": ["s1"], "config_yaml": YAML})
        assert r.status_code == 201, r.text
        created = r.json()
        assert created["targets"][0]["state"] == "pending"
        assert created["targets"][0]["sent_count"] == 1
        r = await http.get(f"/api/config-rollouts/{created['rollout_id']}")
        assert r.json()["targets"][0]["command_id"] == sent.sent[0][2].id
        assert (await http.get("/api/config-rollouts")).json()[0]["rollout_id"] == created["rollout_id"]
        assert (await http.get("/api/config-rollouts/missing")).status_code == 404
        r = await http.post("/api/config-rollouts", json={"stores": ["zz"], "config_yaml": YAML})
        assert r.status_code == 422
        assert "unknown store(s) ['zz']" in r.text
        r = await http.post("/api/config-rollouts", json={"stores": "all"})
        assert r.status_code == 422
        # Under the character limit but over the bytes one command can carry (3 bytes per character).
        r = await http.post("/api/config-rollouts", json={"stores": ["s1"], "config_yaml": "商" * 70_000})
        assert r.status_code == 422
        assert "210000 bytes as UTF-8; at most 200000 fit in one command" in r.text


# --- catalogue pushes, the store's last push, and the error-rate watch ------------------------------------------

CATALOGUE = 'currency: CNY\nitems:\n  - {gtin: "06901234567892", name: {zh: 可乐, en: Cola}, price: "3.50", category: drinks}\n'


async def test_catalogue_push_and_last_pushed_per_store(db: HubDB) -> None:
    clock, sent = Clock(), Recorder()
    rollouts = ConfigRollouts(db, sent, clock=clock)
    for store_id in ("s1", "s2"):
        await birth(db, store_id, clock.now - 10)
    assert (await rollouts.last_pushed("s1")).model_dump() == {
        "store_id": "s1",
        "config": None,
        "catalogue": None,
    }

    first = await rollouts.create(RolloutRequest(stores=["s1"], config_yaml="store_id: s1\nbins: []\n"))
    clock.now += 10
    second = await rollouts.create(
        RolloutRequest(stores="all", catalogue_text=CATALOGUE, catalogue_format="yaml")
    )
    assert [t.pushed for t in second.targets] == [["catalogue"], ["catalogue"]]
    args = ConfigArgs.model_validate(sent.sent[-1][2].args)
    assert args.config_yaml is None
    assert args.catalogue_text == CATALOGUE
    assert args.catalogue_format == "yaml"
    assert args.watch_s == 300  # DOMAIN.md's five minutes unless the rollout says otherwise

    s1_catalogue = next(
        c for s, _, c in sent.sent if s == "s1" and c.id.startswith(f"cfg-{second.rollout_id}")
    )
    await answer(db, "s1", config_answer(s1_catalogue, "applied", catalogue_version="cat123"), clock.now)
    await rollouts.sweep()
    last = await rollouts.last_pushed("s1")
    assert last.config is not None
    assert last.catalogue is not None
    assert (last.config.text, last.config.rollout_id, last.config.state) == (
        "store_id: s1\nbins: []\n",
        first.rollout_id,
        "pending",
    )
    assert (last.catalogue.text, last.catalogue.format, last.catalogue.state, last.catalogue.version) == (
        CATALOGUE,
        "yaml",
        "applied",
        "cat123",
    )
    assert (await rollouts.last_pushed("s2")).config is None  # only the catalogue went to s2

    with pytest.raises(ValueError, match="and/or catalogue_text"):
        RolloutRequest(stores=["s1"])
    with pytest.raises(ValueError, match="stores is required"):
        RolloutRequest(catalogue_text=CATALOGUE)


async def test_watch_verdicts_move_applied_targets(db: HubDB) -> None:
    clock, sent = Clock(), Recorder()
    rollouts = ConfigRollouts(db, sent, clock=clock, retry_s=30)
    for store_id in ("s1", "s2", "s3"):
        await birth(db, store_id, clock.now - 10)
    view = await rollouts.create(
        RolloutRequest(stores="all", config_yaml=YAML, watch_s=60, max_error_rate=0.05, probation_s=5)
    )
    pushes = {s: c for s, _, c in sent.sent}
    assert ConfigArgs.model_validate(pushes["s1"].args).max_error_rate == 0.05
    clock.now += 5
    for store_id in ("s1", "s2", "s3"):
        await answer(db, store_id, config_answer(pushes[store_id], "applied", watch_s=60), clock.now)
    await rollouts.sweep()
    now_view = await rollouts.get(view.rollout_id)
    assert now_view is not None
    assert [(t.state, t.watch) for t in now_view.targets] == [("applied", "watching")] * 3
    assert now_view.done
    assert now_view.watching == 3
    assert len(sent.sent) == 3  # nothing asked before the watch is over

    # s3's gateway restarted (a birth after its answer): asked at once, before the watch is over.
    clock.now += 10
    await birth(db, "s3", clock.now)
    clock.now += 1
    await rollouts.sweep()
    queries = [(s, c) for s, _, c in sent.sent[3:]]
    assert [(s, c.id) for s, c in queries] == [("s3", f"cfgw-{view.rollout_id}-s3-1")]
    assert ConfigArgs.model_validate(queries[0][1].args).verdict_of == pushes["s3"].id
    rolled = CommandResult(
        id=queries[0][1].id,
        ok=False,
        error="rolled back: error rate 100.0 % > 5 % for 60 s",
        result=ConfigResult(outcome="rolled_back", watch="rolled_back", config_version="v0").model_dump(),
    )
    await answer(db, "s3", rolled, clock.now)
    await rollouts.sweep()

    # The watch is over for the others: one query each; s1 says it is still watching, s2 passed.
    clock.now += 50
    await rollouts.sweep()
    later = {s: c for s, _, c in sent.sent[4:]}
    assert sorted(later) == ["s1", "s2"]
    watching = ConfigResult(outcome="applied", watch="watching").model_dump()
    passed = ConfigResult(outcome="applied", watch="passed").model_dump()
    await answer(db, "s1", CommandResult(id=later["s1"].id, ok=True, result=watching), clock.now)
    await answer(db, "s2", CommandResult(id=later["s2"].id, ok=True, result=passed), clock.now)
    await rollouts.sweep()
    clock.now += 31  # s1 asked again with a new id; its answer now is the verdict
    await rollouts.sweep()
    again = [(s, c) for s, _, c in sent.sent[6:]]
    assert [(s, c.id) for s, c in again] == [("s1", f"cfgw-{view.rollout_id}-s1-2")]
    await answer(db, "s1", CommandResult(id=again[0][1].id, ok=True, result=passed), clock.now)
    await rollouts.sweep()

    final = await rollouts.get(view.rollout_id)
    assert final is not None
    by_store = {t.store_id: t for t in final.targets}
    assert (by_store["s1"].state, by_store["s1"].watch) == ("applied", "passed")
    assert (by_store["s2"].state, by_store["s2"].watch) == ("applied", "passed")
    assert (by_store["s3"].state, by_store["s3"].watch) == ("rolled_back", "rolled_back")
    assert by_store["s3"].error == "rolled back: error rate 100.0 % > 5 % for 60 s"
    assert final.counts["rolled_back"] == 1
    assert final.watching == 0
    clock.now += 1000
    await rollouts.sweep()
    assert len(sent.sent) == 7  # settled watches are never asked again


async def test_store_config_route(db: HubDB) -> None:
    config = HubConfig.model_validate({"hub_id": "t", "database": "sqlite:///unused.db"})
    rollouts = ConfigRollouts(db, Recorder(), clock=Clock())
    await birth(db, "s1", 0.0)
    app = create_app(db, config, rollouts=rollouts)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://hub") as http:
        r = await http.post("/api/config-rollouts", json={"stores": ["s1"], "catalogue_text": CATALOGUE})
        assert r.status_code == 201, r.text
        body = (await http.get("/api/stores/s1/config")).json()
        assert body["config"] is None
        assert body["catalogue"]["text"] == CATALOGUE
        assert body["catalogue"]["state"] == "pending"
        r = await http.post("/api/config-rollouts", json={"stores": ["s1"], "note": "nothing"})
        assert r.status_code == 422
