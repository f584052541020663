"""End to end through a real worker: create, poll, outputs (also mid-run), events, cancel, idempotency."""

from __future__ import annotations

import json
import time

import pytest

from tests.service.conftest import offered_without_worker, wait_status
from tests.worker.conftest import wait_for

PNG = b"\x89PNG\r\n\x1a\n"
CAPTION = "the digit 3 is at the top left of the image"


def post(client, body: dict | None = None, **kw):
    return client.post("/v1/generations", json=body or {"caption": CAPTION}, **kw)


def test_create_poll_and_fetch_every_output(client):
    r = post(client, {"captions": [CAPTION, "the digit 7 is at the bottom right"], "n": 2, "seed": 40})
    assert r.status_code == 202, r.text
    job = r.json()
    jid = job["id"]
    assert job["status"] in {"queued", "running"}
    assert job["links"]["self"].endswith(f"/v1/generations/{jid}")
    assert job["links"]["events"].endswith(f"/v1/generations/{jid}/events")
    assert r.headers["location"] == job["links"]["self"]
    assert job["seeds"] == [40, 41, 42, 43] and job["images"] == 4 and job["model"] == "tiny-align"
    if job["status"] == "queued":  # (a worker may have taken it already: then the running job has none)
        assert isinstance(job["queue_position"], int) and job["queue_position"] >= 0
    else:
        assert job["queue_position"] is None
    done = wait_status(client, jid, {"succeeded", "failed"})
    assert done["status"] == "succeeded", done
    assert done["progress"]["step"] == done["progress"]["steps"] == 5
    assert done["created_at"] and done["started_at"] and done["finished_at"] and done["expires_at"]
    assert done["queue_position"] is None
    out = done["outputs"][3]
    assert out["caption"] == "the digit 7 is at the bottom right" and out["seed"] == 43
    assert out["frames_drawn"] == 5 and len(out["frames"]) == 5

    img = client.get(out["image"])
    assert img.status_code == 200 and img.headers["content-type"] == "image/png" and img.content.startswith(PNG)
    fr = client.get(out["frames"][2])
    assert fr.headers["content-type"] == "image/png" and fr.content.startswith(PNG)
    gif = client.get(out["animation_gif"])
    assert gif.headers["content-type"] == "image/gif" and gif.content[:6] in (b"GIF89a", b"GIF87a")
    webp = client.get(out["animation_webp"])
    assert webp.headers["content-type"] == "image/webp"
    assert webp.content[:4] == b"RIFF" and webp.content[8:12] == b"WEBP"
    for url in (out["image"], out["frames"][2], out["animation_gif"], out["attention"], out["alignment"]):
        assert client.get(url).headers["cache-control"] == "private, max-age=3600, immutable", url  # every file
    al = client.get(out["alignment"])
    assert al.status_code == 200, al.text
    al = al.json()
    assert al["words"] == ["the", "digit", "7", "is", "at", "the", "bottom", "right"]
    assert len(al["alignment"]) == 5 and all(len(row) == len(al["words"]) for row in al["alignment"])
    att = client.get(out["attention"])
    assert att.headers["content-type"] == "application/json" and len(json.loads(att.content)["windows"]) == 5
    missing = client.get(f"/v1/generations/{jid}/images/9.png")
    assert missing.status_code == 404 and missing.headers["content-type"] == "application/problem+json"
    past = client.get(f"/v1/generations/{jid}/images/0/frames/6.png").json()  # T = 5: named as its URL names it
    assert past["detail"] == f"images/0/frames/6.png of job {jid} does not exist; the job has succeeded", past


def test_same_seed_same_pixels(client):
    a, b = (post(client, {"caption": CAPTION, "seed": 7, "output": {"gif": False, "webp": False}}).json()["id"]
            for _ in range(2))
    for jid in (a, b):
        wait_status(client, jid, {"succeeded"})
    assert client.get(f"/v1/generations/{a}/images/0.png").content == client.get(
        f"/v1/generations/{b}/images/0.png").content


