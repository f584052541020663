"""Cross-job batching: a job drawn inside a batch gets exactly the bytes it gets alone."""

from __future__ import annotations

import pytest

from worker import queue as q
from worker.protocol import Keys

from .conftest import files_of, make_settings, request

CAPTIONS = ["7", "the digit 3 is at the top left", "1 at bottom right", "the digit 0 is at the left of the image",
            "4 4 4 4 4 4 4 4 4 4 4 4", "9 at top"]

MIXES = {
    # four one-caption jobs, captions of 1 to 12 tokens: one call of 16 rows
    "one-caption": [dict(captions=[c]) for c in CAPTIONS[:4]],
    # jobs of 1, 3 (n=3), 4 (2 captions × 2) and 5 images, then one that fills a call alone, then one of 20 images
    # (two calls), then a small one after them
    "mixed-sizes": [dict(captions=[CAPTIONS[4]]), dict(captions=[CAPTIONS[1]], n=3),
                    dict(captions=CAPTIONS[2:4], n=2), dict(captions=[CAPTIONS[5]], n=5),
                    dict(captions=[CAPTIONS[0]], n=16), dict(captions=CAPTIONS[:2], n=10), dict(captions=["2"])],
    "draw": [dict(model="tiny-draw", captions=None, n=k) for k in (1, 2, 5, 1)],
}


@pytest.mark.parametrize("mix", sorted(MIXES))
def test_batched_and_single_runs_give_identical_bytes(conn, settings, run_burst, mix):
    requests = [request(**kw) for kw in MIXES[mix]]
    alone = make_settings(settings.redis_url, settings.checkpoints, batch_jobs=1)
    batched = make_settings(settings.redis_url, settings.checkpoints, batch_jobs=8)

    singles = [q.enqueue_generation(conn, r, alone, job_id=f"single-{i}")[0] for i, r in enumerate(requests)]
    run_burst(alone)
    together = [q.enqueue_generation(conn, r, batched, job_id=f"batched-{i}")[0] for i, r in enumerate(requests)]
    run_burst(batched)

    for s, b in zip(singles, together, strict=True):
        vs, vb = q.get_view(conn, s, alone), q.get_view(conn, b, batched)
        assert vs.status == vb.status == "succeeded"
        assert vs.result["batch"]["jobs"] == 1
        fs, fb = files_of(conn, alone, s), files_of(conn, batched, b)
        assert fs.keys() == fb.keys()
        differ = sorted(name for name in fs if fs[name] != fb[name])
        assert not differ, f"{b} (batch of {vb.result['batch']['jobs']}) differs from {s} alone: {differ[:5]}"
    sizes = [q.get_view(conn, b, batched).result["batch"]["jobs"] for b in together]
    if mix == "one-caption":
        assert sizes == [4, 4, 4, 4]  # the first job took the other three
    if mix == "mixed-sizes":
        assert sizes == [5, 5, 5, 5, 1, 1, 5]  # 1+3+4+5 rows and the last job's 1 fit in 16; 16 and 20 rows do not
    if mix == "draw":
        assert sizes == [4, 4, 4, 4]


def test_batching_respects_the_job_and_row_limits(conn, settings, run_burst):
    batched = make_settings(settings.redis_url, settings.checkpoints, batch_jobs=3, batch_rows=4)
    ids = [q.enqueue_generation(conn, request(captions=["7"], n=n), batched)[0] for n in (1, 1, 1, 1, 2, 3)]
    run_burst(batched)
    views = [q.get_view(conn, i, batched) for i in ids]
    assert all(v.status == "succeeded" for v in views)
    leaders = [v.result["batch"]["leader"] for v in views]
    # B = 3 jobs per call: jobs 0-2 together; job 3 (1 image) takes job 4 (2 images) = 3 rows, job 5 (3) won't fit
    assert leaders == [ids[0]] * 3 + [ids[3]] * 2 + [ids[5]]


