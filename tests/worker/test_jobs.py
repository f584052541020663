"""Jobs end to end against a real Redis with an in-process SimpleWorker (burst mode)."""

from __future__ import annotations

import io
import json
import threading
import time

import pytest
from PIL import Image
from rq.job import JobStatus

from worker import queue as q
from worker import render
from worker.protocol import JOB_FUNC, Keys, raw_name
from worker.registry import load_models

from .conftest import files_of, make_settings, request, wait_for


def test_canvases_become_the_bytes_of_torchs_rounding_half_to_even():
    """The worker's uint8 conversion (numpy on the CPU) gives what torch's round and cast give, ties included."""
    import torch

    from worker.jobs import _to_uint8

    ties = torch.tensor([k + 0.5 for k in range(255)]) / 255  # products of 255 that land on or next to k + ½
    for shape in [(16, 1, 60, 60), (3, 3, 8, 8), (1, 5, 5), (2, 4, 3, 6, 6)]:
        x = torch.sigmoid(4 * torch.randn(*shape, generator=torch.Generator().manual_seed(0)))
        flat = x.view(-1)
        n = min(len(flat), len(ties))
        flat[:n] = ties[:n]
        flat[-2:] = torch.tensor([0.0, 1.0])
        expected = (x * 255).round_().clamp_(0, 255).to(torch.uint8).movedim(-3, -1).numpy()
        got = _to_uint8(x)
        assert got.shape == expected.shape and (got == expected).all(), shape


def test_registry_loads_generators_and_skips_the_classifier(checkpoints, caplog):
    caplog.set_level("INFO", logger="worker.registry")
    models = load_models(checkpoints)
    assert sorted(models) == ["tiny-align", "tiny-draw", "tiny-stat", "tiny-text"]
    assert models["tiny-align"].info.kind == "aligndraw" and models["tiny-align"].info.steps == 5
    assert "mnist-classifier: format 'glimpse-classifier/1' is not a generator checkpoint" in caplog.text


def test_a_text_family_has_no_image_size_and_shows_only_words_a_user_can_type(checkpoints):
    info = load_models(checkpoints)["tiny-text"].info
    assert (info.height, info.width, info.channels) == (None, None, None)
    assert info.modes == {"none": "text", "text_pair": "text"}  # the API scores images, not sentences
    assert info.vocabulary is not None and "digit" in info.vocabulary
    assert not {"<bos>", "<eos>"} & set(info.vocabulary) and info.max_caption_tokens == 12
    assert "<unk>" in info.vocabulary  # a sentence the model writes may hold it, and must read back


def test_a_family_the_worker_cannot_serve_is_skipped_not_fatal(checkpoints, tmp_path, caplog, monkeypatch):
    """A family returning an output the job contract has no place for (here: text, taken out of the contract's
    outputs for the test) beside the others: the worker loads the rest and says why it skipped that one. A text
    family without a vocabulary is skipped too."""
    import shutil
    from typing import Literal

    from models.checkpoint import Checkpoint, save_checkpoint
    from models.textvae import TextVAE, TextVAEConfig
    from worker import registry

    d = tmp_path / "checkpoints"
    shutil.copytree(checkpoints, d)
    save_checkpoint(d / "no-vocab", Checkpoint(TextVAE(TextVAEConfig(vocab_size=12, max_length=5, embed=4,
                                                                     hidden=4, z_dim=2, preset="small"))))
    caplog.set_level("INFO", logger="worker.registry")
    assert sorted(load_models(d)) == ["tiny-align", "tiny-draw", "tiny-stat", "tiny-text"]
    assert "no-vocab: a captions or text model (textvae) without a vocabulary" in caplog.text
    monkeypatch.setattr(registry, "ModeOutput", Literal["frames", "images", "scores", "labels"])
    assert sorted(load_models(d)) == ["tiny-align", "tiny-draw", "tiny-stat"]
    assert "tiny-text: textvae returns ['text'], which this worker does not serve" in caplog.text


