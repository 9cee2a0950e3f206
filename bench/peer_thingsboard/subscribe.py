"""What reaches the broker: a QoS 1 subscriber that stamps every message with `time.monotonic()`.

Run by the harness as `python -m bench.peer_thingsboard.subscribe --port P --topic T [--topic T2] --out FILE`;
prints `SUBSCRIBED` once the broker granted the subscription. Each message becomes one line
`MONO<TAB>TOPIC<TAB>PAYLOAD` (payload as UTF-8 text; both gateways publish JSON). CLOCK_MONOTONIC is one clock
for every process on the machine, so these stamps compare directly with the simulator's change times.

A persistent session (fixed client id, clean_session=False, MQTT 3.1.1 §3.1.2.4) and paho's automatic
reconnect keep the subscriber's view complete across a broker restart: what the broker accepted while we were
reconnecting is queued for us (the harness's Mosquitto persists sessions, `shelfgate.broker.Mosquitto`).
"""

from __future__ import annotations

import argparse
import signal
import sys
import threading
import time
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion


def main(argv: list[str] | None = None) -> int:
    """Subscribe and write lines until SIGTERM/SIGINT."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--topic", action="append", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--client-id", default="bench-peer-subscriber")
    args = p.parse_args(argv)
    out = open(args.out, "w", encoding="utf-8", buffering=1)  # noqa: SIM115 - line-buffered: the harness reads it live
    lock = threading.Lock()
    announced = threading.Event()

    def on_connect(
        client: mqtt.Client, userdata: Any, flags: Any, reason: Any, properties: Any = None
    ) -> None:
        del userdata, flags, reason, properties
        client.subscribe([(t, 1) for t in args.topic])

    def on_subscribe(
        client: mqtt.Client, userdata: Any, mid: int, reasons: Any, properties: Any = None
    ) -> None:
        del client, userdata, mid, reasons, properties
        if not announced.is_set():
            announced.set()
            print("SUBSCRIBED", flush=True)

    def on_message(client: mqtt.Client, userdata: Any, msg: mqtt.MQTTMessage) -> None:
        del client, userdata
        now = time.monotonic()
        text = msg.payload.decode("utf-8", errors="replace").replace("\n", " ")
        with lock:
            out.write(f"{now:.6f}\t{msg.topic}\t{text}\n")

    client = mqtt.Client(
        CallbackAPIVersion.VERSION2,
        client_id=args.client_id,
        clean_session=False,
        protocol=mqtt.MQTTv311,
    )
    client.max_inflight_messages_set(1000)
    client.max_queued_messages_set(0)
    client.reconnect_delay_set(1, 2)
    client.on_connect = on_connect
    client.on_subscribe = on_subscribe
    client.on_message = on_message
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    client.connect("127.0.0.1", args.port, keepalive=30)
    client.loop_start()
    stop.wait()
    client.loop_stop()
    client.disconnect()
    with lock:
        out.flush()
        out.close()
    print("DONE", file=sys.stderr, flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
