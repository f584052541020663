"""Pushed job events: one Redis pattern subscription per API process wakes every stream and long poll waiting on a
job, so a step reaches a client as soon as the worker announces it (worker.queue.announce) instead of at the next
poll. A missed message (Redis restarting, the subscriber reconnecting) only delays a reader to its fallback poll.

A reader watches its job before its first read and keeps watching between reads: an announcement that lands while
it reads (in a thread) or writes to its client wakes its next wait at once instead of being lost (a long poll whose
job ended during its read used to sleep to its fallback poll).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import defaultdict
from collections.abc import Iterator

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from worker.protocol import TERMINAL, Keys

log = logging.getLogger("service")


class Watch:
    """One reader's view of its job's announcements: set by any since its last wait returned."""

    def __init__(self) -> None:
        self.announced = asyncio.Event()
        self.ended = asyncio.Event()  # the job announced its end

    def notify(self, state: str) -> None:
        if state in TERMINAL:  # the job changes no more
            self.ended.set()
        self.announced.set()

    async def wait(self, timeout: float, not_before: float = 0.0) -> bool:
        """Until the job has announced a change since the last wait (True) or `timeout` s pass (False). When woken by
        a step, returns no sooner than the monotonic time `not_before` (steps may come every few ms: a reader reads
        at most so often), unless the job announces its end meanwhile: that is read at once. It forgets what woke
        it: what comes after is for the next wait, so read right after."""
        try:
            await asyncio.wait_for(self.announced.wait(), timeout)
        except TimeoutError:
            return False
        with contextlib.suppress(TimeoutError):  # held back until not_before, unless the end comes meanwhile
            await asyncio.wait_for(self.ended.wait(), max(0.0, not_before - time.monotonic()))
        self.announced.clear()  # the read that follows sees everything announced until now
        return True


class JobEvents:
    def __init__(self, url: str, prefix: str):
        self.url = url
        self.keys = Keys(prefix)
        self.channel_start = len(self.keys.events(""))
        self.waiters: defaultdict[str, set[Watch]] = defaultdict(set)
        self.task: asyncio.Task | None = None
        self.closing = False
        self.listening = asyncio.Event()  # subscribed now (tests wait for it)

    def start(self) -> None:
        self.task = asyncio.get_running_loop().create_task(self._listen(), name="glimpse-job-events")

    async def stop(self) -> None:
        """Cancel the listener and wait for it, but never more than 2 s: redis-py may turn a cancelled read into a
        ConnectionError, which the loop would otherwise take for a lost subscription and retry (a shutdown hung so)."""
        self.closing = True
        if self.task is not None:
            self.task.cancel()
            await asyncio.wait({self.task}, timeout=2.0)  # unlike wait_for, never waits on past its timeout

    @contextlib.contextmanager
    def watch(self, job_id: str) -> Iterator[Watch]:
        """Watch the job's announcements for the block's length: enter before the first read."""
        watch = Watch()
        self.waiters[job_id].add(watch)
        try:
            yield watch
        finally:
            self.waiters[job_id].discard(watch)
            if not self.waiters[job_id]:
                del self.waiters[job_id]

    async def _listen(self) -> None:
        backoff = 0.1
        while not self.closing:
            client = aioredis.Redis.from_url(self.url)
            pubsub = client.pubsub(ignore_subscribe_messages=True)
            try:
                await pubsub.psubscribe(self.keys.events_pattern)
                self.listening.set()
                backoff = 0.1
                async for message in pubsub.listen():
                    if message.get("type") == "pmessage":
                        job_id = message["channel"][self.channel_start:].decode()
                        state = message["data"].decode(errors="replace")
                        for watch in self.waiters.get(job_id, ()):
                            watch.notify(state)
            except (RedisError, OSError) as e:
                self.listening.clear()
                if self.closing:
                    return
                log.warning("job events: subscription lost (%s); resubscribing in %.1f s", type(e).__name__, backoff)
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 5.0)
            finally:
                for close in (pubsub.aclose, client.aclose):  # each, whatever the other did
                    with contextlib.suppress(Exception):
                        await close()

