"""Change broadcast over Redis: a process that commits a change-feed row (a key revoked, credit
granted, a price set; by the admin API or the CLI) publishes its id, and every gateway process
polls its feed at once instead of at its next interval. The feed stays the record: a lost
message only means the change arrives at the next poll.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from typing import Any

import redis
import redis.asyncio
from sqlalchemy import Connection, Engine, event
from sqlalchemy.sql.dml import Insert

from tokenport.store.schema import changes

log = logging.getLogger("tokenport.broadcast")

CHANNEL = "tokenport:changes"
_FLAG = "tokenport.change_id"


def announce_changes(engine: Engine, redis_url: str) -> Callable[[], None]:
    """Publish the highest change-feed id each transaction on `engine` wrote, once it commits.
    Returns a function that stops it."""
    client = redis.Redis.from_url(redis_url, socket_timeout=1)

    def after_execute(
        conn: Connection, clause: Any, multiparams: Any, params: Any, execution_options: Any, result: Any
    ) -> None:
        if isinstance(clause, Insert) and clause.table is changes and result.inserted_primary_key:
            conn.info[_FLAG] = max(conn.info.get(_FLAG, 0), int(result.inserted_primary_key[0]))

    def publish(conn: Connection) -> None:
        # SQLAlchemy's commit event comes just before the commit: subscribers wait for the id.
        if change_id := conn.info.pop(_FLAG, None):
            try:
                client.publish(CHANNEL, str(change_id))
            except redis.RedisError as exc:  # the feed still has it; pollers find it
                log.warning("could not announce change %s: %s", change_id, type(exc).__name__)

    def forget(conn: Connection) -> None:
        conn.info.pop(_FLAG, None)

    event.listen(engine, "after_execute", after_execute)
    event.listen(engine, "commit", publish)
    event.listen(engine, "rollback", forget)

    def stop() -> None:
        event.remove(engine, "after_execute", after_execute)
        event.remove(engine, "commit", publish)
        event.remove(engine, "rollback", forget)
        client.close()

    return stop


async def listen(redis_url: str, wake: Callable[[int], None]) -> None:
    """Call `wake(change_id)` for every announced change, until cancelled; reconnects."""
    while True:
        client = redis.asyncio.Redis.from_url(redis_url)
        try:
            async with client.pubsub() as pubsub:
                await pubsub.subscribe(CHANNEL)
                async for message in pubsub.listen():
                    if message.get("type") == "message":
                        with contextlib.suppress(ValueError):
                            wake(int(message["data"]))
        except redis.RedisError as exc:
            log.warning("change broadcast lost (%s); polling meanwhile", type(exc).__name__)
            await asyncio.sleep(1)
        finally:
            await client.aclose()
