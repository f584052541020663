"""Bad input and limits: always problem+json with the right 4xx (never a 500), and nothing accepted is lost."""

from __future__ import annotations

import pytest

from tests.service.conftest import wait_status

CAPTION = "the digit 3 is at the top left of the image"
PROBLEM = "application/problem+json"


def problem(r, status: int, kind: str | None = None) -> dict:
    assert r.status_code == status, r.text
    assert r.headers["content-type"] == PROBLEM
    body = r.json()
    assert body["status"] == status and body["title"]
    if kind:
        assert body["type"].endswith("/" + kind), body
    return body


def test_unknown_words_name_each_word_and_position(client):
    r = client.post("/v1/generations", json={"captions": [CAPTION, "the purple digit 3 is at the zenith"]})
    body = problem(r, 422, "unknown-words")
    assert [(u["caption"], u["word"], u["position"]) for u in body["unknown_words"]] == [
        (1, "purple", 1), (1, "zenith", 7)]
    u = body["unknown_words"][0]
    assert "the purple digit 3 is at the zenith"[u["start"]:u["end"]] == "purple"
    assert body["vocabulary"].endswith("/v1/models/tiny-align")
    assert "purple" in body["detail"] and "zenith" in body["detail"]


@pytest.mark.parametrize(("body", "status", "kind"), [
    ({"caption": ""}, 422, "empty-caption"),  # as a blank one: api.md says no words is empty-caption
    ({"caption": " ? "}, 422, "unknown-words"),  # punctuation outside the vocabulary
    ({"caption": " ".join(["digit"] * 13)}, 422, "caption-too-long"),
    ({"caption": "x" * 501}, 422, "invalid-request"),
    ({"captions": [CAPTION] * 17}, 422, "invalid-request"),
    ({"captions": []}, 422, "invalid-request"),
    ({"caption": CAPTION, "n": 0}, 422, "invalid-request"),
    ({"caption": CAPTION, "n": 17}, 422, "invalid-request"),
    ({"captions": [CAPTION] * 5, "n": 13}, 422, "invalid-request"),  # 65 images
    ({"caption": CAPTION, "captions": [CAPTION]}, 422, "invalid-request"),
    ({"caption": CAPTION, "model": "no-such-model"}, 422, "unknown-model"),
    ({"caption": CAPTION, "model": "tiny-draw"}, 422, "invalid-request"),  # DRAW takes no captions
    ({}, 422, "caption-required"),
    ({"caption": CAPTION, "seed": -1}, 422, "invalid-request"),
    ({"caption": CAPTION, "output": {"scale": 9}}, 422, "invalid-request"),
    ({"caption": CAPTION, "colour": "red"}, 422, "invalid-request"),
    ([1, 2], 422, "invalid-request"),
    ({"caption": CAPTION, "n": True}, 422, "invalid-request"),  # JSON's own types: true is no 1, "2" no 2
    ({"caption": CAPTION, "n": "2"}, 422, "invalid-request"),
    ({"caption": CAPTION, "seed": 2.0}, 422, "invalid-request"),
    ({"caption": CAPTION, "output": {"gif": "yes"}}, 422, "invalid-request"),
])
def test_bad_bodies(client, body, status, kind):
    problem(client.post("/v1/generations", json=body), status, kind)


def test_a_seed_beside_a_walks_seeds_is_refused(client):
    body = problem(client.post("/v1/generations", json={"model": "tiny-draw", "walk": {"seeds": [1, 2]}, "seed": 5}),
                   422, "invalid-request")
    assert "a walk takes its seeds in `walk.seeds`, not `seed`" in body["detail"], body  # it would change nothing


def test_a_list_items_error_is_named_as_our_own_checks_name_it(client):
    # pydantic locates it as ("body", "captions", 1); our own checks write captions[1], support[0].images[2]
    body = problem(client.post("/v1/generations", json={"captions": [CAPTION, 7]}), 422, "invalid-request")
    assert body["detail"].startswith("captions[1]: "), body
    assert body["errors"][0]["loc"] == ["body", "captions", 1], body  # the machine-readable form stays pydantic's


def test_empty_caption_after_tokenising(client):
    problem(client.post("/v1/generations", json={"caption": "   "}), 422, "empty-caption")
    # no characters at all is the same problem, not a schema error of another type
    assert problem(client.post("/v1/generations", json={"captions": [CAPTION, ""]}), 422,
                   "empty-caption")["caption"] == 1