def test_frames_readable_while_running(client):
    jid = post(client).json()["id"]
    running = wait_for(lambda: (lambda b: b if b["status"] == "running" and 1 <= b["progress"]["step"] < 5 else None)(
        client.get(f"/v1/generations/{jid}").json()), 30, interval=0.02, what="mid-run")
    link = running["outputs"][0]["frames"][0]
    r = client.get(link)
    assert r.status_code == 200 and r.content.startswith(PNG)
    assert running["outputs"][0]["image"] is None
    assert client.get(f"/v1/generations/{jid}/images/0.png").status_code == 404  # final image not yet
    wait_status(client, jid, {"succeeded"})


def parse_sse(text: str) -> list[dict]:
    events = []
    for block in text.strip().split("\n\n"):
        ev: dict = {}
        for line in block.splitlines():
            k, _, v = line.partition(": ")
            if k in ("id", "event", "data"):
                ev[k] = v
        if "event" in ev:
            events.append(ev)
    return events


def test_events_one_per_step_then_done_and_resume(client):
    jid = post(client).json()["id"]
    r = client.get(f"/v1/generations/{jid}/events")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
    events = parse_sse(r.text)
    steps = [e for e in events if e["event"] == "step"]
    assert [int(e["id"]) for e in steps] == [1, 2, 3, 4, 5]
    data = json.loads(steps[2]["data"])
    assert data["step"] == 3 and data["steps"] == 5 and data["frames"][0].endswith(f"{jid}/images/0/frames/3.png")
    assert events[-1]["event"] == "done" and json.loads(events[-1]["data"])["status"] == "succeeded"
    resumed = parse_sse(client.get(f"/v1/generations/{jid}/events", headers={"Last-Event-ID": "3"}).text)
    assert [int(e["id"]) for e in resumed if e["event"] == "step"] == [4, 5]
    assert resumed[-1]["event"] == "done"


def test_delete_cancels(client):
    jid = post(client, {"caption": CAPTION, "n": 16}).json()["id"]
    r = client.delete(f"/v1/generations/{jid}")
    assert r.status_code == 202, r.text
    done = wait_status(client, jid, {"canceled", "succeeded", "failed"})
    assert done["status"] == "canceled"
    again = client.delete(f"/v1/generations/{jid}")
    assert again.status_code == 409 and again.headers["content-type"] == "application/problem+json"
    assert parse_sse(client.get(f"/v1/generations/{jid}/events").text)[-1]["event"] == "canceled"


def test_idempotency_key(client):
    body = {"caption": CAPTION, "n": 2}
    a = post(client, body, headers={"Idempotency-Key": "k-1"})
    b = post(client, body, headers={"Idempotency-Key": "k-1"})
    assert a.status_code == b.status_code == 202
    assert a.json()["id"] == b.json()["id"] and b.headers.get("idempotent-replayed") == "true"
    assert b.headers["location"] == a.headers["location"]  # a retrying client follows the same Location
    c = post(client, {"caption": CAPTION, "n": 3}, headers={"Idempotency-Key": "k-1"})
    assert c.status_code == 409 and c.headers["content-type"] == "application/problem+json"
    d = post(client, body, headers={"Idempotency-Key": "k-2"})
    assert d.json()["id"] != a.json()["id"]
    wait_status(client, d.json()["id"], {"succeeded"})


def test_models(client):
    r = client.get("/v1/models")
    assert r.status_code == 200
    models = {m["id"]: m for m in r.json()["models"]}
    assert set(models) == {"tiny-align", "tiny-draw", "tiny-stat", "tiny-text"}
    assert models["tiny-text"]["pixels"] is None and models["tiny-draw"]["pixels"] == "binary"  # text reads none
    m = models["tiny-align"]
    assert m["kind"] == "aligndraw" and m["steps"] == 5 and m["height"] == 16 and "digit" in m["vocabulary"]
    assert m["default"] is True and m["held_out_captions"] == []
    assert m["example_captions"] == [f"the digit {d} is at the top left of the image ." for d in (1, 3)]  # no repeat
    assert client.get("/v1/models/tiny-draw").json()["kind"] == "draw"
    assert client.get("/v1/models/nope").status_code == 404


