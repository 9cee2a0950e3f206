"""The shipped Mosquitto config and ACL (config/mosquitto/) on a real broker: who gets in, who may write and read.

Facts about the installed broker (Mosquitto 2.0.11) these tests rely on, found by running it:

- An MQTT 3.1.1 client whose publish the ACL denies gets a normal PUBACK and the message is dropped (the log
  says "Denied PUBLISH"); 3.1.1 has no reason code. An MQTT 5 client gets PUBACK reason code 0x87 (Not
  authorized). So every denial test asserts on what a subscriber that *is* allowed to read actually gets.
- The ACL file's `read` rules are applied when a message is delivered, not at SUBSCRIBE: a store may
  subscribe to another store's filter and is granted QoS 1, but is never sent a message from it (nor its
  retained messages). Shared subscriptions (`$share/GROUP/FILTER`) are read-checked against the message's
  topic, so the hub's `topic read` lines cover them.
- A refused TLS handshake never reaches MQTT: paho logs the TLS alert and aiomqtt reports
  ``MqttError("Operation timed out")`` when no CONNACK comes; the broker log names the OpenSSL reason.

"Nothing arrived" is proven without sleeping: after the denied action the same publisher (or one whose
earlier publish was already acknowledged) sends a marker that *is* allowed, and the assertion is made once
the marker has arrived — Mosquitto delivers one publisher's messages to a subscriber in order.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import logging
import subprocess
import sys
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiomqtt
import paho.mqtt.client as paho
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from paho.mqtt.enums import CallbackAPIVersion

from cloud_bridge.contract import (
    ALL_STORES_CMD_RESULT,
    ALL_STORES_EVENTS,
    ALL_STORES_HEALTH,
    ALL_STORES_STATUS,
    Command,
    CommandResult,
    EventBatch,
    Heartbeat,
    Status,
    command_result_topic,
    command_topic,
    events_topic,
    health_topic,
    rfc3339,
    status_topic,
    store_root,
)
from edge.config import load_config
from edge.gateway import Gateway
from edge.store import NewEvent
from hub.ingest import subscriptions
from shelfgate.pki import PkiLayout
from tests.cloud_bridge.memory_outbox import stock_changed
from tests.cloud_bridge.mqtt_helpers import wait_until
from tests.security.tls_broker import (
    REFUSED_CONNECT_TIMEOUT_S,
    WAIT_S,
    Identity,
    Pki,
    TlsMosquitto,
    client,
    client_tls,
    make_pki,
    release,
    subscribed,
)

pytestmark = pytest.mark.timeout(240)

UPLINK_TOPICS = (ALL_STORES_STATUS, ALL_STORES_EVENTS, ALL_STORES_HEALTH, ALL_STORES_CMD_RESULT)


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return make_pki(tmp_path_factory.mktemp("pki"))


@pytest.fixture(scope="module")
def other_pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    """A second, unrelated CA that issued the same names: what an attacker with their own CA would hold."""
    return make_pki(tmp_path_factory.mktemp("other-pki"))


@pytest.fixture(scope="module")
def broker(pki: Pki, tmp_path_factory: pytest.TempPathFactory) -> Iterator[TlsMosquitto]:
    tls_broker = TlsMosquitto(tmp_path_factory.mktemp("broker"), pki.root)
    tls_broker.start()
    try:
        yield tls_broker
    finally:
        tls_broker.stop()


def marker() -> bytes:
    return f"marker-{uuid.uuid4().hex}".encode()


def as_store(broker: TlsMosquitto, pki: Pki, who: Identity, **kwargs: Any) -> aiomqtt.Client:
    return client(broker, pki.ca_file, who, **kwargs)


# --- publish ------------------------------------------------------------------------------------------------


async def test_a_store_cannot_publish_into_another_stores_topics(broker: TlsMosquitto, pki: Pki) -> None:
    hub = client(broker, pki.ca_file, pki.hub)
    async with subscribed(hub, [f"{store_root('s2')}/#", *UPLINK_TOPICS]) as seen:
        async with as_store(broker, pki, pki.s1) as s1:
            for topic in (
                status_topic("s2"),
                events_topic("s2"),
                health_topic("s2"),
                command_result_topic("s2"),
                f"{store_root('s2')}/anything/else",
            ):
                # Acknowledged (3.1.1 cannot say "denied") and silently dropped.
                await s1.publish(topic, b"forged by s1", qos=1)
            # Its own four topics are allowed; the last one is the marker.
            for topic in (status_topic("s1"), health_topic("s1"), command_result_topic("s1")):
                await s1.publish(topic, b"from s1", qos=1)
            await s1.publish(events_topic("s1"), end := marker(), qos=1)
        await seen.wait_for(lambda got: any(m.payload == end for m in got), "s1's own events")
    assert not [m for m in seen.messages if m.payload == b"forged by s1"]
    assert {m.topic for m in seen.messages} == {
        status_topic("s1"),
        health_topic("s1"),
        command_result_topic("s1"),
        events_topic("s1"),
    }
    assert "Denied PUBLISH" in broker.log_text()


async def test_a_store_cannot_write_outside_the_known_topics_of_its_own_root(
    broker: TlsMosquitto, pki: Pki
) -> None:
    hub_reader = client(broker, pki.ca_file, pki.hub)
    async with subscribed(hub_reader, UPLINK_TOPICS) as seen, as_store(broker, pki, pki.s1) as s1:
        for topic in (f"{store_root('s1')}/backdoor", "shelfgate/v1/stores", "$SYS/broker/x", "other/app"):
            await s1.publish(topic, b"stray", qos=1)
        await s1.publish(health_topic("s1"), end := marker(), qos=1)
        await seen.wait_for(lambda got: any(m.payload == end for m in got), "the marker")
    # Nothing else was published anywhere the hub could see; the broker log records each denial.
    assert [m.payload for m in seen.messages] == [end]
    log = broker.log_text()
    assert f"'{store_root('s1')}/backdoor'" in log
    assert "'other/app'" in log


async def test_a_store_cannot_command_itself_and_only_the_hub_can(broker: TlsMosquitto, pki: Pki) -> None:
    s1 = as_store(broker, pki, pki.s1, identifier="s1-gw-selfcmd")
    async with subscribed(s1, [f"{store_root('s1')}/cmd/#"]) as s1_commands:
        # From its own connection: denied, so the gateway never sees a command it forged for itself.
        await s1.publish(command_topic("s1", "ping"), b"self-issued", qos=1)
        # From another store: denied too.
        async with as_store(broker, pki, pki.s2) as s2:
            await s2.publish(command_topic("s1", "ping"), b"from s2", qos=1)
        async with client(broker, pki.ca_file, pki.hub) as hub:
            await hub.publish(command_topic("s1", "ping"), end := marker(), qos=1)
        await s1_commands.wait_for(lambda got: any(m.payload == end for m in got), "the hub's command")
    assert [(m.topic, m.payload) for m in s1_commands.messages] == [(command_topic("s1", "ping"), end)]


async def test_a_store_cannot_read_another_stores_commands_or_state(broker: TlsMosquitto, pki: Pki) -> None:
    async with as_store(broker, pki, pki.s2) as s2:
        await s2.publish(status_topic("s2"), b"s2 retained status", qos=1, retain=True)
    spy = as_store(broker, pki, pki.s1, identifier="s1-spy")
    spied_filters = [f"{store_root('s2')}/cmd/#", "shelfgate/v1/stores/+/cmd/#", status_topic("s2"), "#"]
    owner = as_store(broker, pki, pki.s2, identifier="s2-gw-owner")
    async with (
        subscribed(spy, spied_filters) as s1_sees,
        subscribed(owner, [f"{store_root('s2')}/cmd/#"]) as s2_sees,
    ):
        # Mosquitto 2.0.x grants the SUBSCRIBE (the ACL is checked per delivered message); never 0x80 here.
        assert all(code in (1, 0x80) for code in s1_sees.granted)
        async with client(broker, pki.ca_file, pki.hub) as hub:
            await hub.publish(command_topic("s2", "calibrate"), b"for s2 only", qos=1)
            await hub.publish(command_topic("s1", "ping"), end := marker(), qos=1)
        await s1_sees.wait_for(lambda got: any(m.payload == end for m in got), "s1's own command")
        await s2_sees.wait_for_topic(command_topic("s2", "calibrate"))
    assert {m.topic for m in s1_sees.messages} == {
        command_topic("s1", "ping")
    }  # nothing of s2, not even retained
    assert [m.payload for m in s2_sees.messages] == [b"for s2 only"]


async def test_the_hub_reads_every_store_with_its_real_subscriptions_but_cannot_forge_store_data(
    broker: TlsMosquitto, pki: Pki
) -> None:
    # Exactly what `hub.ingest` subscribes to: $share/hub/… for events, health and cmd-result, plain status.
    hub_filters = subscriptions("hub")
    assert any(f.startswith("$share/hub/") for f in hub_filters)
    hub = client(broker, pki.ca_file, pki.hub, identifier="hub-worker-1")
    async with subscribed(hub, hub_filters) as seen:
        async with client(broker, pki.ca_file, pki.hub) as other_hub_connection:
            # The hub may command stores, but it may not write a store's data: that is the store's word.
            await other_hub_connection.publish(events_topic("s1"), b"forged by the hub", qos=1)
            await other_hub_connection.publish(status_topic("s2"), b"forged by the hub", qos=1, retain=True)
        expected: set[str] = set()
        for who in (pki.s1, pki.s2):
            async with as_store(broker, pki, who) as store:
                for topic in (events_topic(who.name), health_topic(who.name), command_result_topic(who.name)):
                    await store.publish(topic, f"{who.name} says hi".encode(), qos=1)
                    expected.add(topic)
        await seen.wait_for(lambda got: expected <= {m.topic for m in got}, "every store topic")
    assert not [m for m in seen.messages if m.payload == b"forged by the hub"]


async def test_a_username_in_connect_does_not_change_the_identity(broker: TlsMosquitto, pki: Pki) -> None:
    owner = as_store(broker, pki, pki.s2, identifier="s2-gw-victim")
    async with subscribed(owner, [f"{store_root('s2')}/cmd/#"]) as s2_sees:
        impostor_id = f"impostor-{uuid.uuid4().hex[:8]}"
        async with as_store(broker, pki, pki.s1, identifier=impostor_id, username="hub:main") as impostor:
            await impostor.publish(command_topic("s2", "reboot"), b"pretending to be the hub", qos=1)
        async with client(broker, pki.ca_file, pki.hub) as hub:
            await hub.publish(command_topic("s2", "ping"), end := marker(), qos=1)
        await s2_sees.wait_for(lambda got: any(m.payload == end for m in got), "the hub's command")
    assert [m.payload for m in s2_sees.messages] == [end]
    connected = [line for line in broker.log_text().splitlines() if f"as {impostor_id} " in line]
    assert connected
    assert all("u's1'" in line for line in connected)  # the CN, not the claimed username


def _publish_v5(broker: TlsMosquitto, pki: Pki, who: Identity, topic: str) -> int:
    """Publish once at QoS 1 over MQTT 5 with paho and return the PUBACK's reason code."""
    got: dict[str, int] = {}
    acked = threading.Event()

    def on_publish(
        _client: paho.Client, _userdata: Any, _mid: int, reason_code: Any, _properties: Any
    ) -> None:
        got["rc"] = int(reason_code.value)
        acked.set()

    mqtt = paho.Client(
        CallbackAPIVersion.VERSION2, client_id=f"v5-{uuid.uuid4().hex[:8]}", protocol=paho.MQTTv5
    )
    mqtt.tls_set_context(client_tls(pki.ca_file, who))
    mqtt.on_publish = on_publish
    mqtt.connect(broker.host, broker.port)
    mqtt.loop_start()
    try:
        mqtt.publish(topic, b"v5", qos=1)
        assert acked.wait(WAIT_S), "no PUBACK"
    finally:
        mqtt.disconnect()
        mqtt.loop_stop()
    return got["rc"]


