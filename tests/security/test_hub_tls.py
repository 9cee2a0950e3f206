"""The hub over the TLS broker: a real hub worker with its `shelfgate pki issue-hub` certificate, configured
through `hub.yaml`'s broker.ca_file/cert_file/key_file (relative to the config file), receives a store's events."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterator
from pathlib import Path

import pytest

from cloud_bridge.contract import Event, EventBatch, EventType, events_topic, rfc3339
from hub.config import HubConfigError, load_hub_config, parse_hub_config
from hub.db import HubDB
from hub.ingest import Ingest
from tests.cloud_bridge.memory_outbox import stock_changed
from tests.cloud_bridge.mqtt_helpers import wait_until
from tests.security.tls_broker import Pki, TlsMosquitto, client, make_pki

pytestmark = pytest.mark.timeout(120)


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return make_pki(tmp_path_factory.mktemp("pki"))


@pytest.fixture(scope="module")
def broker(pki: Pki, tmp_path_factory: pytest.TempPathFactory) -> Iterator[TlsMosquitto]:
    tls_broker = TlsMosquitto(tmp_path_factory.mktemp("broker"), pki.root)
    tls_broker.start()
    try:
        yield tls_broker
    finally:
        tls_broker.stop()


def _hub_yaml(tmp_path: Path, broker: TlsMosquitto, pki: Pki) -> Path:
    # Relative paths on purpose: they resolve against the config file's folder.
    for src, name in ((pki.ca_file, "ca.pem"), (pki.hub.cert_file, "hub.pem"), (pki.hub.key_file, "hub.key")):
        (tmp_path / name).write_bytes(src.read_bytes())
    (tmp_path / "hub.key").chmod(0o600)
    path = tmp_path / "hub.yaml"
    path.write_text(
        f"hub_id: tls-hub\ndatabase: hub.db\n"
        f"broker: {{host: {broker.host}, port: {broker.port}, ca_file: ca.pem, cert_file: hub.pem,"
        f" key_file: hub.key, reconnect_max_s: 0.5}}\n",
        encoding="utf-8",
    )
    return path


async def test_the_hub_worker_ingests_over_mutual_tls(tmp_path: Path, broker: TlsMosquitto, pki: Pki) -> None:
    config = load_hub_config(_hub_yaml(tmp_path, broker, pki))
    assert config.broker.ca_file == (tmp_path / "ca.pem").resolve()
    batch = EventBatch(
        store_id="s1",
        gateway_id="s1-gw",
        first_seq=1,
        last_seq=3,
        events=[
            Event(
                id=f"s1-gw:{seq}",
                seq=seq,
                type=EventType.STOCK_CHANGED,
                ts=rfc3339(1.7e9 + seq),
                data=stock_changed(seq),
            )
            for seq in (1, 2, 3)
        ],
    )
    async with HubDB(config.database) as db:
        ingest = Ingest(config, db)
        task = asyncio.create_task(ingest.run(), name="test.tls-hub")
        try:
            async with asyncio.timeout(60):
                await ingest.wait_subscribed()
            async with client(broker, pki.ca_file, pki.s1) as store:
                await store.publish(events_topic("s1"), batch.to_json(), qos=1)
            await wait_until(lambda: ingest.counters.events_applied >= 3, "3 events applied")
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        assert {s.bin_id for s in await db.stock("s1")} == {"A-01", "A-02", "A-03"}


def test_a_client_certificate_without_a_ca_is_refused_by_key(tmp_path: Path) -> None:
    with pytest.raises(HubConfigError, match=r"broker\.cert_file"):
        parse_hub_config(
            {"hub_id": "h", "database": "hub.db", "broker": {"cert_file": "hub.pem"}}, base_dir=tmp_path
        )