def test_unconditional_draw_job(client):
    jid = post(client, {"model": "tiny-draw", "n": 2}).json()["id"]
    done = wait_status(client, jid, {"succeeded", "failed"})
    assert done["status"] == "succeeded" and done["outputs"][1]["alignment"] is None
    r = client.get(f"/v1/generations/{jid}/images/1/alignment.json")
    assert r.status_code == 404 and r.json()["type"].endswith("no-alignment")


def test_events_resume_only_from_a_cursor_the_stream_could_have_sent(client):
    """Last-Event-ID −3 once replayed ids −2…0, and −2000000 two million events: a cursor that is not 1–9 decimal
    digits restarts the stream; one past the job's last step sends no step, only the end."""
    from service.api.routes.generations import event_cursor

    assert [event_cursor(v) for v in ("3", " 3 ", "-3", "-0", "1e9", "abc", "", None, "9" * 10, "٣")] == \
        [3, 3, 0, 0, 0, 0, 0, 0, 0, 0]
    jid = post(client).json()["id"]
    wait_status(client, jid, {"succeeded"})
    every = [1, 2, 3, 4, 5]
    for cursor, ids in [("-3", every), ("-2000000", every), ("9" * 20, every), ("7", []), ("5", []), ("4", [5])]:
        events = parse_sse(client.get(f"/v1/generations/{jid}/events", headers={"Last-Event-ID": cursor}).text)
        assert [int(e["id"]) for e in events if e["event"] == "step"] == ids, cursor
        assert events[-1]["event"] == "done"


def test_status_has_an_etag_and_answers_304_until_it_changes(client):
    jid = post(client).json()["id"]
    done = wait_status(client, jid, {"succeeded"})
    r = client.get(f"/v1/generations/{jid}")
    tag = r.headers["etag"]
    assert r.json() == done and tag.startswith('"')
    again = client.get(f"/v1/generations/{jid}", headers={"If-None-Match": tag})
    assert again.status_code == 304 and again.headers["etag"] == tag and again.content == b""
    assert client.get(f"/v1/generations/{jid}", headers={"If-None-Match": f'"other", W/{tag}'}).status_code == 304
    assert client.get(f"/v1/generations/{jid}", headers={"If-None-Match": '"other"'}).status_code == 200
    t0 = time.monotonic()  # ended and unchanged: a long poll holds until its wait runs out, then says 304
    assert client.get(f"/v1/generations/{jid}?wait=0.5", headers={"If-None-Match": tag}).status_code == 304
    assert 0.4 < time.monotonic() - t0 < 5
    assert client.get(f"/v1/generations/{jid}?wait=1000").status_code == 200  # ended: at once (waits cap at 30 s)
    assert client.get(f"/v1/generations/{jid}?wait=-1").status_code == 422


def test_response_format_b64_json_inlines_each_final_png(make_client, live_worker):
    """`response_format=b64_json` gives every drawn output its final PNG, the bytes its URL serves; the default
    gives none; the two formats never share an ETag; a read past max_inline_bytes is a 422 problem."""
    import base64

    client = make_client()
    created = post(client, {"captions": [CAPTION, "the digit 7 is at the bottom right"], "n": 2, "seed": 40})
    assert created.status_code == 202, created.text
    jid = created.json()["id"]
    # a long poll, most likely from before the job's end
    r = client.get(f"/v1/generations/{jid}?response_format=b64_json&wait=25")
    assert r.status_code == 200, r.text
    body = r.json()
    plain = client.get(f"/v1/generations/{jid}").json()
    assert body["status"] == plain["status"] == "succeeded", (body["status"], plain["status"], body["error"])
    assert all(out["b64_json"] is None for out in plain["outputs"])
    assert len(body["outputs"]) == 4
    for out, url_out in zip(body["outputs"], plain["outputs"], strict=True):
        assert out["image"] == url_out["image"]
        assert base64.b64decode(out["b64_json"]) == client.get(out["image"]).content
    assert {k: v for k, v in body.items() if k != "outputs"} == {k: v for k, v in plain.items() if k != "outputs"}
    tag, links_tag = r.headers["etag"], client.get(f"/v1/generations/{jid}").headers["etag"]
    assert tag != links_tag
    assert client.get(f"/v1/generations/{jid}?response_format=b64_json",
                      headers={"If-None-Match": tag}).status_code == 304
    again = client.get(f"/v1/generations/{jid}?response_format=b64_json", headers={"If-None-Match": links_tag})
    assert again.status_code == 200 and again.json() == body  # the links' ETag does not stand for the inline body
    assert client.get(f"/v1/generations/{jid}?response_format=png").status_code == 422
    small = make_client(max_inline_bytes=100)
    too_large = small.get(f"/v1/generations/{jid}?response_format=b64_json")
    assert too_large.status_code == 422 and too_large.json()["type"].endswith("/inline-too-large")
    assert too_large.json()["limit_bytes"] == 100
    assert small.get(f"/v1/generations/{jid}").status_code == 200  # links only: no limit


