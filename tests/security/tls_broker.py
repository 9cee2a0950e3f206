"""A private Mosquitto running the shipped mTLS config (`config/mosquitto/`), plus TLS client helpers.

The broker config is rendered from `config/mosquitto/shelfgate.conf.template` exactly as docs/security.md
tells an operator to, with the ACL file `config/mosquitto/acl` unchanged: the tests check what ships, not a
copy. Only three things are added for a test run: `user root` when running as root (as `shelfgate.broker`
explains, Mosquitto would otherwise drop to a user that cannot write pytest's 0700 work dir), and a log file
with every log type, so a test can read why the broker refused a handshake or denied a publish.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import ssl
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import aiomqtt

from cloud_bridge.aio import reraise_swallowed_cancel
from shelfgate.broker import Mosquitto
from shelfgate.pki import PkiLayout, hub_identity, init_ca, issue_gateway, issue_hub

REPO_ROOT = Path(__file__).resolve().parents[2]
CONF_TEMPLATE = REPO_ROOT / "config" / "mosquitto" / "shelfgate.conf.template"
ACL_FILE = REPO_ROOT / "config" / "mosquitto" / "acl"
WAIT_S = 60.0
"""Generous bound for every wait: it turns a hang into a failure, it never measures speed."""
REFUSED_CONNECT_TIMEOUT_S = 5.0
"""How long a client whose TLS handshake the broker refused waits for a CONNACK that never comes: paho logs
the TLS alert and aiomqtt then reports ``MqttError("Operation timed out")``."""


def render_broker_config(*, pki_dir: Path, acl_file: Path, host: str, port: int, data_dir: Path) -> str:
    """`config/mosquitto/shelfgate.conf.template` with its placeholders filled, as docs/security.md does."""
    text = CONF_TEMPLATE.read_text(encoding="utf-8")
    for placeholder, value in {
        "@PKI_DIR@": str(pki_dir),
        "@ACL_FILE@": str(acl_file),
        "@BIND_ADDRESS@": host,
        "@PORT@": str(port),
        "@DATA_DIR@": str(data_dir),
    }.items():
        text = text.replace(placeholder, value)
    if "@" in "".join(line.split("#", 1)[0] for line in text.splitlines()):
        raise AssertionError("the template has a placeholder this renderer does not know")
    return text


class TlsMosquitto(Mosquitto):
    """`shelfgate.broker.Mosquitto` (start/stop/freeze on a free loopback port) with the shipped mTLS config."""

    def __init__(
        self, workdir: Path, pki_dir: Path, *, acl_file: Path = ACL_FILE, port: int | None = None
    ) -> None:
        super().__init__(workdir, port)
        self.pki_dir = pki_dir
        run_as = "user root\n" if os.geteuid() == 0 else ""
        rendered = render_broker_config(
            pki_dir=pki_dir, acl_file=acl_file, host=self.host, port=self.port, data_dir=workdir
        )
        self.conf.write_text(
            f"{run_as}{rendered}\nlog_type all\nlog_dest file {self.log}\n", encoding="utf-8"
        )

    def __enter__(self) -> TlsMosquitto:
        self.start()
        return self

    def log_text(self) -> str:
        """Everything the broker logged so far."""
        return self.log.read_text(encoding="utf-8", errors="replace") if self.log.exists() else ""


@dataclass(frozen=True)
class Identity:
    """One client's certificate and key files, and the identity (CN) the broker sees."""

    name: str
    cert_file: Path
    key_file: Path


@dataclass(frozen=True)
class Pki:
    """A CA from `shelfgate.pki` with two stores and a hub issued."""

    root: Path
    ca_file: Path
    s1: Identity
    s2: Identity
    hub: Identity


def make_pki(root: Path) -> Pki:
    """Init a CA under `root` and issue gateways `s1`, `s2` and hub `main`."""
    init_ca(root)
    layout = PkiLayout(root)
    gateways = {}
    for store in ("s1", "s2"):
        issued = issue_gateway(root, store)
        gateways[store] = Identity(issued.identity, issued.cert_path, issued.key_path)
    hub = issue_hub(root)
    assert hub.identity == hub_identity("main")
    return Pki(
        root,
        layout.ca_cert,
        gateways["s1"],
        gateways["s2"],
        Identity(hub.identity, hub.cert_path, hub.key_path),
    )


