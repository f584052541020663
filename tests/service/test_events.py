"""service/events.py, the one pub/sub listener per API process: waiters wake on their job's announcement, and the
listener stops promptly even when redis-py reports its cancelled read as a lost connection (a CI run hung so)."""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from collections.abc import AsyncIterator, Callable

import pytest
import redis.asyncio as aioredis
from redis.exceptions import ConnectionError as RedisConnectionError

from service.events import JobEvents
from worker.protocol import Keys


class CancelledAsConnectionError:
    """A pubsub whose blocking read, when cancelled, raises ConnectionError instead of CancelledError."""

    subscribed = True

    async def psubscribe(self, *patterns: str) -> None:
        pass

    async def listen(self):
        try:
            await asyncio.sleep(3600)
        except asyncio.CancelledError:
            raise RedisConnectionError("Connection closed by server.") from None
        yield {}  # pragma: no cover

    async def aclose(self) -> None:
        pass


def test_stop_returns_even_when_a_cancelled_read_looks_like_a_lost_connection(monkeypatch):
    monkeypatch.setattr(aioredis.Redis, "pubsub", lambda self, **kw: CancelledAsConnectionError())

    async def run() -> float:
        events = JobEvents("redis://127.0.0.1:1/0", "glimpse")
        events.start()
        await asyncio.wait_for(events.listening.wait(), 5)
        t0 = time.monotonic()
        await events.stop()
        return time.monotonic() - t0

    took: list[float] = []
    runner = threading.Thread(target=lambda: took.append(asyncio.run(run())), daemon=True)  # a hang must not hang us
    runner.start()
    runner.join(10)
    assert not runner.is_alive(), "stop() hung: the listener resubscribed after its cancelled read"
    assert took[0] < 3


@contextlib.asynccontextmanager
async def listening(url: str) -> AsyncIterator[tuple[JobEvents, Callable[[str, str], None]]]:
    """A started JobEvents on `url` (subscribed), and `announce(job_id, state)` as the worker publishes it."""
    import redis

    events = JobEvents(url, "events-test")
    events.start()
    await asyncio.wait_for(events.listening.wait(), 5)
    conn = redis.Redis.from_url(url)
    try:
        yield events, lambda job_id, state: conn.publish(Keys("events-test").events(job_id), state)
    finally:
        conn.close()
        await events.stop()


@pytest.mark.parametrize("announced", [True, False])
def test_a_waiter_wakes_on_its_jobs_announcement_only(service_redis_url, announced):
    async def run() -> tuple[bool, float]:
        async with listening(service_redis_url) as (events, announce):
            with events.watch("job-a") as watch:
                waiter = asyncio.create_task(watch.wait(2.0))
                await asyncio.sleep(0.05)
                announce("job-b", "running")  # another job's: no wake
                if announced:
                    announce("job-a", "running")
                t0 = time.monotonic()
                woke = await waiter
        return woke, time.monotonic() - t0

    woke, took = asyncio.run(run())
    assert woke is announced and (took < 1.0 if announced else took > 1.5)


def test_a_watch_keeps_what_was_announced_before_its_wait(service_redis_url):
    """A reader reads between waits; an announcement landing then wakes its next wait at once (none is lost), and
    a wait forgets what woke it, so the one after that waits for a new announcement."""
    async def run() -> list[tuple[bool, float]]:
        seen = []
        async with listening(service_redis_url) as (events, announce):
            with events.watch("job-a") as watch:
                announce("job-a", "running")  # while the reader is not waiting
                await asyncio.sleep(0.3)  # the listener has it by now
                for _ in range(2):
                    t0 = time.monotonic()
                    seen.append((await watch.wait(1.0, not_before=t0 + 0.1), time.monotonic() - t0))
            assert "job-a" not in events.waiters  # the watch ended with its block
        return seen

    (first, took_first), (second, took_second) = asyncio.run(run())
    assert first and 0.09 < took_first < 0.5  # at once, but not before not_before
    assert not second and took_second > 0.9


def test_a_watch_holds_back_reads_of_steps_but_not_of_the_end(service_redis_url):
    """Steps may come every few ms, so a reader woken by one waits for its `not_before`; the job's end is read at
    once (a `done` event held back by the step throttle came up to 50 ms late)."""
    async def run() -> list[float]:
        took = []
        async with listening(service_redis_url) as (events, announce):
            with events.watch("job-a") as watch:
                for state in ("running", "succeeded"):
                    announce("job-a", state)
                    t0 = time.monotonic()
                    assert await watch.wait(2.0, not_before=t0 + 0.5)
                    took.append(time.monotonic() - t0)
            with events.watch("job-b") as watch:  # the end comes while a step's read is held back
                announce("job-b", "running")
                t0 = time.monotonic()
                waiting = asyncio.create_task(watch.wait(2.0, not_before=t0 + 1.0))
                await asyncio.sleep(0.2)
                announce("job-b", "succeeded")
                assert await waiting
                took.append(time.monotonic() - t0)
        return took

    step, end, end_while_held = asyncio.run(run())
    assert step >= 0.49 and end < 0.3 and 0.15 < end_while_held < 0.6
