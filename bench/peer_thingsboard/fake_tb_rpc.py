"""Stand-in for the ThingsBoard server side of the peer's MQTT API: answers its `getSessionLimits` RPC.

Runs in the PEER's venv (paho comes with the peer as `tb-paho-mqtt-client`):
`PEER_VENV/bin/python bench/peer_thingsboard/fake_tb_rpc.py PORT`.

Why it exists (from the offline recipe this bench is built on): tb-mqtt-client 1.13.13, which
thingsboard-gateway 3.8.5 installs, publishes `v1/devices/me/rpc/request/<id>` `{"method": "getSessionLimits"}`
right after CONNECT and counts itself "connected" only once the reply arrives on
`v1/devices/me/rpc/response/<id>`. A plain broker never replies, and the peer then polls Modbus and fills its
storage but never sends telemetry. A real ThingsBoard answers with the tenant's rate limits; this answers
"no limits" (`0:0,`), so the peer is measured without any throttling of ours. Loopback only.
"""

from __future__ import annotations

import json
import sys
from typing import Any, Final

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

LIMITS: Final = {
    "maxPayloadSize": 65536,
    "maxInflightMessages": 100,
    "rateLimits": {"messages": "0:0,", "telemetryMessages": "0:0,", "telemetryDataPoints": "0:0,"},
    "gatewayRateLimits": {"messages": "0:0,", "telemetryMessages": "0:0,", "telemetryDataPoints": "0:0,"},
}


def on_connect(client: mqtt.Client, userdata: Any, flags: Any, reason: Any, properties: Any = None) -> None:
    """(Re)subscribe after every connect: the broker may have been restarted by the outage test."""
    del userdata, flags, reason, properties
    client.subscribe("v1/devices/me/rpc/request/+", qos=1)
    print("fake-tb: subscribed", flush=True)


def on_message(client: mqtt.Client, userdata: Any, msg: mqtt.MQTTMessage) -> None:
    """Answer getSessionLimits; ignore everything else (the peer's own echoes included)."""
    del userdata
    try:
        body = json.loads(msg.payload)
    except ValueError:
        return
    if isinstance(body, dict) and body.get("method") == "getSessionLimits":
        req_id = msg.topic.rsplit("/", 1)[-1]
        client.publish(f"v1/devices/me/rpc/response/{req_id}", json.dumps(LIMITS), qos=1)
        print(f"fake-tb: answered getSessionLimits id={req_id}", flush=True)


def main() -> None:
    """Connect to 127.0.0.1:PORT and serve until killed."""
    port = int(sys.argv[1]) if len(sys.argv) > 1 else 1883
    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="fake-tb-server")
    client.on_connect = on_connect
    client.on_message = on_message
    client.reconnect_delay_set(1, 2)
    client.connect("127.0.0.1", port, 60)
    client.loop_forever(retry_first_connection=True)


if __name__ == "__main__":
    main()