def test_pushed_events_and_long_polls_do_not_wait_for_the_fallback_poll(make_client, live_worker):
    """The worker announces every step and the end; with the fallback poll at 30 s a stream and a long poll still
    follow a ~1 s job as it runs (polling alone would take ≥ 30 s)."""
    c = make_client(events_poll_interval=30.0)
    wait_for(lambda: c.app.state.events.listening.is_set(), 10, what="the event subscription")
    jid = post(c, {"caption": CAPTION, "n": 2}).json()["id"]
    t0 = time.monotonic()
    body = c.get(f"/v1/generations/{jid}?wait=25")  # no If-None-Match: until the job ends
    assert body.status_code == 200 and body.json()["status"] == "succeeded"
    assert time.monotonic() - t0 < 15, "the long poll waited for its fallback"
    jid = post(c, {"caption": CAPTION, "n": 2}).json()["id"]
    t0 = time.monotonic()
    events = parse_sse(c.get(f"/v1/generations/{jid}/events").text)
    assert [int(e["id"]) for e in events if e["event"] == "step"][-1] == 5 and events[-1]["event"] == "done"
    assert time.monotonic() - t0 < 15, "the stream waited for its fallback poll"
    seen = []  # a long poll with the ETag of a running job returns at its next change
    jid = post(c, {"caption": CAPTION}).json()["id"]
    tag = None
    while len(seen) < 20:
        r = c.get(f"/v1/generations/{jid}?wait=25", headers={"If-None-Match": tag} if tag else {})
        assert r.status_code == 200
        tag = r.headers["etag"]
        seen.append((r.json()["status"], r.json()["progress"]["step"]))
        if seen[-1][0] == "succeeded":
            break
    assert seen[-1][0] == "succeeded" and len({s for s in seen}) == len(seen), seen  # every answer a change


def test_an_end_announced_while_a_reader_reads_still_wakes_it(make_client, live_worker, monkeypatch):
    """A long poll and a stream watch their job from before their first read. Here that read lasts until the job
    has ended and its end was announced (the read is stale): both still answer at once, not at their 30 s fallback
    poll (they used to listen only once the read was done, and missed it)."""
    from service.api.routes import generations as routes

    c = make_client(events_poll_interval=30.0)
    wait_for(lambda: c.app.state.events.listening.is_set(), 10, what="the event subscription")

    def slowed(name: str, slow_call: int):
        """routes.<name>, its `slow_call`-th call held until the job has ended, then answering what it first read."""
        real, calls = getattr(routes, name), []

        def read(conn, settings, job_id, *args, **kw):
            found = real(conn, settings, job_id, *args, **kw)
            calls.append(found.status)
            if len(calls) == slow_call:
                assert found.status in ("queued", "running"), calls
                wait_for(lambda: real(conn, settings, job_id, *args, **kw).status == "succeeded", 20,
                         what="the job's end")
                time.sleep(0.3)  # its announcement has reached the API's listener meanwhile
            return found
        monkeypatch.setattr(routes, name, read)

    jid = post(c).json()["id"]
    slowed("_read", 1)  # the long poll's first read
    t0 = time.monotonic()
    body = c.get(f"/v1/generations/{jid}?wait=25")  # no If-None-Match: until the job ends
    assert body.status_code == 200 and body.json()["status"] == "succeeded"
    assert time.monotonic() - t0 < 10, "the long poll missed the end announced during its read"
    monkeypatch.undo()
    jid = post(c).json()["id"]
    slowed("get_view", 2)  # the stream's first read (the first checks that the job exists)
    t0 = time.monotonic()
    events = parse_sse(c.get(f"/v1/generations/{jid}/events").text)
    assert events[-1]["event"] == "done"
    assert time.monotonic() - t0 < 10, "the stream missed the end announced during its read"