def test_aligndraw_job_end_to_end(conn, settings, run_burst):
    job_id, req = q.enqueue_generation(conn, request(captions=["the digit 3 is at the top left", "7 at bottom"],
                                                     n=2), settings, steps=5)
    assert q.get_view(conn, job_id, settings).status == "queued"
    run_burst(settings)
    view = q.get_view(conn, job_id, settings)
    assert view.status == "succeeded" and view.step == 5 and view.steps == 5 and view.attempt == 1
    assert view.result["seeds"] == req.seeds and len(req.seeds) == 4  # recorded, one per image
    files = files_of(conn, settings, job_id)
    # The worker writes raw canvases and the final images; frame PNGs and animations are rendered on request by
    # the API (service/outputs.py, tested through the API).
    expected = {f"images/{i}.png" for i in range(4)} | {f"raw/{i}/{t}" for i in range(4) for t in range(1, 6)}
    expected |= {f"attention/{i}.bin" for i in range(4)}  # the API encodes attention/{i}.json from it when asked
    assert set(files) == expected
    image = Image.open(io.BytesIO(files["images/2.png"]))
    assert image.size == (16, 16) and image.mode == "L"
    last = render.unraw(files["raw/2/5"], view.meta["frame_shape"])
    assert files["images/2.png"] == render.png(last)  # the final image is the last canvas
    assert [o["animations"] for o in view.result["outputs"]] == [["gif", "webp"]] * 4  # offered
    attention = json.loads(render.attention_json(files["attention/2.bin"]))  # image 2 draws caption 1: "7 at bottom"
    assert attention["words"] == ["7", "at", "bottom"]
    assert len(attention["windows"]) == 5 and all(len(w) == 4 for w in attention["windows"])
    assert len(attention["alignment"]) == 5 and all(len(a) == 3 for a in attention["alignment"])
    assert all(abs(sum(a) - 1) < 1e-3 for a in attention["alignment"])  # weights over the caption's words
    assert view.result["bytes"] == sum(len(v) for v in files.values()) <= view.result["bytes_bound"]
    assert conn.ttl(Keys(settings.key_prefix).files(job_id)) > settings.result_ttl - 10
    assert q.fetch_job(conn, job_id).return_value()["state"] == "succeeded"
    assert q.get_file(conn, job_id, "images/2.png", settings) == files["images/2.png"]


def test_draw_job_and_output_options(conn, settings, run_burst):
    job_id, _ = q.enqueue_generation(
        conn, request(model="tiny-draw", captions=None, n=3,
                      output={"frames": False, "gif": False, "webp": True, "scale": 2}), settings)
    run_burst(settings)
    files = files_of(conn, settings, job_id)
    # No frames offered, but a WebP is: the raw canvases stay for the API to render it from.
    assert sorted(files) == sorted([*(f"attention/{i}.bin" for i in range(3)), *(f"images/{i}.png" for i in range(3)),
                                    *(f"raw/{i}/{t}" for i in range(3) for t in range(1, 7))])
    view = q.get_view(conn, job_id, settings)
    assert [(o["frames"], o["animations"]) for o in view.result["outputs"]] == [(0, ["webp"])] * 3
    assert Image.open(io.BytesIO(files["images/0.png"])).size == (20, 24)  # 10×12 drawn, scaled ×2
    assert json.loads(render.attention_json(files["attention/0.bin"]))["alignment"] is None


def _burst_while_polling(run_burst, settings, conn, job_id, seen, on_step=None) -> None:
    """Run a burst worker while a thread records the job's progress (and acts at some step)."""
    stop = threading.Event()
    poller = threading.Thread(target=_poll_progress, args=(conn, settings, job_id, seen, stop, on_step))
    poller.start()
    try:
        run_burst(settings)
    finally:
        stop.set()
        poller.join()