async def test_an_mqtt5_publisher_is_told_it_is_not_authorised(broker: TlsMosquitto, pki: Pki) -> None:
    # MQTT 5.0 §3.4.2.1: 0x87 Not authorized; below 0x80 is success — Mosquitto answers 0x10 No matching
    # subscribers when nobody listens. A 3.1.1 client gets a plain PUBACK either way (see the module docstring).
    denied = [(pki.s1, events_topic("s2")), (pki.s1, command_topic("s1", "x")), (pki.hub, events_topic("s1"))]
    allowed = [(pki.s1, events_topic("s1")), (pki.hub, command_topic("s1", "x"))]
    for who, topic in denied:
        assert await asyncio.to_thread(_publish_v5, broker, pki, who, topic) == 0x87, (who.name, topic)
    for who, topic in allowed:
        assert await asyncio.to_thread(_publish_v5, broker, pki, who, topic) in (0x00, 0x10), (
            who.name,
            topic,
        )


# --- who gets in --------------------------------------------------------------------------------------------


async def _refused(broker: TlsMosquitto, mqtt: aiomqtt.Client, reason: str) -> None:
    """`mqtt` never gets connected, and the broker's log names the OpenSSL `reason`."""
    logged_before = broker.log_text().count(reason)
    try:
        with pytest.raises(aiomqtt.MqttError):
            async with mqtt:
                pytest.fail("the broker accepted the connection")
    finally:
        release(mqtt)
    await wait_until(lambda: broker.log_text().count(reason) > logged_before, f"the broker to log {reason!r}")