def test_frames_and_animations_are_rendered_on_first_request_then_kept(client, conn):
    from service.config import ApiSettings
    from worker.protocol import Keys

    jid = post(client, {"caption": CAPTION, "output": {"frames": False, "gif": False, "webp": True}}).json()["id"]
    out = wait_status(client, jid, {"succeeded"})["outputs"][0]
    files = Keys(ApiSettings().key_prefix).files(jid)
    assert out["frames"] == [] and out["animation_gif"] is None and conn.hexists(files, "raw/0/5")
    assert not conn.hexists(files, "animations/0.webp")  # the worker encoded no animation
    first = client.get(out["animation_webp"])
    assert first.status_code == 200 and first.headers["content-type"] == "image/webp"
    assert conn.hget(files, "animations/0.webp") == first.content  # kept: the next request reads it back
    assert client.get(out["animation_webp"]).content == first.content
    assert client.get(f"/v1/generations/{jid}/images/0/frames/5.png").status_code == 404  # frames not asked for
    assert client.get(f"/v1/generations/{jid}/images/0/animation.gif").status_code == 404
    # the attention JSON likewise, from the arrays the worker kept
    assert not conn.hexists(files, "attention/0.json") and conn.hexists(files, "attention/0.bin")
    attention = client.get(out["attention"])
    assert attention.status_code == 200 and conn.hget(files, "attention/0.json") == attention.content
    assert 0 < conn.ttl(files) <= ApiSettings().result_ttl  # kept under the job's TTL


def test_a_kept_rendering_never_brings_back_an_expired_job_without_a_ttl(conn):
    """A file rendered as the job's files expire is served but not kept: an HSET alone would recreate the hash with
    no TTL, for ever."""
    from service.outputs import _keep

    conn.delete("keep-test:gone", "keep-test:live")
    assert _keep(conn, "keep-test:gone", "frames/0/1.png", b"png") == b"png"
    assert not conn.exists("keep-test:gone")
    conn.hset("keep-test:live", "raw/0/1", b"raw")
    conn.expire("keep-test:live", 100)
    _keep(conn, "keep-test:live", "frames/0/1.png", b"png")
    assert conn.hget("keep-test:live", "frames/0/1.png") == b"png" and 90 < conn.ttl("keep-test:live") <= 100
    conn.delete("keep-test:live")



def test_seeds_one_per_image_may_repeat_and_must_match_the_outputs(client):
    """`seeds` instead of `seed`: one caption twice × n = 2 (caption-major: outputs 0, 1 draw the first) from seeds
    [5, 9, 5, 9]; the same caption and seed give the same PNG, another seed another."""
    body = {"captions": [CAPTION, CAPTION], "n": 2, "seeds": [5, 9, 5, 9]}
    done = wait_status(client, post(client, body).json()["id"], {"succeeded", "failed"})
    assert done["status"] == "succeeded" and [o["seed"] for o in done["outputs"]] == [5, 9, 5, 9]
    png = [client.get(o["image"]).content for o in done["outputs"]]
    assert png[0] == png[2] and png[1] == png[3] and png[0] != png[1]
    for bad, says in [({"caption": CAPTION, "n": 2, "seeds": [1]}, "1 seeds for 2 outputs"),
                      ({"caption": CAPTION, "seed": 1, "seeds": [1]}, "`seed` or `seeds`"),
                      ({"model": "tiny-draw", "walk": {"seeds": [1, 2]}, "seeds": [3]}, "walk.seeds")]:
        r = post(client, bad)
        assert r.status_code == 422 and says in r.json()["detail"], r.text


@pytest.fixture
def idle_client(service_redis_url, checkpoints, make_client):
    """An API whose models a heartbeat offers but no worker draws: its own key prefix and queue, so jobs stay queued."""
    with offered_without_worker(service_redis_url, checkpoints, "idle-post") as s:
        yield make_client(key_prefix=s.key_prefix, queues=s.queues, heartbeat_interval=1, heartbeat_ttl=3600)