def _poll_progress(conn, settings, job_id, seen, stop, on_step=None):
    """Record (step, state, frame-readable) while the job runs; optionally act once at some step."""
    while not stop.is_set():
        view = q.get_view(conn, job_id, settings)
        if view and view.status == "running" and view.step:
            raw = conn.hget(Keys(settings.key_prefix).files(job_id), raw_name(0, view.step))
            readable = raw is not None and render.unraw(raw, view.meta["frame_shape"]).shape[:2] == (16, 16)
            seen.append((view.step, readable))
            if on_step and on_step(view.step):
                on_step = None
        time.sleep(0.01)


def test_progress_rises_step_by_step_and_frames_are_readable_mid_job(conn, settings, run_burst):
    slow = make_settings(settings.redis_url, settings.checkpoints, step_delay=0.15)
    job_id, _ = q.enqueue_generation(conn, request(), slow)
    seen: list[tuple[int, bool]] = []
    _burst_while_polling(run_burst, slow, conn, job_id, seen)
    steps = [s for s, _ in seen]
    assert steps == sorted(steps), "progress went backwards"
    assert set(steps) == {1, 2, 3, 4, 5}, f"every step should be visible while running, saw {sorted(set(steps))}"
    assert all(readable for _, readable in seen), "a step was announced before its frame was stored"
    assert q.get_view(conn, job_id, slow).status == "succeeded"


def test_steps_written_together_keep_every_frame_byte_for_byte(conn, settings, run_burst):
    """With GLIMPSE_STEP_FLUSH_MS past a whole sampler call, a job's steps reach Redis in two writes (its first
    step and its last) instead of five, and its stored frames and images are those written one step at a time."""
    stored, announcements = {}, {}
    for flush_ms in (0.0, 1e6):
        s = make_settings(settings.redis_url, settings.checkpoints, step_flush_ms=flush_ms)
        job_id, _ = q.enqueue_generation(conn, request(n=2, seeds=[7, 8]), s)
        sub = conn.pubsub()
        sub.subscribe(Keys(s.key_prefix).events(job_id))
        run_burst(s)
        count = 0
        while (message := sub.get_message(timeout=0.2)) is not None:
            count += message["type"] == "message"
        sub.close()
        announcements[flush_ms], stored[flush_ms] = count, files_of(conn, s, job_id)
        assert q.get_view(conn, job_id, s).status == "succeeded"
    assert sum(name.startswith("raw/") for name in stored[0.0]) == 2 * 5  # every step of both images
    assert stored[0.0] == stored[1e6]
    assert announcements[0.0] - announcements[1e6] == 5 - 2


def test_cancel_a_running_job_stops_within_one_step(conn, settings, run_burst):
    slow = make_settings(settings.redis_url, settings.checkpoints, step_delay=0.2)
    job_id, _ = q.enqueue_generation(conn, request(), slow)
    marks: dict[str, int] = {}

    def cancel_at(step: int) -> bool:
        if step >= 2:
            assert q.cancel(conn, job_id, slow)
            marks["step_after_cancel"] = q.get_view(conn, job_id, slow).step  # ≥ the step running at cancel time
            return True
        return False

    _burst_while_polling(run_burst, slow, conn, job_id, [], cancel_at)
    view = q.get_view(conn, job_id, slow)
    assert view.status == "canceled" and view.result["state"] == "canceled"
    assert view.result["steps_done"] <= marks["step_after_cancel"] + 1 < 5
    files = files_of(conn, slow, job_id)
    assert "images/0.png" not in files and f"raw/0/{view.result['steps_done']}" in files
    assert q.cancel(conn, job_id, slow) is False  # already over