def test_every_sampler_call_has_the_same_shape(conn, settings, run_burst, monkeypatch):
    """The scheme behind the identical bytes: (batch_rows, max_caption_tokens) for every call, alone or batched.
    (On the paper-size model, padding captions to another K changed pixels; the tiny one here happens not to.)"""
    from worker import jobs

    shapes = []
    real = jobs.sample

    def spy(model, **kw):
        shapes.append((len(kw["seeds"]), kw["batch_size"], tuple(kw["captions"].shape), tuple(kw["lengths"].shape)))
        return real(model, **kw)

    monkeypatch.setattr(jobs, "sample", spy)
    for b in (1, 8):
        s = make_settings(settings.redis_url, settings.checkpoints, batch_jobs=b)
        for kw in MIXES["mixed-sizes"]:
            q.enqueue_generation(conn, request(**kw), s)
        run_burst(s)
    assert len(shapes) == 8 + 4  # alone: 6 + 2 (20 images take two calls); batched: 1 (five jobs) + 1 + 2
    assert set(shapes) == {(16, 16, (16, 12), (16,))}


def test_image_set_jobs_of_different_set_sizes_batch_to_the_same_bytes(conn, settings, run_burst):
    """Sets of 1, 3 and 5 examples share one call, padded to 5 with a mask: each job's samples are those it draws
    alone (the masked items add exact zeros to the set's mean)."""
    import numpy as np

    from worker.inputs import normalised_png
    from worker.protocol import ImageSet, Keys, input_name

    rng = np.random.default_rng(0)
    sizes = (1, 3, 5)
    requests = [request(model="tiny-stat", captions=None, n=n, condition=ImageSet(inputs=[input_name(j)
                for j in range(k)])) for k, n in zip(sizes, (2, 4, 3), strict=True)]
    sets = [[normalised_png(((rng.random((12, 12, 1)) > 0.5) * 255).astype(np.uint8)) for _ in range(k)]
            for k in sizes]
    alone = make_settings(settings.redis_url, settings.checkpoints, batch_jobs=1)
    batched = make_settings(settings.redis_url, settings.checkpoints, batch_jobs=8)
    ids: dict[str, list[str]] = {}
    for name, s in (("single", alone), ("batched", batched)):
        ids[name] = []
        for i, (r, pngs) in enumerate(zip(requests, sets, strict=True)):
            conn.hset(Keys(s.key_prefix).files(f"{name}-{i}"), mapping={input_name(j): p for j, p in enumerate(pngs)})
            ids[name].append(q.enqueue_generation(conn, r, s, job_id=f"{name}-{i}")[0])
        run_burst(s)
    for s, b in zip(ids["single"], ids["batched"], strict=True):
        vs, vb = q.get_view(conn, s, alone), q.get_view(conn, b, batched)
        assert vs.status == vb.status == "succeeded" and vb.result["batch"]["jobs"] == 3
        fs, fb = files_of(conn, alone, s), files_of(conn, batched, b)
        assert fs.keys() == fb.keys() and fs == fb
    first = files_of(conn, alone, ids["single"][0])
    assert first["images/0.png"] != first["images/1.png"]  # two seeds, two samples


def test_jobs_drawn_in_another_jobs_call_are_closed_without_an_rq_run(conn, settings, run_burst, monkeypatch):
    """The leader closes the jobs it drew as RQ closes a job that returned: finished, the result kept as the RQ
    result for result_ttl, in the finished registry, the job hash expiring with it; RQ runs only the leader."""
    from rq import get_current_job
    from rq.job import Job, JobStatus
    from rq.registry import FinishedJobRegistry

    from worker import jobs

    runs: list[str] = []
    generate = jobs.generate

    def counted(payload):
        runs.append(get_current_job().id)
        return generate(payload)

    monkeypatch.setattr(jobs, "generate", counted)  # RQ resolves worker.jobs.generate by name at each run
    batched = make_settings(settings.redis_url, settings.checkpoints, batch_jobs=8)
    ids = [q.enqueue_generation(conn, request(captions=[c]), batched)[0] for c in CAPTIONS[:4]]
    run_burst(batched)
    assert runs == ids[:1]  # the leader alone: the other three were drawn and closed inside its run
    for job_id in ids:
        view = q.get_view(conn, job_id, batched)
        job = Job.fetch(job_id, connection=conn, serializer=q.SERIALIZER)
        assert view.status == "succeeded" and view.result["batch"]["jobs"] == 4
        assert job.get_status() == JobStatus.FINISHED and job.return_value() == view.result
        assert job_id in FinishedJobRegistry(job.origin, connection=conn, serializer=q.SERIALIZER).get_job_ids()
        assert 0 < conn.ttl(job.key) <= batched.result_ttl
        assert job.ended_at is not None and job.started_at is not None and job.started_at < job.ended_at
    assert conn.llen(q.make_queue(conn, batched.queues[0]).key) == 0
    assert not conn.hgetall(q.Keys(batched.key_prefix).running)