async def test_a_client_without_a_certificate_is_refused(broker: TlsMosquitto, pki: Pki) -> None:
    no_cert = client(broker, pki.ca_file, None, timeout_s=REFUSED_CONNECT_TIMEOUT_S)
    await _refused(broker, no_cert, "peer did not return a certificate")
    # Plain MQTT to the TLS port does not get in either: there is no plain listener at all.
    plain = aiomqtt.Client(broker.host, broker.port, timeout=REFUSED_CONNECT_TIMEOUT_S)
    await _refused(broker, plain, "wrong version number")


async def test_a_certificate_from_another_ca_is_refused(
    broker: TlsMosquitto, pki: Pki, other_pki: Pki
) -> None:
    # Same CN "s1", same layout, but signed by a CA the broker does not trust.
    forged = client(broker, pki.ca_file, other_pki.s1, timeout_s=REFUSED_CONNECT_TIMEOUT_S)
    await _refused(broker, forged, "certificate verify failed")


async def test_a_server_certificate_is_not_accepted_as_a_client_one(broker: TlsMosquitto, pki: Pki) -> None:
    layout = PkiLayout(pki.root)
    broker_as_client = Identity("shelfgate-broker", layout.broker_cert, layout.broker_key)
    mqtt = client(broker, pki.ca_file, broker_as_client, timeout_s=REFUSED_CONNECT_TIMEOUT_S)
    # extendedKeyUsage serverAuth only (RFC 5280 §4.2.1.12): OpenSSL refuses it for a client.
    await _refused(broker, mqtt, "certificate verify failed")