def test_cancel_reaches_a_likelihood_job_inside_one_images_k_samples(conn, settings, run_burst, loaded_models,
                                                                    monkeypatch):
    """k = 5000 is ten passes of 500 samples an image (seconds each for a conv net on a CPU): a cancel is read between
    passes, not only between images. Each pass here takes ≥ 0.1 s and the cancel comes during the first, so the
    worker's first read of the flag (CANCEL_POLL = 0.25 s after the image began) falls by the third pass."""
    from worker.jobs import CANCEL_POLL

    assert CANCEL_POLL <= 0.25
    model = loaded_models["tiny-draw"].model
    real, passes = model.log_weight, []
    job_id = q.new_job_id()

    def slow(*args, **kwargs):
        passes.append(time.monotonic())
        if len(passes) == 1:
            assert q.cancel(conn, job_id, settings)  # a client's DELETE while the first pass runs
        time.sleep(0.1)
        return real(*args, **kwargs)

    monkeypatch.setattr(model, "log_weight", slow)
    q.enqueue_view(conn, _likelihood_job(conn, settings, job_id, k=5000), settings, job_id=job_id)
    run_burst(settings)
    view = q.get_view(conn, job_id, settings)
    assert view.status == "canceled" and view.result["steps_done"] == 0, view.result
    assert [o["score"] for o in view.result["outputs"]] == [None, None]  # the cut image's score is not half a one
    assert len(passes) <= 3, len(passes)  # of the first image's ten


def test_a_job_cut_short_by_shutdown_on_its_last_attempt_fails_saying_so(conn, settings, run_burst, monkeypatch):
    """The attempt limit is glimpse's count on the shutdown path too: RQ's own count of Retry returns never sees
    the attempts a crash's requeue spent, so a job two crashes old was drawn a third, fourth... time."""
    from worker import jobs

    job_id, _ = q.enqueue_generation(conn, request(), settings, steps=5)
    job = q.fetch_job(conn, job_id)
    job.meta["attempt"] = settings.max_attempts - 1  # two runs already lost to dead workers
    job.save_meta()
    runs: list[int] = []
    generate = jobs.generate

    def counted(payload):
        runs.append(1)
        return generate(payload)

    monkeypatch.setattr(jobs, "generate", counted)
    monkeypatch.setattr(jobs.ShutdownGuard, "stop", property(lambda guard: True))  # every run is cut short
    run_burst(settings)
    view = q.get_view(conn, job_id, settings)
    assert len(runs) == 1 and view.status == "failed" and view.attempt == settings.max_attempts, (runs, view)
    assert view.error == f"gave up after {settings.max_attempts} attempts; last: worker shutdown"
    assert not conn.hexists(Keys(settings.key_prefix).running, job_id)


def test_a_shutdown_inside_one_images_samples_requeues_the_likelihood_job_which_reruns_to_the_same_scores(
        conn, settings, run_burst, loaded_models, monkeypatch):
    """The shutdown grace ends during the first image's first pass (of two at k = 1000): the job goes back on the
    queue with no scores, and its rerun, drawing its samples from the job's seed again, scores as one that was never
    cut short."""
    from worker import jobs

    model = loaded_models["tiny-draw"].model
    real, passes = model.log_weight, []

    def counted(*args, **kwargs):
        passes.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(model, "log_weight", counted)
    whole = q.new_job_id()
    q.enqueue_view(conn, _likelihood_job(conn, settings, whole, k=1000), settings, job_id=whole)
    run_burst(settings)
    assert len(passes) == 4
    cut = q.new_job_id()
    q.enqueue_view(conn, _likelihood_job(conn, settings, cut, k=1000, seed=q.get_view(conn, whole, settings).seeds[0]),
                   settings, job_id=cut)
    monkeypatch.setattr(jobs.ShutdownGuard, "stop", property(lambda guard: len(passes) == 5))  # the first attempt's
    requeued: list[dict] = []
    real_save = jobs._save_meta

    def watched(job, meta, *pipeline, **update):
        real_save(job, meta, *pipeline, **update)
        if update.get("requeued"):
            requeued.append(dict(meta))

    monkeypatch.setattr(jobs, "_save_meta", watched)
    run_burst(settings)
    assert len(passes) == 4 + 1 + 4  # one pass of the cut attempt, then the whole rerun
    assert requeued and requeued[0]["scores"] == {} and requeued[0]["state"] == "queued", requeued
    rerun, once = (q.get_view(conn, j, settings) for j in (cut, whole))
    assert rerun.status == "succeeded" and rerun.result["attempt"] == 2, rerun.result
    assert all(o["score"] for o in once.result["outputs"])  # two real scores, not two Nones
    assert [o["score"] for o in rerun.result["outputs"]] == [o["score"] for o in once.result["outputs"]]


