"""The cloud hub: MQTT ingest, idempotent apply, fleet/stock/alert API."""