# paho 2.2.0 `Client._ssl_wrap_socket` does not close the socket when `do_handshake()` raises; CPython frees it
# as soon as the exception is dropped, with a ResourceWarning that this project's warnings-as-errors would turn
# into a failure of this test. The refusal itself is what is asserted.
@pytest.mark.filterwarnings("ignore:unclosed <ssl.SSLSocket:ResourceWarning")
async def test_a_gateway_refuses_a_broker_signed_by_another_ca(
    pki: Pki, other_pki: Pki, tmp_path: Path
) -> None:
    with TlsMosquitto(tmp_path / "rogue", other_pki.root) as rogue:
        mqtt = client(rogue, pki.ca_file, pki.s1, timeout_s=REFUSED_CONNECT_TIMEOUT_S)
        try:
            with pytest.raises(aiomqtt.MqttError, match="CERTIFICATE_VERIFY_FAILED"):
                async with mqtt:
                    pytest.fail("the gateway trusted a broker our CA never signed")
        finally:
            release(mqtt)


# --- the real gateway, end to end ---------------------------------------------------------------------------

STORE_YAML = """\
store_id: {store}
data_dir: {data_dir}
buses:
  - {{id: tcp1, kind: tcp, host: 127.0.0.1, port: 1}}
transmitters:
  - {{id: tx1, bus: tcp1, unit_id: 1, profile: wt-int32-abcd, poll_interval_s: 5}}
bins:
  - {{id: A-01, sku: '4006381333931', name: {{zh: 测试, en: Test}}, unit_weight_g: 100, device: tx1, channel: 0,
      calibration: {{zero: 0, span_g_per_unit: 1}}, safety_stock: 2, max_stock: 20}}
bridge: {{heartbeat_s: 1, publish_timeout_s: 5, batch_max_events: 7}}
broker:
  host: {host}
  port: {port}
  ca_file: {ca_file}
  cert_file: {cert_file}
  key_file: {key_file}
"""