def test_a_batch_takes_jobs_from_past_the_first_page_it_reads(conn, settings, run_burst):
    """The leader reads waiting jobs a page at a time (as many as could still fit, at least 4): jobs for another
    model on the first pages do not hide the ones behind them that fit."""
    batched = make_settings(settings.redis_url, settings.checkpoints, batch_jobs=3, batch_rows=4)
    leader = q.enqueue_generation(conn, request(captions=["7"]), batched)[0]
    others = [q.enqueue_generation(conn, request(model="tiny-draw", captions=None), batched)[0] for _ in range(9)]
    behind = [q.enqueue_generation(conn, request(captions=["1"]), batched)[0] for _ in range(2)]
    run_burst(batched)
    view = q.get_view(conn, leader, batched)
    assert view.status == "succeeded" and view.result["batch"]["jobs"] == 3
    assert {q.get_view(conn, b, batched).result["batch"]["leader"] for b in behind} == {leader}
    assert all(q.get_view(conn, o, batched).status == "succeeded" for o in others)


def test_a_job_whose_worker_died_under_it_draws_alone(conn, settings, run_burst):
    """A job requeued from a dead worker may be what killed it: batched again, it would spend the attempts of the
    jobs drawn with it. It runs alone (neither leading a batch nor claimed into one); the others still batch."""
    batched = make_settings(settings.redis_url, settings.checkpoints, batch_jobs=3)
    keys = Keys(batched.key_prefix)
    ids = [q.enqueue_generation(conn, request(captions=[c]), batched)[0] for c in CAPTIONS[:3]]
    queue_key = q.make_queue(conn, batched.queues[0]).key
    conn.lrem(queue_key, 1, ids[1])
    conn.hset(keys.running, ids[1], q.owner_record("died", 1))  # taken by a worker that then died
    assert q.requeue_orphans(conn, batched) == [(ids[1], "requeued")]  # back at the front
    run_burst(batched)
    batches = {j: q.get_view(conn, j, batched).result["batch"] for j in ids}
    assert batches[ids[1]]["jobs"] == 1 and batches[ids[1]]["leader"] == ids[1]
    assert batches[ids[0]]["jobs"] == batches[ids[2]]["jobs"] == 2 and batches[ids[2]]["leader"] == ids[0]


def test_a_job_claimed_into_a_batch_has_its_attempt_counted_by_the_claim(conn, settings, run_burst, monkeypatch):
    """A worker killed between claiming waiting jobs and drawing them must still have spent their attempts: the
    count is in each job's record from the claim on, not from the first step's write."""
    from worker import jobs

    run = jobs._run
    stored: dict[str, int] = {}

    def looked_before_drawing(conn_, rt, lm, entries, guard):
        stored.update({e.job.id: q.fetch_job(conn, e.job.id).meta["attempt"] for e in entries})
        return run(conn_, rt, lm, entries, guard)

    monkeypatch.setattr(jobs, "_run", looked_before_drawing)
    batched = make_settings(settings.redis_url, settings.checkpoints, batch_jobs=4)
    ids = [q.enqueue_generation(conn, request(captions=[c]), batched)[0] for c in CAPTIONS[:4]]
    run_burst(batched)
    assert stored == dict.fromkeys(ids, 1)
    assert all((lambda r: (r["attempt"], r["batch"]["jobs"]))(q.get_view(conn, j, batched).result) == (1, 4)
               for j in ids), "one call drew all four, three of them claimed"
