"""The hub process root (STYLE.md rule 13): one event loop, one TaskGroup with the ingest worker, the API,
the fleet evaluator (`hub.fleet`: HQ alerts every `fleet.evaluate_every_s`), the config rollout sweep
(`hub.config_rollout`) and the systemd watchdog (`cloud_bridge.systemd`: READY=1 when serving, WATCHDOG=1 while
the loop and the database answer).

One process is one worker; run several (each with its own `hub_id`, the same `ingest.share_group` and the
same `database`) to scale out — see `hub.ingest` and docs/hub-storage.md.

uvicorn runs inside our loop as a task. Its own signal capture is disabled (`_EmbeddedServer`), because
the process root — `main()` here, or whoever awaits `run_hub` — owns SIGINT/SIGTERM and stops the hub by
cancelling it; on cancellation the API task shuts uvicorn down gracefully before re-raising.

We bind the listening socket ourselves: the URL (and a port-0 pick) is known before serving, a bind error is a
plain `HubStartError` instead of uvicorn's `sys.exit`, and clients that connect before uvicorn's first accept
simply wait in the listen backlog — so `ready` is set without polling.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import signal
import socket
from collections.abc import Generator, Sequence
from pathlib import Path

import uvicorn
from sqlalchemy.exc import SQLAlchemyError

from cloud_bridge.systemd import Liveness, SdNotifier, Watchdog
from hub.api import create_app
from hub.config import HubConfig, HubConfigError, load_hub_config, redacted
from hub.config_rollout import ConfigRollouts
from hub.db import HubDB, HubDBError, Tx
from hub.fleet import FleetMonitor, ListeningSince
from hub.ingest import Ingest

log = logging.getLogger(__name__)


class HubStartError(RuntimeError):
    """The hub could not start (API address in use, database unusable)."""


class _EmbeddedServer(uvicorn.Server):
    """uvicorn without its signal handlers: the hub's process root handles signals."""

    @contextlib.contextmanager
    def capture_signals(self) -> Generator[None, None, None]:
        yield


def _bind(host: str, port: int) -> socket.socket:
    # Not socket.create_server: it makes the socket with protocol number 0, and asyncio sets TCP_NODELAY only
    # on sockets whose proto is IPPROTO_TCP — every answer then waited for a delayed ACK (~45 ms per request).
    sock: socket.socket | None = None
    try:
        family, type_, proto, _, addr = socket.getaddrinfo(
            host, port, type=socket.SOCK_STREAM, proto=socket.IPPROTO_TCP
        )[0]
        sock = socket.socket(family, type_, proto)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(addr)
        sock.listen(128)
    except OSError as exc:
        if sock is not None:
            sock.close()
        raise HubStartError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from exc
    return sock


async def _serve_api(server: uvicorn.Server, sock: socket.socket) -> None:
    """uvicorn's `serve` returns only on `should_exit`; a cancelled hub still closes connections politely."""
    try:
        await server.serve(sockets=[sock])
    except asyncio.CancelledError:
        server.should_exit = True
        if server.started:
            await server.shutdown(sockets=[sock])
        raise


async def run_hub(
    config: HubConfig, *, ready: asyncio.Event | None = None, api_port_out: list[int] | None = None
) -> None:
    """Run the hub until cancelled: DB open, ingest subscribed (reconnecting as needed), API serving.

    `ready` is set once the API accepts connections; the bound port is appended to `api_port_out` (useful
    with `api.port: 0`). Ingest connects in the background — `GET /api/health` says when it is subscribed.
    """
    async with contextlib.AsyncExitStack() as stack:
        try:
            db = await stack.enter_async_context(HubDB(config.database, pool_size=config.database_pool_size))
        except HubDBError as exc:
            raise HubStartError(str(exc)) from exc
        sock = _bind(config.api.host, config.api.port)
        stack.callback(sock.close)
        host, port = sock.getsockname()[:2]
        ingest = Ingest(config, db)
        fleet = FleetMonitor(db, config, listening_since=ListeningSince(lambda: ingest.connected))
        rollouts = ConfigRollouts(db, ingest.publish_command)
        try:
            await fleet.ensure_schema()
            await rollouts.ensure_schema()
        except (HubDBError, SQLAlchemyError) as exc:
            raise HubStartError(f"cannot prepare the fleet tables: {exc}") from exc
        app = create_app(db, config, ingest=ingest, fleet=fleet, rollouts=rollouts)
        # systemd (Type=notify, systemd/shelfgate-hub.service): READY=1 once the API listens, WATCHDOG=1 only while
        # the loop runs and the database thread answers — like the gateway (cloud_bridge/systemd.py). No-ops when
        # not started by systemd. A lost broker is not a reason to restart: ingest reconnects by itself.
        notifier = SdNotifier()

        async def database_answers() -> object:
            return await db.run(_select_one, write=False)

        watchdog = Watchdog(notifier, Liveness(), probes={"database": database_answers})
        stack.callback(notifier.stopping)
        server = _EmbeddedServer(
            uvicorn.Config(app, host=host, port=port, lifespan="off", log_config=None, access_log=False)
        )
        async with asyncio.TaskGroup() as tasks:
            tasks.create_task(ingest.run(), name=f"hub[{config.hub_id}].ingest")
            tasks.create_task(_serve_api(server, sock), name=f"hub[{config.hub_id}].api")
            tasks.create_task(fleet.run(), name=f"hub[{config.hub_id}].fleet")
            tasks.create_task(rollouts.run(), name=f"hub[{config.hub_id}].config_rollouts")
            tasks.create_task(watchdog.run(), name=f"hub[{config.hub_id}].watchdog")
            url_host = f"[{host}]" if ":" in host else host
            log.info(
                "hub %s serving http://%s:%d (database %s, broker %s:%d, shared group %s)",
                config.hub_id,
                url_host,
                port,
                redacted(config.database),
                config.broker.host,
                config.broker.port,
                config.ingest.share_group or "none",
            )
            if api_port_out is not None:
                api_port_out.append(port)
            if ready is not None:
                ready.set()
            notifier.ready(f"hub {config.hub_id} serving http://{url_host}:{port}")


def _select_one(tx: Tx) -> object:
    """The watchdog's database probe: one round trip through the DB thread."""
    return tx.run("SELECT 1").scalar()


def main(argv: Sequence[str] | None = None) -> int:
    """`shelfgate hub --config FILE`: run until SIGINT/SIGTERM. Exit 0 on a clean stop, 2 on bad config,
    1 if the hub cannot start."""
    parser = argparse.ArgumentParser(prog="shelfgate hub", description="Run the shelfgate cloud hub.")
    parser.add_argument("--config", required=True, type=Path, help="hub YAML file (see config/hub.yaml)")
    parser.add_argument("--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    args = parser.parse_args(argv)
    logging.basicConfig(level=args.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        config = load_hub_config(args.config)
    except HubConfigError as exc:
        log.error("bad hub config: %s", exc)  # noqa: TRY400 - the message is the whole story
        return 2

    async def root() -> None:
        task = asyncio.current_task()
        assert task is not None  # noqa: S101 - always inside a task here
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, task.cancel)
        try:
            await run_hub(config)
        finally:
            for sig in (signal.SIGINT, signal.SIGTERM):
                loop.remove_signal_handler(sig)

    try:
        asyncio.run(root())
    except asyncio.CancelledError:
        log.info("hub %s stopped", config.hub_id)
        return 0
    except HubStartError as exc:
        log.error("hub %s cannot start: %s", config.hub_id, exc)  # noqa: TRY400
        return 1
    except Exception:
        log.exception("hub %s failed", config.hub_id)
        return 1
    return 0