def _likelihood_job(conn, settings, job_id: str, *, k: int, seed: int | None = None):
    """A likelihood job of two blank 12 × 10 uploads for tiny-draw, its inputs stored as the API stores them."""
    from worker.protocol import Likelihood, input_name

    png = io.BytesIO()
    Image.new("L", (10, 12), 255).save(png, format="PNG")
    conn.hset(Keys(settings.key_prefix).files(job_id), mapping={input_name(j): png.getvalue() for j in range(2)})
    return request(model="tiny-draw", captions=None, condition=Likelihood(inputs=[input_name(0), input_name(1)], k=k),
                   **({"seeds": [seed]} if seed is not None else {}))


def test_cancel_a_waiting_job(conn, settings, run_burst):
    job_id, _ = q.enqueue_generation(conn, request(), settings)
    other, _ = q.enqueue_generation(conn, request(), settings)
    assert q.cancel(conn, job_id, settings)
    assert q.get_view(conn, job_id, settings).status == "canceled"
    run_burst(settings)
    assert q.fetch_job(conn, job_id).get_status() == JobStatus.CANCELED
    assert files_of(conn, settings, job_id) == {}
    assert q.get_view(conn, other, settings).status == "succeeded"
    assert q.cancel(conn, "no-such-job", settings) is False


@pytest.mark.parametrize("payload, error", [
    ({"model": "nope", "n": 1, "seeds": [1]},
     "unknown model 'nope'; this worker serves ['tiny-align', 'tiny-draw', 'tiny-stat', 'tiny-text']"),
    ({"model": "tiny-align", "captions": ["the zebra"], "seeds": [1]}, "caption 0: unknown words: 'zebra'"),
    ({"model": "tiny-align", "captions": ["7"], "n": 1, "seeds": [1], "evil": 1}, "evil: Extra inputs are not"),
    ({"model": "tiny-draw", "n": 1}, "seeds missing"),
    ("not a dict", "job payload must be a JSON object, got str"),
])
def test_malformed_job_fails_clearly_and_the_worker_keeps_serving(conn, settings, run_burst, payload, error):
    bad = q.make_queue(conn, settings.queues[0]).enqueue(JOB_FUNC, payload, job_id="bad", result_ttl=60)
    good, _ = q.enqueue_generation(conn, request(), settings)
    run_burst(settings)
    view = q.get_view(conn, bad.id, settings)
    assert view.status == "failed" and error in view.error
    assert "InvalidJobError" in q.fetch_job(conn, bad.id).latest_result().exc_string
    assert q.get_view(conn, good, settings).status == "succeeded"


def test_job_timeout_fails_the_job_with_a_timeout_error(conn, settings, run_burst):
    slow = make_settings(settings.redis_url, settings.checkpoints, step_delay=0.4, job_timeout_base=1,
                         job_timeout_per_row_step=0)
    job_id, _ = q.enqueue_generation(conn, request(), slow)
    after, _ = q.enqueue_generation(conn, request(), settings)
    t0 = time.monotonic()
    run_burst(slow)
    view = q.get_view(conn, job_id, slow)
    assert view.status == "failed" and view.meta["error"]["type"] == "timeout"
    assert "JobTimeoutException" in view.error and view.step < 5
    assert q.get_view(conn, after, settings).status == "succeeded"
    assert conn.hlen(Keys().running) == 0
    assert time.monotonic() - t0 < 10


