"""The ZDS client loop: connect to the CNI agent, apply each request, ack it; reconnect with back-off.

Back-off starts at 5 ms and doubles to 15 s (wire-contracts §5.1). A protocol error (already nacked by the
shell) ends the connection and we reconnect; a fatal one (Add without workload info, Keep after the
snapshot, a second SnapshotSent) stops the loop for good, as upstream stops its in-pod manager.
"""

from __future__ import annotations

import asyncio
import logging

from meshkit.logs import kv
from meshkit.zds import ZdsClientConnection, ZdsClosed, ZdsFatalError, ZdsProtocolError

from ztunnel.inpod.manager import WorkloadProxyManager

__all__ = ["BACKOFF_INITIAL_S", "BACKOFF_MAX_S", "run_zds_client"]

log = logging.getLogger("inpod.zds")

BACKOFF_INITIAL_S = 0.005
BACKOFF_MAX_S = 15.0


async def run_zds_client(path: str, manager: WorkloadProxyManager) -> None:
    """Run until cancelled, or until a fatal protocol error."""
    delay = BACKOFF_INITIAL_S
    while True:
        try:
            conn = await ZdsClientConnection.connect(path)
        except OSError as exc:
            log.debug("ZDS connect failed", extra=kv(path=path, error=str(exc), retry_s=delay))
            await asyncio.sleep(delay)  # back-off before reconnecting
            delay = min(delay * 2, BACKOFF_MAX_S)
            continue
        delay = BACKOFF_INITIAL_S
        log.info("connected to the CNI agent", extra=kv(path=path))
        try:
            async with conn:
                await _serve(conn, manager)
        except ZdsFatalError as exc:
            log.error("fatal ZDS protocol error; in-pod manager stopped", extra=kv(error=str(exc)))  # noqa: TRY400
            return
        except (ZdsProtocolError, ZdsClosed) as exc:
            log.warning("ZDS connection ended; reconnecting", extra=kv(error=str(exc)))


async def _serve(conn: ZdsClientConnection, manager: WorkloadProxyManager) -> None:
    while True:
        event = await conn.next_event()
        error = await manager.handle(event)
        await conn.ack(error)
