"""Real `python -m worker` processes: SIGKILL recovery on another worker, SIGTERM, heartbeats."""

from __future__ import annotations

import signal
import subprocess
import time

from worker import queue as q
from worker.protocol import Keys

from .conftest import files_of, make_settings, request, wait_for

STARTUP = 60  # seconds a worker may take to import torch and load the models on a busy 2-core machine


def _wait_workers(conn, settings, names):
    return wait_for(lambda: {b["name"] for b in q.live_workers(conn, settings)} >= set(names), timeout=STARTUP,
                    interval=0.1, what=f"heartbeats of {names}")


def test_sigkill_mid_job_is_retried_by_a_live_worker_with_identical_bytes(conn, settings, run_burst, spawn_worker):
    slow = make_settings(settings.redis_url, settings.checkpoints, step_delay=0.25, batch_jobs=1)
    procs = {name: spawn_worker(slow, name) for name in ("worker-a", "worker-b")}
    _wait_workers(conn, slow, procs)
    beats = {b["name"]: b for b in q.live_workers(conn, slow)}
    served = {m["id"] for m in beats["worker-a"]["models"]}
    assert served == {"tiny-align", "tiny-draw", "tiny-stat", "tiny-text"}  # readiness
    req = request(captions=["the digit 3 is at the top left", "9 at bottom"], n=2)
    job_id, _ = q.enqueue_generation(conn, req, slow)

    view = wait_for(lambda: (v := q.get_view(conn, job_id, slow)) and v.status == "running" and v.step >= 2 and v,
                    timeout=30, what="the job to reach step 2")
    victim = view.meta["worker"]
    procs[victim].send_signal(signal.SIGKILL)
    killed_at = time.monotonic()
    procs[victim].wait(5)
    assert 2 <= q.get_view(conn, job_id, slow).step < 5  # killed mid-job

    done = wait_for(lambda: (v := q.get_view(conn, job_id, slow)) and v.status == "succeeded" and v,
                    timeout=slow.recovery_bound + 15, interval=0.05, what="the job to finish on the other worker")
    elapsed = time.monotonic() - killed_at
    run_time = 5 * slow.step_delay
    assert elapsed <= slow.recovery_bound + run_time + 3, f"recovered in {elapsed:.1f} s"
    assert done.result["worker"] != victim and done.result["attempt"] == 2 and done.meta["requeued"]
    assert victim not in {b["name"] for b in q.live_workers(conn, slow)}

    # the same request uninterrupted (in-process, another job id): same bytes, file for file
    elsewhere = make_settings(settings.redis_url, settings.checkpoints, queues=["reference"])  # not worker-b's
    ref_id, _ = q.enqueue_generation(conn, req, elsewhere, job_id="reference")
    run_burst(elsewhere)
    reference, recovered = files_of(conn, settings, ref_id), files_of(conn, slow, job_id)
    assert len(reference) == 4 * (1 + 5 + 1) and reference == recovered  # image, 5 raw canvases, attention


def test_sigterm_finishes_the_job_within_grace_or_requeues_it(conn, settings, run_burst, spawn_worker, tmp_path):
    patient = make_settings(settings.redis_url, settings.checkpoints, step_delay=0.2, shutdown_grace=30,
                            queues=["patient"])
    hasty = make_settings(settings.redis_url, settings.checkpoints, step_delay=0.2, shutdown_grace=0,
                          queues=["hasty"])
    procs = {"patient": spawn_worker(patient, "patient"), "hasty": spawn_worker(hasty, "hasty")}
    _wait_workers(conn, settings, procs)
    jobs = {"patient": q.enqueue_generation(conn, request(), patient)[0],
            "hasty": q.enqueue_generation(conn, request(), hasty)[0]}
    for name, s in (("patient", patient), ("hasty", hasty)):
        wait_for(lambda s=s, name=name: (v := q.get_view(conn, jobs[name], s)) and v.status == "running" and v.step,
                 timeout=30, what=f"{name}'s job to start")
    signalled = time.monotonic()
    for p in procs.values():
        p.send_signal(signal.SIGTERM)
    # Both exit well inside the patient's 30 s grace. A slow exit (> 40 s under load: RQ's channel teardown waited
    # for its listener's 60 s read; worker.__main__.Worker.unsubscribe) fails with each worker's timestamped log.
    for name, p in procs.items():
        try:
            rc = p.wait(max(0.0, signalled + 15 - time.monotonic()))
        except subprocess.TimeoutExpired:
            rc = None
        if rc != 0:
            took = time.monotonic() - signalled
            logs = "".join(f"\n--- {n}.log ---\n" + (tmp_path / f"{n}.log").read_text()[-3000:] for n in procs)
            raise AssertionError(f"{name}: exit code {rc} {took:.1f} s after SIGTERM{logs}")

    finished = q.get_view(conn, jobs["patient"], patient)
    assert finished.status == "succeeded" and finished.attempt == 1  # finished within its grace, then exited
    requeued = q.get_view(conn, jobs["hasty"], hasty)
    assert requeued.status == "queued" and requeued.step == 0 and requeued.attempt == 1
    assert requeued.meta["requeued"] == "worker shutdown"
    assert conn.lrange(q.make_queue(conn, "hasty").key, 0, -1) == [jobs["hasty"].encode()]
    assert conn.hlen(Keys().running) == 0 and q.live_workers(conn, settings) == []  # heartbeats cleared on exit

    run_burst(make_settings(settings.redis_url, settings.checkpoints, queues=["hasty"]))
    again = q.get_view(conn, jobs["hasty"], hasty)
    assert again.status == "succeeded" and again.attempt == 2