def test_malformed_json(client):
    body = problem(client.post("/v1/generations", content=b'{"caption": "the digit', headers={
        "content-type": "application/json"}), 400, "malformed-json")
    assert "JSON" in body["detail"]


@pytest.mark.parametrize(("content", "why"), [
    (b'{"caption": "\xff"}', "not UTF-8 text (byte 0xff at byte 13)"),  # FastAPI's bare 400 before
    (b"[" * 30_000 + b"]" * 30_000, "nest too deeply"),
    (b'{"caption": "x", "n": ' + b"9" * 5000 + b"}", "too many digits"),
])
def test_a_body_json_cannot_read_is_malformed_json_saying_why(client, content, why):
    body = problem(client.post("/v1/generations", content=content, headers={"content-type": "application/json"}),
                   400, "malformed-json")
    assert why in body["detail"], body

def test_oversize_body_states_the_limit(client):
    big = b'{"caption": "' + b"a" * 70_000 + b'"}'
    body = problem(client.post("/v1/generations", content=big, headers={"content-type": "application/json"}),
                   413, "body-too-large")
    assert body["limit_bytes"] == 65536 and "65536" in body["detail"]

    def chunks():  # no Content-Length: the stream itself is counted
        for _ in range(20):
            yield b"a" * 5000

    problem(client.post("/v1/generations", content=chunks(), headers={"content-type": "application/json"}),
            413, "body-too-large")


def test_unknown_ids_and_routes(client):
    problem(client.get("/v1/generations/0123456789abcdef"), 404, "unknown-job")
    problem(client.get("/v1/generations/bad:id"), 404, "unknown-job")
    long = "a" * 65  # no job id is longer than 64: unknown like any other (it was a 422 from the path's limit)
    for r in (client.get(f"/v1/generations/{long}"), client.delete(f"/v1/generations/{long}"),
              client.get(f"/v1/generations/{long}/events"), client.get(f"/v1/generations/{long}/images/0.png"),
              client.get(f"/v1/likelihoods/{long}"), client.get(f"/v1/classifications/{long}")):
        problem(r, 404, "unknown-job")
    assert len(problem(client.get("/v1/generations/" + "b" * 5000), 404, "unknown-job")["detail"]) < 200
    problem(client.delete("/v1/generations/0123456789abcdef"), 404, "unknown-job")
    problem(client.get("/v1/generations/0123456789abcdef/events"), 404, "unknown-job")
    problem(client.get("/v1/generations/0123456789abcdef/images/0.png"), 404, "unknown-job")
    assert problem(client.get("/v1/generations/x/images/-1.png"), 422, "invalid-request")["detail"].startswith(
        "index: ")
    problem(client.get("/nowhere"), 404)
    problem(client.put("/v1/generations"), 405)


def test_queue_full_is_503_with_retry_after_and_keeps_accepted_jobs(make_client, live_worker, conn):
    c = make_client(queues=["parked"], max_queue_depth=2)  # no worker listens to "parked"
    try:
        ids = [c.post("/v1/generations", json={"caption": CAPTION}).json()["id"] for _ in range(2)]
        positions = [c.get(f"/v1/generations/{i}").json()["queue_position"] for i in ids]
        assert positions == [0, 1]
        r = c.post("/v1/generations", json={"caption": CAPTION})
        body = problem(r, 503, "queue-full")
        assert int(r.headers["retry-after"]) > 0 and "2" in body["detail"]
        assert [c.get(f"/v1/generations/{i}").json()["status"] for i in ids] == ["queued", "queued"]
    finally:
        conn.delete("rq:queue:parked")


def test_no_worker_503(make_client, service_redis_url, conn):
    c = make_client(key_prefix="nobody")  # heartbeats live under another prefix: no worker seen
    problem(c.post("/v1/generations", json={"caption": CAPTION}), 503, "no-worker")


def test_bad_input_does_not_disturb_running_jobs(client):
    jid = client.post("/v1/generations", json={"caption": CAPTION}).json()["id"]
    for body, kind in (({"caption": "zzz"}, "unknown-words"), ({"n": 99}, "invalid-request")):
        problem(client.post("/v1/generations", json=body), 422, kind)
    assert wait_status(client, jid, {"succeeded", "failed"})["status"] == "succeeded"