def test_results_expire(conn, settings, run_burst):
    # 4 s: long enough to read the result after the burst worker returns on a loaded machine, short for a test
    short = make_settings(settings.redis_url, settings.checkpoints, result_ttl=4)
    job_id, _ = q.enqueue_generation(conn, request(), short)
    run_burst(short)
    assert q.get_view(conn, job_id, short).status == "succeeded" and files_of(conn, short, job_id)
    wait_for(lambda: q.get_view(conn, job_id, short) is None, timeout=15, what="the job record to expire")
    wait_for(lambda: not conn.exists(Keys().files(job_id)), timeout=15, what="the files to expire")


def test_orphaned_jobs_are_requeued_and_given_up_after_max_attempts(conn, settings):
    keys = Keys(settings.key_prefix)
    job_id, _ = q.enqueue_generation(conn, request(), settings)
    queue_key = q.make_queue(conn, settings.queues[0]).key
    job_key = q.fetch_job(conn, job_id).key
    assert conn.ttl(job_key) > 0  # queued_ttl: a job left waiting too long is dropped
    claim = conn.register_script(q.CLAIM_LUA)
    job, read = q.fetch_job(conn, job_id), conn.hget(job_key, "meta")
    counted = [json.dumps({**job.meta, "attempt": 1, "by": who}) for who in ("moved", "dead", "other")]
    # a count made from a meta that changed since (another worker took the job and gave it back) claims nothing
    moved = read.replace(b'"attempt": 0', b'"attempt": 1')
    assert moved != read and claim(keys=[queue_key, keys.running, job_key],
                                   args=[job_id, q.owner_record("moved", 1), counted[0], moved]) == 0
    assert conn.llen(queue_key) == 1
    dead = q.owner_record("dead", 1)  # (it holds the time of the claim: one record, as a resent pipeline's)
    assert claim(keys=[queue_key, keys.running, job_key], args=[job_id, dead, counted[1], read]) == 1
    # the same claim again (redis-py resends a pipeline whose reply was lost): won, not stranded as another's
    assert claim(keys=[queue_key, keys.running, job_key], args=[job_id, dead, counted[1], read]) == 1
    assert claim(keys=[queue_key, keys.running, job_key],
                 args=[job_id, q.owner_record("other", 1), counted[2], read]) == 0
    assert conn.llen(queue_key) == 0 and conn.ttl(job_key) == -1  # a claimed job no longer expires as if waiting
    assert b'"dead"' in conn.hget(keys.running, job_id)  # the winner's owner record stays
    assert q.fetch_job(conn, job_id).meta == {**job.meta, "attempt": 1, "by": "dead"}  # and its count: one claim wins
    q.write_heartbeat(conn, settings, "alive", {"name": "alive"})
    conn.hset(keys.running, "held-by-alive", q.owner_record("alive", 1))
    assert q.requeue_orphans(conn, settings) == [(job_id, "requeued")]
    assert conn.lrange(queue_key, 0, -1) == [job_id.encode()] and conn.hkeys(keys.running) == [b"held-by-alive"]
    # a job whose workers keep dying fails after max_attempts
    job = q.fetch_job(conn, job_id)
    job.meta["attempt"] = settings.max_attempts
    job.save_meta()
    conn.lrem(queue_key, 1, job_id)
    conn.hset(keys.running, job_id, q.owner_record("dead", settings.max_attempts))
    assert q.requeue_orphans(conn, settings) == [(job_id, "failed")]
    view = q.get_view(conn, job_id, settings)
    assert view.status == "failed" and "gave up after 3 attempts" in view.error