def test_a_post_answers_what_a_read_then_shows(idle_client):
    """The POST builds its answer from the job it queued, without reading it back: field for field what a GET
    reads from Redis at once (times, seeds, outputs, queue position)."""
    bodies = [{"captions": [CAPTION, "the digit 7 is at the bottom right"], "n": 2, "seed": 40},
              {"caption": CAPTION},  # seeds drawn by the API
              {"model": "tiny-draw", "n": 3, "seeds": [5, 6, 7]},
              {"model": "tiny-draw", "output": {"frames": False, "gif": False, "webp": False}}]
    for position, body in enumerate(bodies):
        r = post(idle_client, body)
        assert r.status_code == 202, r.text
        posted = r.json()
        assert posted["status"] == "queued" and posted["queue_position"] == position
        read = idle_client.get(f"/v1/generations/{posted['id']}")
        assert read.status_code == 200 and read.json() == posted
    replay = post(idle_client, bodies[0], headers={"Idempotency-Key": "k-1"})
    again = post(idle_client, bodies[0], headers={"Idempotency-Key": "k-1"})
    assert again.headers.get("Idempotent-Replayed") == "true" and again.json() == replay.json()


def test_an_expired_job_reads_as_expired_and_an_unused_id_as_unknown(idle_client, conn):
    """The API's record outlives RQ's job record: a job whose record expired reads as `expired` (also through a long
    poll, and inline), its stream sends `expired`, a cancel is a 409, a file a 404 saying it expired; an id never
    created is a 404 everywhere, and so is the expired job under another collection."""
    jid = post(idle_client).json()["id"]
    conn.delete(f"rq:job:{jid}")  # what the result TTL does
    for params in ({}, {"wait": 0.2}, {"response_format": "b64_json"}):
        r = idle_client.get(f"/v1/generations/{jid}", params=params)
        assert r.status_code == 200 and r.json()["status"] == "expired", (params, r.text)
        assert r.json()["links"]["self"].endswith(f"/v1/generations/{jid}")
    events = idle_client.get(f"/v1/generations/{jid}/events")
    assert events.status_code == 200 and "event: expired" in events.text, events.text
    r = idle_client.delete(f"/v1/generations/{jid}")
    assert r.status_code == 409 and r.json()["type"].endswith("/already-ended") and r.json()["status_now"] == "expired"
    r = idle_client.get(f"/v1/generations/{jid}/images/0.png")
    assert r.status_code == 404 and r.json()["type"].endswith("/no-such-output") and "expired" in r.json()["detail"]
    for elsewhere in ("likelihoods", "classifications"):  # expired, it is still only its own collection's
        for method, tail in (("GET", ""), ("GET", "/events"), ("DELETE", "")):
            r = idle_client.request(method, f"/v1/{elsewhere}/{jid}{tail}")
            assert r.status_code == 404 and r.json()["type"].endswith("/unknown-job"), (elsewhere, method, tail)
    never = "0" * 32
    for method, tail in (("GET", "?wait=0.2"), ("GET", "/events"), ("DELETE", ""), ("GET", "/images/0.png")):
        r = idle_client.request(method, f"/v1/generations/{never}{tail}")
        assert r.status_code == 404 and r.json()["type"].endswith("unknown-job"), (method, tail)


def test_a_finished_job_reads_the_same_when_rq_rewrites_its_start(client, conn):
    """RQ writes a job's started_at when it takes the job, then saves it again, reset, once the job has ended:
    the body (and its ETag) of a finished job must not move with it."""
    jid = post(client, {"caption": CAPTION, "seed": 3}).json()["id"]
    done = wait_status(client, jid, {"succeeded"})
    first = client.get(f"/v1/generations/{jid}")
    conn.hset(f"rq:job:{jid}", "started_at", "2026-01-01T00:00:00.123456Z")  # as RQ's late save would, later
    again = client.get(f"/v1/generations/{jid}")
    assert again.json() == first.json() == done and again.headers["etag"] == first.headers["etag"]
    assert done["created_at"] <= done["started_at"] <= done["finished_at"]