def key_material(key_file: Path) -> list[str]:
    """Strings that would betray `key_file` if they showed up anywhere: its PEM body lines and the secret
    scalar in decimal, hex and base64."""
    pem = key_file.read_text(encoding="ascii")
    body = [line for line in pem.splitlines() if line and not line.startswith("-----")]
    key = serialization.load_pem_private_key(pem.encode(), password=None)
    assert isinstance(key, ec.EllipticCurvePrivateKey)
    secret = key.private_numbers().private_value
    raw = secret.to_bytes(32, "big")
    return [*body, "".join(body), str(secret), raw.hex(), raw.hex().upper(), base64.b64encode(raw).decode()]


def shelfgate_cli(*args: str) -> subprocess.CompletedProcess[str]:
    """The installed `shelfgate` command, as an operator runs it (its own process, its own logging)."""
    return subprocess.run(
        [sys.executable, "-m", "shelfgate", *args], capture_output=True, text=True, timeout=WAIT_S, check=True
    )


async def test_the_gateway_delivers_through_mtls_end_to_end_and_never_leaks_a_key(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)  # everything: ours, aiomqtt/paho's, asyncio's
    pki_dir = tmp_path / "pki"
    # The operator's steps, through the real CLI.
    steps = [("init",), ("issue-gateway", "e2e-store"), ("issue-hub",)]
    runs = [await asyncio.to_thread(shelfgate_cli, "pki", "--dir", str(pki_dir), *step) for step in steps]
    cli_output = "\n".join(f"{run.stdout}\n{run.stderr}" for run in runs)
    layout = PkiLayout(pki_dir)
    keys = [layout.ca_key, layout.broker_key, layout.gateway_key("e2e-store"), layout.hub_key("main")]
    assert all(k.stat().st_mode & 0o777 == 0o600 for k in keys)

    with TlsMosquitto(tmp_path / "broker", pki_dir) as broker:
        cfg_file = tmp_path / "store.yaml"
        cfg_file.write_text(
            STORE_YAML.format(
                store="e2e-store",
                data_dir=tmp_path / "gw-data",
                host=broker.host,
                port=broker.port,
                ca_file=layout.ca_cert,
                cert_file=layout.gateway_cert("e2e-store"),
                key_file=layout.gateway_key("e2e-store"),
            ),
            encoding="utf-8",
        )
        gateway = Gateway(load_config(cfg_file))
        hub_identity = Identity("hub:main", layout.hub_cert("main"), layout.hub_key("main"))
        hub = client(broker, layout.ca_cert, hub_identity, identifier="hub-e2e")
        async with subscribed(hub, subscriptions("hub")) as hub_sees:
            task = asyncio.create_task(gateway.run(serve_api=False), name="gateway[e2e].run")
            try:
                await hub_sees.wait_for_topic(status_topic("e2e-store"))
                seqs = await gateway.store.record(
                    [
                        NewEvent("stock.changed", rfc3339(1_795_000_000 + i), stock_changed(i + 1))
                        for i in range(25)
                    ]
                )
                last = max(seqs)

                def delivered(got: list[Any]) -> set[int]:
                    batches = [
                        EventBatch.model_validate_json(m.payload) for m in got if m.topic.endswith("/events")
                    ]
                    return {e.seq for b in batches for e in b.events}

                await hub_sees.wait_for(lambda got: set(range(1, last + 1)) <= delivered(got), "every event")
                await hub_sees.wait_for_topic(health_topic("e2e-store"))
                async with client(broker, layout.ca_cert, hub_identity) as hub_commands:
                    ping = Command(id="e2e-ping", issued_at=rfc3339(1_795_000_100)).model_dump_json()
                    await hub_commands.publish(command_topic("e2e-store", "ping"), ping.encode(), qos=1)
                    await hub_commands.publish(
                        command_topic("e2e-store", "calibrate"), b'{"id": "e2e-bad", "issued_at": 7}', qos=1
                    )
                await hub_sees.wait_for(
                    lambda got: sum(m.topic.endswith("/cmd-result") for m in got) >= 2, "two command results"
                )
                assert gateway.uplink is not None
                assert gateway.uplink.connection_failures == 0
            finally:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        broker_log = broker.log_text()

    status = Status.model_validate_json(
        next(m.payload for m in hub_sees.messages if m.topic == status_topic("e2e-store"))
    )
    assert (status.state, status.gateway_id) == ("online", "e2e-store-gw")
    batches = [
        EventBatch.model_validate_json(m.payload) for m in hub_sees.messages if m.topic.endswith("/events")
    ]
    assert all(len(b.events) <= 7 for b in batches)
    assert (
        Heartbeat.model_validate_json(
            next(m.payload for m in hub_sees.messages if m.topic == health_topic("e2e-store"))
        ).gateway_id
        == "e2e-store-gw"
    )
    results = {
        r.id: r
        for r in (
            CommandResult.model_validate_json(m.payload)
            for m in hub_sees.messages
            if m.topic.endswith("/cmd-result")
        )
    }
    assert results["e2e-ping"] == CommandResult(id="e2e-ping", ok=True, result={"pong": True})
    assert not results["e2e-bad"].ok
    assert "issued_at" in (results["e2e-bad"].error or "")
    assert "u'e2e-store'" in broker_log  # the broker knew the gateway by its certificate

    # Secrets (issue #5 part 7): no private key, in any form, in anything this run wrote or sent.
    everything = "\n".join(
        [
            cli_output,
            caplog.text,
            "\n".join(f"{r.getMessage()} {r.exc_text or ''}" for r in caplog.records),
            broker_log,
            "\n".join(m.payload.decode("utf-8", "replace") for m in hub_sees.messages),
        ]
    )
    assert "PRIVATE KEY" not in everything
    for key_file in keys:
        leaks = [s for s in key_material(key_file) if s in everything]
        assert not leaks, f"material of {key_file.name} leaked"
    assert str(layout.gateway_key("e2e-store")) in cli_output  # paths are printed, contents never
    # The grep above saw real traffic logs: the uplink's own lines and paho's DEBUG packet trace.
    assert any(r.name == "cloud_bridge.uplink" and "connected to" in r.getMessage() for r in caplog.records)
    assert any(r.levelno == logging.DEBUG and "PUBLISH" in r.getMessage() for r in caplog.records)