def client_tls(ca_file: Path, identity: Identity | None = None) -> ssl.SSLContext:
    """A client context built the way `edge.gateway.Gateway._make_uplink` builds the gateway's."""
    context = ssl.create_default_context(cafile=str(ca_file))
    if identity is not None:
        context.load_cert_chain(str(identity.cert_file), str(identity.key_file))
    return context


def client(
    broker: Mosquitto,
    ca_file: Path,
    identity: Identity | None,
    *,
    identifier: str | None = None,
    username: str | None = None,
    protocol: aiomqtt.ProtocolVersion = aiomqtt.ProtocolVersion.V311,
    timeout_s: float = 10.0,
) -> aiomqtt.Client:
    """An aiomqtt client over TLS to `broker` (`identity` None: no client certificate)."""
    return aiomqtt.Client(
        broker.host,
        broker.port,
        identifier=identifier,
        username=username,
        protocol=protocol,
        tls_context=client_tls(ca_file, identity),
        timeout=timeout_s,
    )


def release(mqtt: aiomqtt.Client) -> None:
    """Close what aiomqtt 2.5.1 leaves behind after a refused connect (as `cloud_bridge.uplink` does).

    After a failed handshake paho's socket may still be open, and the `_disconnected` future may hold an
    exception nobody retrieves, which asyncio reports at interpreter exit.
    """
    mqtt._client._sock_close()
    disconnected = mqtt._disconnected
    if disconnected.done() and not disconnected.cancelled():
        disconnected.exception()


@dataclass(frozen=True)
class Received:
    topic: str
    payload: bytes
    retain: bool


class Subscriber:
    """A TLS client that subscribes to some filters and records every message it is sent, in order."""

    def __init__(self, mqtt: aiomqtt.Client, filters: Sequence[str]) -> None:
        self.mqtt = mqtt
        self.filters = list(filters)
        self.messages: list[Received] = []
        self.granted: list[int] = []
        """The SUBACK return codes, one per filter (128 = refused)."""
        self._arrived = asyncio.Event()

    async def _read(self) -> None:
        async for message in self.mqtt.messages:
            assert isinstance(message.payload, bytes)
            self.messages.append(Received(message.topic.value, message.payload, message.retain))
            self._arrived.set()

    def topics(self) -> list[str]:
        return [m.topic for m in self.messages]

    async def wait_for(self, predicate: Callable[[list[Received]], bool], what: str) -> None:
        """Wait until `predicate(messages)` holds; fail naming `what` after WAIT_S."""
        try:
            async with asyncio.timeout(WAIT_S):
                while not predicate(self.messages):
                    self._arrived.clear()
                    await self._arrived.wait()
        except TimeoutError:
            raise AssertionError(f"timed out waiting for {what}; got {self.topics()}") from None
        reraise_swallowed_cancel()

    async def wait_for_topic(self, topic: str) -> Received:
        await self.wait_for(lambda got: any(m.topic == topic for m in got), topic)
        return next(m for m in self.messages if m.topic == topic)


@contextlib.asynccontextmanager
async def subscribed(
    mqtt: aiomqtt.Client, filters: Sequence[str], *, qos: int = 1
) -> AsyncIterator[Subscriber]:
    """Connect `mqtt`, subscribe to `filters`, record messages for the body of the block."""
    subscriber = Subscriber(mqtt, filters)
    async with mqtt:
        codes = await mqtt.subscribe([(f, qos) for f in filters])
        subscriber.granted = [getattr(code, "value", code) for code in codes]  # type: ignore[arg-type]
        reader = asyncio.create_task(subscriber._read(), name="subscriber.read")
        try:
            yield subscriber
        finally:
            reader.cancel()
            with contextlib.suppress(asyncio.CancelledError, aiomqtt.MqttError):
                await reader