def test_heartbeats_list_live_workers_and_their_models(conn, settings):
    from worker.heartbeat import Heartbeat

    hb = Heartbeat(conn, settings, "w1", lambda: {"models": [{"id": "m", "kind": "draw", "modes": {"none": "frames"},
                                                               "height": 2, "width": 2, "channels": 1, "steps": 3}]})
    hb.start()
    try:
        beats = wait_for(lambda: q.live_workers(conn, settings), timeout=3, what="a heartbeat")
        assert [b["name"] for b in beats] == ["w1"] and set(q.model_catalog(conn, settings)) == {"m"}
    finally:
        hb.stop()
    assert q.live_workers(conn, settings) == []  # a clean exit clears it at once
    q.write_heartbeat(conn, settings, "w2", {"name": "w2"})
    wait_for(lambda: not q.live_workers(conn, settings), timeout=settings.heartbeat_ttl + 1, what="expiry")
    assert conn.smembers(Keys().workers) == set()  # pruned


def test_a_beat_is_small_and_the_models_are_written_only_when_they_change(conn, settings):
    """A Redis with its append-only log records every write: the ~150 KB model list once, then each second a beat
    of a few hundred bytes and a TTL renewal (a log of the whole list each beat grew ~13 GB a day a worker)."""
    keys = Keys(settings.key_prefix)
    model = {"id": "m", "kind": "draw", "modes": {"none": "frames"}, "height": 2, "width": 2, "channels": 1,
             "steps": 3}
    q.write_heartbeat(conn, settings, "w5", {"name": "w5", "models": [model]})
    assert "models" not in json.loads(conn.get(keys.worker("w5")))
    assert set(q.model_catalog(conn, settings)) == {"m"} and q.live_workers(conn, settings)[0]["models"] == [model]
    conn.set(keys.worker_models("w5"), b"[]", keepttl=True)  # a marker: the next beat must not write the list
    q.write_heartbeat(conn, settings, "w5", {"name": "w5", "models": [model]})
    assert conn.get(keys.worker_models("w5")) == b"[]" and conn.pttl(keys.worker_models("w5")) > 0  # renewed only
    conn.delete(keys.worker_models("w5"))  # gone (a Redis restarted without it): written again
    q.write_heartbeat(conn, settings, "w5", {"name": "w5", "models": [model]})
    assert json.loads(conn.get(keys.worker_models("w5"))) == [model]
    changed = model | {"steps": 4}
    q.write_heartbeat(conn, settings, "w5", {"name": "w5", "models": [changed]})
    assert json.loads(conn.get(keys.worker_models("w5"))) == [changed]
    q.clear_heartbeat(conn, settings, "w5")
    assert not conn.exists(keys.worker("w5"), keys.worker_models("w5"))


def test_a_text_model_writes_its_training_datas_spelling(conn, redis_url, tmp_path, run_burst):
    """Penn Treebank writes numbers as "N" and the vocabulary reads them as "n" (models/vocab.py normalises): the
    sentences a job returns are spelled as the data spelled them, with the checkpoint's `spelling`, every time."""
    import torch

    from models.checkpoint import Checkpoint, save_checkpoint
    from models.textvae import SPECIALS, TextVAE, TextVAEConfig
    from models.vocab import Vocabulary

    words = Vocabulary([*SPECIALS, "n"], max_length=6)
    torch.manual_seed(0)
    text = TextVAE(TextVAEConfig(vocab_size=len(words), max_length=7, embed=4, hidden=4, z_dim=2, preset="tiny"))
    with torch.no_grad():  # the decoder writes "n" wherever it can: every sentence is made of it
        text.output.bias.fill_(-20)[words.stoi["n"]] = 20
    d = tmp_path / "checkpoints"
    save_checkpoint(d / "tiny-ptb", Checkpoint(text, vocab=words, extra={"spelling": {str(words.stoi["n"]): "N"}}))
    settings = make_settings(redis_url, d)
    job_id, _ = q.enqueue_generation(conn, request(model="tiny-ptb", captions=None, n=2), settings, steps=1)
    run_burst(settings, models=load_models(d))
    view = q.get_view(conn, job_id, settings)
    assert view.status == "succeeded", view
    assert [o["text"] for o in view.result["outputs"]] == ["N N N N N N"] * 2
